//! Scalar reference quantization: the block layouts of the GGUF tensor types we read, their
//! dequantizers, the activation quantizers and the quantized dot products — a port of ggml's
//! reference C (`ggml-quants.c` `*_ref` quantizers and `dequantize_row_*`, and the `*_generic`
//! dot products of `ggml-cpu/quants.c`), float for float.
//!
//! This is the oracle the SIMD kernels are tested against, so it is written for clarity and
//! its references have no `unsafe` (the matmul drivers below them hand disjoint output ranges
//! to the pool's threads through raw pointers, with a SAFETY note at each): every block struct is `#[repr(C)]` over byte arrays (alignment 1), so a row
//! of any type is viewed in place at any offset with `bytemuck` (GGUF rows are only 2-byte
//! aligned for 18-byte Q4_0 blocks).
//!
//! | weight type | block | activations (`vec_dot_type`) | dot |
//! | --- | --- | --- | --- |
//! | F32, F16, BF16 | [`F32Le`], [`F16Le`], [`Bf16Le`] | F32 (`f32`) | f32 products, f64 sum |
//! | Q8_0 | [`BlockQ8_0`] | Q8_0 | [`q8::vec_dot_q8_0_q8_0`] |
//! | Q4_0 | [`BlockQ4_0`] | Q8_0 | [`q4_0::vec_dot_q4_0_q8_0`] |
//! | Q4_1 | [`BlockQ4_1`] | Q8_1 ([`BlockQ8_1`]) | [`q4_1::vec_dot_q4_1_q8_1`] |
//! | Q4_K | [`BlockQ4K`] | Q8_K ([`BlockQ8K`]) | [`k_quants::vec_dot_q4k_q8k`] |
//! | Q6_K | [`BlockQ6K`] | Q8_K | [`k_quants::vec_dot_q6k_q8k`] |
//!
//! Quantized dots accumulate each block's integer products exactly in i32 and only then scale
//! by the two blocks' f32 scales with ggml's f32 expression per block. The per-block terms of
//! Q4_0/Q4_1/Q8_0 are then summed in the **block-striped order** of [`lane_total`] (block `i`
//! into lane `i % 8`), the order a SIMD register of eight (AVX2) or two of four (NEON) f32
//! lanes adds them in; ggml's generic C adds them left to right instead, and its SIMD code in
//! yet other orders, so results differ from ggml's by f32 rounding only (the goldens allow for
//! it). Because every path of ours uses this one order and the same roundings, **all kernel
//! paths are bit-identical** and a model gives the same tokens on every CPU. The byte layout of
//! each block is documented on its struct.
//!
//! The model code uses the dynamic API ([`dequantize_row`], [`quantize_row`],
//! [`QuantizedActs`], [`vec_dot`], [`matvec`], [`get_row`]), which checks every length and
//! returns a [`QuantError`] instead of panicking; the typed per-type functions behind it
//! (e.g. [`q4_0::vec_dot_q4_0_q8_0`]) assert their lengths. On repacked Q4_0
//! ([`PackedMatrix`]) it runs [`matmul_packed`], [`matmul_packed_many`] and
//! [`matmul_packed_then`], whose [`Epilogue`] fuses the element-wise step after a matmul (a
//! residual add; SwiGLU and the Q8_0 quantization of the next matmul's input) into the same
//! job, on the rows each thread computed: the same bits as the separate steps. Its
//! [`matmul_packed_each`] fuses the step before: each part makes its own copy of the one
//! activation row (a norm and its quantization, through [`FillActs`]) at the job's start.
//! [`attn_out_ffn`] runs one token's layer as one job of stages with barriers between them
//! ([`pool::run_stages`](crate::kernels::pool::run_stages)): a stage the caller supplies
//! (the attention, writing the output projection's input), the output projection, the
//! SwiGLU FFN, and the next layer's Q/K/V with its KV cache row (or the output matrix),
//! where separate jobs would hand the work out again after every matmul.

use std::fmt;
use std::sync::Arc;

use bytemuck::Pod;

use crate::kernels::hugemem::HugeBuf;
use crate::kernels::GgmlType;

pub mod float;
pub mod k_quants;
pub mod q4_0;
pub mod q4_0x8;
pub mod q4_1;
pub mod q8;

#[cfg(test)]
pub(crate) mod tests;

pub use float::{Bf16Le, F16Le, F32Le, I16Le};
pub use k_quants::{BlockQ4K, BlockQ6K};
pub use q4_0::BlockQ4_0;
pub use q4_1::BlockQ4_1;
pub use q8::{BlockQ8K, BlockQ8_0, BlockQ8_1};

/// Lanes of the block-striped f32 accumulation (see [`lane_total`]).
pub const LANES: usize = 8;

/// The one order every kernel path adds per-block f32 terms in (Q4_0, Q4_1, Q8_0 dots):
/// `lanes` start at +0.0, block `i`'s term is added to `lanes[i % 8]`, and the lanes are
/// reduced as `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))` — what an AVX2 `__m256`
/// reduced high-half-onto-low-half gives, and two NEON `float32x4_t` (lanes 0..4, 4..8)
/// added and then folded the same way. SIMD kernels store their lane vectors and call this.
///
/// A lane that starts at +0.0 can never become -0.0 by additions, so padding a short tail
/// with +0.0 terms leaves every lane's bits unchanged (the SIMD tails rely on it).
#[inline]
pub fn lane_total(l: &[f32; LANES]) -> f32 {
    let t = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
    (t[0] + t[2]) + (t[1] + t[3])
}

/// One block of a tensor type, viewed in place from the file's bytes.
pub trait GgmlBlock: Pod {
    const TYPE: GgmlType;
    /// Elements per block (`TYPE.block_size()`); `size_of::<Self>()` is `TYPE.block_bytes()`.
    const BLOCK_SIZE: usize;
    /// `dst.len()` must be `src.len() · BLOCK_SIZE` (panics otherwise).
    fn dequantize(src: &[Self], dst: &mut [f32]);
}

/// A block type we can quantize to (bit-exact with ggml's `quantize_row_*_ref`).
pub trait QuantizeBlock: GgmlBlock {
    /// `src.len()` must be `dst.len() · BLOCK_SIZE` (panics otherwise).
    fn quantize(src: &[f32], dst: &mut [Self]);
}

/// A weight block type: its dot product with a row of activations quantized to `VecDot`.
pub trait WeightBlock: GgmlBlock {
    /// The activation block type (`vec_dot_type(Self::TYPE)`).
    type VecDot: QuantizeBlock;
    /// `row` and `acts` cover the same number of elements (panics otherwise).
    fn vec_dot(row: &[Self], acts: &[Self::VecDot]) -> f32;
}

/// Why a quantization call was refused. Every message is one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuantError {
    /// `n` elements are not a whole number of `ty`'s blocks.
    NotWholeBlocks { ty: GgmlType, n: usize },
    /// A row of `n` elements of `ty` is `expected` bytes but the buffer has `got`.
    RowBytes {
        ty: GgmlType,
        n: usize,
        expected: usize,
        got: usize,
    },
    /// A weight matrix of `n_rows × n_cols` is `expected` bytes but the buffer has `got`.
    MatrixBytes {
        ty: GgmlType,
        n_rows: usize,
        n_cols: usize,
        expected: usize,
        got: usize,
    },
    /// An embedding table is not a whole number of rows.
    NotWholeRows {
        ty: GgmlType,
        n_cols: usize,
        row_bytes: usize,
        got: usize,
    },
    /// A size computation overflowed `usize`.
    TooLarge {
        ty: GgmlType,
        n_rows: usize,
        n_cols: usize,
    },
    /// An output (or input) buffer has the wrong number of elements.
    Len {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// The activations were quantized for a different weight type.
    ActsType {
        weight: GgmlType,
        expected: GgmlType,
        got: GgmlType,
    },
    /// Quantizing to `ty` is not implemented.
    CannotQuantize { ty: GgmlType },
    /// `ty` is an activation type: it has no dot product with activations.
    NotAWeightType { ty: GgmlType },
    /// `get_row` of a row past the end of the table.
    RowOutOfRange { row: usize, n_rows: usize },
}

impl fmt::Display for QuantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            QuantError::NotWholeBlocks { ty, n } => write!(
                f,
                "{} row of {n} elements is not a whole number of {}-element blocks",
                ty.name(),
                ty.block_size()
            ),
            QuantError::RowBytes {
                ty,
                n,
                expected,
                got,
            } => write!(
                f,
                "{} row of {n} elements is {expected} bytes, got {got}",
                ty.name()
            ),
            QuantError::MatrixBytes {
                ty,
                n_rows,
                n_cols,
                expected,
                got,
            } => write!(
                f,
                "{} matrix of {n_rows} rows × {n_cols} columns is {expected} bytes, got {got}",
                ty.name()
            ),
            QuantError::NotWholeRows {
                ty,
                n_cols,
                row_bytes,
                got,
            } => write!(
                f,
                "{} table of {got} bytes is not a whole number of {n_cols}-element rows ({row_bytes} bytes each)",
                ty.name()
            ),
            QuantError::TooLarge { ty, n_rows, n_cols } => write!(
                f,
                "{} matrix of {n_rows} rows × {n_cols} columns is too large to address",
                ty.name()
            ),
            QuantError::Len {
                what,
                expected,
                got,
            } => write!(f, "{what} has {got} elements, expected {expected}"),
            QuantError::ActsType {
                weight,
                expected,
                got,
            } => write!(
                f,
                "{} weights take {} activations, got {} (quantize the activations for this weight type)",
                weight.name(),
                expected.name(),
                got.name()
            ),
            QuantError::CannotQuantize { ty } => write!(
                f,
                "quantizing to {} is not supported (supported: F32, F16, BF16, Q8_0, Q8_1, Q8_K, Q4_0, Q4_1)",
                ty.name()
            ),
            QuantError::NotAWeightType { ty } => write!(
                f,
                "{} is an activation type, not a weight type (weights: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)",
                ty.name()
            ),
            QuantError::RowOutOfRange { row, n_rows } => {
                write!(f, "row {row} is out of range (the table has {n_rows} rows)")
            }
        }
    }
}

impl std::error::Error for QuantError {}

/// The activation type a weight type's dot product takes: Q4_0, Q8_0 → Q8_0; Q4_1 → Q8_1;
/// Q4_K, Q6_K → Q8_K; F32, F16, BF16 → F32 (f32 activations). The activation types Q8_1 and
/// Q8_K map to themselves (they have no dot product; [`vec_dot`] refuses them).
pub fn vec_dot_type(weight: GgmlType) -> GgmlType {
    match weight {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => GgmlType::F32,
        GgmlType::Q4_0 | GgmlType::Q8_0 => GgmlType::Q8_0,
        GgmlType::Q4_1 => GgmlType::Q8_1,
        GgmlType::Q4K | GgmlType::Q6K => GgmlType::Q8K,
        GgmlType::Q8_1 => GgmlType::Q8_1,
        GgmlType::Q8K => GgmlType::Q8K,
    }
}

/// Bytes of a row of `n` elements of `ty`.
fn row_bytes(ty: GgmlType, n: usize) -> Result<usize, QuantError> {
    if !n.is_multiple_of(ty.block_size()) {
        return Err(QuantError::NotWholeBlocks { ty, n });
    }
    (n / ty.block_size())
        .checked_mul(ty.block_bytes())
        .ok_or(QuantError::TooLarge {
            ty,
            n_rows: 1,
            n_cols: n,
        })
}

/// View `bytes` (already checked to be whole blocks) as blocks.
fn blocks<B: Pod>(bytes: &[u8]) -> &[B] {
    // Block types have alignment 1 and the lengths were checked, so this cannot fail; the
    // native-f32 activations come from our own `Vec<f32>`.
    bytemuck::cast_slice(bytes)
}

fn blocks_mut<B: Pod>(bytes: &mut [u8]) -> &mut [B] {
    bytemuck::cast_slice_mut(bytes)
}

/// Dequantize one row of `dst.len()` elements of type `ty`; `src` must be exactly the row's
/// bytes.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    let n = dst.len();
    let expected = row_bytes(ty, n)?;
    if src.len() != expected {
        return Err(QuantError::RowBytes {
            ty,
            n,
            expected,
            got: src.len(),
        });
    }
    fn go<B: GgmlBlock>(src: &[u8], dst: &mut [f32]) {
        B::dequantize(blocks::<B>(src), dst)
    }
    match ty {
        GgmlType::F32 => go::<F32Le>(src, dst),
        GgmlType::F16 => go::<F16Le>(src, dst),
        GgmlType::BF16 => go::<Bf16Le>(src, dst),
        GgmlType::Q4_0 => go::<BlockQ4_0>(src, dst),
        GgmlType::Q4_1 => go::<BlockQ4_1>(src, dst),
        GgmlType::Q8_0 => go::<BlockQ8_0>(src, dst),
        GgmlType::Q8_1 => go::<BlockQ8_1>(src, dst),
        GgmlType::Q4K => go::<BlockQ4K>(src, dst),
        GgmlType::Q6K => go::<BlockQ6K>(src, dst),
        GgmlType::Q8K => go::<BlockQ8K>(src, dst),
    }
    Ok(())
}

/// Quantize `src` to one row of type `ty` in `dst` (exactly the row's bytes), bit-exact with
/// ggml's `quantize_row_*_ref`. Supported: F32, F16, BF16, Q8_0, Q8_1, Q8_K, Q4_0, Q4_1.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    let n = src.len();
    if matches!(ty, GgmlType::Q4K | GgmlType::Q6K) {
        return Err(QuantError::CannotQuantize { ty });
    }
    let expected = row_bytes(ty, n)?;
    if dst.len() != expected {
        return Err(QuantError::RowBytes {
            ty,
            n,
            expected,
            got: dst.len(),
        });
    }
    fn go<B: QuantizeBlock>(src: &[f32], dst: &mut [u8]) {
        B::quantize(src, blocks_mut::<B>(dst))
    }
    match ty {
        GgmlType::F32 => go::<F32Le>(src, dst),
        GgmlType::F16 => go::<F16Le>(src, dst),
        GgmlType::BF16 => go::<Bf16Le>(src, dst),
        GgmlType::Q4_0 => go::<BlockQ4_0>(src, dst),
        GgmlType::Q4_1 => go::<BlockQ4_1>(src, dst),
        GgmlType::Q8_0 => go::<BlockQ8_0>(src, dst),
        GgmlType::Q8_1 => go::<BlockQ8_1>(src, dst),
        GgmlType::Q8K => go::<BlockQ8K>(src, dst),
        GgmlType::Q4K | GgmlType::Q6K => unreachable!("refused above"),
    }
    Ok(())
}

/// Activations quantized once per matmul input in the layout the weight type's vec_dot needs
/// (Q8_0, Q8_1, Q8_K blocks, or plain f32 for float weights). The buffers are reused: no
/// allocation after the first call with a given length.
#[derive(Debug, Clone)]
pub struct QuantizedActs {
    ty: GgmlType,
    len: usize,
    /// The blocks, for quantized activation types.
    bytes: Vec<u8>,
    /// The values, for F32.
    f32s: Vec<f32>,
    /// Q8_0/Q8_1: every block's scale `d` (and Q8_1's `s`) as f32, zero-padded to a multiple
    /// of 8 blocks, so SIMD kernels load eight at once instead of converting them per row.
    scales: Vec<f32>,
    sums: Vec<f32>,
    /// Q8_0: every block's `Σ qs` as i32, zero-padded like `scales` (the VNNI kernels'
    /// `u8 × i8` offset correction, once per activation row instead of once per weight row).
    qsums: Vec<i32>,
    /// [`quantize_made_for`](Self::quantize_made_for)'s row before quantization.
    scratch: Vec<f32>,
}

impl Default for QuantizedActs {
    fn default() -> Self {
        Self::new()
    }
}

impl QuantizedActs {
    /// Empty F32 activations.
    pub fn new() -> Self {
        Self {
            ty: GgmlType::F32,
            len: 0,
            bytes: Vec::new(),
            f32s: Vec::new(),
            scales: Vec::new(),
            sums: Vec::new(),
            qsums: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Quantize `x` to `vec_dot_type(weight)`. On error the activations are left empty.
    pub fn quantize_for(&mut self, weight: GgmlType, x: &[f32]) -> Result<(), QuantError> {
        let ty = vec_dot_type(weight);
        if ty == GgmlType::Q8_0 {
            if let Err(e) = self.prepare_q8_0(x.len()) {
                self.prepare_q8_0(0)?;
                return Err(e);
            }
            let (y, d, s) = self.q8_0_mut();
            let nb = y.len();
            quantize_q8_0_blocks(x, y, &mut d[..nb], &mut s[..nb]);
            return Ok(());
        }
        self.len = 0;
        self.ty = ty;
        self.bytes.clear();
        self.f32s.clear();
        let nbytes = row_bytes(ty, x.len())?;
        if ty == GgmlType::F32 {
            self.f32s.extend_from_slice(x);
        } else {
            self.bytes.resize(nbytes, 0);
            if !quantize_acts_simd(ty, x, &mut self.bytes) {
                quantize_row(ty, x, &mut self.bytes)?;
            }
        }
        self.scales.clear();
        self.sums.clear();
        self.qsums.clear();
        if ty == GgmlType::Q8_1 {
            let b: &[BlockQ8_1] = blocks(&self.bytes);
            self.scales.extend(b.iter().map(|b| b.d.get()));
            self.sums.extend(b.iter().map(|b| b.s.get()));
        }
        for v in [&mut self.scales, &mut self.sums] {
            if !v.is_empty() {
                v.resize(v.len().next_multiple_of(LANES), 0.0);
            }
        }
        self.len = x.len();
        Ok(())
    }

    /// [`quantize_for`](Self::quantize_for) of the `len` values `make` writes into a
    /// scratch row these activations keep (no allocation once it has held `len` values):
    /// for a row computed just before it is quantized, such as a norm's output.
    pub fn quantize_made_for(
        &mut self,
        weight: GgmlType,
        len: usize,
        make: impl FnOnce(&mut [f32]),
    ) -> Result<(), QuantError> {
        let mut row = std::mem::take(&mut self.scratch);
        row.resize(len, 0.0);
        make(&mut row);
        let r = self.quantize_for(weight, &row);
        self.scratch = row;
        r
    }

    /// Make these Q8_0 activations of `len` values (a multiple of `part`, a multiple of 32)
    /// to be written a part at a time: the parts' block ranges in order, each filled by its
    /// [`Q8Part::quantize`], on any thread (the same bytes as [`quantize_for`](
    /// Self::quantize_for) of the whole row once every part is).
    pub fn q8_0_parts(
        &mut self,
        len: usize,
        part: usize,
    ) -> Result<impl Iterator<Item = Q8Part<'_>>, QuantError> {
        if part == 0 || !part.is_multiple_of(q8::QK8_0) || !len.is_multiple_of(part) {
            return Err(QuantError::Len {
                what: "Q8_0 activation parts (a multiple of 32 dividing the row)",
                expected: part.next_multiple_of(q8::QK8_0).max(q8::QK8_0),
                got: part,
            });
        }
        self.prepare_q8_0(len)?;
        let per = part / q8::QK8_0;
        let (y, d, s) = self.q8_0_mut();
        let n = y.len();
        Ok(y.chunks_mut(per)
            .zip(d[..n].chunks_mut(per))
            .zip(s[..n].chunks_mut(per))
            .map(|((y, d), s)| Q8Part { y, d, s }))
    }

    /// Make these Q8_0 activations of `len` values (a multiple of 32) whose blocks are
    /// written afterwards, a range at a time ([`q8_0_mut`](Self::q8_0_mut) and
    /// [`quantize_q8_0_blocks`]): every buffer sized, the padding of `scales` and `qsums`
    /// zeroed. No allocation once the buffers have held `len` values.
    ///
    /// Already Q8_0 of `len` values: nothing is written but a padding that is not zero (the
    /// blocks keep their old values until their writers rewrite them). Why: a decode step
    /// prepares `wo`'s and down's inputs once per layer on the calling thread, just after
    /// both compute threads wrote their blocks, and rewriting them pulled every line the
    /// other core held back across: with `--features pool-stats`, 2 threads, the caller's
    /// time between jobs fell from ~4 ms to ~1.4 ms per 64 decode tokens, and decode ran
    /// 1.012× (16 alternating rounds, BENCHMARKS "eleventh session").
    fn prepare_q8_0(&mut self, len: usize) -> Result<(), QuantError> {
        let nbytes = row_bytes(GgmlType::Q8_0, len)?;
        let padded = (len / q8::QK8_0).next_multiple_of(LANES);
        let n = len / q8::QK8_0;
        if self.ty == GgmlType::Q8_0
            && self.len == len
            && self.bytes.len() == nbytes
            && self.scales.len() == padded
            && self.qsums.len() == padded
            && self.f32s.is_empty()
            && self.sums.is_empty()
        {
            if self.scales[n..].iter().any(|&v| v != 0.0) {
                self.scales[n..].fill(0.0);
            }
            if self.qsums[n..].iter().any(|&v| v != 0) {
                self.qsums[n..].fill(0);
            }
            return Ok(());
        }
        self.ty = GgmlType::Q8_0;
        self.len = len;
        self.f32s.clear();
        self.sums.clear();
        self.bytes.clear();
        self.bytes.resize(nbytes, 0);
        self.scales.clear();
        self.scales.resize(padded, 0.0);
        self.qsums.clear();
        self.qsums.resize(padded, 0);
        Ok(())
    }

    /// Q8_0 activations' blocks, scales and sums (the last two with their padding).
    fn q8_0_mut(&mut self) -> (&mut [BlockQ8_0], &mut [f32], &mut [i32]) {
        (
            blocks_mut(&mut self.bytes),
            &mut self.scales,
            &mut self.qsums,
        )
    }

    /// Q8_0/Q8_1 activations: each block's `d` as f32, then zeros up to a multiple of 8
    /// blocks (empty for other types).
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Q8_1 activations: each block's `s` as f32, zero-padded like [`scales`](Self::scales).
    pub fn sums(&self) -> &[f32] {
        &self.sums
    }

    /// Q8_0 activations: each block's exact `Σ qs` (i32), zero-padded like
    /// [`scales`](Self::scales) (empty for other types).
    pub fn qsums(&self) -> &[i32] {
        &self.qsums
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The activation type (`vec_dot_type` of the weight type they were quantized for).
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// The quantized blocks in the GGUF layout of [`ty`](Self::ty); for F32 the f32 values'
    /// native-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        if self.ty == GgmlType::F32 {
            bytemuck::cast_slice(&self.f32s)
        } else {
            &self.bytes
        }
    }

    /// The values, for F32 activations (empty otherwise).
    pub fn f32s(&self) -> &[f32] {
        &self.f32s
    }

    /// The activations as blocks of `B` (`f32` for F32), or `None` if `B` is not their type.
    pub fn blocks<B: GgmlBlock>(&self) -> Option<&[B]> {
        if B::TYPE != self.ty {
            return None;
        }
        bytemuck::try_cast_slice(self.bytes()).ok()
    }
}

/// One part of a Q8_0 activation row ([`QuantizedActs::q8_0_parts`]): its blocks and what
/// the kernels read beside them.
pub struct Q8Part<'a> {
    y: &'a mut [BlockQ8_0],
    d: &'a mut [f32],
    s: &'a mut [i32],
}

impl Q8Part<'_> {
    /// Quantize this part's values (32 per block) into its blocks.
    ///
    /// # Panics
    /// If `x` is not as long as the part.
    pub fn quantize(&mut self, x: &[f32]) {
        quantize_q8_0_blocks(x, self.y, self.d, self.s);
    }

    /// Its blocks (32 values each).
    pub fn blocks(&self) -> usize {
        self.y.len()
    }

    /// Blocks `r` of this part (its values `32·r.start..32·r.end`) as a part of their own.
    ///
    /// # Panics
    /// If `r` is not inside the part.
    pub fn sub(&mut self, r: std::ops::Range<usize>) -> Q8Part<'_> {
        Q8Part {
            y: &mut self.y[r.clone()],
            d: &mut self.d[r.clone()],
            s: &mut self.s[r],
        }
    }
}

/// Quantize `x` into the Q8_0 blocks `y` (32 values each) and fill in what the kernels read
/// beside them: each block's scale `d` as f32 and its exact `Σ qs`. SIMD where the active path
/// has a quantizer, else the scalar one (the same bytes). [`QuantizedActs::quantize_for`]
/// runs it on a whole row; a fused matmul epilogue ([`Epilogue::SwiGluQ8`]) on the blocks of
/// the rows it computed.
///
/// # Panics
/// If `x.len() != 32 · y.len()` or `scales`/`qsums` are not `y.len()` long.
fn quantize_q8_0_blocks(x: &[f32], y: &mut [BlockQ8_0], scales: &mut [f32], qsums: &mut [i32]) {
    assert!(
        x.len() == y.len() * q8::QK8_0 && scales.len() == y.len() && qsums.len() == y.len(),
        "Q8_0 quantize: {} values for {} blocks",
        x.len(),
        y.len()
    );
    if !quantize_acts_simd(GgmlType::Q8_0, x, bytemuck::cast_slice_mut(y)) {
        q8::quantize_row_q8_0(x, y);
    }
    for ((b, d), s) in y.iter().zip(scales).zip(qsums) {
        *d = b.d.get();
        *s = b.qs.iter().map(|&q| q as i32).sum();
    }
}

/// SIMD activation quantization (bit-identical to the scalar quantizers); `false` = use scalar.
#[allow(unused_variables)]
fn quantize_acts_simd(ty: GgmlType, x: &[f32], dst: &mut [u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::kernels::{x86, KernelPath as P};
        if matches!(crate::kernels::active(), P::Avx2 | P::Avx512Vnni) && x.len().is_multiple_of(32)
        {
            // SAFETY: `Avx2` / `Avx512Vnni` are active only on CPUs with avx2, fma and f16c;
            // `dst` holds exactly `x.len() / 32` blocks (sized by `row_bytes` above).
            match ty {
                GgmlType::Q8_0 => unsafe {
                    x86::quantize_row_q8_0(x, blocks_mut::<BlockQ8_0>(dst))
                },
                GgmlType::Q8_1 => unsafe {
                    x86::quantize_row_q8_1(x, blocks_mut::<BlockQ8_1>(dst))
                },
                _ => return false,
            }
            return true;
        }
    }
    false
}

/// Check that `acts` suit a `weight` row of `n_cols` elements.
fn check_acts(weight: GgmlType, acts: &QuantizedActs, n_cols: usize) -> Result<(), QuantError> {
    if matches!(weight, GgmlType::Q8_1 | GgmlType::Q8K) {
        return Err(QuantError::NotAWeightType { ty: weight });
    }
    let expected = vec_dot_type(weight);
    if acts.ty() != expected {
        return Err(QuantError::ActsType {
            weight,
            expected,
            got: acts.ty(),
        });
    }
    if acts.len() != n_cols {
        return Err(QuantError::Len {
            what: "activations",
            expected: n_cols,
            got: acts.len(),
        });
    }
    Ok(())
}

/// A row kernel: rows `w` (each `row_bytes` long, `row_bytes > 0`) dotted with the
/// activation blocks `acts` into `out` (one value per row).
type RowsFn = fn(w: &[u8], row_bytes: usize, acts: &QuantizedActs, out: &mut [f32]);

/// Rows of `W` blocks with the scalar reference dot.
fn rows_scalar<W: WeightBlock>(w: &[u8], row_bytes: usize, acts: &QuantizedActs, out: &mut [f32]) {
    let y = blocks::<W::VecDot>(acts.bytes());
    for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
        *o = W::vec_dot(blocks::<W>(row), y);
    }
}

/// Rows of `W` blocks dotted with `acts` by `dot` (a SIMD kernel).
#[allow(dead_code)]
#[inline(always)]
fn rows_with<W: WeightBlock>(
    w: &[u8],
    row_bytes: usize,
    acts: &QuantizedActs,
    out: &mut [f32],
    dot: impl Fn(&[W], &[W::VecDot]) -> f32,
) {
    let y = blocks::<W::VecDot>(acts.bytes());
    for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
        *o = dot(blocks::<W>(row), y);
    }
}

/// Rows handed to one compute thread at a time: enough work (≥ ~10 µs) to hide the hand-off.
const ROWS_PER_PART: usize = 32;

/// Parts per compute thread in a matmul: one contiguous range each. Every extra part costs a
/// claim on the pool's shared ticket (a cache line moving between cores) and a restart of the
/// hardware prefetcher on a new stream; on the 2-vCPU EPYC of BENCHMARKS four parts per thread
/// decoded at 352 tok/s, two at 399 and one at 438 (2 threads, medians of 3 alternating
/// rounds, `expllm bench --stage llm`), prefill 1398, 1687 and 1653.
const PARTS_PER_THREAD: usize = 1;

/// Weight rows per group inside a part: the group (≤ 16 rows, a few KB) stays in L1 while
/// every activation row of a batch is dotted with it.
const ROW_GROUP: usize = 16;

fn matmul_dyn(
    weight: GgmlType,
    w: &[u8],
    row_bytes: usize,
    n: usize,
    acts: &[QuantizedActs],
    out: &mut [f32],
) {
    if row_bytes == 0 {
        out.fill(0.0);
        return;
    }
    let path = crate::kernels::active();
    let rows = row_kernel(path, weight);
    let pair = pair_kernel(path, weight).filter(|_| acts.len() >= 2);
    let out_ptr = SendPtr(out.as_mut_ptr());
    // Rows `r0..r1` (a group at a time) for every activation row, into `out[b·n + r]`.
    let run = |r0: usize, r1: usize| {
        let mut g = r0;
        while g < r1 {
            let g1 = (g + ROW_GROUP).min(r1);
            // SAFETY: `b·n + r` for r in g..g1 lies inside `out` (g1 ≤ n, out.len() =
            // n · acts.len()). Concurrent calls of `run` get disjoint row ranges `r0..r1`
            // (see below), so no two live references overlap, and `out` outlives them
            // (`pool::run` returns only after every part is done).
            let slot = |b: usize, r: usize, len: usize| unsafe {
                std::slice::from_raw_parts_mut(out_ptr.get().add(b * n + r), len)
            };
            let row = |r: usize| &w[r * row_bytes..(r + 1) * row_bytes];
            let mut done_rows = g;
            if let Some(pair) = pair {
                // Two weight rows × two activation rows per call (i8mm `smmla`).
                done_rows = g + (g1 - g) / 2 * 2;
                let done_acts = acts.len() / 2 * 2;
                for r in (g..done_rows).step_by(2) {
                    for b in (0..done_acts).step_by(2) {
                        let v = pair(row(r), row(r + 1), &acts[b], &acts[b + 1]);
                        slot(b, r, 1)[0] = v[0];
                        slot(b + 1, r, 1)[0] = v[1];
                        slot(b, r + 1, 1)[0] = v[2];
                        slot(b + 1, r + 1, 1)[0] = v[3];
                    }
                }
                // The odd activation row, for the paired rows.
                for (b, a) in acts.iter().enumerate().skip(done_acts) {
                    rows(
                        &w[g * row_bytes..done_rows * row_bytes],
                        row_bytes,
                        a,
                        slot(b, g, done_rows - g),
                    );
                }
            }
            // The rows not paired (all of them without a pair kernel), for every activation.
            if done_rows < g1 {
                for (b, a) in acts.iter().enumerate() {
                    rows(
                        &w[done_rows * row_bytes..g1 * row_bytes],
                        row_bytes,
                        a,
                        slot(b, done_rows, g1 - done_rows),
                    );
                }
            }
            g = g1;
        }
    };
    let threads = crate::kernels::pool::threads();
    if threads <= 1 || n * acts.len() < 2 * ROWS_PER_PART {
        run(0, n);
        return;
    }
    // Contiguous row ranges, one per thread (`PARTS_PER_THREAD`).
    let parts = (n / ROWS_PER_PART).clamp(1, threads * PARTS_PER_THREAD);
    let per = n.div_ceil(parts);
    let parts = n.div_ceil(per);
    crate::kernels::pool::run(parts, &|p| run(p * per, (p * per + per).min(n)));
}

/// A raw pointer that may cross to the compute threads (see the SAFETY note at its use).
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used to hand disjoint sub-slices of one `&mut [f32]` to the pool's threads
// for the duration of one `pool::run`.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `&mut [QuantizedActs]`'s base, handed to the parts of one [`matmul_packed_each`] job (see
/// the SAFETY note at its use).
struct PartActs(*mut QuantizedActs);
// SAFETY: only used to hand each part of one `pool::run` its own element of one
// `&mut [QuantizedActs]` (`QuantizedActs` is `Send`), for the duration of the job.
unsafe impl Send for PartActs {}
// SAFETY: as above.
unsafe impl Sync for PartActs {}

/// Two weight rows × two activation rows → `[x0·y0, x0·y1, x1·y0, x1·y1]`.
type PairFn = fn(x0: &[u8], x1: &[u8], y0: &QuantizedActs, y1: &QuantizedActs) -> [f32; 4];

/// The 2×2 kernel for `weight` on `path`, if there is one (NEON + i8mm `smmla`). Bit-identical
/// to four one-row dots (tested in `kernels::aarch64`), so it only changes speed.
#[allow(unused_variables)]
fn pair_kernel(path: crate::kernels::KernelPath, weight: GgmlType) -> Option<PairFn> {
    #[cfg(target_arch = "aarch64")]
    if path == crate::kernels::KernelPath::NeonI8mm {
        use crate::kernels::aarch64 as a64;
        // SAFETY (every call below): `active()` returns `NeonI8mm` only when the CPU has i8mm
        // and dotprod (checked once at start-up), the `_i8mm_2x2` kernels' contract; the block
        // slices come from `blocks` and `check_acts` made all four lengths equal.
        return match weight {
            GgmlType::Q4_0 => Some(|x0, x1, y0, y1| unsafe {
                a64::vec_dot_q4_0_q8_0_i8mm_2x2(
                    blocks(x0),
                    blocks(x1),
                    blocks(y0.bytes()),
                    blocks(y1.bytes()),
                )
            }),
            GgmlType::Q4_1 => Some(|x0, x1, y0, y1| unsafe {
                a64::vec_dot_q4_1_q8_1_i8mm_2x2(
                    blocks(x0),
                    blocks(x1),
                    blocks(y0.bytes()),
                    blocks(y1.bytes()),
                )
            }),
            GgmlType::Q8_0 => Some(|x0, x1, y0, y1| unsafe {
                a64::vec_dot_q8_0_q8_0_i8mm_2x2(
                    blocks(x0),
                    blocks(x1),
                    blocks(y0.bytes()),
                    blocks(y1.bytes()),
                )
            }),
            _ => None,
        };
    }
    None
}

/// The row kernel for `weight` on `path`: a SIMD one where there is one, else the scalar
/// reference. Every SIMD kernel is bit-identical to the scalar one (tested in its module),
/// so the path never changes a result, only its speed.
///
/// `path` must be one this CPU supports: [`kernels::active()`](crate::kernels::active) (what
/// `matmul` passes) always is; tests pass other paths only after checking
/// [`supported`](crate::kernels::KernelPath::supported).
#[allow(unused_variables)]
fn row_kernel(path: crate::kernels::KernelPath, weight: GgmlType) -> RowsFn {
    use crate::kernels::KernelPath as P;
    #[cfg(target_arch = "x86_64")]
    if path == P::Avx512Vnni {
        use crate::kernels::x86_vnni as vnni;
        // SAFETY (every call below): `Avx512Vnni` is active (or, in tests, passed) only when
        // the CPU has avx2, fma, f16c, avx512f, avx512bw, avx512vl and avx512vnni, the VNNI
        // kernels' whole contract; lengths as for `Avx2` below. The activation scales and
        // `qsums` are zero-padded to a multiple of 8 blocks by `QuantizedActs`.
        match weight {
            GgmlType::Q4_0 => {
                return |w, rb, a, o| {
                    rows_with::<BlockQ4_0>(w, rb, a, o, |x, y| unsafe {
                        vnni::vec_dot_q4_0_q8_0(x, y, a.scales(), a.qsums())
                    })
                }
            }
            GgmlType::Q4_1 => {
                return |w, rb, a, o| {
                    rows_with::<BlockQ4_1>(w, rb, a, o, |x, y| unsafe {
                        vnni::vec_dot_q4_1_q8_1(x, y, a.scales(), a.sums())
                    })
                }
            }
            GgmlType::Q8_0 => {
                return |w, rb, a, o| {
                    rows_with::<BlockQ8_0>(w, rb, a, o, |x, y| unsafe {
                        vnni::vec_dot_q8_0_q8_0(x, y, a.scales(), a.qsums())
                    })
                }
            }
            // Q4_K, Q6_K: the AVX2 kernels below (the VNNI CPU has AVX2, FMA and F16C).
            _ => {}
        }
    }
    #[cfg(target_arch = "x86_64")]
    if matches!(path, P::Avx2 | P::Avx512Vnni) {
        use crate::kernels::x86;
        // SAFETY (every call below): `Avx2` / `Avx512Vnni` are active (or, in tests, passed)
        // only when the CPU has avx2, fma and f16c, which is the kernels' whole contract; the
        // block slices come from `blocks`, which checked their lengths, and `check_acts` made
        // the activation count equal the row length, so `x.len() == y.len()`.
        match weight {
            // The AVX2 Q4/Q8 kernels also take the activation scales `QuantizedActs` keeps in
            // f32 (zero-padded to a multiple of 8 blocks, which they assert).
            GgmlType::Q4_0 => {
                return |w, rb, a, o| {
                    rows_with::<BlockQ4_0>(w, rb, a, o, |x, y| unsafe {
                        x86::vec_dot_q4_0_q8_0(x, y, a.scales())
                    })
                }
            }
            GgmlType::Q4_1 => {
                return |w, rb, a, o| {
                    rows_with::<BlockQ4_1>(w, rb, a, o, |x, y| unsafe {
                        x86::vec_dot_q4_1_q8_1(x, y, a.scales(), a.sums())
                    })
                }
            }
            GgmlType::Q8_0 => {
                return |w, rb, a, o| {
                    rows_with::<BlockQ8_0>(w, rb, a, o, |x, y| unsafe {
                        x86::vec_dot_q8_0_q8_0(x, y, a.scales())
                    })
                }
            }
            GgmlType::Q4K => {
                return |w, rb, a, o| {
                    rows_with::<BlockQ4K>(w, rb, a, o, |x, y| unsafe { x86::vec_dot_q4k_q8k(x, y) })
                }
            }
            GgmlType::Q6K => {
                return |w, rb, a, o| {
                    rows_with::<BlockQ6K>(w, rb, a, o, |x, y| unsafe { x86::vec_dot_q6k_q8k(x, y) })
                }
            }
            _ => {}
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        use crate::kernels::aarch64 as a64;
        // SAFETY (every call below): `kernels::active()` returns `NeonDotprod` / `NeonI8mm`
        // only when the CPU has dotprod (checked once at start-up), the `_dotprod` kernels'
        // contract; the `_neon` ones need only the aarch64 baseline. Lengths as above.
        if matches!(path, P::NeonDotprod | P::NeonI8mm) {
            match weight {
                GgmlType::Q4_0 => {
                    return |w, rb, a, o| {
                        rows_with::<BlockQ4_0>(w, rb, a, o, |x, y| unsafe {
                            a64::vec_dot_q4_0_q8_0_dotprod(x, y)
                        })
                    }
                }
                GgmlType::Q4_1 => {
                    return |w, rb, a, o| {
                        rows_with::<BlockQ4_1>(w, rb, a, o, |x, y| unsafe {
                            a64::vec_dot_q4_1_q8_1_dotprod(x, y)
                        })
                    }
                }
                GgmlType::Q8_0 => {
                    return |w, rb, a, o| {
                        rows_with::<BlockQ8_0>(w, rb, a, o, |x, y| unsafe {
                            a64::vec_dot_q8_0_q8_0_dotprod(x, y)
                        })
                    }
                }
                _ => {}
            }
        }
        // Q4_K / Q6_K: one widening-multiply kernel for every aarch64 path (why not `sdot`:
        // `kernels::aarch64`'s K-quant section).
        if matches!(path, P::Neon | P::NeonDotprod | P::NeonI8mm) {
            match weight {
                GgmlType::Q4K => {
                    return |w, rb, a, o| {
                        rows_with::<BlockQ4K>(w, rb, a, o, |x, y| unsafe {
                            a64::vec_dot_q4k_q8k_neon(x, y)
                        })
                    }
                }
                GgmlType::Q6K => {
                    return |w, rb, a, o| {
                        rows_with::<BlockQ6K>(w, rb, a, o, |x, y| unsafe {
                            a64::vec_dot_q6k_q8k_neon(x, y)
                        })
                    }
                }
                _ => {}
            }
        }
        if path == P::Neon {
            match weight {
                GgmlType::Q4_0 => {
                    return |w, rb, a, o| {
                        rows_with::<BlockQ4_0>(w, rb, a, o, |x, y| unsafe {
                            a64::vec_dot_q4_0_q8_0_neon(x, y)
                        })
                    }
                }
                GgmlType::Q4_1 => {
                    return |w, rb, a, o| {
                        rows_with::<BlockQ4_1>(w, rb, a, o, |x, y| unsafe {
                            a64::vec_dot_q4_1_q8_1_neon(x, y)
                        })
                    }
                }
                GgmlType::Q8_0 => {
                    return |w, rb, a, o| {
                        rows_with::<BlockQ8_0>(w, rb, a, o, |x, y| unsafe {
                            a64::vec_dot_q8_0_q8_0_neon(x, y)
                        })
                    }
                }
                _ => {}
            }
        }
    }
    match weight {
        GgmlType::F32 => rows_scalar::<F32Le>,
        GgmlType::F16 => rows_scalar::<F16Le>,
        GgmlType::BF16 => rows_scalar::<Bf16Le>,
        GgmlType::Q4_0 => rows_scalar::<BlockQ4_0>,
        GgmlType::Q4_1 => rows_scalar::<BlockQ4_1>,
        GgmlType::Q8_0 => rows_scalar::<BlockQ8_0>,
        GgmlType::Q4K => rows_scalar::<BlockQ4K>,
        GgmlType::Q6K => rows_scalar::<BlockQ6K>,
        GgmlType::Q8_1 | GgmlType::Q8K => unreachable!("refused by check_acts"),
    }
}

/// Dot product of one `weight` row (exactly its bytes) with `acts` (quantized for `weight`):
/// the scalar reference, integer accumulation per block as ggml does.
pub fn vec_dot(weight: GgmlType, row: &[u8], acts: &QuantizedActs) -> Result<f32, QuantError> {
    check_acts(weight, acts, acts.len())?;
    let n = acts.len();
    let expected = row_bytes(weight, n)?;
    if row.len() != expected {
        return Err(QuantError::RowBytes {
            ty: weight,
            n,
            expected,
            got: row.len(),
        });
    }
    let mut out = [0f32];
    matmul_dyn(
        weight,
        row,
        expected,
        1,
        std::slice::from_ref(acts),
        &mut out,
    );
    Ok(out[0])
}

/// `out = W · acts`: `W` is `n_rows` rows of `n_cols` elements of type `weight` (GGUF bytes),
/// `acts` quantized for it. One matrix-vector product (decode).
pub fn matvec(
    weight: GgmlType,
    w: &[u8],
    n_rows: usize,
    n_cols: usize,
    acts: &QuantizedActs,
    out: &mut [f32],
) -> Result<(), QuantError> {
    matmul(weight, w, n_rows, n_cols, std::slice::from_ref(acts), out)
}

/// `out[b·n_rows + r] = W[r] · acts[b]` for every activation row `b` (prefill: several tokens
/// at once). Each weight row is loaded once for all of them (rows are taken in small groups
/// that stay in L1 while every activation row passes), and the rows are split over the
/// compute threads. Every value is the same bits as [`matvec`] of that row would give.
pub fn matmul(
    weight: GgmlType,
    w: &[u8],
    n_rows: usize,
    n_cols: usize,
    acts: &[QuantizedActs],
    out: &mut [f32],
) -> Result<(), QuantError> {
    for a in acts {
        check_acts(weight, a, n_cols)?;
    }
    let rb = row_bytes(weight, n_cols)?;
    let expected = rb.checked_mul(n_rows).ok_or(QuantError::TooLarge {
        ty: weight,
        n_rows,
        n_cols,
    })?;
    if w.len() != expected {
        return Err(QuantError::MatrixBytes {
            ty: weight,
            n_rows,
            n_cols,
            expected,
            got: w.len(),
        });
    }
    if out.len() != n_rows * acts.len() {
        return Err(QuantError::Len {
            what: "matmul output",
            expected: n_rows * acts.len(),
            got: out.len(),
        });
    }
    matmul_dyn(weight, w, rb, n_rows, acts, out);
    Ok(())
}

/// A weight matrix repacked at load for a kernel path's GEMM ([`q4_0x8`]: Q4_0, eight rows
/// per tile), an owned copy beside the mapped original. Used by [`matmul_packed`]; the result
/// is the same bits as [`matmul`] on the original, only faster where the path has a kernel.
pub struct PackedMatrix {
    rows: usize,
    cols: usize,
    tiles: Tiles,
}

/// Where a [`PackedMatrix`]'s tiles live: its own vector, or ranges of a [`PackArena`]'s
/// huge-page buffer shared with the model's other matrices, one per thread share
/// ([`share`]): `(first tile of the share, the share's blocks in the buffer)`, in order.
enum Tiles {
    Own(Vec<q4_0x8::BlockQ4_0x8>),
    Arena(Arc<HugeBuf<q4_0x8::BlockQ4_0x8>>, Shares),
}

/// Share `s` of `shares` of a packed matrix's `tiles` tiles, as the matmuls split a decode
/// step's work over the compute threads (thread `s` runs share `s`) and a [`PackArena`] lays
/// the shares out (every thread's shares of all matrices in a row): whole 32-row blocks
/// (four tiles, what the SwiGLU epilogue quantizes at once) where the rows are a multiple
/// of 32, else tiles; evenly, in order.
pub fn share(tiles: usize, s: usize, shares: usize) -> std::ops::Range<usize> {
    let unit = if tiles.is_multiple_of(4) { 4 } else { 1 };
    let (units, shares) = (tiles / unit, shares.max(1));
    s * units / shares * unit..(s + 1) * units / shares * unit
}

impl PackedMatrix {
    /// Whether `path` has a GEMM kernel for `ty` (so packing pays): Q4_0 on AVX2, AVX-512
    /// VNNI, NEON and NEON + dotprod (the i8mm path uses the dotprod one: `smmla` wants
    /// another layout, not written yet).
    pub fn has_kernel(path: crate::kernels::KernelPath, ty: GgmlType) -> bool {
        use crate::kernels::KernelPath as P;
        ty == GgmlType::Q4_0
            && matches!(
                path,
                P::Avx2 | P::Avx512Vnni | P::Neon | P::NeonDotprod | P::NeonI8mm
            )
    }

    /// Repack `w` (`rows` × `cols` of `ty`, GGUF bytes) if `path` has a kernel for it and the
    /// rows fill whole tiles (a multiple of 8); `Ok(None)` otherwise (use [`matmul`]).
    pub fn pack(
        path: crate::kernels::KernelPath,
        ty: GgmlType,
        w: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<Option<PackedMatrix>, QuantError> {
        if Self::tiles_for(path, ty, rows, cols).is_none() {
            return Ok(None);
        }
        Self::pack_q4_0(w, rows, cols).map(Some)
    }

    /// The tiles [`pack`](Self::pack) would make of a `rows` × `cols` matrix of `ty` on
    /// `path`; `None` where it would not pack (what a [`PackArena`] is sized by).
    pub fn tiles_for(
        path: crate::kernels::KernelPath,
        ty: GgmlType,
        rows: usize,
        cols: usize,
    ) -> Option<usize> {
        (Self::has_kernel(path, ty) && rows.is_multiple_of(q4_0x8::TILE_ROWS))
            .then(|| rows / q4_0x8::TILE_ROWS * (cols / q4_0::QK4_0))
    }

    /// Repack Q4_0 `w` (`rows` a multiple of 8) whatever the path (tests use it to reach the
    /// scalar fallback of [`matmul_packed`]).
    fn pack_q4_0(w: &[u8], rows: usize, cols: usize) -> Result<PackedMatrix, QuantError> {
        let mut tiles = Vec::new();
        pack_q4_0_into(w, rows, cols, |n| {
            tiles = vec![bytemuck::Zeroable::zeroed(); n];
            Some(&mut tiles[..])
        })?;
        Ok(PackedMatrix {
            rows,
            cols,
            tiles: Tiles::Own(tiles),
        })
    }

    /// The blocks of tiles `t..` up to the end of the share that holds tile `t` (every tile
    /// where the matrix is one piece); empty past the last tile.
    fn tiles_from(&self, t: usize) -> &[q4_0x8::BlockQ4_0x8] {
        let nb = self.cols / q4_0::QK4_0;
        match &self.tiles {
            Tiles::Own(v) => v.get(t * nb..).unwrap_or(&[]),
            Tiles::Arena(buf, segs) => {
                // The last share starting at or before `t` (share 0 starts at 0).
                match segs
                    .iter()
                    .rev()
                    .find(|(first, r)| *first <= t && !r.is_empty())
                {
                    Some((first, r)) => buf[r.clone()].get((t - first) * nb..).unwrap_or(&[]),
                    None => &[],
                }
            }
        }
    }

    /// Every packed tile, in row order (tests compare layouts with it).
    #[cfg(test)]
    fn tiles(&self) -> Vec<q4_0x8::BlockQ4_0x8> {
        let n = self.rows / q4_0x8::TILE_ROWS;
        let nb = self.cols / q4_0::QK4_0;
        let mut all = Vec::new();
        while all.len() < n * nb {
            let run = self.tiles_from(all.len() / nb.max(1));
            assert!(!run.is_empty(), "tiles missing");
            all.extend_from_slice(run);
        }
        all
    }

    /// Bytes held by the packed copy.
    pub fn bytes(&self) -> usize {
        let blocks = match &self.tiles {
            Tiles::Own(v) => v.len(),
            Tiles::Arena(_, segs) => segs.iter().map(|(_, r)| r.len()).sum(),
        };
        blocks * std::mem::size_of::<q4_0x8::BlockQ4_0x8>()
    }
}

/// The bytes per row of Q4_0 `w`, checked to be `rows` (a multiple of 8) × `cols`.
fn q4_0_row_bytes(w: &[u8], rows: usize, cols: usize) -> Result<usize, QuantError> {
    let ty = GgmlType::Q4_0;
    let rb = row_bytes(ty, cols)?;
    if Some(w.len()) != rb.checked_mul(rows) || !rows.is_multiple_of(q4_0x8::TILE_ROWS) {
        return Err(QuantError::MatrixBytes {
            ty,
            n_rows: rows,
            n_cols: cols,
            expected: rb.saturating_mul(rows),
            got: w.len(),
        });
    }
    Ok(rb)
}

/// Check Q4_0 `w`'s size for `rows` (a multiple of 8) × `cols`, then pack it into the slice
/// `dst(tiles)` hands out (`None`: no room, an error).
fn pack_q4_0_into<'d>(
    w: &[u8],
    rows: usize,
    cols: usize,
    dst: impl FnOnce(usize) -> Option<&'d mut [q4_0x8::BlockQ4_0x8]>,
) -> Result<(), QuantError> {
    q4_0_row_bytes(w, rows, cols)?;
    let nb = cols / q4_0::QK4_0;
    let n = rows / q4_0x8::TILE_ROWS * nb;
    let tiles = dst(n).ok_or(QuantError::Len {
        what: "pack arena tiles",
        expected: n,
        got: 0,
    })?;
    q4_0x8::pack(blocks(w), rows, nb, tiles);
    Ok(())
}

/// Every matrix of a model packed into one buffer of huge pages ([`HugeBuf`]): the weights a
/// decode step streams, with ~1/512 of the TLB misses of 4 KiB pages. Laid out **by thread
/// share**: with `shares` compute threads, thread `s`'s [`share`] of every matrix, in the
/// order packed (a decode step's order), then thread `s + 1`'s. Each thread then streams one
/// contiguous region per token, matrix after matrix, instead of a piece of every matrix
/// among the other thread's (`cargo bench --bench matmul_stream` measures both). Sized up
/// front by each matrix's [`PackedMatrix::tiles_for`]; [`pack`](Self::pack) fills the
/// matrices in that order, and [`finish`](Self::finish) turns them into [`PackedMatrix`]es
/// (the same bits and kernels as [`PackedMatrix::pack`]'s own copies, for any thread count).
pub struct PackArena {
    buf: HugeBuf<q4_0x8::BlockQ4_0x8>,
    /// Per matrix to pack: `(rows, cols)`, and per share its first block in `buf`.
    plan: Vec<((usize, usize), Vec<usize>)>,
    mats: Vec<(usize, usize, Shares)>,
}

/// A packed matrix's shares in an arena: `(first tile, blocks in the buffer)` each.
type Shares = Vec<(usize, std::ops::Range<usize>)>;

impl PackArena {
    /// An arena for the matrices `mats` (`rows × cols`, in the order they will be packed:
    /// those [`PackedMatrix::tiles_for`] packs), each cut into `shares` thread shares.
    ///
    /// # Errors
    /// If the memory cannot be mapped.
    pub fn new(mats: &[(usize, usize)], shares: usize) -> std::io::Result<PackArena> {
        let shares = shares.max(1);
        let mut plan: Vec<((usize, usize), Vec<usize>)> =
            mats.iter().map(|&m| (m, vec![0; shares])).collect();
        let mut at = 0;
        for s in 0..shares {
            for ((rows, cols), starts) in plan.iter_mut() {
                starts[s] = at;
                at += share(*rows / q4_0x8::TILE_ROWS, s, shares).len() * (*cols / q4_0::QK4_0);
            }
        }
        Ok(PackArena {
            buf: HugeBuf::zeroed(at)?,
            plan,
            mats: Vec::new(),
        })
    }

    /// Pack `w` as [`PackedMatrix::pack`] would, into the next matrix's place in the arena;
    /// its index in [`finish`](Self::finish)'s list, or `None` where the path does not pack
    /// it.
    ///
    /// # Errors
    /// As [`PackedMatrix::pack`]; also if the arena was not planned for this matrix.
    pub fn pack(
        &mut self,
        path: crate::kernels::KernelPath,
        ty: GgmlType,
        w: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<Option<usize>, QuantError> {
        if PackedMatrix::tiles_for(path, ty, rows, cols).is_none() {
            return Ok(None);
        }
        let i = self.mats.len();
        let Some((_, starts)) = self.plan.get(i).filter(|p| p.0 == (rows, cols)) else {
            return Err(QuantError::Len {
                what: "pack arena: rows of the next planned matrix",
                expected: self.plan.get(i).map_or(0, |p| p.0 .0),
                got: rows,
            });
        };
        let rb = q4_0_row_bytes(w, rows, cols)?;
        let nb = cols / q4_0::QK4_0;
        let shares = starts.len();
        let mut segs = Vec::with_capacity(shares);
        for (s, &start) in starts.iter().enumerate() {
            let r = share(rows / q4_0x8::TILE_ROWS, s, shares);
            let (r0, r1) = (r.start * q4_0x8::TILE_ROWS, r.end * q4_0x8::TILE_ROWS);
            let buf = &mut self.buf;
            pack_q4_0_into(&w[r0 * rb..r1 * rb], r1 - r0, cols, |want| {
                buf.get_mut(start..start + want)
            })?;
            segs.push((r.start, start..start + r.len() * nb));
        }
        self.mats.push((rows, cols, segs));
        Ok(Some(i))
    }

    /// Whether the kernel took the huge-page advice for the arena.
    pub fn huge_pages(&self) -> bool {
        self.buf.advised()
    }

    /// The packed matrices, in the order [`pack`](Self::pack) made them.
    pub fn finish(self) -> Vec<PackedMatrix> {
        let buf = Arc::new(self.buf);
        self.mats
            .into_iter()
            .map(|(rows, cols, segs)| PackedMatrix {
                rows,
                cols,
                tiles: Tiles::Arena(buf.clone(), segs),
            })
            .collect()
    }
}

/// Activation rows per GEMM kernel call on `path` (the unpacked weight block serves this
/// many), the best by measurement or instruction count: x86 4 (`cargo bench --bench kernels`:
/// VNNI per row × activation 8.8–21 ns at 4 against 13–27 ns at 1); NEON + dotprod 3 and
/// baseline NEON 1 (`scripts/neon-instruction-counts`, 2026-11-25: per row × block 5.4 at 3
/// against 6.1 at 2, 7.6 at 4 and 8.0 at 1 with dotprod; 15.0 at 1 against 18.6–22.4 for more
/// on baseline NEON, whose 64 multiply-add instructions per activation row leave nothing to
/// amortize). Counts, not times: no aarch64 board has timed them.
fn gemm_acts(path: crate::kernels::KernelPath) -> usize {
    use crate::kernels::KernelPath as P;
    match path {
        P::Neon => 1,
        P::NeonDotprod | P::NeonI8mm => 3,
        _ => 4,
    }
}

/// One tile × `A` activation rows on `path` (the scalar packed reference where the path has
/// no kernel; `PackedMatrix::pack` only packs where it has one).
fn gemm_tile<const A: usize>(
    path: crate::kernels::KernelPath,
    x: &[q4_0x8::BlockQ4_0x8],
    acts: &[QuantizedActs],
) -> [[f32; q4_0x8::TILE_ROWS]; A] {
    let y: [&[BlockQ8_0]; A] = std::array::from_fn(|a| blocks(acts[a].bytes()));
    #[cfg(target_arch = "x86_64")]
    {
        use crate::kernels::KernelPath as P;
        let yd: [&[f32]; A] = std::array::from_fn(|a| acts[a].scales());
        let ys: [&[i32]; A] = std::array::from_fn(|a| acts[a].qsums());
        match path {
            // SAFETY: these paths are active (or, in tests, passed) only on CPUs with their
            // features (avx2/fma/f16c; plus avx512f/bw/vl/vnni for VNNI), the kernels' whole
            // contract; `check_acts` made every activation row `x.len()` blocks of Q8_0, and
            // `QuantizedActs` pads `scales`/`qsums` to at least that.
            P::Avx512Vnni => {
                return unsafe { crate::kernels::x86_vnni::gemm_q4_0x8_q8_0(x, y, yd, ys) }
            }
            P::Avx2 => return unsafe { crate::kernels::x86::gemm_q4_0x8_q8_0(x, y, yd, ys) },
            _ => {}
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        use crate::kernels::aarch64 as a64;
        use crate::kernels::KernelPath as P;
        let yd: [&[f32]; A] = std::array::from_fn(|a| acts[a].scales());
        let ys: [&[i32]; A] = std::array::from_fn(|a| acts[a].qsums());
        match path {
            // SAFETY: `NeonDotprod` / `NeonI8mm` are active (or, in tests, passed) only on
            // CPUs with dotprod; NEON is the aarch64 baseline. Lengths as for x86 above.
            P::NeonDotprod | P::NeonI8mm => {
                return unsafe { a64::gemm_q4_0x8_q8_0_dotprod(x, y, yd, ys) }
            }
            P::Neon => return unsafe { a64::gemm_q4_0x8_q8_0_neon(x, y, yd, ys) },
            _ => {}
        }
    }
    let _ = path;
    std::array::from_fn(|a| q4_0x8::gemv_q4_0x8_q8_0(x, y[a]))
}

/// Whether `path` multiplies two tiles (16 rows) per kernel call ([`gemm_tile2`]): AVX-512
/// VNNI, on 512-bit registers.
fn gemm_two_tiles(path: crate::kernels::KernelPath) -> bool {
    cfg!(target_arch = "x86_64") && path == crate::kernels::KernelPath::Avx512Vnni
}

/// Two tiles × `A` activation rows on a path where [`gemm_two_tiles`] holds (else two
/// [`gemm_tile`] calls): `[x0's rows, x1's rows]` per activation row.
fn gemm_tile2<const A: usize>(
    path: crate::kernels::KernelPath,
    x0: &[q4_0x8::BlockQ4_0x8],
    x1: &[q4_0x8::BlockQ4_0x8],
    acts: &[QuantizedActs],
) -> [[[f32; q4_0x8::TILE_ROWS]; A]; 2] {
    #[cfg(target_arch = "x86_64")]
    if path == crate::kernels::KernelPath::Avx512Vnni {
        let y: [&[BlockQ8_0]; A] = std::array::from_fn(|a| blocks(acts[a].bytes()));
        let yd: [&[f32]; A] = std::array::from_fn(|a| acts[a].scales());
        let ys: [&[i32]; A] = std::array::from_fn(|a| acts[a].qsums());
        // SAFETY: as for `gemm_tile`'s VNNI call; both tiles come from one packed matrix, so
        // they have the same block count as the activation rows.
        return unsafe { crate::kernels::x86_vnni::gemm2_q4_0x8_q8_0(x0, x1, y, yd, ys) };
    }
    [
        gemm_tile::<A>(path, x0, acts),
        gemm_tile::<A>(path, x1, acts),
    ]
}

/// One activation row × the consecutive tiles `x` (`nb` blocks each) into `out` (8 values per
/// tile): on x86 one kernel call for the whole run (the tile kernel inlined in its loop),
/// elsewhere [`gemm_tile`] per tile.
fn gemv_tiles(
    path: crate::kernels::KernelPath,
    x: &[q4_0x8::BlockQ4_0x8],
    nb: usize,
    act: &QuantizedActs,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::kernels::KernelPath as P;
        let (y, yd, ys) = (blocks(act.bytes()), act.scales(), act.qsums());
        match path {
            // SAFETY: as for `gemm_tile`'s calls (the paths' features; `check_acts` made the
            // activation row `nb` blocks of Q8_0, with padded scales and sums).
            P::Avx512Vnni => {
                // The prefetch distances for the pool's running threads: the same bits
                // whatever the count.
                let streaming = crate::kernels::pool::running_threads();
                return unsafe {
                    crate::kernels::x86_vnni::gemv2_q4_0x8_q8_0_streaming(
                        streaming, x, nb, y, yd, ys, out,
                    )
                };
            }
            P::Avx2 => {
                return unsafe {
                    crate::kernels::x86::gemv_q4_0x8_q8_0_tiles(x, nb, y, yd, ys, out)
                }
            }
            _ => {}
        }
    }
    let (outs, _) = out.as_chunks_mut::<{ q4_0x8::TILE_ROWS }>();
    for (t, o) in x.chunks_exact(nb).zip(outs) {
        let [r] = gemm_tile::<1>(path, t, std::slice::from_ref(act));
        *o = r;
    }
}

/// The decode GEMV on `path` of `m`'s tiles `t..t + out.len() / 8` times `act`, `reps` times
/// over, on the calling thread: the benchmark's kernel probe (`bench::KernelProbe`). Over a few
/// hundred KB of tiles the weights stay in L2, so the rate is the kernel's own ceiling, not
/// memory's. The same kernel and calls as a decode step's matmul on that share.
///
/// # Errors
/// If `act` is not a Q8_0 row of `m.cols`, `out` is not whole tiles, or the tiles are not all
/// in `m`.
pub fn gemv_tiles_repeated(
    path: crate::kernels::KernelPath,
    m: &PackedMatrix,
    t: usize,
    act: &QuantizedActs,
    reps: usize,
    out: &mut [f32],
) -> Result<(), QuantError> {
    check_acts(GgmlType::Q4_0, act, m.cols)?;
    let (tiles, all) = (out.len() / q4_0x8::TILE_ROWS, m.rows / q4_0x8::TILE_ROWS);
    if !out.len().is_multiple_of(q4_0x8::TILE_ROWS) || tiles == 0 || t + tiles > all {
        return Err(QuantError::Len {
            what: "probe tiles (whole tiles inside the matrix)",
            expected: all.saturating_sub(t) * q4_0x8::TILE_ROWS,
            got: out.len(),
        });
    }
    for _ in 0..reps {
        gemv_range(path, m, t, act, out, false);
    }
    Ok(())
}

/// Decode: tiles `t..t + out.len() / 8` of `m` times the one activation row `act` (checked
/// against `m`) into `out` (added to it when `accumulate`), a kernel call per run of tiles
/// inside one share (a share's tiles are contiguous, not the next share's).
///
/// # Panics
/// If the tiles are not all in `m`.
fn gemv_range(
    path: crate::kernels::KernelPath,
    m: &PackedMatrix,
    mut t: usize,
    act: &QuantizedActs,
    out: &mut [f32],
    accumulate: bool,
) {
    let nb = m.cols / q4_0::QK4_0;
    let mut rest = out;
    while !rest.is_empty() {
        let tiles = m.tiles_from(t);
        let k = (tiles.len() / nb.max(1)).min(rest.len() / q4_0x8::TILE_ROWS);
        assert!(k > 0, "Q4_0x8 GEMV: tile {t} is past the matrix");
        let (o, r) = rest.split_at_mut(k * q4_0x8::TILE_ROWS);
        let tiles = &tiles[..k * nb];
        if accumulate {
            // Through a stack buffer, a few tiles at a time.
            const CHUNK: usize = 32;
            let mut buf = [0f32; CHUNK * q4_0x8::TILE_ROWS];
            for (c, o) in o.chunks_mut(CHUNK * q4_0x8::TILE_ROWS).enumerate() {
                let t0 = c * CHUNK;
                let k = o.len() / q4_0x8::TILE_ROWS;
                let b = &mut buf[..o.len()];
                gemv_tiles(path, &tiles[t0 * nb..(t0 + k) * nb], nb, act, b);
                o.iter_mut().zip(b.iter()).for_each(|(o, v)| *o += v);
            }
        } else {
            gemv_tiles(path, tiles, nb, act, o);
        }
        t += k;
        rest = r;
    }
}

/// [`matmul`] on a [`PackedMatrix`]: `out[b·rows + r] = W[r] · acts[b]`, the same bits.
/// Thread *i* computes the matrix's [`share`] *i* (which a [`PackArena`] keeps beside that
/// thread's other shares); each tile (a few KB) stays in L1 while the activation rows pass
/// it a few at a time (`gemm_acts`).
pub fn matmul_packed(
    p: &PackedMatrix,
    acts: &[QuantizedActs],
    out: &mut [f32],
) -> Result<(), QuantError> {
    matmul_packed_on(
        crate::kernels::active(),
        &mut [(p, out)],
        acts,
        Epilogue::Store,
    )
}

/// Most matrices [`matmul_packed_many`] takes at once.
pub const MAX_PACKED_JOBS: usize = 4;

/// Most activation rows an [`Epilogue::SwiGluQ8`] quantizes for (a batch's rows; the
/// epilogue keeps a pointer per row on the stack).
pub const MAX_EPILOGUE_ROWS: usize = 32;

/// [`matmul_packed`] of several matrices with the same input (`acts`), as one job for the
/// compute threads: `jobs[m].1[b·rows_m + r] = W_m[r] · acts[b]`. The same bits as one call
/// per matrix, one hand-out of work instead of several (a decode step's Q/K/V and gate/up
/// matrices are a few µs of work each, so the hand-outs and the waits at their ends count).
pub fn matmul_packed_many(
    jobs: &mut [(&PackedMatrix, &mut [f32])],
    acts: &[QuantizedActs],
) -> Result<(), QuantError> {
    matmul_packed_on(crate::kernels::active(), jobs, acts, Epilogue::Store)
}

/// What a packed matmul does with the rows a part of the job computed, on the thread that
/// computed them, before the job ends: the element-wise step after a matmul fused into it,
/// so it neither runs on one thread while the others wait nor needs a job of its own.
pub enum Epilogue<'a> {
    /// `out[b·rows + r] = W[r] · acts[b]`.
    Store,
    /// `out[b·rows + r] += W[r] · acts[b]` (a residual connection: the same bits as storing
    /// and adding afterwards).
    Accumulate,
    /// Two matrices with the same rows (a multiple of 32), gate then up, stored as for
    /// [`Store`](Self::Store); then, per part, `h = silu(gate) · up` on the part's rows
    /// ([`act::swiglu`](crate::kernels::act::swiglu), `h` laid out like the outputs) and
    /// those rows' Q8_0 blocks into `next[b]` ([`QuantizedActs::quantize_for`]'s bytes): the
    /// input of a Q4_0/Q8_0 matmul after this one, ready when it returns. The parts are
    /// whole 32-row blocks of both matrices. At most [`MAX_EPILOGUE_ROWS`] activation rows.
    SwiGluQ8 {
        h: &'a mut [f32],
        next: &'a mut [QuantizedActs],
    },
}

/// [`matmul_packed_many`] with an [`Epilogue`].
pub fn matmul_packed_then(
    jobs: &mut [(&PackedMatrix, &mut [f32])],
    acts: &[QuantizedActs],
    epilogue: Epilogue<'_>,
) -> Result<(), QuantError> {
    matmul_packed_on(crate::kernels::active(), jobs, acts, epilogue)
}

/// Where an [`Epilogue::SwiGluQ8`] part writes activation row `b`'s Q8_0 blocks (pointers
/// taken from `&mut` before the job; see the SAFETY notes at their uses).
#[derive(Clone, Copy)]
struct Q8Out {
    blocks: *mut BlockQ8_0,
    scales: *mut f32,
    qsums: *mut i32,
}
// SAFETY: only used to hand disjoint block ranges of `&mut QuantizedActs` buffers to the
// pool's threads for the duration of one `pool::run`.
unsafe impl Send for Q8Out {}
// SAFETY: as above.
unsafe impl Sync for Q8Out {}

/// What fills a part's own activation row in [`matmul_packed_each`]: the same bits on every
/// thread (say, a norm of a row every thread can read, then its quantization).
pub type FillActs<'a> = dyn Fn(&mut QuantizedActs) -> Result<(), QuantError> + Sync + 'a;

/// [`matmul_packed_then`] of one activation row that every part of the job makes for itself
/// with `fill`, into its own `acts[part]` (`acts` holds one per compute thread), before its
/// tiles. The job is handed out before the row exists, so the other threads start at once
/// instead of waiting for one thread to make it, and no thread then reads another's freshly
/// written activation blocks. The same bits as filling one row and running
/// [`matmul_packed_then`] on it, as long as `fill` gives the same bits everywhere.
pub fn matmul_packed_each(
    jobs: &mut [(&PackedMatrix, &mut [f32])],
    acts: &mut [QuantizedActs],
    fill: &FillActs<'_>,
    epilogue: Epilogue<'_>,
) -> Result<(), QuantError> {
    matmul_packed_in(
        crate::kernels::active(),
        jobs,
        Input::PerPart { acts, fill },
        epilogue,
    )
}

/// Where the parts of a packed matmul find their activation rows.
enum Input<'a, 'f> {
    /// Made before the job and shared by every part.
    Ready(&'a [QuantizedActs]),
    /// One row, made by each part into its own `acts[part]` ([`matmul_packed_each`]).
    PerPart {
        acts: &'a mut [QuantizedActs],
        fill: &'a FillActs<'f>,
    },
}

fn matmul_packed_on(
    path: crate::kernels::KernelPath,
    jobs: &mut [(&PackedMatrix, &mut [f32])],
    acts: &[QuantizedActs],
    epilogue: Epilogue<'_>,
) -> Result<(), QuantError> {
    matmul_packed_in(path, jobs, Input::Ready(acts), epilogue)
}

fn matmul_packed_in(
    path: crate::kernels::KernelPath,
    jobs: &mut [(&PackedMatrix, &mut [f32])],
    input: Input<'_, '_>,
    epilogue: Epilogue<'_>,
) -> Result<(), QuantError> {
    let threads = crate::kernels::pool::threads();
    // The activation rows every part runs on: the shared ones, or (per part) the first part's
    // as a stand-in for the checks below, which look only at how many there are.
    let (shared, per_part) = match input {
        Input::Ready(acts) => (acts, None),
        Input::PerPart { acts, fill } => {
            if acts.len() < threads.max(1) {
                return Err(QuantError::Len {
                    what: "per-part activation rows (one per thread)",
                    expected: threads.max(1),
                    got: acts.len(),
                });
            }
            (&[][..], Some((PartActs(acts.as_mut_ptr()), fill)))
        }
    };
    // Activation rows: one when each part makes its own.
    let n_acts = if per_part.is_some() { 1 } else { shared.len() };
    if jobs.len() > MAX_PACKED_JOBS {
        return Err(QuantError::Len {
            what: "packed matmul jobs",
            expected: MAX_PACKED_JOBS,
            got: jobs.len(),
        });
    }
    // Per matrix: the matrix, its rows, first global tile, output.
    let mut mats: [(Option<&PackedMatrix>, usize, usize, SendPtr); MAX_PACKED_JOBS] =
        [(None, 0, 0, SendPtr(std::ptr::null_mut())); MAX_PACKED_JOBS];
    let mut tiles = 0;
    let cols = jobs.first().map_or(0, |j| j.0.cols);
    for ((p, out), m) in jobs.iter_mut().zip(&mut mats) {
        for a in shared {
            check_acts(GgmlType::Q4_0, a, p.cols)?;
        }
        if p.cols != cols {
            return Err(QuantError::Len {
                what: "packed matmul columns",
                expected: cols,
                got: p.cols,
            });
        }
        if out.len() != p.rows * n_acts {
            return Err(QuantError::Len {
                what: "matmul output",
                expected: p.rows * n_acts,
                got: out.len(),
            });
        }
        *m = (Some(*p), p.rows, tiles, SendPtr(out.as_mut_ptr()));
        tiles += p.rows / q4_0x8::TILE_ROWS;
    }
    let mats = &mats[..jobs.len()];
    let accumulate = matches!(epilogue, Epilogue::Accumulate);
    // SwiGLU: h's rows and each activation row's Q8_0 output, checked and sized up front.
    let mut glu = None;
    if let Epilogue::SwiGluQ8 { h, next } = epilogue {
        let rows = jobs.first().map_or(0, |j| j.0.rows);
        if jobs.len() != 2 || jobs[1].0.rows != rows || !rows.is_multiple_of(q8::QK8_0) {
            return Err(QuantError::Len {
                what: "SwiGLU matmul: gate and up rows (equal, a multiple of 32)",
                expected: rows.next_multiple_of(q8::QK8_0),
                got: jobs.get(1).map_or(0, |j| j.0.rows),
            });
        }
        if cols == 0 {
            return Err(QuantError::Len {
                what: "SwiGLU matmul: columns (at least)",
                expected: q4_0::QK4_0,
                got: 0,
            });
        }
        if n_acts > MAX_EPILOGUE_ROWS {
            return Err(QuantError::Len {
                what: "SwiGLU matmul: activation rows (at most)",
                expected: MAX_EPILOGUE_ROWS,
                got: n_acts,
            });
        }
        if next.len() < n_acts {
            return Err(QuantError::Len {
                what: "SwiGLU matmul: rows for the quantized output",
                expected: n_acts,
                got: next.len(),
            });
        }
        if h.len() != rows * n_acts {
            return Err(QuantError::Len {
                what: "SwiGLU output",
                expected: rows * n_acts,
                got: h.len(),
            });
        }
        let null = Q8Out {
            blocks: std::ptr::null_mut(),
            scales: std::ptr::null_mut(),
            qsums: std::ptr::null_mut(),
        };
        let mut outs = [null; MAX_EPILOGUE_ROWS];
        for (o, a) in outs.iter_mut().zip(&mut next[..n_acts]) {
            a.prepare_q8_0(rows)?;
            let (y, d, s) = a.q8_0_mut();
            *o = Q8Out {
                blocks: y.as_mut_ptr(),
                scales: d.as_mut_ptr(),
                qsums: s.as_mut_ptr(),
            };
        }
        glu = Some((rows, SendPtr(h.as_mut_ptr()), outs));
    }
    let nb = cols / q4_0::QK4_0;
    if nb == 0 {
        // (No SwiGLU epilogue here: refused above.)
        if !accumulate {
            jobs.iter_mut().for_each(|(_, o)| o.fill(0.0));
        }
        return Ok(());
    }
    let per_call = gemm_acts(path);
    // (Decode, one activation row, stays on one tile per call: measured slower on two.)
    let two = gemm_two_tiles(path) && n_acts > 1;
    // Global tiles `g0..g1` (matrix after matrix), every activation row, into the owning
    // matrix's `out[b·n + 8t ..][..8]` (added to it when accumulating); two tiles of one
    // matrix per call where the path takes two. A kernel call never crosses a matrix's
    // share (its tiles are contiguous only within one: `PackArena`).
    let run = |g0: usize, g1: usize, acts: &[QuantizedActs]| {
        let mut g = g0;
        while g < g1 {
            // The last matrix starting at or before `g` (matrix 0 starts at 0).
            let (pm, n, first, out_ptr) = mats
                .iter()
                .rev()
                .find(|m| m.2 <= g)
                .copied()
                .unwrap_or(mats[0]);
            let t = g - first;
            // Tiles `t..` of this matrix up to its share's end (`mats` holds a matrix for
            // every job; the tile is below its rows / 8 by the lookup).
            let ptiles = pm.map_or(&[][..], |p| p.tiles_from(t));
            let avail = ptiles.len() / nb;
            // Decode: the run of this call's tiles inside this share at once.
            if let (Some(p), [act]) = (pm, acts) {
                let end = g1.min(first + n / q4_0x8::TILE_ROWS).min(g + avail);
                // SAFETY: as for `put` below: tiles `t..t + (end - g)` of this matrix are in
                // this call's range `g0..g1` (disjoint from every other call's), and
                // `8·(t + end - g) ≤ n = out.len()` for the one activation row.
                let o = unsafe {
                    std::slice::from_raw_parts_mut(
                        out_ptr.get().add(t * q4_0x8::TILE_ROWS),
                        (end - g) * q4_0x8::TILE_ROWS,
                    )
                };
                gemv_range(path, p, t, act, o, accumulate);
                g = end;
                continue;
            }
            let x = &ptiles[..nb];
            let put = |t: usize, b0: usize, vals: &[[f32; q4_0x8::TILE_ROWS]]| {
                for (a, v) in vals.iter().enumerate() {
                    // SAFETY: `t` is the matrix's tile of global tile `g` or (two-tile call)
                    // `g + 1`, both in this call's range `g0..g1` and in this matrix (checked
                    // before the two-tile call). `b·n + 8t + 8 ≤ b·n + n ≤ out.len()`
                    // (8t + 8 ≤ n, b = b0 + a < n_acts) for the matrix's own `out` (length
                    // checked above). Concurrent calls of `run` get disjoint global tile
                    // ranges, so no two live references overlap, and every `out` outlives them
                    // (`pool::run` returns only when every part is done).
                    let o = unsafe {
                        std::slice::from_raw_parts_mut(out_ptr.get().add((b0 + a) * n + t * 8), 8)
                    };
                    if accumulate {
                        o.iter_mut().zip(v).for_each(|(o, v)| *o += v);
                    } else {
                        o.copy_from_slice(v);
                    }
                }
            };
            if two && g + 1 < g1 && (t + 2) * 8 <= n && avail >= 2 {
                let x1 = &ptiles[nb..2 * nb];
                for (c, chunk) in acts.chunks(per_call).enumerate() {
                    let b0 = c * per_call;
                    macro_rules! pair {
                        ($a:literal) => {{
                            let [o0, o1] = gemm_tile2::<$a>(path, x, x1, chunk);
                            put(t, b0, &o0);
                            put(t + 1, b0, &o1);
                        }};
                    }
                    match chunk.len() {
                        4 => pair!(4),
                        3 => pair!(3),
                        2 => pair!(2),
                        _ => pair!(1),
                    }
                }
                g += 2;
                continue;
            }
            for (c, chunk) in acts.chunks(per_call).enumerate() {
                let b0 = c * per_call;
                match chunk.len() {
                    4 => put(t, b0, &gemm_tile::<4>(path, x, chunk)),
                    3 => put(t, b0, &gemm_tile::<3>(path, x, chunk)),
                    2 => put(t, b0, &gemm_tile::<2>(path, x, chunk)),
                    _ => put(t, b0, &gemm_tile::<1>(path, x, chunk)),
                }
            }
            g += 1;
        }
    };
    let one_part = threads <= 1 || tiles * q4_0x8::TILE_ROWS * n_acts < 2 * ROWS_PER_PART;
    // The first error a part's `fill` (or the check of what it made) met; the part then skips
    // its tiles and the call returns the error.
    let failed = std::sync::OnceLock::new();
    // Call `body` with part `i`'s activation rows: the shared ones, or those it makes now.
    let with_acts = |i: usize, body: &dyn Fn(&[QuantizedActs])| {
        let Some((base, fill)) = &per_part else {
            return body(shared);
        };
        // SAFETY: `i` is a part index of this call's one job (`0` alone, or `0..threads` of a
        // `pool::run`, which calls each exactly once), below `acts.len()` (checked: at least
        // `threads` rows), so this is the only reference to `acts[i]` while the job runs;
        // `acts` is borrowed `&mut` for the whole call.
        let a = unsafe { &mut *base.0.add(i) };
        match fill(a).and_then(|()| check_acts(GgmlType::Q4_0, a, cols)) {
            Ok(()) => body(std::slice::from_ref(a)),
            Err(e) => {
                let _ = failed.set(e);
            }
        }
    };
    if let Some((rows, h, outs)) = glu {
        // Parts of whole 32-row blocks, the same rows of gate (global tiles from 0) and up
        // (from `half`); then SwiGLU and quantization of those rows.
        const BLOCK_TILES: usize = q8::QK8_0 / q4_0x8::TILE_ROWS;
        let (half, blocks) = (tiles / 2, rows / q8::QK8_0);
        let (gate, up) = (mats[0].3, mats[1].3);
        let part = |k0: usize, k1: usize, acts: &[QuantizedActs]| {
            let (t0, t1) = (k0 * BLOCK_TILES, k1 * BLOCK_TILES);
            run(t0, t1, acts);
            run(half + t0, half + t1, acts);
            let (r0, r1) = (k0 * q8::QK8_0, k1 * q8::QK8_0);
            for (b, o) in outs.iter().enumerate().take(n_acts) {
                let at = b * rows + r0;
                // SAFETY: rows `r0..r1` of activation row `b` in gate's, up's and h's outputs
                // (each `rows · n_acts` long, checked above) and blocks `k0..k1` of row
                // `b`'s Q8_0 buffers (`prepare_q8_0(rows)`: `blocks` blocks, scales and sums
                // padded further), all taken from `&mut` before the job. Parts get disjoint
                // block ranges `k0..k1`, so these references are the only live ones to these
                // elements (gate's and up's rows were written by `run` just above, on this
                // thread); `pool::run` returns only when every part is done.
                let (g, u, hh, y, d, s) = unsafe {
                    (
                        std::slice::from_raw_parts(gate.get().add(at), r1 - r0),
                        std::slice::from_raw_parts(up.get().add(at), r1 - r0),
                        std::slice::from_raw_parts_mut(h.get().add(at), r1 - r0),
                        std::slice::from_raw_parts_mut(o.blocks.add(k0), k1 - k0),
                        std::slice::from_raw_parts_mut(o.scales.add(k0), k1 - k0),
                        std::slice::from_raw_parts_mut(o.qsums.add(k0), k1 - k0),
                    )
                };
                crate::kernels::act::swiglu(path, g, u, hh);
                quantize_q8_0_blocks(hh, y, d, s);
            }
        };
        if one_part {
            with_acts(0, &|acts| part(0, blocks, acts));
        } else {
            // Part `i` is thread `i`'s share of gate's and up's blocks (`share`: whole blocks).
            crate::kernels::pool::run(threads, &|i| {
                let r = share(blocks * BLOCK_TILES, i, threads);
                with_acts(i, &|acts| {
                    part(r.start / BLOCK_TILES, r.end / BLOCK_TILES, acts)
                })
            });
        }
    } else if one_part {
        with_acts(0, &|acts| run(0, tiles, acts));
    } else {
        // Part `i` is thread `i`'s share of every matrix (`share`), the tiles that thread
        // finds side by side in a `PackArena` laid out for as many threads.
        crate::kernels::pool::run(threads, &|i| {
            with_acts(i, &|acts| {
                for m in mats {
                    let r = share(m.1 / q4_0x8::TILE_ROWS, i, threads);
                    run(m.2 + r.start, m.2 + r.end, acts);
                }
            })
        });
    }
    match failed.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// What makes a part's activation row from a finished output in [`attn_out_ffn`]: `(x, acts)`
/// (a norm of `x` and its quantization, the same bits on every thread).
pub type FillFrom<'a> = dyn Fn(&[f32], &mut QuantizedActs) -> Result<(), QuantError> + Sync + 'a;

/// One token's attention output projection and SwiGLU FFN, on packed matrices: the
/// residual stream `x` (`d` values) gets `x += wo · att` ([`Epilogue::Accumulate`]), then
/// `x += down · (silu(gate · x̂) · up · x̂)` with `x̂` the activation row `fill` makes from the
/// new `x` (its norm, quantized). The same bits as [`matmul_packed_then`] of `wo`, then
/// [`matmul_packed_each`] of gate and up with [`Epilogue::SwiGluQ8`], then
/// [`matmul_packed_then`] of down.
///
/// One job of stages ([`pool::run_stages`](crate::kernels::pool::run_stages)) instead of a
/// job per matmul: part *i* of each stage is thread *i*'s share of its matrices (`wo`'s rows;
/// gate's and up's blocks, with their SwiGLU and down-input blocks; down's rows), and the
/// threads meet at a barrier between stages, each making its own `x̂` into `part_acts[i]`.
/// Optionally a stage before (a [`PreStage`] that writes `att`: the attention) and one after
/// ([`ThenStage`]: the next layer's Q/K/V and their KV cache rows, or the output matrix).
pub struct AttnOutFfn<'a> {
    pub wo: &'a PackedMatrix,
    /// `wo`'s input: the attention output, Q8_0 (written by the [`PreStage`] if there is one).
    pub att: &'a mut QuantizedActs,
    pub x: &'a mut [f32],
    pub fill: &'a FillFrom<'a>,
    /// One per compute thread.
    pub part_acts: &'a mut [QuantizedActs],
    pub gate: &'a PackedMatrix,
    pub up: &'a PackedMatrix,
    pub down: &'a PackedMatrix,
    /// gate's and up's outputs and `silu(gate) · up`, `n_ff` values each.
    pub gate_out: &'a mut [f32],
    pub up_out: &'a mut [f32],
    pub h: &'a mut [f32],
    /// down's input: `h` quantized (Q8_0), written block by block by the parts.
    pub next: &'a mut QuantizedActs,
    /// A stage after down (the next layer's Q/K/V, or the output matrix): `out_m = W_m · x̂'`
    /// for each matrix, with `x̂'` the row its `fill` makes from the final `x`, in the same
    /// `part_acts`.
    pub then: Option<ThenStage<'a>>,
}

/// [`AttnOutFfn::then`]: up to [`MAX_PACKED_JOBS`] matrices of `d` columns on one row made
/// from the final `x`, each into its own output (the same bits as [`matmul_packed_each`]).
pub struct ThenStage<'a> {
    pub mats: [Option<(&'a PackedMatrix, &'a mut [f32])>; MAX_PACKED_JOBS],
    pub fill: &'a FillFrom<'a>,
    /// Run by each part `i` as the stage starts, before its row and its matrices: the model
    /// asks for the next layer's cached keys and values there
    /// ([`kv::prefetch_rows_l2`](crate::kernels::kv::prefetch_rows_l2)), so they arrive while
    /// the stage streams its weights. Must not write what the stage reads or writes.
    pub warm: Option<&'a (dyn Fn(usize) + Sync)>,
    /// Two of the matrices' outputs (keys and values) also go, as f16, into a KV cache row,
    /// the keys turned by [`act::rope_adjacent`](crate::kernels::act::rope_adjacent) first:
    /// each part its own rows, as the model's serial RoPE and cache write would.
    pub kv: Option<KvRows<'a>>,
}

/// [`ThenStage::kv`].
pub struct KvRows<'a> {
    /// Indices into [`ThenStage::mats`].
    pub k: usize,
    pub v: usize,
    /// The cache rows (as long as the K and V outputs).
    pub k_row: &'a mut [half::f16],
    pub v_row: &'a mut [half::f16],
    pub head_dim: usize,
    /// The token's RoPE angles.
    pub cos: &'a [f32],
    pub sin: &'a [f32],
}

/// A stage before [`AttnOutFfn`]'s first matmul that writes its input `att`, `units` runs of
/// `unit_len` values each (whole Q8_0 blocks; the attention: one query head each). Slice `j`
/// of `items.len()` is the units `j·units/n..(j + 1)·units/n` (contiguous, as even as whole
/// units allow); it runs on part `j % threads` with item `j`, and `f` quantizes its values
/// into the slice's blocks. Why units, not one item per KV head: SmolLM2's 3 KV heads split
/// 2 : 1 over 2 threads, its 9 query heads 4 : 5.
pub struct PreStage<'a, T> {
    pub items: &'a mut [T],
    pub units: usize,
    pub unit_len: usize,
    pub f: &'a (dyn Fn(std::ops::Range<usize>, &mut T, &mut Q8Part<'_>) + Sync),
}

/// The [`PreStage`] slices that part `i` of `threads` runs, of `n` slices over `units`: each
/// slice `j ≡ i (mod threads)` with its units `j·units/n..(j + 1)·units/n`, empty ones left
/// out. The one place that says which thread does which slice: [`attn_out_ffn`] runs them,
/// and a caller that prepares for them (the model's K/V warm-up) asks here.
pub fn pre_slices(
    units: usize,
    n: usize,
    i: usize,
    threads: usize,
) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> {
    (i..n)
        .step_by(threads.max(1))
        .map(move |j| (j, j * units / n..(j + 1) * units / n))
        .filter(|(_, u)| !u.is_empty())
}

/// The most of a stage's weights a thread waiting at [`attn_out_ffn`]'s barrier before it
/// prefetches (a quarter of the EPYC's and the Cortex-A76's L2). Why: a thread that waits
/// leaves the memory idle, and decode is memory-bound. Streaming its next share into L2 while
/// it waits measured **+2.4–2.6 %** decode at 2 threads (16 alternating rounds, BENCHMARKS
/// "eleventh session"), and a cap of 8 KiB nothing (0.993): the waits are long enough to
/// matter only for the thread with less attention to do. With the pair GEMV
/// (`x86_vnni::gemv2_q4_0x8_q8_0_tiles`), turning it off gave 0.982 (12 rounds).
pub const STAGE_AHEAD_BYTES: usize = 256 << 10;

/// Run [`AttnOutFfn`], after `pre` if given.
pub fn attn_out_ffn<T: Send>(
    f: AttnOutFfn<'_>,
    pre: Option<PreStage<'_, T>>,
) -> Result<(), QuantError> {
    let path = crate::kernels::active();
    let threads = crate::kernels::pool::threads().max(1);
    let (d, dff) = (f.x.len(), f.gate_out.len());
    let len = |what: &'static str, expected: usize, got: usize| {
        if expected == got {
            Ok(())
        } else {
            Err(QuantError::Len {
                what,
                expected,
                got,
            })
        }
    };
    len("attention-output matrix rows", d, f.wo.rows)?;
    len("gate columns", d, f.gate.cols)?;
    len("up columns", d, f.up.cols)?;
    len("down rows", d, f.down.rows)?;
    len("up rows", dff, f.up.rows)?;
    len("gate rows", dff, f.gate.rows)?;
    len("down columns", dff, f.down.cols)?;
    len("up output", dff, f.up_out.len())?;
    len("SwiGLU output", dff, f.h.len())?;
    len(
        "per-part activation rows (at least)",
        threads,
        f.part_acts.len().min(threads),
    )?;
    len(
        "FFN rows (a multiple of 32)",
        dff.next_multiple_of(q8::QK8_0),
        dff,
    )?;
    len(
        "FFN input (whole blocks)",
        d.next_multiple_of(q4_0::QK4_0),
        d,
    )?;
    // The last stage's matrices: each with its output pointer, checked; its KV rows.
    let mut then: [Option<(&PackedMatrix, SendPtr)>; MAX_PACKED_JOBS] = [None; MAX_PACKED_JOBS];
    let then_fill = f.then.as_ref().map(|t| t.fill);
    let then_warm = f.then.as_ref().and_then(|t| t.warm);
    let mut kv = None;
    if let Some(t) = f.then {
        for (m, o) in t.mats.into_iter().zip(&mut then) {
            if let Some((p, out)) = m {
                len("next matrix columns", d, p.cols)?;
                len("next matrix output", p.rows, out.len())?;
                *o = Some((p, SendPtr(out.as_mut_ptr())));
            }
        }
        if let Some(r) = t.kv {
            let rows = |j: usize| then.get(j).copied().flatten().map_or(0, |m| m.0.rows);
            len("KV cache key row", rows(r.k), r.k_row.len())?;
            len("KV cache value row", rows(r.v), r.v_row.len())?;
            if r.k == r.v || rows(r.k) == 0 || rows(r.v) == 0 {
                return Err(QuantError::Len {
                    what: "KV cache rows: two distinct matrices of the stage",
                    expected: 2,
                    got: usize::from(rows(r.k) > 0) + usize::from(rows(r.v) > 0 && r.k != r.v),
                });
            }
            if r.head_dim == 0 || !r.head_dim.is_multiple_of(2) || r.sin.len() < r.cos.len() {
                return Err(QuantError::Len {
                    what: "RoPE head size (even) and angles",
                    expected: r.head_dim.next_multiple_of(2).max(2),
                    got: r.head_dim,
                });
            }
            kv = Some((
                r.k,
                r.v,
                F16Ptr(r.k_row.as_mut_ptr()),
                F16Ptr(r.v_row.as_mut_ptr()),
                r.head_dim,
                r.cos,
                r.sin,
            ));
        }
    }
    // The stage before: its items, and the blocks of `att` they write.
    let pre = match pre {
        Some(p) => {
            if p.unit_len == 0 || !p.unit_len.is_multiple_of(q8::QK8_0) {
                return Err(QuantError::Len {
                    what: "pre-stage unit values (whole Q8_0 blocks)",
                    expected: p.unit_len.next_multiple_of(q8::QK8_0).max(q8::QK8_0),
                    got: p.unit_len,
                });
            }
            len(
                "pre-stage values (all of wo's columns)",
                f.wo.cols,
                p.units * p.unit_len,
            )?;
            len("pre-stage items (at least one)", 1, p.items.len().min(1))?;
            f.att.prepare_q8_0(f.wo.cols)?;
            let (y, dd, ss) = f.att.q8_0_mut();
            let blocks = Q8Out {
                blocks: y.as_mut_ptr(),
                scales: dd.as_mut_ptr(),
                qsums: ss.as_mut_ptr(),
            };
            Some((
                ItemsPtr(p.items.as_mut_ptr()),
                p.items.len(),
                p.units,
                p.unit_len / q8::QK8_0,
                p.f,
                blocks,
            ))
        }
        None => {
            check_acts(GgmlType::Q4_0, f.att, f.wo.cols)?;
            None
        }
    };
    f.next.prepare_q8_0(dff)?;
    let (y, dd, ss) = f.next.q8_0_mut();
    let q8 = Q8Out {
        blocks: y.as_mut_ptr(),
        scales: dd.as_mut_ptr(),
        qsums: ss.as_mut_ptr(),
    };
    let (att, next) = (ActsPtr(f.att), ActsPtr(f.next));
    let (x, g, u, h) = (
        SendPtr(f.x.as_mut_ptr()),
        SendPtr(f.gate_out.as_mut_ptr()),
        SendPtr(f.up_out.as_mut_ptr()),
        SendPtr(f.h.as_mut_ptr()),
    );
    let parts = PartActs(f.part_acts.as_mut_ptr());
    let failed = std::sync::OnceLock::new();
    const BLOCK_TILES: usize = q8::QK8_0 / q4_0x8::TILE_ROWS;
    let rows = |m: &PackedMatrix, i: usize| share(m.rows / q4_0x8::TILE_ROWS, i, threads);
    #[derive(Clone, Copy)]
    enum Stage {
        Pre,
        Wo,
        GateUp,
        Down,
        Then,
    }
    let mut stages = [Stage::Wo; 5];
    let mut n = 0;
    for (s, on) in [
        (Stage::Pre, pre.is_some()),
        (Stage::Wo, true),
        (Stage::GateUp, true),
        (Stage::Down, true),
        (Stage::Then, then_fill.is_some()),
    ] {
        if on {
            stages[n] = s;
            n += 1;
        }
    }
    // What a thread waiting at the barrier before stage `k` asks the caches for: the first
    // bytes its part `i` reads, its share of the stage's first matrix (at most
    // `STAGE_AHEAD_BYTES`; the wait is over long before that in practice).
    let ahead = |k: usize, i: usize| -> &[u8] {
        let m = match stages[k] {
            Stage::Pre => return &[],
            Stage::Wo => f.wo,
            Stage::GateUp => f.gate,
            Stage::Down => f.down,
            Stage::Then => match then.iter().flatten().next() {
                Some((m, _)) => m,
                None => return &[],
            },
        };
        let b: &[u8] = bytemuck::cast_slice(m.tiles_from(rows(m, i).start));
        &b[..b.len().min(STAGE_AHEAD_BYTES)]
    };
    let part = |stage: usize, i: usize| {
        // (The wrappers whole, not their raw-pointer fields: they are what is `Sync`.)
        let (q8, parts, att, next, pre, kv) = (&q8, &parts, &att, &next, &pre, &kv);
        if failed.get().is_some() {
            return;
        }
        // `x += m · a` on this part's share of `m`'s rows (the `wo` and down stages).
        let accumulate_into_x = |m: &PackedMatrix, a: &QuantizedActs| {
            let r = rows(m, i);
            // SAFETY: rows `8·r` of `x` (`d = m.rows` long, checked): parts get disjoint
            // shares `r`, and no other stage's access to `x` overlaps this one (the barriers).
            let o =
                unsafe { std::slice::from_raw_parts_mut(x.get().add(8 * r.start), 8 * r.len()) };
            gemv_range(path, m, r.start, a, o, true);
        };
        // This part's own row made by `fill` from `x` (the gate/up and last stages), or
        // `None` after recording the error.
        let own_row = |fill: &FillFrom<'_>| {
            // SAFETY: `x` is written only in the `wo` and down stages; the barrier before
            // this stage ordered their writes before this read.
            let xs = unsafe { std::slice::from_raw_parts(x.get(), d) };
            // SAFETY: `i < threads ≤ part_acts.len()` (checked) and each part index runs
            // once per stage, and only the gate/up and last stages touch the element: the
            // only reference to it while it lives.
            let a = unsafe { &mut *parts.0.add(i) };
            match fill(xs, a).and_then(|()| check_acts(GgmlType::Q4_0, a, d)) {
                Ok(()) => Some(a),
                Err(e) => {
                    let _ = failed.set(e);
                    None
                }
            }
        };
        match stages[stage] {
            Stage::Pre => {
                let Some((items, n_items, units, per, pf, b)) = pre else {
                    return;
                };
                for (j, u) in pre_slices(*units, *n_items, i, threads) {
                    // SAFETY: item `j < items.len()` goes to part `j % threads` alone, once,
                    // and only in this stage: the only reference to it while it lives.
                    let item = unsafe { &mut *items.0.add(j) };
                    let (b0, nb) = (u.start * per, u.len() * per);
                    // SAFETY: blocks `b0..b0 + nb` of `att` (`units · per` blocks, prepared
                    // above from `&mut`), the slice's own: slices are disjoint, and the
                    // blocks are written only here and read after the barrier that ends this
                    // stage.
                    let mut q = unsafe {
                        Q8Part {
                            y: std::slice::from_raw_parts_mut(b.blocks.add(b0), nb),
                            d: std::slice::from_raw_parts_mut(b.scales.add(b0), nb),
                            s: std::slice::from_raw_parts_mut(b.qsums.add(b0), nb),
                        }
                    };
                    pf(u, item, &mut q);
                }
            }
            Stage::Wo => {
                // SAFETY: `att` is written only in the stage before (or before the job); the
                // barrier ordered those writes before this read, and no `&mut` to it lives.
                accumulate_into_x(f.wo, unsafe { &*att.0 });
            }
            Stage::GateUp => {
                let Some(a) = own_row(f.fill) else { return };
                let r = share(dff / q8::QK8_0 * BLOCK_TILES, i, threads);
                let (k0, k1) = (r.start / BLOCK_TILES, r.end / BLOCK_TILES);
                let (r0, r1) = (k0 * q8::QK8_0, k1 * q8::QK8_0);
                // SAFETY: rows `r0..r1` of gate's, up's and h's outputs (`dff` long, checked)
                // and blocks `k0..k1` of down's input (`prepare_q8_0(dff)`: `dff / 32`
                // blocks, scales and sums padded further), all taken from `&mut` before the
                // job: parts get disjoint block ranges, and nothing else touches them in this
                // stage (down reads the blocks in the next, after the barrier).
                let (go, uo, hh, yb, yd, ys) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(g.get().add(r0), r1 - r0),
                        std::slice::from_raw_parts_mut(u.get().add(r0), r1 - r0),
                        std::slice::from_raw_parts_mut(h.get().add(r0), r1 - r0),
                        std::slice::from_raw_parts_mut(q8.blocks.add(k0), k1 - k0),
                        std::slice::from_raw_parts_mut(q8.scales.add(k0), k1 - k0),
                        std::slice::from_raw_parts_mut(q8.qsums.add(k0), k1 - k0),
                    )
                };
                gemv_range(path, f.gate, r.start, a, go, false);
                gemv_range(path, f.up, r.start, a, uo, false);
                crate::kernels::act::swiglu(path, go, uo, hh);
                quantize_q8_0_blocks(hh, yb, yd, ys);
            }
            Stage::Down => {
                // SAFETY: down's input was written, block by block, in the stage before only
                // (through the pointers taken above); the barrier ordered those writes before
                // these reads, and no `&mut` to it lives now.
                accumulate_into_x(f.down, unsafe { &*next.0 });
            }
            Stage::Then => {
                if let Some(w) = then_warm {
                    w(i);
                }
                let Some(a) = then_fill.and_then(own_row) else {
                    return;
                };
                for (j, (m, o)) in then
                    .iter()
                    .enumerate()
                    .filter_map(|(j, m)| Some((j, (*m)?)))
                {
                    let r = rows(m, i);
                    // SAFETY: rows `8·r` of this matrix's own output (`m.rows` long, checked):
                    // disjoint shares, and nothing else touches the output in this job.
                    let o = unsafe {
                        std::slice::from_raw_parts_mut(o.get().add(8 * r.start), 8 * r.len())
                    };
                    gemv_range(path, m, r.start, a, o, false);
                    let Some((k, v, k_row, v_row, hd, cos, sin)) = *kv else {
                        continue;
                    };
                    if j == k {
                        crate::kernels::act::rope_adjacent(o, 8 * r.start, hd, cos, sin);
                    }
                    if j == k || j == v {
                        let row = if j == k { k_row } else { v_row };
                        // SAFETY: the same rows `8·r` of the cache row (as long as this
                        // matrix's output, checked), taken from `&mut` before the job:
                        // disjoint shares, and nothing else touches the row in this job.
                        let c = unsafe {
                            std::slice::from_raw_parts_mut(row.0.add(8 * r.start), 8 * r.len())
                        };
                        half::slice::HalfFloatSliceExt::convert_from_f32_slice(c, o);
                    }
                }
            }
        }
    };
    crate::kernels::pool::run_stages_ahead(n, &part, &ahead);
    match failed.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A `QuantizedActs` of [`attn_out_ffn`] read by the parts of a stage after the one that
/// writes its blocks.
struct ActsPtr(*const QuantizedActs);
// SAFETY: only dereferenced (shared) by the parts of one `run_stages` job, after the stage
// that writes its blocks (see the SAFETY notes at its uses); `QuantizedActs` is `Sync`.
unsafe impl Sync for ActsPtr {}

/// [`PreStage::items`]' base, handed out one item per part.
struct ItemsPtr<T>(*mut T);
// SAFETY: each item goes to one part of one stage (see the SAFETY note at its use), and
// `T: Send` lets it be used on that part's thread.
unsafe impl<T: Send> Sync for ItemsPtr<T> {}

/// A KV cache row of [`attn_out_ffn`], written by each part in its own rows.
#[derive(Clone, Copy)]
struct F16Ptr(*mut half::f16);
// SAFETY: only used to write disjoint row ranges of one `&mut [f16]` in one stage.
unsafe impl Send for F16Ptr {}
// SAFETY: as above.
unsafe impl Sync for F16Ptr {}

/// Embedding lookup: dequantize row `row` of the table `w` (whole rows of `n_cols` elements of
/// type `ty`) into `out` (`n_cols` elements).
pub fn get_row(
    ty: GgmlType,
    w: &[u8],
    n_cols: usize,
    row: usize,
    out: &mut [f32],
) -> Result<(), QuantError> {
    if out.len() != n_cols {
        return Err(QuantError::Len {
            what: "get_row output",
            expected: n_cols,
            got: out.len(),
        });
    }
    let rb = row_bytes(ty, n_cols)?;
    let n_rows = w.len().checked_div(rb).unwrap_or(0);
    if rb != 0 && !w.len().is_multiple_of(rb) {
        return Err(QuantError::NotWholeRows {
            ty,
            n_cols,
            row_bytes: rb,
            got: w.len(),
        });
    }
    if row >= n_rows {
        return Err(QuantError::RowOutOfRange { row, n_rows });
    }
    dequantize_row(ty, &w[row * rb..(row + 1) * rb], out)
}
