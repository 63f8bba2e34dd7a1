//! Vision stage: frame in, face observations out (box, keypoints, 478-point mesh, 52
//! blendshapes, FACS AU intensities, class scores, a tracked face id).
//!
//! Owns the MediaPipe Face Landmarker pipeline run through `tract` ([`FaceLandmarker`]: BlazeFace
//! detector → rotated ROI → Face Mesh v2 → blendshapes) plus fer's mini-Xception classifier on
//! the aligned grey crop, and face tracking. Geometry is copied from MediaPipe's graphs
//! (`models/vision/mp_face_ref.py` is the readable reference; `tests/vision_parity.rs` checks
//! us against MediaPipe's own outputs). Must not publish, queue or explain: it returns plain
//! data to the daemon. The AU mapping itself lives in [`crate::au`].

pub mod blendshapes;
pub mod detector;
pub mod geometry;
pub mod mesh;
#[cfg(feature = "vision")]
mod net;
// Fuzz builds leave tract out (`default-features = false`): loading a model says so.
#[cfg(not(feature = "vision"))]
#[path = "net_stub.rs"]
mod net;
pub mod track;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::au::AuIntensities;
use crate::frame::Frame;
use detector::Detection;
use geometry::{Border, Rgb};
use net::Net;

/// The seven expression classes, in the classifier's output order.
pub use crate::publish::LABELS;

/// Side of the classifier's grey input.
pub const CLASSIFIER_INPUT: usize = 64;
/// The classifier crop's side relative to the eye-aligned landmark box.
pub const CLASSIFIER_SIDE_SCALE: f64 = 1.2;

/// One face seen in one frame. Coordinates are frame pixels (integer = pixel centre).
#[derive(Debug, Clone)]
pub struct FaceObservation {
    /// Stable across frames for the same tracked face.
    pub face_id: u32,
    /// `[x, y, w, h]`: min/max over the 478 landmarks (as MediaPipe's landmark box).
    pub bbox: [f32; 4],
    /// Index into [`LABELS`] of the published label: the argmax of `scores`.
    pub label: usize,
    /// Per-label probabilities in [`LABELS`] order: the classifier fused with the AU evidence
    /// ([`crate::cot::engine::fuse`], the rule the CoT's conclusion must agree with).
    pub scores: [f32; 7],
    /// The classifier's own probabilities (fer's mini-Xception), in [`LABELS`] order.
    pub classifier: [f32; 7],
    pub aus: AuIntensities,
    /// Detector score of the face's box.
    pub detection_score: f32,
    /// Face-presence score from the mesh model.
    pub presence: f32,
    /// The detector's six keypoints: eye, eye, nose tip, mouth centre, ear, ear.
    pub keypoints: [[f32; 2]; detector::KEYPOINTS],
    /// 478 points `[x, y, z]` (z in the scale of x); empty for stages without a mesh.
    pub landmarks: Vec<[f32; 3]>,
    /// MediaPipe's 52 coefficients in [`crate::au::BLENDSHAPE_NAMES`] order.
    pub blendshapes: [f32; blendshapes::OUTPUTS],
}

impl Default for FaceObservation {
    fn default() -> Self {
        FaceObservation {
            face_id: 0,
            bbox: [0.0; 4],
            label: 6,
            scores: [0.0; 7],
            classifier: [0.0; 7],
            aus: [0.0; crate::au::N_AUS],
            detection_score: 0.0,
            presence: 0.0,
            keypoints: [[0.0; 2]; detector::KEYPOINTS],
            landmarks: Vec::new(),
            blendshapes: [0.0; blendshapes::OUTPUTS],
        }
    }
}

/// A vision stage: replaces `faces` (the previous frame's, which it may recycle) with this
/// frame's.
pub trait VisionStage: Send {
    fn process(&mut self, frame: &Frame, faces: &mut Vec<FaceObservation>) -> anyhow::Result<()>;
    /// Short name for `status` (`passthrough`, `mediapipe-f32`, …).
    fn name(&self) -> &'static str;
    /// Per-stage time of the last `process` call (None for stages that do not measure).
    fn last_times(&self) -> Option<StageTimes> {
        None
    }
}

/// Finds no faces: `--vision off`, and the daemon's tests.
pub struct Passthrough;

impl VisionStage for Passthrough {
    fn process(&mut self, _frame: &Frame, faces: &mut Vec<FaceObservation>) -> anyhow::Result<()> {
        faces.clear();
        Ok(())
    }
    fn name(&self) -> &'static str {
        "passthrough"
    }
}

/// Which ONNX files the landmarker loads, and its settings.
#[derive(Debug, Clone)]
pub struct VisionConfig {
    /// Which variant the files are (names the stage in `status`).
    pub precision: Precision,
    pub detector: PathBuf,
    pub landmarks: PathBuf,
    pub blendshapes: PathBuf,
    pub classifier: PathBuf,
    /// Threads for tract's matmuls (1 = the calling thread only).
    pub threads: usize,
    /// Faces per frame at most (MediaPipe's `num_faces`).
    pub max_faces: usize,
    pub min_detection_score: f32,
    pub min_presence: f32,
    pub tracker: track::TrackerConfig,
}

/// Model precision: which files of `models/vision/` to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// The four f32 networks (the parity reference).
    F32,
    /// The classifier's dynamic int8 variant (ConvInteger on tract's integer kernels); the
    /// detector, mesh and blendshape networks stay f32 because no int8 variant of them holds
    /// parity (models/vision/PROVENANCE.md, "int8 verdict"). Benchmarks only: in tract it is
    /// ~10× *slower* than f32 and misses the 0.02 parity budget (0.033 on the disgust face),
    /// so the daemon never loads it (`expllm bench --stage vision` reports both).
    Int8,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
        }
    }
}

impl VisionConfig {
    /// The files of `dir` (normally `models/vision`) for `precision`, MediaPipe's defaults.
    pub fn from_dir(dir: &Path, precision: Precision) -> Self {
        let classifier = match precision {
            Precision::F32 => "emotion_mini_xception.onnx",
            Precision::Int8 => "emotion_mini_xception_int8_dyn.onnx",
        };
        VisionConfig {
            precision,
            detector: dir.join("face_detector.onnx"),
            landmarks: dir.join("face_landmarks.onnx"),
            blendshapes: dir.join("face_blendshapes.onnx"),
            classifier: dir.join(classifier),
            threads: 1,
            max_faces: 5,
            min_detection_score: detector::MIN_SCORE,
            min_presence: mesh::MIN_PRESENCE,
            tracker: track::TrackerConfig::default(),
        }
    }
}

/// Where the vision models live: `$EXPLLM_MODELS/vision`, else `models/vision`.
pub fn default_dir() -> PathBuf {
    crate::models::default_dir().join("vision")
}

/// Milliseconds per sub-stage of one frame (summed over its faces).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimes {
    /// Letterbox + detector network + decode + NMS.
    pub detect: f32,
    /// ROI crop + mesh network + projection, all faces.
    pub mesh: f32,
    /// Blendshape network + AU mapping, faces kept.
    pub blendshapes: f32,
    /// Grey crop + classifier network, faces kept.
    pub classifier: f32,
    /// Detector boxes sent to the mesh.
    pub candidates: u32,
    /// Faces kept (presence ≥ threshold).
    pub faces: u32,
}

/// MediaPipe's Face Landmarker (IMAGE mode, every frame detected afresh) + fer's classifier,
/// through tract. Loaded once; buffers reused across frames.
pub struct FaceLandmarker {
    cfg: VisionConfig,
    name: &'static str,
    detector: Net,
    landmarks: Net,
    blendshapes: Net,
    classifier: Net,
    anchors: Vec<[f32; 2]>,
    tracker: track::Tracker,
    raw: Vec<Detection>,
    /// Landmark buffers of earlier frames' faces, reused for the next ones.
    spare: Vec<Vec<[f32; 3]>>,
    nms: Vec<Detection>,
    boxes: Vec<[f32; 4]>,
    ids: Vec<u32>,
    times: StageTimes,
    /// Detector output of the last frame in image-normalised coordinates (for tests/debug).
    pub last_detections: Vec<Detection>,
}

impl FaceLandmarker {
    /// Loads and checks the four networks (a missing or wrong file is one clear error).
    pub fn load(cfg: VisionConfig) -> Result<Self> {
        let ex = || net::executor(cfg.threads);
        let d = detector::INPUT;
        let m = mesh::INPUT;
        let c = CLASSIFIER_INPUT;
        let detector = Net::load(
            &cfg.detector,
            &[1, d, d, 3],
            &[detector::ANCHORS * detector::COORDS, detector::ANCHORS],
            ex(),
        )
        .context("face detector")?;
        let landmarks = Net::load(
            &cfg.landmarks,
            &[1, m, m, 3],
            &[mesh::LANDMARKS * 3, 1],
            ex(),
        )
        .context("face mesh")?;
        let blendshapes = Net::load(
            &cfg.blendshapes,
            &[1, blendshapes::SUBSET.len(), 2],
            &[blendshapes::OUTPUTS],
            ex(),
        )
        .context("blendshapes")?;
        let classifier = Net::load(&cfg.classifier, &[1, c, c, 1], &[7], ex())
            .context("expression classifier")?;
        let name = match cfg.precision {
            Precision::F32 => "mediapipe-f32",
            Precision::Int8 => "mediapipe-int8",
        };
        Ok(FaceLandmarker {
            tracker: track::Tracker::new(cfg.tracker),
            name,
            detector,
            landmarks,
            blendshapes,
            classifier,
            anchors: detector::anchors(),
            raw: Vec::with_capacity(detector::ANCHORS),
            spare: Vec::with_capacity(cfg.max_faces.max(1)),
            nms: Vec::with_capacity(cfg.max_faces.max(1)),
            boxes: Vec::with_capacity(cfg.max_faces.max(1)),
            ids: Vec::with_capacity(cfg.max_faces.max(1)),
            times: StageTimes::default(),
            last_detections: Vec::with_capacity(cfg.max_faces.max(1)),
            cfg,
        })
    }

    /// The files loaded, for `status` and benchmarks.
    pub fn files(&self) -> [&str; 4] {
        [
            self.detector.name(),
            self.landmarks.name(),
            self.blendshapes.name(),
            self.classifier.name(),
        ]
    }

    /// Runs the whole pipeline on an RGB8 image. `faces` holds the previous frame's faces (or
    /// nothing); they are replaced, and their landmark buffers reused, so a warm frame with
    /// the same number of faces allocates nothing of ours (tract allocates its outputs).
    pub fn detect(&mut self, img: Rgb, faces: &mut Vec<FaceObservation>) -> Result<()> {
        self.spare.extend(faces.drain(..).map(|f| f.landmarks));
        self.times = StageTimes::default();
        let (w, h) = (img.width, img.height);

        // 1. Detector on the letterboxed whole image.
        let t = Instant::now();
        let (lb, pad) = geometry::letterbox(w, h);
        let d = detector::INPUT;
        self.detector.fill_input(|x| {
            geometry::warp_rgb(img, lb, d, d, Border::Zero, (2.0 / 255.0, -1.0), x)
        })?;
        self.detector.run()?;
        detector::decode(
            self.detector.output(0)?,
            self.detector.output(1)?,
            &self.anchors,
            self.cfg.min_detection_score,
            &mut self.raw,
        );
        detector::weighted_nms(
            &mut self.raw,
            detector::NMS_IOU,
            self.cfg.max_faces,
            &mut self.nms,
        );
        self.last_detections.clear();
        self.last_detections
            .extend(self.nms.iter().map(|n| detector::unletterbox(n, pad)));
        self.times.detect = ms(t);
        self.times.candidates = self.last_detections.len() as u32;

        for k in 0..self.last_detections.len() {
            let det = self.last_detections[k];
            // 2. Mesh on the rotated ROI.
            let t = Instant::now();
            let roi = detector::mesh_roi(detector::face_rect(&det, w, h));
            let m = mesh::INPUT;
            self.landmarks.fill_input(|x| {
                let px = roi.to_px(w, h);
                geometry::warp_rgb(img, px, m, m, Border::Replicate, (1.0 / 255.0, 0.0), x)
            })?;
            self.landmarks.run()?;
            let presence = mesh::presence(self.landmarks.output(1)?[0]);
            let mut face = FaceObservation {
                detection_score: det.score,
                presence,
                landmarks: self.spare.pop().unwrap_or_default(),
                ..Default::default()
            };
            let ok = mesh::project(self.landmarks.output(0)?, roi, w, h, &mut face.landmarks);
            self.times.mesh += ms(t);
            if !ok
                || presence < self.cfg.min_presence
                || face.landmarks.iter().flatten().any(|v| !v.is_finite())
            {
                self.spare.push(face.landmarks);
                continue;
            }
            for (kp, src) in face.keypoints.iter_mut().zip(det.keypoints) {
                *kp = [src[0] * w as f32, src[1] * h as f32];
            }
            face.bbox = mesh::bbox(&face.landmarks);

            // 3. Blendshapes from the 146-point subset, then AUs.
            let t = Instant::now();
            // `input` cannot fail here: the mesh gave all 478 points and the buffer is 146×2.
            self.blendshapes.fill_input(|x| {
                blendshapes::input(&face.landmarks, x);
            })?;
            self.blendshapes.run()?;
            face.blendshapes
                .copy_from_slice(self.blendshapes.output(0)?);
            face.aus = crate::au::aus_from_face(&face.blendshapes, &face.landmarks);
            self.times.blendshapes += ms(t);

            // 4. Classifier on the eye-aligned grey square, fused with the AU evidence.
            let t = Instant::now();
            if let Some(p) = self.classify(img, &face.landmarks)? {
                face.classifier = p;
            } else {
                face.classifier[6] = 1.0;
            }
            let ev = crate::cot::engine::evidence(&face.aus);
            face.scores = crate::cot::engine::fuse(&face.classifier, &ev);
            face.label = argmax(&face.scores);
            self.times.classifier += ms(t);
            faces.push(face);
        }
        self.times.faces = faces.len() as u32;
        // Bounded: never more spare buffers than faces a frame can have.
        self.spare.truncate(self.cfg.max_faces);

        // 5. Track ids.
        self.boxes.clear();
        self.boxes.extend(faces.iter().map(|f| f.bbox));
        self.tracker.update(&self.boxes, &mut self.ids);
        for (f, &id) in faces.iter_mut().zip(&self.ids) {
            f.face_id = id;
        }
        Ok(())
    }

    /// The classifier alone: fer's mini-Xception on the eye-aligned grey crop defined by 478
    /// landmarks in pixels (`None` when the landmarks cannot define a crop).
    pub fn classify(&mut self, img: Rgb, landmarks: &[[f32; 3]]) -> Result<Option<[f32; 7]>> {
        let Some(crop) = geometry::aligned_square(landmarks, CLASSIFIER_SIDE_SCALE) else {
            return Ok(None);
        };
        self.classifier
            .fill_input(|x| geometry::grey_crop(img, crop, CLASSIFIER_INPUT, x))?;
        self.classifier.run()?;
        let mut p = [0.0; 7];
        p.copy_from_slice(self.classifier.output(0)?);
        Ok(Some(p))
    }
}

impl VisionStage for FaceLandmarker {
    fn process(&mut self, frame: &Frame, faces: &mut Vec<FaceObservation>) -> anyhow::Result<()> {
        let img = Rgb::new(frame.width as usize, frame.height as usize, &frame.rgb)
            .context("frame buffer does not match its size")?;
        self.detect(img, faces)
    }
    fn name(&self) -> &'static str {
        self.name
    }
    fn last_times(&self) -> Option<StageTimes> {
        Some(self.times)
    }
}

fn ms(t: Instant) -> f32 {
    t.elapsed().as_secs_f32() * 1e3
}

/// Index of the largest finite value (6 = neutral when none is finite).
pub fn argmax(v: &[f32; 7]) -> usize {
    let mut best = 6;
    let mut bv = f32::NEG_INFINITY;
    for (k, &x) in v.iter().enumerate() {
        if x.is_finite() && x > bv {
            bv = x;
            best = k;
        }
    }
    best
}
