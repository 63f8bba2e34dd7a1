//! The SwiGLU activation `out = silu(gate) · up` with `silu(g) = g / (1 + e^-g)`, on a whole
//! row at once (a decode step ran it on one thread through libm's `expf`, 1536 values per
//! layer, while the other threads waited).
//!
//! Owns [`exp`], a Cephes-style `e^x` (range reduction by `ln 2` in two parts, a degree-6
//! polynomial, the power of two put into the exponent bits) written in plain `f32` operations
//! with no branches, so the compiler vectorizes [`swiglu`]'s loop. It is **one** function for
//! every kernel path: x86 runs the same code compiled with AVX2 enabled, aarch64 with its
//! baseline NEON. Rust never fuses a multiply and an add, and every operation used is
//! correctly rounded in IEEE arithmetic on every target, so every path gives the same bits
//! (the tests check it) and the kernel path never changes a token. Must not know about
//! models or layers.

use crate::kernels::KernelPath;

/// `log2(e)`.
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` in two parts (Cephes): `LN2_HI` has few enough bits that `n · LN2_HI` is exact.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// `1.5 · 2^23`: adding and subtracting it rounds an `f32` below 2^22 in magnitude to the
/// nearest integer (ties to even), without a rounding instruction.
const ROUND: f32 = 12_582_912.0;
/// Inputs are clamped to this range, so `2^n` is a normal `f32` (`n` in -126..=127).
const X_MIN: f32 = -87.3;
const X_MAX: f32 = 88.0;

/// `e^x` within 2 ulp of the true value for `x` in [-87.3, 88] (clamped outside: `e^-87.3`
/// ≈ 1.2e-38 below, `e^88` ≈ 1.65e38 above), NaN for NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // `clamp` lets NaN through (both comparisons are false), and lowers to compares and blends.
    let x = x.clamp(X_MIN, X_MAX);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5; // Cephes: 5.0000001201e-1, which is 0.5 in f32
    let y = (p * z + r) + 1.0;
    // n is an integer in -126..=127, so t = ROUND + n lies in ROUND's binade (one ulp apart
    // there) and its bits are ROUND's plus n: 2^n's exponent field from integer operations
    // alone. (`n as i32` saturates, which compilers cannot vectorize: a scalar convert and
    // two conditional moves per lane.) NaN: the bits are garbage, but y is NaN anyway.
    let scale = f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    y * scale
}

/// `silu(g) · u` with [`exp`].
#[inline(always)]
fn swiglu_one(g: f32, u: f32) -> f32 {
    g / (1.0 + exp(-g)) * u
}

/// RoPE on adjacent pairs (llama's): `x` holds dims `first..first + x.len()` of rows of
/// heads `head_dim` long; the pair `(2i, 2i + 1)` of a head turns by `cos[i]`, `sin[i]`,
/// `x0·cos - x1·sin` and `x0·sin + x1·cos` (the model's per-head rotation, the same float
/// operations), and dims of a head past `2·cos.len()` stay as they are. For a matmul part's
/// own rows of the key projection: its rows come in whole pairs.
///
/// # Panics
/// If `first` or `x.len()` is odd, `head_dim` is 0 or odd, or `sin` is shorter than `cos`.
pub fn rope_adjacent(x: &mut [f32], first: usize, head_dim: usize, cos: &[f32], sin: &[f32]) {
    assert!(
        first.is_multiple_of(2)
            && x.len().is_multiple_of(2)
            && head_dim > 0
            && head_dim.is_multiple_of(2)
            && sin.len() >= cos.len(),
        "rope: dims {first}+{} of heads of {head_dim}, {} angles",
        x.len(),
        cos.len()
    );
    for (k, p) in x.chunks_exact_mut(2).enumerate() {
        let i = (first + 2 * k) % head_dim / 2;
        if i < cos.len() {
            let (x0, x1) = (p[0], p[1]);
            p[0] = x0 * cos[i] - x1 * sin[i];
            p[1] = x0 * sin[i] + x1 * cos[i];
        }
    }
}

/// The scalar reference: `out[i] = silu(gate[i]) · up[i]`.
///
/// # Panics
/// If the lengths differ.
pub fn swiglu_ref(gate: &[f32], up: &[f32], out: &mut [f32]) {
    swiglu_loop(gate, up, out)
}

/// [`swiglu_ref`]'s body, inlined into each caller so it is vectorized for that caller's
/// target features.
#[inline(always)]
fn swiglu_loop(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(
        gate.len() == out.len() && up.len() == out.len(),
        "swiglu: lengths {} {} {} differ",
        gate.len(),
        up.len(),
        out.len()
    );
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = swiglu_one(g, u);
    }
}

/// [`swiglu_ref`] on `path` (the same bits on every path; vectorized where the path has SIMD).
/// `path` must be one this CPU supports.
///
/// # Panics
/// If the lengths differ.
pub fn swiglu(path: KernelPath, gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if matches!(path, KernelPath::Avx2 | KernelPath::Avx512Vnni) {
        #[target_feature(enable = "avx2")]
        fn avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
            swiglu_loop(gate, up, out)
        }
        // SAFETY: these paths are chosen (or passed by a test) only on CPUs with AVX2, the
        // one feature the function is compiled for; it is safe code otherwise.
        return unsafe { avx2(gate, up, out) };
    }
    let _ = path;
    swiglu_ref(gate, up, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quants::tests::Rng;

    /// Distance in units in the last place between two finite positive `f32`.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    /// Within 2 ulp of `e^x` (computed in f64) on a dense sweep of [-87.3, 88] and at the
    /// ends; clamped outside; NaN stays NaN; `e^0` is exactly 1.
    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = (0u32, 0f32);
        let n = 2_000_000;
        for i in 0..=n {
            let x = X_MIN + (X_MAX - X_MIN) * (i as f32 / n as f32);
            let want = (x as f64).exp() as f32;
            let u = ulps(exp(x), want);
            if u > worst.0 {
                worst = (u, x);
            }
        }
        assert!(worst.0 <= 2, "exp: {} ulp at x = {:e}", worst.0, worst.1);
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-1000.0), exp(X_MIN));
        assert_eq!(exp(1000.0), exp(X_MAX));
        assert!(exp(f32::NEG_INFINITY) > 0.0 && exp(f32::NEG_INFINITY) < 2e-38);
        assert!(exp(f32::INFINITY).is_finite());
        assert!(exp(f32::NAN).is_nan());
    }

    /// The power of two from `t`'s bits is the one the saturating `n as i32` gives (the
    /// form before, which compilers scalarize): the same bits for every 251st `f32` pattern
    /// (both signs, every exponent, so all of [-87.3, 88] and the clamped ends), and NaN in,
    /// NaN out.
    #[test]
    fn exp_power_of_two_from_bits_matches_the_integer_convert() {
        let by_convert = |x: f32| {
            let x = x.clamp(X_MIN, X_MAX);
            let n = (x * LOG2E + ROUND) - ROUND;
            let r = (x - n * LN2_HI) - n * LN2_LO;
            let z = r * r;
            let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r
                + 4.166_579_6e-2)
                * r
                + 1.666_666_5e-1)
                * r
                + 0.5;
            let y = (p * z + r) + 1.0;
            y * f32::from_bits((((n as i32) + 127) as u32) << 23)
        };
        for bits in (0..=u32::MAX).step_by(251) {
            let x = f32::from_bits(bits);
            let (got, want) = (exp(x), by_convert(x));
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "x = {x:e}: {got:e} vs {want:e}"
            );
        }
    }

    /// SwiGLU against its definition with libm's `exp` (f64): close (where `-g` is past the
    /// clamp, below -88, the tiny result differs by under 1e-35), and exact where silu is 0
    /// or the identity.
    #[test]
    fn swiglu_matches_its_definition() {
        let g = [0.0f32, 1.0, -1.0, 3.5, -7.25, 20.0, -20.0, 100.0, -100.0];
        let u = [2.0f32; 9];
        let mut out = [0f32; 9];
        swiglu_ref(&g, &u, &mut out);
        for (i, (&g, &o)) in g.iter().zip(&out).enumerate() {
            let want = (g as f64 / (1.0 + (-g as f64).exp()) * 2.0) as f32;
            assert!(
                (o - want).abs() <= 4.0 * f32::EPSILON * want.abs() + 1e-35,
                "i={i}: {o:e} vs {want:e}"
            );
        }
        assert_eq!(out[7], 200.0);
        assert_eq!(out[0], 0.0);
    }

    /// Every supported path gives the reference's bits: lengths 0..=70 and 1536 (every tail
    /// of the vector loops), random values with zeros, ±inf, NaN, huge and subnormal ones.
    #[test]
    fn every_path_matches_the_scalar_reference_bit_for_bit() {
        let mut r = Rng::new(0x7377_6967_6c75_2121);
        let value = |r: &mut Rng| match r.next_u64() % 12 {
            0 => 0.0,
            1 => -0.0,
            2 => f32::INFINITY,
            3 => f32::NEG_INFINITY,
            4 => f32::NAN,
            5 => 3e38,
            6 => -1e-40,
            7 => 88.5,
            _ => ((r.next_u64() % 40001) as f32 - 20000.0) / 1000.0,
        };
        let paths: Vec<KernelPath> = KernelPath::ALL
            .into_iter()
            .filter(|p| p.supported())
            .collect();
        for n in (0..=70).chain([1536]) {
            let g: Vec<f32> = (0..n).map(|_| value(&mut r)).collect();
            let u: Vec<f32> = (0..n).map(|_| value(&mut r)).collect();
            let mut want = vec![0f32; n];
            swiglu_ref(&g, &u, &mut want);
            for &p in &paths {
                let mut got = vec![f32::NAN; n];
                swiglu(p, &g, &u, &mut got);
                for i in 0..n {
                    assert!(
                        got[i].to_bits() == want[i].to_bits()
                            || (got[i].is_nan() && want[i].is_nan()),
                        "{} n={n} i={i}: g={:e} u={:e}: {:e} vs {:e}",
                        p.as_str(),
                        g[i],
                        u[i],
                        got[i],
                        want[i]
                    );
                }
            }
        }
    }

    #[test]
    fn length_mismatch_panics() {
        let r = std::panic::catch_unwind(|| swiglu_ref(&[1.0; 3], &[1.0; 2], &mut [0.0; 3]));
        assert!(r.is_err());
    }
}
