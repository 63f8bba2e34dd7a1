//! AVX2+FMA kernels for x86_64: the quantized dot products of Q4_0, Q4_1, Q8_0, Q4_K and Q6_K
//! weights with their activation blocks, the Q4_0x8 GEMM on repacked weights
//! ([`gemm_q4_0x8_q8_0`], layout in [`super::quants::q4_0x8`]; its skeleton `gemm_q4_0x8!` is
//! shared with the VNNI kernel), and the Q8_0/Q8_1 activation quantizers.
//!
//! Every function here is **bit-identical** to its scalar reference in [`super::quants`]
//! (for the quantizers: for inputs without NaN), so whole-model results do not depend on the
//! kernel path:
//!
//! * The integer part of every dot is exact (as in the reference): the SIMD code never uses
//!   ggml's `_mm256_sign_epi8` trick (wrong for a quant of -128) nor a saturating
//!   `maddubs` of two signed operands; unsigned 4/6-bit quants go through `maddubs`
//!   (products ≤ 2·63·128, no saturation), signed 8-bit pairs through `madd_epi16`.
//! * The float part uses the reference's f32 expression per block, without FMA contraction.
//!   Q4_0/Q4_1/Q8_0 take eight blocks at a time: their exact i32 sums (one `hadd` tree for
//!   the eight, `block_sums_8`) and F16C-converted scales give the eight block terms in one
//!   vector, which is added to eight f32 lanes — the reference's block-striped order
//!   ([`lane_total`]); the last `n % 8` blocks are added in scalar f32 to lanes `0..n % 8`.
//!   Q4_K/Q6_K keep the reference's eight f32 lane sums (element `i` in lane `i % 8`) by
//!   permuting the bytes of each 32-element chunk so that the pairs `maddubs`/`madd` add up
//!   belong to the same lane.
//! * The quantizers round half away from zero like `roundf` (not ggml's SIMD ties-to-even)
//!   and saturate like Rust's `as i8`, so their bytes equal `quantize_row_q8_0`/`_q8_1`'s.
//!
//! `target_feature(enable = "avx2,fma,f16c")` is on every function (FMA is not used, but the
//! dispatcher's contract is "avx2, fma and f16c", which every AVX2 CPU has). Each `unsafe`
//! block inside has the same invariant: the function was entered only on a CPU with those
//! features (the caller's contract), and every pointer handed to a load/store intrinsic points
//! into a block struct or slice element that is in bounds for the whole width of the access
//! (all loads/stores are the unaligned `loadu`/`storeu` forms, as the block structs have
//! alignment 1).

use core::arch::x86_64::*;

use super::quants::q4_0x8::{BlockQ4_0x8, TILE_ROWS};
use super::quants::{
    lane_total, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_1, F16Le,
};

const QK: usize = 32;

/// Horizontal sum of 8 i32 lanes (wrapping, exact for the ranges here).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_i32_8(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s));
    _mm_cvtsi128_si32(s)
}

/// Exact f16 → f32, the same value as [`F16Le::get`] (NaNs come out quiet with the payload
/// kept, like `half` and F16C), inlined without `half`'s runtime F16C detection.
#[inline(always)]
fn f16(h: F16Le) -> f32 {
    let h = u16::from_le_bytes(h.0) as u32;
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    if em >= 0x7c00 {
        let nan = if em > 0x7c00 {
            0x7fc0_0000
        } else {
            0x7f80_0000
        };
        return f32::from_bits(sign | nan | ((em & 0x3ff) << 13));
    }
    // Rebias the exponent by 2^112 with one exact multiply (also exact for subnormal halves:
    // the f32 operand is then subnormal and the product normal).
    let v = f32::from_bits(em << 13) * f32::from_bits(0x7780_0000);
    f32::from_bits(v.to_bits() | sign)
}

/// Load 16 packed nibble bytes as 32 bytes: low nibbles (elements 0..16), then high nibbles
/// (elements 16..32), each 0..=15.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bytes_from_nibbles_32(p: &[u8; 16]) -> __m256i {
    // SAFETY: AVX2 by contract; the load reads exactly the 16 bytes of `p`.
    unsafe {
        // Both halves hold the 16 bytes; the high half is shifted right by 4 bits per 64-bit
        // lane (bits shifted in from the next byte land in the high nibble, masked off).
        let q = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.as_ptr().cast()));
        let q = _mm256_srlv_epi64(q, _mm256_setr_epi64x(0, 0, 4, 4));
        _mm256_and_si256(q, _mm256_set1_epi8(0x0f))
    }
}

/// Σ u·s over 32 byte pairs as 8 i32 lanes; `u` (unsigned) must be ≤ 127 so the i16 pair
/// sums of `maddubs` (≤ 2·127·128) cannot saturate.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// The eight block sums `[Σv0, …, Σv7]` of eight blocks' i32 partial sums (exact: wrapping
/// i32 adds of values ≤ 2^19 in magnitude). Six `hadd`s, two permutes and an add for eight
/// blocks, instead of a horizontal reduction per block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_sums_8(v: &[__m256i; 8]) -> __m256i {
    let (lo, hi) = block_halves_8(v);
    _mm256_add_epi32(lo, hi)
}

/// `block_sums_8` before its last add: the eight blocks' sums of i32 lanes 0..4 (`lo`) and
/// of lanes 4..8 (`hi`), kept apart for kernels whose two halves are scaled differently
/// ([`super::x86_vnni`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn block_halves_8(v: &[__m256i; 8]) -> (__m256i, __m256i) {
    // hadd(a, b) = [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, a6+a7, b4+b5, b6+b7].
    let a01 = _mm256_hadd_epi32(v[0], v[1]);
    let a23 = _mm256_hadd_epi32(v[2], v[3]);
    let a45 = _mm256_hadd_epi32(v[4], v[5]);
    let a67 = _mm256_hadd_epi32(v[6], v[7]);
    // [Σv0.lo, Σv1.lo, Σv2.lo, Σv3.lo | Σv0.hi, …, Σv3.hi] and the same for v4..v7.
    let b0 = _mm256_hadd_epi32(a01, a23);
    let b1 = _mm256_hadd_epi32(a45, a67);
    let lo = _mm256_permute2x128_si256::<0x20>(b0, b1);
    let hi = _mm256_permute2x128_si256::<0x31>(b0, b1);
    (lo, hi)
}

/// The shared skeleton of the Q4_0/Q4_1/Q8_0 kernels, in the block-striped order of
/// [`lane_total`]. Per group of eight consecutive blocks: `$block(&x[k], &y[k])` gives block
/// `k`'s i32 partial sums, `block_sums_8` their exact totals `s` (as f32), [`f16_pairs`] of
/// the weight blocks' first 32-bit words the scales `(dx, ex)` (the two f16 fields that start
/// each block; `ex` is meaningless for one-scale blocks and unused), the activation scales
/// `(dy, ey)` come from `$yd`/`$ys` (f32, one per block, zero-padded to a multiple of 8, as
/// [`QuantizedActs`](super::quants::QuantizedActs) keeps them, so no row converts them
/// again), and `$terms` gives the eight f32 terms, added to the lane vector. The last `n % 8`
/// blocks form a group whose absent blocks have zero sums and zero scales, so their terms are
/// +0.0 (for every kernel's expression), and adding +0.0 leaves a lane unchanged (a lane that
/// starts at +0.0 is never -0.0): the tail lands in lanes `0..n % 8` after every whole group,
/// the reference's order.
///
/// The second form, `striped!(x, y, yd, ys, block, |v, g| sums, |s, dx, ex, dy, ey| terms)`,
/// replaces `block_sums_8(&v)` by `sums`: the eight exact i32 block totals of group `g` from
/// its blocks' vectors `v` (the VNNI kernels, [`super::x86_vnni`], fold halves and offsets in
/// there). The tail group's absent blocks have zero vectors `v[k]` and must get a zero total.
///
/// A macro, not a function taking closures: a closure does not inherit the caller's target
/// features, and out of line every intrinsic in it becomes a call (measured: 2–3× slower).
/// Expands to `unsafe` code: use only inside an `avx2,fma,f16c` function. The helpers it calls
/// ([`f16_pairs`], [`head_words`], `tail_words`, [`lanes`], `lane_total`) must be in scope
/// where it is used; `tail_words` gives the tail group's [`head_words`] (see
/// [`tail_words`] here and `super::x86_vnni`'s).
macro_rules! striped {
    ($x:expr, $y:expr, $yd:expr, $ys:expr, $block:ident, |$v:ident, $g:ident| $sums:expr, |$s:ident, $dx:ident, $ex:ident, $dy:ident, $ey:ident| $terms:expr) => {{
        let (x, y, yd, ys): (&[_], &[_], &[f32], &[f32]) = ($x, $y, $yd, $ys);
        let (xc, xr) = x.as_chunks::<8>();
        let (yc, yr) = y.as_chunks::<8>();
        let (ydc, _) = yd.as_chunks::<8>();
        let (ysc, _) = ys.as_chunks::<8>();
        let groups = xc.len() + !xr.is_empty() as usize;
        assert!(
            ydc.len() >= groups && ysc.len() >= groups,
            "activation scales missing"
        );
        let mut acc = _mm256_setzero_ps();
        for (g, (xg, yg)) in xc.iter().zip(yc).enumerate() {
            let $v: [__m256i; 8] = core::array::from_fn(|k| $block(&xg[k], &yg[k]));
            let $g = g;
            let $s = _mm256_cvtepi32_ps($sums);
            let ($dx, $ex) = f16_pairs(&head_words(xg));
            let ($dy, $ey) = (
                _mm256_loadu_ps(ydc[g].as_ptr()),
                _mm256_loadu_ps(ysc[g].as_ptr()),
            );
            acc = _mm256_add_ps(acc, $terms);
        }
        // The tail group, one arm per tail length: see `striped_tail!`.
        let g = xc.len();
        $crate::kernels::x86::striped_tail!(
            xr.len(),
            [1, 2, 3, 4, 5, 6, 7],
            acc,
            xr,
            yr,
            ydc,
            ysc,
            g,
            $block,
            |$v, $g| $sums,
            |$s, $dx, $ex, $dy, $ey| $terms
        );
        lane_total(&lanes(acc))
    }};
    ($x:expr, $y:expr, $yd:expr, $ys:expr, $block:ident, |$s:ident, $dx:ident, $ex:ident, $dy:ident, $ey:ident| $terms:expr) => {
        striped!(
            $x,
            $y,
            $yd,
            $ys,
            $block,
            |v, _g| block_sums_8(&v),
            |$s, $dx, $ex, $dy, $ey| $terms
        )
    };
}
pub(super) use striped;

/// The tail group of [`striped!`]: a `match` on the tail length `$len` with one arm per
/// length `$n` (literals), each filling the blocks' vectors in a loop of constant trip count,
/// so it unrolls and `v` stays in registers, with the absent blocks' vectors constant zero.
/// (One arm per length, not one loop over the tail: with a variable trip count the eight
/// vectors went through the stack and the 2-block tail of a 576-wide row cost more than its 16
/// whole blocks — `cargo bench --bench kernels`, n = 512 vs 576.) Same order and same
/// expressions as a whole group. `$len` must be below 8 (`as_chunks::<8>`'s remainder).
macro_rules! striped_tail {
    ($len:expr, [$($n:literal),*], $acc:ident, $xr:ident, $yr:ident, $ydc:ident, $ysc:ident, $gi:ident, $block:ident, |$v:ident, $g:ident| $sums:expr, |$s:ident, $dx:ident, $ex:ident, $dy:ident, $ey:ident| $terms:expr) => {
        match $len {
            0 => {}
            $($n => {
                let (xt, yt) = (&$xr[..$n], &$yr[..$n]);
                let mut $v = [_mm256_setzero_si256(); 8];
                for k in 0..$n {
                    $v[k] = $block(&xt[k], &yt[k]);
                }
                let $g = $gi;
                let $s = _mm256_cvtepi32_ps($sums);
                let ($dx, $ex) = f16_pairs(&tail_words(xt));
                let ($dy, $ey) = (
                    _mm256_loadu_ps($ydc[$gi].as_ptr()),
                    _mm256_loadu_ps($ysc[$gi].as_ptr()),
                );
                $acc = _mm256_add_ps($acc, $terms);
            })*
            _ => unreachable!("a tail has fewer than 8 blocks"),
        }
    };
}
pub(super) use striped_tail;

/// The 32-bit words at the starts of up to eight consecutive blocks (`stride` bytes apart),
/// zero for absent ones: for Q4_1 / Q8_1 blocks the f16 pair (d, m) / (d, s).
#[inline(always)]
pub(super) fn head_words<B>(b: &[B]) -> [u32; 8] {
    let mut w = [0u32; 8];
    for (w, b) in w.iter_mut().zip(b) {
        // SAFETY: every block type here starts with two f16 fields (≥ 4 bytes), and the read
        // is unaligned-safe.
        *w = unsafe { std::ptr::read_unaligned((b as *const B).cast::<u32>()) };
    }
    w
}

/// [`head_words`] of the tail group (fewer than eight blocks), for [`striped!`].
#[inline(always)]
fn tail_words<B>(b: &[B]) -> [u32; 8] {
    head_words(b)
}

/// Eight 32-bit words of two f16 each → (the eight low halves, the eight high halves) as f32
/// (F16C `vcvtph2ps`: exact, the bits of [`F16Le::get`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16_pairs(w: &[u32; 8]) -> (__m256, __m256) {
    // SAFETY: AVX2/F16C by contract; `w` is 32 bytes.
    unsafe {
        let v = _mm256_loadu_si256(w.as_ptr().cast());
        let lo = _mm256_and_si256(v, _mm256_set1_epi32(0xffff));
        let hi = _mm256_srli_epi32::<16>(v);
        // [lo0..3, hi0..3 | lo4..7, hi4..7] → [lo0..3, lo4..7 | hi0..3, hi4..7].
        let p = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(lo, hi));
        (
            _mm256_cvtph_ps(_mm256_castsi256_si128(p)),
            _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(p)),
        )
    }
}

/// `Σ (q − 8)·a` of one Q4_0 × Q8_0 block as eight i32 partial sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_0_block(x: &BlockQ4_0, y: &BlockQ8_0) -> __m256i {
    // SAFETY: AVX2 by contract; the loads cover exactly the 16/32-byte `qs` arrays.
    unsafe {
        let q = bytes_from_nibbles_32(&x.qs);
        let a = _mm256_loadu_si256(y.qs.as_ptr().cast());
        // Σ (q − 8)·a = Σ q·a − 8·Σ a, both exact in i16 pairs (≤ 2·15·128, 2·8·128).
        let qa = _mm256_maddubs_epi16(q, a);
        let a8 = _mm256_maddubs_epi16(_mm256_set1_epi8(8), a);
        _mm256_madd_epi16(_mm256_sub_epi16(qa, a8), _mm256_set1_epi16(1))
    }
}

/// `Σ q·a` of one Q4_1 × Q8_1 block as eight i32 partial sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_1_block(x: &BlockQ4_1, y: &BlockQ8_1) -> __m256i {
    // SAFETY: AVX2 by contract; the loads cover exactly the 16/32-byte `qs` arrays.
    unsafe {
        let q = bytes_from_nibbles_32(&x.qs);
        let a = _mm256_loadu_si256(y.qs.as_ptr().cast());
        dot_u8_i8(q, a)
    }
}

/// `Σ x·y` of two Q8_0 blocks as eight i32 partial sums (exact for any i8, -128 included).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_block(x: &BlockQ8_0, y: &BlockQ8_0) -> __m256i {
    // SAFETY: AVX2 by contract; the four 16-byte loads cover the two 32-byte `qs`.
    unsafe {
        let xp = x.qs.as_ptr();
        let yp = y.qs.as_ptr();
        let x0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(xp.cast()));
        let x1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(xp.add(16).cast()));
        let y0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(yp.cast()));
        let y1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(yp.add(16).cast()));
        _mm256_add_epi32(_mm256_madd_epi16(x0, y0), _mm256_madd_epi16(x1, y1))
    }
}

/// The skeleton of the [`BlockQ4_0x8`] GEMM kernels (this module's AVX2 one and
/// `x86_vnni`'s): one tile of eight Q4_0 rows (`$x`, `n` blocks) times `$A` Q8_0 activation
/// rows (`$y`, `$yd` their f32 scales, `$ysum` their exact `Σ qs`, arrays of `$A` slices of at
/// least `n`), returning `[[f32; 8]; $A]` — activation `a`, row `r` — bit-identical to the
/// scalar reference ([`super::quants::q4_0x8::gemv_q4_0x8_q8_0`]).
///
/// Per block: `$unpack` turns the 128 packed bytes `$qs` into eight vectors `w` (chunk `j` of
/// four elements per row; lane `r` = row `r`); the block's scales are converted once; then for
/// each activation row `$dot` (given `w` and that row's 32 quants `$yq`) returns the eight
/// rows' exact `Σ q·y` (q in 0..=15), from which `8·Σ y` is subtracted (Q4_0's offset), and
/// `(sumi · dx) · dy` is added into accumulator `i % 8` — the lane order of
/// [`lane_total`], kept as eight vectors per activation row, so a tail needs no padding. The
/// unpacked `w` and `dx` serve all `$A` activation rows.
///
/// Must be expanded inside an `unsafe` block of a function with at least `avx2,fma,f16c`.
macro_rules! gemm_q4_0x8 {
    ($x:expr, $y:expr, $yd:expr, $ysum:expr, $A:ident, |$qs:ident| $unpack:expr, |$w:ident, $yq:ident| $dot:expr) => {{
        let x: &[BlockQ4_0x8] = $x;
        let n = x.len();
        // Exact-length views (panic if an activation slice is short), so the loop below
        // indexes without checks that could fail.
        let y: [&[BlockQ8_0]; $A] = $y.map(|s: &[BlockQ8_0]| {
            assert_eq!(s.len(), n, "Q4_0x8 GEMM: block counts differ");
            s
        });
        let yd: [&[f32]; $A] = $yd.map(|s: &[f32]| &s[..n]);
        let ysum: [&[i32]; $A] = $ysum.map(|s: &[i32]| &s[..n]);
        let mut acc = [[_mm256_setzero_ps(); 8]; $A];
        for i in 0..n {
            let xb = &x[i];
            let $qs: &[u8; 128] = &xb.qs;
            let $w: [__m256i; 8] = $unpack;
            let dx = _mm256_cvtph_ps(_mm_loadu_si128(xb.d.as_ptr().cast()));
            for a in 0..$A {
                let $yq: &[i8; 32] = &y[a][i].qs;
                let sumi = _mm256_sub_epi32($dot, _mm256_set1_epi32(ysum[a][i] << 3));
                let t = _mm256_mul_ps(
                    _mm256_mul_ps(_mm256_cvtepi32_ps(sumi), dx),
                    _mm256_set1_ps(yd[a][i]),
                );
                acc[a][i % 8] = _mm256_add_ps(acc[a][i % 8], t);
            }
        }
        let mut out = [[0f32; TILE_ROWS]; $A];
        for (o, acc) in out.iter_mut().zip(&acc) {
            // Lane `r` of `acc[k]` is lane sum `k` of row `r`: `lane_total` of every row is
            // the same adds on whole vectors, in its order (written out: the per-row form
            // can compile to gathers).
            let t = _mm256_add_ps(
                _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6])),
                _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7])),
            );
            *o = lanes(t);
        }
        out
    }};
}
pub(super) use gemm_q4_0x8;

/// How far ahead of the tile it multiplies the decode GEMV prefetches, in bytes (the tile's
/// own length, `GEMV_PREFETCH` further on). A decode matmul reads each weight once, so one
/// core's bandwidth is bounded by the misses it keeps in flight; the hardware prefetchers
/// start over on every matrix (a decode step has ~150, of 60 KB to 16 MB). Measured with
/// `cargo bench --bench matmul_stream -- 1` on the 2-vCPU EPYC (4 alternating rounds, GB/s):
/// none 23.6-29.7, 4096 bytes 29.8-35.0, 8192 31.4-33.6, 16384 27.2-34.3; 2 threads, where
/// the cores share the bandwidth, no difference (30-37 each). Prefetches run on past the
/// call's last tile: in a `PackArena` laid out by thread share what follows is this
/// thread's next share (the next matrix it multiplies), so its stream does not stop at a
/// job's end (`cargo bench --bench matmul_stream -- 2`, 16 alternating rounds with and
/// without, twice: median ratios 1.018 and 1.010; the whole decode, 20 rounds: 1.013).
pub(super) const GEMV_PREFETCH: usize = 4096;

/// A decode run's lengths (the GEMV kernels here and in `x86_vnni`): `x_len` blocks are
/// `out_len / 8` tiles of `nb > 0` blocks each, and `out_len` whole tiles of outputs.
///
/// # Panics
/// Otherwise, naming the three.
#[track_caller]
pub(super) fn check_gemv_run(x_len: usize, nb: usize, out_len: usize) {
    assert!(
        nb > 0 && out_len.is_multiple_of(TILE_ROWS) && x_len == nb * (out_len / TILE_ROWS),
        "Q4_0x8 GEMV: {x_len} blocks of {nb} per tile for {out_len} outputs"
    );
}

/// The body of the `gemv_q4_0x8_q8_0_tiles` kernels (here and in `x86_vnni`): check the
/// lengths, then `$tile::<1>` (the module's inlined tile body) per tile of `nb` blocks, into
/// eight outputs each, prefetching [`GEMV_PREFETCH`] bytes ahead. Expand inside an `unsafe`
/// block of a function that enables `$tile`'s features.
macro_rules! gemv_q4_0x8_tiles {
    ($tile:ident, $x:expr, $nb:expr, $y:expr, $yd:expr, $ysum:expr, $out:expr) => {{
        let (x, nb, out): (&[BlockQ4_0x8], usize, &mut [f32]) = ($x, $nb, $out);
        let (y, yd, ysum): (&[BlockQ8_0], &[f32], &[i32]) = ($y, $yd, $ysum);
        $crate::kernels::x86::check_gemv_run(x.len(), nb, out.len());
        let (outs, _) = out.as_chunks_mut::<TILE_ROWS>();
        let tile_bytes = nb * std::mem::size_of::<BlockQ4_0x8>();
        for (t, o) in x.chunks_exact(nb).zip(outs) {
            // Prefetch hints never fault, past the tiles too; `wrapping_add` keeps the
            // pointer arithmetic defined whatever the distance.
            let ahead = t.as_ptr().cast::<i8>().wrapping_add(GEMV_PREFETCH);
            let mut off = 0;
            while off < tile_bytes {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(off));
                off += 64;
            }
            // (`$tile` panics on a short activation row, as the public kernel does.)
            let [r] = $tile::<1>(t, [y], [yd], [ysum]);
            *o = r;
        }
    }};
}
pub(super) use gemv_q4_0x8_tiles;

/// Four activation bytes `yq[4·j..4·j + 4]` as one i32, broadcast to eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn bcast4(yq: &[i8; 32], j: usize) -> __m256i {
    let b = &yq[4 * j..4 * j + 4];
    _mm256_set1_epi32(i32::from_le_bytes([
        b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8,
    ]))
}

/// The 32-byte chunk `j` (0..4) of a packed block's quants.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn chunk(qs: &[u8; 128], j: usize) -> __m256i {
    let c = &qs[32 * j..32 * j + 32];
    // SAFETY: AVX2 by contract; `c` is 32 bytes.
    unsafe { _mm256_loadu_si256(c.as_ptr().cast()) }
}

/// Eight Q4_0 rows ([`BlockQ4_0x8`] tile) × `A` Q8_0 activation rows, AVX2: per chunk `j` the
/// low nibbles (`vpand`) and the high ones (`vpsrlw` 4, `vpand`) as u8; per activation row
/// `vpmaddubsw` of each chunk with its four broadcast activation bytes (i16 pairs, ≤ 2·15·128
/// each), the eight chunks added in i16 (≤ 8·2·15·128 = 30720: exact) and widened by one
/// `vpmaddwd` with ones. See this module's `gemm_q4_0x8!` skeleton for the rest and the result (the scalar
/// reference's bits). `yd`, `ysum`: [`QuantizedActs::scales`], [`QuantizedActs::qsums`].
///
/// [`QuantizedActs::scales`]: super::quants::QuantizedActs::scales
/// [`QuantizedActs::qsums`]: super::quants::QuantizedActs::qsums
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
///
/// # Panics
/// If an activation row's block count differs from the tile's, or `yd`/`ysum` are shorter.
#[target_feature(enable = "avx2,fma,f16c")]
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
    // SAFETY: AVX2/FMA/F16C by contract; every load is inside a block struct (`chunk`,
    // `xb.d`: 16 bytes) and `bcast4` reads through a bounds-checked slice.
    unsafe {
        gemm_q4_0x8!(
            x,
            y,
            yd,
            ysum,
            A,
            |qs| {
                let m = _mm256_set1_epi8(0x0f);
                let c: [__m256i; 4] = core::array::from_fn(|j| chunk(qs, j));
                core::array::from_fn(|k| {
                    if k < 4 {
                        _mm256_and_si256(c[k], m)
                    } else {
                        _mm256_and_si256(_mm256_srli_epi16::<4>(c[k - 4]), m)
                    }
                })
            },
            |w, yq| {
                let mut p = _mm256_maddubs_epi16(w[0], bcast4(yq, 0));
                for (k, &wk) in w.iter().enumerate().skip(1) {
                    // Chunk k < 4: elements 4k..; chunk 4 + j: elements 16 + 4j.. (= 4k..).
                    p = _mm256_add_epi16(p, _mm256_maddubs_epi16(wk, bcast4(yq, k)));
                }
                _mm256_madd_epi16(p, _mm256_set1_epi16(1))
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
#[target_feature(enable = "avx2,fma,f16c")]
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

/// Q4_0 × Q8_0, bit-identical to [`super::quants::q4_0::vec_dot_q4_0_q8_0`]: per group of
/// eight blocks the terms `(sumi · dx) · dy` in one vector (`striped!`). `yd`: the
/// activation blocks' scales in f32, zero-padded to a multiple of 8
/// ([`QuantizedActs::scales`]).
///
/// [`QuantizedActs::scales`]: super::quants::QuantizedActs::scales
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
///
/// # Panics
/// If `x.len() != y.len()` or `yd` is shorter than `y` rounded up to 8.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0], yd: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len(), "Q4_0 vec_dot: block counts differ");
    // SAFETY: AVX2, FMA and F16C by contract; the loads are within the blocks and the
    // (length-checked) scale slices.
    unsafe {
        striped!(x, y, yd, yd, q4_0_block, |s, dx, _e, dy, _f| _mm256_mul_ps(
            _mm256_mul_ps(s, dx),
            dy
        ))
    }
}

/// Q4_1 × Q8_1, bit-identical to [`super::quants::q4_1::vec_dot_q4_1_q8_1`]: eight terms
/// `(dx · dy) · sumi + mx · sy` per vector (`striped!`). `yd`, `ys`: the activation blocks'
/// `d` and `s` in f32, zero-padded to a multiple of 8 ([`QuantizedActs::scales`] /
/// [`QuantizedActs::sums`]).
///
/// [`QuantizedActs::scales`]: super::quants::QuantizedActs::scales
/// [`QuantizedActs::sums`]: super::quants::QuantizedActs::sums
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
///
/// # Panics
/// If `x.len() != y.len()` or `yd`/`ys` are shorter than `y` rounded up to 8.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1], yd: &[f32], ys: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len(), "Q4_1 vec_dot: block counts differ");
    // SAFETY: as in `vec_dot_q4_0_q8_0`.
    unsafe {
        striped!(x, y, yd, ys, q4_1_block, |s, dx, mx, dy, sy| _mm256_add_ps(
            _mm256_mul_ps(_mm256_mul_ps(dx, dy), s),
            _mm256_mul_ps(mx, sy),
        ))
    }
}

/// Q8_0 × Q8_0, bit-identical to [`super::quants::q8::vec_dot_q8_0_q8_0`]: eight terms
/// `sumi · (dx · dy)` per vector (`striped!`); `yd` as for [`vec_dot_q4_0_q8_0`].
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
///
/// # Panics
/// If `x.len() != y.len()` or `yd` is shorter than `y` rounded up to 8.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0], yd: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len(), "Q8_0 vec_dot: block counts differ");
    // SAFETY: as in `vec_dot_q4_0_q8_0`.
    unsafe {
        striped!(x, y, yd, yd, q8_0_block, |s, dx, _e, dy, _f| _mm256_mul_ps(
            s,
            _mm256_mul_ps(dx, dy)
        ))
    }
}

/// Permute the 32 bytes of a chunk (elements `e0..e32`) so that byte `4k + r` of each 128-bit
/// half is element `8r + k` (low half, k in 0..4) / `8r + 4 + k` (high half): after
/// `maddubs` + `madd`, i32 lane `j` holds exactly the elements `≡ j (mod 8)`, the lanes of the
/// reference's `aux32`. Applied identically to both operands, it leaves every product intact.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn lane_permute(v: __m256i) -> __m256i {
    let v = _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
    let s = _mm256_setr_epi8(
        0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, //
        0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
    );
    _mm256_shuffle_epi8(v, s)
}

/// The 8 lane sums in order 0..7 (f32 additions left to right).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn lanes(v: __m256) -> [f32; 8] {
    let mut a = [0f32; 8];
    // SAFETY: AVX2 by contract; `a` is 8 f32s = 32 bytes.
    unsafe { _mm256_storeu_ps(a.as_mut_ptr(), v) };
    a
}

/// Q4_K × Q8_K, bit-identical to [`super::quants::k_quants::vec_dot_q4k_q8k`].
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
///
/// # Panics
/// If `x.len() != y.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q4k_q8k(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "Q4_K vec_dot: block counts differ");
    let mut sumf = 0f32;
    // SAFETY: AVX2 by contract; every load below is 32 bytes at offset 32·c (c < 4) of the
    // 128-byte `x.qs`, at offset 32·k (k < 8) of the 256-byte `y.qs`, or the whole 32-byte
    // `y.bsums`.
    unsafe {
        let m4 = _mm256_set1_epi8(0x0f);
        let mut sums = _mm256_setzero_ps();
        for (x, y) in x.iter().zip(y) {
            let (sc, mn) = super::quants::k_quants::scales_mins_k4(&x.scales);
            // Σ bsums[j]·mins[j/2], exact in i32.
            let mins16 = _mm256_setr_epi16(
                mn[0] as i16,
                mn[0] as i16,
                mn[1] as i16,
                mn[1] as i16, //
                mn[2] as i16,
                mn[2] as i16,
                mn[3] as i16,
                mn[3] as i16, //
                mn[4] as i16,
                mn[4] as i16,
                mn[5] as i16,
                mn[5] as i16, //
                mn[6] as i16,
                mn[6] as i16,
                mn[7] as i16,
                mn[7] as i16,
            );
            let bsums = _mm256_loadu_si256(y.bsums.as_ptr().cast());
            let summ = hsum_i32_8(_mm256_madd_epi16(bsums, mins16));

            let mut acc = _mm256_setzero_si256();
            let xq = x.qs.as_ptr();
            let yq = y.qs.as_ptr();
            for c in 0..4 {
                let q = lane_permute(_mm256_loadu_si256(xq.add(32 * c).cast()));
                let lo = _mm256_and_si256(q, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                let a0 = lane_permute(_mm256_loadu_si256(yq.add(64 * c).cast()));
                let a1 = lane_permute(_mm256_loadu_si256(yq.add(64 * c + 32).cast()));
                // u4 × i8 pairs ≤ 2·15·128: no saturation; then × scale (≤ 63) into i32.
                let p0 = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(lo, a0),
                    _mm256_set1_epi16(sc[2 * c] as i16),
                );
                let p1 = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(hi, a1),
                    _mm256_set1_epi16(sc[2 * c + 1] as i16),
                );
                acc = _mm256_add_epi32(acc, _mm256_add_epi32(p0, p1));
            }
            let d = f16(x.d) * y.d.get();
            sums = _mm256_add_ps(
                sums,
                _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(acc)),
            );
            let dmin = f16(x.dmin) * y.d.get();
            sumf -= dmin * summ as f32;
        }
        for s in lanes(sums) {
            sumf += s;
        }
    }
    sumf
}

/// Q6_K × Q8_K, bit-identical to [`super::quants::k_quants::vec_dot_q6k_q8k`].
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
///
/// # Panics
/// If `x.len() != y.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q6k_q8k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "Q6_K vec_dot: block counts differ");
    // SAFETY: AVX2 by contract; every load is 32 bytes at offset 64·h or 64·h + 32 (h < 2) of
    // the 128-byte `x.ql`, at 32·h of the 64-byte `x.qh`, or at 32·k (k < 8) of the 256-byte
    // `y.qs`.
    unsafe {
        let m4 = _mm256_set1_epi8(0x0f);
        let m2 = _mm256_set1_epi8(3);
        let k32 = _mm256_set1_epi8(32);
        let mut sums = _mm256_setzero_ps();
        for (x, y) in x.iter().zip(y) {
            let mut acc = _mm256_setzero_si256();
            for h in 0..2 {
                let ql0 = lane_permute(_mm256_loadu_si256(x.ql.as_ptr().add(64 * h).cast()));
                let ql1 = lane_permute(_mm256_loadu_si256(x.ql.as_ptr().add(64 * h + 32).cast()));
                let qh = lane_permute(_mm256_loadu_si256(x.qh.as_ptr().add(32 * h).cast()));
                // All shifts are of masked bytes, so no bit crosses a byte boundary.
                let q = [
                    _mm256_or_si256(
                        _mm256_and_si256(ql0, m4),
                        _mm256_slli_epi16::<4>(_mm256_and_si256(qh, m2)),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(ql1, m4),
                        _mm256_slli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(0x0c))),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                        _mm256_and_si256(qh, _mm256_set1_epi8(0x30)),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                        _mm256_srli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(-64))),
                    ),
                ];
                for (t, &q) in q.iter().enumerate() {
                    // Elements 128h + 32t .. +32: sub-blocks s (first 16) and s + 1.
                    let s = 8 * h + 2 * t;
                    let a = lane_permute(_mm256_loadu_si256(
                        y.qs.as_ptr().add(128 * h + 32 * t).cast(),
                    ));
                    // Σ (q − 32)·a = Σ q·a − 32·Σ a per i16 pair (q ≤ 63: ≤ 2·63·128, exact).
                    let p =
                        _mm256_sub_epi16(_mm256_maddubs_epi16(q, a), _mm256_maddubs_epi16(k32, a));
                    // After lane_permute, even i16s are sub-block s, odd ones s + 1.
                    let scale = _mm256_set1_epi32(
                        (x.scales[s] as i16 as u16 as i32) | ((x.scales[s + 1] as i32) << 16),
                    );
                    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, scale));
                }
            }
            let d = f16(x.d) * y.d.get();
            sums = _mm256_add_ps(
                sums,
                _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(acc)),
            );
        }
        let mut sumf = 0f32;
        for s in lanes(sums) {
            sumf += s;
        }
        sumf
    }
}

/// One 32-value block: `(d, 32 quants as i8, Σ quants)`, exactly as the scalar
/// `quantize_row_q8_0`/`_q8_1` compute them (for NaN-free input).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_block_q8(x: &[f32], qs: &mut [i8; QK]) -> (f32, i32) {
    debug_assert_eq!(x.len(), QK);
    // SAFETY: AVX2 by contract; `x` has 32 f32s (four 8-lane loads), `qs` 32 bytes.
    unsafe {
        let p = x.as_ptr();
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let sign = _mm256_set1_ps(-0.0);
        // max is order-independent for non-NaN values, so this equals the scalar fold.
        let mut m = _mm256_andnot_ps(sign, v[0]);
        for &vi in &v[1..] {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, vi));
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m1 = _mm_max_ss(m2, _mm_movehdup_ps(m2));
        let amax = _mm_cvtss_f32(m1);
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let idv = _mm256_set1_ps(id);
        let half = _mm256_set1_ps(0.5);
        let one = _mm256_set1_ps(1.0);
        let lo = _mm256_set1_ps(-128.0);
        let hi = _mm256_set1_ps(127.0);
        let mut q32 = [_mm256_setzero_si256(); 4];
        for (q, &vi) in q32.iter_mut().zip(&v) {
            let t = _mm256_mul_ps(vi, idv);
            // roundf: trunc, then away from zero if the (exact) fraction is ≥ 0.5.
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(t);
            let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(t, r));
            let step = _mm256_or_ps(_mm256_and_ps(t, sign), one);
            let up = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, half);
            let r = _mm256_add_ps(r, _mm256_and_ps(up, step));
            // `as i8`: NaN (from 0·inf) → 0, saturate to -128..=127 (±inf from a subnormal d).
            let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
            let r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
            *q = _mm256_cvtps_epi32(r);
        }
        let sum = hsum_i32_8(_mm256_add_epi32(
            _mm256_add_epi32(q32[0], q32[1]),
            _mm256_add_epi32(q32[2], q32[3]),
        ));
        // Pack i32 → i16 → i8 (values already in range), undoing the per-128-bit interleave.
        let w01 = _mm256_packs_epi32(q32[0], q32[1]);
        let w23 = _mm256_packs_epi32(q32[2], q32[3]);
        let b = _mm256_packs_epi16(w01, w23);
        let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(qs.as_mut_ptr().cast(), b);
        (d, sum)
    }
}

/// Q8_0 activation quantizer, byte-identical to [`super::quants::q8::quantize_row_q8_0`]
/// (`roundf` ties away from zero) for NaN-free input.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
///
/// # Panics
/// If `x.len() != 32 · y.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    assert_eq!(x.len(), y.len() * QK, "Q8_0 quantize: lengths differ");
    for (x, y) in x.chunks_exact(QK).zip(y.iter_mut()) {
        // SAFETY: AVX2 by contract; `x` is one 32-element chunk.
        let (d, _) = unsafe { quantize_block_q8(x, &mut y.qs) };
        y.d = F16Le::new(d);
    }
}

/// Q8_1 activation quantizer, byte-identical to [`super::quants::q8::quantize_row_q8_1`]
/// (`roundf` ties away from zero, `s = f16(Σq · d)`) for NaN-free input.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
///
/// # Panics
/// If `x.len() != 32 · y.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_row_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
    assert_eq!(x.len(), y.len() * QK, "Q8_1 quantize: lengths differ");
    for (x, y) in x.chunks_exact(QK).zip(y.iter_mut()) {
        // SAFETY: AVX2 by contract; `x` is one 32-element chunk.
        let (d, sum) = unsafe { quantize_block_q8(x, &mut y.qs) };
        y.d = F16Le::new(d);
        y.s = F16Le::new(sum as f32 * d);
    }
}

#[cfg(test)]
pub(super) mod tests {
    //! The AVX2 property tests; their generators are shared with [`super::super::x86_vnni`].
    use super::*;
    use crate::kernels::quants::q8::QK_K;
    use crate::kernels::quants::{k_quants, q4_0, q4_1, q8, F32Le, I16Le};

    fn have_avx2() -> bool {
        let ok = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        if !ok {
            eprintln!("NOTE: CPU lacks avx2/fma; x86 kernel test SKIPPED (not run)");
        }
        ok
    }

    /// xorshift64*.
    pub(crate) struct Rng(pub(crate) u64);
    impl Rng {
        pub(crate) fn u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        pub(crate) fn u8(&mut self) -> u8 {
            (self.u64() >> 56) as u8
        }
        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.u64() % n as u64) as usize
        }
        /// Uniform in [-1, 1).
        pub(crate) fn f(&mut self) -> f32 {
            ((self.u64() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        }
    }

    /// Block counts for the property tests: every tail length (0..8 after whole groups of
    /// eight), one and several groups.
    pub(crate) const COUNTS: [usize; 15] = [1, 2, 3, 4, 5, 6, 7, 8, 12, 17, 18, 21, 33, 48, 64];

    /// A random f16 scale, often extreme.
    pub(crate) fn scale(r: &mut Rng) -> F16Le {
        match r.below(8) {
            0 => F16Le::new(65504.0),
            1 => F16Le::new(-65504.0),
            2 => F16Le::new(6e-8),
            3 => F16Le::new(0.0),
            _ => F16Le::new(r.f() * 2.0),
        }
    }

    /// Quant bytes, in one of several modes: random, all 0x00, all 0xFF, extremes of i8.
    pub(crate) fn fill_bytes(r: &mut Rng, out: &mut [u8]) {
        let mode = r.below(6);
        for b in out.iter_mut() {
            *b = match mode {
                0 => 0x00,
                1 => 0xff,
                2 => [0x7f, 0x80, 0x81][r.below(3)],
                _ => r.u8(),
            };
        }
    }

    pub(crate) fn fill_i8(r: &mut Rng, out: &mut [i8]) {
        let mut b = vec![0u8; out.len()];
        fill_bytes(r, &mut b);
        for (o, b) in out.iter_mut().zip(b) {
            *o = b as i8;
        }
    }

    pub(crate) fn q4_0_row(r: &mut Rng, n: usize) -> Vec<BlockQ4_0> {
        (0..n)
            .map(|_| {
                let mut b = BlockQ4_0 {
                    d: scale(r),
                    qs: [0; 16],
                };
                fill_bytes(r, &mut b.qs);
                b
            })
            .collect()
    }

    pub(crate) fn q8_0_row(r: &mut Rng, n: usize) -> Vec<BlockQ8_0> {
        (0..n)
            .map(|_| {
                let mut b = BlockQ8_0 {
                    d: scale(r),
                    qs: [0; 32],
                };
                fill_i8(r, &mut b.qs);
                b
            })
            .collect()
    }

    fn q8k_row(r: &mut Rng, n: usize) -> Vec<BlockQ8K> {
        (0..n)
            .map(|_| {
                let mut qs = [0i8; QK_K];
                fill_i8(r, &mut qs);
                let mut bsums = [I16Le::new(0); 16];
                for (s, g) in bsums.iter_mut().zip(qs.chunks_exact(16)) {
                    *s = I16Le::new(g.iter().map(|&q| q as i16).sum());
                }
                let d = match r.below(6) {
                    0 => 0.0,
                    1 => 1e-30,
                    2 => -3e4,
                    _ => r.f(),
                };
                BlockQ8K {
                    d: F32Le::new(d),
                    qs,
                    bsums,
                }
            })
            .collect()
    }

    /// Pre-converted activation scales as `QuantizedActs` keeps them: f32, zero-padded to 8.
    pub(crate) fn pre(h: impl Iterator<Item = (F16Le, F16Le)>) -> (Vec<f32>, Vec<f32>) {
        let (mut d, mut s): (Vec<f32>, Vec<f32>) = h.map(|(a, b)| (a.get(), b.get())).unzip();
        d.resize(d.len().next_multiple_of(8), 0.0);
        s.resize(s.len().next_multiple_of(8), 0.0);
        (d, s)
    }

    /// `same` is bit-for-bit equality (NaN == NaN); the kernels are bit-identical to the
    /// reference, so no tolerance is needed (and none is used).
    pub(crate) fn same(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    /// The property test of a [`BlockQ4_0x8`] GEMM kernel (`$kernel::<A>`, this module's or
    /// `x86_vnni`'s): for every block count in [`COUNTS`] (every tail length), 30 random tiles
    /// of eight rows with extreme scales and quant bytes (all 0x00 / 0xFF, i8 extremes) times
    /// one to four activation rows (i8 -128 included): each row × activation value must be
    /// the bits of the GGUF-layout scalar reference [`q4_0::vec_dot_q4_0_q8_0`] (NaN = NaN).
    /// Four random Q8_0 activation rows of `nb` blocks with their f32 scales and quant sums,
    /// padded to a multiple of 8 as `QuantizedActs` keeps them (the GEMM kernels' inputs).
    #[allow(clippy::type_complexity)]
    pub(crate) fn gemm_acts(
        r: &mut Rng,
        nb: usize,
    ) -> (Vec<Vec<BlockQ8_0>>, Vec<Vec<f32>>, Vec<Vec<i32>>) {
        let ys: Vec<Vec<BlockQ8_0>> = (0..4).map(|_| q8_0_row(r, nb)).collect();
        let yd = ys
            .iter()
            .map(|y| pre(y.iter().map(|b| (b.d, b.d))).0)
            .collect();
        let ysum = ys
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
        (ys, yd, ysum)
    }

    macro_rules! check_gemm_q4_0x8 {
        // `$kernel::<A>` for each A in the list, on the first A activation rows.
        (@acts $kernel:ident, $check:ident, $tile:ident, $ys:ident, $yd:ident, $ysum:ident, [$($a:literal),*]) => {
            $($check(&$kernel::<$a>(
                &$tile,
                core::array::from_fn(|a| &$ys[a][..]),
                core::array::from_fn(|a| &$yd[a][..]),
                core::array::from_fn(|a| &$ysum[a][..]),
            ));)*
        };
        ($kernel:ident) => {{
            use crate::kernels::quants::q4_0x8;
            let mut r = Rng(0x0a11_0c8e_77aa_1234);
            for iter in 0..30 * COUNTS.len() {
                let nb = COUNTS[iter % COUNTS.len()];
                let rows = q4_0_row(&mut r, 8 * nb);
                let mut tile = vec![bytemuck::Zeroable::zeroed(); nb];
                q4_0x8::pack(&rows, 8, nb, &mut tile);
                let (ys, yd, ysum) = gemm_acts(&mut r, nb);
                let check = |got: &[[f32; 8]]| {
                    for (a, got) in got.iter().enumerate() {
                        for (row, &g) in got.iter().enumerate() {
                            let want =
                                q4_0::vec_dot_q4_0_q8_0(&rows[row * nb..(row + 1) * nb], &ys[a]);
                            assert!(
                                same(g, want),
                                "nb={nb} iter={iter} acts={}: act {a} row {row}: {g:e} vs {want:e}",
                                got.len()
                            );
                        }
                    }
                };
                // SAFETY: the caller checked the kernel's features; every activation row has
                // `nb` blocks and its scales / sums are padded to a multiple of 8.
                unsafe {
                    check_gemm_q4_0x8!(@acts $kernel, check, tile, ys, yd, ysum, [1, 2, 3, 4]);
                }
            }
        }};
    }
    pub(crate) use check_gemm_q4_0x8;

    #[test]
    fn gemm_q4_0x8_matches_scalar() {
        if !have_avx2() {
            return;
        }
        check_gemm_q4_0x8!(gemm_q4_0x8_q8_0);
    }

    #[test]
    fn q4_0_q8_0_matches_scalar() {
        if !have_avx2() {
            return;
        }
        let mut r = Rng(0x1234_5678_9abc_def1);
        for iter in 0..400 {
            let n = COUNTS[iter % COUNTS.len()];
            let x = q4_0_row(&mut r, n);
            let y = q8_0_row(&mut r, n);
            let want = q4_0::vec_dot_q4_0_q8_0(&x, &y);
            let (yd, _) = pre(y.iter().map(|b| (b.d, b.d)));
            // SAFETY: as above; `yd` padded to a multiple of 8.
            let got = unsafe { vec_dot_q4_0_q8_0(&x, &y, &yd) };
            assert!(same(got, want), "n={n} iter={iter}: {got} vs {want}");
        }
    }

    #[test]
    fn q4_1_q8_1_matches_scalar() {
        if !have_avx2() {
            return;
        }
        let mut r = Rng(0x2234_5678_9abc_def1);
        for iter in 0..400 {
            let n = COUNTS[iter % COUNTS.len()];
            let x: Vec<BlockQ4_1> = (0..n)
                .map(|_| {
                    let mut b = BlockQ4_1 {
                        d: scale(&mut r),
                        m: scale(&mut r),
                        qs: [0; 16],
                    };
                    fill_bytes(&mut r, &mut b.qs);
                    b
                })
                .collect();
            let y: Vec<BlockQ8_1> = (0..n)
                .map(|_| {
                    let mut b = BlockQ8_1 {
                        d: scale(&mut r),
                        s: scale(&mut r),
                        qs: [0; 32],
                    };
                    fill_i8(&mut r, &mut b.qs);
                    b
                })
                .collect();
            let want = q4_1::vec_dot_q4_1_q8_1(&x, &y);
            let (yd, ys) = pre(y.iter().map(|b| (b.d, b.s)));
            // SAFETY: as above; `yd`, `ys` padded to a multiple of 8.
            let got = unsafe { vec_dot_q4_1_q8_1(&x, &y, &yd, &ys) };
            assert!(same(got, want), "n={n} iter={iter}: {got} vs {want}");
        }
    }

    #[test]
    fn q8_0_q8_0_matches_scalar() {
        if !have_avx2() {
            return;
        }
        let mut r = Rng(0x3234_5678_9abc_def1);
        for iter in 0..400 {
            let n = COUNTS[iter % COUNTS.len()];
            let x = q8_0_row(&mut r, n);
            let y = q8_0_row(&mut r, n);
            let want = q8::vec_dot_q8_0_q8_0(&x, &y);
            let (yd, _) = pre(y.iter().map(|b| (b.d, b.d)));
            // SAFETY: as above; `yd` padded to a multiple of 8.
            let got = unsafe { vec_dot_q8_0_q8_0(&x, &y, &yd) };
            assert!(same(got, want), "n={n} iter={iter}: {got} vs {want}");
        }
    }

    #[test]
    fn q4k_q8k_matches_scalar() {
        if !have_avx2() {
            return;
        }
        let mut r = Rng(0x4234_5678_9abc_def1);
        for iter in 0..300 {
            let n = COUNTS[iter % COUNTS.len()].min(9);
            let x: Vec<BlockQ4K> = (0..n)
                .map(|_| {
                    let mut b = BlockQ4K {
                        d: scale(&mut r),
                        dmin: scale(&mut r),
                        scales: [0; 12],
                        qs: [0; 128],
                    };
                    fill_bytes(&mut r, &mut b.scales);
                    fill_bytes(&mut r, &mut b.qs);
                    b
                })
                .collect();
            let y = q8k_row(&mut r, n);
            let want = k_quants::vec_dot_q4k_q8k(&x, &y);
            // SAFETY: avx2+fma checked above; equal lengths.
            let got = unsafe { vec_dot_q4k_q8k(&x, &y) };
            assert!(same(got, want), "n={n} iter={iter}: {got} vs {want}");
        }
    }

    #[test]
    fn q6k_q8k_matches_scalar() {
        if !have_avx2() {
            return;
        }
        let mut r = Rng(0x5234_5678_9abc_def1);
        for iter in 0..300 {
            let n = COUNTS[iter % COUNTS.len()].min(9);
            let x: Vec<BlockQ6K> = (0..n)
                .map(|_| {
                    let mut b = BlockQ6K {
                        ql: [0; 128],
                        qh: [0; 64],
                        scales: [0; 16],
                        d: scale(&mut r),
                    };
                    fill_bytes(&mut r, &mut b.ql);
                    fill_bytes(&mut r, &mut b.qh);
                    fill_i8(&mut r, &mut b.scales);
                    b
                })
                .collect();
            let y = q8k_row(&mut r, n);
            let want = k_quants::vec_dot_q6k_q8k(&x, &y);
            // SAFETY: avx2+fma checked above; equal lengths.
            let got = unsafe { vec_dot_q6k_q8k(&x, &y) };
            assert!(same(got, want), "n={n} iter={iter}: {got} vs {want}");
        }
    }

    /// Random activations with ties (`(k + 0.5)·d` for the block's own `d`), zeros, tiny and
    /// huge values.
    fn acts(r: &mut Rng, n_blocks: usize) -> Vec<f32> {
        let mut x = vec![0f32; n_blocks * QK];
        for b in x.chunks_exact_mut(QK) {
            match r.below(8) {
                0 => {} // all zeros
                1 => {
                    // Exact ties: amax = 127·s, so d = s and x/d = k + 0.5 (s a power of 2).
                    let s = [1.0f32, 0.25, 2.0f32.powi(-20), 64.0][r.below(4)];
                    for v in b.iter_mut() {
                        let k = r.below(254) as f32 - 127.0;
                        *v = (k + 0.5) * s;
                    }
                    b[r.below(QK)] = 127.0 * s * if r.below(2) == 0 { 1.0 } else { -1.0 };
                }
                2 => {
                    for v in b.iter_mut() {
                        *v = r.f() * 1e-38; // subnormal d → infinite 1/d
                    }
                }
                3 => {
                    for v in b.iter_mut() {
                        *v = r.f() * 3e38;
                    }
                }
                4 => {
                    for v in b.iter_mut() {
                        *v = if r.below(3) == 0 { 0.0 } else { r.f() };
                    }
                    b[r.below(QK)] = [f32::INFINITY, f32::NEG_INFINITY, 1e-45][r.below(3)];
                }
                _ => {
                    for v in b.iter_mut() {
                        *v = r.f() * 10.0;
                    }
                }
            }
        }
        x
    }

    #[test]
    fn quantize_q8_0_and_q8_1_bytes_match_scalar() {
        if !have_avx2() {
            return;
        }
        let mut r = Rng(0x6234_5678_9abc_def1);
        let mut ties = 0usize;
        for iter in 0..500 {
            let n = COUNTS[iter % COUNTS.len()];
            let x = acts(&mut r, n);
            for b in x.chunks_exact(QK) {
                let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                ties += b.iter().filter(|&&v| (v * id).fract().abs() == 0.5).count();
            }
            let z0 = BlockQ8_0 {
                d: F16Le::new(0.0),
                qs: [0; 32],
            };
            let (mut want, mut got) = (vec![z0; n], vec![z0; n]);
            q8::quantize_row_q8_0(&x, &mut want);
            // SAFETY: avx2+fma checked above; lengths match.
            unsafe { quantize_row_q8_0(&x, &mut got) };
            assert_eq!(got, want, "Q8_0 n={n} iter={iter}");
            let z1 = BlockQ8_1 {
                d: F16Le::new(0.0),
                s: F16Le::new(0.0),
                qs: [0; 32],
            };
            let (mut want, mut got) = (vec![z1; n], vec![z1; n]);
            q8::quantize_row_q8_1(&x, &mut want);
            // SAFETY: as above.
            unsafe { quantize_row_q8_1(&x, &mut got) };
            assert_eq!(got, want, "Q8_1 n={n} iter={iter}");
        }
        assert!(ties > 1000, "too few exact ties exercised: {ties}");
    }

    #[test]
    fn f16_matches_half_for_all_bit_patterns() {
        if have_avx2() {
            for base in (0..=u16::MAX).step_by(16) {
                let h: [u16; 16] = core::array::from_fn(|k| base + k as u16);
                let w: [u32; 8] = core::array::from_fn(|k| h[k] as u32 | (h[k + 8] as u32) << 16);
                // SAFETY: avx2, fma and f16c checked above.
                let (lo, hi) = unsafe { f16_pairs(&w) };
                let got = [unsafe { lanes(lo) }, unsafe { lanes(hi) }].concat();
                for (g, h) in got.iter().zip(h) {
                    let want = F16Le(h.to_le_bytes()).get();
                    assert_eq!(g.to_bits(), want.to_bits(), "f16_pairs {h:#06x}");
                }
            }
        }
        for h in 0..=u16::MAX {
            let h = F16Le(h.to_le_bytes());
            let (got, want) = (f16(h), h.get());
            assert!(
                got.to_bits() == want.to_bits(),
                "{:#06x}: {got:e} ({:#010x}) vs {want:e} ({:#010x})",
                u16::from_le_bytes(h.0),
                got.to_bits(),
                want.to_bits()
            );
        }
    }

    #[test]
    #[should_panic(expected = "block counts differ")]
    fn length_mismatch_panics() {
        if !have_avx2() {
            panic!("block counts differ (skipped: no avx2/fma)");
        }
        let x = [BlockQ4_0 {
            d: F16Le::new(1.0),
            qs: [0; 16],
        }];
        // SAFETY: avx2+fma checked above; the length check panics before any SIMD.
        unsafe { vec_dot_q4_0_q8_0(&x, &[], &[0.0; 8]) };
    }
}
