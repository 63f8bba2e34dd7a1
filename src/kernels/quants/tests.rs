//! Tests of the scalar quantization layer.
//!
//! Goldens (tests/golden/quants/, made by tests/golden/make_quant_goldens.py from gguf-py's
//! numpy reference): quantized bytes and dequantized floats must be identical; dot products
//! must be within a stated tolerance of the float64 reference. The generator also checked every
//! quantized byte and dequantized float against ggml's own C functions (llama-cpp-python's
//! libggml) and recorded ggml's C dot products, which must be within the same tolerance (ggml's
//! build fuses multiply-adds, so they are not bit-identical to this unfused port).
//!
//! **Dot tolerance.** The integer part of each block's dot is exact (i32), so the only errors
//! are the f32 roundings of the scale products (`dw·da`, then `·sumi`, each ≤ ε/2 relative),
//! of the running f32 sums across blocks (and ggml's 8 partial sums for the k-quants), and of
//! the dequantized values the float64 reference itself starts from. Each of these is relative
//! to a term whose magnitude is at most `mag = Σ|a|·(|w| + |offset|)` (offset = the min term of
//! Q4_1/Q4_K, which the dot adds separately and which can cancel against `d·q`), so
//! `|ours − ref| ≤ (blocks + 10)·ε_f32·mag` — the standard bound for a sum of that many f32
//! additions, with room for the 8 lanes. Q4_1 adds one more, structural, term: ggml adds
//! `m·s` with `s = f16(d·Σqa)`, so against the dot of the dequantized vectors we also allow
//! `Σ |m|·|s − d·Σqa|` (computed exactly from the blocks).
//!
//! Property tests use a tiny xorshift PRNG with fixed seeds.

use super::k_quants::{get_scale_min_k4, BlockQ4K, BlockQ6K};
use super::q8::QK_K;
use super::*;
use bytemuck::Zeroable;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Goldens

const MANIFEST: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/golden/quants/manifest.json"
));

macro_rules! golden_bins {
    ($($name:literal),*) => {
        fn golden_bin(name: &str) -> &'static [u8] {
            match name {
                $($name => include_bytes!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/golden/quants/",
                    $name,
                    ".bin"
                )),)*
                _ => panic!("no golden file {name}.bin"),
            }
        }
    };
}
golden_bins!("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k", "q6_k");

struct Case {
    name: String,
    ty: GgmlType,
    act_ty: GgmlType,
    rows: usize,
    cols: usize,
    bin: &'static [u8],
    sections: Value,
    dot_exact: Vec<f64>,
    dot_ggml: Vec<f64>,
    /// ggml's own `ggml_vec_dot_*_generic` (compiled with FMA contraction), when the
    /// generator could run it.
    dot_ggml_c: Option<Vec<f64>>,
    mag: Vec<f64>,
}

impl Case {
    fn section(&self, key: &str) -> &'static [u8] {
        let s = &self.sections[key];
        let (off, len) = (
            s[0].as_u64().unwrap() as usize,
            s[1].as_u64().unwrap() as usize,
        );
        &self.bin[off..off + len]
    }
    fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.cols as u64).unwrap() as usize
    }
    fn q_row(&self, r: usize) -> &'static [u8] {
        let rb = self.row_bytes();
        &self.section("q")[r * rb..(r + 1) * rb]
    }
}

fn type_by_name(name: &str) -> GgmlType {
    GgmlType::ALL
        .into_iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("unknown type {name}"))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn cases() -> Vec<Case> {
    let m: Value = serde_json::from_str(MANIFEST).unwrap();
    let cases: Vec<Case> = m["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap().to_string();
            Case {
                bin: golden_bin(&name),
                name,
                ty: type_by_name(c["type"].as_str().unwrap()),
                act_ty: type_by_name(c["act_type"].as_str().unwrap()),
                rows: c["rows"].as_u64().unwrap() as usize,
                cols: c["cols"].as_u64().unwrap() as usize,
                sections: c["sections"].clone(),
                dot_exact: f64s(&c["dot_exact"]),
                dot_ggml: f64s(&c["dot_ggml"]),
                dot_ggml_c: (!c["dot_ggml_c"].is_null()).then(|| f64s(&c["dot_ggml_c"])),
                mag: f64s(&c["mag"]),
            }
        })
        .collect();
    assert_eq!(cases.len(), 8, "one golden case per weight type");
    cases
}

fn assert_same_f32(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{what}: element {i}: got {g:e} ({:#010x}), want {w:e} ({:#010x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

#[test]
fn golden_quantize_row_is_bit_exact_with_gguf() {
    let mut checked = 0;
    for c in cases() {
        let src = f32s(c.section("src"));
        if src.is_empty() {
            assert!(matches!(c.ty, GgmlType::Q4K | GgmlType::Q6K), "{}", c.name);
            continue;
        }
        let mut buf = vec![0u8; c.row_bytes()];
        for r in 0..c.rows {
            quantize_row(c.ty, &src[r * c.cols..(r + 1) * c.cols], &mut buf).unwrap();
            if let Some(i) = (0..buf.len()).find(|&i| buf[i] != c.q_row(r)[i]) {
                panic!(
                    "{} row {r}: byte {i} (block {}) differs: got {:#04x}, want {:#04x}",
                    c.name,
                    i / c.ty.block_bytes(),
                    buf[i],
                    c.q_row(r)[i]
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 6 * 3, "F32, F16, BF16, Q8_0, Q4_0, Q4_1 × 3 rows");
}

#[test]
fn golden_dequantize_is_bit_exact_with_gguf() {
    for c in cases() {
        let deq = f32s(c.section("deq"));
        let mut out = vec![f32::NAN; c.cols];
        for r in 0..c.rows {
            dequantize_row(c.ty, c.q_row(r), &mut out).unwrap();
            assert_same_f32(
                &format!("{} row {r}", c.name),
                &out,
                &deq[r * c.cols..(r + 1) * c.cols],
            );
            // The embedding lookup is the same dequantization.
            let mut e = vec![f32::NAN; c.cols];
            get_row(c.ty, c.section("q"), c.cols, r, &mut e).unwrap();
            assert_same_f32(&format!("{} get_row {r}", c.name), &e, &out);
        }
    }
}

#[test]
fn golden_activation_quantization_is_bit_exact() {
    for c in cases() {
        let x = f32s(c.section("act_src"));
        let mut acts = QuantizedActs::new();
        acts.quantize_for(c.ty, &x).unwrap();
        assert_eq!(acts.ty(), c.act_ty, "{}", c.name);
        assert_eq!(acts.len(), c.cols);
        let want = c.section("act_q");
        if let Some(i) = (0..want.len()).find(|&i| acts.bytes()[i] != want[i]) {
            panic!(
                "{} activations ({}): byte {i} differs: got {:#04x}, want {:#04x}",
                c.name,
                c.act_ty.name(),
                acts.bytes()[i],
                want[i]
            );
        }
        assert_eq!(acts.bytes().len(), want.len(), "{}", c.name);
        if c.act_ty == GgmlType::F32 {
            assert_same_f32(&c.name, acts.f32s(), &x);
        } else {
            let mut out = vec![f32::NAN; c.cols];
            dequantize_row(c.act_ty, want, &mut out).unwrap();
            assert_same_f32(
                &format!("{} activations dequantized", c.name),
                &out,
                &f32s(c.section("act_deq")),
            );
        }
    }
}

/// `Σ |m|·|s − d·Σqa|` over the blocks of a Q4_1 row and its Q8_1 activations: how far ggml's
/// Q4_1 dot may be from the dot of the dequantized vectors because `s` is stored as f16.
fn q4_1_s_slack(row: &[u8], acts: &QuantizedActs) -> f64 {
    let w: &[BlockQ4_1] = bytemuck::cast_slice(row);
    let a: &[BlockQ8_1] = acts.blocks().unwrap();
    w.iter()
        .zip(a)
        .map(|(w, a)| {
            let sum: i32 = a.qs.iter().map(|&q| q as i32).sum();
            let exact = a.d.get() as f64 * sum as f64;
            (w.m.get() as f64).abs() * (a.s.get() as f64 - exact).abs()
        })
        .sum()
}

fn dot_tolerance(ty: GgmlType, n: usize, mag: f64) -> f64 {
    let blocks = n / ty.block_size().max(1);
    (blocks as f64 + 10.0) * f32::EPSILON as f64 * mag
}

#[test]
fn golden_vec_dot_within_tolerance_of_float64_reference() {
    for c in cases() {
        let x = f32s(c.section("act_src"));
        let mut acts = QuantizedActs::new();
        acts.quantize_for(c.ty, &x).unwrap();
        let mut mv = vec![f32::NAN; c.rows];
        matvec(c.ty, c.section("q"), c.rows, c.cols, &acts, &mut mv).unwrap();
        for r in 0..c.rows {
            let got = vec_dot(c.ty, c.q_row(r), &acts).unwrap();
            assert_eq!(got.to_bits(), mv[r].to_bits(), "{} row {r}: matvec", c.name);
            let tol = dot_tolerance(c.ty, c.cols, c.mag[r]);
            let err = (got as f64 - c.dot_ggml[r]).abs();
            assert!(
                err <= tol,
                "{} row {r}: vec_dot {got:e}, ggml formula in f64 {:e}: error {err:e} > tolerance {tol:e}",
                c.name,
                c.dot_ggml[r]
            );
            if let Some(g) = &c.dot_ggml_c {
                let err = (got as f64 - g[r]).abs();
                assert!(
                    err <= tol,
                    "{} row {r}: vec_dot {got:e}, ggml's C {:e}: error {err:e} > tolerance {tol:e}",
                    c.name,
                    g[r]
                );
            }
            let slack = if c.ty == GgmlType::Q4_1 {
                q4_1_s_slack(c.q_row(r), &acts)
            } else {
                0.0
            };
            let err = (got as f64 - c.dot_exact[r]).abs();
            assert!(
                err <= tol + slack,
                "{} row {r}: vec_dot {got:e}, exact {:e}: error {err:e} > {tol:e} + {slack:e}",
                c.name,
                c.dot_exact[r]
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Layout unit tests: hand-made blocks with known values (these catch self-consistent mistakes
// such as a swapped nibble order that a round trip would not).

#[test]
fn q4_0_layout_low_nibble_is_first_half() {
    let mut b = BlockQ4_0::zeroed();
    b.d = F16Le::new(0.5);
    b.qs[0] = 0x1f; // element 0 = 15 − 8, element 16 = 1 − 8
    b.qs[15] = 0x80; // element 15 = 0 − 8, element 31 = 8 − 8
    let mut y = [0f32; 32];
    q4_0::dequantize_row_q4_0(&[b], &mut y);
    assert_eq!(
        (y[0], y[16], y[15], y[31], y[1]),
        (3.5, -3.5, -4.0, 0.0, -4.0)
    );
    let bytes = bytemuck::bytes_of(&b);
    assert_eq!(bytes.len(), 18);
    assert_eq!(
        &bytes[0..2],
        &half::f16::from_f32(0.5).to_bits().to_le_bytes()
    );
    assert_eq!(bytes[2], 0x1f);
}

#[test]
fn q4_1_and_q8_layouts() {
    let mut b = BlockQ4_1::zeroed();
    b.d = F16Le::new(2.0);
    b.m = F16Le::new(-1.0);
    b.qs[3] = 0x52;
    let mut y = [0f32; 32];
    q4_1::dequantize_row_q4_1(&[b], &mut y);
    assert_eq!((y[3], y[19], y[0]), (3.0, 9.0, -1.0));
    assert_eq!(&bytemuck::bytes_of(&b)[2..4], &F16Le::new(-1.0).0);

    let mut q = BlockQ8_1::zeroed();
    q.d = F16Le::new(0.25);
    q.qs[31] = -128;
    let mut y = [0f32; 32];
    q8::dequantize_row_q8_1(&[q], &mut y);
    assert_eq!(y[31], -32.0);
    assert_eq!(bytemuck::bytes_of(&q)[35], 0x80);

    let mut k = BlockQ8K::zeroed();
    k.d = F32Le::new(-0.5);
    k.qs[255] = 3;
    k.bsums[15] = I16Le::new(-2);
    let bytes = bytemuck::bytes_of(&k);
    assert_eq!(&bytes[0..4], &(-0.5f32).to_le_bytes());
    assert_eq!(bytes[259], 3);
    assert_eq!(&bytes[290..292], &(-2i16).to_le_bytes());
}

#[test]
fn q8_k_quantizer_rounds_ties_to_even_and_keeps_the_sign_of_max() {
    // max = -127 ⇒ iscale = 1, d = 1; x = 2.5 → 2 (ties to even, unlike roundf), 3.5 → 4.
    let mut x = [0f32; 256];
    x[0] = -127.0;
    x[1] = 2.5;
    x[2] = 3.5;
    x[17] = -0.5;
    let mut b = [BlockQ8K::zeroed()];
    q8::quantize_row_q8_k(&x, &mut b);
    assert_eq!(b[0].d.get(), 1.0);
    assert_eq!(&b[0].qs[0..3], &[-127, 2, 4]);
    assert_eq!(b[0].qs[17], 0);
    assert_eq!(b[0].bsums[0].get(), -121);
    // max = +127 ⇒ d = -1 and the quants are negated.
    x[0] = 127.0;
    q8::quantize_row_q8_k(&x, &mut b);
    assert_eq!(b[0].d.get(), -1.0);
    assert_eq!(&b[0].qs[0..3], &[-127, -2, -4]);
}

#[test]
fn q8_0_quantizer_rounds_ties_away_from_zero() {
    let mut x = [0f32; 32];
    x[0] = 127.0; // d = 1
    x[1] = 2.5;
    x[2] = -2.5;
    let mut b = [BlockQ8_0::zeroed()];
    q8::quantize_row_q8_0(&x, &mut b);
    assert_eq!(&b[0].qs[0..3], &[127, 3, -3]);
    assert_eq!(b[0].d.get(), 1.0);
}

#[test]
fn q4_k_scale_min_unpacking() {
    // Scales/mins 0..3: low 6 bits of bytes 0..3 / 4..7. Scales/mins 4..7: nibbles of bytes
    // 8..11 plus the top 2 bits of bytes 0..3 / 4..7.
    let mut s = [0u8; 12];
    s[0] = 0b11_000101; // scale 0 = 5, top bits of scale 4 = 3
    s[4] = 0b10_000111; // min 0 = 7, top bits of min 4 = 2
    s[8] = 0x9a; // scale 4 low = 0xa, min 4 low = 0x9
    assert_eq!(get_scale_min_k4(0, &s), (5, 7));
    assert_eq!(get_scale_min_k4(4, &s), (0x3a, 0x29));

    let mut b = BlockQ4K::zeroed();
    b.d = F16Le::new(1.0);
    b.dmin = F16Le::new(0.5);
    b.scales = s;
    b.qs[0] = 0x21; // element 0 = 1 (sub-block 0), element 32 = 2 (sub-block 1)
    b.qs[32] = 0x03; // element 64 = 3 (sub-block 2)
    b.qs[127] = 0xf0; // element 255 = 15 (sub-block 7)
    let mut y = [0f32; 256];
    k_quants::dequantize_row_q4k(&[b], &mut y);
    assert_eq!(y[0], 5.0 * 1.0 - 0.5 * 7.0);
    assert_eq!(y[32], 0.0);
    assert_eq!(y[64], 0.0);
    assert_eq!(y[128], -0.5 * 41.0); // sub-block 4: 0x3a·0 − 0.5·0x29
    assert_eq!(y[160], 0.0); // sub-block 5: scale and min 0
    assert_eq!(y[255], 0.0);
}

#[test]
fn q6_k_element_positions() {
    let mut b = BlockQ6K::zeroed();
    b.d = F16Le::new(1.0);
    b.scales = [1; 16];
    b.scales[15] = -2;
    b.ql[0] = 0x21; // element 0 low 4 bits = 1, element 64 low = 2
    b.ql[32] = 0x43; // element 32 low = 3, element 96 low = 4
    b.qh[0] = 0b11_10_01_00; // high bits: element 0 → 0, 32 → 1, 64 → 2, 96 → 3
    b.ql[127] = 0xf0; // element 255 low = 15 (second half, byte 32 + 31, high nibble)
    b.qh[63] = 0b11_00_00_00; // element 255 high = 3
    let mut y = [0f32; 256];
    k_quants::dequantize_row_q6k(&[b], &mut y);
    assert_eq!(y[0], (1 - 32) as f32);
    assert_eq!(y[32], (3 + 16 - 32) as f32);
    assert_eq!(y[64], (2 + 32 - 32) as f32);
    assert_eq!(y[96], (4 + 48 - 32) as f32);
    assert_eq!(y[255], -2.0 * (15 + 48 - 32) as f32);
    assert_eq!(y[1], -32.0);
    assert_eq!(bytemuck::bytes_of(&b)[208..210], F16Le::new(1.0).0);
}

#[test]
fn block_types_match_ggml_type_table() {
    fn check<B: GgmlBlock>() {
        assert_eq!(
            std::mem::size_of::<B>(),
            B::TYPE.block_bytes(),
            "{:?}",
            B::TYPE
        );
        assert_eq!(B::BLOCK_SIZE, B::TYPE.block_size(), "{:?}", B::TYPE);
        assert_eq!(
            std::mem::align_of::<B>(),
            1,
            "{:?}: viewable at any offset",
            B::TYPE
        );
    }
    fn weight<W: WeightBlock>() {
        check::<W>();
        assert_eq!(vec_dot_type(W::TYPE), W::VecDot::TYPE, "{:?}", W::TYPE);
    }
    weight::<F32Le>();
    weight::<F16Le>();
    weight::<Bf16Le>();
    weight::<BlockQ8_0>();
    weight::<BlockQ4_0>();
    weight::<BlockQ4_1>();
    weight::<BlockQ4K>();
    weight::<BlockQ6K>();
    check::<BlockQ8_1>();
    check::<BlockQ8K>();
    assert_eq!(vec_dot_type(GgmlType::Q4K), GgmlType::Q8K);
    assert_eq!(vec_dot_type(GgmlType::BF16), GgmlType::F32);
}

// ---------------------------------------------------------------------------------------------
// Property tests

/// xorshift64* — tiny and deterministic (also `kernels::kv`'s tests').
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    /// Roughly normal (sum of 4 uniforms).
    fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.unit()).sum::<f32>() * 0.87
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Random floats in blocks of `bs` with a random scale per block (1e-2 … 1e3, so quantized
/// scales stay normal f16), one all-zero block when there are several.
fn random_values(rng: &mut Rng, n: usize, bs: usize) -> Vec<f32> {
    let mut x = vec![0f32; n];
    let zero_block = if n / bs > 1 {
        rng.below(n / bs)
    } else {
        usize::MAX
    };
    for (b, chunk) in x.chunks_mut(bs).enumerate() {
        if b == zero_block {
            continue;
        }
        let scale = 10f32.powf(rng.unit() * 2.5 + 0.5);
        for v in chunk {
            *v = rng.normal() * scale;
        }
    }
    x
}

/// Random valid k-quant rows: random bytes with finite, moderate f16 scales.
fn random_k_row(rng: &mut Rng, ty: GgmlType, nb: usize) -> Vec<u8> {
    let mut row = rng.bytes(nb * ty.block_bytes());
    for blk in row.chunks_exact_mut(ty.block_bytes()) {
        let mut scale = || F16Le::new(rng.unit() * 0.02).0;
        match ty {
            GgmlType::Q4K => {
                let (d, dmin) = (scale(), scale());
                blk[0..2].copy_from_slice(&d);
                blk[2..4].copy_from_slice(&dmin);
            }
            GgmlType::Q6K => blk[208..210].copy_from_slice(&scale()),
            _ => unreachable!(),
        }
    }
    row
}

/// `n` random activation rows of `cols` elements, quantized for weight type `ty`.
fn random_acts(rng: &mut Rng, ty: GgmlType, n: usize, cols: usize) -> Vec<QuantizedActs> {
    (0..n)
        .map(|_| {
            let mut a = QuantizedActs::new();
            a.quantize_for(ty, &random_values(rng, cols, 32)).unwrap();
            a
        })
        .collect()
}

/// A random Q4_0 matrix of `rows × cols`, packed ([`random_row`] per row).
fn random_packed(rng: &mut Rng, rows: usize, cols: usize) -> PackedMatrix {
    let w: Vec<u8> = (0..rows)
        .flat_map(|_| random_row(rng, GgmlType::Q4_0, cols))
        .collect();
    PackedMatrix::pack_q4_0(&w, rows, cols).unwrap()
}

/// The bits of values that must all be finite: a NaN would compare equal to a NaN, so a
/// test comparing bits would pass on an overflow.
fn finite_bits(v: &[f32]) -> Vec<u32> {
    assert!(v.iter().all(|x| x.is_finite()), "non-finite values");
    v.iter().map(|x| x.to_bits()).collect()
}

/// A random row of weight type `ty` with `n` elements (quantized from random floats, or random
/// valid bytes for the k-quants).
fn random_row(rng: &mut Rng, ty: GgmlType, n: usize) -> Vec<u8> {
    match ty {
        GgmlType::Q4K | GgmlType::Q6K => random_k_row(rng, ty, n / QK_K),
        _ => {
            let x = random_values(rng, n, ty.block_size().max(8));
            let mut row = vec![0u8; ty.row_bytes(n as u64).unwrap() as usize];
            quantize_row(ty, &x, &mut row).unwrap();
            row
        }
    }
}

/// The additive (min) term of each dequantized element: Q4_1's `m`, Q4_K's `dmin·m`.
fn offsets(ty: GgmlType, row: &[u8], n: usize) -> Vec<f64> {
    let mut off = vec![0f64; n];
    match ty {
        GgmlType::Q4_1 => {
            for (b, o) in bytemuck::cast_slice::<u8, BlockQ4_1>(row)
                .iter()
                .zip(off.chunks_mut(32))
            {
                o.fill(b.m.get() as f64);
            }
        }
        GgmlType::Q4K => {
            for (b, o) in bytemuck::cast_slice::<u8, BlockQ4K>(row)
                .iter()
                .zip(off.chunks_mut(QK_K))
            {
                for (j, o) in o.chunks_mut(32).enumerate() {
                    let (_, m) = get_scale_min_k4(j, &b.scales);
                    o.fill(b.dmin.get() as f64 * m as f64);
                }
            }
        }
        _ => {}
    }
    off
}

const WEIGHT_TYPES: [GgmlType; 8] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q4K,
    GgmlType::Q6K,
];

const QUANTIZABLE: [GgmlType; 8] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q8_1,
    GgmlType::Q8K,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
];

/// Largest |x − dequantize(quantize(x))| allowed for element `i` of block `b` (bytes) of `ty`.
fn roundtrip_bound(ty: GgmlType, b: &[u8], x: f32) -> f64 {
    let f16_at = |o: usize| F16Le([b[o], b[o + 1]]).get().abs() as f64;
    let x = x.abs() as f64;
    match ty {
        GgmlType::F32 => 0.0,
        // Half an ulp (2^-11 relative), or half the smallest subnormal.
        GgmlType::F16 => x * 2f64.powi(-11) + 2f64.powi(-25),
        GgmlType::BF16 => x * 2f64.powi(-8),
        // Half a step, plus 127 steps' worth of the f16 rounding of d (2^-11 relative).
        GgmlType::Q8_0 | GgmlType::Q8_1 => f16_at(0) * (0.5 + 127.0 * 2f64.powi(-10)),
        // f32 scale: half a step (plus the rounding of d·q).
        GgmlType::Q8K => {
            let d = f32::from_le_bytes(b[0..4].try_into().unwrap()).abs() as f64;
            d * 0.5001 + x * 1e-7
        }
        // The value −max maps to q = 16, clamped to 15: one whole step; plus 8 × f16(d)'s error.
        GgmlType::Q4_0 => f16_at(0) * (1.0 + 8.0 * 2f64.powi(-10)),
        // Half a step, 15 × f16(d)'s error, f16(m)'s error.
        GgmlType::Q4_1 => {
            f16_at(0) * (0.5 + 15.0 * 2f64.powi(-10)) + f16_at(2) * 2f64.powi(-10) + x * 1e-6
        }
        GgmlType::Q4K | GgmlType::Q6K => unreachable!(),
    }
}

#[test]
fn prop_dequantize_quantize_error_is_bounded_by_the_block_scale() {
    let mut rng = Rng::new(1);
    for ty in QUANTIZABLE {
        let bs = ty.block_size();
        for _ in 0..40 {
            let nb = 1 + rng.below(7); // odd and even block counts
            let n = if bs == 1 { 1 + rng.below(200) } else { nb * bs };
            let x = random_values(&mut rng, n, bs.max(8));
            let mut q = vec![0u8; ty.row_bytes(n as u64).unwrap() as usize];
            quantize_row(ty, &x, &mut q).unwrap();
            let mut y = vec![f32::NAN; n];
            dequantize_row(ty, &q, &mut y).unwrap();
            for i in 0..n {
                let blk = &q[i / bs * ty.block_bytes()..][..ty.block_bytes()];
                let bound = roundtrip_bound(ty, blk, x[i]);
                let err = (x[i] as f64 - y[i] as f64).abs();
                assert!(
                    err <= bound,
                    "{ty:?} n={n} element {i}: {} → {}: error {err:e} > {bound:e}",
                    x[i],
                    y[i]
                );
                if x[i / bs * bs..][..bs].iter().all(|&v| v == 0.0) {
                    assert_eq!(y[i], 0.0, "{ty:?}: an all-zero block dequantizes to 0");
                }
            }
        }
    }
}

#[test]
fn prop_vec_dot_matches_the_dot_of_the_dequantized_vectors() {
    let mut rng = Rng::new(2);
    let mut acts = QuantizedActs::new();
    for ty in WEIGHT_TYPES {
        let bs = ty.block_size();
        for _ in 0..25 {
            let n_rows = 1 + rng.below(4);
            let n = if bs == 1 {
                1 + rng.below(300)
            } else {
                (1 + rng.below(if bs == QK_K { 3 } else { 9 })) * bs
            };
            let w: Vec<u8> = (0..n_rows)
                .flat_map(|_| random_row(&mut rng, ty, n))
                .collect();
            let a = random_values(&mut rng, n, vec_dot_type(ty).block_size().max(8));
            acts.quantize_for(ty, &a).unwrap();
            let mut a_deq = vec![0f32; n];
            dequantize_row(acts.ty(), acts.bytes(), &mut a_deq).unwrap();
            if acts.ty() == GgmlType::F32 {
                assert_eq!(a_deq, a);
            }
            let mut out = vec![f32::NAN; n_rows];
            matvec(ty, &w, n_rows, n, &acts, &mut out).unwrap();
            let rb = w.len() / n_rows;
            for (r, row) in w.chunks_exact(rb).enumerate() {
                let mut w_deq = vec![0f32; n];
                dequantize_row(ty, row, &mut w_deq).unwrap();
                let off = offsets(ty, row, n);
                let mut exact = 0f64;
                let mut mag = 0f64;
                for i in 0..n {
                    exact += w_deq[i] as f64 * a_deq[i] as f64;
                    mag += (a_deq[i] as f64).abs() * ((w_deq[i] as f64).abs() + off[i].abs());
                }
                let got = vec_dot(ty, row, &acts).unwrap();
                assert_eq!(got.to_bits(), out[r].to_bits(), "{ty:?}: matvec row {r}");
                let slack = if ty == GgmlType::Q4_1 {
                    q4_1_s_slack(row, &acts)
                } else {
                    0.0
                };
                let tol = dot_tolerance(ty, n, mag) + slack;
                assert!(
                    (got as f64 - exact).abs() <= tol,
                    "{ty:?} n={n} row {r}: vec_dot {got:e}, f64 dot of dequantized {exact:e}, tolerance {tol:e}"
                );
            }
        }
    }
}

#[test]
fn all_zero_blocks_give_zero() {
    let mut rng = Rng::new(3);
    let mut acts = QuantizedActs::new();
    for ty in WEIGHT_TYPES {
        let n = 2 * ty.block_size().max(32);
        let zero_row = vec![0u8; ty.row_bytes(n as u64).unwrap() as usize];
        let mut y = vec![f32::NAN; n];
        dequantize_row(ty, &zero_row, &mut y).unwrap();
        assert!(y.iter().all(|&v| v == 0.0), "{ty:?}: zero bytes → 0");
        acts.quantize_for(ty, &random_values(&mut rng, n, 8))
            .unwrap();
        assert_eq!(vec_dot(ty, &zero_row, &acts).unwrap(), 0.0, "{ty:?}");
        // Zero activations against a random row.
        acts.quantize_for(ty, &vec![0.0; n]).unwrap();
        assert!(
            acts.bytes().iter().all(|&b| b == 0),
            "{ty:?}: zero activations"
        );
        let row = random_row(&mut rng, ty, n);
        assert_eq!(vec_dot(ty, &row, &acts).unwrap(), 0.0, "{ty:?}");
    }
    for ty in QUANTIZABLE {
        let n = ty.block_size().max(32);
        let mut q = vec![0xaau8; ty.row_bytes(n as u64).unwrap() as usize];
        quantize_row(ty, &vec![0.0; n], &mut q).unwrap();
        let mut y = vec![f32::NAN; n];
        dequantize_row(ty, &q, &mut y).unwrap();
        assert!(
            y.iter().all(|&v| v == 0.0),
            "{ty:?}: quantized zeros → 0, no NaN"
        );
    }
}

#[test]
fn non_finite_input_does_not_panic() {
    for ty in QUANTIZABLE {
        let n = ty.block_size().max(32);
        for special in [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN_POSITIVE,
        ] {
            let mut x = vec![1.0f32; n];
            x[n / 2] = special;
            let mut q = vec![0u8; ty.row_bytes(n as u64).unwrap() as usize];
            quantize_row(ty, &x, &mut q).unwrap();
            let mut y = vec![0f32; n];
            dequantize_row(ty, &q, &mut y).unwrap();
        }
    }
}

#[test]
fn rows_are_read_in_place_at_any_alignment() {
    let mut rng = Rng::new(4);
    for ty in WEIGHT_TYPES {
        let n = ty.block_size().max(32) * 3;
        let row = random_row(&mut rng, ty, n);
        let mut shifted = vec![0u8; 1];
        shifted.extend_from_slice(&row);
        let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
        dequantize_row(ty, &row, &mut a).unwrap();
        dequantize_row(ty, &shifted[1..], &mut b).unwrap();
        assert_same_f32(&format!("{ty:?} at offset 1"), &b, &a);
    }
}

#[test]
fn quantized_acts_reuse_their_buffer() {
    let mut rng = Rng::new(5);
    let x = random_values(&mut rng, 512, 32);
    let mut acts = QuantizedActs::new();
    assert!(acts.is_empty());
    acts.quantize_for(GgmlType::Q4_0, &x).unwrap();
    let p = acts.bytes().as_ptr();
    acts.quantize_for(GgmlType::F16, &x).unwrap();
    assert_eq!((acts.ty(), acts.len()), (GgmlType::F32, 512));
    assert_eq!(acts.f32s(), &x[..]);
    let pf = acts.f32s().as_ptr();
    acts.quantize_for(GgmlType::Q8_0, &x).unwrap();
    assert_eq!(acts.bytes().as_ptr(), p, "same buffer, no reallocation");
    assert!(acts.f32s().is_empty());
    acts.quantize_for(GgmlType::Q4K, &x).unwrap();
    assert_eq!(acts.ty(), GgmlType::Q8K);
    assert!(acts.blocks::<BlockQ8K>().is_some_and(|b| b.len() == 2));
    assert!(acts.blocks::<BlockQ8_0>().is_none());
    acts.quantize_for(GgmlType::BF16, &x).unwrap();
    assert_eq!(acts.f32s().as_ptr(), pf, "same buffer, no reallocation");
    assert_eq!(acts.blocks::<f32>().unwrap(), &x[..]);
}

#[test]
fn length_and_type_errors_are_errors_not_panics() {
    use GgmlType::*;
    let mut y = vec![0f32; 33];
    let e = dequantize_row(Q4_0, &[0; 18], &mut y).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Q4_0 row of 33 elements is not a whole number of 32-element blocks"
    );
    let e = dequantize_row(Q4_0, &[0; 17], &mut y[..32]).unwrap_err();
    assert_eq!(e.to_string(), "Q4_0 row of 32 elements is 18 bytes, got 17");
    assert!(dequantize_row(Q4K, &[0; 144], &mut y[..32]).is_err());
    assert!(dequantize_row(F32, &[0; 5], &mut y[..1]).is_err());

    assert!(quantize_row(Q4_1, &[0.0; 32], &mut [0; 19]).is_err());
    assert!(quantize_row(Q8K, &[0.0; 255], &mut [0; 292]).is_err());
    let e = quantize_row(Q4K, &[0.0; 256], &mut [0; 144]).unwrap_err();
    assert!(matches!(e, QuantError::CannotQuantize { ty: Q4K }), "{e}");
    assert!(quantize_row(Q6K, &[0.0; 256], &mut [0; 210]).is_err());

    let mut acts = QuantizedActs::new();
    assert!(acts.quantize_for(Q4K, &[1.0; 300]).is_err());
    assert_eq!(acts.len(), 0, "left empty after an error");
    acts.quantize_for(Q4_0, &[1.0; 64]).unwrap();
    let e = vec_dot(Q4_1, &[0; 40], &acts).unwrap_err();
    assert_eq!(
        e,
        QuantError::ActsType {
            weight: Q4_1,
            expected: Q8_1,
            got: Q8_0
        }
    );
    assert!(vec_dot(Q4_0, &[0; 35], &acts).is_err());
    assert!(vec_dot(Q8_0, &[0; 36], &acts).is_err());
    assert!(matches!(
        vec_dot(Q8K, &[0; 292], &acts),
        Err(QuantError::NotAWeightType { ty: Q8K })
    ));

    let mut out = vec![0f32; 2];
    assert!(matvec(Q4_0, &[0; 72], 2, 64, &acts, &mut out).is_ok());
    assert!(matvec(Q4_0, &[0; 71], 2, 64, &acts, &mut out).is_err());
    assert!(matvec(Q4_0, &[0; 72], 2, 64, &acts, &mut out[..1]).is_err());
    assert!(matvec(Q4_0, &[0; 36], 1, 32, &acts, &mut out[..1]).is_err());
    assert!(matches!(
        matvec(Q4_0, &[], usize::MAX, 64, &acts, &mut out),
        Err(QuantError::TooLarge { .. })
    ));

    let mut e_row = vec![0f32; 64];
    assert!(get_row(Q4_0, &[0; 72], 64, 1, &mut e_row).is_ok());
    assert_eq!(
        get_row(Q4_0, &[0; 72], 64, 2, &mut e_row).unwrap_err(),
        QuantError::RowOutOfRange { row: 2, n_rows: 2 }
    );
    assert!(get_row(Q4_0, &[0; 71], 64, 0, &mut e_row).is_err());
    assert!(get_row(Q4_0, &[0; 72], 64, 0, &mut e_row[..63]).is_err());
    assert!(get_row(Q4_0, &[0; 72], 0, 0, &mut []).is_err());

    // Every message is one line.
    for e in [
        QuantError::NotWholeRows {
            ty: Q6K,
            n_cols: 256,
            row_bytes: 210,
            got: 211,
        },
        QuantError::NotAWeightType { ty: Q8_1 },
        QuantError::CannotQuantize { ty: Q6K },
        QuantError::Len {
            what: "x",
            expected: 1,
            got: 2,
        },
    ] {
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}

#[test]
fn empty_rows_are_fine() {
    let mut acts = QuantizedActs::new();
    acts.quantize_for(GgmlType::Q4_0, &[]).unwrap();
    assert_eq!(vec_dot(GgmlType::Q4_0, &[], &acts).unwrap(), 0.0);
    let mut out = [f32::NAN; 3];
    matvec(GgmlType::Q4_0, &[], 3, 0, &acts, &mut out).unwrap();
    assert_eq!(out, [0.0; 3]);
}

/// `matmul` (whatever kernel path is active — AVX2, NEON, dotprod, or the i8mm 2×2 pairs under
/// `qemu -cpu max` — and with the thread pool) gives, for every weight row and activation row,
/// the same bits as the scalar reference dot: odd row counts, row groups, odd activation
/// counts (the i8mm leftover paths), 1 to 5 activation rows.
#[test]
fn prop_matmul_equals_the_scalar_reference_dot_bit_for_bit() {
    fn scalar<W: WeightBlock>(row: &[u8], a: &QuantizedActs) -> f32 {
        W::vec_dot(blocks::<W>(row), a.blocks::<W::VecDot>().unwrap())
    }
    let mut rng = Rng(0x0005_eed0_f3a7_2025);
    eprintln!("kernel path: {}", crate::kernels::active().as_str());
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q6K,
    ] {
        for &(n_rows, n_cols) in &[
            (1usize, 256usize),
            (3, 576),
            (17, 512),
            (40, 1536),
            (130, 288),
        ] {
            if n_cols % ty.block_size() != 0 {
                continue;
            }
            let w: Vec<u8> = (0..n_rows)
                .flat_map(|_| random_row(&mut rng, ty, n_cols))
                .collect();
            for n_acts in 1..=5 {
                let acts = random_acts(&mut rng, ty, n_acts, n_cols);
                let mut out = vec![f32::NAN; n_rows * n_acts];
                matmul(ty, &w, n_rows, n_cols, &acts, &mut out).unwrap();
                let rb = w.len() / n_rows;
                for (b, a) in acts.iter().enumerate() {
                    for r in 0..n_rows {
                        let row = &w[r * rb..(r + 1) * rb];
                        let want = match ty {
                            GgmlType::Q4_0 => scalar::<BlockQ4_0>(row, a),
                            GgmlType::Q4_1 => scalar::<BlockQ4_1>(row, a),
                            GgmlType::Q8_0 => scalar::<BlockQ8_0>(row, a),
                            GgmlType::Q4K => scalar::<BlockQ4K>(row, a),
                            _ => scalar::<BlockQ6K>(row, a),
                        };
                        let got = out[b * n_rows + r];
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{ty:?} {n_rows}x{n_cols}, {n_acts} acts: row {r} act {b}: {got:e} vs {want:e}"
                        );
                    }
                }
            }
        }
    }
}

/// Every kernel path this CPU supports (not only the active one `matmul` uses — on an
/// AVX-512 VNNI machine that leaves AVX2's wiring untested otherwise): its row kernel, with the
/// side data `QuantizedActs` keeps (f32 scales, `qsums`), gives the reference dot's bits.
#[test]
fn prop_every_supported_row_kernel_equals_the_scalar_reference_dot() {
    use crate::kernels::KernelPath;
    fn scalar<W: WeightBlock>(row: &[u8], a: &QuantizedActs) -> f32 {
        W::vec_dot(blocks::<W>(row), a.blocks::<W::VecDot>().unwrap())
    }
    let paths: Vec<KernelPath> = KernelPath::ALL
        .into_iter()
        .filter(|p| p.supported())
        .collect();
    eprintln!(
        "row kernels of paths {:?} (cpu features {:?})",
        paths.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        crate::kernels::cpu_features()
    );
    let mut rng = Rng(0x0006_eed0_f3a7_2025);
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q6K,
    ] {
        for &(n_rows, n_cols) in &[(1usize, 32usize), (5, 256), (3, 576), (17, 512), (9, 1568)] {
            if n_cols % ty.block_size() != 0 {
                continue;
            }
            let w: Vec<u8> = (0..n_rows)
                .flat_map(|_| random_row(&mut rng, ty, n_cols))
                .collect();
            let rb = w.len() / n_rows;
            let mut a = QuantizedActs::new();
            a.quantize_for(ty, &random_values(&mut rng, n_cols, 32))
                .unwrap();
            let want: Vec<f32> = w
                .chunks_exact(rb)
                .map(|row| match ty {
                    GgmlType::Q4_0 => scalar::<BlockQ4_0>(row, &a),
                    GgmlType::Q4_1 => scalar::<BlockQ4_1>(row, &a),
                    GgmlType::Q8_0 => scalar::<BlockQ8_0>(row, &a),
                    GgmlType::Q4K => scalar::<BlockQ4K>(row, &a),
                    _ => scalar::<BlockQ6K>(row, &a),
                })
                .collect();
            for &p in &paths {
                let mut out = vec![f32::NAN; n_rows];
                // `p` is supported (filtered above), `row_kernel`'s precondition.
                row_kernel(p, ty)(&w, rb, &a, &mut out);
                for (r, (g, w)) in out.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        w.to_bits(),
                        "{} {ty:?} {n_rows}x{n_cols}: row {r}: {g:e} vs {w:e}",
                        p.as_str()
                    );
                }
            }
        }
    }
}

/// Every kernel path this CPU supports that repacks Q4_0, then the scalar fallback.
fn packed_paths() -> Vec<crate::kernels::KernelPath> {
    use crate::kernels::KernelPath;
    KernelPath::ALL
        .into_iter()
        .filter(|&p| p.supported() && PackedMatrix::has_kernel(p, GgmlType::Q4_0))
        .chain([KernelPath::Scalar])
        .collect()
}

/// `matmul_packed` on a [`PackedMatrix`], for every kernel path this CPU supports that packs
/// (AVX2, AVX-512 VNNI) and for the scalar fallback, with the thread pool: every weight row ×
/// activation row is the scalar reference dot's bits — whole tiles of 8 to 200 rows, every
/// block tail, 1 to 9 activation rows (the kernels take 4 at a time, so every leftover
/// count), extreme values (zero blocks, i8 ±127, f16 scales from the quantizer).
#[test]
fn prop_matmul_packed_equals_the_scalar_reference_dot_bit_for_bit() {
    let mut rng = Rng(0x0007_eed0_f3a7_2025);
    let paths = packed_paths();
    eprintln!(
        "packed paths: {:?}",
        paths.iter().map(|p| p.as_str()).collect::<Vec<_>>()
    );
    let ty = GgmlType::Q4_0;
    for &(n_rows, n_cols) in &[
        (8usize, 32usize),
        (16, 576),
        (24, 608),
        (64, 1536),
        (200, 288),
    ] {
        let w: Vec<u8> = (0..n_rows)
            .flat_map(|_| random_row(&mut rng, ty, n_cols))
            .collect();
        let small: Vec<u8> = (0..16)
            .flat_map(|_| random_row(&mut rng, ty, n_cols))
            .collect();
        let small_packed = PackedMatrix::pack_q4_0(&small, 16, n_cols).unwrap();
        for n_acts in 1..=9 {
            let acts = random_acts(&mut rng, ty, n_acts, n_cols);
            for &p in &paths {
                let packed = match PackedMatrix::pack(p, ty, &w, n_rows, n_cols).unwrap() {
                    Some(m) => m,
                    None => PackedMatrix::pack_q4_0(&w, n_rows, n_cols).unwrap(),
                };
                assert_eq!(packed.bytes(), w.len(), "packing keeps the size");
                let check = |w: &[u8], n_rows: usize, out: &[f32], what: &str| {
                    let rb = w.len() / n_rows;
                    for (b, a) in acts.iter().enumerate() {
                        let y = a.blocks::<BlockQ8_0>().unwrap();
                        for r in 0..n_rows {
                            let want = q4_0::vec_dot_q4_0_q8_0(blocks(&w[r * rb..(r + 1) * rb]), y);
                            let got = out[b * n_rows + r];
                            assert_eq!(
                                got.to_bits(),
                                want.to_bits(),
                                "{} {what} {n_rows}x{n_cols}, {n_acts} acts: row {r} act {b}: {got:e} vs {want:e}",
                                p.as_str()
                            );
                        }
                    }
                };
                let mut out = vec![f32::NAN; n_rows * n_acts];
                matmul_packed_on(p, &mut [(&packed, &mut out)], &acts, Epilogue::Store).unwrap();
                check(&w, n_rows, &out, "one matrix");
                // Three matrices in one job (a small one before and after): each output as
                // from its own call.
                let mut o1 = vec![f32::NAN; 16 * n_acts];
                let mut o2 = vec![f32::NAN; n_rows * n_acts];
                let mut o3 = vec![f32::NAN; 16 * n_acts];
                matmul_packed_on(
                    p,
                    &mut [
                        (&small_packed, &mut o1),
                        (&packed, &mut o2),
                        (&small_packed, &mut o3),
                    ],
                    &acts,
                    Epilogue::Store,
                )
                .unwrap();
                check(&small, 16, &o1, "many[0]");
                check(&w, n_rows, &o2, "many[1]");
                check(&small, 16, &o3, "many[2]");
            }
        }
    }
}

/// The bench's kernel probe runs the decode GEMV on a tile range: the same bits as the full
/// packed matmul's rows there, whatever the repetitions, on every packing path; one-line errors
/// for a range past the matrix, a partial tile and activations of the wrong length.
#[test]
fn gemv_tiles_repeated_is_the_matmul_on_its_tiles() {
    let mut rng = Rng(0x6e77_1e5e_2026_1124);
    let ty = GgmlType::Q4_0;
    for &p in &packed_paths() {
        for &(rows, cols) in &[(64usize, 576usize), (40, 96), (8, 32)] {
            let w: Vec<u8> = (0..rows)
                .flat_map(|_| random_row(&mut rng, ty, cols))
                .collect();
            let Some(m) = PackedMatrix::pack(p, ty, &w, rows, cols).unwrap() else {
                continue;
            };
            let mut acts = QuantizedActs::new();
            acts.quantize_for(ty, &random_values(&mut rng, cols, 32))
                .unwrap();
            let mut full = vec![f32::NAN; rows];
            matmul_packed_on(
                p,
                &mut [(&m, &mut full)],
                std::slice::from_ref(&acts),
                Epilogue::Store,
            )
            .unwrap();
            let tiles = rows / 8;
            for (t, k, reps) in [
                (0, tiles, 1),
                (tiles - 1, 1, 3),
                (tiles / 2, tiles - tiles / 2, 2),
            ] {
                let mut out = vec![f32::NAN; 8 * k];
                gemv_tiles_repeated(p, &m, t, &acts, reps, &mut out).unwrap();
                for (r, (g, w)) in out.iter().zip(&full[8 * t..]).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        w.to_bits(),
                        "{} {rows}x{cols} tiles {t}+{k} row {r}: {g:e} vs {w:e}",
                        p.as_str()
                    );
                }
            }
            let mut out = vec![0f32; 16];
            for e in [
                gemv_tiles_repeated(p, &m, tiles - 1, &acts, 1, &mut out).unwrap_err(),
                gemv_tiles_repeated(p, &m, 0, &acts, 1, &mut out[..4]).unwrap_err(),
            ] {
                assert!(e.to_string().contains("probe tiles"), "{e}");
                assert!(!e.to_string().contains('\n'), "{e}");
            }
            let mut short = QuantizedActs::new();
            short.quantize_for(ty, &vec![0.5; cols - 32]).unwrap();
            let e = gemv_tiles_repeated(p, &m, 0, &short, 1, &mut out[..8]).unwrap_err();
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }
}

/// A [`PackArena`] packs each matrix, cut into 1–3 thread shares laid out share by share,
/// with the same tiles as [`PackedMatrix::pack`]'s own copy (so the same products, whatever
/// the shares against the pool's thread count: a kernel call then crosses no share), skips
/// what the path does not pack, and refuses a matrix it was not sized for or whose bytes are
/// wrong, with one-line errors.
#[test]
fn pack_arena_holds_the_same_tiles_as_single_packs() {
    let mut rng = Rng(0x00a7_e4a0_2026_1123);
    let ty = GgmlType::Q4_0;
    for &p in &packed_paths() {
        let shapes = [
            (8usize, 32usize),
            (24, 608),
            (64, 1536),
            (16, 576),
            (96, 64),
        ];
        let ws: Vec<Vec<u8>> = shapes
            .iter()
            .map(|&(r, c)| (0..r).flat_map(|_| random_row(&mut rng, ty, c)).collect())
            .collect();
        let q8 = random_row(&mut rng, GgmlType::Q8_0, 64);
        let single: Vec<Option<PackedMatrix>> = ws
            .iter()
            .zip(&shapes)
            .map(|(w, &(r, c))| PackedMatrix::pack(p, ty, w, r, c).unwrap())
            .collect();
        let tiles: Vec<(usize, usize)> = shapes
            .iter()
            .copied()
            .filter(|&(r, c)| PackedMatrix::tiles_for(p, ty, r, c).is_some())
            .collect();
        for shares in 1..=3 {
            let mut arena = PackArena::new(&tiles, shares).unwrap();
            let mut idx = Vec::new();
            for (i, (w, &(r, c))) in ws.iter().zip(&shapes).enumerate() {
                idx.push(arena.pack(p, ty, w, r, c).unwrap());
                if i == 1 {
                    // Not packed on any path: no index, no tiles used.
                    assert!(arena.pack(p, GgmlType::Q8_0, &q8, 1, 64).unwrap().is_none());
                }
            }
            // Full: the next matrix is an error, not a panic or an overrun.
            let e = arena.pack(p, ty, &ws[0], 8, 32);
            if single[0].is_some() {
                let e = e.unwrap_err();
                assert!(!e.to_string().contains('\n'), "{e}");
            }
            let e = PackArena::new(&[(8, 32)], shares)
                .unwrap()
                .pack(p, ty, &ws[0][..100], 8, 32)
                .map(|_| ());
            assert_eq!(e.is_err(), single[0].is_some(), "{e:?}");
            let packed = arena.finish();
            for (k, s) in single.iter().enumerate() {
                match (s, idx[k]) {
                    (None, None) => {}
                    (Some(s), Some(i)) => {
                        let a = &packed[i];
                        let what = format!("{} matrix {k}, {shares} shares", p.as_str());
                        assert_eq!((a.rows, a.cols), (s.rows, s.cols));
                        assert_eq!(a.bytes(), s.bytes(), "{what}");
                        assert_eq!(
                            bytemuck::cast_slice::<_, u8>(&a.tiles()),
                            bytemuck::cast_slice::<_, u8>(&s.tiles()),
                            "{what}"
                        );
                        // One and two activation rows: the same bits from both copies.
                        for nact in [1, 2] {
                            let acts = random_acts(&mut rng, ty, nact, a.cols);
                            let mut oa = vec![0f32; a.rows * nact];
                            let mut os = vec![1f32; a.rows * nact];
                            matmul_packed(a, &acts, &mut oa).unwrap();
                            matmul_packed(s, &acts, &mut os).unwrap();
                            let bits =
                                |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                            assert_eq!(bits(&oa), bits(&os), "{what}, {nact} rows");
                        }
                    }
                    (s, i) => panic!(
                        "{}: single pack {}, arena index {i:?}",
                        p.as_str(),
                        s.is_some()
                    ),
                }
            }
        }
    }
}

/// [`pre_slices`]: over all parts, every unit once, in contiguous slices that differ by at
/// most one unit; slice `j` on part `j % threads`; no empty slice handed out.
#[test]
fn pre_slices_cover_every_unit_once_evenly() {
    for units in 0..20 {
        for n in 1..12 {
            for threads in 1..5 {
                let mut seen = vec![0; units];
                let mut lens = vec![];
                for i in 0..threads {
                    for (j, u) in pre_slices(units, n, i, threads) {
                        assert_eq!(j % threads, i, "slice {j} on part {i}");
                        assert!(!u.is_empty());
                        lens.push(u.len());
                        u.for_each(|k| seen[k] += 1);
                    }
                }
                assert!(
                    seen.iter().all(|&c| c == 1),
                    "{units} units, {n} slices, {threads}"
                );
                let (lo, hi) = (lens.iter().min(), lens.iter().max());
                if let (Some(lo), Some(hi)) = (lo, hi) {
                    assert!(hi - lo <= 1, "{units} units in {n} slices: {lens:?}");
                }
            }
        }
    }
}

/// [`share`] cuts a matrix's tiles into contiguous, in-order shares that cover every tile
/// once, in whole 32-row blocks where the tiles come in fours.
#[test]
fn shares_cover_every_tile_once_in_order() {
    for tiles in [0usize, 1, 3, 4, 12, 13, 24, 72, 6144] {
        for shares in 1..=5 {
            let mut next = 0;
            for s in 0..shares {
                let r = share(tiles, s, shares);
                assert_eq!(r.start, next, "{tiles} tiles, {shares} shares");
                if tiles.is_multiple_of(4) {
                    assert!(r.start.is_multiple_of(4) && r.end.is_multiple_of(4));
                }
                next = r.end;
            }
            assert_eq!(next, tiles, "{tiles} tiles, {shares} shares");
        }
    }
}

/// A packed matmul refuses what the plain one refuses (one-line errors, no panic), and a path
/// without a GEMM kernel or rows that do not fill tiles are not packed.
#[test]
fn packed_matmul_checks_its_inputs() {
    use crate::kernels::KernelPath;
    let w = vec![0u8; 8 * 18];
    assert!(
        PackedMatrix::pack(KernelPath::Scalar, GgmlType::Q4_0, &w, 8, 32)
            .unwrap()
            .is_none()
    );
    assert!(
        PackedMatrix::pack(KernelPath::Avx2, GgmlType::Q8_0, &w, 8, 32)
            .unwrap()
            .is_none()
    );
    assert!(
        PackedMatrix::pack(KernelPath::Avx2, GgmlType::Q4_0, &w[..7 * 18], 7, 32)
            .unwrap()
            .is_none()
    );
    assert!(PackedMatrix::pack(KernelPath::Avx2, GgmlType::Q4_0, &w[..100], 8, 32).is_err());
    let p = PackedMatrix::pack_q4_0(&w, 8, 32).unwrap();
    let mut a = QuantizedActs::new();
    a.quantize_for(GgmlType::Q4_0, &[1.0; 64]).unwrap();
    let e = matmul_packed(&p, std::slice::from_ref(&a), &mut [0.0; 8]).unwrap_err();
    assert!(!e.to_string().contains('\n'), "{e}");
    a.quantize_for(GgmlType::Q4_0, &[1.0; 32]).unwrap();
    assert!(matmul_packed(&p, std::slice::from_ref(&a), &mut [0.0; 7]).is_err());
    a.quantize_for(GgmlType::Q4_1, &[1.0; 32]).unwrap();
    assert!(matmul_packed(&p, std::slice::from_ref(&a), &mut [0.0; 8]).is_err());
    // Several matrices: the same checks for each, plus one width and at most four.
    a.quantize_for(GgmlType::Q4_0, &[1.0; 32]).unwrap();
    let wide = PackedMatrix::pack_q4_0(&[0u8; 8 * 36], 8, 64).unwrap();
    let (mut o1, mut o2) = ([0.0; 8], [0.0; 8]);
    let e = matmul_packed_many(
        &mut [(&p, &mut o1), (&wide, &mut o2)],
        std::slice::from_ref(&a),
    )
    .unwrap_err();
    assert!(!e.to_string().contains('\n'), "{e}");
    let mut o = [[0.0f32; 8]; 5];
    let [o0, o1, o2, o3, o4] = &mut o;
    let mut jobs = [
        (&p, &mut o0[..]),
        (&p, &mut o1[..]),
        (&p, &mut o2[..]),
        (&p, &mut o3[..]),
        (&p, &mut o4[..]),
    ];
    assert!(matmul_packed_many(&mut jobs, std::slice::from_ref(&a)).is_err());
    assert!(matmul_packed_many(&mut jobs[..4], std::slice::from_ref(&a)).is_ok());
}

/// The fused epilogues of a packed matmul give the bits of the unfused steps, on every packing
/// path and the scalar fallback, with the thread pool: [`Epilogue::Accumulate`] equals storing
/// and adding afterwards; [`Epilogue::SwiGluQ8`] stores gate's and up's outputs as
/// [`Epilogue::Store`] does, `h` as [`act::swiglu_ref`] of them, and `next` exactly as
/// [`QuantizedActs::quantize_for`] of `h` (blocks, scales, sums). Rows of one 32-row block
/// (one part) to 48 blocks (split over the threads), every block tail of the columns, 1 to 9
/// activation rows; `next` starts out holding other activations (another type and length).
#[test]
fn prop_matmul_packed_epilogues_equal_the_unfused_steps() {
    use crate::kernels::act;
    let mut rng = Rng(0x0e91_0609_e5f1_2026);
    let paths = packed_paths();
    let ty = GgmlType::Q4_0;
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for &(n_rows, n_cols) in &[(32usize, 32usize), (64, 576), (96, 608), (1536, 64)] {
        let (gate, up) = (
            random_packed(&mut rng, n_rows, n_cols),
            random_packed(&mut rng, n_rows, n_cols),
        );
        for n_acts in [1, 2, 3, 5, 9] {
            let acts = random_acts(&mut rng, ty, n_acts, n_cols);
            let x0 = random_values(&mut rng, n_rows * n_acts, 8);
            for &p in &paths {
                let what = format!("{} {n_rows}x{n_cols}, {n_acts} acts", p.as_str());
                let store = |m: &PackedMatrix| {
                    let mut o = vec![f32::NAN; n_rows * n_acts];
                    matmul_packed_on(p, &mut [(m, &mut o)], &acts, Epilogue::Store).unwrap();
                    o
                };
                let (g, u) = (store(&gate), store(&up));

                let mut want = x0.clone();
                want.iter_mut().zip(&g).for_each(|(x, v)| *x += v);
                let mut x = x0.clone();
                matmul_packed_on(p, &mut [(&gate, &mut x)], &acts, Epilogue::Accumulate).unwrap();
                assert_eq!(bits(&x), bits(&want), "{what}: accumulate");

                let mut h_want = vec![0f32; n_rows * n_acts];
                act::swiglu_ref(&g, &u, &mut h_want);
                let (mut g2, mut u2, mut h) = (
                    vec![f32::NAN; n_rows * n_acts],
                    vec![f32::NAN; n_rows * n_acts],
                    vec![f32::NAN; n_rows * n_acts],
                );
                let mut next = random_acts(&mut rng, GgmlType::Q4_1, n_acts + 1, 64);
                matmul_packed_on(
                    p,
                    &mut [(&gate, &mut g2), (&up, &mut u2)],
                    &acts,
                    Epilogue::SwiGluQ8 {
                        h: &mut h,
                        next: &mut next,
                    },
                )
                .unwrap();
                assert_eq!(
                    (bits(&g2), bits(&u2)),
                    (bits(&g), bits(&u)),
                    "{what}: gate, up"
                );
                assert_eq!(bits(&h), bits(&h_want), "{what}: h");
                for (b, a) in next.iter().take(n_acts).enumerate() {
                    let mut w = QuantizedActs::new();
                    w.quantize_for(ty, &h_want[b * n_rows..(b + 1) * n_rows])
                        .unwrap();
                    assert_eq!((a.ty(), a.len()), (w.ty(), w.len()), "{what}: row {b}");
                    assert_eq!(a.bytes(), w.bytes(), "{what}: row {b} blocks");
                    assert_eq!(bits(a.scales()), bits(w.scales()), "{what}: row {b} scales");
                    assert_eq!(a.qsums(), w.qsums(), "{what}: row {b} sums");
                }
            }
        }
    }
}

/// A SwiGLU epilogue refuses what it cannot do with a one-line error: not exactly two
/// matrices, different or non-32-multiple rows, a wrong `h`, too few output rows.
#[test]
fn swiglu_epilogue_checks_its_inputs() {
    let w8 = PackedMatrix::pack_q4_0(&[0u8; 8 * 18], 8, 32).unwrap();
    let w32 = PackedMatrix::pack_q4_0(&[0u8; 32 * 18], 32, 32).unwrap();
    let w64 = PackedMatrix::pack_q4_0(&[0u8; 64 * 18], 64, 32).unwrap();
    let mut a = QuantizedActs::new();
    a.quantize_for(GgmlType::Q4_0, &[1.0; 32]).unwrap();
    let acts = std::slice::from_ref(&a);
    let mut next = [QuantizedActs::new()];
    let mut go = |jobs: &mut [(&PackedMatrix, &mut [f32])], h_len: usize, n_next: usize| {
        let mut h = vec![0f32; h_len];
        matmul_packed_then(
            jobs,
            acts,
            Epilogue::SwiGluQ8 {
                h: &mut h,
                next: &mut next[..n_next],
            },
        )
    };
    let (mut o1, mut o2) = (vec![0f32; 64], vec![0f32; 64]);
    let mut errs = vec![
        go(&mut [(&w32, &mut o1[..32])], 32, 1).unwrap_err(),
        go(&mut [(&w8, &mut o1[..8]), (&w8, &mut o2[..8])], 8, 1).unwrap_err(),
        go(&mut [(&w32, &mut o1[..32]), (&w64, &mut o2[..])], 32, 1).unwrap_err(),
        go(&mut [(&w32, &mut o1[..32]), (&w32, &mut o2[..32])], 31, 1).unwrap_err(),
        go(&mut [(&w32, &mut o1[..32]), (&w32, &mut o2[..32])], 32, 0).unwrap_err(),
    ];
    assert!(go(&mut [(&w32, &mut o1[..32]), (&w32, &mut o2[..32])], 32, 1).is_ok());
    // Zero columns: refused too (nothing to quantize from).
    let w0 = PackedMatrix::pack_q4_0(&[], 32, 0).unwrap();
    let mut a0 = QuantizedActs::new();
    a0.quantize_for(GgmlType::Q4_0, &[]).unwrap();
    let mut h = [0f32; 32];
    errs.push(
        matmul_packed_then(
            &mut [(&w0, &mut o1[..32]), (&w0, &mut o2[..32])],
            std::slice::from_ref(&a0),
            Epilogue::SwiGluQ8 {
                h: &mut h,
                next: &mut next[..1],
            },
        )
        .unwrap_err(),
    );
    for e in errs.drain(..) {
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}

/// Q8_0 activations keep, beside the blocks (the scalar quantizer's bytes), each block's scale
/// as the f32 of its stored f16 and its exact `Σ qs`, zero-padded to a multiple of 8 blocks:
/// every length from one block to 13, extreme and all-zero blocks, on the active path.
#[test]
fn q8_0_acts_scales_and_sums_follow_their_blocks() {
    let mut rng = Rng(0x5ca1_e5a0_0d5e_7e11);
    for nb in 1..=13usize {
        let mut x = random_values(&mut rng, nb * 32, 32);
        x[..32].fill(0.0);
        if nb > 1 {
            x[32] = 3.0e38;
        }
        let mut a = QuantizedActs::new();
        a.quantize_for(GgmlType::Q4_0, &x).unwrap();
        let mut want = vec![BlockQ8_0::zeroed(); nb];
        q8::quantize_row_q8_0(&x, &mut want);
        let y = a.blocks::<BlockQ8_0>().unwrap();
        assert_eq!(
            bytemuck::cast_slice::<_, u8>(y),
            bytemuck::cast_slice::<_, u8>(&want)
        );
        let padded = nb.next_multiple_of(8);
        assert_eq!(
            (a.scales().len(), a.qsums().len()),
            (padded, padded),
            "nb={nb}"
        );
        for (i, b) in want.iter().enumerate() {
            assert_eq!(
                a.scales()[i].to_bits(),
                b.d.get().to_bits(),
                "nb={nb} block {i}"
            );
            assert_eq!(
                a.qsums()[i],
                b.qs.iter().map(|&q| q as i32).sum::<i32>(),
                "nb={nb} block {i}"
            );
        }
        assert!(
            a.scales()[nb..].iter().all(|&v| v == 0.0) && a.qsums()[nb..].iter().all(|&v| v == 0)
        );
    }
}

/// A packed matmul whose parts each make their own activation row ([`matmul_packed_each`])
/// gives the bits of making the row once and running [`matmul_packed_on`] on it, with the
/// store and SwiGLU epilogues, on every packing path, for matrices of one part to several
/// per thread; each part's row is the one made. A `fill` that fails, or makes a row of the
/// wrong length, and too few rows for the threads are one-line errors.
#[test]
fn prop_matmul_packed_each_equals_one_shared_row() {
    let mut rng = Rng(0x9a27_ac75_eac4_2026);
    let ty = GgmlType::Q4_0;
    let threads = crate::kernels::pool::threads();
    let bits = finite_bits;
    for &(n_rows, n_cols) in &[(32usize, 64usize), (96, 608), (1536, 96)] {
        let (gate, up) = (
            random_packed(&mut rng, n_rows, n_cols),
            random_packed(&mut rng, n_rows, n_cols),
        );
        let x = random_values(&mut rng, n_cols, 32);
        let scale = random_values(&mut rng, n_cols, 8);
        // What every part makes: a row computed from two others (as a norm would be).
        let make = |row: &mut [f32]| {
            row.iter_mut()
                .zip(x.iter().zip(&scale))
                .for_each(|(r, (a, b))| *r = a * b)
        };
        let mut shared = QuantizedActs::new();
        shared.quantize_made_for(ty, n_cols, make).unwrap();
        let shared = std::slice::from_ref(&shared);
        for p in packed_paths() {
            let what = format!("{} {n_rows}x{n_cols}", p.as_str());
            let fill = |a: &mut QuantizedActs| a.quantize_made_for(ty, n_cols, make);
            let mut per_part = vec![QuantizedActs::new(); threads];
            let (mut o, mut want) = (vec![f32::NAN; n_rows], vec![f32::NAN; n_rows]);
            matmul_packed_on(p, &mut [(&gate, &mut want)], shared, Epilogue::Store).unwrap();
            matmul_packed_in(
                p,
                &mut [(&gate, &mut o)],
                Input::PerPart {
                    acts: &mut per_part,
                    fill: &fill,
                },
                Epilogue::Store,
            )
            .unwrap();
            assert_eq!(bits(&o), bits(&want), "{what}: store");
            assert_eq!(
                per_part[0].bytes(),
                shared[0].bytes(),
                "{what}: part 0's row"
            );

            let glu = |input: Input<'_, '_>| {
                let (mut g, mut u, mut h) =
                    (vec![0.0; n_rows], vec![0.0; n_rows], vec![0.0; n_rows]);
                let mut next = vec![QuantizedActs::new()];
                matmul_packed_in(
                    p,
                    &mut [(&gate, &mut g), (&up, &mut u)],
                    input,
                    Epilogue::SwiGluQ8 {
                        h: &mut h,
                        next: &mut next,
                    },
                )
                .unwrap();
                (bits(&g), bits(&u), bits(&h), next[0].bytes().to_vec())
            };
            let mut per_part = vec![QuantizedActs::new(); threads];
            assert!(
                glu(Input::Ready(shared))
                    == glu(Input::PerPart {
                        acts: &mut per_part,
                        fill: &fill
                    }),
                "{what}: SwiGLU"
            );
        }
    }
    let w = PackedMatrix::pack_q4_0(&[0u8; 64 * 18], 64, 32).unwrap();
    let mut o = vec![0f32; 64];
    let mut acts = vec![QuantizedActs::new(); threads];
    let errs = [
        matmul_packed_each(
            &mut [(&w, &mut o)],
            &mut acts,
            &|_| {
                Err(QuantError::Len {
                    what: "test row",
                    expected: 1,
                    got: 2,
                })
            },
            Epilogue::Store,
        )
        .unwrap_err(),
        matmul_packed_each(
            &mut [(&w, &mut o)],
            &mut acts,
            &|a| a.quantize_for(ty, &[1.0; 64]),
            Epilogue::Store,
        )
        .unwrap_err(),
        matmul_packed_each(
            &mut [(&w, &mut o)],
            &mut acts[..threads - 1],
            &|a| a.quantize_for(ty, &[1.0; 32]),
            Epilogue::Store,
        )
        .unwrap_err(),
    ];
    for e in errs {
        assert!(!e.to_string().contains('\n'), "{e}");
    }
    assert!(matmul_packed_each(
        &mut [(&w, &mut o)],
        &mut acts,
        &|a| a.quantize_for(ty, &[1.0; 32]),
        Epilogue::Store,
    )
    .is_ok());
}

/// Q8_0 activations written a part at a time ([`QuantizedActs::q8_0_parts`]), the parts in
/// any order, give the bytes, scales and sums of quantizing the whole row at once; part sizes
/// that are not whole blocks dividing the row are one-line errors.
#[test]
fn q8_0_parts_equal_one_whole_row() {
    let mut rng = Rng(0x0a87_5e9a_2026_1124);
    for (len, part) in [
        (32usize, 32usize),
        (576, 192),
        (576, 64),
        (96, 96),
        (1536, 512),
    ] {
        let x = random_values(&mut rng, len, 32);
        let mut whole = QuantizedActs::new();
        whole.quantize_for(GgmlType::Q4_0, &x).unwrap();
        let mut a = random_acts(&mut rng, GgmlType::Q4_1, 1, 64).remove(0);
        let mut parts: Vec<_> = a.q8_0_parts(len, part).unwrap().collect();
        assert_eq!(parts.len(), len / part);
        for (i, p) in parts.iter_mut().enumerate().rev() {
            p.quantize(&x[i * part..(i + 1) * part]);
        }
        assert_eq!((a.ty(), a.len()), (whole.ty(), whole.len()));
        assert_eq!(a.bytes(), whole.bytes(), "{len}/{part}");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(a.scales()), bits(whole.scales()), "{len}/{part}");
        assert_eq!(a.qsums(), whole.qsums(), "{len}/{part}");
    }
    let mut a = QuantizedActs::new();
    for (len, part) in [(64, 0), (64, 48), (96, 64), (64, 16)] {
        let e = a.q8_0_parts(len, part).err().expect("refused");
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}

/// Preparing Q8_0 activations that already are Q8_0 of that length leaves the blocks as
/// they are (their writers rewrite every one) but zeroes a padding that is not zero; any
/// other shape or type is prepared from scratch. Either way a part-by-part fill then equals
/// the whole row's quantization.
#[test]
fn q8_0_prepared_again_keeps_its_blocks_and_zeroes_its_padding() {
    let mut rng = Rng(0x9e9a_4e0a_2026_1124);
    let (len, part) = (576usize, 192usize);
    let x = random_values(&mut rng, len, 32);
    let mut whole = QuantizedActs::new();
    whole.quantize_for(GgmlType::Q4_0, &x).unwrap();
    let mut a = QuantizedActs::new();
    for p in a
        .q8_0_parts(len, part)
        .unwrap()
        .collect::<Vec<_>>()
        .iter_mut()
    {
        p.y.iter_mut().for_each(|b| b.qs = [7; 32]);
    }
    let before = a.bytes().to_vec();
    // Padding scribbled on (what a buggy writer could leave).
    let n = len / 32;
    let (_, d, s) = a.q8_0_mut();
    d[n..].fill(3.0);
    s[n..].fill(-5);
    let padded = d.len();
    assert!(padded > n, "576 values: padding expected");
    a.prepare_q8_0(len).unwrap();
    assert_eq!(a.bytes(), &before[..], "blocks kept");
    assert!(
        a.scales()[n..].iter().all(|&v| v == 0.0),
        "scales' padding zeroed"
    );
    assert!(
        a.qsums()[n..].iter().all(|&v| v == 0),
        "sums' padding zeroed"
    );
    // Another length: from scratch (zeros).
    a.prepare_q8_0(2 * len).unwrap();
    assert!(a.bytes().iter().all(|&b| b == 0) && a.len() == 2 * len);
    // And filled part by part after a reuse, the whole row's quantization.
    a.prepare_q8_0(len).unwrap();
    for (i, p) in a.q8_0_parts(len, part).unwrap().enumerate() {
        let mut p = p;
        p.quantize(&x[i * part..(i + 1) * part]);
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(a.bytes(), whole.bytes());
    assert_eq!(bits(a.scales()), bits(whole.scales()));
    assert_eq!(a.qsums(), whole.qsums());
}

/// [`attn_out_ffn`] (one job of stages) gives the bits of the separate steps: a
/// [`PreStage`] whose items quantize their parts of `wo`'s input (against one quantization of
/// the whole row), `wo` accumulated into `x`, gate and up on the row made from the new `x`
/// with the SwiGLU epilogue, down accumulated into `x`, then each next matrix on the row made
/// from the final `x`, two of them (keys with llama's RoPE, values) also into f16 cache rows
/// (against the rotation written out per head here); for several sizes of the residual and
/// FFN rows, with and without the first and last stages, on the active path. Mismatched
/// lengths are one-line errors, and nothing runs.
#[test]
fn prop_attn_out_ffn_equals_the_separate_steps() {
    use half::f16;
    let mut rng = Rng(0xa770_0ff1_2026_1124);
    let ty = GgmlType::Q4_0;
    let threads = crate::kernels::pool::threads().max(1);
    let bits = finite_bits;
    // Values of a realistic size, so the whole chain stays finite.
    let tame = |rng: &mut Rng, n: usize, sd: f32, mean: f32| -> Vec<f32> {
        (0..n).map(|_| mean + sd * rng.normal()).collect()
    };
    let (hd, kv_rows) = (16usize, 48usize);
    for &(d, dff, with_pre, with_then) in &[
        (64usize, 32usize, false, false),
        (96, 160, true, true),
        (576, 1536, true, true),
        (576, 1536, true, false),
        (192, 64, false, true),
        (320, 96, true, false),
    ] {
        let mut matrix = |rows: usize, cols: usize| {
            let v = tame(&mut rng, rows * cols, 0.05, 0.0);
            let mut w = vec![0u8; rows * cols / 32 * 18];
            quantize_row(ty, &v, &mut w).unwrap();
            PackedMatrix::pack_q4_0(&w, rows, cols).unwrap()
        };
        let (wo, gate, up, down) = (matrix(d, d), matrix(dff, d), matrix(dff, d), matrix(d, dff));
        let (n1, nk, nv) = (matrix(d, d), matrix(kv_rows, d), matrix(kv_rows, d));
        let att_values = tame(&mut rng, d, 1.0, 0.0);
        let mut att = QuantizedActs::new();
        att.quantize_for(ty, &att_values).unwrap();
        let x0 = tame(&mut rng, d, 1.0, 0.0);
        let (s1, s2) = (tame(&mut rng, d, 0.1, 1.0), tame(&mut rng, d, 0.1, 1.0));
        let angles = tame(&mut rng, hd / 2 - 2, 1.0, 0.0);
        let (cos, sin): (Vec<f32>, Vec<f32>) = angles.iter().map(|a| (a.cos(), a.sin())).unzip();
        let scaled = |s: &[f32]| {
            let s = s.to_vec();
            move |x: &[f32], a: &mut QuantizedActs| {
                a.quantize_made_for(ty, x.len(), |row| {
                    row.iter_mut()
                        .zip(x.iter().zip(&s))
                        .for_each(|(r, (x, s))| *r = x * s)
                })
            }
        };
        let (fill1, fill2) = (scaled(&s1), scaled(&s2));

        // The separate steps.
        let mut want_x = x0.clone();
        let wo_job = |x: &mut [f32]| {
            matmul_packed_then(
                &mut [(&wo, x)],
                std::slice::from_ref(&att),
                Epilogue::Accumulate,
            )
        };
        wo_job(&mut want_x).unwrap();
        let mut a1 = QuantizedActs::new();
        fill1(&want_x, &mut a1).unwrap();
        let (mut g, mut u, mut h) = (vec![0.0; dff], vec![0.0; dff], vec![0.0; dff]);
        let mut next = vec![QuantizedActs::new()];
        matmul_packed_then(
            &mut [(&gate, &mut g), (&up, &mut u)],
            std::slice::from_ref(&a1),
            Epilogue::SwiGluQ8 {
                h: &mut h,
                next: &mut next,
            },
        )
        .unwrap();
        matmul_packed_then(&mut [(&down, &mut want_x)], &next, Epilogue::Accumulate).unwrap();
        let mut a2 = QuantizedActs::new();
        fill2(&want_x, &mut a2).unwrap();
        let (mut w1, mut wk, mut wv) = (vec![0.0; d], vec![0.0; kv_rows], vec![0.0; kv_rows]);
        matmul_packed_then(
            &mut [(&n1, &mut w1), (&nk, &mut wk), (&nv, &mut wv)],
            std::slice::from_ref(&a2),
            Epilogue::Store,
        )
        .unwrap();
        // llama's RoPE, head by head, then f16.
        let mut roped = wk.clone();
        for head in roped.chunks_exact_mut(hd) {
            for i in 0..cos.len() {
                let (x0, x1) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = x0 * cos[i] - x1 * sin[i];
                head[2 * i + 1] = x0 * sin[i] + x1 * cos[i];
            }
        }
        let f16s = |v: &[f32]| {
            v.iter()
                .map(|&x| f16::from_f32(x).to_bits())
                .collect::<Vec<_>>()
        };

        // One job.
        let mut x = x0.clone();
        let (mut g2, mut u2, mut h2) = (
            vec![f32::NAN; dff],
            vec![f32::NAN; dff],
            vec![f32::NAN; dff],
        );
        let mut next2 = random_acts(&mut rng, GgmlType::Q4_1, 1, 64).remove(0);
        let mut att2 = if with_pre {
            random_acts(&mut rng, GgmlType::Q4_1, 1, 64).remove(0)
        } else {
            att.clone()
        };
        let mut part_acts = vec![QuantizedActs::new(); threads];
        let (mut o1, mut ok, mut ov) = (
            vec![f32::NAN; d],
            vec![f32::NAN; kv_rows],
            vec![f32::NAN; kv_rows],
        );
        let (mut k_row, mut v_row) = (vec![f16::NAN; kv_rows], vec![f16::NAN; kv_rows]);
        // Every part warms once, as the last stage starts.
        let warmed: Vec<std::sync::atomic::AtomicUsize> = (0..threads)
            .map(|_| std::sync::atomic::AtomicUsize::new(0))
            .collect();
        let warm = |i: usize| {
            warmed[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        let then = with_then.then(|| ThenStage {
            mats: [
                Some((&n1, &mut o1[..])),
                Some((&nk, &mut ok[..])),
                Some((&nv, &mut ov[..])),
                None,
            ],
            fill: &fill2,
            warm: Some(&warm),
            kv: Some(KvRows {
                k: 1,
                v: 2,
                k_row: &mut k_row,
                v_row: &mut v_row,
                head_dim: hd,
                cos: &cos,
                sin: &sin,
            }),
        });
        // The pre stage: wo's input in units of 32 values (as query heads), in slices of
        // contiguous units (as many as `slices`, some empty when there are more slices than
        // units), each quantized in two pieces through `Q8Part::sub` (as the attention
        // quantizes a slice KV head by KV head).
        let units = d / 32;
        let slices = [1, 2, 3, 5, units + 1][rng.below(5)];
        let mut items = vec![0usize; slices];
        let att_values = &att_values;
        let pre_f = |u: std::ops::Range<usize>, item: &mut usize, q: &mut Q8Part| {
            assert_eq!(q.blocks(), u.len(), "a slice's blocks");
            *item += u.len();
            let half = u.len() / 2;
            let v = &att_values[u.start * 32..u.end * 32];
            q.sub(0..half).quantize(&v[..half * 32]);
            q.sub(half..u.len()).quantize(&v[half * 32..]);
        };
        let pre = with_pre.then(|| PreStage {
            items: &mut items[..],
            units,
            unit_len: 32,
            f: &pre_f,
        });
        attn_out_ffn(
            AttnOutFfn {
                wo: &wo,
                att: &mut att2,
                x: &mut x,
                fill: &fill1,
                part_acts: &mut part_acts,
                gate: &gate,
                up: &up,
                down: &down,
                gate_out: &mut g2,
                up_out: &mut u2,
                h: &mut h2,
                next: &mut next2,
                then,
            },
            pre,
        )
        .unwrap();
        let what = format!("d {d}, n_ff {dff}");
        if with_pre {
            assert_eq!(
                items.iter().sum::<usize>(),
                units,
                "{what}: every unit once"
            );
        }
        let warms: Vec<usize> = warmed
            .iter()
            .map(|w| w.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        assert_eq!(
            warms,
            vec![usize::from(with_then); threads],
            "{what}: warm-ups per part"
        );
        assert_eq!(att2.bytes(), att.bytes(), "{what}: wo's input");
        assert_eq!(bits(&x), bits(&want_x), "{what}: x");
        assert_eq!(
            (bits(&g2), bits(&u2), bits(&h2)),
            (bits(&g), bits(&u), bits(&h)),
            "{what}: FFN rows"
        );
        assert_eq!(next2.bytes(), next[0].bytes(), "{what}: down's input");
        if with_then {
            assert_eq!(
                (bits(&o1), bits(&ov)),
                (bits(&w1), bits(&wv)),
                "{what}: next matrices"
            );
            assert_eq!(bits(&ok), bits(&roped), "{what}: keys, turned");
            assert_eq!(
                f16s(&roped),
                k_row.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            assert_eq!(
                f16s(&wv),
                v_row.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    // Wrong lengths: refused before anything runs.
    let m = |rows, cols| {
        PackedMatrix::pack_q4_0(&vec![0u8; rows * cols / 32 * 18], rows, cols).unwrap()
    };
    let (w64, w32x64, w64x32) = (m(64, 64), m(32, 64), m(64, 32));
    let fill = |x: &[f32], a: &mut QuantizedActs| a.quantize_for(ty, x);
    for case in 0..8 {
        let x0 = vec![1.0f32; 64];
        let mut att = random_acts(&mut rng, ty, 1, 64).remove(0);
        let mut x = if case == 0 { vec![1.0; 32] } else { x0.clone() };
        let mut part_acts =
            vec![QuantizedActs::new(); if case == 1 { threads - 1 } else { threads }];
        let (mut g, mut u, mut h) = (
            vec![0.0; 32],
            vec![0.0; 32],
            vec![0.0; if case == 2 { 31 } else { 32 }],
        );
        let (mut o, mut o2) = (vec![0.0; if case == 3 { 63 } else { 64 }], vec![0.0; 64]);
        let mut k_row = vec![half::f16::ZERO; 64];
        let mut next = QuantizedActs::new();
        let then = (case == 3 || case == 4).then(|| ThenStage {
            mats: [
                Some((&w64, &mut o[..])),
                Some((&w64, &mut o2[..])),
                None,
                None,
            ],
            fill: &fill,
            warm: None,
            // Case 4: the keys and values the same matrix.
            kv: (case == 4).then(|| KvRows {
                k: 0,
                v: 0,
                k_row: &mut k_row,
                v_row: &mut [],
                head_dim: 8,
                cos: &[],
                sin: &[],
            }),
        });
        let mut items = [(); 3];
        let pre_f = |_: std::ops::Range<usize>, _: &mut (), _: &mut Q8Part| {};
        // Case 5: units that do not cover wo's input; 6: units that are not whole blocks;
        // 7: no items.
        let pre = (5..=7).contains(&case).then(|| PreStage {
            items: &mut items[..if case == 7 { 0 } else { 3 }],
            units: [3, 4, 2][case - 5],
            unit_len: [32, 16, 32][case - 5],
            f: &pre_f,
        });
        let e = attn_out_ffn(
            AttnOutFfn {
                wo: &w64,
                att: &mut att,
                x: &mut x,
                fill: &fill,
                part_acts: &mut part_acts,
                gate: &w32x64,
                up: &w32x64,
                down: &w64x32,
                gate_out: &mut g,
                up_out: &mut u,
                h: &mut h,
                next: &mut next,
                then,
            },
            pre,
        )
        .expect_err("refused");
        assert!(!e.to_string().contains('\n'), "{e}");
        if case > 0 {
            assert_eq!(x, x0, "case {case}: x changed");
        }
    }
}
