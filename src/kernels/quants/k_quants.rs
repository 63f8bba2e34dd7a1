//! K-quant weights (256-element super-blocks): Q4_K and Q6_K. Port of ggml's
//! `dequantize_row_q4_K`, `dequantize_row_q6_K`, `ggml_vec_dot_q4_K_q8_K_generic` and
//! `ggml_vec_dot_q6_K_q8_K_generic`, including the generic dots' eight f32 partial sums, so the
//! results are the same floats as ggml's generic code. We do not quantize to these types
//! (ggml's k-quant quantizers search for scales; models come quantized).

use bytemuck::{Pod, Zeroable};

use super::float::F16Le;
use super::q8::{BlockQ8K, QK_K};
use super::{GgmlBlock, WeightBlock};
use crate::kernels::GgmlType;

/// Bytes of Q4_K's packed 6-bit scales and mins.
pub const K_SCALE_SIZE: usize = 12;

/// Q4_K (ggml `block_q4_K`): 256 values in 8 sub-blocks of 32; sub-block `s` has a 6-bit scale
/// `sc[s]` and a 6-bit min `m[s]`, and `x = d·sc[s]·q − dmin·m[s]`, `q` in 0..=15. 144 bytes:
///
/// | bytes | field | content |
/// | --- | --- | --- |
/// | 0..2 | `d` | f16 super-block scale of the scales |
/// | 2..4 | `dmin` | f16 super-block scale of the mins |
/// | 4..16 | `scales` | 8 scales and 8 mins, 6 bits each (see [`get_scale_min_k4`]) |
/// | 16..144 | `qs` | 4-bit quants: 4 chunks of 32 bytes; chunk c byte l holds element `64c + l` (low nibble) and `64c + 32 + l` (high nibble) |
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct BlockQ4K {
    pub d: F16Le,
    pub dmin: F16Le,
    pub scales: [u8; K_SCALE_SIZE],
    pub qs: [u8; QK_K / 2],
}

/// Q6_K (ggml `block_q6_K`): 256 values in 16 sub-blocks of 16; `x = d·scales[s]·(q − 32)`,
/// `q` in 0..=63 split into 4 low bits (`ql`) and 2 high bits (`qh`). 210 bytes, `d` last:
///
/// | bytes | field | content |
/// | --- | --- | --- |
/// | 0..128 | `ql` | low 4 bits: two halves of 64 bytes; in half h, byte l (l < 32) holds element `128h + l` (low nibble) and `128h + 64 + l` (high nibble), byte 32 + l holds `128h + 32 + l` and `128h + 96 + l` |
/// | 128..192 | `qh` | high 2 bits: in half h, byte l (l < 32) holds, from bit 0 up, elements `128h + l`, `+32`, `+64`, `+96` |
/// | 192..208 | `scales` | i8 scale of each 16-element sub-block |
/// | 208..210 | `d` | f16 super-block scale |
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: F16Le,
}

/// ggml `get_scale_min_k4`: the 6-bit scale and min of Q4_K sub-block `j` (0..8). Bytes 0..4
/// hold scales 0..3 in their low 6 bits, bytes 4..8 mins 0..3 likewise; bytes 8..12 hold the
/// low 4 bits of scales 4..7 (low nibble) and mins 4..7 (high nibble), whose top 2 bits are the
/// top 2 bits of bytes 0..4 (scales) and 4..8 (mins).
#[inline]
pub fn get_scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// [`get_scale_min_k4`] for all eight sub-blocks at once: `(scales, mins)`, for the SIMD
/// kernels.
#[inline]
pub fn scales_mins_k4(q: &[u8; K_SCALE_SIZE]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..4 {
        sc[j] = q[j] & 63;
        m[j] = q[j + 4] & 63;
        sc[j + 4] = (q[j + 8] & 0x0f) | ((q[j] >> 6) << 4);
        m[j + 4] = (q[j + 8] >> 4) | ((q[j + 4] >> 6) << 4);
    }
    (sc, m)
}

/// ggml `dequantize_row_q4_K`: `x = (d·sc)·q − (dmin·m)`.
///
/// # Panics
/// If `dst.len() != 256 · src.len()`.
pub fn dequantize_row_q4k(src: &[BlockQ4K], dst: &mut [f32]) {
    assert_eq!(
        dst.len(),
        src.len() * QK_K,
        "Q4_K dequantize: lengths differ"
    );
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.get();
        let min = b.dmin.get();
        for (c, (q, y)) in
            b.qs.chunks_exact(32)
                .zip(y.chunks_exact_mut(64))
                .enumerate()
        {
            let (sc, m) = get_scale_min_k4(2 * c, &b.scales);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (sc, m) = get_scale_min_k4(2 * c + 1, &b.scales);
            let (d2, m2) = (d * sc as f32, min * m as f32);
            for l in 0..32 {
                y[l] = d1 * (q[l] & 0x0f) as f32 - m1;
                y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

/// The 256 6-bit quants of a Q6_K block, minus 32, in element order.
#[inline]
fn q6k_unpack(b: &BlockQ6K) -> [i8; QK_K] {
    let mut a = [0i8; QK_K];
    for h in 0..2 {
        let (ql, qh) = (&b.ql[64 * h..64 * h + 64], &b.qh[32 * h..32 * h + 32]);
        let a = &mut a[128 * h..128 * h + 128];
        for l in 0..32 {
            a[l] = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8 - 32;
            a[l + 32] = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            a[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            a[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    a
}

/// ggml `dequantize_row_q6_K`: `x = d · scale · (q − 32)`, evaluated left to right in f32.
///
/// # Panics
/// If `dst.len() != 256 · src.len()`.
pub fn dequantize_row_q6k(src: &[BlockQ6K], dst: &mut [f32]) {
    assert_eq!(
        dst.len(),
        src.len() * QK_K,
        "Q6_K dequantize: lengths differ"
    );
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.get();
        let q = q6k_unpack(b);
        for (i, (y, &q)) in y.iter_mut().zip(&q).enumerate() {
            *y = d * b.scales[i / 16] as f32 * q as f32;
        }
    }
}

/// ggml `ggml_vec_dot_q4_K_q8_K_generic`. Per block: i32 `Σ sc·Σ(q·qa)` kept in 8 lanes (element
/// `i` in lane `i % 8`) and the i32 `Σ m·bsum`; then `sums[lane] += (dw·da)·lane` and
/// `sumf −= (dmin·da)·Σ m·bsum` in f32; finally `sumf += sums[0] + … + sums[7]` in order.
///
/// # Panics
/// If the block counts differ.
pub fn vec_dot_q4k_q8k(row: &[BlockQ4K], acts: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), acts.len(), "Q4_K vec_dot: block counts differ");
    let mut sums = [0f32; 8];
    let mut sumf = 0f32;
    for (x, y) in row.iter().zip(acts) {
        let mut aux8 = [0i8; QK_K];
        for (c, q) in x.qs.chunks_exact(32).enumerate() {
            for l in 0..32 {
                aux8[64 * c + l] = (q[l] & 0x0f) as i8;
                aux8[64 * c + 32 + l] = (q[l] >> 4) as i8;
            }
        }
        let mut scales = [0i32; 8];
        let mut mins = [0i32; 8];
        for j in 0..8 {
            let (sc, m) = get_scale_min_k4(j, &x.scales);
            scales[j] = sc as i32;
            mins[j] = m as i32;
        }
        let mut sumi = 0i32;
        for (j, s) in y.bsums.iter().enumerate() {
            sumi += s.get() as i32 * mins[j / 2];
        }
        let mut aux32 = [0i32; 8];
        for (i, (&a, &q)) in aux8.iter().zip(&y.qs).enumerate() {
            aux32[i % 8] += scales[i / 32] * (q as i32 * a as i32);
        }
        let d = x.d.get() * y.d.get();
        for (s, &a) in sums.iter_mut().zip(&aux32) {
            *s += d * a as f32;
        }
        let dmin = x.dmin.get() * y.d.get();
        sumf -= dmin * sumi as f32;
    }
    for s in sums {
        sumf += s;
    }
    sumf
}

/// ggml `ggml_vec_dot_q6_K_q8_K_generic`: per block i32 `Σ scale·Σ((q − 32)·qa)` in 8 lanes
/// (element `i` in lane `i % 8`), `sums[lane] += (dw·da)·lane` in f32, then
/// `sums[0] + … + sums[7]` in order.
///
/// # Panics
/// If the block counts differ.
pub fn vec_dot_q6k_q8k(row: &[BlockQ6K], acts: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), acts.len(), "Q6_K vec_dot: block counts differ");
    let mut sums = [0f32; 8];
    for (x, y) in row.iter().zip(acts) {
        let aux8 = q6k_unpack(x);
        let mut aux32 = [0i32; 8];
        for (i, (&a, &q)) in aux8.iter().zip(&y.qs).enumerate() {
            aux32[i % 8] += x.scales[i / 16] as i32 * (q as i32 * a as i32);
        }
        let d = x.d.get() * y.d.get();
        for (s, &a) in sums.iter_mut().zip(&aux32) {
            *s += d * a as f32;
        }
    }
    let mut sumf = 0f32;
    for s in sums {
        sumf += s;
    }
    sumf
}

impl GgmlBlock for BlockQ4K {
    const TYPE: GgmlType = GgmlType::Q4K;
    const BLOCK_SIZE: usize = QK_K;
    fn dequantize(src: &[Self], dst: &mut [f32]) {
        dequantize_row_q4k(src, dst)
    }
}

impl WeightBlock for BlockQ4K {
    type VecDot = BlockQ8K;
    fn vec_dot(row: &[Self], acts: &[BlockQ8K]) -> f32 {
        vec_dot_q4k_q8k(row, acts)
    }
}

impl GgmlBlock for BlockQ6K {
    const TYPE: GgmlType = GgmlType::Q6K;
    const BLOCK_SIZE: usize = QK_K;
    fn dequantize(src: &[Self], dst: &mut [f32]) {
        dequantize_row_q6k(src, dst)
    }
}

impl WeightBlock for BlockQ6K {
    type VecDot = BlockQ8K;
    fn vec_dot(row: &[Self], acts: &[BlockQ8K]) -> f32 {
        vec_dot_q6k_q8k(row, acts)
    }
}
