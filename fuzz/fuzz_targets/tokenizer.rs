//! The tokenizer on arbitrary text (bytes → lossy UTF-8), with and without special-token
//! parsing. Round trip: a byte the vocabulary has no token for is dropped (llama.cpp does the
//! same: SmolLM2 has none for e.g. 0x06 — found by this target), so the property is that a
//! second round trip changes nothing. Uses SmolLM2's real
//! tokenizer (`EXPLLM_FUZZ_MODEL`, default `../models/SmolLM2-135M-Instruct.Q4_1.gguf`).
#![no_main]
use std::sync::OnceLock;

use expllm_edge::llm::gguf::GgufFile;
use expllm_edge::llm::tokenizer::{Tokenizer, TokenizerSpec};
use libfuzzer_sys::fuzz_target;

fn tok() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let p = std::env::var("EXPLLM_FUZZ_MODEL")
            .unwrap_or_else(|_| "../models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
        let g = GgufFile::open(std::path::Path::new(&p)).expect("model for the tokenizer");
        Tokenizer::new(TokenizerSpec::from_gguf(&g).unwrap()).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let t = tok();
    let mut ids = Vec::new();
    t.encode(&text, true, &mut ids);
    let _ = t.decode(&ids);
    ids.clear();
    t.encode(&text, false, &mut ids);
    let once = t.decode(&ids);
    ids.clear();
    t.encode(&once, false, &mut ids);
    assert_eq!(t.decode(&ids), once, "byte-level BPE round trip");
});
