//! aarch64 SIMD dot products of quantized blocks: baseline NEON (Cortex-A72/A57, no dotprod),
//! NEON + dotprod (`sdot`; Cortex-A76/A78) and NEON + i8mm (`smmla`, two weight rows × two
//! activation columns at once). Ports of ggml's `ggml-cpu/arch/arm/quants.c`
//! (`ggml_vec_dot_q4_0_q8_0`, `ggml_vec_dot_q4_1_q8_1`, `ggml_vec_dot_q8_0_q8_0`). Plus the
//! Q4_0x8 GEMM on repacked weights (layout in [`crate::kernels::quants::q4_0x8`]) for
//! baseline NEON and dotprod (`sdot` by element), which the model runs for Q4_0 matrices.
//!
//! Owns the `unsafe` of the aarch64 kernels: the unaligned vector loads from the
//! alignment-1 block structs, and the `sdot`/`smmla` inline asm (their intrinsics
//! `vdotq_s32`/`vmmlaq_s32` are unstable on our compilers). It does not choose a path: the
//! caller checks `std::arch::is_aarch64_feature_detected!` once (see
//! [`KernelPath`](crate::kernels::KernelPath)) and only then calls the `_dotprod` / `_i8mm`
//! functions.
//!
//! **Exactness.** Every kernel here is **bit-identical** to the scalar reference
//! ([`crate::kernels::quants`]) and so to the x86 paths: each block's integer dot is computed
//! exactly in i32 lanes (at most 32·128·128 = 2^19 in magnitude, so it converts to f32
//! exactly), the f32 term of each block is the reference's expression (`vmulq`/`vaddq`, never
//! fused), and the terms are summed in the reference's block-striped order
//! ([`lane_total`]): eight blocks at a time, blocks 0..4 of the chunk in one `float32x4_t` and
//! 4..8 in another, the last `n % 8` blocks as a zero-padded group whose absent blocks add
//! +0.0 (see `striped`), so they land in lanes `0..n % 8`. A model gives
//! the same tokens on a Pi 4, a Pi 5, a Graviton and an x86 machine.

#![warn(unsafe_op_in_unsafe_fn)]

use core::arch::aarch64::*;

use bytemuck::Pod;

use crate::kernels::quants::q4_0x8::{BlockQ4_0x8, TILE_ROWS};
use crate::kernels::quants::{
    lane_total, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_1, F16Le,
    LANES,
};

// ---------------------------------------------------------------------------------------------
// Loads and the two ways of computing a 4-lane i8 dot product

/// The 32 nibbles of a Q4 block as bytes 0..=15: (low nibbles = elements 0..16, high nibbles
/// = elements 16..32).
#[inline(always)]
fn load_nibbles(qs: &[u8; 16]) -> (int8x16_t, int8x16_t) {
    // SAFETY: `qs` is 16 readable bytes; `vld1q_u8` has no alignment requirement, and NEON is
    // part of the aarch64 baseline.
    unsafe {
        let v = vld1q_u8(qs.as_ptr());
        (
            vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f))),
            vreinterpretq_s8_u8(vshrq_n_u8::<4>(v)),
        )
    }
}

/// The 32 quants of a Q8 block: (elements 0..16, elements 16..32).
#[inline(always)]
fn load_q8(qs: &[i8; 32]) -> (int8x16_t, int8x16_t) {
    // SAFETY: `qs` is 32 readable bytes, the two loads read bytes 0..16 and 16..32;
    // `vld1q_s8` has no alignment requirement, and NEON is part of the aarch64 baseline.
    unsafe { (vld1q_s8(qs.as_ptr()), vld1q_s8(qs.as_ptr().add(16))) }
}

/// `q − 8` for the unsigned nibbles of Q4_0 (0..=15 → −8..=7).
#[inline(always)]
fn minus_8(v: int8x16_t) -> int8x16_t {
    // SAFETY: plain NEON arithmetic; NEON is part of the aarch64 baseline.
    unsafe { vsubq_s8(v, vdupq_n_s8(8)) }
}

/// `acc[i] + Σ_{k<4} a[4i+k]·b[4i+k]` (or any split of the same 16 products over the four
/// lanes: only the lane total matters to the callers).
trait Dot {
    /// # Safety
    /// The CPU must have the instructions of the implementation.
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t;
}

/// Baseline NEON: widening multiplies (`smull`, `smull2`: |a·b| ≤ 2^14 fits i16) and pairwise
/// widening accumulates into i32 (`sadalp`), like ggml's `ggml_vdotq_s32` without dotprod.
struct MullDot;

impl Dot for MullDot {
    #[inline(always)]
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        // SAFETY: plain NEON arithmetic; NEON is part of the aarch64 baseline.
        unsafe {
            let p0 = vmull_s8(vget_low_s8(a), vget_low_s8(b));
            let p1 = vmull_high_s8(a, b);
            vpadalq_s16(vpadalq_s16(acc, p0), p1)
        }
    }
}

/// `sdot` (Armv8.2 dotprod).
struct SDot;

impl Dot for SDot {
    #[inline(always)]
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        sdot(acc, a, b)
    }
}

/// `sdot acc.4s, a.16b, b.16b`. Only ever inlined into `#[target_feature(enable =
/// "neon,dotprod")]` functions (through [`SDot`]), so the instruction is assembled with, and
/// executed on, a CPU that has dotprod.
#[inline(always)]
fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: register-only arithmetic (no memory, no stack, no flags). Reached only from the
    // `_dotprod` functions, whose callers guarantee dotprod (their `# Safety` contract).
    unsafe {
        core::arch::asm!(
            // The directive lets the assembler accept `sdot` in code LLVM emits outside the
            // `dotprod` functions' own bodies (their inlined closures); whether it may run
            // is the callers' contract above, not the assembler's.
            ".arch_extension dotprod",
            "sdot {0:v}.4s, {1:v}.16b, {2:v}.16b",
            inout(vreg) acc,
            in(vreg) a,
            in(vreg) b,
            options(pure, nomem, nostack)
        );
    }
    acc
}

/// `smmla acc.4s, a.16b, b.16b`: with `a` = rows A0, A1 (8 bytes each) and `b` = rows B0, B1,
/// `acc += [A0·B0, A0·B1, A1·B0, A1·B1]`. Only ever inlined into `#[target_feature(enable =
/// "neon,i8mm")]` functions.
#[inline(always)]
fn smmla(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: register-only arithmetic (no memory, no stack, no flags). Reached only from the
    // `_i8mm` functions, whose callers guarantee i8mm (their `# Safety` contract).
    unsafe {
        core::arch::asm!(
            ".arch_extension i8mm",
            "smmla {0:v}.4s, {1:v}.16b, {2:v}.16b",
            inout(vreg) acc,
            in(vreg) a,
            in(vreg) b,
            options(pure, nomem, nostack)
        );
    }
    acc
}

#[inline(always)]
fn zero_i8() -> int8x16_t {
    // SAFETY: plain NEON; NEON is part of the aarch64 baseline.
    unsafe { vdupq_n_s8(0) }
}

#[inline(always)]
fn zero_i32() -> int32x4_t {
    // SAFETY: plain NEON; NEON is part of the aarch64 baseline.
    unsafe { vdupq_n_s32(0) }
}

#[inline(always)]
fn zero_f32() -> float32x4_t {
    // SAFETY: plain NEON; NEON is part of the aarch64 baseline.
    unsafe { vdupq_n_f32(0.0) }
}

// ---------------------------------------------------------------------------------------------
// One-row kernels, generic over the dot instruction

#[inline(always)]
fn q4_0_block<D: Dot>(x: &BlockQ4_0, y: &BlockQ8_0) -> int32x4_t {
    let (xl, xh) = load_nibbles(&x.qs);
    let (yl, yh) = load_q8(&y.qs);
    // SAFETY: `D`'s instructions are available: the caller is a kernel whose target features
    // (or the aarch64 baseline) provide them.
    unsafe { D::dot(D::dot(zero_i32(), minus_8(xl), yl), minus_8(xh), yh) }
}

#[inline(always)]
fn q4_1_block<D: Dot>(x: &BlockQ4_1, y: &BlockQ8_1) -> int32x4_t {
    let (xl, xh) = load_nibbles(&x.qs);
    let (yl, yh) = load_q8(&y.qs);
    // SAFETY: as in `q4_0_block`. The nibbles 0..=15 are the same as i8.
    unsafe { D::dot(D::dot(zero_i32(), xl, yl), xh, yh) }
}

#[inline(always)]
fn q8_0_block<D: Dot>(x: &BlockQ8_0, y: &BlockQ8_0) -> int32x4_t {
    let (xl, xh) = load_q8(&x.qs);
    let (yl, yh) = load_q8(&y.qs);
    // SAFETY: as in `q4_0_block`.
    unsafe { D::dot(D::dot(zero_i32(), xl, yl), xh, yh) }
}

/// The exact sums of four blocks' i32 lanes, `[Σv0, Σv1, Σv2, Σv3]`, as f32 (exact: ≤ 2^19).
#[inline(always)]
fn block_sums_4(v: [int32x4_t; 4]) -> float32x4_t {
    // SAFETY: NEON is part of the aarch64 baseline. `vpaddq` adds adjacent pairs.
    unsafe {
        let s = vpaddq_s32(vpaddq_s32(v[0], v[1]), vpaddq_s32(v[2], v[3]));
        vcvtq_f32_s32(s)
    }
}

/// Four f16 scales to f32 with `fcvtl` (exact; NaNs quieted with their payload, like
/// [`F16Le::get`]). Through `asm!` because `vcvt_f32_f16` needs the unstable `f16` type.
#[inline(always)]
fn f16x4(h: [F16Le; 4]) -> float32x4_t {
    let bits: [u16; 4] = h.map(|h| u16::from_le_bytes(h.0));
    // SAFETY: `bits` is 8 readable bytes for `vld1_u16`; `fcvtl` is base AArch64 (no FP16
    // extension needed for conversions), register-only, no memory, stack or flags.
    unsafe {
        let v = vld1_u16(bits.as_ptr());
        let out: float32x4_t;
        core::arch::asm!(
            "fcvtl {0:v}.4s, {1:v}.4h",
            out(vreg) out,
            in(vreg) v,
            options(pure, nomem, nostack)
        );
        out
    }
}

#[inline(always)]
fn mul(a: float32x4_t, b: float32x4_t) -> float32x4_t {
    // SAFETY: NEON is part of the aarch64 baseline.
    unsafe { vmulq_f32(a, b) }
}

#[inline(always)]
fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
    // SAFETY: NEON is part of the aarch64 baseline.
    unsafe { vaddq_f32(a, b) }
}

/// The reference's block-striped sum (see the module doc): `quad` gives the f32 terms of four
/// consecutive blocks (in lane order). The tail (the `n % 8` blocks after the whole groups of
/// eight) is copied into a zero-padded group and goes through `quad` like the rest: an absent
/// block has zero scales and quants, so its term is +0.0, and adding +0.0 leaves a lane as it
/// was (lanes start at +0.0, so none is ever -0.0) — the reference adds the tail's terms to
/// lanes `0..n % 8` only, and the result is the same bit for bit. (It used to be a scalar term
/// per tail block, each f16 scale converted by an out-of-line call: 2 of the 18 blocks of a
/// SmolLM2 row, and on x86 the same kind of tail cost more than the 16 whole blocks.)
#[inline(always)]
fn striped<X: Pod, Y: Pod>(
    x: &[X],
    y: &[Y],
    quad: impl Fn(&[X; 4], &[Y; 4]) -> float32x4_t,
) -> f32 {
    let (xc, xr) = x.as_chunks::<8>();
    let (yc, yr) = y.as_chunks::<8>();
    let (mut lo, mut hi) = (zero_f32(), zero_f32());
    for (xc, yc) in xc.iter().zip(yc) {
        let (x0, x1) = xc.split_at(4);
        let (y0, y1) = yc.split_at(4);
        lo = add(lo, quad(x0.try_into().unwrap(), y0.try_into().unwrap()));
        hi = add(hi, quad(x1.try_into().unwrap(), y1.try_into().unwrap()));
    }
    if !xr.is_empty() {
        // Element by element (fixed-size copies, no memset/memcpy call per row).
        let xt: [X; 8] = core::array::from_fn(|k| xr.get(k).copied().unwrap_or_else(X::zeroed));
        let yt: [Y; 8] = core::array::from_fn(|k| yr.get(k).copied().unwrap_or_else(Y::zeroed));
        let (x0, x1) = xt.split_at(4);
        let (y0, y1) = yt.split_at(4);
        lo = add(lo, quad(x0.try_into().unwrap(), y0.try_into().unwrap()));
        if xr.len() > 4 {
            hi = add(hi, quad(x1.try_into().unwrap(), y1.try_into().unwrap()));
        }
    }
    let mut l = [0f32; LANES];
    // SAFETY: `l` is 8 writable f32, the stores write 0..4 and 4..8.
    unsafe {
        vst1q_f32(l.as_mut_ptr(), lo);
        vst1q_f32(l.as_mut_ptr().add(4), hi);
    }
    lane_total(&l)
}

// The float part of each kernel repeats the scalar reference's expression per block
// (`quants::q4_0::vec_dot_q4_0_q8_0` etc.; `vmulq`/`vaddq`, never fused) and its summation
// order, and the integer part is exact, so every NEON path is bit-identical to the scalar one.

#[inline(always)]
fn q4_0_q8_0<D: Dot>(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len(), "Q4_0 vec_dot: block counts differ");
    striped(x, y, |x, y| {
        let s = block_sums_4(core::array::from_fn(|k| q4_0_block::<D>(&x[k], &y[k])));
        mul(
            mul(s, f16x4(x.each_ref().map(|b| b.d))),
            f16x4(y.each_ref().map(|b| b.d)),
        )
    })
}

#[inline(always)]
fn q4_1_q8_1<D: Dot>(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    assert_eq!(x.len(), y.len(), "Q4_1 vec_dot: block counts differ");
    striped(x, y, |x, y| {
        let s = block_sums_4(core::array::from_fn(|k| q4_1_block::<D>(&x[k], &y[k])));
        let dd = mul(
            f16x4(x.each_ref().map(|b| b.d)),
            f16x4(y.each_ref().map(|b| b.d)),
        );
        let ms = mul(
            f16x4(x.each_ref().map(|b| b.m)),
            f16x4(y.each_ref().map(|b| b.s)),
        );
        add(mul(dd, s), ms)
    })
}

#[inline(always)]
fn q8_0_q8_0<D: Dot>(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len(), "Q8_0 vec_dot: block counts differ");
    striped(x, y, |x, y| {
        let s = block_sums_4(core::array::from_fn(|k| q8_0_block::<D>(&x[k], &y[k])));
        mul(
            s,
            mul(
                f16x4(x.each_ref().map(|b| b.d)),
                f16x4(y.each_ref().map(|b| b.d)),
            ),
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Baseline NEON

/// Q4_0 · Q8_0 with baseline NEON (no dotprod); bit-identical to
/// [`vec_dot_q4_0_q8_0`](crate::kernels::quants::q4_0::vec_dot_q4_0_q8_0) (see the module
/// doc).
///
/// # Safety
/// None beyond aarch64 (NEON is part of the baseline); `unsafe` only for a uniform kernel
/// signature.
///
/// # Panics
/// If the block counts differ.
pub unsafe fn vec_dot_q4_0_q8_0_neon(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    q4_0_q8_0::<MullDot>(x, y)
}

/// Q4_1 · Q8_1 with baseline NEON; see [`vec_dot_q4_0_q8_0_neon`].
///
/// # Safety
/// None beyond aarch64 (NEON is part of the baseline).
///
/// # Panics
/// If the block counts differ.
pub unsafe fn vec_dot_q4_1_q8_1_neon(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    q4_1_q8_1::<MullDot>(x, y)
}

/// Q8_0 · Q8_0 with baseline NEON; see [`vec_dot_q4_0_q8_0_neon`].
///
/// # Safety
/// None beyond aarch64 (NEON is part of the baseline).
///
/// # Panics
/// If the block counts differ.
pub unsafe fn vec_dot_q8_0_q8_0_neon(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    q8_0_q8_0::<MullDot>(x, y)
}

// ---------------------------------------------------------------------------------------------
// NEON + dotprod

/// Q4_0 · Q8_0 with `sdot`.
///
/// # Safety
/// The CPU must have dotprod (`std::arch::is_aarch64_feature_detected!("dotprod")`).
///
/// # Panics
/// If the block counts differ.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn vec_dot_q4_0_q8_0_dotprod(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    q4_0_q8_0::<SDot>(x, y)
}

/// Q4_1 · Q8_1 with `sdot`.
///
/// # Safety
/// The CPU must have dotprod (`std::arch::is_aarch64_feature_detected!("dotprod")`).
///
/// # Panics
/// If the block counts differ.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn vec_dot_q4_1_q8_1_dotprod(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    q4_1_q8_1::<SDot>(x, y)
}

/// Q8_0 · Q8_0 with `sdot`.
///
/// # Safety
/// The CPU must have dotprod (`std::arch::is_aarch64_feature_detected!("dotprod")`).
///
/// # Panics
/// If the block counts differ.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn vec_dot_q8_0_q8_0_dotprod(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    q8_0_q8_0::<SDot>(x, y)
}

// ---------------------------------------------------------------------------------------------
// K-quants (Q4_K, Q6_K × Q8_K), every aarch64 path
//
// The reference (ggml's generic `vec_dot_q4_K_q8_K`) keeps eight i32 sums per 256-element
// block, element `i` in sum `i % 8`, and converts each to f32 on its own, so the split of the
// products over the lanes is part of the result. A widening multiply keeps it for free:
// `smull` of eight consecutive bytes gives lane `j` = element `8k + j`. `sdot` adds four
// consecutive bytes into one lane, which mixes four lanes; using it would take two `tbl`
// transposes (weights and activations) per 32 elements, more instructions than it saves
// (4 `tbl` + 2 `sdot` against 4 `smull`/`smlal`). So one kernel serves every aarch64 path.

/// `[elements 8k + 0..8]` summed over `k` of `a·b` for 16-byte `a`, `b`: lane `j` of the
/// result is `a[j]·b[j] + a[8+j]·b[8+j]` (`smull` + `smlal2`; the caller bounds the sum to i16).
#[inline(always)]
fn mull_pair(a: int8x16_t, b: int8x16_t) -> int16x8_t {
    // SAFETY: plain NEON arithmetic; NEON is part of the aarch64 baseline.
    unsafe { vmlal_high_s8(vmull_s8(vget_low_s8(a), vget_low_s8(b)), a, b) }
}

/// `acc + p · s` in the eight i32 lanes `(lo, hi)` (`smlal`/`smlal2`: exact).
#[inline(always)]
fn mla_scale(acc: (int32x4_t, int32x4_t), p: int16x8_t, s: i16) -> (int32x4_t, int32x4_t) {
    // SAFETY: plain NEON arithmetic; NEON is part of the aarch64 baseline.
    unsafe {
        (
            vmlal_n_s16(acc.0, vget_low_s16(p), s),
            vmlal_high_n_s16(acc.1, p, s),
        )
    }
}

/// `sums[lane] += d · aux[lane]` for the eight lanes (`fmul` then `fadd`, never fused, as the
/// reference's `sums[l] += d * aux32[l]`; `aux` ≤ 2^22 converts exactly).
#[inline(always)]
fn add_scaled(
    sums: (float32x4_t, float32x4_t),
    d: f32,
    aux: (int32x4_t, int32x4_t),
) -> (float32x4_t, float32x4_t) {
    // SAFETY: plain NEON arithmetic; NEON is part of the aarch64 baseline.
    unsafe {
        let d = vdupq_n_f32(d);
        (
            add(sums.0, mul(d, vcvtq_f32_s32(aux.0))),
            add(sums.1, mul(d, vcvtq_f32_s32(aux.1))),
        )
    }
}

/// `init + sums[0] + … + sums[7]`, left to right (the reference's final loop).
#[inline(always)]
fn add_lanes(init: f32, sums: (float32x4_t, float32x4_t)) -> f32 {
    let mut l = [0f32; 8];
    // SAFETY: `l` is 8 writable f32, the stores write 0..4 and 4..8.
    unsafe {
        vst1q_f32(l.as_mut_ptr(), sums.0);
        vst1q_f32(l.as_mut_ptr().add(4), sums.1);
    }
    l.iter().fold(init, |s, &v| s + v)
}

/// Q4_K · Q8_K for every aarch64 path; bit-identical to
/// [`vec_dot_q4k_q8k`](crate::kernels::quants::k_quants::vec_dot_q4k_q8k) (see the section
/// comment above).
///
/// Per 32-element sub-block: the nibbles (`and` / `ushr`, one load serving two sub-blocks),
/// four widening multiplies into i16 (|Σ| ≤ 4·15·128 = 7680) and two `smlal` by the 6-bit
/// scale into the eight i32 lanes. The mins term `Σ bsums·m` is exact in i32 (`addp`, `smull`,
/// `smlal2`, `addv`).
///
/// # Safety
/// None beyond aarch64 (NEON is part of the baseline); `unsafe` only for a uniform kernel
/// signature.
///
/// # Panics
/// If the block counts differ.
pub unsafe fn vec_dot_q4k_q8k_neon(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "Q4_K vec_dot: block counts differ");
    let mut sums = (zero_f32(), zero_f32());
    let mut sumf = 0f32;
    for (x, y) in x.iter().zip(y) {
        let (sc, mn) = crate::kernels::quants::k_quants::scales_mins_k4(&x.scales);
        // SAFETY: NEON is part of the aarch64 baseline. Loads: 16 bytes at 16·k (k < 8) of the
        // 128-byte `x.qs`, at 16·k (k < 16) of the 256-byte `y.qs`, the 32-byte `y.bsums` in
        // two halves, and the 8-byte `mn`.
        let (aux, summ) = unsafe {
            // Σ bsums[j]·mins[j/2]: adjacent bsums paired (|pair| ≤ 2·16·128, i16), × mins.
            let b0 = vld1q_s16(y.bsums.as_ptr().cast());
            let b1 = vld1q_s16(y.bsums.as_ptr().add(8).cast());
            let pairs = vpaddq_s16(b0, b1);
            let m = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(mn.as_ptr())));
            let summ = vaddvq_s32(vmlal_high_s16(
                vmull_s16(vget_low_s16(pairs), vget_low_s16(m)),
                pairs,
                m,
            ));
            let mut aux = (zero_i32(), zero_i32());
            let (xq, yq) = (x.qs.as_ptr(), y.qs.as_ptr());
            for c in 0..4 {
                let (q0, q1) = (vld1q_u8(xq.add(32 * c)), vld1q_u8(xq.add(32 * c + 16)));
                let m4 = vdupq_n_u8(0x0f);
                let lo = [vandq_u8(q0, m4), vandq_u8(q1, m4)].map(|v| vreinterpretq_s8_u8(v));
                let hi = [vshrq_n_u8::<4>(q0), vshrq_n_u8::<4>(q1)].map(|v| vreinterpretq_s8_u8(v));
                let a: [int8x16_t; 4] = core::array::from_fn(|k| vld1q_s8(yq.add(64 * c + 16 * k)));
                let p_lo = vaddq_s16(mull_pair(lo[0], a[0]), mull_pair(lo[1], a[1]));
                let p_hi = vaddq_s16(mull_pair(hi[0], a[2]), mull_pair(hi[1], a[3]));
                aux = mla_scale(aux, p_lo, sc[2 * c] as i16);
                aux = mla_scale(aux, p_hi, sc[2 * c + 1] as i16);
            }
            (aux, summ)
        };
        let d = x.d.get() * y.d.get();
        sums = add_scaled(sums, d, aux);
        let dmin = x.dmin.get() * y.d.get();
        sumf -= dmin * summ as f32;
    }
    add_lanes(sumf, sums)
}

/// Q6_K · Q8_K for every aarch64 path; bit-identical to
/// [`vec_dot_q6k_q8k`](crate::kernels::quants::k_quants::vec_dot_q6k_q8k).
///
/// Per 16-element sub-block: the 6-bit quants rebuilt from `ql` / `qh` (shared by four
/// sub-blocks), minus 32, two widening multiplies into i16 (|Σ| ≤ 2·32·128 = 8192) and two
/// `smlal` by the i8 scale into the eight i32 lanes.
///
/// # Safety
/// None beyond aarch64 (NEON is part of the baseline); `unsafe` only for a uniform kernel
/// signature.
///
/// # Panics
/// If the block counts differ.
pub unsafe fn vec_dot_q6k_q8k_neon(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "Q6_K vec_dot: block counts differ");
    let mut sums = (zero_f32(), zero_f32());
    for (x, y) in x.iter().zip(y) {
        // SAFETY: NEON is part of the aarch64 baseline. Loads: 16 bytes at 64·h + 16·k (h < 2,
        // k < 4) of the 128-byte `x.ql`, at 32·h + 16·k (k < 2) of the 64-byte `x.qh`, at
        // 128·h + 16·k (k < 8) of the 256-byte `y.qs`.
        let aux = unsafe {
            let mut aux = (zero_i32(), zero_i32());
            let (m4, m2, k32) = (vdupq_n_u8(0x0f), vdupq_n_u8(0x03), vdupq_n_s8(32));
            for h in 0..2 {
                let ql = x.ql.as_ptr().add(64 * h);
                let qh = x.qh.as_ptr().add(32 * h);
                for k in 0..2 {
                    // Elements 128h + 32t + 16k + 0..16 of quant set t = 0..4 (see `BlockQ6K`).
                    let l0 = vld1q_u8(ql.add(16 * k));
                    let l1 = vld1q_u8(ql.add(32 + 16 * k));
                    let hb = vld1q_u8(qh.add(16 * k));
                    let q = [
                        vorrq_u8(vandq_u8(l0, m4), vshlq_n_u8::<4>(vandq_u8(hb, m2))),
                        vorrq_u8(
                            vandq_u8(l1, m4),
                            vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<2>(hb), m2)),
                        ),
                        vorrq_u8(
                            vshrq_n_u8::<4>(l0),
                            vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<4>(hb), m2)),
                        ),
                        vorrq_u8(vshrq_n_u8::<4>(l1), vshlq_n_u8::<4>(vshrq_n_u8::<6>(hb))),
                    ];
                    for (t, &q) in q.iter().enumerate() {
                        let q = vsubq_s8(vreinterpretq_s8_u8(q), k32);
                        let a = vld1q_s8(y.qs.as_ptr().add(128 * h + 32 * t + 16 * k));
                        let s = x.scales[8 * h + 2 * t + k];
                        aux = mla_scale(aux, mull_pair(q, a), s as i16);
                    }
                }
            }
            aux
        };
        let d = x.d.get() * y.d.get();
        sums = add_scaled(sums, d, aux);
    }
    add_lanes(0.0, sums)
}

// ---------------------------------------------------------------------------------------------
// NEON + i8mm: 2 rows × 2 columns per `smmla`

/// `(zip1, zip2)` of the 64-bit halves: `([a.lo, b.lo], [a.hi, b.hi])` — the `smmla` operand
/// layout (row 0 in bytes 0..8, row 1 in bytes 8..16).
#[inline(always)]
fn zip64(a: int8x16_t, b: int8x16_t) -> (int8x16_t, int8x16_t) {
    // SAFETY: plain NEON permutes; NEON is part of the aarch64 baseline.
    unsafe {
        let (a, b) = (vreinterpretq_s64_s8(a), vreinterpretq_s64_s8(b));
        (
            vreinterpretq_s8_s64(vzip1q_s64(a, b)),
            vreinterpretq_s8_s64(vzip2q_s64(a, b)),
        )
    }
}

/// `[A0·B0, A0·B1, A1·B0, A1·B1]` over 32 elements, the rows given as two 16-byte halves
/// each, by four `smmla`.
#[inline(always)]
fn mmla_2x2(
    a0: [int8x16_t; 2],
    a1: [int8x16_t; 2],
    b0: [int8x16_t; 2],
    b1: [int8x16_t; 2],
) -> int32x4_t {
    let mut acc = zero_i32();
    for h in 0..2 {
        let (l0, l1) = zip64(a0[h], a1[h]);
        let (r0, r1) = zip64(b0[h], b1[h]);
        acc = smmla(acc, l0, r0);
        acc = smmla(acc, l1, r1);
    }
    acc
}

/// `[a0, a0, a1, a1]` and `[b0, b1, b0, b1]`: the row and column operands of the four pairs
/// `[x0·y0, x0·y1, x1·y0, x1·y1]` that `smmla` computes.
#[inline(always)]
fn rows_cols(a0: f32, a1: f32, b0: f32, b1: f32) -> (float32x4_t, float32x4_t) {
    let (r, c) = ([a0, a0, a1, a1], [b0, b1, b0, b1]);
    // SAFETY: `r`, `c` are 4 readable f32 each; NEON is part of the aarch64 baseline.
    unsafe { (vld1q_f32(r.as_ptr()), vld1q_f32(c.as_ptr())) }
}

#[inline(always)]
fn store_2x2(v: float32x4_t) -> [f32; 4] {
    let mut out = [0f32; 4];
    // SAFETY: `out` is 4 writable f32.
    unsafe { vst1q_f32(out.as_mut_ptr(), v) };
    out
}

#[inline(always)]
fn to_f32(v: int32x4_t) -> float32x4_t {
    // SAFETY: NEON is part of the aarch64 baseline.
    unsafe { vcvtq_f32_s32(v) }
}

/// The block-striped sums of the four pairs at once: `term(i)` is block `i`'s four f32 terms
/// `[x0·y0, x0·y1, x1·y0, x1·y1]`, added to the lane vector `i % 8`; each pair's eight lanes
/// are then reduced in [`lane_total`]'s order — per pair, exactly the one-row order — by
/// whole-vector adds (see [`lane_totals`]).
#[inline(always)]
fn striped_2x2(n: usize, term: impl Fn(usize) -> float32x4_t) -> [f32; 4] {
    let mut acc = [zero_f32(); LANES];
    for i in 0..n {
        acc[i % LANES] = add(acc[i % LANES], term(i));
    }
    store_2x2(lane_totals(&acc))
}

/// [`lane_total`] of every vector lane at once: lane `p` of the result is
/// `lane_total(&[acc[0][p], …, acc[7][p]])`, computed as
/// `((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))` on whole vectors (the order
/// `lane_total` adds in), not by storing the lanes and reducing each one in scalar code: the
/// per-lane form once compiled to gathers on x86. Here LLVM had already turned it into vector
/// adds, with extra stack traffic: the one-row tile GEMM has 14 stores instead of 24 with
/// this form and about as many instructions (`aarch64-linux-gnu-objdump -d` of the release
/// binary); the i8mm 2×2 dots compile to the same code either way.
#[inline(always)]
fn lane_totals(a: &[float32x4_t; LANES]) -> float32x4_t {
    let t = [
        add(a[0], a[4]),
        add(a[1], a[5]),
        add(a[2], a[6]),
        add(a[3], a[7]),
    ];
    add(add(t[0], t[2]), add(t[1], t[3]))
}

/// Two Q4_0 rows · two Q8_0 activation columns with `smmla`: `[x0·y0, x0·y1, x1·y0, x1·y1]`,
/// each bit-identical to [`vec_dot_q4_0_q8_0_neon`] of that pair (and to the scalar
/// reference). Integer part like ggml's `nrc == 2` path of `ggml_vec_dot_q4_0_q8_0`; an odd
/// last row or column is the caller's.
///
/// # Safety
/// The CPU must have i8mm (`std::arch::is_aarch64_feature_detected!("i8mm")`).
///
/// # Panics
/// If the four block counts are not all equal.
#[target_feature(enable = "neon,i8mm")]
pub unsafe fn vec_dot_q4_0_q8_0_i8mm_2x2(
    x0: &[BlockQ4_0],
    x1: &[BlockQ4_0],
    y0: &[BlockQ8_0],
    y1: &[BlockQ8_0],
) -> [f32; 4] {
    let n = x0.len();
    assert!(
        x1.len() == n && y0.len() == n && y1.len() == n,
        "Q4_0 vec_dot 2x2: block counts differ"
    );
    striped_2x2(n, |i| {
        let (a, b, c, d) = (&x0[i], &x1[i], &y0[i], &y1[i]);
        let (al, ah) = load_nibbles(&a.qs);
        let (bl, bh) = load_nibbles(&b.qs);
        let (cl, ch) = load_q8(&c.qs);
        let (dl, dh) = load_q8(&d.qs);
        let s = to_f32(mmla_2x2(
            [minus_8(al), minus_8(ah)],
            [minus_8(bl), minus_8(bh)],
            [cl, ch],
            [dl, dh],
        ));
        let (dx, dy) = rows_cols(a.d.get(), b.d.get(), c.d.get(), d.d.get());
        mul(mul(s, dx), dy)
    })
}

/// Two Q4_1 rows · two Q8_1 activation columns with `smmla`: `[x0·y0, x0·y1, x1·y0, x1·y1]`,
/// each bit-identical to the one-row kernels (ggml's `nrc == 2` path of
/// `ggml_vec_dot_q4_1_q8_1` for the integer part).
///
/// # Safety
/// The CPU must have i8mm (`std::arch::is_aarch64_feature_detected!("i8mm")`).
///
/// # Panics
/// If the four block counts are not all equal.
#[target_feature(enable = "neon,i8mm")]
pub unsafe fn vec_dot_q4_1_q8_1_i8mm_2x2(
    x0: &[BlockQ4_1],
    x1: &[BlockQ4_1],
    y0: &[BlockQ8_1],
    y1: &[BlockQ8_1],
) -> [f32; 4] {
    let n = x0.len();
    assert!(
        x1.len() == n && y0.len() == n && y1.len() == n,
        "Q4_1 vec_dot 2x2: block counts differ"
    );
    striped_2x2(n, |i| {
        let (a, b, c, d) = (&x0[i], &x1[i], &y0[i], &y1[i]);
        let (al, ah) = load_nibbles(&a.qs);
        let (bl, bh) = load_nibbles(&b.qs);
        let (cl, ch) = load_q8(&c.qs);
        let (dl, dh) = load_q8(&d.qs);
        let s = to_f32(mmla_2x2([al, ah], [bl, bh], [cl, ch], [dl, dh]));
        let (dx, dy) = rows_cols(a.d.get(), b.d.get(), c.d.get(), d.d.get());
        let (mx, sy) = rows_cols(a.m.get(), b.m.get(), c.s.get(), d.s.get());
        add(mul(mul(dx, dy), s), mul(mx, sy))
    })
}

/// Two Q8_0 rows · two Q8_0 activation columns with `smmla`: `[x0·y0, x0·y1, x1·y0, x1·y1]`,
/// each bit-identical to the one-row kernels (ggml's `nrc == 2` path of
/// `ggml_vec_dot_q8_0_q8_0` for the integer part).
///
/// # Safety
/// The CPU must have i8mm (`std::arch::is_aarch64_feature_detected!("i8mm")`).
///
/// # Panics
/// If the four block counts are not all equal.
#[target_feature(enable = "neon,i8mm")]
pub unsafe fn vec_dot_q8_0_q8_0_i8mm_2x2(
    x0: &[BlockQ8_0],
    x1: &[BlockQ8_0],
    y0: &[BlockQ8_0],
    y1: &[BlockQ8_0],
) -> [f32; 4] {
    let n = x0.len();
    assert!(
        x1.len() == n && y0.len() == n && y1.len() == n,
        "Q8_0 vec_dot 2x2: block counts differ"
    );
    striped_2x2(n, |i| {
        let (a, b, c, d) = (&x0[i], &x1[i], &y0[i], &y1[i]);
        let (al, ah) = load_q8(&a.qs);
        let (bl, bh) = load_q8(&b.qs);
        let (cl, ch) = load_q8(&c.qs);
        let (dl, dh) = load_q8(&d.qs);
        let s = to_f32(mmla_2x2([al, ah], [bl, bh], [cl, ch], [dl, dh]));
        let (dx, dy) = rows_cols(a.d.get(), b.d.get(), c.d.get(), d.d.get());
        mul(s, mul(dx, dy))
    })
}

// ---------------------------------------------------------------------------------------------
// Q4_0x8 GEMM: eight repacked rows × up to four activation rows (see `quants::q4_0x8`)

/// `acc[r] + Σ_{t<4} w[4r+t] · y[4L+t]` for each lane `r`: four quants of row `r` times the
/// activation bytes of group `L` (0..4) of `y` — exactly per lane, unlike [`Dot`], because in
/// the repacked layout lane `r` is weight row `r`. `Y` is the activation register as the
/// instruction wants it, made once per activation row by `prep` and used for both half tiles.
trait LaneDot {
    type Y: Copy;
    fn prep(y: int8x16_t) -> Self::Y;
    /// # Safety
    /// The CPU must have the instructions of the implementation.
    unsafe fn dot_lane<const L: i32>(acc: int32x4_t, w: int8x16_t, y: Self::Y) -> int32x4_t;
}

impl LaneDot for MullDot {
    /// The four groups, each `dup`ed to every lane.
    type Y = [int8x16_t; 4];
    #[inline(always)]
    fn prep(y: int8x16_t) -> [int8x16_t; 4] {
        // SAFETY: plain NEON; NEON is part of the aarch64 baseline.
        unsafe {
            let y = vreinterpretq_s32_s8(y);
            [
                vreinterpretq_s8_s32(vdupq_laneq_s32::<0>(y)),
                vreinterpretq_s8_s32(vdupq_laneq_s32::<1>(y)),
                vreinterpretq_s8_s32(vdupq_laneq_s32::<2>(y)),
                vreinterpretq_s8_s32(vdupq_laneq_s32::<3>(y)),
            ]
        }
    }
    /// `smull` + `smull2` (|w·y| ≤ 15·128 fits i16), `addp` (the pairs of one lane sit side by
    /// side: ≤ 3840) and `sadalp` into the lane.
    #[inline(always)]
    unsafe fn dot_lane<const L: i32>(acc: int32x4_t, w: int8x16_t, y: [int8x16_t; 4]) -> int32x4_t {
        // SAFETY: plain NEON arithmetic; NEON is part of the aarch64 baseline.
        unsafe {
            let b = y[L as usize];
            let p0 = vmull_s8(vget_low_s8(w), vget_low_s8(b));
            let p1 = vmull_high_s8(w, b);
            vpadalq_s16(acc, vpaddq_s16(p0, p1))
        }
    }
}

impl LaneDot for SDot {
    type Y = int8x16_t;
    #[inline(always)]
    fn prep(y: int8x16_t) -> int8x16_t {
        y
    }
    /// `sdot acc.4s, w.16b, y.4b[L]` (the by-element form: no `dup`).
    #[inline(always)]
    unsafe fn dot_lane<const L: i32>(mut acc: int32x4_t, w: int8x16_t, y: int8x16_t) -> int32x4_t {
        // SAFETY: register-only arithmetic (no memory, no stack, no flags). Reached only from
        // the `_dotprod` functions, whose callers guarantee dotprod (their `# Safety`
        // contract); the directive is as in [`sdot`].
        unsafe {
            core::arch::asm!(
                ".arch_extension dotprod",
                "sdot {0:v}.4s, {1:v}.16b, {2:v}.4b[{l}]",
                inout(vreg) acc,
                in(vreg) w,
                in(vreg) y,
                l = const L,
                options(pure, nomem, nostack)
            );
        }
        acc
    }
}

/// One tile × `A` activation rows, bit-identical per row to the scalar reference (see
/// `quants::q4_0x8`): per block the eight chunk vectors of each half tile (rows 0..4, 4..8)
/// are split into low nibbles (`and`) and high ones (`ushr` 4) once for all `A` rows; per
/// activation row and half, eight lane dots from `-8·Σ y` (Q4_0's offset,
/// [`QuantizedActs::qsums`]) give the four rows' exact `Σ (q − 8)·y`, then `(sumi · dx) · dy`
/// in f32 is added into accumulator `i % 8` — the reference's lane order, so a tail needs no
/// padding.
///
/// [`QuantizedActs::qsums`]: crate::kernels::quants::QuantizedActs::qsums
#[inline(always)]
fn gemm_q4_0x8<D: LaneDot, const A: usize>(
    x: &[BlockQ4_0x8],
    y: [&[BlockQ8_0]; A],
    yd: [&[f32]; A],
    ysum: [&[i32]; A],
) -> [[f32; TILE_ROWS]; A] {
    let n = x.len();
    let y = y.map(|s| {
        assert_eq!(s.len(), n, "Q4_0x8 GEMM: block counts differ");
        s
    });
    let yd = yd.map(|s| &s[..n]);
    let ysum = ysum.map(|s| &s[..n]);
    let mut acc = [[[zero_f32(); 2]; LANES]; A];
    for (i, xb) in x.iter().enumerate() {
        // Plain loops, not `array::map`: rustc 1.96 left the nested maps as calls to
        // `core::array::try_map` (eight per block, the vectors through the stack), which
        // `scripts/neon-instruction-counts`'s loop counts did not show.
        let (mut lo, mut hi) = ([[zero_i8(); 2]; 4], [[zero_i8(); 2]; 4]);
        for j in 0..4 {
            for h in 0..2 {
                // SAFETY: the load reads 16 bytes inside `xb.qs` (chunk j, half h: bytes
                // 32j + 16h .. + 16 of 128); NEON is part of the aarch64 baseline.
                unsafe {
                    let v = vld1q_u8(xb.qs.as_ptr().add(32 * j + 16 * h));
                    lo[j][h] = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f)));
                    hi[j][h] = vreinterpretq_s8_u8(vshrq_n_u8::<4>(v));
                }
            }
        }
        let dx = [
            f16x4([xb.d[0], xb.d[1], xb.d[2], xb.d[3]]),
            f16x4([xb.d[4], xb.d[5], xb.d[6], xb.d[7]]),
        ];
        for a in 0..A {
            let (yl, yh) = load_q8(&y[a][i].qs);
            let (yl, yh) = (D::prep(yl), D::prep(yh));
            // SAFETY: `D`'s instructions are available (the caller's target features or the
            // baseline); plain NEON otherwise.
            unsafe {
                // The lane sums start at `-8·Σ y` (Q4_0's offset) instead of 0, so no
                // subtraction follows: the same integers (|8·Σ y| ≤ 32768, far from
                // overflow); 3 instructions fewer per activation row with dotprod, the same
                // count on baseline NEON (`scripts/neon-instruction-counts`).
                let off = vdupq_n_s32(-(ysum[a][i] << 3));
                let dy = vdupq_n_f32(yd[a][i]);
                for h in 0..2 {
                    let mut s = off;
                    s = D::dot_lane::<0>(s, lo[0][h], yl);
                    s = D::dot_lane::<1>(s, lo[1][h], yl);
                    s = D::dot_lane::<2>(s, lo[2][h], yl);
                    s = D::dot_lane::<3>(s, lo[3][h], yl);
                    s = D::dot_lane::<0>(s, hi[0][h], yh);
                    s = D::dot_lane::<1>(s, hi[1][h], yh);
                    s = D::dot_lane::<2>(s, hi[2][h], yh);
                    s = D::dot_lane::<3>(s, hi[3][h], yh);
                    let t = mul(mul(to_f32(s), dx[h]), dy);
                    acc[a][i % LANES][h] = add(acc[a][i % LANES][h], t);
                }
            }
        }
    }
    acc.map(|acc| {
        // Rows 0..4 from the low halves, 4..8 from the high ones: each row's lane sums reduced
        // in `lane_total`'s order by whole-vector adds.
        let [lo, hi] = [0, 1].map(|h| store_2x2(lane_totals(&core::array::from_fn(|k| acc[k][h]))));
        core::array::from_fn(|r| if r < 4 { lo[r] } else { hi[r - 4] })
    })
}

/// Eight Q4_0 rows ([`BlockQ4_0x8`] tile) × `A` Q8_0 activation rows with baseline NEON;
/// `out[a][r]` is bit-identical to the scalar reference dot of row `r` and activation `a`.
/// `yd`, `ysum`: [`QuantizedActs::scales`], [`QuantizedActs::qsums`].
///
/// [`QuantizedActs::scales`]: crate::kernels::quants::QuantizedActs::scales
/// [`QuantizedActs::qsums`]: crate::kernels::quants::QuantizedActs::qsums
///
/// # Safety
/// None beyond aarch64 (NEON is part of the baseline).
///
/// # Panics
/// If an activation row's block count differs from the tile's, or `yd`/`ysum` are shorter.
pub unsafe fn gemm_q4_0x8_q8_0_neon<const A: usize>(
    x: &[BlockQ4_0x8],
    y: [&[BlockQ8_0]; A],
    yd: [&[f32]; A],
    ysum: [&[i32]; A],
) -> [[f32; TILE_ROWS]; A] {
    gemm_q4_0x8::<MullDot, A>(x, y, yd, ysum)
}

/// [`gemm_q4_0x8_q8_0_neon`] with `sdot` (by element: four rows × one group of four
/// activation bytes per instruction).
///
/// # Safety
/// The CPU must have dotprod (`std::arch::is_aarch64_feature_detected!("dotprod")`).
///
/// # Panics
/// As [`gemm_q4_0x8_q8_0_neon`].
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn gemm_q4_0x8_q8_0_dotprod<const A: usize>(
    x: &[BlockQ4_0x8],
    y: [&[BlockQ8_0]; A],
    yd: [&[f32]; A],
    ysum: [&[i32]; A],
) -> [[f32; TILE_ROWS]; A] {
    gemm_q4_0x8::<SDot, A>(x, y, yd, ysum)
}

#[cfg(test)]
mod tests {
    //! Property tests against the scalar reference on xorshift data: block counts 1, 2, 7, 18,
    //! 33; random, extreme-scale (f16 65504, 6e-8, 0), all-zero and saturated (nibbles
    //! 0x00/0xFF, q8 ±127/−128) blocks.
    //!
    //! **Exactness.** Every path must give the scalar reference's bits (the module doc says
    //! why it can): the tests compare `to_bits()`, no tolerance.
    //!
    //! The dotprod / i8mm kernels run only where `is_aarch64_feature_detected!` says so; each
    //! test prints the paths it ran (`--nocapture`), and [`paths_match_qemu_cpu`] fails when
    //! the detected features do not match `EXPLLM_EXPECT_KERNEL`, so a CI run under the wrong
    //! qemu `-cpu` cannot silently skip a path.

    use super::*;
    use crate::kernels::quants::{q4_0, q4_1, q8, F16Le};
    use bytemuck::Zeroable;

    /// Every tail length (`n % 8` = 1..7 and 0), one and several groups.
    const COUNTS: [usize; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 12, 18, 21, 33];

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn bytes<const N: usize>(&mut self) -> [u8; N] {
            core::array::from_fn(|_| self.next() as u8)
        }
    }

    fn dotprod() -> bool {
        std::arch::is_aarch64_feature_detected!("dotprod")
    }

    fn i8mm() -> bool {
        std::arch::is_aarch64_feature_detected!("i8mm")
    }

    /// Which kinds of data a row is made of.
    #[derive(Clone, Copy, Debug)]
    enum Kind {
        /// Random quants, moderate random scales.
        Random,
        /// Random quants, scales drawn from {65504, −65504, 6e-8, 0, random}.
        ExtremeScales,
        /// All-zero blocks.
        Zero,
        /// Saturated quants (nibbles 0x00 / 0xFF, q8 127 / −127 / −128), extreme scales.
        Saturated,
    }

    const KINDS: [Kind; 4] = [
        Kind::Random,
        Kind::ExtremeScales,
        Kind::Zero,
        Kind::Saturated,
    ];

    fn scale(rng: &mut Rng, kind: Kind) -> F16Le {
        let moderate = (rng.below(2001) as f32 - 1000.0) / 256.0;
        match kind {
            Kind::Random => F16Le::new(moderate),
            Kind::Zero => F16Le::new(0.0),
            Kind::ExtremeScales | Kind::Saturated => {
                F16Le::new([65504.0, -65504.0, 6e-8, 0.0, moderate][rng.below(5) as usize])
            }
        }
    }

    fn nibbles(rng: &mut Rng, kind: Kind) -> [u8; 16] {
        match kind {
            Kind::Zero => [0; 16],
            Kind::Saturated => [[0x00; 16], [0xff; 16], [0x0f; 16]][rng.below(3) as usize],
            _ => rng.bytes(),
        }
    }

    fn quants(rng: &mut Rng, kind: Kind) -> [i8; 32] {
        match kind {
            Kind::Zero => [0; 32],
            Kind::Saturated => match rng.below(4) {
                0 => [127; 32],
                1 => [-128; 32],
                2 => [-127; 32],
                _ => core::array::from_fn(|j| if j % 2 == 0 { 127 } else { -128 }),
            },
            _ => rng.bytes::<32>().map(|b| b as i8),
        }
    }

    fn q4_0_row(rng: &mut Rng, kind: Kind, n: usize) -> Vec<BlockQ4_0> {
        (0..n)
            .map(|_| BlockQ4_0 {
                d: scale(rng, kind),
                qs: nibbles(rng, kind),
            })
            .collect()
    }

    fn q4_1_row(rng: &mut Rng, kind: Kind, n: usize) -> Vec<BlockQ4_1> {
        (0..n)
            .map(|_| BlockQ4_1 {
                d: scale(rng, kind),
                m: scale(rng, kind),
                qs: nibbles(rng, kind),
            })
            .collect()
    }

    fn q8_0_row(rng: &mut Rng, kind: Kind, n: usize) -> Vec<BlockQ8_0> {
        (0..n)
            .map(|_| BlockQ8_0 {
                d: scale(rng, kind),
                qs: quants(rng, kind),
            })
            .collect()
    }

    fn q8_1_row(rng: &mut Rng, kind: Kind, n: usize) -> Vec<BlockQ8_1> {
        (0..n)
            .map(|_| BlockQ8_1 {
                d: scale(rng, kind),
                s: scale(rng, kind),
                qs: quants(rng, kind),
            })
            .collect()
    }

    fn unpack_q4(qs: &[u8; 16], offset: i32) -> [i32; 32] {
        core::array::from_fn(|j| {
            let b = qs[j % 16];
            (if j < 16 { b & 0x0f } else { b >> 4 }) as i32 - offset
        })
    }

    /// `Σ |dx·dy| · Σ_j |qx_j·qy_j|` over blocks given as (dx, dy, qx, qy).
    fn mag(blocks: impl Iterator<Item = (f32, f32, [i32; 32], [i8; 32])>) -> f64 {
        blocks
            .map(|(dx, dy, qx, qy)| {
                let s: i64 = qx
                    .iter()
                    .zip(qy)
                    .map(|(&a, b)| (a * b as i32).abs() as i64)
                    .sum();
                (dx as f64 * dy as f64).abs() * s as f64
            })
            .sum()
    }

    fn mag_q4_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f64 {
        mag(x
            .iter()
            .zip(y)
            .map(|(a, b)| (a.d.get(), b.d.get(), unpack_q4(&a.qs, 8), b.qs)))
    }

    fn mag_q4_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f64 {
        mag(x
            .iter()
            .zip(y)
            .map(|(a, b)| (a.d.get(), b.d.get(), unpack_q4(&a.qs, 0), b.qs)))
            + x.iter()
                .zip(y)
                .map(|(a, b)| (a.m.get() as f64 * b.s.get() as f64).abs())
                .sum::<f64>()
    }

    fn mag_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f64 {
        mag(x
            .iter()
            .zip(y)
            .map(|(a, b)| (a.d.get(), b.d.get(), a.qs.map(|q| q as i32), b.qs)))
    }

    /// Every kernel, the 2x2 i8mm ones included, must be bit-identical to the scalar
    /// reference (same f32 expression per block, same block-striped order, exact integers).
    /// `mag` is printed to show the size of the numbers compared.
    #[track_caller]
    fn check(what: &str, got: f32, want: f32, mag: f64) {
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "{what}: simd {got:e} != scalar {want:e} (magnitude {mag:e})"
        );
    }

    /// For every block count and pair of data kinds: rows `x0, x1` and columns `y0, y1`.
    fn for_cases<X, Y>(
        seed: u64,
        mut gen_x: impl FnMut(&mut Rng, Kind, usize) -> Vec<X>,
        mut gen_y: impl FnMut(&mut Rng, Kind, usize) -> Vec<Y>,
        mut f: impl FnMut(&str, [&[X]; 2], [&[Y]; 2]),
    ) {
        let mut rng = Rng(seed);
        for n in COUNTS {
            for kx in KINDS {
                for ky in KINDS {
                    for rep in 0..3 {
                        let x0 = gen_x(&mut rng, kx, n);
                        let x1 = gen_x(&mut rng, KINDS[rep % 4], n);
                        let y0 = gen_y(&mut rng, ky, n);
                        let y1 = gen_y(&mut rng, KINDS[(rep + 1) % 4], n);
                        let what = format!("n={n} x={kx:?} y={ky:?} rep={rep}");
                        f(&what, [&x0, &x1], [&y0, &y1]);
                    }
                }
            }
        }
    }

    /// Prints and returns the paths a test runs.
    fn announce(test: &str, has_i8mm_kernel: bool) -> (bool, bool) {
        let (dp, mm) = (dotprod(), has_i8mm_kernel && i8mm());
        let mut paths = vec!["neon"];
        if dp {
            paths.push("neon-dotprod");
        }
        if mm {
            paths.push("neon-i8mm-2x2");
        }
        println!(
            "{test}: ran paths {paths:?} (cpu features {:?})",
            crate::kernels::cpu_features()
        );
        (dp, mm)
    }

    /// The Q4_0x8 GEMM kernels (baseline NEON, and dotprod where detected) against the
    /// GGUF-layout scalar reference, per row and activation, for one to four activation rows:
    /// every block count of [`COUNTS`], every pair of data kinds (the eight rows of a tile mix
    /// kinds), i8 -128 included.
    #[test]
    fn gemm_q4_0x8_matches_scalar() {
        use crate::kernels::quants::q4_0x8;
        let (dp, _) = announce("gemm_q4_0x8", false);
        let mut rng = Rng(0x0a11_0c8e_77aa_1234);
        for n in COUNTS {
            for kx in KINDS {
                for ky in KINDS {
                    let rows: Vec<BlockQ4_0> = (0..8)
                        .flat_map(|r| {
                            q4_0_row(&mut rng, if r % 3 == 0 { kx } else { KINDS[r % 4] }, n)
                        })
                        .collect();
                    let mut tile = vec![BlockQ4_0x8::zeroed(); n];
                    q4_0x8::pack(&rows, 8, n, &mut tile);
                    let ys: Vec<Vec<BlockQ8_0>> = (0..4)
                        .map(|a| q8_0_row(&mut rng, if a == 0 { ky } else { KINDS[a] }, n))
                        .collect();
                    let pad = |mut v: Vec<f32>| {
                        v.resize(v.len().next_multiple_of(8), 0.0);
                        v
                    };
                    let yd: Vec<Vec<f32>> = ys
                        .iter()
                        .map(|y| pad(y.iter().map(|b| b.d.get()).collect()))
                        .collect();
                    let ysum: Vec<Vec<i32>> = ys
                        .iter()
                        .map(|y| {
                            let mut s: Vec<i32> = y
                                .iter()
                                .map(|b| b.qs.iter().map(|&q| q as i32).sum())
                                .collect();
                            s.resize(s.len().next_multiple_of(8), 0);
                            s
                        })
                        .collect();
                    let what = format!("n={n} x={kx:?} y={ky:?}");
                    let check_all = |path: &str, got: &[[f32; 8]]| {
                        for (a, got) in got.iter().enumerate() {
                            for (r, &g) in got.iter().enumerate() {
                                let x = &rows[r * n..(r + 1) * n];
                                let want = q4_0::vec_dot_q4_0_q8_0(x, &ys[a]);
                                check(
                                    &format!("{path} acts={} act {a} row {r} {what}", got.len()),
                                    g,
                                    want,
                                    mag_q4_0(x, &ys[a]),
                                );
                            }
                        }
                    };
                    // `$f::<A>` for each A in the list, on the first A activation rows.
                    macro_rules! for_acts {
                        ($f:ident, $path:literal, [$($a:literal),*]) => {
                            $(check_all(
                                $path,
                                &$f::<$a>(
                                    &tile,
                                    core::array::from_fn(|a| &ys[a][..]),
                                    core::array::from_fn(|a| &yd[a][..]),
                                    core::array::from_fn(|a| &ysum[a][..]),
                                ),
                            );)*
                        };
                    }
                    macro_rules! run {
                        ($f:ident, $path:literal) => {
                            // SAFETY: baseline NEON needs nothing; dotprod only when detected
                            // (the caller's `if`). Every activation row has `n` blocks and
                            // padded scales / sums.
                            unsafe {
                                for_acts!($f, $path, [1, 2, 3, 4]);
                            }
                        };
                    }
                    run!(gemm_q4_0x8_q8_0_neon, "neon");
                    if dp {
                        run!(gemm_q4_0x8_q8_0_dotprod, "dotprod");
                    }
                }
            }
        }
    }

    #[test]
    fn q4_0_q8_0_matches_scalar() {
        let (dp, mm) = announce("q4_0_q8_0", true);
        for_cases(0x9e37_79b9_7f4a_7c15, q4_0_row, q8_0_row, |what, x, y| {
            let want = |i: usize, j: usize| q4_0::vec_dot_q4_0_q8_0(x[i], y[j]);
            let m = |i: usize, j: usize| mag_q4_0(x[i], y[j]);
            // SAFETY: baseline NEON needs nothing beyond aarch64.
            let got = unsafe { vec_dot_q4_0_q8_0_neon(x[0], y[0]) };
            check(&format!("neon {what}"), got, want(0, 0), m(0, 0));
            if dp {
                // SAFETY: dotprod was detected.
                let got = unsafe { vec_dot_q4_0_q8_0_dotprod(x[0], y[0]) };
                check(&format!("dotprod {what}"), got, want(0, 0), m(0, 0));
            }
            if mm {
                // SAFETY: i8mm was detected.
                let got = unsafe { vec_dot_q4_0_q8_0_i8mm_2x2(x[0], x[1], y[0], y[1]) };
                for (k, (i, j)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
                    check(
                        &format!("i8mm ({i},{j}) {what}"),
                        got[k],
                        want(i, j),
                        m(i, j),
                    );
                }
            }
        });
    }

    #[test]
    fn q4_1_q8_1_matches_scalar() {
        let (dp, mm) = announce("q4_1_q8_1", true);
        for_cases(0x0123_4567_89ab_cdef, q4_1_row, q8_1_row, |what, x, y| {
            let want = |i: usize, j: usize| q4_1::vec_dot_q4_1_q8_1(x[i], y[j]);
            let m = |i: usize, j: usize| mag_q4_1(x[i], y[j]);
            // SAFETY: baseline NEON needs nothing beyond aarch64.
            let got = unsafe { vec_dot_q4_1_q8_1_neon(x[0], y[0]) };
            check(&format!("neon {what}"), got, want(0, 0), m(0, 0));
            if dp {
                // SAFETY: dotprod was detected.
                let got = unsafe { vec_dot_q4_1_q8_1_dotprod(x[0], y[0]) };
                check(&format!("dotprod {what}"), got, want(0, 0), m(0, 0));
            }
            if mm {
                // SAFETY: i8mm was detected.
                let got = unsafe { vec_dot_q4_1_q8_1_i8mm_2x2(x[0], x[1], y[0], y[1]) };
                for (k, (i, j)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
                    check(
                        &format!("i8mm ({i},{j}) {what}"),
                        got[k],
                        want(i, j),
                        m(i, j),
                    );
                }
            }
        });
    }

    #[test]
    fn q8_0_q8_0_matches_scalar() {
        let (dp, mm) = announce("q8_0_q8_0", true);
        for_cases(0xdead_beef_cafe_f00d, q8_0_row, q8_0_row, |what, x, y| {
            let want = |i: usize, j: usize| q8::vec_dot_q8_0_q8_0(x[i], y[j]);
            let m = |i: usize, j: usize| mag_q8_0(x[i], y[j]);
            // SAFETY: baseline NEON needs nothing beyond aarch64.
            let got = unsafe { vec_dot_q8_0_q8_0_neon(x[0], y[0]) };
            check(&format!("neon {what}"), got, want(0, 0), m(0, 0));
            if dp {
                // SAFETY: dotprod was detected.
                let got = unsafe { vec_dot_q8_0_q8_0_dotprod(x[0], y[0]) };
                check(&format!("dotprod {what}"), got, want(0, 0), m(0, 0));
            }
            if mm {
                // SAFETY: i8mm was detected.
                let got = unsafe { vec_dot_q8_0_q8_0_i8mm_2x2(x[0], x[1], y[0], y[1]) };
                for (k, (i, j)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
                    check(
                        &format!("i8mm ({i},{j}) {what}"),
                        got[k],
                        want(i, j),
                        m(i, j),
                    );
                }
            }
        });
    }

    /// Exact small cases: the integer dot must be bit-exact (one block, scales 1).
    #[test]
    fn single_block_integer_dot_is_exact() {
        let (dp, mm) = announce("single_block_integer_dot_is_exact", true);
        let one = F16Le::new(1.0);
        let x = [BlockQ4_0 {
            d: one,
            qs: core::array::from_fn(|j| (j as u8) | ((15 - j as u8) << 4)),
        }];
        let y = [BlockQ8_0 {
            d: one,
            qs: core::array::from_fn(|j| if j % 3 == 0 { -128 } else { 127 - j as i8 }),
        }];
        let want = q4_0::vec_dot_q4_0_q8_0(&x, &y);
        // SAFETY: baseline NEON needs nothing beyond aarch64.
        assert_eq!(unsafe { vec_dot_q4_0_q8_0_neon(&x, &y) }, want);
        if dp {
            // SAFETY: dotprod was detected.
            assert_eq!(unsafe { vec_dot_q4_0_q8_0_dotprod(&x, &y) }, want);
        }
        if mm {
            // SAFETY: i8mm was detected.
            let got = unsafe { vec_dot_q4_0_q8_0_i8mm_2x2(&x, &x, &y, &y) };
            assert_eq!(got, [want; 4]);
        }
    }

    #[test]
    fn zero_blocks_give_zero() {
        let (dp, mm) = announce("zero_blocks_give_zero", true);
        let x = vec![BlockQ8_0::zeroed(); 7];
        // SAFETY: baseline NEON needs nothing beyond aarch64.
        assert_eq!(unsafe { vec_dot_q8_0_q8_0_neon(&x, &x) }, 0.0);
        if dp {
            // SAFETY: dotprod was detected.
            assert_eq!(unsafe { vec_dot_q8_0_q8_0_dotprod(&x, &x) }, 0.0);
        }
        if mm {
            // SAFETY: i8mm was detected.
            assert_eq!(
                unsafe { vec_dot_q8_0_q8_0_i8mm_2x2(&x, &x, &x, &x) },
                [0.0; 4]
            );
        }
        // SAFETY: baseline NEON needs nothing beyond aarch64.
        assert_eq!(unsafe { vec_dot_q8_0_q8_0_neon(&[], &[]) }, 0.0);
    }

    #[test]
    #[should_panic(expected = "block counts differ")]
    fn length_mismatch_panics() {
        let x = vec![BlockQ8_0::zeroed(); 2];
        // SAFETY: baseline NEON needs nothing beyond aarch64.
        unsafe { vec_dot_q8_0_q8_0_neon(&x, &x[..1]) };
    }

    /// A Q8_K activation row of `kind` (bsums from its quants, as `quantize_row_q8_k` makes
    /// them); scales include 0, tiny, huge and negative.
    fn q8k_row(rng: &mut Rng, kind: Kind, n: usize) -> Vec<BlockQ8K> {
        use crate::kernels::quants::{F32Le, I16Le};
        (0..n)
            .map(|_| {
                let mut qs = [0i8; 256];
                for c in qs.chunks_exact_mut(32) {
                    c.copy_from_slice(&quants(rng, kind));
                }
                let bsums = core::array::from_fn(|j| {
                    I16Le::new(qs[16 * j..16 * j + 16].iter().map(|&q| q as i16).sum())
                });
                let d = match kind {
                    Kind::Zero => 0.0,
                    Kind::Random => scale(rng, kind).get() / 64.0,
                    _ => [1e-30, -3e4, 3.0e38, 0.0][rng.below(4) as usize],
                };
                BlockQ8K {
                    d: F32Le::new(d),
                    qs,
                    bsums,
                }
            })
            .collect()
    }

    /// Random bytes, or for `Saturated` all 0x00 / 0xFF / 0x3F (6-bit maxima), for `Zero` 0.
    fn fill(rng: &mut Rng, kind: Kind, out: &mut [u8]) {
        let sat = [0x00, 0xff, 0x3f][rng.below(3) as usize];
        for b in out {
            *b = match kind {
                Kind::Zero => 0,
                Kind::Saturated => sat,
                _ => rng.next() as u8,
            };
        }
    }

    fn q4k_row(rng: &mut Rng, kind: Kind, n: usize) -> Vec<BlockQ4K> {
        (0..n)
            .map(|_| {
                let mut b = BlockQ4K {
                    d: scale(rng, kind),
                    dmin: scale(rng, kind),
                    scales: [0; 12],
                    qs: [0; 128],
                };
                fill(rng, kind, &mut b.scales);
                fill(rng, kind, &mut b.qs);
                b
            })
            .collect()
    }

    fn q6k_row(rng: &mut Rng, kind: Kind, n: usize) -> Vec<BlockQ6K> {
        (0..n)
            .map(|_| {
                let mut b = BlockQ6K {
                    ql: [0; 128],
                    qh: [0; 64],
                    scales: [0; 16],
                    d: scale(rng, kind),
                };
                fill(rng, kind, &mut b.ql);
                fill(rng, kind, &mut b.qh);
                let mut sc = [0u8; 16];
                fill(rng, kind, &mut sc);
                if matches!(kind, Kind::Saturated) && rng.below(2) == 0 {
                    sc = [0x80; 16]; // i8 −128
                }
                b.scales = sc.map(|v| v as i8);
                b
            })
            .collect()
    }

    /// The K-quant kernel (one for every aarch64 path) against the scalar reference, at 1..9
    /// and 18 super-blocks (every pair of data kinds).
    #[test]
    fn k_quants_match_scalar() {
        use crate::kernels::quants::k_quants;
        println!(
            "k_quants: one kernel for every aarch64 path (cpu features {:?})",
            crate::kernels::cpu_features()
        );
        let mut rng = Rng(0x6b71_7561_6e74_7321);
        for n in [1, 2, 3, 5, 8, 9, 18] {
            for kx in KINDS {
                for ky in KINDS {
                    for rep in 0..2 {
                        let what = format!("n={n} x={kx:?} y={ky:?} rep={rep}");
                        let y = q8k_row(&mut rng, ky, n);
                        let x = q4k_row(&mut rng, kx, n);
                        // SAFETY: baseline NEON needs nothing beyond aarch64; equal lengths.
                        let got = unsafe { vec_dot_q4k_q8k_neon(&x, &y) };
                        check(
                            &format!("q4_k {what}"),
                            got,
                            k_quants::vec_dot_q4k_q8k(&x, &y),
                            0.0,
                        );
                        let x = q6k_row(&mut rng, kx, n);
                        // SAFETY: as above.
                        let got = unsafe { vec_dot_q6k_q8k_neon(&x, &y) };
                        check(
                            &format!("q6_k {what}"),
                            got,
                            k_quants::vec_dot_q6k_q8k(&x, &y),
                            0.0,
                        );
                    }
                }
            }
        }
    }

    /// `EXPLLM_EXPECT_KERNEL` (`neon`, `neon-dotprod`, `neon-i8mm`) pins the features the CPU
    /// (under qemu: its `-cpu`) must have, so CI under the wrong CPU fails instead of
    /// skipping the dotprod / i8mm kernels. Unset: nothing to check (prints a note).
    #[test]
    fn paths_match_qemu_cpu() {
        let (dp, mm) = (dotprod(), i8mm());
        println!("paths_match_qemu_cpu: dotprod={dp} i8mm={mm}");
        let Ok(want) = std::env::var("EXPLLM_EXPECT_KERNEL") else {
            println!("paths_match_qemu_cpu: EXPLLM_EXPECT_KERNEL unset, not checked");
            return;
        };
        let expected = match want.as_str() {
            "neon" => (false, false),
            "neon-dotprod" => (true, false),
            "neon-i8mm" => (true, true),
            other => {
                panic!("EXPLLM_EXPECT_KERNEL={other:?}: expected neon, neon-dotprod or neon-i8mm")
            }
        };
        assert_eq!(
            (dp, mm),
            expected,
            "EXPLLM_EXPECT_KERNEL={want} but detected (dotprod, i8mm) = {:?}; features {:?}",
            (dp, mm),
            crate::kernels::cpu_features()
        );
    }
}
