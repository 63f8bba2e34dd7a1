//! 8-bit blocks: Q8_0 (a weight type, and the activations of Q4_0 and Q8_0 weights), Q8_1 (the
//! activations of Q4_1) and Q8_K (the activations of the k-quants). Port of ggml's
//! `quantize_row_q8_{0,1,K}_ref`, `dequantize_row_q8_{0,K}` and `ggml_vec_dot_q8_0_q8_0_generic`.

use bytemuck::{Pod, Zeroable};

use super::float::{F16Le, F32Le, I16Le};
use super::{lane_total, GgmlBlock, QuantizeBlock, WeightBlock, LANES};
use crate::kernels::GgmlType;

/// Elements per Q8_0 / Q8_1 block.
pub const QK8_0: usize = 32;
/// Elements per k-quant super-block (Q4_K, Q6_K, Q8_K).
pub const QK_K: usize = 256;

/// Q8_0 (ggml `block_q8_0`): 32 values `x[j] = d · qs[j]`. 34 bytes:
///
/// | bytes | field | content |
/// | --- | --- | --- |
/// | 0..2 | `d` | f16 scale, `amax / 127` |
/// | 2..34 | `qs` | i8 quants, element j at byte 2 + j |
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: F16Le,
    pub qs: [i8; QK8_0],
}

/// Q8_1 (ggml `block_q8_1`): like Q8_0 plus `s = d · Σ qs` (rounded to f16), so a Q4_1 dot can
/// add the weight block's minimum times the activation block's sum in one multiply. 36 bytes:
///
/// | bytes | field | content |
/// | --- | --- | --- |
/// | 0..2 | `d` | f16 scale, `amax / 127` |
/// | 2..4 | `s` | f16 `d · Σ qs` (computed in f32, then rounded) |
/// | 4..36 | `qs` | i8 quants, element j at byte 4 + j |
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct BlockQ8_1 {
    pub d: F16Le,
    pub s: F16Le,
    pub qs: [i8; QK8_0],
}

/// Q8_K (ggml `block_q8_K`): 256 values `x[j] = d · qs[j]`, with an **f32** scale and the sums
/// of each 16 quants (the k-quant dots subtract `min · Σ q` with them). 292 bytes:
///
/// | bytes | field | content |
/// | --- | --- | --- |
/// | 0..4 | `d` | f32 scale, `-max / 127` where `max` is the value of largest magnitude (so `d` may be negative) |
/// | 4..260 | `qs` | i8 quants in -127..=127, element j at byte 4 + j |
/// | 260..292 | `bsums` | 16 × i16: `bsums[g] = Σ qs[16g .. 16g+16]` |
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct BlockQ8K {
    pub d: F32Le,
    pub qs: [i8; QK_K],
    pub bsums: [I16Le; QK_K / 16],
}

/// ggml's `MAX(a, b)`: `a > b ? a : b` (so a NaN `b` wins, a NaN `a` loses).
#[inline]
fn c_max(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// ggml's `nearest_int`: round to nearest, ties to even, via the 1.5·2^23 trick (valid for
/// |x| ≤ 2^22, which the callers guarantee for finite input).
#[inline]
pub fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Scale of a Q8_0/Q8_1 block: `(d, 1/d or 0)`.
fn q8_scale(x: &[f32]) -> (f32, f32) {
    let mut amax = 0f32;
    for &v in x {
        amax = c_max(amax, v.abs());
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    (d, id)
}

/// ggml `quantize_row_q8_0_ref`: `d = amax/127`, `q = roundf(x/d)` (ties away from zero), all
/// zeros when the block is all zeros.
///
/// # Panics
/// If `src.len() != 32 · dst.len()`.
pub fn quantize_row_q8_0(src: &[f32], dst: &mut [BlockQ8_0]) {
    assert_eq!(
        src.len(),
        dst.len() * QK8_0,
        "Q8_0 quantize: lengths differ"
    );
    for (x, y) in src.chunks_exact(QK8_0).zip(dst.iter_mut()) {
        let (d, id) = q8_scale(x);
        y.d = F16Le::new(d);
        for (q, &v) in y.qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
        }
    }
}

/// ggml `quantize_row_q8_1_ref`: Q8_0's quants plus `s = f16(Σq · d)`.
///
/// # Panics
/// If `src.len() != 32 · dst.len()`.
pub fn quantize_row_q8_1(src: &[f32], dst: &mut [BlockQ8_1]) {
    assert_eq!(
        src.len(),
        dst.len() * QK8_0,
        "Q8_1 quantize: lengths differ"
    );
    for (x, y) in src.chunks_exact(QK8_0).zip(dst.iter_mut()) {
        let (d, id) = q8_scale(x);
        y.d = F16Le::new(d);
        let mut sum = 0i32;
        for (q, &v) in y.qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
            sum += *q as i32;
        }
        y.s = F16Le::new(sum as f32 * d);
    }
}

/// ggml `quantize_row_q8_K_ref`: `iscale = -127/max` where `max` is the first value of largest
/// magnitude, `q = min(127, nearest_int(iscale·x))` (ties to even), `d = 1/iscale`, and the
/// 16-element sums. An all-zero block gets `d = 0`, zero quants and zero sums (ggml leaves the
/// sums of such a block unwritten).
///
/// # Panics
/// If `src.len() != 256 · dst.len()`.
pub fn quantize_row_q8_k(src: &[f32], dst: &mut [BlockQ8K]) {
    assert_eq!(src.len(), dst.len() * QK_K, "Q8_K quantize: lengths differ");
    for (x, y) in src.chunks_exact(QK_K).zip(dst.iter_mut()) {
        let mut max = 0f32;
        let mut amax = 0f32;
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *y = BlockQ8K::zeroed();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in y.qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, g) in y.bsums.iter_mut().zip(y.qs.chunks_exact(16)) {
            *s = I16Le::new(g.iter().map(|&q| q as i32).sum::<i32>() as i16);
        }
        y.d = F32Le::new(1.0 / iscale);
    }
}

/// `x = d · q`.
///
/// # Panics
/// If `dst.len() != 32 · src.len()`.
pub fn dequantize_row_q8_0(src: &[BlockQ8_0], dst: &mut [f32]) {
    assert_eq!(
        dst.len(),
        src.len() * QK8_0,
        "Q8_0 dequantize: lengths differ"
    );
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK8_0)) {
        let d = b.d.get();
        for (v, &q) in y.iter_mut().zip(&b.qs) {
            *v = q as f32 * d;
        }
    }
}

/// `x = d · q` (`s` is not needed). ggml has no Q8_1 dequantizer; this is the obvious one.
///
/// # Panics
/// If `dst.len() != 32 · src.len()`.
pub fn dequantize_row_q8_1(src: &[BlockQ8_1], dst: &mut [f32]) {
    assert_eq!(
        dst.len(),
        src.len() * QK8_0,
        "Q8_1 dequantize: lengths differ"
    );
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK8_0)) {
        let d = b.d.get();
        for (v, &q) in y.iter_mut().zip(&b.qs) {
            *v = q as f32 * d;
        }
    }
}

/// ggml `dequantize_row_q8_K`: `x = d · q` (f32 scale, so the product rounds).
///
/// # Panics
/// If `dst.len() != 256 · src.len()`.
pub fn dequantize_row_q8_k(src: &[BlockQ8K], dst: &mut [f32]) {
    assert_eq!(
        dst.len(),
        src.len() * QK_K,
        "Q8_K dequantize: lengths differ"
    );
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.get();
        for (v, &q) in y.iter_mut().zip(&b.qs) {
            *v = d * q as f32;
        }
    }
}

/// ggml `ggml_vec_dot_q8_0_q8_0_generic`'s arithmetic: per block the exact i32 `Σ qw·qa`,
/// then the f32 term `sumi · (dw · da)`, the terms summed in the block-striped order of
/// [`lane_total`].
///
/// # Panics
/// If the block counts differ.
pub fn vec_dot_q8_0_q8_0(row: &[BlockQ8_0], acts: &[BlockQ8_0]) -> f32 {
    assert_eq!(row.len(), acts.len(), "Q8_0 vec_dot: block counts differ");
    let mut lanes = [0f32; LANES];
    for (i, (x, y)) in row.iter().zip(acts).enumerate() {
        let mut sumi = 0i32;
        for (&a, &b) in x.qs.iter().zip(&y.qs) {
            sumi += a as i32 * b as i32;
        }
        lanes[i % LANES] += sumi as f32 * (x.d.get() * y.d.get());
    }
    lane_total(&lanes)
}

impl GgmlBlock for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const BLOCK_SIZE: usize = QK8_0;
    fn dequantize(src: &[Self], dst: &mut [f32]) {
        dequantize_row_q8_0(src, dst)
    }
}

impl QuantizeBlock for BlockQ8_0 {
    fn quantize(src: &[f32], dst: &mut [Self]) {
        quantize_row_q8_0(src, dst)
    }
}

impl WeightBlock for BlockQ8_0 {
    type VecDot = BlockQ8_0;
    fn vec_dot(row: &[Self], acts: &[BlockQ8_0]) -> f32 {
        vec_dot_q8_0_q8_0(row, acts)
    }
}

impl GgmlBlock for BlockQ8_1 {
    const TYPE: GgmlType = GgmlType::Q8_1;
    const BLOCK_SIZE: usize = QK8_0;
    fn dequantize(src: &[Self], dst: &mut [f32]) {
        dequantize_row_q8_1(src, dst)
    }
}

impl QuantizeBlock for BlockQ8_1 {
    fn quantize(src: &[f32], dst: &mut [Self]) {
        quantize_row_q8_1(src, dst)
    }
}

impl GgmlBlock for BlockQ8K {
    const TYPE: GgmlType = GgmlType::Q8K;
    const BLOCK_SIZE: usize = QK_K;
    fn dequantize(src: &[Self], dst: &mut [f32]) {
        dequantize_row_q8_k(src, dst)
    }
}

impl QuantizeBlock for BlockQ8K {
    fn quantize(src: &[f32], dst: &mut [Self]) {
        quantize_row_q8_k(src, dst)
    }
}
