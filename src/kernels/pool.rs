//! A persistent pool of compute threads for the matmuls: `run(parts, f)` calls `f(0..parts)`
//! spread over the calling thread and the pool's workers and returns when every part is done;
//! `run_stages` runs several such steps as one job, the threads meeting at a barrier between
//! them.
//!
//! Owns the worker threads, the `unsafe` lifetime erasure that lets them borrow the caller's
//! closure, and [`for_each_mut`]'s hand-out of disjoint `&mut` items. Must not know what the
//! parts compute.
//!
//! Like ggml's thread pool the workers **spin** between jobs (a decode step is ~200 matmuls
//! a few µs to a few hundred µs apart, far shorter than a futex wake-up), and **park** after
//! `SPIN_LIMIT` idle spins so an idle daemon does not burn a core. Spawned once, on first
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

thread_local! {
    /// Set while this thread runs a part of a job: a job started from inside a part (a
    /// matmul inside a part of another) runs on this thread alone, instead of waiting for
    /// the pool that is busy with the outer job.
    static IN_PART: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}
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

/// The threads that run jobs now: the pool's workers and the caller, or 1 before any job
/// started the pool (then every part runs on the caller). Never starts the pool, asks the OS
/// or allocates, so a kernel may call it per call (the decode GEMV's prefetch distance does).
pub fn running_threads() -> usize {
    POOL.get().map_or(1, |p| p.workers.len() + 1)
}

/// Call `f(p)` for every `p in 0..parts`, on this thread and the pool's workers, and return
/// when all have returned. Part `p < threads` runs on thread `p` (this thread is 0) unless
/// that worker is late, when this thread runs it. With one thread (or one part), or inside a
/// part of another job, it is a plain loop on this thread. A panic in `f` is re-raised here
/// after every part has finished.
pub fn run(parts: usize, f: &(dyn Fn(usize) + Sync)) {
    if parts <= 1 || threads() <= 1 || IN_PART.get() {
        (0..parts).for_each(f);
        return;
    }
    POOL.get_or_init(|| Pool::start(threads() - 1))
        .run(parts, f);
}

/// Call `f(stage, part)` for every `part in 0..threads()` of every `stage in 0..stages`,
/// where every part of a stage starts only after every part of the stage before has returned
/// (their writes visible to it): one job, part `i` of every stage at home on thread `i`, with
/// a barrier between stages instead of a hand-off of a new job (the threads meet once, each
/// waiting for the others, where a job's end and the next one's start cost two crossings
/// one after the other, with the caller's serial work between them). With one thread, or
/// inside a part of another job, the stages run one after the other on this thread, each
/// part in turn.
///
/// A thread done with its part of a stage takes any part of that stage nobody has claimed
/// yet (a thread the OS has not run since the stage opened: more compute threads than
/// free cores), so the job never waits for a thread that is not running, only for parts
/// under way. So `f` must not depend on which thread runs a part. A panic in a part opens
/// the barriers for the others (the later stages are skipped) and is re-raised like
/// [`run`]'s. More than [`STAGE_THREADS`] threads or [`STAGE_FLAGS`] stages: a job per
/// stage instead.
pub fn run_stages(stages: usize, f: &(dyn Fn(usize, usize) + Sync)) {
    run_stages_ahead(stages, f, &|_, _| &[]);
}

/// [`run_stages`], where a thread waiting at the barrier before stage `k` asks the caches for
/// `ahead(k, i)` (the first bytes its part `i` of stage `k` will read), a line per spin, so a
/// memory-bound job keeps the memory busy while its threads wait for each other.
pub fn run_stages_ahead<'a>(
    stages: usize,
    f: &(dyn Fn(usize, usize) + Sync),
    ahead: &'a (dyn Fn(usize, usize) -> &'a [u8] + Sync),
) {
    let n = threads();
    if n <= 1 || IN_PART.get() {
        for k in 0..stages {
            (0..n.max(1)).for_each(|i| f(k, i));
        }
        return;
    }
    if n > STAGE_THREADS || stages > STAGE_FLAGS {
        for k in 0..stages {
            run(n, &|i| f(k, i));
        }
        return;
    }
    let job = Stages {
        done: Line(AtomicUsize::new(0)),
        claimed: [const { AtomicBool::new(false) }; STAGE_THREADS * STAGE_FLAGS],
        poisoned: AtomicBool::new(false),
    };
    run(n, &|i| {
        for k in 0..stages {
            #[cfg(feature = "pool-stats")]
            let t0 = stats::now();
            if k > 0 && !job.wait(k * n, ahead(k, i)) {
                return;
            }
            #[cfg(feature = "pool-stats")]
            stats::barrier(k, i, stats::now() - t0);
            // This thread's own part, then any of the stage's parts nobody has claimed.
            for j in (0..n).map(|j| (i + j) % n) {
                let c = &job.claimed[j * STAGE_FLAGS + k];
                if c.load(Relaxed) || c.swap(true, Acquire) {
                    continue;
                }
                #[cfg(feature = "pool-stats")]
                let t0 = stats::now();
                if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(k, j))) {
                    job.poisoned.store(true, Release);
                    std::panic::resume_unwind(p);
                }
                #[cfg(feature = "pool-stats")]
                stats::part(k, i, stats::now() - t0);
                job.done.fetch_add(1, Release);
            }
        }
    });
}

/// Most threads and stages [`run_stages`] runs as one job (its claim flags are on the stack:
/// part `j`'s of every stage in a 64-byte line of their own, so the threads' claims of
/// their own parts do not contend for one line).
pub const STAGE_THREADS: usize = 16;
pub const STAGE_FLAGS: usize = 64;

/// [`run_stages`]' shared state: parts done over the whole job (stage `k` opens when `k ·
/// threads` are), so it needs no reset between stages, and a claim flag per part.
#[repr(align(128))]
struct Stages {
    done: Line<AtomicUsize>,
    claimed: [AtomicBool; STAGE_THREADS * STAGE_FLAGS],
    poisoned: AtomicBool,
}

impl Stages {
    /// Wait until `target` parts are done: `true`, or `false` if a part panicked (the stages
    /// after it must not run).
    fn wait(&self, target: usize, ahead: &[u8]) -> bool {
        let mut spins = 0u32;
        let mut lines = ahead.chunks(64);
        while self.done.load(Acquire) < target {
            if self.poisoned.load(Acquire) {
                return false;
            }
            if let Some(l) = lines.next() {
                crate::kernels::prefetch_l2(l);
            } else if spins < SPIN_LIMIT {
                spins += 1;
                std::hint::spin_loop();
            } else {
                // A part under way on a thread the OS took the core from: give it back.
                thread::yield_now();
            }
        }
        !self.poisoned.load(Acquire)
    }
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

/// Parts of one job at most (a run with more is split into jobs of this many); one slot
/// word each. The model's jobs have at most `threads · 4` parts (the bandwidth probe) or a
/// batch's 32.
const MAX_PARTS: usize = 256;

/// A part's slot word: `generation << 2 | state`. A word from an older generation means
/// "not claimed yet" in the current one, so the slots need no reset between jobs, and a
/// worker that wakes up late for an old job claims nothing (every part of that job was
/// claimed in its generation before the job ended).
const CLAIMED: u64 = 1;
const DONE: u64 = 2;

/// The ticket word the workers poll: `generation << 16 | parts`.
fn ticket(generation: u64, parts: usize) -> u64 {
    generation << 16 | parts as u64
}

/// A value alone on its cache line (two 64-byte lines: the adjacent-line prefetcher pairs
/// them), so the words one thread writes and others poll do not share one.
#[repr(align(128))]
struct Line<T>(T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// The hand-off between the caller and the workers. Part `j < threads` is **at home** on
/// thread `j` (the caller is thread 0), which claims it in its own slot word, on a line no
/// other thread writes unless it steals: a job with one part per thread moves about three
/// cache lines between the cores (the ticket, each worker's slot to the caller and back),
/// where one shared claim counter and done counter moved about six (`cargo bench --bench
/// pool`). Parts past the home parts go out in order from a shared counter. The caller,
/// waiting for the job's end, runs any part still unclaimed, so no part waits for a thread
/// that does not run (parked, or late for the job). Home parts also keep each thread on its
/// own share of the weights, which a [`PackArena`](crate::kernels::quants::PackArena) lays
/// out side by side for it.
struct Shared {
    ticket: Line<AtomicU64>,
    slots: Box<[Line<AtomicU64>]>,
    /// Hands out the parts past the home parts, in order, when a job has more parts than
    /// threads.
    next: Line<AtomicU64>,
    /// Set when a part panicked (reported by the caller).
    panicked: AtomicBool,
    /// The current job's closure, lifetime erased. Written by the caller before it publishes
    /// a generation (Release), read by a thread only after it claimed a part of that
    /// generation (a slot CAS after reading the ticket with Acquire); the caller does not
    /// return before every part is done.
    f: UnsafeCell<*const (dyn Fn(usize) + Sync + 'static)>,
    /// Per worker: parked (or about to park) waiting for a new generation.
    sleeping: Vec<AtomicBool>,
    /// Compute threads, the caller included.
    threads: usize,
}

// SAFETY: `f` follows the protocol above (one writer, the caller holding `Pool::caller`, at
// a time when no part can be claimed; readers only between claiming and finishing a part of
// the generation it was written for); every other field is atomic or immutable.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

impl Shared {
    /// The hand-off words for `n` workers and the caller, no job yet.
    fn new(n: usize) -> Shared {
        Shared {
            ticket: Line(AtomicU64::new(0)),
            slots: (0..MAX_PARTS).map(|_| Line(AtomicU64::new(0))).collect(),
            next: Line(AtomicU64::new(0)),
            panicked: AtomicBool::new(false),
            f: UnsafeCell::new(&|_| {}),
            sleeping: (0..n).map(|_| AtomicBool::new(false)).collect(),
            threads: n + 1,
        }
    }

    /// Claim part `j` of generation `g` if nobody has.
    fn claim(&self, g: u64, j: usize) -> bool {
        let slot = &self.slots[j];
        let w = slot.load(Relaxed);
        w >> 2 < g
            && slot
                .compare_exchange(w, g << 2 | CLAIMED, AcqRel, Relaxed)
                .is_ok()
    }

    /// Run part `j` of generation `g`, which this thread has claimed, then mark it done.
    fn run_part(&self, g: u64, j: usize) {
        // SAFETY: we claimed part `j` of generation `g`, so the caller that wrote `f` for it
        // is inside `Pool::run`, waiting for this part, and keeps the closure alive.
        let f = unsafe { &**self.f.get() };
        let outer = IN_PART.replace(true);
        if catch_unwind(AssertUnwindSafe(|| f(j))).is_err() {
            self.panicked.store(true, Relaxed);
        }
        IN_PART.set(outer);
        self.slots[j].store(g << 2 | DONE, Release);
    }

    /// Return when parts `0..upto` of generation `g` are done, running any still unclaimed.
    fn wait_done(&self, g: u64, upto: usize) {
        let mut j = 0;
        while j < upto {
            let w = self.slots[j].load(Acquire);
            if w == g << 2 | DONE {
                j += 1;
            } else if w >> 2 < g {
                if self.claim(g, j) {
                    self.run_part(g, j);
                }
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Thread `me`'s share of generation `g`'s `parts`: its home part, then (where there are
    /// more parts than threads) parts from the shared counter, in order. The number run.
    fn work(&self, g: u64, parts: usize, me: usize) -> usize {
        let mut ran = 0;
        if me < parts && self.claim(g, me) {
            self.run_part(g, me);
            ran += 1;
        }
        if parts > self.threads {
            loop {
                let j = self.next_shared(g, parts);
                if j >= parts {
                    break;
                }
                if self.claim(g, j) {
                    self.run_part(g, j);
                    ran += 1;
                }
            }
        }
        ran
    }

    /// The next part of generation `g` past the home parts (`threads..parts`) from the shared
    /// counter (`generation << 16 | next`; an older generation's word means `threads`), or
    /// `parts` when there is none (also for a worker late for an old job, which finds a newer
    /// generation's word). A part it returns may still be stolen by a waiter first: the
    /// slot's claim decides.
    fn next_shared(&self, g: u64, parts: usize) -> usize {
        loop {
            let w = self.next.load(Relaxed);
            let n = match (w >> 16).cmp(&g) {
                std::cmp::Ordering::Equal => (w & 0xffff) as usize,
                std::cmp::Ordering::Less => self.threads,
                // A worker late for an old job must not restart a newer job's counter.
                std::cmp::Ordering::Greater => return parts,
            };
            if n >= parts {
                return parts;
            }
            if self
                .next
                .compare_exchange_weak(w, g << 16 | (n as u64 + 1), Relaxed, Relaxed)
                .is_ok()
            {
                return n;
            }
        }
    }
}

struct Pool {
    shared: Arc<Shared>,
    workers: Vec<Thread>,
    /// Serialises callers: one job at a time. The last generation.
    caller: Mutex<u64>,
}

impl Pool {
    fn start(n: usize) -> Pool {
        let shared = Arc::new(Shared::new(n));
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
            // Never the case for the model's jobs; keeps one slot per part.
            for start in (0..parts).step_by(MAX_PARTS) {
                self.run(MAX_PARTS.min(parts - start), &|p| f(start + p));
            }
            return;
        }
        let mut generation = self.caller.lock().unwrap_or_else(|e| e.into_inner());
        *generation += 1;
        let g = *generation;
        let s = &*self.shared;
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
        s.ticket.store(ticket(g, parts), SeqCst);
        for (w, sleeping) in self.workers.iter().zip(&s.sleeping) {
            if sleeping.load(SeqCst) {
                w.unpark();
            }
        }
        #[cfg(feature = "pool-stats")]
        let t0 = stats::now();
        s.work(g, parts, 0);
        #[cfg(feature = "pool-stats")]
        let t1 = stats::now();
        s.wait_done(g, parts);
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
        let t = loop {
            let t = s.ticket.load(Acquire);
            if t >> 16 != seen {
                seen = t >> 16;
                break t;
            }
            if spins < SPIN_LIMIT {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            // Park; the caller unparks a worker it sees sleeping after publishing a
            // generation (both SeqCst: either we see the new ticket here, or it sees our flag).
            s.sleeping[me].store(true, SeqCst);
            if s.ticket.load(SeqCst) >> 16 == seen {
                thread::park();
            }
            s.sleeping[me].store(false, SeqCst);
            spins = 0;
        };
        #[cfg(feature = "pool-stats")]
        let t0 = stats::now();
        #[cfg_attr(not(feature = "pool-stats"), allow(unused_variables))]
        let ran = s.work(seen, t as usize & 0xffff, me + 1);
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

    /// Per thread `i < 4` and stage `k < 8` of a `run_stages` job, nanoseconds: waiting at
    /// the barrier before the stage, and running the stage's parts (its own and any it took).
    type PerStage = [[AtomicU64; 8]; 4];
    static BARRIER: PerStage = [const { [const { AtomicU64::new(0) }; 8] }; 4];
    static PART: PerStage = [const { [const { AtomicU64::new(0) }; 8] }; 4];

    fn add(t: &PerStage, k: usize, i: usize, ns: u64) {
        if let Some(w) = t.get(i).and_then(|b| b.get(k)) {
            w.fetch_add(ns, Relaxed);
        }
    }

    pub(super) fn barrier(k: usize, i: usize, ns: u64) {
        add(&BARRIER, k, i, ns);
    }

    pub(super) fn part(k: usize, i: usize, ns: u64) {
        add(&PART, k, i, ns);
    }

    /// "thread 0 a/b/…, thread 1 …" in ms per stage, for the threads that have any; zeroes
    /// the table.
    fn per_stage(t: &PerStage) -> String {
        let rows: Vec<String> = t
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let w: Vec<u64> = b.iter().map(|a| a.swap(0, Relaxed)).collect();
                w.iter().any(|&x| x > 0).then(|| {
                    let ms: Vec<String> = w
                        .iter()
                        .map(|&x| format!("{:.2}", x as f64 / 1e6))
                        .collect();
                    format!("thread {i} {}", ms.join("/"))
                })
            })
            .collect();
        rows.join(", ")
    }

    /// The sums since the last call, as one line, and start over.
    pub fn take() -> String {
        let (waits, parts) = (per_stage(&BARRIER), per_stage(&PART));
        let v: [u64; 7] = std::array::from_fn(|i| SUMS[i].swap(0, Relaxed));
        LAST_END.store(0, Relaxed);
        let ms = |ns: u64| ns as f64 / 1e6;
        format!(
            "{} jobs; caller: between jobs {:.2} ms, own parts {:.2} ms, waiting {:.2} ms; \
             workers: parts {:.2} ms in {} runs, publish-to-claim {:.2} ms; stage barrier \
             waits ms per stage: {waits}; stage parts ms per stage: {parts}",
            v[3],
            ms(v[0]),
            ms(v[1]),
            ms(v[2]),
            ms(v[4]),
            v[5],
            ms(v[6]),
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
    fn a_job_started_inside_a_part_runs_on_that_thread() {
        // Before, the inner `run` waited for the pool the outer job held: a deadlock.
        let hits: Vec<AtomicUsize> = (0..12).map(|_| AtomicUsize::new(0)).collect();
        run(3, &|p| {
            let me = thread::current().id();
            run(4, &|q| {
                assert_eq!(thread::current().id(), me, "inner part on another thread");
                hits[p * 4 + q].fetch_add(1, Relaxed);
            });
        });
        assert!(hits.iter().all(|h| h.load(Relaxed) == 1));
        // And the pool is fine afterwards.
        let n = AtomicUsize::new(0);
        run(4, &|_| {
            n.fetch_add(1, Relaxed);
        });
        assert_eq!(n.load(Relaxed), 4);
    }

    #[test]
    fn with_one_part_per_thread_each_thread_runs_its_own() {
        // Home parts: part `i` on thread `i` (the caller is thread 0) whenever the workers
        // are awake, which is what keeps each thread on its share of the packed weights.
        // A worker can be late (parked, descheduled), so count, do not demand, every time.
        let t = threads();
        if t < 2 {
            return;
        }
        let caller = thread::current().id();
        let own = AtomicUsize::new(0);
        for _ in 0..50 {
            let ids: Vec<Mutex<Option<thread::ThreadId>>> =
                (0..t).map(|_| Mutex::new(None)).collect();
            let started = AtomicUsize::new(0);
            run(t, &|p| {
                *ids[p].lock().unwrap() = Some(thread::current().id());
                // Each part waits (at most a second) until every part has started: the
                // caller, busy with part 0, cannot take a worker's part meanwhile, so a
                // worker claims its own as soon as the OS runs it, however loaded the
                // machine (a fixed spell of work instead was flaky on a busy CI machine).
                started.fetch_add(1, SeqCst);
                let t0 = std::time::Instant::now();
                while started.load(SeqCst) < t && t0.elapsed() < std::time::Duration::from_secs(1) {
                    std::hint::spin_loop();
                }
            });
            let ids: Vec<_> = ids
                .into_iter()
                .map(|m| m.into_inner().unwrap().unwrap())
                .collect();
            assert_eq!(ids[0], caller, "part 0 always runs on the caller");
            if ids[1..].iter().all(|&i| i != caller) {
                own.fetch_add(1, Relaxed);
            }
        }
        // (Any: a worker the OS does not run for a second loses its part to the caller.)
        assert!(
            own.load(Relaxed) > 0,
            "workers never ran their own part in 50 jobs"
        );
    }

    #[test]
    fn a_worker_late_for_an_old_job_claims_nothing_of_a_newer_one() {
        // Generation 5 (4 parts on 2 threads) is running and has handed out part 2 of its
        // counter; a worker still on generation 4 neither claims a slot of generation 5's
        // nor restarts its counter.
        let s = Shared::new(1);
        // Generation 4 ended with its 4 parts done; generation 5 claimed its home parts.
        (0..4).for_each(|j| s.slots[j].store(4 << 2 | DONE, Relaxed));
        assert!(s.claim(5, 0) && s.claim(5, 1));
        assert_eq!(s.next_shared(5, 4), 2);
        for j in 0..4 {
            assert!(!s.claim(4, j), "part {j} claimed for the old generation");
        }
        assert_eq!(s.next_shared(4, 4), 4, "an old job's counter");
        assert_eq!(
            s.next_shared(5, 4),
            3,
            "the newer job's counter was disturbed"
        );
        assert_eq!(s.next_shared(5, 4), 4);
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
    fn stages_run_in_order_each_part_once() {
        let n = threads().max(1);
        for round in 0..300 {
            let stages = 1 + round % 5;
            let done: Vec<AtomicUsize> = (0..stages).map(|_| AtomicUsize::new(0)).collect();
            let ran: Vec<AtomicUsize> = (0..stages * n).map(|_| AtomicUsize::new(0)).collect();
            run_stages(stages, &|k, i| {
                if k > 0 {
                    assert_eq!(done[k - 1].load(Acquire), n, "stage {k} before {}", k - 1);
                }
                ran[k * n + i].fetch_add(1, Relaxed);
                done[k].fetch_add(1, Release);
            });
            assert!(ran.iter().all(|r| r.load(Relaxed) == 1), "round {round}");
        }
        // Inside a part of another job: the stages one after the other on that thread.
        run(2, &|_| {
            let me = thread::current().id();
            let order = Mutex::new(Vec::new());
            run_stages(3, &|k, i| {
                assert_eq!(thread::current().id(), me);
                order.lock().unwrap().push((k, i));
            });
            let order = order.into_inner().unwrap();
            assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}");
            assert_eq!(order.len(), 3 * n);
        });
    }

    /// Callers on several threads at once: a caller whose job the workers do not take (busy
    /// with another's) runs every part itself, taking the parts nobody has claimed, so no job
    /// hangs and every part runs once, in stage order.
    #[test]
    fn stage_jobs_from_several_callers_at_once_take_the_parts_nobody_runs() {
        let n = threads().max(1);
        let stolen = AtomicUsize::new(0);
        thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for round in 0..100 {
                        let stages = 2 + round % 4;
                        let me = thread::current().id();
                        let done: Vec<AtomicUsize> =
                            (0..stages).map(|_| AtomicUsize::new(0)).collect();
                        let ran: Vec<AtomicUsize> =
                            (0..stages * n).map(|_| AtomicUsize::new(0)).collect();
                        run_stages(stages, &|k, i| {
                            if k > 0 {
                                assert_eq!(done[k - 1].load(Acquire), n, "stage {k}");
                            }
                            if i > 0 && thread::current().id() == me {
                                stolen.fetch_add(1, Relaxed);
                            }
                            ran[k * n + i].fetch_add(1, Relaxed);
                            done[k].fetch_add(1, Release);
                        });
                        assert!(ran.iter().all(|r| r.load(Relaxed) == 1), "round {round}");
                    }
                });
            }
        });
        // With more than one thread some caller ran a worker's parts (they were 400 jobs
        // for one pool); the count is printed, not asserted: it depends on the scheduler.
        eprintln!(
            "parts run by their caller instead of a worker: {}",
            stolen.into_inner()
        );
    }

    #[test]
    fn a_thread_asks_for_its_next_parts_bytes_before_each_barrier() {
        let n = threads().max(1);
        let buf = vec![7u8; 1 << 16];
        for stages in 1..5 {
            let asked: Vec<AtomicUsize> = (0..stages * n).map(|_| AtomicUsize::new(0)).collect();
            let ran = AtomicUsize::new(0);
            run_stages_ahead(
                stages,
                &|_, _| {
                    ran.fetch_add(1, Relaxed);
                },
                &|k, i| {
                    asked[k * n + i].fetch_add(1, Relaxed);
                    &buf[(k * 4096).min(buf.len())..]
                },
            );
            assert_eq!(ran.load(Relaxed), stages * n);
            // With one thread there is no barrier to wait at, so nothing is asked for.
            let want = |k: usize| usize::from(k > 0 && n > 1);
            for (j, a) in asked.iter().enumerate() {
                assert_eq!(
                    a.load(Relaxed),
                    want(j / n),
                    "stage {} part {}",
                    j / n,
                    j % n
                );
            }
        }
    }

    #[test]
    fn a_panicking_stage_part_stops_the_later_stages_without_a_hang() {
        let later = AtomicUsize::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            run_stages(3, &|k, i| {
                if k == 1 && i == 0 {
                    panic!("boom");
                }
                if k == 2 {
                    later.fetch_add(1, Relaxed);
                }
            })
        }));
        assert!(r.is_err());
        assert_eq!(later.load(Relaxed), 0);
        let n = AtomicUsize::new(0);
        run_stages(2, &|_, _| {
            n.fetch_add(1, Relaxed);
        });
        assert_eq!(n.load(Relaxed), 2 * threads().max(1));
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
