//! Parity of our GGUF runtime with llama.cpp on the same file: next-token logits at every
//! prompt position (top-1 identical, max abs difference on llama.cpp's top-8 logits bounded)
//! and greedy continuations (identical ids), for SmolLM2-135M-Instruct Q4_1, for the Q4_0
//! file our own `quantize` makes from it, and for two tiny synthetic models (qwen2; K-quants).
//!
//! Goldens: tests/golden/llm/*.json, produced by tests/golden/make_llm_goldens.py with
//! llama-cpp-python 0.3.36 (see the script's header for the exact commands and settings).
//! The model comes from `models/fetch`; without it these tests fail (set
//! EXPLLM_SKIP_MODEL_TESTS=1 to skip them knowingly). EXPLLM_PARITY_QUICK=1 checks two prompts
//! and 16 greedy tokens (used under qemu, where a full run takes too long).

use expllm_edge::kernels::GgmlType;
use expllm_edge::llm::model::Model;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Max allowed |(ours[id] - ours[top]) - (llama[id] - llama[top])| on llama.cpp's top-8 ids.
///
/// Why this large: SmolLM2's logits are very sensitive to rounding. llama.cpp disagrees with
/// *itself* by up to 0.9 (centered max over the vocabulary, same prompt, same file) between
/// its flash-attention and plain attention paths, or between an f16 and an f32 KV cache
/// (measured with llama-cpp-python 0.3.36 on this machine). Our runtime sits inside that band
/// (we see ≤ 0.7 on SmolLM2 and ≤ 0.13 on the tiny models); bit-identical logits would need
/// ggml's exact SIMD summation order, which also differs between llama.cpp's own x86 and ARM
/// builds.
const MAX_REL_DIFF: f32 = 1.5;
/// llama.cpp margins (top-1 minus top-2 logit) below this count as ties: at such a step
/// either token is a faithful greedy pick (well inside llama.cpp's own 0.9 disagreement).
/// Was 0.25 with a left-to-right block sum; the block-striped sum all our kernel paths share
/// (`kernels::quants::lane_total`) flips one SmolLM2 Q4_0 prompt position whose llama.cpp
/// margin is 0.28, with the same overall deviation (max relative diff 0.72 vs 0.65 before).
const NEAR_TIE: f32 = 0.3;

fn model_path() -> Option<PathBuf> {
    let p = std::env::var_os("EXPLLM_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if p.exists() {
        return Some(p);
    }
    if std::env::var("EXPLLM_SKIP_MODEL_TESTS").as_deref() == Ok("1") {
        eprintln!(
            "skipped: {} missing and EXPLLM_SKIP_MODEL_TESTS=1",
            p.display()
        );
        return None;
    }
    panic!(
        "{} is missing: run models/fetch (or set EXPLLM_SKIP_MODEL_TESTS=1 to skip)",
        p.display()
    );
}

fn golden(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/llm")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn sha256(path: &Path) -> String {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(path).unwrap();
    std::io::copy(&mut f, &mut h).unwrap();
    format!("{:x}", h.finalize())
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// What a comparison found.
#[derive(Debug, Default)]
struct Stats {
    /// Max |(ours[id] - ours[top]) - (ref[id] - ref[top])| over llama.cpp's top-8 ids: logit
    /// differences relative to the top token (a constant shift of all logits changes nothing).
    max_rel_diff: f32,
    /// Max |ours[id] - ref[id]| (includes any constant shift).
    max_abs_diff: f32,
    positions: usize,
    greedy_tokens: usize,
    greedy_identical_cases: usize,
    /// (case, step, llama.cpp's margin) where greedy stopped at a near-tie.
    near_ties: Vec<(usize, usize, f32)>,
}

fn check(model: &Model, g: &Value) -> Stats {
    let quick = std::env::var("EXPLLM_PARITY_QUICK").as_deref() == Ok("1");
    let cases = g["cases"].as_array().unwrap();
    let mut s = Stats::default();
    for (ci, case) in cases
        .iter()
        .enumerate()
        .take(if quick { 2 } else { usize::MAX })
    {
        let prompt = ids(&case["prompt_ids"]);
        let mut st = model.new_state(512);
        for (pos, (&t, want)) in prompt
            .iter()
            .zip(case["positions"].as_array().unwrap())
            .enumerate()
        {
            let logits = model.forward(&mut st, t, true).unwrap().unwrap();
            let want_ids = ids(&want["ids"]);
            let want_l: Vec<f32> = want["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_f64().unwrap() as f32)
                .collect();
            let top = want_ids[0] as usize;
            for (id, l) in want_ids.iter().zip(&want_l) {
                let rel = ((logits[*id as usize] - logits[top]) - (l - want_l[0])).abs();
                s.max_rel_diff = s.max_rel_diff.max(rel);
                s.max_abs_diff = s.max_abs_diff.max((logits[*id as usize] - l).abs());
            }
            let ours = argmax(logits);
            let margin = want_l[0] - want_l[1];
            assert!(
                ours == want_ids[0] || (margin < NEAR_TIE && ours == want_ids[1]),
                "case {ci} position {pos}: top-1 {ours}, llama.cpp {} (margin {margin})",
                want_ids[0]
            );
            s.positions += 1;
        }
        let want = ids(&case["greedy"]);
        let margins: Vec<f32> = case["greedy_margins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_f64().unwrap() as f32)
            .collect();
        let n = if quick {
            want.len().min(16)
        } else {
            want.len()
        };
        let mut logits = st.logits().to_vec();
        let mut identical = true;
        for step in 0..n {
            let t = argmax(&logits);
            if t != want[step] {
                // llama.cpp's top two were within NEAR_TIE: either is a faithful pick, and the
                // continuations may then legitimately differ. Anything else is a failure.
                assert!(
                    margins[step] < NEAR_TIE,
                    "case {ci}: greedy step {step}: {t} vs llama.cpp {} (margin {})",
                    want[step],
                    margins[step]
                );
                s.near_ties.push((ci, step, margins[step]));
                identical = false;
                break;
            }
            s.greedy_tokens += 1;
            if step + 1 < n {
                logits.copy_from_slice(model.forward(&mut st, t, true).unwrap().unwrap());
            }
        }
        s.greedy_identical_cases += identical as usize;
    }
    assert!(
        s.max_rel_diff <= MAX_REL_DIFF,
        "max relative logit difference {} > {MAX_REL_DIFF}",
        s.max_rel_diff
    );
    s
}

#[test]
fn q4_1_logits_and_greedy_match_llama_cpp() {
    let Some(path) = model_path() else { return };
    let g = golden("smollm2-q4_1.json");
    assert_eq!(
        sha256(&path),
        g["model_sha256"].as_str().unwrap(),
        "the golden was made from another file"
    );
    let model = Model::load(&path).unwrap();
    let s = check(&model, &g);
    eprintln!("Q4_1 vs llama.cpp: {s:?}");
}

/// Tiny synthetic models (tests/golden/make_tiny_models.py): qwen2 with biases, NeoX RoPE,
/// F16 embedding and untied Q8_0 output; llama with Q4_K, Q6_K, F16 weights and a BF16
/// tied embedding. Committed, so these run without `models/fetch`.
#[test]
fn tiny_qwen2_and_kquant_llama_match_llama_cpp() {
    for name in ["tiny-qwen2", "tiny-llama-kq"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/llm")
            .join(format!("{name}.gguf"));
        let g = golden(&format!("{name}.json"));
        assert_eq!(sha256(&path), g["model_sha256"].as_str().unwrap());
        let model = Model::load(&path).unwrap();
        let s = check(&model, &g);
        eprintln!("{name} vs llama.cpp: {s:?}");
    }
}

#[test]
fn requantized_q4_0_logits_and_greedy_match_llama_cpp() {
    let Some(path) = model_path() else { return };
    let dir = std::env::temp_dir().join(format!("expllm-q4_0-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("smollm2-q4_0.gguf");
    expllm_edge::llm::quantize::quantize_file(&path, &out, GgmlType::Q4_0, |_, _, _| {}).unwrap();
    let g = golden("smollm2-q4_0.json");
    assert_eq!(
        sha256(&out),
        g["model_sha256"].as_str().unwrap(),
        "our Q4_0 file is not the one the golden was made from"
    );
    let model = Model::load(&out).unwrap();
    let s = check(&model, &g);
    eprintln!("Q4_0 vs llama.cpp: {s:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
