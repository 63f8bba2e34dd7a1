//! A decode step allocates nothing: a counting global allocator watches 40 forward passes +
//! token picks (greedy and sampled) after warm-up, with the thread pool running (2 threads),
//! on SmolLM2 (Q4_1 + Q8_0 kernels) and the K-quant tiny model (Q4_K, Q6_K, F16, BF16).
//! Warm-up is allowed to allocate: the pool starts, the KV cache takes its first chunk, the
//! picker sizes its candidate buffer. One test per binary, so no other test's allocations
//! are counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use expllm_edge::kernels::pool;
use expllm_edge::llm::generate::{Picker, Rng, Sampler};
use expllm_edge::llm::model::Model;

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn models() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut v = vec![root.join("tests/golden/llm/tiny-llama-kq.gguf")];
    let smol = std::env::var_os("EXPLLM_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    // The tuned CoT model (Q4_0): its matrices go through the repacked GEMM.
    let tuned = root.join("models/SmolLM2-135M-Instruct-ExpCoT.Q4_0.gguf");
    if tuned.exists() && std::env::var_os("EXPLLM_TEST_MODEL").is_none() {
        v.push(tuned);
    }
    if smol.exists() {
        v.push(smol);
    } else if std::env::var("EXPLLM_SKIP_MODEL_TESTS").as_deref() != Ok("1") {
        panic!(
            "{} is missing: run models/fetch (or set EXPLLM_SKIP_MODEL_TESTS=1)",
            smol.display()
        );
    }
    v
}

#[test]
fn decode_steps_do_not_allocate() {
    pool::set_threads(2);
    for path in models() {
        let model = Model::load(&path).unwrap();
        let mut st = model.new_state(200);
        let mut picker = Picker::default();
        let mut rng = Rng::new(7);
        let greedy = Sampler::default();
        let sampled = Sampler {
            temperature: 0.8,
            top_p: 0.9,
            seed: 7,
        };
        // Warm-up: prompt, both samplers once.
        let mut tok = 1u32;
        for _ in 0..4 {
            model.forward(&mut st, tok, true).unwrap();
            tok = picker.pick(st.logits(), None, &sampled, &mut rng).unwrap();
            tok = tok.min(model.cfg.n_vocab as u32 - 1);
            picker.pick(st.logits(), None, &greedy, &mut rng).unwrap();
        }
        let before = ALLOCS.load(Relaxed);
        for step in 0..40 {
            let l = model.forward(&mut st, tok, true).unwrap().unwrap();
            let s = if step % 2 == 0 { &greedy } else { &sampled };
            tok = picker.pick(l, None, s, &mut rng).unwrap();
        }
        let n = ALLOCS.load(Relaxed) - before;
        assert_eq!(
            n,
            0,
            "{}: {n} allocations in 40 decode steps",
            path.display()
        );
        eprintln!("{}: 0 allocations in 40 decode steps", path.display());
    }
}
