//! Float element types — F32, F16 (IEEE binary16) and BF16 — as stored in GGUF, and the little
//! scalar wrappers the quantized blocks use for their scales.
//!
//! Every wrapper is a byte array (alignment 1), so a row of any type can be viewed in place at
//! any offset of an mmap'd file with `bytemuck`, without copies and without `unsafe`.
//!
//! Float weights are dotted with f32 activations (ggml would convert the activations to the
//! weight type first; we keep them f32): each product is an f32 product, the sum is
//! accumulated in f64 like ggml's scalar `ggml_vec_dot_f32`/`_f16`/`_bf16`.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::{GgmlBlock, QuantizeBlock, WeightBlock};
use crate::kernels::GgmlType;

/// An f32 as stored in GGUF: 4 bytes, little endian. One F32 "block" (one element).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct F32Le(pub [u8; 4]);

impl F32Le {
    pub fn new(x: f32) -> Self {
        Self(x.to_le_bytes())
    }
    pub fn get(self) -> f32 {
        f32::from_le_bytes(self.0)
    }
}

/// An IEEE half as stored in GGUF (ggml's `ggml_half`): 2 bytes, little endian. One F16
/// "block" (one element), and the scale type of the quantized blocks.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct F16Le(pub [u8; 2]);

impl F16Le {
    /// Round to nearest, ties to even, like `GGML_FP32_TO_FP16` (overflow gives ±inf).
    pub fn new(x: f32) -> Self {
        Self::from_f16(f16::from_f32(x))
    }
    pub fn from_f16(h: f16) -> Self {
        Self(h.to_bits().to_le_bytes())
    }
    pub fn to_f16(self) -> f16 {
        f16::from_bits(u16::from_le_bytes(self.0))
    }
    /// Exact.
    pub fn get(self) -> f32 {
        self.to_f16().to_f32()
    }
}

/// A bfloat16 as stored in GGUF: the high 16 bits of an f32, little endian. One BF16 "block".
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Bf16Le(pub [u8; 2]);

impl Bf16Le {
    /// ggml's `ggml_compute_fp32_to_bf16`: NaN is kept and made quiet, everything else rounds
    /// to nearest, ties to even (so large finite values may round to ±inf).
    pub fn new(x: f32) -> Self {
        let u = x.to_bits();
        let h = if u & 0x7fff_ffff > 0x7f80_0000 {
            (u >> 16) | 64
        } else {
            u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16
        };
        Self((h as u16).to_le_bytes())
    }
    /// Exact.
    pub fn get(self) -> f32 {
        f32::from_bits((u16::from_le_bytes(self.0) as u32) << 16)
    }
}

/// An i16 as stored in a block (Q8_K's `bsums`): 2 bytes, little endian.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct I16Le(pub [u8; 2]);

impl I16Le {
    pub fn new(x: i16) -> Self {
        Self(x.to_le_bytes())
    }
    pub fn get(self) -> i16 {
        i16::from_le_bytes(self.0)
    }
}

/// `dst[i] = src[i]` as f32.
pub fn dequantize_row_f32(src: &[F32Le], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "F32 dequantize: lengths differ");
    for (y, x) in dst.iter_mut().zip(src) {
        *y = x.get();
    }
}

pub fn dequantize_row_f16(src: &[F16Le], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "F16 dequantize: lengths differ");
    for (y, x) in dst.iter_mut().zip(src) {
        *y = x.get();
    }
}

pub fn dequantize_row_bf16(src: &[Bf16Le], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "BF16 dequantize: lengths differ");
    for (y, x) in dst.iter_mut().zip(src) {
        *y = x.get();
    }
}

pub fn quantize_row_f32(src: &[f32], dst: &mut [F32Le]) {
    assert_eq!(src.len(), dst.len(), "F32 quantize: lengths differ");
    for (y, &x) in dst.iter_mut().zip(src) {
        *y = F32Le::new(x);
    }
}

pub fn quantize_row_f16(src: &[f32], dst: &mut [F16Le]) {
    assert_eq!(src.len(), dst.len(), "F16 quantize: lengths differ");
    for (y, &x) in dst.iter_mut().zip(src) {
        *y = F16Le::new(x);
    }
}

pub fn quantize_row_bf16(src: &[f32], dst: &mut [Bf16Le]) {
    assert_eq!(src.len(), dst.len(), "BF16 quantize: lengths differ");
    for (y, &x) in dst.iter_mut().zip(src) {
        *y = Bf16Le::new(x);
    }
}

/// Σ w·a: f32 products, f64 sum (ggml's scalar `ggml_vec_dot_f32`).
pub fn vec_dot_f32(row: &[F32Le], acts: &[f32]) -> f32 {
    assert_eq!(row.len(), acts.len(), "F32 vec_dot: lengths differ");
    let mut sum = 0f64;
    for (w, &a) in row.iter().zip(acts) {
        sum += (w.get() * a) as f64;
    }
    sum as f32
}

/// Σ w·a with F16 weights widened to f32 (exact): f32 products, f64 sum.
pub fn vec_dot_f16_f32(row: &[F16Le], acts: &[f32]) -> f32 {
    assert_eq!(row.len(), acts.len(), "F16 vec_dot: lengths differ");
    let mut sum = 0f64;
    for (w, &a) in row.iter().zip(acts) {
        sum += (w.get() * a) as f64;
    }
    sum as f32
}

/// Σ w·a with BF16 weights widened to f32 (exact): f32 products, f64 sum.
pub fn vec_dot_bf16_f32(row: &[Bf16Le], acts: &[f32]) -> f32 {
    assert_eq!(row.len(), acts.len(), "BF16 vec_dot: lengths differ");
    let mut sum = 0f64;
    for (w, &a) in row.iter().zip(acts) {
        sum += (w.get() * a) as f64;
    }
    sum as f32
}

/// Native f32: the activation layout of the float weight types (aligned, in our own buffer).
impl GgmlBlock for f32 {
    const TYPE: GgmlType = GgmlType::F32;
    const BLOCK_SIZE: usize = 1;
    fn dequantize(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl QuantizeBlock for f32 {
    fn quantize(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
}

impl GgmlBlock for F32Le {
    const TYPE: GgmlType = GgmlType::F32;
    const BLOCK_SIZE: usize = 1;
    fn dequantize(src: &[Self], dst: &mut [f32]) {
        dequantize_row_f32(src, dst)
    }
}

impl QuantizeBlock for F32Le {
    fn quantize(src: &[f32], dst: &mut [Self]) {
        quantize_row_f32(src, dst)
    }
}

impl WeightBlock for F32Le {
    type VecDot = f32;
    fn vec_dot(row: &[Self], acts: &[f32]) -> f32 {
        vec_dot_f32(row, acts)
    }
}

impl GgmlBlock for F16Le {
    const TYPE: GgmlType = GgmlType::F16;
    const BLOCK_SIZE: usize = 1;
    fn dequantize(src: &[Self], dst: &mut [f32]) {
        dequantize_row_f16(src, dst)
    }
}

impl QuantizeBlock for F16Le {
    fn quantize(src: &[f32], dst: &mut [Self]) {
        quantize_row_f16(src, dst)
    }
}

impl WeightBlock for F16Le {
    type VecDot = f32;
    fn vec_dot(row: &[Self], acts: &[f32]) -> f32 {
        vec_dot_f16_f32(row, acts)
    }
}

impl GgmlBlock for Bf16Le {
    const TYPE: GgmlType = GgmlType::BF16;
    const BLOCK_SIZE: usize = 1;
    fn dequantize(src: &[Self], dst: &mut [f32]) {
        dequantize_row_bf16(src, dst)
    }
}

impl QuantizeBlock for Bf16Le {
    fn quantize(src: &[f32], dst: &mut [Self]) {
        quantize_row_bf16(src, dst)
    }
}

impl WeightBlock for Bf16Le {
    type VecDot = f32;
    fn vec_dot(row: &[Self], acts: &[f32]) -> f32 {
        vec_dot_bf16_f32(row, acts)
    }
}
