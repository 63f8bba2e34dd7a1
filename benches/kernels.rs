//! `cargo bench --bench kernels`: one row's quantized dot product, scalar reference against
//! the SIMD paths of this machine (AVX2, and AVX-512 VNNI where the CPU has it, on x86_64;
//! NEON and NEON+dotprod on aarch64), on
//! SmolLM2-135M's row lengths (576 = 18 blocks with a tail of 2, 1536 = 48) and 512 (16 whole
//! blocks), plus the Q8 activation quantizers. Hot cache (one row, repeated): this is the
//! kernels' compute cost; `expllm bench --stage llm` measures whole matvecs from memory.
//!
//! No criterion: repetitions until ≥ 100 ms, best of three, nanoseconds per row.

mod common;

use common::ns;
use std::hint::black_box;

use expllm_edge::kernels::quants::{
    q4_0, q4_0x8, q4_1, q8, BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1,
};

struct Rows {
    xf: Vec<f32>,
    w40: Vec<BlockQ4_0>,
    w41: Vec<BlockQ4_1>,
    a0: Vec<BlockQ8_0>,
    a1: Vec<BlockQ8_1>,
}

fn rows(n: usize) -> Rows {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let xf: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    let nb = n / 32;
    use bytemuck::Zeroable;
    let mut w40 = vec![BlockQ4_0::zeroed(); nb];
    let mut w41 = vec![BlockQ4_1::zeroed(); nb];
    let mut a0 = vec![BlockQ8_0::zeroed(); nb];
    let mut a1 = vec![BlockQ8_1::zeroed(); nb];
    q4_0::quantize_row_q4_0(&xf, &mut w40);
    q4_1::quantize_row_q4_1(&xf, &mut w41);
    q8::quantize_row_q8_0(&xf, &mut a0);
    q8::quantize_row_q8_1(&xf, &mut a1);
    Rows {
        xf,
        w40,
        w41,
        a0,
        a1,
    }
}

fn print(n: usize, name: &str, path: &str, scalar: f64, simd: f64) {
    println!(
        "n={n:5} {name:14} scalar {scalar:8.1} ns  {path:<12} {simd:8.1} ns  x{:.1}",
        scalar / simd
    );
}

/// The Q4_0x8 GEMM's time per weight row × activation row, with one and four activation
/// rows per call, against the one-row kernel of the same path.
#[allow(dead_code)]
fn print_gemm(n: usize, path: &str, row: f64, g: [f64; 3]) {
    println!(
        "n={n:5} q4_0x8 gemm     {path:<12} row kernel {row:6.1} ns  gemm A=1 {:6.1} ns (x{:.1})  A=2 {:6.1} ns (x{:.1})  A=4 {:6.1} ns (x{:.1}) per row·act",
        g[0],
        row / g[0],
        g[1],
        row / g[1],
        g[2],
        row / g[2]
    );
}

#[cfg(target_arch = "x86_64")]
fn main() {
    use expllm_edge::kernels::{x86, x86_vnni, KernelPath};
    let vnni = KernelPath::Avx512Vnni.supported();
    if !KernelPath::Avx2.supported() {
        println!("no AVX2/FMA/F16C on this CPU: nothing to compare");
        return;
    }
    println!("x86_64, one thread, hot cache; ns per row (best of 3)");
    for n in [512usize, 576, 1536] {
        let r = rows(n);
        let (a0, a1, w40, w41) = (&r.a0, &r.a1, &r.w40, &r.w41);
        // The activation scales in f32, zero-padded to 8, as `QuantizedActs` keeps them.
        let pad = |v: Vec<f32>| {
            let mut v = v;
            v.resize(v.len().next_multiple_of(8), 0.0);
            v
        };
        let d0 = pad(a0.iter().map(|b| b.d.get()).collect());
        let d1 = pad(a1.iter().map(|b| b.d.get()).collect());
        let s1 = pad(a1.iter().map(|b| b.s.get()).collect());
        // The Q8_0 activations' exact block sums, zero-padded to 8 (`QuantizedActs::qsums`).
        let mut q0s: Vec<i32> = a0
            .iter()
            .map(|b| b.qs.iter().map(|&q| q as i32).sum())
            .collect();
        q0s.resize(q0s.len().next_multiple_of(8), 0);
        // SAFETY (every call): AVX2, FMA and F16C checked above, the VNNI kernels only where
        // `vnni` (AVX512F/BW/VL/VNNI as well); equal lengths; scales and sums padded.
        let s = ns(|| q4_0::vec_dot_q4_0_q8_0(black_box(w40), black_box(a0)));
        let v = ns(|| unsafe { x86::vec_dot_q4_0_q8_0(black_box(w40), black_box(a0), &d0) });
        print(n, "q4_0·q8_0", "avx2", s, v);
        if vnni {
            let v = ns(|| unsafe {
                x86_vnni::vec_dot_q4_0_q8_0(black_box(w40), black_box(a0), &d0, &q0s)
            });
            print(n, "q4_0·q8_0", "avx512-vnni", s, v);
        }
        // The Q4_0x8 GEMM (repacked tiles, what the model runs on these paths): eight rows ×
        // A activation rows per call, reported per row × activation, beside the row kernel.
        let tile = {
            let src: Vec<BlockQ4_0> = (0..8).flat_map(|_| w40.iter().copied()).collect();
            let mut t = vec![bytemuck::Zeroable::zeroed(); w40.len()];
            q4_0x8::pack(&src, 8, w40.len(), &mut t);
            t
        };
        let row_avx2 = ns(|| unsafe { x86::vec_dot_q4_0_q8_0(black_box(w40), black_box(a0), &d0) });
        let (t, y, d, q) = (&tile, a0.as_slice(), d0.as_slice(), q0s.as_slice());
        // ns per row × activation of `$m::gemm_q4_0x8_q8_0::<A>`, A = 1, 2, 4.
        macro_rules! gemm3 {
            ($m:ident) => {
                [
                    ns(|| unsafe { $m::gemm_q4_0x8_q8_0::<1>(black_box(t), [y], [d], [q])[0][0] })
                        / 8.0,
                    ns(|| unsafe {
                        $m::gemm_q4_0x8_q8_0::<2>(black_box(t), [y; 2], [d; 2], [q; 2])[0][0]
                    }) / 16.0,
                    ns(|| unsafe {
                        $m::gemm_q4_0x8_q8_0::<4>(black_box(t), [y; 4], [d; 4], [q; 4])[0][0]
                    }) / 32.0,
                ]
            };
        }
        print_gemm(n, "avx2", row_avx2, gemm3!(x86));
        if vnni {
            let row = ns(|| unsafe {
                x86_vnni::vec_dot_q4_0_q8_0(black_box(w40), black_box(a0), &d0, &q0s)
            });
            print_gemm(n, "avx512-vnni", row, gemm3!(x86_vnni));
            // The two-tile (zmm) kernel the model runs for prefill on this path: 16 rows × A,
            // two distinct tiles (adjacent in memory, as in a packed matrix).
            let tiles2 = {
                let src: Vec<BlockQ4_0> = (0..16).flat_map(|_| w40.iter().copied()).collect();
                let mut t = vec![bytemuck::Zeroable::zeroed(); 2 * w40.len()];
                q4_0x8::pack(&src, 16, w40.len(), &mut t);
                t
            };
            let (t, t1) = tiles2.split_at(w40.len());
            let g2 = [
                ns(|| unsafe {
                    x86_vnni::gemm2_q4_0x8_q8_0::<1>(black_box(t), t1, [y], [d], [q])[0][0][0]
                }) / 16.0,
                ns(|| unsafe {
                    x86_vnni::gemm2_q4_0x8_q8_0::<2>(black_box(t), t1, [y; 2], [d; 2], [q; 2])[0][0]
                        [0]
                }) / 32.0,
                ns(|| unsafe {
                    x86_vnni::gemm2_q4_0x8_q8_0::<4>(black_box(t), t1, [y; 4], [d; 4], [q; 4])[0][0]
                        [0]
                }) / 64.0,
            ];
            print_gemm(n, "vnni 2 tiles", row, g2);
        }
        let s = ns(|| q4_1::vec_dot_q4_1_q8_1(black_box(w41), black_box(a1)));
        let v = ns(|| unsafe { x86::vec_dot_q4_1_q8_1(black_box(w41), black_box(a1), &d1, &s1) });
        print(n, "q4_1·q8_1", "avx2", s, v);
        if vnni {
            let v = ns(|| unsafe {
                x86_vnni::vec_dot_q4_1_q8_1(black_box(w41), black_box(a1), &d1, &s1)
            });
            print(n, "q4_1·q8_1", "avx512-vnni", s, v);
        }
        let s = ns(|| q8::vec_dot_q8_0_q8_0(black_box(a0), black_box(a0)));
        let v = ns(|| unsafe { x86::vec_dot_q8_0_q8_0(black_box(a0), black_box(a0), &d0) });
        print(n, "q8_0·q8_0", "avx2", s, v);
        if vnni {
            let v = ns(|| unsafe {
                x86_vnni::vec_dot_q8_0_q8_0(black_box(a0), black_box(a0), &d0, &q0s)
            });
            print(n, "q8_0·q8_0", "avx512-vnni", s, v);
        }
        let mut q0 = r.a0.clone();
        let mut q1 = r.a1.clone();
        let s = ns(|| {
            q8::quantize_row_q8_0(black_box(&r.xf), &mut q0);
            0.0
        });
        let v = ns(|| {
            unsafe { x86::quantize_row_q8_0(black_box(&r.xf), &mut q0) };
            0.0
        });
        print(n, "quantize q8_0", "avx2", s, v);
        let s = ns(|| {
            q8::quantize_row_q8_1(black_box(&r.xf), &mut q1);
            0.0
        });
        let v = ns(|| {
            unsafe { x86::quantize_row_q8_1(black_box(&r.xf), &mut q1) };
            0.0
        });
        print(n, "quantize q8_1", "avx2", s, v);
    }
}

#[cfg(target_arch = "aarch64")]
fn main() {
    use expllm_edge::kernels::aarch64 as a64;
    let dot = std::arch::is_aarch64_feature_detected!("dotprod");
    println!("aarch64, one thread, hot cache; ns per row (best of 3)");
    for n in [512usize, 576, 1536] {
        let r = rows(n);
        let (a0, a1, w40, w41) = (&r.a0, &r.a1, &r.w40, &r.w41);
        let s = ns(|| q4_1::vec_dot_q4_1_q8_1(black_box(w41), black_box(a1)));
        // SAFETY: NEON is baseline; the dotprod kernels only where detected.
        let v = ns(|| unsafe { a64::vec_dot_q4_1_q8_1_neon(black_box(w41), black_box(a1)) });
        print(n, "q4_1·q8_1", "neon", s, v);
        if dot {
            let v = ns(|| unsafe { a64::vec_dot_q4_1_q8_1_dotprod(black_box(w41), black_box(a1)) });
            print(n, "q4_1·q8_1", "neon-dotprod", s, v);
        }
        let s = ns(|| q4_0::vec_dot_q4_0_q8_0(black_box(w40), black_box(a0)));
        let v = ns(|| unsafe { a64::vec_dot_q4_0_q8_0_neon(black_box(w40), black_box(a0)) });
        print(n, "q4_0·q8_0", "neon", s, v);
        if dot {
            let v = ns(|| unsafe { a64::vec_dot_q4_0_q8_0_dotprod(black_box(w40), black_box(a0)) });
            print(n, "q4_0·q8_0", "neon-dotprod", s, v);
        }
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn main() {
    println!("no SIMD kernels on this architecture");
}
