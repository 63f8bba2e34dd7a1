//! A persistent pool of compute threads for the matmuls: `run(parts, f)` calls `f(0..parts)`
//! spread over the calling thread and the pool's workers and returns when every part is done.
//!
//! Owns the worker threads, the `unsafe` lifetime erasure that lets them borrow the caller's
//! closure, and [`for_each_mut`]'s hand-out of disjoint `&mut` items. Must not know what the
//! parts compute.
//!
//! Like ggml's thread pool the workers **spin** between jobs (a decode step is ~200 matmuls
//! a few µs to a few hundred µs apart, far shorter than a futex wake-up), and **park** after
//! [`SPIN_LIMIT`] idle spins so an idle daemon does not burn a core. Spawned once, on first
//! use, with the count set by [`set_threads`] (board file / `--threads`), else the number of
//! cores; never per call.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};

/// Idle spins before a worker parks (a few hundred µs on a 2–3 GHz core).
const SPIN_LIMIT: u32 = 1 << 16;

static THREADS: AtomicUsize = AtomicUsize::new(0);
static POOL: OnceLock<Pool> = OnceLock::new();

/// Set the number of compute threads (the caller included) before the first matmul; later
/// calls have no effect once the pool exists. Returns the count in force.
pub fn set_threads(n: usize) -> usize {
    if POOL.get().is_none() {
        THREADS.store(n.clamp(1, 256), Relaxed);
    }
    threads()
}

/// The compute thread count in force (or that the pool will start with).
pub fn threads() -> usize {
    if let Some(p) = POOL.get() {
        return p.workers.len() + 1;
    }
    match THREADS.load(Relaxed) {
        0 => thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Call `f(p)` for every `p in 0..parts`, on this thread and the pool's workers, and return
/// when all have returned. With one thread (or one part) it is a plain loop. A panic in `f`
/// is re-raised here after every part has finished.
pub fn run(parts: usize, f: &(dyn Fn(usize) + Sync)) {
    if parts <= 1 || threads() <= 1 {
        (0..parts).for_each(f);
        return;
    }
    POOL.get_or_init(|| Pool::start(threads() - 1))
        .run(parts, f);
}

/// Call `f(i, &mut items[i])` for every item, spread over the threads like [`run`]: each
/// item is handed to exactly one call, so the calls may run in parallel.
pub fn for_each_mut<T: Send>(items: &mut [T], f: &(dyn Fn(usize, &mut T) + Sync)) {
    struct Items<T>(*mut T);
    // SAFETY: only used below to hand each element to one call at a time.
    unsafe impl<T: Send> Sync for Items<T> {}
    let base = Items(items.as_mut_ptr());
    let base = &base;
    run(items.len(), &|i| {
        // SAFETY: `run` calls each index in 0..items.len() exactly once, so this is a unique
        // reference to a live element of `items`, which outlives `run`.
        let item = unsafe { &mut *base.0.add(i) };
        f(i, item)
    });
}

/// Call `f(i, &mut data[i·chunk..(i+1)·chunk])` for every whole chunk of `data` (rows of a
/// batch), spread over the threads like [`run`]. A trailing partial chunk is not visited.
pub fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    let mut none: [T; 0] = [];
    for_each_chunk_mut2(data, chunk, &mut none, 0, &|i, a, _| f(i, a));
}

/// What [`for_each_chunk_mut2`] calls: `(i, a_i, b_i)`.
pub type ChunkPairFn<'a, T, U> = dyn Fn(usize, &mut [T], &mut [U]) + Sync + 'a;

/// Call `f(i, a_i, b_i)` with chunk `i` of `a` (`ca` long) and of `b` (`cb` long) for every
/// `i` below the number of whole chunks of `a` (`b` must hold as many, unless `cb == 0`),
/// spread over the threads like [`run`].
///
/// # Panics
/// If `ca == 0`, or `cb > 0` and `b` has fewer whole chunks than `a`.
pub fn for_each_chunk_mut2<T: Send, U: Send>(
    a: &mut [T],
    ca: usize,
    b: &mut [U],
    cb: usize,
    f: &ChunkPairFn<'_, T, U>,
) {
    assert!(ca > 0, "for_each_chunk_mut2: empty chunks");
    let n = a.len() / ca;
    assert!(
        cb == 0 || b.len() / cb >= n,
        "for_each_chunk_mut2: {} chunks of a, {} of b",
        n,
        b.len() / cb
    );
    struct Base<T, U>(*mut T, *mut U);
    // SAFETY: only used below to hand each chunk to one call at a time.
    unsafe impl<T: Send, U: Send> Sync for Base<T, U> {}
    let base = Base(a.as_mut_ptr(), b.as_mut_ptr());
    let base = &base;
    run(n, &|i| {
        // SAFETY: `run` calls each `i` in 0..n exactly once, and chunk `i` of `a` (`b`) is the
        // range `i·ca..(i+1)·ca` (`i·cb..(i+1)·cb`), inside `a` (`b`) by the checks above and
        // disjoint from every other chunk: these are unique references to live elements of
        // `a` and `b`, which outlive `run`. (`cb == 0`: an empty slice at `b`'s start.)
        let (x, y) = unsafe {
            (
                std::slice::from_raw_parts_mut(base.0.add(i * ca), ca),
                std::slice::from_raw_parts_mut(base.1.add(i * cb), cb),
            )
        };
        f(i, x, y)
    });
}

/// The ticket word: `generation << 32 | parts << 16 | next`. Parts are claimed by a CAS that
/// must see the claimer's generation, so a worker that wakes up late for an old job claims
/// nothing, and the caller never has to wait for a worker that is not running: if no worker
/// shows up, the caller claims every part itself.
const PART_BITS: u32 = 16;
const MAX_PARTS: usize = (1 << PART_BITS) - 1;

fn ticket(generation: u64, parts: usize, next: usize) -> u64 {
    generation << 32 | (parts as u64) << PART_BITS | next as u64
}

/// A value alone on its cache line (two 64-byte lines: the adjacent-line prefetcher pairs
/// them), so the ticket the workers poll and the count the caller polls do not share one.
#[repr(align(128))]
struct Line<T>(T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

struct Shared {
    ticket: Line<AtomicU64>,
    /// Parts finished in the current generation.
    done: Line<AtomicUsize>,
    /// Set when a part panicked (reported by the caller).
    panicked: AtomicBool,
    /// The current job's closure, lifetime erased. Written by the caller before it publishes
    /// a generation (Release), read by a worker only after it claimed a part of that
    /// generation (Acquire CAS); the caller does not return before every claimed part is done.
    f: UnsafeCell<*const (dyn Fn(usize) + Sync + 'static)>,
    /// Per worker: parked (or about to park) waiting for a new generation.
    sleeping: Vec<AtomicBool>,
}

// SAFETY: `f` follows the protocol above (one writer, the caller holding `Pool::caller`, at a
// time when no part can be claimed; readers only between claiming and finishing a part of the
// generation it was written for); every other field is atomic.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

impl Shared {
    /// Claim and run parts of `generation` until none is left; the number run.
    fn work(&self, generation: u64) -> usize {
        let mut ran = 0;
        loop {
            let t = self.ticket.load(Acquire);
            let (parts, next) = (
                (t >> PART_BITS) as usize & MAX_PARTS,
                t as usize & MAX_PARTS,
            );
            if t >> 32 != generation || next >= parts {
                return ran;
            }
            if self
                .ticket
                .compare_exchange_weak(t, t + 1, AcqRel, Acquire)
                .is_err()
            {
                continue;
            }
            // SAFETY: we claimed part `next` of `generation`, so the caller that wrote `f` for
            // it is inside `Pool::run`, waiting for this part, and keeps the closure alive.
            let f = unsafe { &**self.f.get() };
            if catch_unwind(AssertUnwindSafe(|| f(next))).is_err() {
                self.panicked.store(true, Relaxed);
            }
            self.done.fetch_add(1, Release);
            ran += 1;
        }
    }
}

struct Pool {
    shared: Arc<Shared>,
    workers: Vec<Thread>,
    /// Serialises callers: one job at a time.
    caller: Mutex<u64>,
}

impl Pool {
    fn start(n: usize) -> Pool {
        let shared = Arc::new(Shared {
            ticket: Line(AtomicU64::new(0)),
            done: Line(AtomicUsize::new(0)),
            panicked: AtomicBool::new(false),
            f: UnsafeCell::new(&|_| {}),
            sleeping: (0..n).map(|_| AtomicBool::new(false)).collect(),
        });
        // Return only when every worker runs, so its start-up (which allocates) is over
        // before the first job: the hot path then allocates nothing.
        let started = Arc::new(std::sync::Barrier::new(n + 1));
        let workers = (0..n)
            .map(|i| {
                let s = Arc::clone(&shared);
                let started = Arc::clone(&started);
                thread::Builder::new()
                    .name(format!("expllm-compute-{}", i + 1))
                    .spawn(move || {
                        started.wait();
                        drop(started);
                        worker(&s, i)
                    })
                    .expect("cannot spawn a compute thread")
                    .thread()
                    .clone()
            })
            .collect();
        started.wait();
        Pool {
            shared,
            workers,
            caller: Mutex::new(0),
        }
    }

    fn run(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        if parts > MAX_PARTS {
            // Never the case for matmuls (parts ≤ threads); keeps the ticket exact.
            for start in (0..parts).step_by(MAX_PARTS) {
                self.run(MAX_PARTS.min(parts - start), &|p| f(start + p));
            }
            return;
        }
        let mut generation = self.caller.lock().unwrap_or_else(|e| e.into_inner());
        *generation = (*generation + 1) & 0xffff_ffff;
        let g = *generation;
        let s = &*self.shared;
        s.done.store(0, Relaxed);
        s.panicked.store(false, Relaxed);
        // SAFETY: the previous job's parts are all claimed and done (we waited for them), and
        // this generation is not published yet, so nobody reads `f` now. The lifetime is
        // erased, but no part of this generation can run after we return: we wait below for
        // every part, and later claims need a generation that is gone.
        unsafe {
            *s.f.get() = std::mem::transmute::<
                *const (dyn Fn(usize) + Sync + '_),
                *const (dyn Fn(usize) + Sync + 'static),
            >(f);
        }
        #[cfg(feature = "pool-stats")]
        stats::PUBLISHED.store(stats::now(), Relaxed);
        s.ticket.store(ticket(g, parts, 0), SeqCst);
        for (w, sleeping) in self.workers.iter().zip(&s.sleeping) {
            if sleeping.load(SeqCst) {
                w.unpark();
            }
        }
        #[cfg(feature = "pool-stats")]
        let t0 = stats::now();
        s.work(g);
        #[cfg(feature = "pool-stats")]
        let t1 = stats::now();
        while s.done.load(Acquire) < parts {
            std::hint::spin_loop();
        }
        #[cfg(feature = "pool-stats")]
        stats::caller(t0, t1, stats::now());
        if s.panicked.load(Relaxed) {
            panic!("a compute part panicked");
        }
    }
}

fn worker(s: &Shared, me: usize) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        loop {
            let g = s.ticket.load(Acquire) >> 32;
            if g != seen {
                seen = g;
                break;
            }
            if spins < SPIN_LIMIT {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            // Park; the caller unparks a worker it sees sleeping after publishing a
            // generation (both SeqCst: either we see the new ticket here, or it sees our flag).
            s.sleeping[me].store(true, SeqCst);
            if s.ticket.load(SeqCst) >> 32 == seen {
                thread::park();
            }
            s.sleeping[me].store(false, SeqCst);
            spins = 0;
        }
        #[cfg(feature = "pool-stats")]
        let t0 = stats::now();
        #[cfg_attr(not(feature = "pool-stats"), allow(unused_variables))]
        let ran = s.work(seen);
        #[cfg(feature = "pool-stats")]
        stats::worker(ran, t0, stats::now());
    }
}

/// With the `pool-stats` feature: where the jobs' wall time goes, in nanoseconds summed
/// since the last [`take`](stats::take) — the caller between jobs (its serial work), in its
/// own parts and waiting for the workers at a job's end; the workers in their parts and from
/// a job's publication to their first claim. Diagnostics for the decode loop's 2-thread
/// efficiency (`expllm bench --stage llm` prints them per decode run).
#[cfg(feature = "pool-stats")]
pub mod stats {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::OnceLock;
    use std::time::Instant;

    static EPOCH: OnceLock<Instant> = OnceLock::new();
    pub(super) static PUBLISHED: AtomicU64 = AtomicU64::new(0);
    static LAST_END: AtomicU64 = AtomicU64::new(0);
    /// between, caller parts, caller wait, jobs, worker parts, worker part runs, latency.
    static SUMS: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];

    /// Nanoseconds since the first call (never 0 afterwards, so 0 means "no job yet").
    pub(super) fn now() -> u64 {
        EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
    }

    pub(super) fn caller(start: u64, own_done: u64, end: u64) {
        let last = LAST_END.swap(end, Relaxed);
        if last != 0 {
            SUMS[0].fetch_add(start.saturating_sub(last), Relaxed);
        }
        SUMS[1].fetch_add(own_done - start, Relaxed);
        SUMS[2].fetch_add(end - own_done, Relaxed);
        SUMS[3].fetch_add(1, Relaxed);
    }

    pub(super) fn worker(ran: usize, start: u64, end: u64) {
        if ran > 0 {
            SUMS[4].fetch_add(end - start, Relaxed);
            SUMS[5].fetch_add(1, Relaxed);
            SUMS[6].fetch_add(start.saturating_sub(PUBLISHED.load(Relaxed)), Relaxed);
        }
    }

    /// The sums since the last call, as one line, and start over.
    pub fn take() -> String {
        let v: [u64; 7] = std::array::from_fn(|i| SUMS[i].swap(0, Relaxed));
        LAST_END.store(0, Relaxed);
        let ms = |ns: u64| ns as f64 / 1e6;
        format!(
            "{} jobs; caller: between jobs {:.2} ms, own parts {:.2} ms, waiting {:.2} ms; \
             workers: parts {:.2} ms in {} runs, publish-to-claim {:.2} ms",
            v[3],
            ms(v[0]),
            ms(v[1]),
            ms(v[2]),
            ms(v[4]),
            v[5],
            ms(v[6])
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_exactly_once() {
        for parts in [0, 1, 2, 3, 7, 64, 1000] {
            let hits: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
            run(parts, &|p| {
                hits[p].fetch_add(1, Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Relaxed) == 1), "parts={parts}");
        }
    }

    #[test]
    fn chunks_are_handed_out_once_and_disjoint() {
        for (len, chunk) in [(0, 3), (7, 7), (10, 3), (64 * 9, 9), (1000, 1)] {
            let mut a = vec![0u32; len];
            let mut b = vec![0u64; 2 * (len / chunk) + 1];
            for_each_chunk_mut2(&mut a, chunk, &mut b, 2, &|i, x, y| {
                assert_eq!((x.len(), y.len()), (chunk, 2));
                x.iter_mut().for_each(|v| *v += i as u32 + 1);
                y.iter_mut().for_each(|v| *v += 1);
            });
            let whole = len / chunk * chunk;
            for (k, &v) in a.iter().enumerate() {
                let want = if k < whole { (k / chunk) as u32 + 1 } else { 0 };
                assert_eq!(v, want, "len={len} chunk={chunk} k={k}");
            }
            assert!(b[..2 * (len / chunk)].iter().all(|&v| v == 1));
            assert_eq!(b[2 * (len / chunk)], 0);
            let mut c = vec![1u8; len];
            for_each_chunk_mut(&mut c, chunk, &|_, x| x.iter_mut().for_each(|v| *v -= 1));
            assert_eq!(c.iter().filter(|&&v| v == 0).count(), whole);
        }
    }

    #[test]
    fn many_jobs_in_a_row_and_from_several_callers() {
        let total = AtomicUsize::new(0);
        thread::scope(|sc| {
            for _ in 0..3 {
                sc.spawn(|| {
                    for _ in 0..2000 {
                        run(4, &|p| {
                            total.fetch_add(p + 1, Relaxed);
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Relaxed), 3 * 2000 * 10);
    }

    #[test]
    fn workers_wake_up_after_parking() {
        let n = AtomicUsize::new(0);
        run(8, &|_| {
            n.fetch_add(1, Relaxed);
        });
        thread::sleep(std::time::Duration::from_millis(50));
        run(8, &|_| {
            n.fetch_add(1, Relaxed);
        });
        assert_eq!(n.load(Relaxed), 16);
    }

    #[test]
    fn a_panicking_part_is_reported_to_the_caller_and_the_pool_survives() {
        let r = catch_unwind(|| {
            run(4, &|p| {
                if p == 2 {
                    panic!("boom");
                }
            })
        });
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        run(4, &|_| {
            n.fetch_add(1, Relaxed);
        });
        assert_eq!(n.load(Relaxed), 4);
    }
}
