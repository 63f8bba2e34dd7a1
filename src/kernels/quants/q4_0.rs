//! Q4_0 weights: port of ggml's `quantize_row_q4_0_ref`, `dequantize_row_q4_0` and
//! `ggml_vec_dot_q4_0_q8_0_generic`.

use bytemuck::{Pod, Zeroable};

use super::float::F16Le;
use super::q8::{BlockQ8_0, QK8_0};
use super::{lane_total, GgmlBlock, QuantizeBlock, WeightBlock, LANES};
use crate::kernels::GgmlType;

/// Elements per Q4_0 block.
pub const QK4_0: usize = 32;

/// Q4_0 (ggml `block_q4_0`): 32 values `x[j] = d · (q[j] − 8)`, `q` in 0..=15. 18 bytes, so
/// blocks in a file are only 2-byte aligned (this struct has alignment 1):
///
/// | bytes | field | content |
/// | --- | --- | --- |
/// | 0..2 | `d` | f16 scale, `max / −8` where `max` is the first value of largest magnitude |
/// | 2..18 | `qs` | byte `2 + j` (j in 0..16): low nibble = `q[j]`, high nibble = `q[j + 16]` |
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: F16Le,
    pub qs: [u8; QK4_0 / 2],
}

/// ggml `quantize_row_q4_0_ref`: `d = max/−8`, `q = min(15, (i8)(x/d + 8.5))` (truncation).
///
/// # Panics
/// If `src.len() != 32 · dst.len()`.
pub fn quantize_row_q4_0(src: &[f32], dst: &mut [BlockQ4_0]) {
    assert_eq!(
        src.len(),
        dst.len() * QK4_0,
        "Q4_0 quantize: lengths differ"
    );
    for (x, y) in src.chunks_exact(QK4_0).zip(dst.iter_mut()) {
        let mut amax = 0f32;
        let mut max = 0f32;
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = F16Le::new(d);
        for j in 0..QK4_0 / 2 {
            let xi0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
            let xi1 = ((x[j + QK4_0 / 2] * id + 8.5) as i8).min(15) as u8;
            y.qs[j] = xi0 | (xi1 << 4);
        }
    }
}

/// ggml `dequantize_row_q4_0`: `x = (q − 8) · d`.
///
/// # Panics
/// If `dst.len() != 32 · src.len()`.
pub fn dequantize_row_q4_0(src: &[BlockQ4_0], dst: &mut [f32]) {
    assert_eq!(
        dst.len(),
        src.len() * QK4_0,
        "Q4_0 dequantize: lengths differ"
    );
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK4_0)) {
        let d = b.d.get();
        for (j, &q) in b.qs.iter().enumerate() {
            y[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
            y[j + QK4_0 / 2] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// ggml `ggml_vec_dot_q4_0_q8_0_generic`'s arithmetic: per block the exact i32
/// `Σ (q − 8)·qa`, then the f32 term `sumi · dw · da` (left to right), the terms summed in the
/// block-striped order of [`lane_total`] (ggml: one running sum).
///
/// # Panics
/// If the block counts differ.
pub fn vec_dot_q4_0_q8_0(row: &[BlockQ4_0], acts: &[BlockQ8_0]) -> f32 {
    assert_eq!(row.len(), acts.len(), "Q4_0 vec_dot: block counts differ");
    let mut lanes = [0f32; LANES];
    for (i, (x, y)) in row.iter().zip(acts).enumerate() {
        let mut sumi0 = 0i32;
        let mut sumi1 = 0i32;
        for j in 0..QK8_0 / 2 {
            let v0 = (x.qs[j] & 0x0f) as i32 - 8;
            let v1 = (x.qs[j] >> 4) as i32 - 8;
            sumi0 += v0 * y.qs[j] as i32;
            sumi1 += v1 * y.qs[j + QK8_0 / 2] as i32;
        }
        let sumi = sumi0 + sumi1;
        lanes[i % LANES] += sumi as f32 * x.d.get() * y.d.get();
    }
    lane_total(&lanes)
}

impl GgmlBlock for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const BLOCK_SIZE: usize = QK4_0;
    fn dequantize(src: &[Self], dst: &mut [f32]) {
        dequantize_row_q4_0(src, dst)
    }
}

impl QuantizeBlock for BlockQ4_0 {
    fn quantize(src: &[f32], dst: &mut [Self]) {
        quantize_row_q4_0(src, dst)
    }
}

impl WeightBlock for BlockQ4_0 {
    type VecDot = BlockQ8_0;
    fn vec_dot(row: &[Self], acts: &[BlockQ8_0]) -> f32 {
        vec_dot_q4_0_q8_0(row, acts)
    }
}
