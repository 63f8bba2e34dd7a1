//! Q4_0 weights **repacked eight rows at a time** (`Q4_0x8`), the layout of the x86 GEMM
//! kernels (`x86::gemm_q4_0x8_q8_0`, `x86_vnni::gemm_q4_0x8_q8_0`): one weight tile of eight
//! rows is dotted with one to four activation rows per call, with no horizontal reduction.
//!
//! In the GGUF layout a block's 32 quants fill one SIMD register, so each (weight row,
//! activation row) dot ends in a horizontal sum tree per block group (`block_halves_8`), and
//! each weight block is unpacked again for every activation row of a prefill batch. Here the
//! register is **transposed**: lane `r` of a 256-bit vector holds four quants of row `r`, so
//! one `vpdpbusd` (or `vpmaddubsw` + `vpmaddwd`) against four broadcast activation bytes adds
//! into eight rows' sums at once, and the unpacked weights are reused by every activation row
//! of the call. This is ggml's idea (`block_q4_0x8` in `ggml-cpu/repack.cpp`), with our own
//! order of bytes chosen so that the low/high nibble split needs only one `vpand` each.
//!
//! # Layout (144 bytes per block of eight rows, the same as eight Q4_0 blocks)
//!
//! | bytes | field | content |
//! | --- | --- | --- |
//! | 0..16 | `d` | the eight rows' f16 scales, row `r` at `d[r]` |
//! | 16..144 | `qs` | `qs[32·j + 4·r + t]` = row `r`'s Q4_0 `qs[4·j + t]`, for `j`, `t` in 0..4 |
//!
//! So the 32-byte chunk `j` of `qs` is one vector whose lane `r` holds row `r`'s Q4_0 bytes
//! `4j..4j+4`: their **low** nibbles are elements `4j..4j+4` and their **high** nibbles elements
//! `16+4j..16+4j+4` (the Q4_0 byte `k` holds elements `k` and `k + 16`). A matrix of `rows`
//! (a multiple of 8) × `cols` packs to `rows / 8` tiles of `cols / 32` blocks, tile after
//! tile: [`pack`].
//!
//! # Results
//!
//! Every function here gives, per weight row, the **same bits** as
//! [`vec_dot_q4_0_q8_0`](super::q4_0::vec_dot_q4_0_q8_0) on the unpacked row: the block's exact
//! integer `Σ (q − 8)·y`, then `sumi · dx · dy` left to right in f32, added into lane `i % 8`,
//! the lanes reduced by [`lane_total`]. The kernels keep the eight lane accumulators per
//! activation row as eight vectors (one per `i % 8`, lane `r` = row `r`), which makes the order
//! exact without any padding: a tail of fewer than eight blocks simply adds fewer terms.

use bytemuck::{Pod, Zeroable};

use super::float::F16Le;
use super::q4_0::{BlockQ4_0, QK4_0};
use super::q8::BlockQ8_0;
use super::{lane_total, LANES};

/// Weight rows per tile.
pub const TILE_ROWS: usize = 8;

/// One block (32 columns) of eight Q4_0 rows, transposed (see the module doc). 144 bytes,
/// alignment 1.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct BlockQ4_0x8 {
    pub d: [F16Le; TILE_ROWS],
    pub qs: [u8; 4 * QK4_0],
}

/// Repack `rows` Q4_0 rows of `nb` blocks each (`src`: `rows · nb` blocks, row after row) into
/// `rows / 8` tiles of `nb` blocks (`dst`, tile after tile).
///
/// # Panics
/// If `rows` is not a multiple of 8 or a length does not match.
pub fn pack(src: &[BlockQ4_0], rows: usize, nb: usize, dst: &mut [BlockQ4_0x8]) {
    assert!(rows.is_multiple_of(TILE_ROWS), "Q4_0x8 pack: {rows} rows");
    assert_eq!(src.len(), rows * nb, "Q4_0x8 pack: source blocks");
    assert_eq!(
        dst.len(),
        rows / TILE_ROWS * nb,
        "Q4_0x8 pack: packed blocks"
    );
    for (t, tile) in dst.chunks_exact_mut(nb.max(1)).enumerate().take(rows / 8) {
        for (b, out) in tile.iter_mut().enumerate() {
            for r in 0..TILE_ROWS {
                let x = &src[(t * TILE_ROWS + r) * nb + b];
                out.d[r] = x.d;
                for j in 0..4 {
                    out.qs[32 * j + 4 * r..32 * j + 4 * r + 4]
                        .copy_from_slice(&x.qs[4 * j..4 * j + 4]);
                }
            }
        }
    }
}

/// Row `r` (0..8) of a packed block, back in the GGUF layout.
pub fn unpack_row(x: &BlockQ4_0x8, r: usize) -> BlockQ4_0 {
    let mut b = BlockQ4_0 {
        d: x.d[r],
        qs: [0; QK4_0 / 2],
    };
    for j in 0..4 {
        b.qs[4 * j..4 * j + 4].copy_from_slice(&x.qs[32 * j + 4 * r..32 * j + 4 * r + 4]);
    }
    b
}

/// The scalar reference: one tile (`x`, eight rows of `x.len()` blocks) dotted with one
/// activation row `y`, read straight from the packed bytes; `out[r]` is row `r`'s dot.
///
/// # Panics
/// If `x.len() != y.len()`.
pub fn gemv_q4_0x8_q8_0(x: &[BlockQ4_0x8], y: &[BlockQ8_0]) -> [f32; TILE_ROWS] {
    assert_eq!(x.len(), y.len(), "Q4_0x8 dot: block counts differ");
    let mut out = [0f32; TILE_ROWS];
    for (r, o) in out.iter_mut().enumerate() {
        let mut lanes = [0f32; LANES];
        for (i, (xb, yb)) in x.iter().zip(y).enumerate() {
            let mut sumi = 0i32;
            for j in 0..4 {
                for t in 0..4 {
                    let q = xb.qs[32 * j + 4 * r + t];
                    sumi += ((q & 0x0f) as i32 - 8) * yb.qs[4 * j + t] as i32;
                    sumi += ((q >> 4) as i32 - 8) * yb.qs[16 + 4 * j + t] as i32;
                }
            }
            lanes[i % LANES] += sumi as f32 * xb.d[r].get() * yb.d.get();
        }
        *o = lane_total(&lanes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::q4_0::vec_dot_q4_0_q8_0;
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn byte(&mut self) -> u8 {
            self.next() as u8
        }
        fn scale(&mut self) -> F16Le {
            match self.next() % 6 {
                0 => F16Le::new(65504.0),
                1 => F16Le::new(0.0),
                2 => F16Le::new(6e-8),
                _ => F16Le::new((self.next() % 2000) as f32 / 1000.0 - 1.0),
            }
        }
    }

    /// Packing is a permutation of bytes: every row comes back whole, and the packed scalar
    /// dot gives the GGUF-layout reference's bits for every row, at block counts 1..=19 (every
    /// tail length) and extreme scales.
    #[test]
    fn packed_reference_equals_the_row_reference_bit_for_bit() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for nb in (1..=19).chain([48]) {
            for rows in [8, 16, 24] {
                let src: Vec<BlockQ4_0> = (0..rows * nb)
                    .map(|_| BlockQ4_0 {
                        d: rng.scale(),
                        qs: std::array::from_fn(|_| rng.byte()),
                    })
                    .collect();
                let mut packed = vec![BlockQ4_0x8::zeroed(); rows / 8 * nb];
                pack(&src, rows, nb, &mut packed);
                let y: Vec<BlockQ8_0> = (0..nb)
                    .map(|_| BlockQ8_0 {
                        d: rng.scale(),
                        qs: std::array::from_fn(|_| rng.byte() as i8),
                    })
                    .collect();
                for (t, tile) in packed.chunks_exact(nb).enumerate() {
                    let got = gemv_q4_0x8_q8_0(tile, &y);
                    for (r, g) in got.iter().enumerate() {
                        let row = &src[(t * 8 + r) * nb..(t * 8 + r + 1) * nb];
                        let back: Vec<BlockQ4_0> = tile.iter().map(|b| unpack_row(b, r)).collect();
                        assert_eq!(back, row, "nb {nb} rows {rows}: tile {t} row {r} unpacks");
                        let want = vec_dot_q4_0_q8_0(row, &y);
                        assert!(
                            g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                            "nb {nb}: tile {t} row {r}: {g:e} vs {want:e}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "rows")]
    fn pack_refuses_a_partial_tile() {
        let src = vec![BlockQ4_0::zeroed(); 7];
        let mut dst = vec![BlockQ4_0x8::zeroed(); 1];
        pack(&src, 7, 1, &mut dst);
    }
}
