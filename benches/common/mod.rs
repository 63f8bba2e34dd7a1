//! Helpers shared by the benches (`mod common;` in each; a directory with `mod.rs` is not a
//! bench target of its own).
#![allow(dead_code)] // each bench uses only some of them

use std::hint::black_box;
use std::time::Instant;

/// Nanoseconds per call of `f`: repetitions until ≥ 100 ms, best of three. The results are
/// summed into a `black_box` so the calls cannot be optimized away.
pub fn ns(mut f: impl FnMut() -> f32) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let mut reps = 1000u32;
        loop {
            let t = Instant::now();
            let mut s = 0f32;
            for _ in 0..reps {
                s += f();
            }
            black_box(s);
            let e = t.elapsed();
            if e.as_millis() >= 100 {
                best = best.min(e.as_nanos() as f64 / reps as f64);
                break;
            }
            reps *= 4;
        }
    }
    best
}

/// `n` values in [-1, 1) from a fixed xorshift stream (`seed`'s low bit forced to 1, so 0
/// is a seed too).
pub fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}
