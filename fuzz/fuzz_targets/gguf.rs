//! The GGUF reader on arbitrary bytes, then everything built from a file that parses: the
//! model's hyper-parameters and tensor table (`Model::from_gguf`) and the tokenizer
//! (`TokenizerSpec::from_gguf` + `Tokenizer::new`). Must never panic, hang or allocate more
//! than the input justifies.
#![no_main]
use expllm_edge::llm::gguf::GgufFile;
use expllm_edge::llm::model::Model;
use expllm_edge::llm::tokenizer::{Tokenizer, TokenizerSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // One compute thread: the forward passes here are tiny, and a pool worker would spin
    // beside each one (~21 % of the samples in a profile of a 1 M run) for nothing.
    expllm_edge::kernels::pool::set_threads(1);
    let Ok(g) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    if let Ok(spec) = TokenizerSpec::from_gguf(&g) {
        if let Ok(t) = Tokenizer::new(spec) {
            let mut ids = Vec::new();
            t.encode("Hello <|im_start|> wörld 123", true, &mut ids);
            let _ = t.decode(&ids);
        }
    }
    if let Ok(m) = Model::from_gguf(g) {
        // One forward pass on a tiny context: the tensor views and kernels on whatever
        // shapes and types the file declares.
        let mut st = m.new_state(2);
        let _ = m.forward(&mut st, 0, true);
    }
});
