//! Q4_1 weights: port of ggml's `quantize_row_q4_1_ref`, `dequantize_row_q4_1` and
//! `ggml_vec_dot_q4_1_q8_1_generic`.

use bytemuck::{Pod, Zeroable};

use super::float::F16Le;
use super::q8::{BlockQ8_1, QK8_0};
use super::{lane_total, GgmlBlock, QuantizeBlock, WeightBlock, LANES};
use crate::kernels::GgmlType;

/// Elements per Q4_1 block.
pub const QK4_1: usize = 32;

/// Q4_1 (ggml `block_q4_1`): 32 values `x[j] = d · q[j] + m`, `q` in 0..=15. 20 bytes:
///
/// | bytes | field | content |
/// | --- | --- | --- |
/// | 0..2 | `d` | f16 scale, `(max − min) / 15` |
/// | 2..4 | `m` | f16 minimum of the block |
/// | 4..20 | `qs` | byte `4 + j` (j in 0..16): low nibble = `q[j]`, high nibble = `q[j + 16]` |
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: F16Le,
    pub m: F16Le,
    pub qs: [u8; QK4_1 / 2],
}

/// ggml `quantize_row_q4_1_ref`: `d = (max − min)/15`, `q = min(15, (i8)((x − min)/d + 0.5))`.
///
/// # Panics
/// If `src.len() != 32 · dst.len()`.
pub fn quantize_row_q4_1(src: &[f32], dst: &mut [BlockQ4_1]) {
    assert_eq!(
        src.len(),
        dst.len() * QK4_1,
        "Q4_1 quantize: lengths differ"
    );
    for (x, y) in src.chunks_exact(QK4_1).zip(dst.iter_mut()) {
        let mut min = f32::MAX;
        let mut max = -f32::MAX;
        for &v in x {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = F16Le::new(d);
        y.m = F16Le::new(min);
        for j in 0..QK4_1 / 2 {
            let xi0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
            let xi1 = (((x[j + QK4_1 / 2] - min) * id + 0.5) as i8).min(15) as u8;
            y.qs[j] = xi0 | (xi1 << 4);
        }
    }
}

/// ggml `dequantize_row_q4_1`: `x = q · d + m` (an f32 product, then an f32 sum; not fused).
///
/// # Panics
/// If `dst.len() != 32 · src.len()`.
pub fn dequantize_row_q4_1(src: &[BlockQ4_1], dst: &mut [f32]) {
    assert_eq!(
        dst.len(),
        src.len() * QK4_1,
        "Q4_1 dequantize: lengths differ"
    );
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK4_1)) {
        let d = b.d.get();
        let m = b.m.get();
        for (j, &q) in b.qs.iter().enumerate() {
            y[j] = (q & 0x0f) as f32 * d + m;
            y[j + QK4_1 / 2] = (q >> 4) as f32 * d + m;
        }
    }
}

/// ggml `ggml_vec_dot_q4_1_q8_1_generic`'s arithmetic: per block the exact i32 `Σ q·qa`, then
/// the f32 term `(dw · da) · sumi + mw · sa` (summed in the block-striped order of
/// [`lane_total`]), where `sa` is the activation block's stored
/// f16 `d·Σqa` (so the result differs from the dot of the dequantized vectors by
/// `mw · (sa − da·Σqa)`, the f16 rounding of `s`).
///
/// # Panics
/// If the block counts differ.
pub fn vec_dot_q4_1_q8_1(row: &[BlockQ4_1], acts: &[BlockQ8_1]) -> f32 {
    assert_eq!(row.len(), acts.len(), "Q4_1 vec_dot: block counts differ");
    let mut lanes = [0f32; LANES];
    for (i, (x, y)) in row.iter().zip(acts).enumerate() {
        let mut sumi0 = 0i32;
        let mut sumi1 = 0i32;
        for j in 0..QK8_0 / 2 {
            let v0 = (x.qs[j] & 0x0f) as i32;
            let v1 = (x.qs[j] >> 4) as i32;
            sumi0 += v0 * y.qs[j] as i32;
            sumi1 += v1 * y.qs[j + QK8_0 / 2] as i32;
        }
        let sumi = sumi0 + sumi1;
        lanes[i % LANES] += (x.d.get() * y.d.get()) * sumi as f32 + x.m.get() * y.s.get();
    }
    lane_total(&lanes)
}

impl GgmlBlock for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const BLOCK_SIZE: usize = QK4_1;
    fn dequantize(src: &[Self], dst: &mut [f32]) {
        dequantize_row_q4_1(src, dst)
    }
}

impl QuantizeBlock for BlockQ4_1 {
    fn quantize(src: &[f32], dst: &mut [Self]) {
        quantize_row_q4_1(src, dst)
    }
}

impl WeightBlock for BlockQ4_1 {
    type VecDot = BlockQ8_1;
    fn vec_dot(row: &[Self], acts: &[BlockQ8_1]) -> f32 {
        vec_dot_q4_1_q8_1(row, acts)
    }
}
