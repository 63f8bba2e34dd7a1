//! The LLM CoT stage: a GGUF instruct model (SmolLM2-135M-Instruct by default) writes the
//! description part of the condensed CoT, in a **scaffolded decode** that keeps it faithful by
//! construction where it can and checks the rest:
//!
//! 1. the assistant turn is pre-filled with the measured AU list, as the engine writes it
//!    (`AU6 C + AU12 D:`) — the model cannot invent or re-grade an AU there;
//! 2. the model writes the description, greedy, until a newline, an arrow, an end token or the
//!    budget (the whole line stays ≤ [`MAX_TOKENS`] tokens);
//! 3. the label slot is constrained to the published label: ` → <label>` is appended by us (an
//!    allow-list of one), so the conclusion always equals the published label;
//! 4. the whole line goes through [`super::faithful::check`] (the description may still name an
//!    AU or an emotion); an unfaithful line is replaced by the engine's condensed CoT and counted.
//!
//! Owns the prompt and the decode; must not touch frames or decide labels.

use std::path::Path;

use anyhow::{Context, Result};

use super::{engine, faithful, Cot, CotJob, CotSource, CotStage};
use crate::au::{facs_letter, AUS};
use crate::llm::chat;
use crate::llm::generate::{generate, GenerateOptions, Sampler};
use crate::llm::model::{Model, State};
use crate::llm::tokenizer::{Tokenizer, TokenizerSpec};
use crate::publish::LABELS;

/// The condensed CoT's token budget (prefix + description + arrow + label).
pub const MAX_TOKENS: usize = 32;

const SYSTEM: &str = "You describe facial expressions from measured facial action units (FACS). \
Continue the line with a few words saying what the listed action units show together. \
Do not name other action units.";

/// The LLM stage: model, tokenizer and one KV state, loaded once and reused per CoT.
pub struct LlmStage {
    model: Model,
    tok: Tokenizer,
    st: State,
    chatml: bool,
    /// Greedy, stopping at the end-of-generation tokens (found once at load: scanning the
    /// vocabulary is not per-CoT work); `max_tokens` is set per CoT.
    opts: GenerateOptions,
    ids: Vec<u32>,
    bytes: Vec<u8>,
}

impl LlmStage {
    /// Loads a GGUF model (a ChatML instruct model gets its chat template).
    pub fn load(path: &Path) -> Result<Self> {
        let model = Model::load(path).with_context(|| format!("CoT model {}", path.display()))?;
        let tok = Tokenizer::new(TokenizerSpec::from_gguf(model.gguf())?)
            .context("CoT model tokenizer")?;
        let template = model
            .gguf()
            .get_str("tokenizer.chat_template")?
            .unwrap_or("");
        let chatml = chat::is_chatml(template);
        let st = model.new_state(512);
        let opts = GenerateOptions {
            max_tokens: MAX_TOKENS,
            sampler: Sampler::default(),
            stop_tokens: (0..tok.n_vocab() as u32)
                .filter(|&t| tok.is_eog(t))
                .collect(),
            constraints: Vec::new(),
        };
        Ok(LlmStage {
            model,
            tok,
            st,
            chatml,
            opts,
            ids: Vec::with_capacity(512),
            bytes: Vec::with_capacity(64),
        })
    }

    /// Tokens of `text` (no special tokens).
    pub fn count_tokens(&self, text: &str) -> usize {
        let mut v = Vec::new();
        self.tok.encode(text, false, &mut v);
        v.len()
    }

    /// Generates the description after `prefix` for `job`; returns the raw description.
    fn describe(&mut self, job: &CotJob, prefix: &str, budget: usize) -> Result<String> {
        let cites = engine::cited(&job.aus);
        let aus: Vec<String> = cites
            .iter()
            .take(4)
            .map(|&k| format!("AU{} {} ({})", AUS[k].0, facs_letter(job.aus[k]), AUS[k].1))
            .collect();
        let user = format!(
            "Action units: {}. Expression: {}.",
            aus.join(", "),
            LABELS[job.label.min(6)]
        );
        let mut text = if self.chatml {
            chat::chatml(Some(SYSTEM), &user)
        } else {
            format!("{SYSTEM}\n{user}\n")
        };
        text.push_str(prefix);
        self.ids.clear();
        self.tok.encode(&text, true, &mut self.ids);
        self.st.reset();
        self.opts.max_tokens = budget.max(1);
        let mut out = Vec::new();
        let (tok, bytes) = (&self.tok, &mut self.bytes);
        generate(&self.model, &mut self.st, &self.ids, &self.opts, |t| {
            if tok.is_eog(t) {
                return false;
            }
            bytes.clear();
            tok.decode_token(t, bytes);
            let piece = String::from_utf8_lossy(bytes);
            if let Some(cut) = piece.find(['\n', '→']) {
                out.extend_from_slice(piece[..cut].as_bytes());
                return false;
            }
            out.extend_from_slice(bytes);
            true
        })?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// Assembles `prefix description → label` and checks it; an unfaithful or empty line becomes
/// the engine's condensed CoT (`replaced`). Public for tests.
pub fn finish(prefix: &str, description: &str, job: &CotJob, engine_text: &str) -> Cot {
    let d = description
        .trim()
        .trim_end_matches(['.', ',', ';', ':', '-'])
        .trim();
    let label = job.label.min(6);
    let text = format!("{prefix} {d} → {}", LABELS[label]);
    if !d.is_empty() && faithful::check(&text, &job.aus, label).is_faithful() {
        return Cot {
            label,
            text,
            source: CotSource::Llm,
            faithful: true,
            replaced: false,
        };
    }
    let ok = faithful::check(engine_text, &job.aus, label).is_faithful();
    Cot {
        label,
        text: engine_text.to_string(),
        source: CotSource::Engine,
        faithful: ok,
        replaced: true,
    }
}

impl CotStage for LlmStage {
    fn explain(&mut self, job: &CotJob) -> Result<Cot> {
        let e = engine::explain(&job.aus, &job.classifier);
        // Nothing measured to describe: the engine's line says so.
        let Some((prefix, _)) = e
            .condensed
            .split_once(':')
            .filter(|_| !e.condensed.starts_with("no AU"))
        else {
            let ok = faithful::check(&e.condensed, &job.aus, job.label).is_faithful();
            return Ok(Cot {
                label: e.label,
                text: e.condensed,
                source: CotSource::Engine,
                faithful: ok,
                replaced: false,
            });
        };
        let prefix = format!("{prefix}:");
        let fixed = self.count_tokens(&format!("{prefix} → {}", LABELS[job.label.min(6)]));
        let budget = MAX_TOKENS.saturating_sub(fixed);
        let description = if budget > 0 {
            self.describe(job, &prefix, budget)?
        } else {
            String::new()
        };
        let mut cot = finish(&prefix, &description, job, &e.condensed);
        // The budget is counted on the pieces; re-count the joined line and fall back if over.
        if cot.source == CotSource::Llm && self.count_tokens(&cot.text) > MAX_TOKENS {
            cot = finish(&prefix, "", job, &e.condensed);
        }
        Ok(cot)
    }
    fn name(&self) -> &'static str {
        "llm"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn job(pairs: &[(u8, f32)], label: usize) -> CotJob {
        let aus = crate::au::intensities(pairs);
        let mut classifier = [0.0; 7];
        classifier[label] = 1.0;
        let scores = engine::fuse(&classifier, &engine::evidence(&aus));
        CotJob {
            seq: 0,
            ts_ms: 0,
            face_id: 1,
            label: crate::vision::argmax(&scores),
            scores,
            classifier,
            aus,
            captured: Instant::now(),
            queued: Instant::now(),
        }
    }

    #[test]
    fn the_label_slot_is_the_published_label_and_inventions_fall_back() {
        let j = job(&[(6, 0.5), (12, 0.7)], 3);
        let engine_text = engine::explain(&j.aus, &j.classifier).condensed;
        let c = finish("AU6 C + AU12 D:", "a warm smile", &j, &engine_text);
        assert_eq!(c.text, "AU6 C + AU12 D: a warm smile → happy");
        assert_eq!(
            (c.source, c.faithful, c.replaced),
            (CotSource::Llm, true, false)
        );
        // The description names an AU that was not measured: the engine's line replaces it.
        let c = finish("AU6 C + AU12 D:", "AU9 nose wrinkle", &j, &engine_text);
        assert_eq!(
            (c.source, c.replaced, c.faithful),
            (CotSource::Engine, true, true)
        );
        assert_eq!(c.text, engine_text);
        // It ends with another emotion word: the conclusion is still the appended label.
        let c = finish("AU6 C + AU12 D:", "not sadness", &j, &engine_text);
        assert!(c.text.ends_with("→ happy") && c.faithful);
        // Empty description: engine.
        assert!(finish("AU6 C + AU12 D:", "  ", &j, &engine_text).replaced);
    }

    #[test]
    fn with_the_real_model_every_line_is_faithful_short_and_concludes_the_label() {
        let path = std::env::var_os("EXPLLM_TEST_MODEL")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
            });
        if std::env::var_os("EXPLLM_SKIP_MODEL_TESTS").is_some() {
            return;
        }
        assert!(
            path.exists(),
            "{} missing: run models/fetch",
            path.display()
        );
        let mut s = LlmStage::load(&path).unwrap();
        for (pairs, label) in [
            (&[(6, 0.5), (12, 0.7)][..], 3),
            (&[(1, 0.6), (2, 0.5), (5, 0.5), (26, 0.6)][..], 5),
            (&[(4, 0.5), (7, 0.6)][..], 0),
            (&[][..], 6),
        ] {
            let j = job(pairs, label);
            let c = s.explain(&j).unwrap();
            eprintln!("{:?} {}", c.source, c.text);
            assert!(c.faithful, "{}", c.text);
            assert_eq!(c.label, j.label);
            assert!(
                c.text.ends_with(&format!("→ {}", LABELS[j.label])),
                "{}",
                c.text
            );
            assert!(s.count_tokens(&c.text) <= MAX_TOKENS, "{}", c.text);
        }
    }
}
