//! AVX-512 VNNI kernels for x86_64 ([`KernelPath::Avx512Vnni`](super::KernelPath::Avx512Vnni)):
//! the Q4_0 × Q8_0, Q4_1 × Q8_1 and Q8_0 × Q8_0 dot products (the base SmolLM2's Q4_1 layer
//! matrices and Q8_0 output matrix) and the Q4_0x8 GEMM on repacked weights
//! ([`gemm2_q4_0x8_q8_0`]: two tiles per 512-bit register, the tuned CoT model's prefill;
//! [`gemv2_q4_0x8_q8_0_tiles`]: the same body over a run of tile pairs, its decode, with one
//! linear prefetch stream; [`gemm_q4_0x8_q8_0`]: one tile, for an odd one left over) with
//! `vpdpbusd`. The path's other kernels (Q4_K, Q6_K, the Q8 activation quantizers) are
//! [`super::x86`]'s AVX2 ones.
//!
//! Every function here is **bit-identical** to its scalar reference in [`super::quants`], as
//! the AVX2 kernels are: each block's integer dot is exact, and the float part is the AVX2
//! kernels' own code — the `striped!` skeleton of [`super::x86`] with the same f32 expression
//! per block and the block-striped lane order of [`lane_total`] — so only the integer step
//! differs from AVX2.
//!
//! # The instruction
//!
//! `vpdpbusd acc, u, s` (`_mm256_dpbusd_epi32`, AVX512-VNNI + AVX512-VL on ymm): for each of
//! the eight i32 lanes `i`, `acc[i] += Σ_{j<4} u[4i+j] · s[4i+j]` with the bytes of `u`
//! **unsigned** (0..=255) and those of `s` signed (-128..=127). Each product is exact
//! (|u·s| ≤ 255·128 = 32640), and the four products and `acc` are added in i32, wrapping —
//! never saturating (that is `vpdpbusds`, which is not used). Every sum below is far inside
//! i32, so nothing wraps either: the lanes hold the exact integers.
//!
//! # Per block (32 elements)
//!
//! **Q4_1 × Q8_1** (and the integer part of Q4_0; `qs` byte `j` holds element `j` in its low
//! nibble and element `j + 16` in its high nibble, `y.qs` the 32 activations in order):
//!
//! | instruction | result |
//! | --- | --- |
//! | `vbroadcasti128` of `x.qs` | `[qs │ qs]` (the 16 bytes in both 128-bit halves) |
//! | `vpand` with `[0x0f ×16 │ 0xf0 ×16]` | `[q0 … q15 │ 16·q16 … 16·q31]`, u8 ≤ 240 |
//! | `vpdpbusd` into zero, with `y.qs` | lanes 0..4: `Σ q_e·y_e`, e < 16; lanes 4..8: `16·Σ q_e·y_e`, e ≥ 16 |
//!
//! Per eight blocks the `hadd` tree of `block_halves_8` sums each block's low four lanes
//! (`lo`) and high four lanes (`hi`, a multiple of 16); `lo + (hi >> 4)` (arithmetic shift:
//! an exact division of a multiple of 16, negative ones included) is `Σ q·y`, |·| ≤ 32·15·128.
//! AVX2 needs a `srlv` to bring the high nibbles down and `maddubs` + `madd` to multiply and
//! widen; here the high nibble stays in place, which `maddubs` cannot afford (its i16 pair sum
//! 2·240·128 would saturate) but `vpdpbusd`, summing in i32, can — one `vpand` and one
//! `vpdpbusd` per block (plus a zeroing `vpxor`, which the renamer handles) instead of four ALU
//! instructions, and one `vpsrad` per eight blocks. (For Q4_0's 18-byte blocks LLVM loads the
//! 16 bytes with `vmovdqu` + `vinserti128` instead of the `vbroadcasti128`: one shuffle more.)
//!
//! **Q4_0 × Q8_0**: the value is `q − 8`, so `Σ (q − 8)·y = Σ q·y − 8·Σ y`: the Q4_1 integer
//! step, then per eight blocks `vpslld` 3 and `vpsubd` of the activation blocks' exact sums
//! `Σ y` ([`QuantizedActs::qsums`], computed once per activation row, not per weight row).
//!
//! **Q8_0 × Q8_0** (both signed): `vpxor` with `0x80` turns each weight byte `x` into the u8
//! `x + 128` (0..=255); `vpdpbusd` into zero with `y.qs` gives `Σ (x + 128)·y` in eight lanes;
//! per eight blocks the `block_halves_8` total minus `128·Σ y` (`vpslld` 7, `vpsubd`) is
//! `Σ x·y` — exact for every i8, -128 included (unlike ggml's `sign_epi8` trick), with
//! |Σ (x + 128)·y| ≤ 32·255·128 < 2^21. Two ALU instructions per block, against seven for
//! AVX2's four `vpmovsxbw`, two `vpmaddwd` and an add.
//!
//! # Why 256-bit (ymm, AVX512-VL) and not two blocks per zmm
//!
//! A choice by reasoning, not measurement: (1) it keeps the AVX2 kernels' eight-lane
//! `striped!` skeleton, sum tree and f32 code, so bit-identity with the reference needs no new
//! float code; (2) the blocks are 18, 20, 34 and 36 bytes, so filling a zmm with two of them
//! costs a cross-lane insert per pair, eating much of the gain; (3) 512-bit instructions lower
//! the clock on Skylake-SP to Ice Lake Xeons (licence levels) and turn off port 1's vector
//! ALU, which a shared-core daemon should not impose; (4) decode matvecs are largely
//! memory-bound, and the win here is fewer instructions per block, which ymm already gives.
//!
//! # Safety
//!
//! `target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")` is on every
//! function: the path's contract ([`KernelPath::supported`](super::KernelPath::supported)),
//! a superset of the AVX2 helpers' it calls. Each `unsafe` block inside has the same
//! invariant: the function was entered only on a CPU with those features (the caller's
//! contract), and every pointer handed to a load intrinsic points into a block struct, array
//! or length-checked slice chunk that is in bounds for the whole width of the access (all
//! loads are the unaligned `loadu`/broadcast forms: the block structs have alignment 1).
//!
//! [`QuantizedActs::qsums`]: super::quants::QuantizedActs::qsums

use core::arch::x86_64::*;

use super::quants::q4_0x8::{BlockQ4_0x8, TILE_ROWS};
use super::quants::{lane_total, BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1};
use super::x86::{
    bcast4, block_halves_8, chunk, f16_pairs, gemm_q4_0x8, gemv_q4_0x8_tiles, head_words, lanes,
    striped, GEMV_PREFETCH,
};

/// `Σ` over one block of nibble quants `q` (0..=15) times the activations `y`, as eight i32
/// lanes: lanes 0..4 the low nibbles' products, lanes 4..8 sixteen times the high nibbles'
/// (see the module doc).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn nibble_block(x: &[u8; 16], y: &[i8; 32]) -> __m256i {
    // SAFETY: the features by contract; the loads read exactly the 16 bytes of `x` and the
    // 32 bytes of `y`.
    let (q, a) = unsafe {
        (
            _mm256_broadcastsi128_si256(_mm_loadu_si128(x.as_ptr().cast())),
            _mm256_loadu_si256(y.as_ptr().cast()),
        )
    };
    let mask = _mm256_set_m128i(_mm_set1_epi8(0xf0u8 as i8), _mm_set1_epi8(0x0f));
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_and_si256(q, mask), a)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4_0_block(x: &BlockQ4_0, y: &BlockQ8_0) -> __m256i {
    // SAFETY: the features by contract.
    unsafe { nibble_block(&x.qs, &y.qs) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4_1_block(x: &BlockQ4_1, y: &BlockQ8_1) -> __m256i {
    // SAFETY: the features by contract.
    unsafe { nibble_block(&x.qs, &y.qs) }
}

/// `Σ (x + 128)·y` of two Q8_0 blocks as eight i32 partial sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q8_0_block(x: &BlockQ8_0, y: &BlockQ8_0) -> __m256i {
    // SAFETY: the features by contract; the loads read exactly the two 32-byte `qs`.
    let (xq, a) = unsafe {
        (
            _mm256_loadu_si256(x.qs.as_ptr().cast()),
            _mm256_loadu_si256(y.qs.as_ptr().cast()),
        )
    };
    // Flipping the sign bit maps the i8 x to the u8 x + 128.
    let u = _mm256_xor_si256(xq, _mm256_set1_epi8(-128));
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, a)
}

/// The eight exact totals `lo + hi / 16` of eight [`nibble_block`] vectors.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn nibble_totals(v: &[__m256i; 8]) -> __m256i {
    // SAFETY: the features by contract (no memory access).
    let (lo, hi) = unsafe { block_halves_8(v) };
    _mm256_add_epi32(lo, _mm256_srai_epi32::<4>(hi))
}

/// The eight exact totals of eight [`q8_0_block`] vectors.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q8_totals(v: &[__m256i; 8]) -> __m256i {
    // SAFETY: the features by contract (no memory access).
    let (lo, hi) = unsafe { block_halves_8(v) };
    _mm256_add_epi32(lo, hi)
}

/// Eight activation block sums `Σ y` (group `g` of `ysum`, bounds-checked) shifted left by `S`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn ysums_shl<const S: i32>(ysum: &[[i32; 8]], g: usize) -> __m256i {
    // SAFETY: the features by contract; `ysum[g]` (indexing panics if absent) is 32 bytes.
    let s = unsafe { _mm256_loadu_si256(ysum[g].as_ptr().cast()) };
    _mm256_slli_epi32::<S>(s)
}

/// [`head_words`] of the tail group (fewer than eight blocks), for `striped!`: out of line and
/// without target features on purpose. Inlined into an AVX-512 function, [`head_words`]'s
/// short variable-length loop becomes a masked `vpgatherdd` (with a zmm compare for the mask),
/// which microcode mitigating Downfall (GDS) makes slow; compiled for the baseline target it is
/// the AVX2 path's scalar copy loop, plus a call once per row.
#[inline(never)]
fn tail_words<B>(b: &[B]) -> [u32; 8] {
    head_words(b)
}

/// `ysum` in groups of eight, checked to cover `n` blocks.
fn ysum_groups(ysum: &[i32], n: usize) -> &[[i32; 8]] {
    let (g, _) = ysum.as_chunks::<8>();
    assert!(g.len() >= n.div_ceil(8), "activation sums missing");
    g
}

/// Q4_0 × Q8_0, bit-identical to [`super::quants::q4_0::vec_dot_q4_0_q8_0`] (and to
/// [`super::x86::vec_dot_q4_0_q8_0`]). `yd`: the activation blocks' scales in f32, `ysum`
/// their exact `Σ qs`, both zero-padded to a multiple of 8 ([`QuantizedActs::scales`],
/// [`QuantizedActs::qsums`]).
///
/// [`QuantizedActs::scales`]: super::quants::QuantizedActs::scales
/// [`QuantizedActs::qsums`]: super::quants::QuantizedActs::qsums
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX512F, AVX512BW, AVX512VL and AVX512-VNNI.
///
/// # Panics
/// If `x.len() != y.len()` or `yd`/`ysum` are shorter than `y` rounded up to 8.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0], yd: &[f32], ysum: &[i32]) -> f32 {
    assert_eq!(x.len(), y.len(), "Q4_0 vec_dot: block counts differ");
    let ysum = ysum_groups(ysum, x.len());
    // SAFETY: the features by contract; the loads are within the blocks and the
    // (length-checked) scale slices.
    unsafe {
        striped!(
            x,
            y,
            yd,
            yd,
            q4_0_block,
            |v, g| _mm256_sub_epi32(nibble_totals(&v), ysums_shl::<3>(ysum, g)),
            |s, dx, _e, dy, _f| _mm256_mul_ps(_mm256_mul_ps(s, dx), dy)
        )
    }
}

/// Q4_1 × Q8_1, bit-identical to [`super::quants::q4_1::vec_dot_q4_1_q8_1`] (and to
/// [`super::x86::vec_dot_q4_1_q8_1`]). `yd`, `ys`: the activation blocks' `d` and `s` in f32,
/// zero-padded to a multiple of 8 ([`QuantizedActs::scales`] / [`QuantizedActs::sums`]).
///
/// [`QuantizedActs::scales`]: super::quants::QuantizedActs::scales
/// [`QuantizedActs::sums`]: super::quants::QuantizedActs::sums
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX512F, AVX512BW, AVX512VL and AVX512-VNNI.
///
/// # Panics
/// If `x.len() != y.len()` or `yd`/`ys` are shorter than `y` rounded up to 8.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1], yd: &[f32], ys: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len(), "Q4_1 vec_dot: block counts differ");
    // SAFETY: as in `vec_dot_q4_0_q8_0`.
    unsafe {
        striped!(
            x,
            y,
            yd,
            ys,
            q4_1_block,
            |v, _g| nibble_totals(&v),
            |s, dx, mx, dy, sy| _mm256_add_ps(
                _mm256_mul_ps(_mm256_mul_ps(dx, dy), s),
                _mm256_mul_ps(mx, sy),
            )
        )
    }
}

/// Q8_0 × Q8_0, bit-identical to [`super::quants::q8::vec_dot_q8_0_q8_0`] (and to
/// [`super::x86::vec_dot_q8_0_q8_0`]); `yd`, `ysum` as for [`vec_dot_q4_0_q8_0`].
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX512F, AVX512BW, AVX512VL and AVX512-VNNI.
///
/// # Panics
/// If `x.len() != y.len()` or `yd`/`ysum` are shorter than `y` rounded up to 8.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn vec_dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0], yd: &[f32], ysum: &[i32]) -> f32 {
    assert_eq!(x.len(), y.len(), "Q8_0 vec_dot: block counts differ");
    let ysum = ysum_groups(ysum, x.len());
    // SAFETY: as in `vec_dot_q4_0_q8_0`.
    unsafe {
        striped!(
            x,
            y,
            yd,
            yd,
            q8_0_block,
            |v, g| _mm256_sub_epi32(q8_totals(&v), ysums_shl::<7>(ysum, g)),
            |s, dx, _e, dy, _f| _mm256_mul_ps(s, _mm256_mul_ps(dx, dy))
        )
    }
}

/// Eight Q4_0 rows ([`BlockQ4_0x8`] tile) × `A` Q8_0 activation rows with `vpdpbusd`: per
/// chunk `j` the low nibbles (`vpand` 0x0f) and the high ones left in place (`vpand` 0xf0, so
/// 16·q); per activation row four `vpdpbusd` chains of the low chunks and four of the high
/// ones against their broadcast activation bytes, then `lo + (hi >> 4)` (an exact division of
/// a multiple of 16, as in `nibble_totals`). Two ALU instructions per chunk shared by every
/// activation row, then one `vpdpbusd` per chunk and row: no shuffles, no horizontal sums. See
/// `x86`'s `gemm_q4_0x8!` skeleton for the rest and the result (the scalar reference's bits).
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX512F, AVX512BW, AVX512VL and AVX512-VNNI.
///
/// # Panics
/// If an activation row's block count differs from the tile's, or `yd`/`ysum` are shorter.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn gemm_q4_0x8_q8_0<const A: usize>(
    x: &[BlockQ4_0x8],
    y: [&[BlockQ8_0]; A],
    yd: [&[f32]; A],
    ysum: [&[i32]; A],
) -> [[f32; TILE_ROWS]; A] {
    // SAFETY: the features by this function's contract, which is `tile`'s.
    unsafe { tile(x, y, yd, ysum) }
}

/// [`gemm_q4_0x8_q8_0`]'s body, inlined into its callers (the kernel above and the run of
/// tiles below), which enable the target features.
///
/// # Safety
/// As [`gemm_q4_0x8_q8_0`]: the CPU must have its features (every caller enables them).
#[inline(always)]
unsafe fn tile<const A: usize>(
    x: &[BlockQ4_0x8],
    y: [&[BlockQ8_0]; A],
    yd: [&[f32]; A],
    ysum: [&[i32]; A],
) -> [[f32; TILE_ROWS]; A] {
    // SAFETY: the features by contract; every load is inside a block struct (`chunk`,
    // `xb.d`: 16 bytes) and `bcast4` reads through a bounds-checked slice.
    unsafe {
        gemm_q4_0x8!(
            x,
            y,
            yd,
            ysum,
            A,
            |qs| {
                let c: [__m256i; 4] = core::array::from_fn(|j| chunk(qs, j));
                core::array::from_fn(|k| {
                    let m = if k < 4 { 0x0f } else { 0xf0u8 as i8 };
                    _mm256_and_si256(c[k % 4], _mm256_set1_epi8(m))
                })
            },
            |w, yq| {
                let mut lo = _mm256_setzero_si256();
                let mut hi = _mm256_setzero_si256();
                for j in 0..4 {
                    lo = _mm256_dpbusd_epi32(lo, w[j], bcast4(yq, j));
                    hi = _mm256_dpbusd_epi32(hi, w[4 + j], bcast4(yq, 4 + j));
                }
                _mm256_add_epi32(lo, _mm256_srai_epi32::<4>(hi))
            }
        )
    }
}

/// [`gemm_q4_0x8_q8_0`] with one activation row over consecutive tiles of `nb` blocks each
/// (decode): `out[8t..8t + 8]` gets tile `t`'s rows. One call per run of tiles instead of one
/// per tile, the tile kernel inlined (measured: decode +4 % on one thread; inlining the
/// kernel itself everywhere instead slowed prefill by a quarter): the same bits.
///
/// # Safety
/// As [`gemm_q4_0x8_q8_0`].
///
/// # Panics
/// If `nb` is 0, `x` is not `out.len() / 8` tiles of `nb` blocks, `out.len()` is not a
/// multiple of 8, or the activation row's block count differs from `nb`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn gemv_q4_0x8_q8_0_tiles(
    x: &[BlockQ4_0x8],
    nb: usize,
    y: &[BlockQ8_0],
    yd: &[f32],
    ysum: &[i32],
    out: &mut [f32],
) {
    // SAFETY: the features by this function's contract, which `tile` needs.
    unsafe { gemv_q4_0x8_tiles!(tile, x, nb, y, yd, ysum, out) }
}

/// How far ahead of a tile pair's start the decode run of pairs
/// ([`gemv2_q4_0x8_q8_0_tiles`]) prefetches, in bytes, when its thread streams alone (one
/// compute thread): one linear stream, 288 bytes (a block of both tiles) per step, on past the
/// run's end into the thread's next share. Measured with `expllm bench --stage llm --kernels
/// avx512-vnni --threads N` on the 2-vCPU EPYC (5–8 alternating rounds, decode against the
/// one-tile kernel): 1 thread 8 KiB 1.060, **12 KiB 1.094**, 16 KiB 1.055, 24 KiB 1.039; 2
/// threads 8 KiB 1.072, **12 KiB 1.106**, 16 KiB 1.106. The pair kernel with the one-tile
/// kernel's prefetch instead (a burst of a pair's lines 4 KiB ahead at its start) ran 0.864 at
/// 1 thread, and with none 0.648: a core that streams two tiles at once from DRAM needs its
/// misses issued early and evenly.
const GEMV2_PREFETCH_ALONE: usize = 12 << 10;

/// The decode run of pairs' prefetch when two or more compute threads stream at once, in
/// bytes ahead of a pair's step as for [`GEMV2_PREFETCH_ALONE`]: `(near, far)`, the stream
/// asked into L1 (`prefetcht0`) `near` bytes ahead and into L2 (`prefetcht1`) `far` bytes
/// ahead. With both cores reading, each miss waits longer (loaded latency), so a core needs
/// more lines in flight; asked for in L1 that far ahead they fill half of a 32 KiB L1 (the
/// Zen 4 VM's) and evict what the kernel still reads, asked for in L2 they do not.
///
/// Measured with `expllm bench --stage llm --kernels avx512-vnni --threads N`, medians of
/// per-round decode ratios, alternating rounds (BENCHMARKS "fifteenth session"). On the Zen 4
/// VM (2026-11-24, fifteenth session), 2 threads, `(2 KiB, 32 KiB)` against one L1 stream
/// 16 KiB ahead: **1.100, 1.036, 1.121 and 1.034** (12, 16, 24 and 16 rounds; 11, 11, 20 and
/// 13 faster); `(2, 24)` 1.044 and 1.113, `(1, 32)` 1.041 and 1.099, `(4, 64)` 1.084, `(2,
/// 40)` and `(3, 28)` within 4 % of `(2, 32)`, `(0, 32)` (L2 only) 0.982 of it. At 1 thread
/// the same two streams were slower (`(2, 32)` 0.885, `(2, 16)` 0.930, 12 rounds): one
/// core alone keeps [`GEMV2_PREFETCH_ALONE`]. Before that (thirteenth session, Zen 5 VM):
/// one L1 stream 16 KiB ahead against 12 KiB 1.051 and 1.050 in fast-memory minutes, 1.006 in
/// slow ones, 28 KiB 0.982. Only the prefetch differs: the same bits.
const GEMV2_PREFETCH_SHARED: (usize, usize) = (2 << 10, 32 << 10);

/// [`gemv_q4_0x8_q8_0_tiles`] two tiles at a time on 512-bit registers (`tile2`, the body
/// of [`gemm2_q4_0x8_q8_0`]; an odd last tile on its own): half the instructions per weight
/// byte of the one-tile body, prefetching `AHEAD` bytes ahead into L1 (`AHEAD` must not be 0)
/// and, unless `FAR` is 0, `FAR` bytes ahead into L2 (`GEMV2_PREFETCH_ALONE` and 0, or
/// `GEMV2_PREFETCH_SHARED`). The same bits whatever the distances.
///
/// # Safety
/// As [`gemm_q4_0x8_q8_0`].
///
/// # Panics
/// As [`gemv_q4_0x8_q8_0_tiles`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn gemv2_q4_0x8_q8_0_tiles<const AHEAD: usize, const FAR: usize>(
    x: &[BlockQ4_0x8],
    nb: usize,
    y: &[BlockQ8_0],
    yd: &[f32],
    ysum: &[i32],
    out: &mut [f32],
) {
    super::x86::check_gemv_run(x.len(), nb, out.len());
    let (pairs, rest) = x.split_at(x.len() / (2 * nb) * (2 * nb));
    let (outs, out_rest) = out.split_at_mut(pairs.len() / nb * TILE_ROWS);
    // SAFETY: the features by this function's contract (`tile2` and `tile` need them).
    unsafe {
        for (p, o) in pairs
            .chunks_exact(2 * nb)
            .zip(outs.chunks_exact_mut(2 * TILE_ROWS))
        {
            // (The pair's tiles back to back: `tile2`'s linear prefetch needs that.)
            let (x0, x1) = p.split_at(nb);
            let [[r0], [r1]] = tile2::<1, AHEAD, FAR>(x0, x1, [y], [yd], [ysum]);
            o[..TILE_ROWS].copy_from_slice(&r0);
            o[TILE_ROWS..].copy_from_slice(&r1);
        }
        if !rest.is_empty() {
            gemv_q4_0x8_tiles!(tile, rest, nb, y, yd, ysum, out_rest);
        }
    }
}

/// [`gemv2_q4_0x8_q8_0_tiles`] with the prefetch distances for `streaming` compute threads
/// reading at once: `GEMV2_PREFETCH_ALONE` for one, `GEMV2_PREFETCH_SHARED` for more. The
/// one place that says which distances go with how many threads. The same bits either way.
///
/// # Safety
/// As [`gemm_q4_0x8_q8_0`].
///
/// # Panics
/// As [`gemv_q4_0x8_q8_0_tiles`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn gemv2_q4_0x8_q8_0_streaming(
    streaming: usize,
    x: &[BlockQ4_0x8],
    nb: usize,
    y: &[BlockQ8_0],
    yd: &[f32],
    ysum: &[i32],
    out: &mut [f32],
) {
    const NEAR: usize = GEMV2_PREFETCH_SHARED.0;
    const FAR: usize = GEMV2_PREFETCH_SHARED.1;
    // SAFETY: the features by this function's contract, which is the kernel's.
    unsafe {
        if streaming > 1 {
            gemv2_q4_0x8_q8_0_tiles::<NEAR, FAR>(x, nb, y, yd, ysum, out)
        } else {
            gemv2_q4_0x8_q8_0_tiles::<GEMV2_PREFETCH_ALONE, 0>(x, nb, y, yd, ysum, out)
        }
    }
}

/// Two Q4_0x8 tiles (16 weight rows: `x0`'s eight, then `x1`'s) × `A` Q8_0 activation rows
/// on 512-bit registers: chunk `j` of both tiles in one `zmm` (`x0` in the low half), so each
/// `vpdpbusd` against the activation bytes broadcast to 16 lanes serves 16 rows; the scales,
/// the integer-to-float step and the f32 terms likewise 16 lanes wide. Per weight row and
/// activation row the same integer sums and the same f32 operations, in the same order, as
/// [`gemm_q4_0x8_q8_0`] (and so the scalar reference's bits): lane `r` is row `r` of `x0`,
/// lane `8 + r` row `r` of `x1`. Returns `[x0's rows, x1's rows]` per activation row.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX512F, AVX512BW, AVX512VL and AVX512-VNNI.
///
/// # Panics
/// If the tiles' or an activation row's block counts differ, or `yd`/`ysum` are shorter.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn gemm2_q4_0x8_q8_0<const A: usize>(
    x0: &[BlockQ4_0x8],
    x1: &[BlockQ4_0x8],
    y: [&[BlockQ8_0]; A],
    yd: [&[f32]; A],
    ysum: [&[i32]; A],
) -> [[[f32; TILE_ROWS]; A]; 2] {
    // SAFETY: the features by this function's contract, which is `tile2`'s.
    unsafe { tile2::<A, 0, 0>(x0, x1, y, yd, ysum) }
}

/// [`gemm2_q4_0x8_q8_0`]'s body, inlined into its callers: that kernel (`AHEAD` 0: each
/// tile's stream prefetched 1 KiB ahead, enough for a GEMM's several activation rows per
/// load), and the decode run of tile pairs [`gemv2_q4_0x8_q8_0_tiles`] (`AHEAD` > 0: one
/// linear stream `AHEAD` bytes past `x0`'s start into L1, and with `FAR` > 0 a second one
/// `FAR` bytes past it into L2, 288 bytes per block step, for tiles that lie back to back,
/// `x1` right after `x0`).
///
/// # Safety
/// As [`gemm2_q4_0x8_q8_0`]: the CPU must have its features (every caller enables them).
#[inline(always)]
unsafe fn tile2<const A: usize, const AHEAD: usize, const FAR: usize>(
    x0: &[BlockQ4_0x8],
    x1: &[BlockQ4_0x8],
    y: [&[BlockQ8_0]; A],
    yd: [&[f32]; A],
    ysum: [&[i32]; A],
) -> [[[f32; TILE_ROWS]; A]; 2] {
    let n = x0.len();
    assert_eq!(x1.len(), n, "Q4_0x8 GEMM: tiles' block counts differ");
    let y: [&[BlockQ8_0]; A] = y.map(|s| {
        assert_eq!(s.len(), n, "Q4_0x8 GEMM: block counts differ");
        s
    });
    let yd: [&[f32]; A] = yd.map(|s| &s[..n]);
    let ysum: [&[i32]; A] = ysum.map(|s| &s[..n]);
    // Four activation bytes `yq[4·j..4·j + 4]` as one i32 on all 16 lanes.
    let quad = |yq: &[i8; 32], j: usize| {
        let b = &yq[4 * j..4 * j + 4];
        _mm512_set1_epi32(i32::from_le_bytes([
            b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8,
        ]))
    };
    // SAFETY: the features by contract; every load is inside a block struct (`chunk`: 32 of
    // the 128 quant bytes; `d`: the 16 bytes of eight f16), and `quad` reads through a
    // bounds-checked slice. The prefetches are hints to addresses that may lie past the tiles
    // (`wrapping_add`, never dereferenced): they cannot fault.
    unsafe {
        let (m_lo, m_hi) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0xf0u8 as i8));
        let mut acc = [[_mm512_setzero_ps(); 8]; A];
        for i in 0..n {
            let (b0, b1) = (&x0[i], &x1[i]);
            if AHEAD == 0 {
                // Two streams at once: prefetch both, 1 KiB ahead (a prefetch never faults).
                for b in [b0, b1] {
                    let ahead = (b as *const BlockQ4_0x8).cast::<i8>().wrapping_add(1024);
                    _mm_prefetch::<_MM_HINT_T0>(ahead);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(128));
                }
            } else {
                // One stream: the 288 bytes `AHEAD` past this step's place in the pair.
                const STEP: usize = 2 * std::mem::size_of::<BlockQ4_0x8>();
                let ahead = x0.as_ptr().cast::<i8>().wrapping_add(AHEAD + STEP * i);
                for line in 0..STEP.div_ceil(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line));
                }
                if FAR > 0 {
                    // And the same 288 bytes `FAR` past it, into L2 only.
                    let far = x0.as_ptr().cast::<i8>().wrapping_add(FAR + STEP * i);
                    for line in 0..STEP.div_ceil(64) {
                        _mm_prefetch::<_MM_HINT_T1>(far.wrapping_add(64 * line));
                    }
                }
            }
            let c: [__m512i; 4] = core::array::from_fn(|j| {
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(chunk(&b0.qs, j)), chunk(&b1.qs, j))
            });
            // Low nibbles as u8, high nibbles left in place (16·q), as the 8-row kernel.
            let w: [__m512i; 8] = core::array::from_fn(|k| {
                _mm512_and_si512(c[k % 4], if k < 4 { m_lo } else { m_hi })
            });
            let dx = _mm512_cvtph_ps(_mm256_inserti128_si256::<1>(
                _mm256_castsi128_si256(_mm_loadu_si128(b0.d.as_ptr().cast())),
                _mm_loadu_si128(b1.d.as_ptr().cast()),
            ));
            for a in 0..A {
                let yq = &y[a][i].qs;
                // The low nibbles' sums start at `-8·Σ y` (the Q4_0 offset), so no
                // subtraction follows: the same integers (|8·Σ y| ≤ 32768, far from
                // overflow), one vector operation fewer per step.
                let mut lo = _mm512_set1_epi32(-(ysum[a][i] << 3));
                let mut hi = _mm512_setzero_si512();
                for j in 0..4 {
                    lo = _mm512_dpbusd_epi32(lo, w[j], quad(yq, j));
                    hi = _mm512_dpbusd_epi32(hi, w[4 + j], quad(yq, 4 + j));
                }
                let sumi = _mm512_add_epi32(lo, _mm512_srai_epi32::<4>(hi));
                let t = _mm512_mul_ps(
                    _mm512_mul_ps(_mm512_cvtepi32_ps(sumi), dx),
                    _mm512_set1_ps(yd[a][i]),
                );
                acc[a][i % 8] = _mm512_add_ps(acc[a][i % 8], t);
            }
        }
        let mut out = [[[0f32; TILE_ROWS]; A]; 2];
        for (a, acc) in acc.iter().enumerate() {
            // Lane `r` of `acc[k]` is lane sum `k` of row `r`, so `lane_total` of every row
            // is the same adds on whole vectors, in its order: written out, because the
            // compiler sometimes turned the per-row version into 128 gathers per call.
            let t = _mm512_add_ps(
                _mm512_add_ps(_mm512_add_ps(acc[0], acc[4]), _mm512_add_ps(acc[2], acc[6])),
                _mm512_add_ps(_mm512_add_ps(acc[1], acc[5]), _mm512_add_ps(acc[3], acc[7])),
            );
            let mut v = [0f32; 16];
            _mm512_storeu_ps(v.as_mut_ptr(), t);
            out[0][a].copy_from_slice(&v[..8]);
            out[1][a].copy_from_slice(&v[8..]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quants::{q4_0, q4_1, q8, F16Le};
    use crate::kernels::x86::tests::{
        check_gemm_q4_0x8, fill_bytes, fill_i8, gemm_acts, pre, q4_0_row, q8_0_row, same, scale,
        Rng, COUNTS,
    };
    use crate::kernels::KernelPath;

    fn have_vnni() -> bool {
        let ok = KernelPath::Avx512Vnni.supported();
        if !ok {
            eprintln!(
                "NOTE: CPU lacks avx2/fma/f16c + avx512f/bw/vl/vnni ({:?}); VNNI kernel test \
                 SKIPPED (not run)",
                crate::kernels::cpu_features()
            );
        }
        ok
    }

    /// `Σ qs` per block, zero-padded to 8, as `QuantizedActs::qsums` keeps them.
    fn qsums(y: &[BlockQ8_0]) -> Vec<i32> {
        let mut s: Vec<i32> = y
            .iter()
            .map(|b| b.qs.iter().map(|&q| q as i32).sum())
            .collect();
        s.resize(s.len().next_multiple_of(8), 0);
        s
    }

    #[test]
    fn gemm_q4_0x8_matches_scalar() {
        if !have_vnni() {
            return;
        }
        check_gemm_q4_0x8!(gemm_q4_0x8_q8_0);
    }

    /// `tiles` tiles of random Q4_0 rows (`nb` blocks each): the rows, and them packed.
    fn random_tiles(r: &mut Rng, tiles: usize, nb: usize) -> (Vec<BlockQ4_0>, Vec<BlockQ4_0x8>) {
        let rows = q4_0_row(r, 8 * tiles * nb);
        let mut packed = vec![bytemuck::Zeroable::zeroed(); tiles * nb];
        crate::kernels::quants::q4_0x8::pack(&rows, 8 * tiles, nb, &mut packed);
        (rows, packed)
    }

    /// The two-tile (zmm) GEMM against the reference per row (16 rows) and activation row,
    /// A = 1..4, every block count of `COUNTS` (tails included).
    #[test]
    fn gemm2_q4_0x8_matches_scalar() {
        if !have_vnni() {
            return;
        }
        let mut r = Rng(0x2e11_0c8e_77aa_5678);
        for iter in 0..30 * COUNTS.len() {
            let nb = COUNTS[iter % COUNTS.len()];
            let (rows, tiles) = random_tiles(&mut r, 2, nb);
            let (t0, t1) = tiles.split_at(nb);
            let (ys, yd, ysum) = gemm_acts(&mut r, nb);
            let check = |got: &[&[[f32; 8]]; 2]| {
                for (tile, got) in got.iter().enumerate() {
                    for (a, got) in got.iter().enumerate() {
                        for (row, &g) in got.iter().enumerate() {
                            let row = 8 * tile + row;
                            let want =
                                q4_0::vec_dot_q4_0_q8_0(&rows[row * nb..(row + 1) * nb], &ys[a]);
                            assert!(
                                same(g, want),
                                "nb={nb} iter={iter} acts={}: act {a} row {row}: {g:e} vs {want:e}",
                                got.len()
                            );
                        }
                    }
                }
            };
            macro_rules! run {
                ($($a:literal),*) => {$({
                    // SAFETY: VNNI checked above; every activation row has `nb` blocks and
                    // its scales / sums are padded to a multiple of 8.
                    let got = unsafe {
                        gemm2_q4_0x8_q8_0::<$a>(
                            t0,
                            t1,
                            core::array::from_fn(|a| &ys[a][..]),
                            core::array::from_fn(|a| &yd[a][..]),
                            core::array::from_fn(|a| &ysum[a][..]),
                        )
                    };
                    check(&[&got[0][..], &got[1][..]]);
                })*};
            }
            run!(1, 2, 3, 4);
        }
    }

    /// The decode runs (pairs of tiles, and the one-tile run) against the reference per row:
    /// runs of 1–7 tiles (an odd last tile included), every block count of `COUNTS`.
    #[test]
    fn gemv_runs_match_scalar() {
        if !have_vnni() {
            return;
        }
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        for iter in 0..7 * COUNTS.len() {
            let (nb, tiles) = (COUNTS[iter % COUNTS.len()], 1 + iter % 7);
            let (rows, packed) = random_tiles(&mut r, tiles, nb);
            let (ys, yd, ysum) = gemm_acts(&mut r, nb);
            let n = 8 * tiles;
            let (mut two, mut two_s, mut one) =
                (vec![f32::NAN; n], vec![f32::NAN; n], vec![f32::NAN; n]);
            // SAFETY: VNNI checked above; the activation row has `nb` blocks and its scales
            // and sums are padded to a multiple of 8.
            unsafe {
                let (y, d, s) = (&ys[0][..], &yd[0][..], &ysum[0][..]);
                gemv2_q4_0x8_q8_0_streaming(1, &packed, nb, y, d, s, &mut two);
                gemv2_q4_0x8_q8_0_streaming(2, &packed, nb, y, d, s, &mut two_s);
                gemv_q4_0x8_q8_0_tiles(&packed, nb, y, d, s, &mut one);
            }
            for row in 0..n {
                let want = q4_0::vec_dot_q4_0_q8_0(&rows[row * nb..(row + 1) * nb], &ys[0]);
                let runs = [
                    ("pairs", two[row]),
                    ("pairs, shared prefetch", two_s[row]),
                    ("one tile", one[row]),
                ];
                for (what, got) in runs {
                    assert!(
                        same(got, want),
                        "{what}: nb={nb} tiles={tiles} row {row}: {got:e} vs {want:e}"
                    );
                }
            }
        }
    }

    fn q4_1_row(r: &mut Rng, n: usize) -> Vec<BlockQ4_1> {
        (0..n)
            .map(|_| {
                let mut b = BlockQ4_1 {
                    d: scale(r),
                    m: scale(r),
                    qs: [0; 16],
                };
                fill_bytes(r, &mut b.qs);
                b
            })
            .collect()
    }

    fn q8_1_row(r: &mut Rng, n: usize) -> Vec<BlockQ8_1> {
        (0..n)
            .map(|_| {
                let mut b = BlockQ8_1 {
                    d: scale(r),
                    s: scale(r),
                    qs: [0; 32],
                };
                fill_i8(r, &mut b.qs);
                b
            })
            .collect()
    }

    /// The three kernels against the scalar reference on rows of `n` identical blocks: Q4
    /// nibbles `x4`, Q8_0 weights `x8`, activations `a`, every f16 field `d`.
    fn check_all(n: usize, what: &str, x4: &[u8; 16], x8: &[i8; 32], a: &[i8; 32], d: F16Le) {
        let w40: Vec<BlockQ4_0> = (0..n).map(|_| BlockQ4_0 { d, qs: *x4 }).collect();
        let w41: Vec<BlockQ4_1> = (0..n).map(|_| BlockQ4_1 { d, m: d, qs: *x4 }).collect();
        let w80: Vec<BlockQ8_0> = (0..n).map(|_| BlockQ8_0 { d, qs: *x8 }).collect();
        let a0: Vec<BlockQ8_0> = (0..n).map(|_| BlockQ8_0 { d, qs: *a }).collect();
        let a1: Vec<BlockQ8_1> = (0..n).map(|_| BlockQ8_1 { d, s: d, qs: *a }).collect();
        let (yd0, _) = pre(a0.iter().map(|b| (b.d, b.d)));
        let (yd1, ys1) = pre(a1.iter().map(|b| (b.d, b.s)));
        let ys0 = qsums(&a0);
        // SAFETY: VNNI features checked by the caller; equal lengths; padded side data.
        let got = unsafe {
            [
                vec_dot_q4_0_q8_0(&w40, &a0, &yd0, &ys0),
                vec_dot_q4_1_q8_1(&w41, &a1, &yd1, &ys1),
                vec_dot_q8_0_q8_0(&w80, &a0, &yd0, &ys0),
            ]
        };
        let want = [
            q4_0::vec_dot_q4_0_q8_0(&w40, &a0),
            q4_1::vec_dot_q4_1_q8_1(&w41, &a1),
            q8::vec_dot_q8_0_q8_0(&w80, &a0),
        ];
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            let name = ["q4_0", "q4_1", "q8_0"][k];
            assert!(same(*g, w), "{name} {what} n={n}: {g} vs {w}");
        }
    }

    #[test]
    fn q4_0_q8_0_matches_scalar() {
        if !have_vnni() {
            return;
        }
        let mut r = Rng(0x7234_5678_9abc_def1);
        for iter in 0..600 {
            let n = COUNTS[iter % COUNTS.len()];
            let x = q4_0_row(&mut r, n);
            let y = q8_0_row(&mut r, n);
            let want = q4_0::vec_dot_q4_0_q8_0(&x, &y);
            let (yd, _) = pre(y.iter().map(|b| (b.d, b.d)));
            // SAFETY: VNNI features checked above; `yd`, `qsums` padded to a multiple of 8.
            let got = unsafe { vec_dot_q4_0_q8_0(&x, &y, &yd, &qsums(&y)) };
            assert!(same(got, want), "n={n} iter={iter}: {got} vs {want}");
        }
    }

    #[test]
    fn q4_1_q8_1_matches_scalar() {
        if !have_vnni() {
            return;
        }
        let mut r = Rng(0x8234_5678_9abc_def1);
        for iter in 0..600 {
            let n = COUNTS[iter % COUNTS.len()];
            let x = q4_1_row(&mut r, n);
            let y = q8_1_row(&mut r, n);
            let want = q4_1::vec_dot_q4_1_q8_1(&x, &y);
            let (yd, ys) = pre(y.iter().map(|b| (b.d, b.s)));
            // SAFETY: VNNI features checked above; `yd`, `ys` padded to a multiple of 8.
            let got = unsafe { vec_dot_q4_1_q8_1(&x, &y, &yd, &ys) };
            assert!(same(got, want), "n={n} iter={iter}: {got} vs {want}");
        }
    }

    #[test]
    fn q8_0_q8_0_matches_scalar() {
        if !have_vnni() {
            return;
        }
        let mut r = Rng(0x9234_5678_9abc_def1);
        for iter in 0..600 {
            let n = COUNTS[iter % COUNTS.len()];
            let x = q8_0_row(&mut r, n);
            let y = q8_0_row(&mut r, n);
            let want = q8::vec_dot_q8_0_q8_0(&x, &y);
            let (yd, _) = pre(y.iter().map(|b| (b.d, b.d)));
            // SAFETY: VNNI features checked above; `yd`, `qsums` padded to a multiple of 8.
            let got = unsafe { vec_dot_q8_0_q8_0(&x, &y, &yd, &qsums(&y)) };
            assert!(same(got, want), "n={n} iter={iter}: {got} vs {want}");
        }
    }

    /// The integer extremes, every block alike: nibbles 0/15 (products ±15·128, the high
    /// nibble scaled to 240 inside the kernel), i8 ±127 and -128 on both sides of Q8_0
    /// (`(-128)·(-128)` summed 32 times), all-zero blocks, mixed signs; unit scales make the
    /// float result the exact integer sum (times the block count), extreme ones overflow to
    /// ±inf or flush towards zero the same way as the reference.
    #[test]
    fn extreme_blocks_match_scalar() {
        if !have_vnni() {
            return;
        }
        let nib: [[u8; 16]; 6] = [
            [0x00; 16],
            [0xff; 16],
            [0x0f; 16],
            [0xf0; 16],
            [0x88; 16],
            core::array::from_fn(|j| if j % 2 == 0 { 0xf0 } else { 0x0f }),
        ];
        let i8s: [[i8; 32]; 6] = [
            [0; 32],
            [-128; 32],
            [127; 32],
            [-127; 32],
            core::array::from_fn(|j| if j % 2 == 0 { -128 } else { 127 }),
            core::array::from_fn(|j| if j < 16 { 127 } else { -128 }),
        ];
        let scales = [1.0f32, -1.0, 0.0, 65504.0, -65504.0, 6e-8, 0.5];
        let mut cases = 0;
        for n in [1usize, 3, 7, 8, 9, 17, 64] {
            for x4 in &nib {
                for x8 in &i8s {
                    for a in &i8s {
                        for &d in &scales {
                            let what = format!("x4={:#04x} x8={} a={} d={d}", x4[0], x8[0], a[0]);
                            check_all(n, &what, x4, x8, a, F16Le::new(d));
                            cases += 1;
                        }
                    }
                }
            }
        }
        println!("extreme_blocks_match_scalar: {cases} cases on avx512-vnni");
    }

    #[test]
    #[should_panic(expected = "block counts differ")]
    fn length_mismatch_panics() {
        if !have_vnni() {
            panic!("block counts differ (skipped: no avx512-vnni)");
        }
        let x = [BlockQ4_1 {
            d: F16Le::new(1.0),
            m: F16Le::new(1.0),
            qs: [0; 16],
        }];
        // SAFETY: VNNI features checked above; the length check panics before any SIMD.
        unsafe { vec_dot_q4_1_q8_1(&x, &[], &[0.0; 8], &[0.0; 8]) };
    }

    #[test]
    #[should_panic(expected = "activation sums missing")]
    fn short_activation_sums_panic() {
        if !have_vnni() {
            panic!("activation sums missing (skipped: no avx512-vnni)");
        }
        let mut r = Rng(0xa234_5678_9abc_def1);
        let x = q8_0_row(&mut r, 9);
        // SAFETY: VNNI features checked above; the sums check panics before any SIMD.
        unsafe { vec_dot_q8_0_q8_0(&x, &x, &[0.0; 16], &[0; 8]) };
    }
}
