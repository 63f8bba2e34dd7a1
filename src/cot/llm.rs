//! The LLM CoT stage: a GGUF instruct model (SmolLM2-135M-Instruct by default) writes the
//! description part of the condensed CoT, in a **scaffolded decode** that keeps it faithful by
//! construction where it can and checks the rest:
//!
//! 1. the assistant turn is pre-filled with the measured AU list, as the engine writes it
//!    (`AU6 C + AU12 D:`) — the model cannot invent or re-grade an AU there;
//! 2. the model writes the description, greedy, until a newline, an arrow, an end token or the
//!    budget (the whole line stays ≤ [`MAX_TOKENS`] tokens). The decode is **guided** (on by
//!    default): before a token is taken, the line so far plus that token goes through
//!    [`guide_accepts`] — a token that would name an AU, a FACS name, a letter or a face
//!    movement the measurements do not support, an AU code in the description, or an emotion
//!    other than the published label is vetoed, and greedy takes the most likely token that
//!    passes ([`generate_guided`]). The model still chooses every word;
//!    the guide only removes claims the evidence cannot back. `cot eval --unguided` measures
//!    the model without it;
//! 3. the label slot is constrained to the published label: ` → <label>` is appended by us (an
//!    allow-list of one), so the conclusion always equals the published label;
//! 4. the whole line goes through [`super::faithful::check`] (the description may still name an
//!    AU or an emotion); an unfaithful line is replaced by the engine's condensed CoT and counted.
//!    So is a run-on: a description the model did not end within the budget.
//!
//! The system turn and the start of the user turn are the same for every CoT: their keys and
//! values stay in the KV cache and each CoT prefills only the tokens after the longest common
//! prefix with the previous prompt (about half of the ~100 prompt tokens).
//!
//! Owns the prompt and the decode; must not touch frames or decide labels.

use std::path::Path;

use anyhow::{Context, Result};

use super::{engine, faithful, Cot, CotJob, CotSource, CotStage};
use crate::au::{facs_letter, AUS};
use crate::llm::chat;
use crate::llm::generate::{
    generate, generate_guided, Constraint, GenerateOptions, Sampler, StopReason,
};
use crate::llm::model::{Model, State};
use crate::llm::tokenizer::{Tokenizer, TokenizerSpec};
use crate::publish::LABELS;

/// The condensed CoT's token budget (prefix + description + arrow + label).
pub const MAX_TOKENS: usize = 32;

const SYSTEM: &str = "You describe facial expressions from measured facial action units (FACS). \
Continue the line with a few words saying what the listed action units show together. \
Do not name other action units.";

/// The user turn: the measured evidence only (up to four cited AUs with letters and names,
/// the published label).
pub fn user_message(aus: &crate::au::AuIntensities, label: usize) -> String {
    let cites = engine::cited(aus);
    let list: Vec<String> = cites
        .iter()
        .take(4)
        .map(|&k| format!("AU{} {} ({})", AUS[k].0, facs_letter(aus[k]), AUS[k].1))
        .collect();
    format!(
        "Action units: {}. Expression: {}.",
        list.join(", "),
        LABELS[label.min(6)]
    )
}

/// The whole prompt text up to and including the assistant's pre-filled `prefix` (the one the
/// fine-tune data uses too: `expllm cot data`).
pub fn prompt_text(
    chatml: bool,
    aus: &crate::au::AuIntensities,
    label: usize,
    prefix: &str,
) -> String {
    let user = user_message(aus, label);
    let mut text = if chatml {
        chat::chatml(Some(SYSTEM), &user)
    } else {
        format!("{SYSTEM}\n{user}\n")
    };
    text.push_str(prefix);
    text
}

/// What one CoT cost and what the model did before the check (for `expllm cot eval`).
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// The model ran (false: nothing measured, the engine's line was used directly).
    pub ran: bool,
    /// The description as the model wrote it.
    pub description: String,
    /// The model ended the description itself (newline, arrow or end token) within budget.
    pub ended: bool,
    /// Prompt tokens, and how many of them were already in the KV cache (prefix reuse).
    pub prompt_tokens: usize,
    pub reused_tokens: usize,
    pub generated_tokens: usize,
    /// Candidate tokens the guide vetoed (better-scored than the one taken). A step where the
    /// guide accepted none of the best leaves the description unended: a run-on.
    pub vetoed: usize,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    /// Eval only: the label the model picks itself when the slot allows all seven, and the
    /// time that extra step took (not part of a published CoT's latency).
    pub model_label: Option<usize>,
    pub label_ms: f64,
}

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
    /// The prompt tokens whose keys and values are in `st` (positions `0..cached.len()`): the
    /// next prompt reuses its longest common prefix with them (the system turn and the start
    /// of the user turn are the same every time) and prefills only the rest.
    cached: Vec<u32>,
    bytes: Vec<u8>,
    /// Veto unsupported evidence while decoding (see the module doc).
    guided: bool,
    /// The guide's buffers: a candidate token's bytes, and the line it would make.
    piece: Vec<u8>,
    line: Vec<u8>,
    /// First token of ` <label>` per label, if the seven are distinct (eval's free label slot).
    label_tokens: Option<[u32; 7]>,
    trace: Trace,
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
        let mut label_tokens = [0u32; 7];
        for (slot, l) in label_tokens.iter_mut().zip(LABELS) {
            let mut v = Vec::new();
            tok.encode(&format!(" {l}"), false, &mut v);
            *slot = v.first().copied().unwrap_or(u32::MAX);
        }
        let distinct = (0..7).all(|i| (0..i).all(|j| label_tokens[i] != label_tokens[j]));
        Ok(LlmStage {
            model,
            tok,
            st,
            chatml,
            opts,
            ids: Vec::with_capacity(512),
            cached: Vec::with_capacity(512),
            bytes: Vec::with_capacity(64),
            guided: true,
            piece: Vec::with_capacity(64),
            line: Vec::with_capacity(256),
            label_tokens: distinct.then_some(label_tokens),
            trace: Trace::default(),
        })
    }

    /// Tokens of `text` (no special tokens).
    pub fn count_tokens(&self, text: &str) -> usize {
        let mut v = Vec::new();
        self.tok.encode(text, false, &mut v);
        v.len()
    }

    /// Drop the cached prompt prefix: the next CoT prefills its whole prompt.
    pub fn forget(&mut self) {
        self.cached.clear();
        self.st.reset();
    }

    /// Turn the guided decode off (eval: the model's own faithfulness) or back on.
    pub fn set_guided(&mut self, on: bool) {
        self.guided = on;
    }

    /// What the last [`CotStage::explain`] did.
    pub fn last_trace(&self) -> &Trace {
        &self.trace
    }

    /// Generates the description after `prefix` for `job`; returns the raw description.
    fn describe(&mut self, job: &CotJob, prefix: &str, budget: usize) -> Result<String> {
        let text = prompt_text(self.chatml, &job.aus, job.label, prefix);
        self.ids.clear();
        self.tok.encode(&text, true, &mut self.ids);
        // Keep the cached prefix (at least one token must be fed to get logits).
        let keep = self
            .cached
            .iter()
            .zip(&self.ids)
            .take_while(|(a, b)| a == b)
            .count()
            .min(self.ids.len() - 1)
            .min(self.st.n_past());
        self.st.truncate(keep);
        self.cached.clear();
        self.cached.extend_from_slice(&self.ids);
        self.trace.prompt_tokens = self.ids.len();
        self.trace.reused_tokens = keep;
        self.opts.max_tokens = budget.max(1);
        // The description so far: written by `on_token`, read by the guide.
        let out = std::cell::RefCell::new(Vec::new());
        let (tok, bytes) = (&self.tok, &mut self.bytes);
        let (piece, line, aus, label) = (&mut self.piece, &mut self.line, &job.aus, job.label);
        let mut vetoed = 0usize;
        let mut guide = |t: u32| {
            if tok.is_eog(t) {
                return true;
            }
            piece.clear();
            tok.decode_token(t, piece);
            let p = String::from_utf8_lossy(piece);
            // A newline or an arrow ends the line: only the part before it would be kept.
            let p = &p[..p.find(['\n', '→']).unwrap_or(p.len())];
            line.clear();
            line.extend_from_slice(prefix.as_bytes());
            let desc = line.len();
            line.extend_from_slice(&out.borrow());
            line.extend_from_slice(p.as_bytes());
            let ok = guide_accepts(&String::from_utf8_lossy(line), desc, aus, label);
            vetoed += !ok as usize;
            ok
        };
        let mut ended = false;
        let mut first = None;
        let t0 = std::time::Instant::now();
        let (new, reason) = generate_guided(
            &self.model,
            &mut self.st,
            &self.ids[keep..],
            &self.opts,
            self.guided
                .then_some(&mut guide as &mut dyn FnMut(u32) -> bool),
            |t| {
                first.get_or_insert_with(std::time::Instant::now);
                if tok.is_eog(t) {
                    ended = true;
                    return false;
                }
                bytes.clear();
                tok.decode_token(t, bytes);
                let piece = String::from_utf8_lossy(bytes);
                let mut out = out.borrow_mut();
                if let Some(cut) = piece.find(['\n', '→']) {
                    out.extend_from_slice(piece[..cut].as_bytes());
                    ended = true;
                    return false;
                }
                out.extend_from_slice(bytes);
                true
            },
        )?;
        self.trace.vetoed = vetoed;
        let out = out.into_inner();
        let done = std::time::Instant::now();
        let first = first.unwrap_or(done);
        self.trace.prefill_ms = (first - t0).as_secs_f64() * 1e3;
        self.trace.decode_ms = (done - first).as_secs_f64() * 1e3;
        self.trace.generated_tokens = new.len();
        self.trace.ended = ended || reason == StopReason::StopToken;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Eval only: after a description, ` →` and one token picked among the seven labels'
    /// first tokens — the label the model would conclude if the slot were not the published one.
    fn free_label(&mut self) -> Result<Option<usize>> {
        let Some(labels) = self.label_tokens else {
            return Ok(None);
        };
        let mut arrow = Vec::new();
        self.tok.encode(" →", false, &mut arrow);
        if arrow.is_empty() || self.st.n_past() + arrow.len() + 1 > self.st.max_ctx() {
            return Ok(None);
        }
        let opts = GenerateOptions {
            max_tokens: 1,
            constraints: vec![Constraint {
                step: 0,
                allowed: labels.to_vec(),
            }],
            ..GenerateOptions::default()
        };
        let (t, _) = generate(&self.model, &mut self.st, &arrow, &opts, |_| true)?;
        Ok(t.first().and_then(|t| labels.iter().position(|l| l == t)))
    }

    /// [`CotStage::explain`], and with `free_label` also the label the model picks itself
    /// (in [`Self::last_trace`]); the published CoT is the same either way.
    pub fn explain_traced(&mut self, job: &CotJob, free_label: bool) -> Result<Cot> {
        self.trace = Trace::default();
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
            self.trace.ran = true;
            self.describe(job, &prefix, budget)?
        } else {
            String::new()
        };
        if free_label && self.trace.ran {
            let t0 = std::time::Instant::now();
            self.trace.model_label = self.free_label()?;
            self.trace.label_ms = t0.elapsed().as_secs_f64() * 1e3;
        }
        // A run-on (the budget ran out before the model ended its description) is cut
        // mid-thought: the engine's line replaces it like an unfaithful one.
        let kept = if self.trace.ended {
            description.as_str()
        } else {
            ""
        };
        let mut cot = finish(&prefix, kept, job, &e.condensed);
        // The budget is counted on the pieces; re-count the joined line and fall back if over.
        if cot.source == CotSource::Llm && self.count_tokens(&cot.text) > MAX_TOKENS {
            cot = finish(&prefix, "", job, &e.condensed);
        }
        self.trace.description = description;
        Ok(cot)
    }
}

/// The guide's rules for a line `prefix + description` so far (`desc` = where the description
/// starts): the faithfulness check's evidence rules on the whole line
/// ([`faithful::evidence_fault`]), and two format rules on the description — no AU code such as
/// `AU12` (the codes are the pre-filled list; a bare "AU" is fine) and no emotion word but the published label (the conclusion
/// after the arrow is the label; another emotion in the description would contradict it).
pub fn guide_accepts(
    line: &str,
    desc: usize,
    aus: &crate::au::AuIntensities,
    label: usize,
) -> bool {
    let d = line.get(desc..).unwrap_or("");
    faithful::evidence_fault(line, aus).is_none()
        && !faithful::names_au_code(d)
        && faithful::other_emotion(d, label).is_none()
}

/// Assembles `prefix description → label` and checks it; an unfaithful or empty line becomes
/// the engine's condensed CoT (`replaced`). Public for tests.
pub fn finish(prefix: &str, description: &str, job: &CotJob, engine_text: &str) -> Cot {
    let d = description
        .trim()
        .trim_end_matches(['.', ',', ';', ':', '-'])
        .trim();
    // A description that says the same thing twice ("brows lowered, brows lowered") is a
    // degenerate loop, not an explanation: treated like an empty one.
    let parts: Vec<String> = d
        .split([',', ';'])
        .map(|p| p.trim().to_ascii_lowercase())
        .filter(|p| !p.is_empty())
        .collect();
    let repeats = (0..parts.len()).any(|i| parts[..i].contains(&parts[i]));
    let d = if repeats { "" } else { d };
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
        self.explain_traced(job, false)
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
        // A loop that repeats a phrase: engine.
        let c = finish(
            "AU6 C + AU12 D:",
            "cheeks raised, lip corners pulled up, cheeks raised",
            &j,
            &engine_text,
        );
        assert!(c.replaced && c.text == engine_text);
    }

    #[test]
    fn the_guide_vetoes_unmeasured_evidence_codes_and_other_emotions() {
        let aus = crate::au::intensities(&[(6, 0.5), (12, 0.7)]);
        let p = "AU6 C + AU12 D:";
        let at = |d: &str| guide_accepts(&format!("{p}{d}"), p.len(), &aus, 3);
        assert!(at(" cheeks raised, a warm smile"));
        assert!(
            at(" a happy sm"),
            "an unfinished word is judged as it stands"
        );
        assert!(!at(" brows lowered"), "AU4 not measured");
        assert!(!at(" a sneer"), "AU9/10 not measured");
        assert!(!at(" AU12 D again"), "AU codes belong to the list");
        assert!(
            at(", no happiness AU; classifier"),
            "the engine's own words"
        );
        assert!(!at(" not quite sad"), "another emotion than the label");
        assert!(!at(" cheek raiser (AU6) and lip corner depressor"));
        // The pre-filled list itself is never vetoed.
        assert!(guide_accepts(p, p.len(), &aus, 3));
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
        // The engine's condensed line (the fallback and the fine-tune's target) fits the
        // budget on every kind of synthetic face.
        for i in 0..3000 {
            let c = super::super::synth::case(super::super::synth::Split::Train, 5, i);
            let t = engine::explain(&c.aus, &c.classifier).condensed;
            assert!(
                s.count_tokens(&t) <= MAX_TOKENS,
                "{} tokens: {t}",
                s.count_tokens(&t)
            );
        }
        let mut cold = LlmStage::load(&path).unwrap();
        for (n, (pairs, label)) in [
            (&[(6, 0.5), (12, 0.7)][..], 3),
            (&[(1, 0.6), (2, 0.5), (5, 0.5), (26, 0.6)][..], 5),
            (&[(4, 0.5), (7, 0.6)][..], 0),
            (&[][..], 6),
        ]
        .into_iter()
        .enumerate()
        {
            let j = job(pairs, label);
            let c = s.explain(&j).unwrap();
            eprintln!("{:?} {}", c.source, c.text);
            // The cached prompt prefix changes nothing: a cold stage writes the same line.
            cold.forget();
            let c2 = cold.explain(&j).unwrap();
            assert_eq!(c.text, c2.text);
            let t = s.last_trace();
            if t.ran {
                assert_eq!(cold.last_trace().reused_tokens, 0);
                if n > 0 {
                    assert!(t.reused_tokens > 20, "{t:?}");
                }
            }
            assert!(c.faithful, "{}", c.text);
            if c.source == CotSource::Llm {
                // A model line kept the guide's rules at every step, so also at the end.
                let (p, d) = c.text.split_once(':').unwrap();
                let d = d.rsplit_once(" →").unwrap().0;
                let line = format!("{p}:{d}");
                assert!(guide_accepts(&line, p.len() + 1, &j.aus, j.label), "{line}");
            }
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
