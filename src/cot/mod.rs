//! CoT stage: AU evidence and class scores in, a condensed chain of thought out.
//!
//! Owns the Exp-CoT engine (deterministic explanations from EMFACS prototypes), the prompt
//! for the LLM, and the faithfulness check (the Exp-CoT issue fills these in). It runs on its
//! own thread behind its own bounded queue; the label is published before it runs and never
//! waits for it. Must not touch frames or the vision models.

pub mod engine;
pub mod faithful;
pub mod llm;
pub mod synth;

use crate::au::AuIntensities;

/// What the daemon hands the CoT stage for one face at one frame.
#[derive(Debug, Clone)]
pub struct CotJob {
    pub seq: u64,
    pub ts_ms: u64,
    pub face_id: u32,
    /// Index into [`crate::publish::LABELS`] of the published label.
    pub label: usize,
    /// Fused per-label probabilities (what the label is the argmax of).
    pub scores: [f32; 7],
    /// The classifier's own probabilities.
    pub classifier: [f32; 7],
    pub aus: AuIntensities,
    /// When the frame was captured, for end-to-end latency.
    pub captured: std::time::Instant,
    /// When the job was queued, for queue latency.
    pub queued: std::time::Instant,
}

/// Where a CoT's text came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CotSource {
    Llm,
    Engine,
}

impl CotSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CotSource::Llm => "llm",
            CotSource::Engine => "engine",
        }
    }
}

/// One explanation.
#[derive(Debug, Clone)]
pub struct Cot {
    pub label: usize,
    pub text: String,
    pub source: CotSource,
    pub faithful: bool,
    /// A generated text failed the check (or ran on past the token budget) and this is the
    /// engine's replacement (counted in `cot_unfaithful`).
    pub replaced: bool,
}

/// A CoT stage: explains one job. Slow by nature (an LLM); the daemon runs it on its own
/// thread and drops jobs it cannot keep up with.
pub trait CotStage: Send {
    fn explain(&mut self, job: &CotJob) -> anyhow::Result<Cot>;
    fn name(&self) -> &'static str;
}

/// What the engine stage publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineMode {
    /// The one-line condensed CoT.
    Condensed,
    /// The three-part text (key observations, interpretation, conclusion).
    Full,
}

/// The deterministic Exp-CoT engine as a stage (`--cot full`, and `--cot condensed` until the
/// LLM stage is configured). Its conclusion is the published label by construction (same
/// fusion rule); the faithfulness check still runs on its text and would count a failure.
pub struct EngineStage(pub EngineMode);

impl CotStage for EngineStage {
    fn explain(&mut self, job: &CotJob) -> anyhow::Result<Cot> {
        let e = engine::explain(&job.aus, &job.classifier);
        // In the pipeline e.label == job.label (same fusion). A job labelled by other means
        // gets the engine's own conclusion, which the check then reports as not faithful to
        // the published label.
        let text = match self.0 {
            EngineMode::Condensed => e.condensed,
            EngineMode::Full => e.full,
        };
        let faithful = faithful::check(&text, &job.aus, job.label).is_faithful();
        Ok(Cot {
            label: e.label,
            text,
            source: CotSource::Engine,
            faithful,
            replaced: false,
        })
    }
    fn name(&self) -> &'static str {
        match self.0 {
            EngineMode::Condensed => "engine-condensed",
            EngineMode::Full => "engine-full",
        }
    }
}
