//! Attention's two loops over the f16 KV cache: the score `q · k` of one cached key row and
//! the weighted sum `out += w · v` of one cached value row, with the f16 → f32 conversion
//! done in registers (F16C `vcvtph2ps` on x86, `fcvtl`/`fcvtl2` on aarch64) instead of through
//! a scratch row.
//!
//! Owns the scalar references ([`dot_f16_ref`], [`axpy_f16_ref`]) and their SIMD variants,
//! chosen once per forward pass by [`KvOps::for_path`]. Every variant gives the reference's
//! bits (f16 → f32 is exact, the products and sums are the same f32 operations in the same
//! order, never fused), so the kernel path never changes a token. Must not know about
//! models, heads or positions.

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::kernels::quants::lane_total;
use crate::kernels::KernelPath;

/// `Σ a·b` of `a` and the f16 row `b` (converted exactly) in f32 with eight lane sums
/// (element `i` in lane `i % 8`, lanes reduced like [`lane_total`]): the scalar reference of
/// the score kernels, the same bits as the f32 `dot_striped` the model used before on a
/// converted row (the tests keep that function to check it).
///
/// # Panics
/// If the lengths differ.
pub fn dot_f16_ref(a: &[f32], b: &[f16]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f16: lengths differ");
    let mut l = [0f32; 8];
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        l[i % 8] += x * y.to_f32();
    }
    lane_total(&l)
}

/// `out[i] += w · v[i]` (product then sum, in f32): the scalar reference of the value kernels.
///
/// # Panics
/// If the lengths differ.
pub fn axpy_f16_ref(out: &mut [f32], w: f32, v: &[f16]) {
    assert_eq!(out.len(), v.len(), "axpy_f16: lengths differ");
    for (o, v) in out.iter_mut().zip(v) {
        *o += w * v.to_f32();
    }
}

/// The score and value kernels of one kernel path (plain function pointers: chosen once per
/// forward pass, called per cached row).
#[derive(Clone, Copy)]
pub struct KvOps {
    /// `dot_f16_ref(a, b)`'s bits. Panics if the lengths differ.
    pub dot: fn(&[f32], &[f16]) -> f32,
    /// `axpy_f16_ref(out, w, v)`'s effect. Panics if the lengths differ.
    pub axpy: fn(&mut [f32], f32, &[f16]),
}

impl KvOps {
    /// The kernels for `path`, which must be one this CPU supports (as for every kernel
    /// choice; [`crate::kernels::active`] always is).
    #[allow(unused_variables)]
    pub fn for_path(path: KernelPath) -> KvOps {
        #[cfg(target_arch = "x86_64")]
        if matches!(path, KernelPath::Avx2 | KernelPath::Avx512Vnni) {
            // SAFETY (both): these paths are active (or passed by a test) only when the CPU
            // has avx2, fma and f16c, the x86 kernels' whole contract.
            return KvOps {
                dot: |a, b| unsafe { x86::dot_f16(a, b) },
                axpy: |o, w, v| unsafe { x86::axpy_f16(o, w, v) },
            };
        }
        #[cfg(target_arch = "aarch64")]
        if path != KernelPath::Scalar {
            return KvOps {
                dot: aarch64::dot_f16,
                axpy: aarch64::axpy_f16,
            };
        }
        KvOps {
            dot: dot_f16_ref,
            axpy: axpy_f16_ref,
        }
    }
}

/// The f16 row's bits (half's own reinterpretation: no copy).
#[inline(always)]
fn bits(v: &[f16]) -> &[u16] {
    v.reinterpret_cast()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use core::arch::x86_64::*;

    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
        assert_eq!(a.len(), b.len(), "dot_f16: lengths differ");
        let (ac, ar) = a.as_chunks::<8>();
        let (bc, br) = bits(b).as_chunks::<8>();
        let mut l = [0f32; 8];
        // SAFETY: AVX2 and F16C by contract; each load reads one 8-element chunk (32 bytes of
        // f32, 16 bytes of f16 bits), the store writes the 8 f32 of `l`.
        unsafe {
            let mut acc = _mm256_setzero_ps();
            for (x, y) in ac.iter().zip(bc) {
                let y = _mm256_cvtph_ps(_mm_loadu_si128(y.as_ptr().cast()));
                acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr()), y));
            }
            _mm256_storeu_ps(l.as_mut_ptr(), acc);
        }
        for (k, (x, &y)) in ar.iter().zip(br).enumerate() {
            l[k] += x * f16::from_bits(y).to_f32();
        }
        lane_total(&l)
    }

    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy_f16(out: &mut [f32], w: f32, v: &[f16]) {
        assert_eq!(out.len(), v.len(), "axpy_f16: lengths differ");
        let (oc, or) = out.as_chunks_mut::<8>();
        let (vc, vr) = bits(v).as_chunks::<8>();
        // SAFETY: AVX2 and F16C by contract; each load / store is one 8-element chunk.
        unsafe {
            let wv = _mm256_set1_ps(w);
            for (o, y) in oc.iter_mut().zip(vc) {
                let y = _mm256_cvtph_ps(_mm_loadu_si128(y.as_ptr().cast()));
                let s = _mm256_add_ps(_mm256_loadu_ps(o.as_ptr()), _mm256_mul_ps(wv, y));
                _mm256_storeu_ps(o.as_mut_ptr(), s);
            }
        }
        for (o, &y) in or.iter_mut().zip(vr) {
            *o += w * f16::from_bits(y).to_f32();
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod aarch64 {
    use super::*;
    use core::arch::aarch64::*;

    /// Eight f16 (as bits) to f32: (`fcvtl` of the low four, `fcvtl2` of the high four).
    /// Exact; through `asm!` because `vcvt_f32_f16` needs the unstable `f16` type.
    #[inline(always)]
    fn cvt8(b: &[u16; 8]) -> (float32x4_t, float32x4_t) {
        // SAFETY: `b` is 16 readable bytes for `vld1q_u16`; `fcvtl`/`fcvtl2` are base AArch64
        // (no FP16 extension needed for conversions), register-only, no memory, stack or
        // flags.
        unsafe {
            let v = vld1q_u16(b.as_ptr());
            let (lo, hi): (float32x4_t, float32x4_t);
            core::arch::asm!(
                "fcvtl {0:v}.4s, {2:v}.4h",
                "fcvtl2 {1:v}.4s, {2:v}.8h",
                out(vreg) lo,
                out(vreg) hi,
                in(vreg) v,
                options(pure, nomem, nostack)
            );
            (lo, hi)
        }
    }

    pub fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
        assert_eq!(a.len(), b.len(), "dot_f16: lengths differ");
        let (ac, ar) = a.as_chunks::<8>();
        let (bc, br) = bits(b).as_chunks::<8>();
        let mut l = [0f32; 8];
        // SAFETY: NEON is part of the aarch64 baseline; each load reads 4 f32 of a chunk of
        // 8, the stores write the 8 f32 of `l`.
        unsafe {
            let (mut lo, mut hi) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
            for (x, y) in ac.iter().zip(bc) {
                let (y0, y1) = cvt8(y);
                lo = vaddq_f32(lo, vmulq_f32(vld1q_f32(x.as_ptr()), y0));
                hi = vaddq_f32(hi, vmulq_f32(vld1q_f32(x.as_ptr().add(4)), y1));
            }
            vst1q_f32(l.as_mut_ptr(), lo);
            vst1q_f32(l.as_mut_ptr().add(4), hi);
        }
        for (k, (x, &y)) in ar.iter().zip(br).enumerate() {
            l[k] += x * f16::from_bits(y).to_f32();
        }
        lane_total(&l)
    }

    pub fn axpy_f16(out: &mut [f32], w: f32, v: &[f16]) {
        assert_eq!(out.len(), v.len(), "axpy_f16: lengths differ");
        let (oc, or) = out.as_chunks_mut::<8>();
        let (vc, vr) = bits(v).as_chunks::<8>();
        // SAFETY: NEON is part of the aarch64 baseline; each load / store is 4 f32 of a chunk
        // of 8.
        unsafe {
            let wv = vdupq_n_f32(w);
            for (o, y) in oc.iter_mut().zip(vc) {
                let (y0, y1) = cvt8(y);
                let p = o.as_mut_ptr();
                vst1q_f32(p, vaddq_f32(vld1q_f32(p), vmulq_f32(wv, y0)));
                vst1q_f32(p.add(4), vaddq_f32(vld1q_f32(p.add(4)), vmulq_f32(wv, y1)));
            }
        }
        for (o, &y) in or.iter_mut().zip(vr) {
            *o += w * f16::from_bits(y).to_f32();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kernels::quants::tests::Rng;

    /// `Σ a·b` in f32 with eight lane sums (element `i` in lane `i % 8`, lanes reduced like
    /// [`lane_total`]): written out so that the compiler may vectorize it on every target without
    /// changing a bit (plain left-to-right sums cannot be vectorized), and every build gives the
    /// same result. The model's score before `kv` existed, on a converted row.
    fn dot_striped(a: &[f32], b: &[f32]) -> f32 {
        let mut l = [0f32; 8];
        let (ac, ar) = a.as_chunks::<8>();
        let (bc, br) = b.as_chunks::<8>();
        for (x, y) in ac.iter().zip(bc) {
            for k in 0..8 {
                l[k] += x[k] * y[k];
            }
        }
        for (k, (x, y)) in ar.iter().zip(br).enumerate() {
            l[k] += x * y;
        }
        lane_total(&l)
    }

    /// Moderate values, with zeros, ±0, f16 extremes (65504, subnormals) and their f32
    /// neighbours mixed in.
    fn value(r: &mut Rng) -> f32 {
        match r.next_u64() % 10 {
            0 => 0.0,
            1 => -0.0,
            2 => 65504.0,
            3 => -6e-8,
            4 => 3.0e4,
            _ => ((r.next_u64() % 20001) as f32 - 10000.0) / 1000.0,
        }
    }

    /// Every supported path, the scalar one included.
    fn paths() -> Vec<KernelPath> {
        KernelPath::ALL
            .into_iter()
            .filter(|p| p.supported())
            .collect()
    }

    /// Every path's score and value kernels give the scalar references' bits, at lengths 0..=70
    /// (every tail), on random rows with extreme f16 values; and the f16 reference is
    /// `dot_striped` of the converted row.
    #[test]
    fn every_path_matches_the_scalar_reference_bit_for_bit() {
        let mut r = Rng::new(0x6b76_5f6f_7073_2121);
        let paths = paths();
        println!(
            "kv paths: {:?}",
            paths.iter().map(|p| p.as_str()).collect::<Vec<_>>()
        );
        for n in (0..=70).chain([128, 257]) {
            for _ in 0..20 {
                let a: Vec<f32> = (0..n).map(|_| value(&mut r)).collect();
                let b: Vec<f16> = (0..n).map(|_| f16::from_f32(value(&mut r))).collect();
                let out0: Vec<f32> = (0..n).map(|_| value(&mut r)).collect();
                let w = value(&mut r);
                let b32: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
                let want = dot_f16_ref(&a, &b);
                assert_eq!(want.to_bits(), dot_striped(&a, &b32).to_bits(), "n={n}");
                let mut want_out = out0.clone();
                axpy_f16_ref(&mut want_out, w, &b);
                for &p in &paths {
                    let ops = KvOps::for_path(p);
                    let got = (ops.dot)(&a, &b);
                    assert!(
                        got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                        "{} dot n={n}: {got:e} vs {want:e}",
                        p.as_str()
                    );
                    let mut out = out0.clone();
                    (ops.axpy)(&mut out, w, &b);
                    for (i, (g, e)) in out.iter().zip(&want_out).enumerate() {
                        assert!(
                            g.to_bits() == e.to_bits() || (g.is_nan() && e.is_nan()),
                            "{} axpy n={n} i={i}: {g:e} vs {e:e}",
                            p.as_str()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn length_mismatch_panics_in_every_path() {
        for p in paths() {
            let ops = KvOps::for_path(p);
            let r = std::panic::catch_unwind(|| (ops.dot)(&[1.0; 9], &[f16::ONE; 8]));
            assert!(r.is_err(), "{}", p.as_str());
        }
    }
}
