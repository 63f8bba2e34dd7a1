//! Parity of our GGUF runtime with llama.cpp on the same file: next-token logits at every
//! prompt position (top-1 identical, max abs difference on llama.cpp's top-8 logits bounded)
//! and greedy continuations (identical ids), for SmolLM2-135M-Instruct Q4_1 and for the Q4_0
//! file our own `quantize` makes from it.
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

/// Max abs difference allowed between our logits and llama.cpp's (on llama.cpp's top-8 ids).
/// Both quantize activations to Q8 the same way; the rest is f32 summation order (ggml sums
/// in SIMD lanes, we sum sequentially) over 30 layers.
const MAX_LOGIT_DIFF: f32 = 0.1;

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

/// Returns the max abs logit difference seen.
fn check(model: &Model, g: &Value) -> f32 {
    let quick = std::env::var("EXPLLM_PARITY_QUICK").as_deref() == Ok("1");
    let cases = g["cases"].as_array().unwrap();
    let mut max_diff = 0f32;
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
            let top = argmax(logits);
            assert_eq!(
                top as u64,
                want["top1"].as_u64().unwrap(),
                "case {ci} position {pos}: top-1 differs"
            );
            for (id, l) in ids(&want["ids"])
                .iter()
                .zip(want["logits"].as_array().unwrap())
            {
                let d = (logits[*id as usize] - l.as_f64().unwrap() as f32).abs();
                max_diff = max_diff.max(d);
                assert!(
                    d <= MAX_LOGIT_DIFF,
                    "case {ci} position {pos} token {id}: |diff| {d}"
                );
            }
        }
        let want = ids(&case["greedy"]);
        let n = if quick {
            want.len().min(16)
        } else {
            want.len()
        };
        let mut got = Vec::new();
        let mut logits = st.logits().to_vec();
        for _ in 0..n {
            let t = argmax(&logits);
            got.push(t);
            if got.len() == n {
                break;
            }
            logits.copy_from_slice(model.forward(&mut st, t, true).unwrap().unwrap());
        }
        assert_eq!(got, want[..n], "case {ci}: greedy continuation differs");
    }
    max_diff
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
    let d = check(&model, &g);
    eprintln!("Q4_1: max |logit diff| vs llama.cpp = {d}");
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
    let d = check(&model, &g);
    eprintln!("Q4_0: max |logit diff| vs llama.cpp = {d}");
    std::fs::remove_dir_all(&dir).unwrap();
}
