//! [`TokenizerSpec::from_gguf`]: the tokenizer metadata of a GGUF file, with llama.cpp's
//! defaults for what the file leaves out (`llama_vocab::impl::load`).

use anyhow::{Context, Result};

use super::TokenizerSpec;
use crate::llm::gguf::GgufFile;

/// Pre-tokenizers for which llama.cpp adds BOS unless the file says otherwise.
const ADD_BOS_PRE: &[&str] = &[
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
    "tekken",
    "chameleon",
];

impl TokenizerSpec {
    /// Reads `tokenizer.ggml.*`. Missing special ids take llama.cpp's defaults (`llama`: BOS
    /// 1, EOS 2, UNK 0; `gpt2`: BOS = EOS = 11), as do `add_bos_token` (`llama`, and `gpt2`
    /// with a llama-3 style pre-tokenizer: true) and `add_space_prefix` (`llama`: true). An id
    /// outside the vocabulary is ignored (the default stays), as llama.cpp does.
    pub fn from_gguf(g: &GgufFile) -> Result<TokenizerSpec> {
        let model = g
            .get_str("tokenizer.ggml.model")?
            .context("GGUF has no tokenizer (tokenizer.ggml.model)")?
            .to_string();
        let pre = g.get_str("tokenizer.ggml.pre")?.map(str::to_string);
        let tokens = g
            .get_str_array("tokenizer.ggml.tokens")?
            .context("GGUF has no tokenizer.ggml.tokens")?
            .to_vec();
        let token_types = g
            .get_i32_array("tokenizer.ggml.token_type")?
            .map(<[i32]>::to_vec);
        let merges = g
            .get_str_array("tokenizer.ggml.merges")?
            .map(<[String]>::to_vec);
        // llama.cpp also accepts integer scores.
        let scores = match g.get_f32_array("tokenizer.ggml.scores") {
            Ok(s) => s.map(<[f32]>::to_vec),
            Err(e) => match g.get_i32_array("tokenizer.ggml.scores") {
                Ok(s) => s.map(|s| s.iter().map(|&x| x as f32).collect()),
                Err(_) => return Err(e),
            },
        };
        let n = tokens.len();
        let spm = model == "llama";
        let pre_name = pre.as_deref().unwrap_or("");
        let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        let id = |key: &str, default: Option<u32>| -> Result<Option<u32>> {
            let default = in_range(default);
            Ok(match g.get_u32(key)? {
                Some(i) if (i as usize) < n => Some(i),
                _ => default,
            })
        };
        let (bos0, eos0, unk0) = match model.as_str() {
            "llama" => (Some(1), Some(2), Some(0)),
            "gpt2" if matches!(pre_name, "chatglm-bpe" | "glm4" | "glm5") => (None, Some(11), None),
            "gpt2" => (Some(11), Some(11), None),
            _ => (None, None, None),
        };
        let add_bos = match g.get_bool("tokenizer.ggml.add_bos_token")? {
            Some(b) => b,
            None => spm || (model == "gpt2" && ADD_BOS_PRE.contains(&pre_name)),
        };
        let add_space_prefix = g
            .get_bool("tokenizer.ggml.add_space_prefix")?
            .unwrap_or(spm);
        Ok(TokenizerSpec {
            bos: id("tokenizer.ggml.bos_token_id", bos0)?,
            eos: id("tokenizer.ggml.eos_token_id", eos0)?,
            eot: id("tokenizer.ggml.eot_token_id", None)?,
            unk: id("tokenizer.ggml.unknown_token_id", unk0)?,
            pad: id("tokenizer.ggml.padding_token_id", None)?,
            model,
            pre,
            tokens,
            token_types,
            merges,
            scores,
            add_bos,
            add_space_prefix,
        })
    }
}
