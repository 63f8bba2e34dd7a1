//! Attention's kernels over the f16 KV cache: the scores `q · k_p` of one head's cached key
//! rows, their softmax with the weights rounded to f16, the f16 rounding of the query, and
//! the weighted sum `Σ w_p · v_p` of its cached value rows, with the f16 → f32 conversion done
//! in registers (F16C `vcvtph2ps` on x86, `fcvtl`/`fcvtl2` on aarch64), one call per head
//! and token over all its rows: the SIMD variants score four key rows per `q` load and keep a
//! head's output (64 values) in registers across every value row.
//!
//! Owns the scalar references ([`scores_ref`], [`weighted_sum_ref`], built on the one-row
//! [`dot_f16_ref`] and [`axpy_f16_ref`]; [`softmax_f16_ref`], [`round_f16_ref`]; the
//! grouped-query forms [`scores_group_ref`] and [`weighted_sum_group_ref`], the one-head
//! references for every query head of a KV head) and their SIMD variants, chosen once per
//! forward pass by [`KvOps::for_path`]. The grouped kernels of the AVX-512 VNNI and NEON
//! paths load and convert each cached row once for three query heads (the x86 ones also
//! prefetch the rows ahead: a decode step's weights stream through every cache level, so a
//! layer's keys and values come from DRAM again); the AVX2 path runs its one-head kernels
//! head by head. Every variant gives the
//! reference's bits (f16 → f32 is exact, the products and sums are the same f32 operations in
//! the same order, never fused; f32 → f16 rounds to nearest-even everywhere), so the kernel
//! path never changes a token. Sees rows `stride` values apart, not heads, positions or
//! models.

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::kernels::quants::lane_total;
use crate::kernels::KernelPath;

/// `Σ a·b` of `a` and the f16 row `b` (converted exactly) in f32 with eight lane sums
/// (element `i` in lane `i % 8`, lanes reduced like [`lane_total`]): the scalar reference of
/// the score kernels, the same bits as the f32 `dot_striped` the model used before on a
/// converted row (the tests keep that function to check it).
///
/// # Panics
/// If the lengths differ.
pub fn dot_f16_ref(a: &[f32], b: &[f16]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f16: lengths differ");
    let mut l = [0f32; 8];
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        l[i % 8] += x * y.to_f32();
    }
    lane_total(&l)
}

/// `out[i] += w · v[i]` (product then sum, in f32): the scalar reference of the value kernels.
///
/// # Panics
/// If the lengths differ.
pub fn axpy_f16_ref(out: &mut [f32], w: f32, v: &[f16]) {
    assert_eq!(out.len(), v.len(), "axpy_f16: lengths differ");
    for (o, v) in out.iter_mut().zip(v) {
        *o += w * v.to_f32();
    }
}

/// The scores of `out.len()` cached key rows: `out[p] = dot_f16_ref(q, k_p) · scale` with
/// `k_p = k[p·stride..][..q.len()]` (one head's rows in a cache of `stride` values per
/// position): the scalar reference of the score kernels.
///
/// # Panics
/// If `k` is too short for the rows (`(out.len() - 1)·stride + q.len()` values).
pub fn scores_ref(q: &[f32], k: &[f16], stride: usize, scale: f32, out: &mut [f32]) {
    check_rows(k.len(), stride, q.len(), out.len());
    for (p, o) in out.iter_mut().enumerate() {
        *o = dot_f16_ref(q, &k[p * stride..][..q.len()]) * scale;
    }
}

/// The weighted sum of `w.len()` cached value rows into `out`: `axpy_f16_ref(out, w[p], v_p)`
/// for `p = 0, 1, …` in order, with `v_p = v[p·stride..][..out.len()]`: the scalar reference
/// of the value kernels.
///
/// # Panics
/// If `v` is too short for the rows (`(w.len() - 1)·stride + out.len()` values).
pub fn weighted_sum_ref(out: &mut [f32], w: &[f32], v: &[f16], stride: usize) {
    check_rows(v.len(), stride, out.len(), w.len());
    for (p, &wp) in w.iter().enumerate() {
        axpy_f16_ref(out, wp, &v[p * stride..][..out.len()]);
    }
}

/// `(g, n)` of a group call: `g = heads_len / d` query heads (`d > 0`, whole rows) and
/// `n = per_len / g` positions (whole rows; `per_len` is 0 when `g` is).
///
/// # Panics
/// If `d` is 0 or a length is not whole rows.
fn group_shape(heads_len: usize, d: usize, per_len: usize) -> (usize, usize) {
    assert!(
        d > 0 && heads_len.is_multiple_of(d),
        "kv group: {heads_len} values are not whole heads of {d}"
    );
    let g = heads_len / d;
    assert!(
        if g == 0 {
            per_len == 0
        } else {
            per_len.is_multiple_of(g)
        },
        "kv group: {per_len} values are not {g} whole rows"
    );
    (g, per_len.checked_div(g).unwrap_or(0))
}

/// The scores of `g = qs.len() / d` query heads that share one KV head (grouped-query
/// attention: rows of `d` values of `qs`) over the same `n = out.len() / g` cached key rows:
/// `out[h·n..(h + 1)·n]` is [`scores_ref`] of head `h`. The scalar reference of the grouped
/// score kernels, which load and convert each key row once for all the heads they share it
/// with (SmolLM2: 3 query heads per KV head) and give every head [`scores_ref`]'s bits.
///
/// # Panics
/// As [`scores_ref`] per head, and if `d` is 0 or a length is not whole rows.
pub fn scores_group_ref(
    qs: &[f32],
    d: usize,
    k: &[f16],
    stride: usize,
    scale: f32,
    out: &mut [f32],
) {
    scores_each(scores_ref, qs, d, k, stride, scale, out)
}

/// The weighted sums of `g = out.len() / d` heads that share one KV head, over the same
/// `n = w.len() / g` cached value rows: head `h`'s output `out[h·d..(h + 1)·d]` gets
/// [`weighted_sum_ref`] with its weights `w[h·n..(h + 1)·n]`. The scalar reference of the
/// grouped value kernels.
///
/// # Panics
/// As [`weighted_sum_ref`] per head, and if `d` is 0 or a length is not whole rows.
pub fn weighted_sum_group_ref(out: &mut [f32], d: usize, w: &[f32], v: &[f16], stride: usize) {
    weighted_sums_each(weighted_sum_ref, out, d, w, v, stride)
}

/// A grouped call done head by head with a one-head kernel: the references (with the
/// one-head references) and the paths without a sharing kernel (with theirs).
#[inline(always)]
fn scores_each(
    one: impl Fn(&[f32], &[f16], usize, f32, &mut [f32]),
    qs: &[f32],
    d: usize,
    k: &[f16],
    stride: usize,
    scale: f32,
    out: &mut [f32],
) {
    let (g, n) = group_shape(qs.len(), d, out.len());
    check_rows(k.len(), stride, d, n);
    for h in 0..g {
        one(&qs[h * d..][..d], k, stride, scale, &mut out[h * n..][..n]);
    }
}

/// As [`scores_each`], for the value kernels.
#[inline(always)]
fn weighted_sums_each(
    one: impl Fn(&mut [f32], &[f32], &[f16], usize),
    out: &mut [f32],
    d: usize,
    w: &[f32],
    v: &[f16],
    stride: usize,
) {
    let (g, n) = group_shape(out.len(), d, w.len());
    check_rows(v.len(), stride, d, n);
    for h in 0..g {
        one(&mut out[h * d..][..d], &w[h * n..][..n], v, stride);
    }
}

/// Every value rounded to the nearest f16 (ties to even) and back to f32, as ggml's f16
/// operands see them (attention's query before it meets the f16 keys): the scalar reference
/// of [`KvOps::round_f16`]. Values beyond f16's range become ±inf.
pub fn round_f16_ref(x: &mut [f32]) {
    for v in x {
        *v = f16::from_f32(*v).to_f32();
    }
}

/// The softmax of one head's scores, its weights rounded to f16 as ggml's f16 value product
/// sees them: `x[p] = f16(e_p · (1 / Σ e))` with `e_p = exp(x[p] - max x)` by
/// [`act::exp`](crate::kernels::act::exp), the sum in f64 with eight lane sums (element `p` in
/// lane `p % 8`, reduced in [`lane_total`]'s order); `1 / Σ` is rounded to f32 once. The
/// scalar reference of [`KvOps::softmax_f16`]. Meant for finite scores (NaN in, NaN-filled
/// out, but which NaN is not specified).
pub fn softmax_f16_ref(x: &mut [f32]) {
    let inv = softmax_exp(x);
    for v in x {
        *v = f16::from_f32(*v * inv).to_f32();
    }
}

/// The shared body of the softmax variants: `x[p] = exp(x[p] - max)` in place and the
/// reciprocal of the sum, as [`softmax_f16_ref`] defines them. Plain f32/f64 operations on
/// eight independent lanes, inlined into each variant so its target features vectorize them
/// without changing a bit (`max` is exact in any order for non-NaN values).
#[inline(always)]
fn softmax_exp(x: &mut [f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 8];
    let (c, r) = x.as_chunks_mut::<8>();
    for ch in c.iter() {
        for j in 0..8 {
            m[j] = m[j].max(ch[j]);
        }
    }
    for (j, v) in r.iter().enumerate() {
        m[j] = m[j].max(*v);
    }
    let max = ((m[0].max(m[4])).max(m[2].max(m[6]))).max((m[1].max(m[5])).max(m[3].max(m[7])));
    // Lane j sums x[i] for i ≡ j (mod 8) in increasing i; sixteen at a time where it can
    // (so 16-lane targets compute the exponentials in one vector), the same order.
    let mut s = [0f64; 8];
    let (c16, r16) = x.as_chunks_mut::<16>();
    for ch in c16.iter_mut() {
        for v in ch.iter_mut() {
            *v = crate::kernels::act::exp(*v - max);
        }
        for j in 0..8 {
            s[j] += ch[j] as f64;
        }
        for j in 0..8 {
            s[j] += ch[j + 8] as f64;
        }
    }
    let (c, r) = r16.as_chunks_mut::<8>();
    for ch in c.iter_mut() {
        for j in 0..8 {
            ch[j] = crate::kernels::act::exp(ch[j] - max);
            s[j] += ch[j] as f64;
        }
    }
    for (j, v) in r.iter_mut().enumerate() {
        *v = crate::kernels::act::exp(*v - max);
        s[j] += *v as f64;
    }
    let sum = ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));
    (1.0 / sum) as f32
}

/// Ask for columns `cols` of cached rows `rows` (`stride` values apart) into L2, ahead of a
/// layer's attention, each line once ([`prefetch_l2`](crate::kernels::prefetch_l2): a hint,
/// never a fault or a wait). Rows or columns past the cache are left out. Why: a decode
/// step's weights stream through every cache level, so by the time a layer's attention runs
/// its keys and values are back in DRAM, and the score kernel's own prefetch (32 rows ahead)
/// leaves it waiting on them; asked for during the stage before, they come while that stage
/// streams its weights.
pub fn prefetch_rows_l2(
    cache: &[f16],
    stride: usize,
    cols: std::ops::Range<usize>,
    rows: std::ops::Range<usize>,
) {
    const LINE: usize = 64;
    let cols = cols.start.min(stride)..cols.end.min(stride);
    if cols.is_empty() {
        return;
    }
    let bytes: &[u8] = bytemuck::cast_slice(bits(cache));
    let base = bytes.as_ptr() as usize;
    for r in rows {
        let Some(row) = bytes.get(2 * (r * stride + cols.start)..2 * (r * stride + cols.end))
        else {
            break;
        };
        // The lines the row's bytes touch, from the first line's start.
        let skew = (base + 2 * (r * stride + cols.start)) % LINE;
        let mut off = 0;
        while off < row.len() {
            crate::kernels::prefetch_l2(&row[off..]);
            off += if off == 0 { LINE - skew } else { LINE };
        }
    }
}

/// `rows` rows of `len` values, `stride` apart, must fit in `have` values.
fn check_rows(have: usize, stride: usize, len: usize, rows: usize) {
    if rows > 0 {
        let need = (rows - 1)
            .checked_mul(stride)
            .and_then(|x| x.checked_add(len));
        assert!(
            need.is_some_and(|n| n <= have),
            "kv: {rows} rows of {len} values {stride} apart do not fit in {have}"
        );
    }
}

/// A grouped score kernel: `(qs, d, k, stride, scale, out)` as [`scores_group_ref`].
pub type ScoresGroupFn = fn(&[f32], usize, &[f16], usize, f32, &mut [f32]);

/// The score and value kernels of one kernel path (plain function pointers: chosen once per
/// forward pass, called once per head and token over all its cached positions).
#[derive(Clone, Copy)]
pub struct KvOps {
    /// `scores_ref(q, k, stride, scale, out)`'s bits. Panics like it.
    pub scores: fn(&[f32], &[f16], usize, f32, &mut [f32]),
    /// `weighted_sum_ref(out, w, v, stride)`'s bits. Panics like it.
    pub weighted_sum: fn(&mut [f32], &[f32], &[f16], usize),
    /// `round_f16_ref(x)`'s bits.
    pub round_f16: fn(&mut [f32]),
    /// `softmax_f16_ref(x)`'s bits for non-NaN scores.
    pub softmax_f16: fn(&mut [f32]),
    /// `scores_group_ref(qs, d, k, stride, scale, out)`'s bits. Panics like it.
    pub scores_group: ScoresGroupFn,
    /// `weighted_sum_group_ref(out, d, w, v, stride)`'s bits. Panics like it.
    pub weighted_sum_group: fn(&mut [f32], usize, &[f32], &[f16], usize),
}

impl KvOps {
    /// The kernels for `path`, which must be one this CPU supports (as for every kernel
    /// choice; [`crate::kernels::active`] always is).
    #[allow(unused_variables)]
    pub fn for_path(path: KernelPath) -> KvOps {
        #[cfg(target_arch = "x86_64")]
        if matches!(path, KernelPath::Avx2 | KernelPath::Avx512Vnni) {
            // SAFETY (all): these paths are active (or passed by a test) only when the CPU
            // has avx2, fma and f16c, the x86 kernels' whole contract; the VNNI path's also
            // has avx512f and avx512vl, the grouped kernels' (32 vector registers).
            let mut ops = KvOps {
                scores: |q, k, s, c, o| unsafe { x86::scores(q, k, s, c, o) },
                weighted_sum: |o, w, v, s| unsafe { x86::weighted_sum(o, w, v, s) },
                round_f16: |x| unsafe { x86::round_f16(x) },
                softmax_f16: |x| unsafe { x86::softmax_f16(x) },
                scores_group: |q, d, k, s, c, o| {
                    scores_each(
                        |q, k, s, c, o| unsafe { x86::scores(q, k, s, c, o) },
                        q,
                        d,
                        k,
                        s,
                        c,
                        o,
                    )
                },
                weighted_sum_group: |o, d, w, v, s| {
                    weighted_sums_each(
                        |o, w, v, s| unsafe { x86::weighted_sum(o, w, v, s) },
                        o,
                        d,
                        w,
                        v,
                        s,
                    )
                },
            };
            if path == KernelPath::Avx512Vnni {
                ops.round_f16 = |x| unsafe { x86::round_f16_16(x) };
                ops.softmax_f16 = |x| unsafe { x86::softmax_f16_16(x) };
                ops.scores_group =
                    |q, d, k, s, c, o| unsafe { x86::scores_group(q, d, k, s, c, o) };
                ops.weighted_sum_group =
                    |o, d, w, v, s| unsafe { x86::weighted_sum_group(o, d, w, v, s) };
            }
            return ops;
        }
        #[cfg(target_arch = "aarch64")]
        if path != KernelPath::Scalar {
            return KvOps {
                scores: aarch64::scores,
                weighted_sum: aarch64::weighted_sum,
                round_f16: aarch64::round_f16,
                softmax_f16: aarch64::softmax_f16,
                scores_group: aarch64::scores_group,
                weighted_sum_group: aarch64::weighted_sum_group,
            };
        }
        KvOps {
            scores: scores_ref,
            weighted_sum: weighted_sum_ref,
            round_f16: round_f16_ref,
            softmax_f16: softmax_f16_ref,
            scores_group: scores_group_ref,
            weighted_sum_group: weighted_sum_group_ref,
        }
    }
}

/// The f16 row's bits (half's own reinterpretation: no copy).
#[inline(always)]
fn bits(v: &[f16]) -> &[u16] {
    v.reinterpret_cast()
}

/// The scalar tail of the SIMD value kernels: output values `t0..` (`tail`, under 8) summed
/// over every row, in row order like [`weighted_sum_ref`].
#[inline(always)]
fn tail_sum(tail: &mut [f32], t0: usize, w: &[f32], v: &[u16], stride: usize) {
    for (p, &wp) in w.iter().enumerate() {
        for (i, o) in tail.iter_mut().enumerate() {
            *o += wp * f16::from_bits(v[p * stride + t0 + i]).to_f32();
        }
    }
}

/// Key rows scored per step of the SIMD score loops: four independent accumulator chains
/// over one `q` load.
const SCORE_ROWS: usize = 4;

/// Output chunks of eight values the SIMD value loops keep in registers across every
/// position (64 values: a head of SmolLM2 in one pass).
const SUM_CHUNKS: usize = 8;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use core::arch::x86_64::*;

    /// `R` key rows from row `p` (bounds checked by the caller): `out[p + j]` for `j < R`.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn score_rows<const R: usize>(
        q: &[f32],
        k: &[u16],
        stride: usize,
        scale: f32,
        p: usize,
        out: &mut [f32],
    ) {
        let d = q.len();
        let rows: [&[u16]; R] = core::array::from_fn(|j| &k[(p + j) * stride..][..d]);
        let (qc, qr) = q.as_chunks::<8>();
        let mut l = [[0f32; 8]; R];
        // SAFETY: AVX2 and F16C by contract; each load reads one 8-element chunk (32 bytes of
        // `q`, 16 bytes of a row's f16 bits, both inside their slices), the stores write the
        // 8 f32 of an `l`.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); R];
            for (c, x) in qc.iter().enumerate() {
                let x = _mm256_loadu_ps(x.as_ptr());
                for j in 0..R {
                    let y = _mm256_cvtph_ps(_mm_loadu_si128(rows[j][8 * c..].as_ptr().cast()));
                    acc[j] = _mm256_add_ps(acc[j], _mm256_mul_ps(x, y));
                }
            }
            for j in 0..R {
                _mm256_storeu_ps(l[j].as_mut_ptr(), acc[j]);
            }
        }
        for j in 0..R {
            let tail = &rows[j][8 * qc.len()..];
            for (i, (x, &y)) in qr.iter().zip(tail).enumerate() {
                l[j][i] += x * f16::from_bits(y).to_f32();
            }
            out[p + j] = lane_total(&l[j]) * scale;
        }
    }

    /// Eight key rows from row `p` for a `q` of whole 8-value chunks (bounds checked by the
    /// caller): the eight lane sums reduced in registers, in [`lane_total`]'s order, so
    /// `out[p..p + 8]` is one store. With `t = lanes 0..4 + lanes 4..8` of a row's sums,
    /// `lane_total` is `(t0 + t2) + (t1 + t3)`; here `vperm2f128` pairs row `j`'s and row
    /// `j + 4`'s halves so one add makes both rows' `t`, two `vshufps` + add make every
    /// `t0 + t2` and `t1 + t3`, two more + add the totals (IEEE addition is commutative, so
    /// operand order inside each add does not change a bit).
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn score_rows8(
        q: &[f32],
        k: &[u16],
        stride: usize,
        scale: f32,
        p: usize,
        out: &mut [f32],
    ) {
        let d = q.len();
        // Each row sliced to `d` values once (bounds-checked here), then read through
        // pointers in the loop, where per-load slicing cost as much as the loads.
        let rows: [*const u16; 8] = core::array::from_fn(|j| k[(p + j) * stride..][..d].as_ptr());
        let (qc, _) = q.as_chunks::<8>();
        let out: &mut [f32; 8] = (&mut out[p..p + 8]).try_into().expect("eight scores");
        // SAFETY: AVX2 and F16C by contract; each load reads one 8-element chunk `8c..8c + 8`
        // with `c < d / 8` (32 bytes of `q`, 16 bytes of a row's f16 bits, each row `d` long:
        // sliced above); the store writes the 8 f32 of `out`.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 8];
            for (c, x) in qc.iter().enumerate() {
                let x = _mm256_loadu_ps(x.as_ptr());
                for j in 0..8 {
                    let y = _mm256_cvtph_ps(_mm_loadu_si128(rows[j].add(8 * c).cast()));
                    acc[j] = _mm256_add_ps(acc[j], _mm256_mul_ps(x, y));
                }
            }
            _mm256_storeu_ps(
                out.as_mut_ptr(),
                _mm256_mul_ps(total8(&acc), _mm256_set1_ps(scale)),
            );
        }
    }

    /// Eight rows' lane sums (`acc[j]` of row `j`) reduced to their [`lane_total`]s, row `j`
    /// in lane `j`: the reduction [`score_rows8`] describes.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn total8(acc: &[__m256; 8]) -> __m256 {
        // t of rows j (low half) and j + 4 (high half).
        let t: [__m256; 4] = core::array::from_fn(|j| {
            _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(acc[j], acc[j + 4]),
                _mm256_permute2f128_ps::<0x31>(acc[j], acc[j + 4]),
            )
        });
        // [t0 + t2, t1 + t3] of rows (j, j + 1) per half.
        let u = |a: __m256, b: __m256| {
            _mm256_add_ps(
                _mm256_shuffle_ps::<0b01_00_01_00>(a, b),
                _mm256_shuffle_ps::<0b11_10_11_10>(a, b),
            )
        };
        let (u01, u23) = (u(t[0], t[1]), u(t[2], t[3]));
        // (t0 + t2) + (t1 + t3) of rows 0..4 (low half) and 4..8 (high half).
        _mm256_add_ps(
            _mm256_shuffle_ps::<0b10_00_10_00>(u01, u23),
            _mm256_shuffle_ps::<0b11_01_11_01>(u01, u23),
        )
    }

    /// How far ahead (in rows) the grouped kernels prefetch the cache rows they will read:
    /// a decode step's weights stream through every cache level, so each layer's cached keys
    /// and values come from DRAM again, 8 rows (16 lines) at a time in the score steps.
    const KV_PREFETCH_ROWS: usize = 32;

    /// Prefetch the first `d` values of rows `0..rows` (those below `n`) at once: the rows a
    /// grouped kernel reads before its own prefetch distance, which would otherwise be
    /// demand misses, eight rows at a time.
    #[inline(always)]
    fn prefetch_first_rows(x: &[u16], stride: usize, d: usize, rows: usize, n: usize) {
        for p in (0..rows.min(n)).step_by(8) {
            prefetch_rows(x, stride, d, p, n);
        }
    }

    /// Prefetch the first `d` values of rows `p..p + 8` (those below `n`).
    #[inline(always)]
    fn prefetch_rows(k: &[u16], stride: usize, d: usize, p: usize, n: usize) {
        for r in p..(p + 8).min(n) {
            let row = k[r * stride..][..d].as_ptr();
            for off in (0..d).step_by(32) {
                // SAFETY: a prefetch never faults; the address is inside row `r` (sliced
                // above), and `_mm_prefetch` is SSE, in every x86_64 baseline.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(row.add(off).cast()) };
            }
        }
    }

    /// Query heads per step of the grouped kernels: three heads × eight rows of scores (or
    /// × 64 output values) is 24 accumulators, which with AVX-512VL's 32 vector registers
    /// leaves room for the heads' `q` chunks (or weights) and the converted row.
    const GROUP_STEP: usize = 3;

    /// [`score_rows8`] for `H` heads (`qs`: `H` rows of `d` values, `d` a multiple of 8)
    /// over the same eight key rows from row `p`, each row chunk loaded and converted once
    /// for all of them; head `h`'s scores go to `out[h·n + p..][..8]`. Every head gets
    /// [`score_rows8`]'s bits (the same operations per head, in the same order).
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA, F16C, AVX-512F and AVX-512VL.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn score_rows8_group<const H: usize>(
        qs: &[f32],
        d: usize,
        k: &[u16],
        stride: usize,
        scale: f32,
        p: usize,
        out: &mut [f32],
        n: usize,
    ) {
        // Each row and each head's q sliced to `d` values once (bounds-checked here), then
        // read through pointers in the loop, where per-load slicing cost as much as the loads.
        let rows: [*const u16; 8] = core::array::from_fn(|j| k[(p + j) * stride..][..d].as_ptr());
        let q: [*const f32; H] = core::array::from_fn(|h| qs[h * d..][..d].as_ptr());
        // SAFETY: the features by contract; each load reads one whole 8-element chunk
        // `8c..8c + 8` with `c < d / 8` of a `q` row (32 bytes) or of a key row (16 bytes of
        // f16 bits), each `d` long (sliced above); each store writes 8 f32 of `out`, inside
        // by the slicing.
        unsafe {
            // Rows 2i (low half) and 2i + 1 (high half) in one zmm: lane l of each half sums
            // q[8c + l]·k[8c + l] over c in order, as the 8-lane form does per row.
            let mut acc = [[_mm512_setzero_ps(); 4]; H];
            for c in 0..d / 8 {
                let x: [__m512; H] = core::array::from_fn(|h| {
                    let x = _mm256_castps_pd(_mm256_loadu_ps(q[h].add(8 * c)));
                    _mm512_castpd_ps(_mm512_broadcast_f64x4(x))
                });
                for i in 0..4 {
                    let lo = _mm_loadu_si128(rows[2 * i].add(8 * c).cast());
                    let hi = _mm_loadu_si128(rows[2 * i + 1].add(8 * c).cast());
                    let y = _mm512_cvtph_ps(_mm256_set_m128i(hi, lo));
                    for h in 0..H {
                        acc[h][i] = _mm512_add_ps(acc[h][i], _mm512_mul_ps(x[h], y));
                    }
                }
            }
            let sv = _mm256_set1_ps(scale);
            for h in 0..H {
                let rows: [__m256; 8] = core::array::from_fn(|j| {
                    let a = acc[h][j / 2];
                    if j % 2 == 0 {
                        _mm512_castps512_ps256(a)
                    } else {
                        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a)))
                    }
                });
                let o = &mut out[h * n + p..][..8];
                _mm256_storeu_ps(o.as_mut_ptr(), _mm256_mul_ps(total8(&rows), sv));
            }
        }
    }

    /// [`scores_group_ref`](super::scores_group_ref)'s bits: heads in steps of
    /// [`GROUP_STEP`] sharing each key row's load and conversion eight rows at a time, the
    /// last rows (under eight) and heads whose length is not whole 8-value chunks as
    /// [`scores`] does them.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA, F16C, AVX-512F and AVX-512VL.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
    pub unsafe fn scores_group(
        qs: &[f32],
        d: usize,
        k: &[f16],
        stride: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        let (g, n) = group_shape(qs.len(), d, out.len());
        check_rows(k.len(), stride, d, n);
        if !d.is_multiple_of(8) {
            // SAFETY: AVX2, FMA and F16C by contract.
            return scores_each(
                |q, k, s, c, o| unsafe { scores(q, k, s, c, o) },
                qs,
                d,
                k,
                stride,
                scale,
                out,
            );
        }
        let k16 = bits(k);
        prefetch_first_rows(k16, stride, d, KV_PREFETCH_ROWS, n);
        let mut h0 = 0;
        while h0 < g {
            let hb = (g - h0).min(GROUP_STEP);
            let (qb, ob) = (&qs[h0 * d..(h0 + hb) * d], &mut out[h0 * n..(h0 + hb) * n]);
            let mut p = 0;
            while p + 8 <= n {
                prefetch_rows(k16, stride, d, p + KV_PREFETCH_ROWS, n);
                // SAFETY: the features by contract; rows `p..p + 8` are inside `k` (checked
                // for `n` rows above).
                unsafe {
                    match hb {
                        3 => score_rows8_group::<3>(qb, d, k16, stride, scale, p, ob, n),
                        2 => score_rows8_group::<2>(qb, d, k16, stride, scale, p, ob, n),
                        _ => score_rows8_group::<1>(qb, d, k16, stride, scale, p, ob, n),
                    }
                }
                p += 8;
            }
            for h in 0..hb {
                let (q, o) = (&qb[h * d..][..d], &mut ob[h * n..][..n]);
                // SAFETY: the features by contract; rows `p..n` are inside `k` (checked).
                unsafe { score_rest(q, k16, stride, scale, p, o) };
            }
            h0 += hb;
        }
    }

    /// [`sum_chunks`] for `H` heads (`out`: `H` rows of `d` values; `w`: `H` rows of `n`
    /// weights) over the same value rows: output chunks `c0..c0 + 2P` of every head, two
    /// chunks (16 values, one zmm) at a time, each row's 16 values loaded and converted once
    /// for all heads. Every output value is the same sum in the same order as in
    /// [`sum_chunks`] (lane by lane over the rows), so every head gets its bits.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA, F16C, AVX-512F and AVX-512VL.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn sum_chunks_group<const H: usize, const P: usize>(
        out: &mut [f32],
        d: usize,
        c0: usize,
        w: &[f32],
        n: usize,
        v: &[u16],
        stride: usize,
    ) {
        let ws: [&[f32]; H] = core::array::from_fn(|h| &w[h * n..][..n]);
        // SAFETY: the features by contract; loads and stores are whole 16-element pairs of
        // chunks `8(c0 + 2i)..` with `8(c0 + 2P) ≤ d` (the caller) of a head's `d` outputs
        // (inside `out`, `H·d` long: the slicing checks it) and of each row's first `d`
        // values, inside `v` (the caller checked every row).
        unsafe {
            let o: [&mut [f32]; H] = {
                let mut rest = &mut out[..H * d];
                core::array::from_fn(|_| {
                    let (a, b) = core::mem::take(&mut rest).split_at_mut(d);
                    rest = b;
                    a
                })
            };
            let mut acc: [[__m512; P]; H] = core::array::from_fn(|h| {
                core::array::from_fn(|i| _mm512_loadu_ps(o[h][8 * c0 + 16 * i..][..16].as_ptr()))
            });
            for p in 0..n {
                if p % 8 == 0 {
                    prefetch_rows(v, stride, 8 * c0 + 16 * P, p + 2 * KV_PREFETCH_ROWS, n);
                }
                let wv: [__m512; H] = core::array::from_fn(|h| _mm512_set1_ps(ws[h][p]));
                let row = &v[p * stride + 8 * c0..][..16 * P];
                for i in 0..P {
                    let y = _mm512_cvtph_ps(_mm256_loadu_si256(row[16 * i..].as_ptr().cast()));
                    for h in 0..H {
                        acc[h][i] = _mm512_add_ps(acc[h][i], _mm512_mul_ps(wv[h], y));
                    }
                }
            }
            for h in 0..H {
                for i in 0..P {
                    _mm512_storeu_ps(o[h][8 * c0 + 16 * i..][..16].as_mut_ptr(), acc[h][i]);
                }
            }
        }
    }

    /// [`weighted_sum_group_ref`](super::weighted_sum_group_ref)'s bits: heads in steps of
    /// [`GROUP_STEP`] sharing each value row's load and conversion for [`SUM_CHUNKS`] output
    /// chunks at a time, the rest of each head as [`weighted_sum`] does it.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA, F16C, AVX-512F and AVX-512VL.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
    pub unsafe fn weighted_sum_group(
        out: &mut [f32],
        d: usize,
        w: &[f32],
        v: &[f16],
        stride: usize,
    ) {
        let (g, n) = group_shape(out.len(), d, w.len());
        check_rows(v.len(), stride, d, n);
        let v16 = bits(v);
        prefetch_first_rows(v16, stride, d, 2 * KV_PREFETCH_ROWS, n);
        let chunks = d / 8;
        // [`SUM_CHUNKS`] output chunks per pass, as pairs (one zmm each).
        const PAIRS: usize = SUM_CHUNKS / 2;
        let mut h0 = 0;
        while h0 < g {
            let hb = (g - h0).min(GROUP_STEP);
            let (ob, wb) = (&mut out[h0 * d..(h0 + hb) * d], &w[h0 * n..(h0 + hb) * n]);
            let mut c = 0;
            while c + SUM_CHUNKS <= chunks {
                // SAFETY: the features by contract; chunks `c..c + SUM_CHUNKS` lie inside
                // each head's `d` values, and every row inside `v` (checked above).
                unsafe {
                    match hb {
                        3 => sum_chunks_group::<3, PAIRS>(ob, d, c, wb, n, v16, stride),
                        2 => sum_chunks_group::<2, PAIRS>(ob, d, c, wb, n, v16, stride),
                        _ => sum_chunks_group::<1, PAIRS>(ob, d, c, wb, n, v16, stride),
                    }
                }
                c += SUM_CHUNKS;
            }
            for h in 0..hb {
                let (o, wh) = (&mut ob[h * d..][..d], &wb[h * n..][..n]);
                let (oc, or) = o.as_chunks_mut::<8>();
                // SAFETY: the features by contract; every row is inside `v` (checked).
                unsafe { sum_rest(oc, or, c, wh, v16, stride) };
            }
            h0 += hb;
        }
    }

    /// [`scores_ref`](super::scores_ref)'s bits: eight rows at a time with the sums reduced
    /// in registers where `q` is whole 8-value chunks (a head of 64), else [`SCORE_ROWS`].
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores(q: &[f32], k: &[f16], stride: usize, scale: f32, out: &mut [f32]) {
        check_rows(k.len(), stride, q.len(), out.len());
        let k = bits(k);
        let n = out.len();
        let mut p = 0;
        if q.len().is_multiple_of(8) {
            while p + 8 <= n {
                // SAFETY: the features by contract; rows `p..p + 8` are inside `k` (checked).
                unsafe { score_rows8(q, k, stride, scale, p, out) };
                p += 8;
            }
        }
        // SAFETY: the features by contract; rows `p..n` are inside `k` (checked).
        unsafe { score_rest(q, k, stride, scale, p, out) }
    }

    /// Rows `p..out.len()` (all inside `k`, checked by the caller) [`SCORE_ROWS`] at a time,
    /// then one by one: the rows after the 8-row steps.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn score_rest(
        q: &[f32],
        k: &[u16],
        stride: usize,
        scale: f32,
        p: usize,
        out: &mut [f32],
    ) {
        let (n, mut p) = (out.len(), p);
        // SAFETY (both): the features by contract; rows `p..p + R` are inside `k`.
        while p + SCORE_ROWS <= n {
            unsafe { score_rows::<SCORE_ROWS>(q, k, stride, scale, p, out) };
            p += SCORE_ROWS;
        }
        while p < n {
            unsafe { score_rows::<1>(q, k, stride, scale, p, out) };
            p += 1;
        }
    }

    /// Output chunks `c0..c0 + M` (of 8) summed over every row in registers.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn sum_chunks<const M: usize>(
        oc: &mut [[f32; 8]],
        c0: usize,
        w: &[f32],
        v: &[u16],
        stride: usize,
    ) {
        // SAFETY: AVX2 and F16C by contract; loads and stores are whole 8-element chunks of
        // `oc` (`c0 + M ≤ oc.len()` by the caller) and of each row, whose `8·(c0 + M)` first
        // values lie inside `v` (the caller checked every row of `oc`'s full length).
        unsafe {
            let mut acc: [__m256; M] =
                core::array::from_fn(|i| _mm256_loadu_ps(oc[c0 + i].as_ptr()));
            for (p, &wp) in w.iter().enumerate() {
                let wv = _mm256_set1_ps(wp);
                let row = &v[p * stride + 8 * c0..][..8 * M];
                for i in 0..M {
                    let y = _mm256_cvtph_ps(_mm_loadu_si128(row[8 * i..].as_ptr().cast()));
                    acc[i] = _mm256_add_ps(acc[i], _mm256_mul_ps(wv, y));
                }
            }
            for i in 0..M {
                _mm256_storeu_ps(oc[c0 + i].as_mut_ptr(), acc[i]);
            }
        }
    }

    /// [`weighted_sum_ref`](super::weighted_sum_ref)'s bits: per output element the same
    /// products and sums in the same row order, [`SUM_CHUNKS`] chunks of the output held in
    /// registers over all rows.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn weighted_sum(out: &mut [f32], w: &[f32], v: &[f16], stride: usize) {
        check_rows(v.len(), stride, out.len(), w.len());
        let v = bits(v);
        let (oc, or) = out.as_chunks_mut::<8>();
        let mut c = 0;
        // SAFETY: the features by contract; chunks `c..c + M` are inside `oc`.
        while c + SUM_CHUNKS <= oc.len() {
            unsafe { sum_chunks::<SUM_CHUNKS>(oc, c, w, v, stride) };
            c += SUM_CHUNKS;
        }
        // SAFETY: the features by contract; every row is inside `v` (checked).
        unsafe { sum_rest(oc, or, c, w, v, stride) }
    }

    /// Output chunks `c..` (of 8) one at a time, then the values after the last whole
    /// chunk (`or`): the part of a head after the [`SUM_CHUNKS`] steps.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; every row's first `8·oc.len() + or.len()`
    /// values must lie inside `v` (the callers check every row).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn sum_rest(
        oc: &mut [[f32; 8]],
        or: &mut [f32],
        c: usize,
        w: &[f32],
        v: &[u16],
        stride: usize,
    ) {
        for ch in c..oc.len() {
            // SAFETY: the features by contract; chunk `ch` is inside `oc`.
            unsafe { sum_chunks::<1>(oc, ch, w, v, stride) };
        }
        tail_sum(or, 8 * oc.len(), w, v, stride);
    }

    /// `x · s` rounded to f16 and back, eight at a time (`vcvtps2ph` with round-to-nearest-even
    /// in its immediate, so MXCSR does not matter; then `vcvtph2ps`, exact), the tail through
    /// `half`: [`round_f16_ref`](super::round_f16_ref)'s bits when `s` is 1.
    ///
    /// # Safety
    /// The CPU must have AVX2 and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn scale_round(x: &mut [f32], s: f32) {
        let (c, r) = x.as_chunks_mut::<8>();
        // SAFETY: AVX and F16C by contract; each load and store is one whole 8-value chunk.
        unsafe {
            let sv = _mm256_set1_ps(s);
            for ch in c {
                let v = _mm256_mul_ps(_mm256_loadu_ps(ch.as_ptr()), sv);
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                _mm256_storeu_ps(ch.as_mut_ptr(), _mm256_cvtph_ps(h));
            }
        }
        for v in r {
            *v = f16::from_f32(*v * s).to_f32();
        }
    }

    /// [`round_f16_ref`](super::round_f16_ref)'s bits (`x · 1` is `x` exactly).
    ///
    /// # Safety
    /// The CPU must have AVX2 and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn round_f16(x: &mut [f32]) {
        // SAFETY: the features by contract.
        unsafe { scale_round(x, 1.0) }
    }

    /// [`scale_round`]'s bits sixteen at a time (`vcvtps2ph` on a zmm, round-to-nearest-even
    /// in its immediate), the rest through it.
    ///
    /// # Safety
    /// The CPU must have AVX2, F16C and AVX-512F.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
    #[inline]
    unsafe fn scale_round16(x: &mut [f32], s: f32) {
        let (c, r) = x.as_chunks_mut::<16>();
        // SAFETY: the features by contract; each load and store is one whole 16-value chunk.
        unsafe {
            let sv = _mm512_set1_ps(s);
            for ch in c {
                let v = _mm512_mul_ps(_mm512_loadu_ps(ch.as_ptr()), sv);
                let h = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                _mm512_storeu_ps(ch.as_mut_ptr(), _mm512_cvtph_ps(h));
            }
            scale_round(r, s)
        }
    }

    /// [`round_f16_ref`](super::round_f16_ref)'s bits, sixteen at a time.
    ///
    /// # Safety
    /// The CPU must have AVX2, F16C and AVX-512F.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
    pub unsafe fn round_f16_16(x: &mut [f32]) {
        // SAFETY: the features by contract.
        unsafe { scale_round16(x, 1.0) }
    }

    /// [`softmax_f16`]'s bits with AVX-512 enabled: the shared body's exponentials sixteen
    /// lanes at a time, then the scaling and rounding sixteen at a time.
    ///
    /// # Safety
    /// The CPU must have AVX2, F16C and AVX-512F.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
    pub unsafe fn softmax_f16_16(x: &mut [f32]) {
        let inv = softmax_exp(x);
        // SAFETY: the features by contract.
        unsafe { scale_round16(x, inv) }
    }

    /// [`softmax_f16_ref`](super::softmax_f16_ref)'s bits: its body compiled with AVX2, then
    /// the scaling and rounding eight at a time.
    ///
    /// # Safety
    /// The CPU must have AVX2 and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn softmax_f16(x: &mut [f32]) {
        let inv = softmax_exp(x);
        // SAFETY: the features by contract.
        unsafe { scale_round(x, inv) }
    }
}

#[cfg(target_arch = "aarch64")]
mod aarch64 {
    use super::*;
    use core::arch::aarch64::*;

    /// Eight f16 (as bits) to f32: (`fcvtl` of the low four, `fcvtl2` of the high four).
    /// Exact; through `asm!` because `vcvt_f32_f16` needs the unstable `f16` type.
    #[inline(always)]
    fn cvt8(b: &[u16]) -> (float32x4_t, float32x4_t) {
        assert!(b.len() >= 8);
        // SAFETY: `b` has at least 8 values (checked just above).
        unsafe { cvt8_at(b.as_ptr()) }
    }

    /// [`cvt8`] of the 8 values at `b`, unchecked (for loops that sliced their rows once).
    ///
    /// # Safety
    /// `b` must point to 8 readable `u16`.
    #[inline(always)]
    unsafe fn cvt8_at(b: *const u16) -> (float32x4_t, float32x4_t) {
        // SAFETY: 16 readable bytes by contract for `vld1q_u16`; `fcvtl`/`fcvtl2` are base
        // AArch64 (no FP16 extension needed for conversions), register-only, no memory,
        // stack or flags.
        unsafe {
            let v = vld1q_u16(b);
            let (lo, hi): (float32x4_t, float32x4_t);
            core::arch::asm!(
                "fcvtl {0:v}.4s, {2:v}.4h",
                "fcvtl2 {1:v}.4s, {2:v}.8h",
                out(vreg) lo,
                out(vreg) hi,
                in(vreg) v,
                options(pure, nomem, nostack)
            );
            (lo, hi)
        }
    }

    /// `R` key rows from row `p` (bounds checked by the caller): `out[p + j]` for `j < R`.
    #[inline(always)]
    fn score_rows<const R: usize>(
        q: &[f32],
        k: &[u16],
        stride: usize,
        scale: f32,
        p: usize,
        out: &mut [f32],
    ) {
        let d = q.len();
        let rows: [&[u16]; R] = core::array::from_fn(|j| &k[(p + j) * stride..][..d]);
        let (qc, qr) = q.as_chunks::<8>();
        let mut l = [[0f32; 8]; R];
        // SAFETY: NEON is part of the aarch64 baseline; each load reads 4 f32 of a chunk of 8
        // of `q`, the stores write the 8 f32 of an `l`.
        unsafe {
            let mut lo = [vdupq_n_f32(0.0); R];
            let mut hi = [vdupq_n_f32(0.0); R];
            for (c, x) in qc.iter().enumerate() {
                let (x0, x1) = (vld1q_f32(x.as_ptr()), vld1q_f32(x.as_ptr().add(4)));
                for j in 0..R {
                    let (y0, y1) = cvt8(&rows[j][8 * c..]);
                    lo[j] = vaddq_f32(lo[j], vmulq_f32(x0, y0));
                    hi[j] = vaddq_f32(hi[j], vmulq_f32(x1, y1));
                }
            }
            for j in 0..R {
                vst1q_f32(l[j].as_mut_ptr(), lo[j]);
                vst1q_f32(l[j].as_mut_ptr().add(4), hi[j]);
            }
        }
        for j in 0..R {
            let tail = &rows[j][8 * qc.len()..];
            for (i, (x, &y)) in qr.iter().zip(tail).enumerate() {
                l[j][i] += x * f16::from_bits(y).to_f32();
            }
            out[p + j] = lane_total(&l[j]) * scale;
        }
    }

    pub fn scores(q: &[f32], k: &[f16], stride: usize, scale: f32, out: &mut [f32]) {
        check_rows(k.len(), stride, q.len(), out.len());
        let k = bits(k);
        let n = out.len();
        let mut p = 0;
        while p + SCORE_ROWS <= n {
            score_rows::<SCORE_ROWS>(q, k, stride, scale, p, out);
            p += SCORE_ROWS;
        }
        while p < n {
            score_rows::<1>(q, k, stride, scale, p, out);
            p += 1;
        }
    }

    /// Output chunks `c0..c0 + M` (of 8) summed over every row in registers.
    #[inline(always)]
    fn sum_chunks<const M: usize>(
        oc: &mut [[f32; 8]],
        c0: usize,
        w: &[f32],
        v: &[u16],
        stride: usize,
    ) {
        let oc = &mut oc[c0..c0 + M];
        // SAFETY: NEON is part of the aarch64 baseline; loads and stores are 4 f32 of an
        // 8-element chunk of `oc`.
        unsafe {
            let mut lo: [float32x4_t; M] = core::array::from_fn(|i| vld1q_f32(oc[i].as_ptr()));
            let mut hi: [float32x4_t; M] =
                core::array::from_fn(|i| vld1q_f32(oc[i].as_ptr().add(4)));
            for (p, &wp) in w.iter().enumerate() {
                let wv = vdupq_n_f32(wp);
                let row = &v[p * stride + 8 * c0..][..8 * M];
                for i in 0..M {
                    let (y0, y1) = cvt8(&row[8 * i..]);
                    lo[i] = vaddq_f32(lo[i], vmulq_f32(wv, y0));
                    hi[i] = vaddq_f32(hi[i], vmulq_f32(wv, y1));
                }
            }
            for i in 0..M {
                vst1q_f32(oc[i].as_mut_ptr(), lo[i]);
                vst1q_f32(oc[i].as_mut_ptr().add(4), hi[i]);
            }
        }
    }

    /// [`score_rows`] for `H` query heads (`qs`: `H` rows of `d` values, `d` a multiple of
    /// 8) over the same `R` key rows from row `p`: each row's 8-value chunk is loaded and
    /// converted once for all the heads. Head `h`'s scores go to `out[h·n + p..][..R]`,
    /// [`score_rows`]'s bits (the same lanes, products and sums, in the same order).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn score_rows_group<const H: usize, const R: usize>(
        qs: &[f32],
        d: usize,
        k: &[u16],
        stride: usize,
        scale: f32,
        p: usize,
        out: &mut [f32],
        n: usize,
    ) {
        // Rows and heads sliced to `d` values once (bounds-checked here), then read through
        // pointers in the loop.
        let rows: [*const u16; R] = core::array::from_fn(|j| k[(p + j) * stride..][..d].as_ptr());
        let q: [*const f32; H] = core::array::from_fn(|h| qs[h * d..][..d].as_ptr());
        // SAFETY: NEON is part of the aarch64 baseline; each load reads the chunk
        // `8c..8c + 8` (`c < d / 8`) of a head's `q` (4 f32 at a time) or of a key row (16
        // bytes of f16 bits), each `d` long (sliced above); the rest is register-only.
        let sums: [[f32; R]; H] = unsafe {
            let mut lo = [[vdupq_n_f32(0.0); R]; H];
            let mut hi = [[vdupq_n_f32(0.0); R]; H];
            for c in 0..d / 8 {
                let x: [(float32x4_t, float32x4_t); H] = core::array::from_fn(|h| {
                    let x = q[h].add(8 * c);
                    (vld1q_f32(x), vld1q_f32(x.add(4)))
                });
                for j in 0..R {
                    let (y0, y1) = cvt8_at(rows[j].add(8 * c));
                    for h in 0..H {
                        lo[h][j] = vaddq_f32(lo[h][j], vmulq_f32(x[h].0, y0));
                        hi[h][j] = vaddq_f32(hi[h][j], vmulq_f32(x[h].1, y1));
                    }
                }
            }
            // lane_total in registers: t[i] = l[i] + l[i + 4] (lo + hi), then
            // (t0 + t2) + (t1 + t3) (the halves of t added, then the pair).
            core::array::from_fn(|h| {
                core::array::from_fn(|j| {
                    let t = vaddq_f32(lo[h][j], hi[h][j]);
                    vpadds_f32(vadd_f32(vget_low_f32(t), vget_high_f32(t)))
                })
            })
        };
        for h in 0..H {
            for j in 0..R {
                out[h * n + p + j] = sums[h][j] * scale;
            }
        }
    }

    /// Key rows per step of [`scores_group`]: 3 heads × 2 rows × 2 halves = 12 accumulators
    /// beside the heads' `q` chunks (38 instructions per chunk step for 6 head·rows in the
    /// release build; 4 rows spilled: 88 for 12, 3 rows: 61 for 9).
    const GROUP_ROWS: usize = 2;

    /// [`scores_group_ref`](super::scores_group_ref)'s bits: up to three heads at a time
    /// sharing each key row's load and conversion, two rows at a time (3 heads × 2 rows × 2
    /// halves = 12 accumulators of NEON's 32 registers); heads whose length is not whole
    /// 8-value chunks through [`scores`] head by head.
    pub fn scores_group(
        qs: &[f32],
        d: usize,
        k: &[f16],
        stride: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        let (g, n) = group_shape(qs.len(), d, out.len());
        check_rows(k.len(), stride, d, n);
        if !d.is_multiple_of(8) {
            return scores_each(scores, qs, d, k, stride, scale, out);
        }
        let k16 = bits(k);
        let mut h0 = 0;
        while h0 < g {
            let hb = (g - h0).min(3);
            let (qb, ob) = (&qs[h0 * d..(h0 + hb) * d], &mut out[h0 * n..(h0 + hb) * n]);
            let mut p = 0;
            while p < n {
                let r = if n - p >= GROUP_ROWS { GROUP_ROWS } else { 1 };
                match (hb, r) {
                    (3, GROUP_ROWS) => {
                        score_rows_group::<3, GROUP_ROWS>(qb, d, k16, stride, scale, p, ob, n)
                    }
                    (3, _) => score_rows_group::<3, 1>(qb, d, k16, stride, scale, p, ob, n),
                    (2, GROUP_ROWS) => {
                        score_rows_group::<2, GROUP_ROWS>(qb, d, k16, stride, scale, p, ob, n)
                    }
                    (2, _) => score_rows_group::<2, 1>(qb, d, k16, stride, scale, p, ob, n),
                    (_, GROUP_ROWS) => {
                        score_rows_group::<1, GROUP_ROWS>(qb, d, k16, stride, scale, p, ob, n)
                    }
                    _ => score_rows_group::<1, 1>(qb, d, k16, stride, scale, p, ob, n),
                }
                p += r;
            }
            h0 += hb;
        }
    }

    /// [`sum_chunks`] for `H` heads (`out`: `H` rows of `d` values; `w`: `H` rows of `n`
    /// weights) over the same value rows: output chunks `c0..c0 + M` of every head, each
    /// row chunk loaded and converted once for all of them. Every head gets [`sum_chunks`]'s
    /// bits (per output value the same products and sums, in row order).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn sum_chunks_group<const H: usize, const M: usize>(
        out: &mut [f32],
        d: usize,
        c0: usize,
        w: &[f32],
        n: usize,
        v: &[u16],
        stride: usize,
    ) {
        let ws: [&[f32]; H] = core::array::from_fn(|h| &w[h * n..][..n]);
        let o: [&mut [f32]; H] = {
            let mut rest = &mut out[..H * d];
            core::array::from_fn(|_| {
                let (a, b) = core::mem::take(&mut rest).split_at_mut(d);
                rest = b;
                &mut a[8 * c0..8 * (c0 + M)]
            })
        };
        // SAFETY: NEON is part of the aarch64 baseline; loads and stores are 4 f32 of an
        // 8-value chunk `i < M` of a head's outputs `8·c0..8·(c0 + M)` (sliced above).
        unsafe {
            let mut lo: [[float32x4_t; M]; H] = core::array::from_fn(|h| {
                core::array::from_fn(|i| vld1q_f32(o[h][8 * i..].as_ptr()))
            });
            let mut hi: [[float32x4_t; M]; H] = core::array::from_fn(|h| {
                core::array::from_fn(|i| vld1q_f32(o[h][8 * i + 4..].as_ptr()))
            });
            for p in 0..n {
                let wv: [float32x4_t; H] = core::array::from_fn(|h| vdupq_n_f32(ws[h][p]));
                let row = &v[p * stride + 8 * c0..][..8 * M];
                for i in 0..M {
                    let (y0, y1) = cvt8(&row[8 * i..]);
                    for h in 0..H {
                        lo[h][i] = vaddq_f32(lo[h][i], vmulq_f32(wv[h], y0));
                        hi[h][i] = vaddq_f32(hi[h][i], vmulq_f32(wv[h], y1));
                    }
                }
            }
            for h in 0..H {
                for i in 0..M {
                    vst1q_f32(o[h][8 * i..].as_mut_ptr(), lo[h][i]);
                    vst1q_f32(o[h][8 * i + 4..].as_mut_ptr(), hi[h][i]);
                }
            }
        }
    }

    /// Output chunks per pass of [`weighted_sum_group`]: 3 heads × 2 chunks × 2 halves = 12
    /// accumulators, the heads' weights and the converted chunks (17 of NEON's 32 registers).
    /// With 4 chunks LLVM spilled accumulators: 111 instructions per row for 12 head·chunks
    /// against 44 for 6 (`aarch64-linux-gnu-objdump` of the release build).
    const GROUP_SUM_CHUNKS: usize = 2;

    /// [`weighted_sum_group_ref`](super::weighted_sum_group_ref)'s bits: up to three heads at
    /// a time sharing each value row chunk's load and conversion, [`GROUP_SUM_CHUNKS`] output
    /// chunks per pass over the rows; the rest of each head as [`weighted_sum`] does it.
    pub fn weighted_sum_group(out: &mut [f32], d: usize, w: &[f32], v: &[f16], stride: usize) {
        let (g, n) = group_shape(out.len(), d, w.len());
        check_rows(v.len(), stride, d, n);
        let v16 = bits(v);
        let chunks = d / 8;
        let mut h0 = 0;
        while h0 < g {
            let hb = (g - h0).min(3);
            let (ob, wb) = (&mut out[h0 * d..(h0 + hb) * d], &w[h0 * n..(h0 + hb) * n]);
            let mut c = 0;
            while c + GROUP_SUM_CHUNKS <= chunks {
                const M: usize = GROUP_SUM_CHUNKS;
                match hb {
                    3 => sum_chunks_group::<3, M>(ob, d, c, wb, n, v16, stride),
                    2 => sum_chunks_group::<2, M>(ob, d, c, wb, n, v16, stride),
                    _ => sum_chunks_group::<1, M>(ob, d, c, wb, n, v16, stride),
                }
                c += GROUP_SUM_CHUNKS;
            }
            for h in 0..hb {
                let (o, wh) = (&mut ob[h * d..][..d], &wb[h * n..][..n]);
                let (oc, or) = o.as_chunks_mut::<8>();
                for ch in c..oc.len() {
                    sum_chunks::<1>(oc, ch, wh, v16, stride);
                }
                tail_sum(or, 8 * oc.len(), wh, v16, stride);
            }
            h0 += hb;
        }
    }

    pub fn weighted_sum(out: &mut [f32], w: &[f32], v: &[f16], stride: usize) {
        check_rows(v.len(), stride, out.len(), w.len());
        let v = bits(v);
        let (oc, or) = out.as_chunks_mut::<8>();
        let mut c = 0;
        while c + SUM_CHUNKS <= oc.len() {
            sum_chunks::<SUM_CHUNKS>(oc, c, w, v, stride);
            c += SUM_CHUNKS;
        }
        while c < oc.len() {
            sum_chunks::<1>(oc, c, w, v, stride);
            c += 1;
        }
        tail_sum(or, 8 * oc.len(), w, v, stride);
    }

    /// `x · s` rounded to f16 (`fcvtn`, round-to-nearest-even under the default FPCR, which
    /// Rust never changes) and back (`fcvtl`, exact), four at a time; the tail through `half`.
    fn scale_round(x: &mut [f32], s: f32) {
        let (c, r) = x.as_chunks_mut::<4>();
        for ch in c {
            // SAFETY: NEON is part of the aarch64 baseline; the load and store are one whole
            // 4-value chunk; `fcvtn`/`fcvtl` are base AArch64, register-only, no memory,
            // stack or flags.
            unsafe {
                let v = vmulq_f32(vld1q_f32(ch.as_ptr()), vdupq_n_f32(s));
                let o: float32x4_t;
                core::arch::asm!(
                    "fcvtn {t:v}.4h, {v:v}.4s",
                    "fcvtl {o:v}.4s, {t:v}.4h",
                    v = in(vreg) v,
                    t = out(vreg) _,
                    o = out(vreg) o,
                    options(pure, nomem, nostack)
                );
                vst1q_f32(ch.as_mut_ptr(), o);
            }
        }
        for v in r {
            *v = f16::from_f32(*v * s).to_f32();
        }
    }

    pub fn round_f16(x: &mut [f32]) {
        scale_round(x, 1.0)
    }

    pub fn softmax_f16(x: &mut [f32]) {
        let inv = softmax_exp(x);
        scale_round(x, inv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kernels::quants::tests::Rng;

    /// `Σ a·b` in f32 with eight lane sums (element `i` in lane `i % 8`, lanes reduced like
    /// [`lane_total`]): written out so that the compiler may vectorize it on every target without
    /// changing a bit (plain left-to-right sums cannot be vectorized), and every build gives the
    /// same result. The model's score before `kv` existed, on a converted row.
    fn dot_striped(a: &[f32], b: &[f32]) -> f32 {
        let mut l = [0f32; 8];
        let (ac, ar) = a.as_chunks::<8>();
        let (bc, br) = b.as_chunks::<8>();
        for (x, y) in ac.iter().zip(bc) {
            for k in 0..8 {
                l[k] += x[k] * y[k];
            }
        }
        for (k, (x, y)) in ar.iter().zip(br).enumerate() {
            l[k] += x * y;
        }
        lane_total(&l)
    }

    /// Moderate values, with zeros, ±0, f16 extremes (65504, subnormals) and their f32
    /// neighbours mixed in.
    fn value(r: &mut Rng) -> f32 {
        match r.next_u64() % 10 {
            0 => 0.0,
            1 => -0.0,
            2 => 65504.0,
            3 => -6e-8,
            4 => 3.0e4,
            _ => ((r.next_u64() % 20001) as f32 - 10000.0) / 1000.0,
        }
    }

    /// Every supported path, the scalar one included.
    fn paths() -> Vec<KernelPath> {
        KernelPath::ALL
            .into_iter()
            .filter(|p| p.supported())
            .collect()
    }

    /// The one-row f16 references: `dot_f16_ref` is `dot_striped` of the converted row (the
    /// model's score before `kv` existed), `axpy_f16_ref` the plain product-then-sum.
    #[test]
    fn one_row_references_match_their_definitions() {
        let mut r = Rng::new(0x6b76_5f72_6566_2121);
        for n in (0..=70).chain([128, 257]) {
            let a: Vec<f32> = (0..n).map(|_| value(&mut r)).collect();
            let b: Vec<f16> = (0..n).map(|_| f16::from_f32(value(&mut r))).collect();
            let b32: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
            let (got, want) = (dot_f16_ref(&a, &b), dot_striped(&a, &b32));
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "n={n}"
            );
            let w = value(&mut r);
            let mut out = a.clone();
            axpy_f16_ref(&mut out, w, &b);
            for i in 0..n {
                let e = a[i] + w * b32[i];
                assert!(out[i].to_bits() == e.to_bits() || (out[i].is_nan() && e.is_nan()));
            }
        }
    }

    fn same_bits(got: &[f32], want: &[f32], what: &str) {
        for (i, (g, e)) in got.iter().zip(want).enumerate() {
            assert!(
                g.to_bits() == e.to_bits() || (g.is_nan() && e.is_nan()),
                "{what} i={i}: {g:e} vs {e:e}"
            );
        }
    }

    /// Every path's score and value kernels give the scalar references' bits: row lengths
    /// 0..=70 (every tail of the 8-wide chunks and of the 64-value register groups), 128 and
    /// 257; 0..=9 and 33 rows (every remainder of the four-row score step); strides equal to
    /// the length and longer, with the cache's last row ending exactly at the slice's end;
    /// random values with extreme f16 values.
    #[test]
    fn every_path_matches_the_scalar_reference_bit_for_bit() {
        let mut r = Rng::new(0x6b76_5f6f_7073_2121);
        let paths = paths();
        println!(
            "kv paths: {:?}",
            paths.iter().map(|p| p.as_str()).collect::<Vec<_>>()
        );
        for d in (0..=70).chain([128, 257]) {
            for rows in (0..=9).chain([33]) {
                for extra in [0, 3, 64] {
                    let stride = d + extra;
                    let len = if rows == 0 {
                        0
                    } else {
                        (rows - 1) * stride + d
                    };
                    let q: Vec<f32> = (0..d).map(|_| value(&mut r)).collect();
                    let kv: Vec<f16> = (0..len).map(|_| f16::from_f32(value(&mut r))).collect();
                    let w: Vec<f32> = (0..rows).map(|_| value(&mut r)).collect();
                    let out0: Vec<f32> = (0..d).map(|_| value(&mut r)).collect();
                    let scale = value(&mut r);
                    let mut want_s = vec![0f32; rows];
                    scores_ref(&q, &kv, stride, scale, &mut want_s);
                    let mut want_o = out0.clone();
                    weighted_sum_ref(&mut want_o, &w, &kv, stride);
                    for &p in &paths {
                        let ops = KvOps::for_path(p);
                        let what = format!("{} d={d} rows={rows} stride={stride}", p.as_str());
                        let mut got = vec![f32::NAN; rows];
                        (ops.scores)(&q, &kv, stride, scale, &mut got);
                        same_bits(&got, &want_s, &format!("scores {what}"));
                        let mut out = out0.clone();
                        (ops.weighted_sum)(&mut out, &w, &kv, stride);
                        same_bits(&out, &want_o, &format!("weighted sum {what}"));
                    }
                }
            }
        }
    }

    /// Every path's grouped kernels give the grouped references' bits, and those are the
    /// one-head references per head: 1..=7 heads (every mix of the kernels' 3-, 2- and 1-head
    /// steps), head lengths with and without whole 8-value chunks (64 is SmolLM2's), 0..=17
    /// and 33 rows (every remainder of the 8- and 4-row score steps), strides equal to the
    /// group's width and longer, the last row ending at the slice's end.
    #[test]
    fn grouped_kernels_match_the_one_head_references_bit_for_bit() {
        let mut r = Rng::new(0x6b76_5f67_7270_2121);
        let paths = paths();
        for d in [8usize, 16, 24, 64, 70, 128] {
            for g in 1..=7usize {
                for rows in (0..=17).chain([33]) {
                    let stride = d + [0, 5][rows % 2];
                    let len = if rows == 0 {
                        0
                    } else {
                        (rows - 1) * stride + d
                    };
                    let qs: Vec<f32> = (0..g * d).map(|_| value(&mut r)).collect();
                    let kv: Vec<f16> = (0..len).map(|_| f16::from_f32(value(&mut r))).collect();
                    let w: Vec<f32> = (0..g * rows).map(|_| value(&mut r)).collect();
                    let out0: Vec<f32> = (0..g * d).map(|_| value(&mut r)).collect();
                    let scale = value(&mut r);
                    // The one-head references, head by head.
                    let mut want_s = vec![0f32; g * rows];
                    let mut want_o = out0.clone();
                    for h in 0..g {
                        let q = &qs[h * d..][..d];
                        scores_ref(q, &kv, stride, scale, &mut want_s[h * rows..][..rows]);
                        let wh = &w[h * rows..][..rows];
                        weighted_sum_ref(&mut want_o[h * d..][..d], wh, &kv, stride);
                    }
                    let mut got = vec![f32::NAN; g * rows];
                    scores_group_ref(&qs, d, &kv, stride, scale, &mut got);
                    same_bits(&got, &want_s, "scores_group_ref");
                    for &p in &paths {
                        let ops = KvOps::for_path(p);
                        let what = format!("{} d={d} g={g} rows={rows}", p.as_str());
                        let mut got = vec![f32::NAN; g * rows];
                        (ops.scores_group)(&qs, d, &kv, stride, scale, &mut got);
                        same_bits(&got, &want_s, &format!("scores_group {what}"));
                        let mut out = out0.clone();
                        (ops.weighted_sum_group)(&mut out, d, &w, &kv, stride);
                        same_bits(&out, &want_o, &format!("weighted_sum_group {what}"));
                    }
                }
            }
        }
    }

    /// Grouped calls whose lengths are not whole heads or rows, or whose rows run past the
    /// cache, panic on every path (a bug in the caller, never a wrong read).
    #[test]
    fn grouped_shapes_are_checked_in_every_path() {
        let kv = [f16::ONE; 40];
        for p in paths() {
            let ops = KvOps::for_path(p);
            let bad_scores: [(&[f32], usize, usize, usize); 4] = [
                (&[1.0; 16], 0, 12, 2), // zero head length
                (&[1.0; 15], 8, 12, 2), // not whole heads
                (&[1.0; 16], 8, 12, 3), // not whole rows per head
                (&[1.0; 16], 8, 16, 6), // two heads × three rows: exactly the 40 values
            ];
            for (i, &(q, d, stride, n)) in bad_scores.iter().enumerate().take(3) {
                let r = std::panic::catch_unwind(|| {
                    (ops.scores_group)(q, d, &kv, stride, 1.0, &mut vec![0.0; n])
                });
                assert!(r.is_err(), "scores_group case {i} {}", p.as_str());
            }
            let (q, d, stride, n) = bad_scores[3];
            (ops.scores_group)(q, d, &kv, stride, 1.0, &mut vec![0.0; n]);
            let r = std::panic::catch_unwind(|| {
                (ops.scores_group)(q, d, &kv, stride, 1.0, &mut vec![0.0; n + 2])
            });
            assert!(r.is_err(), "scores_group past the cache {}", p.as_str());
            let r = std::panic::catch_unwind(|| {
                (ops.weighted_sum_group)(&mut [0.0; 16], 8, &[1.0; 5], &kv, 16)
            });
            assert!(r.is_err(), "weighted_sum_group rows {}", p.as_str());
            let r = std::panic::catch_unwind(|| {
                (ops.weighted_sum_group)(&mut [0.0; 16], 8, &[1.0; 8], &kv, 16)
            });
            assert!(
                r.is_err(),
                "weighted_sum_group past the cache {}",
                p.as_str()
            );
            (ops.weighted_sum_group)(&mut [0.0; 16], 8, &[1.0; 6], &kv, 16);
        }
    }

    /// Every path's `round_f16` and `softmax_f16` give the references' bits at lengths
    /// 0..=70, 128 and 257 (every tail of the 4- and 8-wide chunks): scores with f16 extremes,
    /// values past f16's range and its subnormals, equal maxima, and rows where one value
    /// dominates (weights that round to 0).
    #[test]
    fn softmax_and_rounding_match_the_references_bit_for_bit() {
        let mut r = Rng::new(0x6b76_5f73_6d78_2121);
        for n in (0..=70).chain([128, 257]) {
            for kind in 0..4 {
                let x: Vec<f32> = (0..n)
                    .map(|_| match kind {
                        0 => value(&mut r),
                        1 => value(&mut r) * 1e-3,
                        2 => [7e4, -7e4, 3e-6, -1e-7, 65519.0, 65520.0][r.next_u64() as usize % 6],
                        _ => (r.next_u64() % 4) as f32 * 30.0,
                    })
                    .collect();
                let mut want_r = x.clone();
                round_f16_ref(&mut want_r);
                let mut want_s = x.clone();
                softmax_f16_ref(&mut want_s);
                for p in paths() {
                    let ops = KvOps::for_path(p);
                    let what = format!("{} n={n} kind={kind}", p.as_str());
                    let mut got = x.clone();
                    (ops.round_f16)(&mut got);
                    same_bits(&got, &want_r, &format!("round {what}"));
                    let mut got = x.clone();
                    (ops.softmax_f16)(&mut got);
                    same_bits(&got, &want_s, &format!("softmax {what}"));
                }
            }
        }
    }

    /// The softmax reference is the softmax: within one f16 rounding of the exact weights
    /// (computed in f64), summing to 1 within the f16 roundings; the rounding reference is
    /// `half`'s conversion, with overflow to infinity.
    #[test]
    fn softmax_reference_matches_its_definition() {
        let mut r = Rng::new(0x6b76_5f64_6566_2121);
        for n in [1, 2, 7, 64, 300] {
            let x: Vec<f32> = (0..n).map(|_| value(&mut r) * 1e-3).collect();
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let e: Vec<f64> = x.iter().map(|&v| (v as f64 - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            let mut got = x.clone();
            softmax_f16_ref(&mut got);
            for (g, e) in got.iter().zip(&e) {
                let want = e / sum;
                // f16 has an 11-bit significand: half an ulp is 2^-11 relative, plus the exp
                // and sum roundings; absolute 2^-25 covers f16's subnormal spacing.
                assert!(
                    (*g as f64 - want).abs() <= want * 1.0e-3 + 6e-8,
                    "n={n}: {g} vs {want}"
                );
            }
            let total: f64 = got.iter().map(|&v| v as f64).sum();
            assert!((total - 1.0).abs() < n as f64 * 1e-3, "n={n}: sum {total}");
        }
        let mut v = [1.0, 65519.0, 65520.0, -1e6, 1e-8];
        round_f16_ref(&mut v);
        assert_eq!(v, [1.0, 65504.0, f32::INFINITY, f32::NEG_INFINITY, 0.0]);
    }

    /// The references are the one-row kernels applied row by row.
    #[test]
    fn references_are_row_by_row() {
        let mut r = Rng::new(0x6b76_5f72_6f77_2121);
        let (d, stride, rows) = (19, 23, 5);
        let kv: Vec<f16> = (0..(rows - 1) * stride + d)
            .map(|_| f16::from_f32(value(&mut r)))
            .collect();
        let q: Vec<f32> = (0..d).map(|_| value(&mut r)).collect();
        let w: Vec<f32> = (0..rows).map(|_| value(&mut r)).collect();
        let mut s = vec![0f32; rows];
        scores_ref(&q, &kv, stride, 0.5, &mut s);
        let mut o = vec![0f32; d];
        weighted_sum_ref(&mut o, &w, &kv, stride);
        let mut o2 = vec![0f32; d];
        for p in 0..rows {
            let row = &kv[p * stride..][..d];
            assert_eq!(s[p].to_bits(), (dot_f16_ref(&q, row) * 0.5).to_bits());
            axpy_f16_ref(&mut o2, w[p], row);
        }
        same_bits(&o, &o2, "weighted sum");
    }

    /// The L2 prefetch of cached rows is a hint: any row or column range, inside the cache
    /// or past it, on any alignment, asks for lines and never panics or faults.
    #[test]
    fn prefetching_rows_never_panics() {
        let cache = vec![f16::ONE; 10 * 24 + 7];
        for start in [0, 1, 3] {
            let c = &cache[start..];
            for cols in [0..24, 5..17, 0..0, 20..40, 30..50] {
                for rows in [0..10, 3..4, 0..0, 8..100, 50..60] {
                    prefetch_rows_l2(c, 24, cols.clone(), rows);
                }
            }
        }
        prefetch_rows_l2(&[], 24, 0..24, 0..10);
        prefetch_rows_l2(&cache, 0, 0..24, 0..10);
    }

    #[test]
    fn rows_past_the_cache_panic_in_every_path() {
        for p in paths() {
            let ops = KvOps::for_path(p);
            let kv = [f16::ONE; 20];
            // Two rows of 8, 13 apart, need 21 values.
            let r =
                std::panic::catch_unwind(|| (ops.scores)(&[1.0; 8], &kv, 13, 1.0, &mut [0.0; 2]));
            assert!(r.is_err(), "scores {}", p.as_str());
            let r =
                std::panic::catch_unwind(|| (ops.weighted_sum)(&mut [0.0; 8], &[1.0; 2], &kv, 13));
            assert!(r.is_err(), "weighted sum {}", p.as_str());
            // 20 values fit two rows of 8, 12 apart; an overflowing stride does not wrap.
            (ops.scores)(&[1.0; 8], &kv, 12, 1.0, &mut [0.0; 2]);
            let r = std::panic::catch_unwind(|| {
                (ops.scores)(&[1.0; 8], &kv, usize::MAX, 1.0, &mut [0.0; 2])
            });
            assert!(r.is_err(), "huge stride {}", p.as_str());
        }
    }
}
