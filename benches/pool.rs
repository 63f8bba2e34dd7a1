//! `cargo bench --bench pool`: what one hand-off through the compute pool costs at 2 threads
//! (the decode step runs ~150 jobs per token). Per job, ns: an empty 2-part job; a 2-part job
//! whose parts each write half of a 576-float vector that the caller then sums (a matmul's
//! output crossing cores, as between a decode step's jobs).
//!
//! No criterion: `common::ns` (repetitions until ≥ 100 ms, best of three), ns per job.

mod common;

use common::ns;
use std::cell::UnsafeCell;

use expllm_edge::kernels::pool;

/// A vector the parts write disjoint halves of (each part its own half).
struct Shared(UnsafeCell<[f32; 576]>);
// SAFETY: parts write disjoint halves (part p: 288·p..288·(p+1)) and the caller reads only
// after `pool::run` returned, when no part is running.
unsafe impl Sync for Shared {}

impl Shared {
    fn ptr(&self) -> *mut [f32; 576] {
        self.0.get()
    }
}

fn main() {
    let threads = pool::set_threads(2);
    println!("compute pool, {threads} threads; ns per job (best of 3)");
    let empty = ns(|| {
        pool::run(2, &|_| {});
        0.0
    });
    println!("{:<40} {:>8.0}", "empty 2-part job", empty);
    let v = Shared(UnsafeCell::new([0.0; 576]));
    let mut k = 0f32;
    let handoff = ns(|| {
        k += 1.0;
        let k = k;
        pool::run(2, &|p| {
            // SAFETY: see `Shared`: part p writes only its own half.
            let v = unsafe { &mut *v.ptr() };
            v[288 * p..288 * (p + 1)].iter_mut().for_each(|x| *x = k);
        });
        // SAFETY: no part runs now (`run` returned).
        // (16 independent lanes: the sum costs little next to the hand-off.)
        let mut acc = [0f32; 16];
        for c in unsafe { &*v.ptr() }.chunks_exact(16) {
            acc.iter_mut().zip(c).for_each(|(a, x)| *a += x);
        }
        acc.iter().sum::<f32>()
    });
    println!(
        "{:<40} {:>8.0}",
        "2 parts write 576 floats, caller sums", handoff
    );
}
