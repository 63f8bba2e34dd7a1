//! Vision stage: frame in, face observations out (box, id, AU intensities, class scores).
//!
//! Owns face detection, the 478-point mesh, blendshapes, the expression classifier and face
//! tracking (the vision issue fills these in through `tract`). Until then [`Passthrough`]
//! finds no faces, so the pipeline, output format and counters run for real on real frames.
//! Must not publish, queue or explain: it returns plain data to the daemon.

use crate::au::AuIntensities;
use crate::frame::Frame;

/// The seven expression classes, in the classifier's output order.
pub use crate::publish::LABELS;

/// One face seen in one frame.
#[derive(Debug, Clone)]
pub struct FaceObservation {
    /// Stable across frames for the same tracked face.
    pub face_id: u32,
    /// `[x, y, w, h]` in frame pixels.
    pub bbox: [f32; 4],
    /// Index into [`LABELS`] of the label.
    pub label: usize,
    /// Per-class probabilities in [`LABELS`] order.
    pub scores: [f32; 7],
    pub aus: AuIntensities,
}

/// A vision stage: fills `faces` (cleared by the caller) for one frame.
pub trait VisionStage: Send {
    fn process(&mut self, frame: &Frame, faces: &mut Vec<FaceObservation>) -> anyhow::Result<()>;
    /// Short name for `status` (`passthrough`, `mediapipe-int8`, …).
    fn name(&self) -> &'static str;
}

/// Finds no faces. Stands in until the vision models land; says so in `status` (`"vision":
/// "passthrough"`) and in the log at start.
pub struct Passthrough;

impl VisionStage for Passthrough {
    fn process(&mut self, _frame: &Frame, _faces: &mut Vec<FaceObservation>) -> anyhow::Result<()> {
        Ok(())
    }
    fn name(&self) -> &'static str {
        "passthrough"
    }
}
