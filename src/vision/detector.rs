//! BlazeFace short-range post-processing, as MediaPipe's FaceDetectorGraph does it: the 896
//! SSD anchors, box and six-keypoint decoding, sigmoid scores, weighted NMS, removal of the
//! letterbox, and the face rect (rotation from the eye keypoints) expanded into the mesh ROI.
//!
//! Pure functions over the model's raw outputs (the network itself runs in
//! `super::net`); checked against the intermediate goldens of `tests/golden/vision/`.

use super::geometry::Rect;

/// Side of the detector's square input tensor.
pub const INPUT: usize = 128;
/// Number of SSD anchors (16×16×2 + 8×8×6).
pub const ANCHORS: usize = 896;
/// Values per anchor in the regressor output: box x, y, w, h, then 6 keypoints × (x, y).
pub const COORDS: usize = 16;
/// Keypoints per detection: eye, eye, nose tip, mouth centre, ear tragion, ear tragion.
pub const KEYPOINTS: usize = 6;
/// FaceLandmarker's default minimum detection score.
pub const MIN_SCORE: f32 = 0.5;
/// FaceLandmarker's NMS IoU threshold (`FaceDetectorGraphOptions.min_suppression_threshold`).
pub const NMS_IOU: f32 = 0.5;
/// The face rect is scaled by this to get the mesh ROI (RectTransformationCalculator).
pub const ROI_SCALE: f32 = 1.5;

/// One face box in normalised coordinates (of the letterboxed tensor, or of the image after
/// [`unletterbox`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Detection {
    pub score: f32,
    pub xmin: f32,
    pub ymin: f32,
    pub w: f32,
    pub h: f32,
    pub keypoints: [[f32; 2]; KEYPOINTS],
    /// Anchor index of the best box (before NMS: its own).
    pub anchor: u16,
    /// How many raw boxes NMS averaged into this one (1 before NMS).
    pub merged: u16,
}

/// SsdAnchorsCalculator with FaceDetectorGraph's options (4 layers, strides 8, 16, 16, 16,
/// offsets 0.5, fixed anchor size so w = h = 1): the 896 anchor centres, layer by layer, row
/// by row, column by column, anchor by anchor.
pub fn anchors() -> Vec<[f32; 2]> {
    let mut out = Vec::with_capacity(ANCHORS);
    // Layers with equal strides share one grid: stride 8 → 2 anchors per cell (one per
    // aspect/scale pair: the layer's scale and the interpolated one), stride 16 (3 layers)
    // → 6 per cell.
    for (stride, per_cell) in [(8usize, 2usize), (16, 6)] {
        let n = INPUT.div_ceil(stride);
        for y in 0..n {
            for x in 0..n {
                for _ in 0..per_cell {
                    out.push([(x as f32 + 0.5) / n as f32, (y as f32 + 0.5) / n as f32]);
                }
            }
        }
    }
    debug_assert_eq!(out.len(), ANCHORS);
    out
}

/// TensorsToDetectionsCalculator: every anchor whose sigmoid score (logit clipped to ±100)
/// is ≥ `min_score`, decoded into `out` (cleared first) in anchor order. Boxes with negative
/// width or height are dropped, as MediaPipe does.
pub fn decode(
    regressors: &[f32],
    logits: &[f32],
    anchors: &[[f32; 2]],
    min_score: f32,
    out: &mut Vec<Detection>,
) {
    out.clear();
    let n = anchors
        .len()
        .min(logits.len())
        .min(regressors.len() / COORDS);
    let scale = INPUT as f32;
    for i in 0..n {
        let logit = logits[i];
        if logit.is_nan() {
            continue;
        }
        let score = 1.0 / (1.0 + (-(logit.clamp(-100.0, 100.0) as f64)).exp());
        let score = score as f32;
        if score < min_score {
            continue;
        }
        let r = &regressors[i * COORDS..(i + 1) * COORDS];
        let [ax, ay] = anchors[i];
        let (xc, yc) = (r[0] / scale + ax, r[1] / scale + ay);
        let (w, h) = (r[2] / scale, r[3] / scale);
        if !(w >= 0.0 && h >= 0.0 && xc.is_finite() && yc.is_finite()) {
            continue;
        }
        let mut keypoints = [[0.0; 2]; KEYPOINTS];
        for (k, kp) in keypoints.iter_mut().enumerate() {
            *kp = [r[4 + 2 * k] / scale + ax, r[5 + 2 * k] / scale + ay];
        }
        out.push(Detection {
            score,
            xmin: xc - w / 2.0,
            ymin: yc - h / 2.0,
            w,
            h,
            keypoints,
            anchor: i as u16,
            merged: 1,
        });
    }
}

/// Intersection over union of two axis-aligned boxes (0 when they do not overlap or a box is
/// empty).
pub fn iou(a: &Detection, b: &Detection) -> f32 {
    iou_xywh([a.xmin, a.ymin, a.w, a.h], [b.xmin, b.ymin, b.w, b.h])
}

/// IoU of two `[x, y, w, h]` boxes.
pub fn iou_xywh(a: [f32; 4], b: [f32; 4]) -> f32 {
    let ix0 = a[0].max(b[0]);
    let iy0 = a[1].max(b[1]);
    let ix1 = (a[0] + a[2]).min(b[0] + b[2]);
    let iy1 = (a[1] + a[3]).min(b[1] + b[3]);
    if !(ix1 > ix0 && iy1 > iy0) {
        return 0.0;
    }
    let inter = (ix1 - ix0) * (iy1 - iy0);
    let union = a[2] * a[3] + b[2] * b[3] - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// NonMaxSuppressionCalculator, WEIGHTED: best score first; every remaining box with IoU >
/// `threshold` against it (itself included) is averaged into it, corners and keypoints
/// weighted by score; the score stays the best's. `dets` is used as scratch (sorted,
/// consumed); `out` is cleared first. At most `max_out` results.
pub fn weighted_nms(
    dets: &mut Vec<Detection>,
    threshold: f32,
    max_out: usize,
    out: &mut Vec<Detection>,
) {
    out.clear();
    // Stable sort: equal scores keep anchor order, as Python's sorted() and std::stable_sort.
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    while !dets.is_empty() && out.len() < max_out {
        let best = dets[0];
        let (mut tot, mut x0, mut y0, mut x1, mut y1) = (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0.0f64);
        let mut kps = [[0.0f64; 2]; KEYPOINTS];
        let mut merged = 0u16;
        dets.retain(|d| {
            if iou(d, &best) > threshold {
                let s = d.score as f64;
                tot += s;
                x0 += d.xmin as f64 * s;
                y0 += d.ymin as f64 * s;
                x1 += (d.xmin + d.w) as f64 * s;
                y1 += (d.ymin + d.h) as f64 * s;
                for (k, kp) in kps.iter_mut().enumerate() {
                    kp[0] += d.keypoints[k][0] as f64 * s;
                    kp[1] += d.keypoints[k][1] as f64 * s;
                }
                merged += 1;
                false
            } else {
                true
            }
        });
        if merged == 0 || tot <= 0.0 {
            // The best box overlaps nothing, not even itself (empty box): MediaPipe keeps it
            // and stops.
            out.push(best);
            break;
        }
        let mut w = best;
        w.xmin = (x0 / tot) as f32;
        w.ymin = (y0 / tot) as f32;
        w.w = ((x1 - x0) / tot) as f32;
        w.h = ((y1 - y0) / tot) as f32;
        for (k, kp) in kps.iter().enumerate() {
            w.keypoints[k] = [(kp[0] / tot) as f32, (kp[1] / tot) as f32];
        }
        w.merged = merged;
        out.push(w);
    }
}

/// Letterboxed-tensor coordinates → image coordinates (DetectionProjectionCalculator);
/// `pad` = `[left, top, right, bottom]` as fractions of the tensor side.
pub fn unletterbox(d: &Detection, pad: [f32; 4]) -> Detection {
    let (sx, sy) = (1.0 - pad[0] - pad[2], 1.0 - pad[1] - pad[3]);
    let fx = |x: f32| (x - pad[0]) / sx;
    let fy = |y: f32| (y - pad[1]) / sy;
    let mut o = *d;
    o.xmin = fx(d.xmin);
    o.ymin = fy(d.ymin);
    o.w = fx(d.xmin + d.w) - o.xmin;
    o.h = fy(d.ymin + d.h) - o.ymin;
    for (k, kp) in d.keypoints.iter().enumerate() {
        o.keypoints[k] = [fx(kp[0]), fy(kp[1])];
    }
    o
}

/// DetectionsToRectsCalculator: the box's centre and size, rotation from keypoint 0 to
/// keypoint 1 (the eyes) measured in pixels, normalised to [−π, π).
pub fn face_rect(d: &Detection, width: usize, height: usize) -> Rect {
    let [x0, y0] = d.keypoints[0];
    let [x1, y1] = d.keypoints[1];
    let dx = (x1 - x0) as f64 * width as f64;
    let dy = (y1 - y0) as f64 * height as f64;
    let rot = normalize_radians(-(-dy).atan2(dx));
    Rect {
        xc: d.xmin + d.w / 2.0,
        yc: d.ymin + d.h / 2.0,
        w: d.w,
        h: d.h,
        rot: rot as f32,
    }
}

/// The mesh ROI: the face rect scaled by [`ROI_SCALE`] (no shift, no squaring in IMAGE mode).
pub fn mesh_roi(face: Rect) -> Rect {
    Rect {
        w: face.w * ROI_SCALE,
        h: face.h * ROI_SCALE,
        ..face
    }
}

fn normalize_radians(a: f64) -> f64 {
    use std::f64::consts::PI;
    a - 2.0 * PI * ((a + PI) / (2.0 * PI)).floor()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_match_the_ssd_layout() {
        let a = anchors();
        assert_eq!(a.len(), ANCHORS);
        assert_eq!(a[0], [0.5 / 16.0, 0.5 / 16.0]);
        assert_eq!(a[1], a[0]);
        assert_eq!(a[2], [1.5 / 16.0, 0.5 / 16.0]);
        assert_eq!(a[512], [0.5 / 8.0, 0.5 / 8.0]);
        assert_eq!(a[517], a[512]);
        assert_eq!(a[895], [7.5 / 8.0, 7.5 / 8.0]);
    }

    fn det(score: f32, x: f32, y: f32, s: f32) -> Detection {
        Detection {
            score,
            xmin: x,
            ymin: y,
            w: s,
            h: s,
            keypoints: [[x, y]; KEYPOINTS],
            merged: 1,
            anchor: 0,
        }
    }

    #[test]
    fn nms_averages_overlaps_by_score_and_keeps_the_rest() {
        let mut d = vec![
            det(0.6, 0.12, 0.1, 0.2),
            det(0.9, 0.1, 0.1, 0.2),
            det(0.8, 0.6, 0.6, 0.2),
        ];
        let mut out = Vec::new();
        weighted_nms(&mut d, 0.5, 10, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].score, 0.9);
        assert_eq!(out[0].merged, 2);
        let want = (0.1 * 0.9 + 0.12 * 0.6) / 1.5;
        assert!((out[0].xmin - want).abs() < 1e-6, "{}", out[0].xmin);
        assert!((out[0].keypoints[3][0] - want).abs() < 1e-6);
        assert_eq!(out[1].score, 0.8);
        assert_eq!(out[1].merged, 1);
    }

    #[test]
    fn nms_caps_the_output_and_survives_empty_boxes() {
        let mut d: Vec<_> = (0..50)
            .map(|k| det(0.5 + k as f32 / 200.0, k as f32, 0.0, 0.5))
            .collect();
        let mut out = Vec::new();
        weighted_nms(&mut d, 0.5, 5, &mut out);
        assert_eq!(out.len(), 5);
        let mut d = vec![det(0.9, 0.1, 0.1, 0.0), det(0.8, 0.1, 0.1, 0.2)];
        weighted_nms(&mut d, 0.5, 5, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn decode_skips_low_scores_nan_and_negative_sizes() {
        let a = anchors();
        let mut reg = vec![0.0f32; ANCHORS * COORDS];
        let mut logit = vec![-10.0f32; ANCHORS];
        logit[3] = 5.0;
        reg[3 * COORDS + 2] = 12.8;
        reg[3 * COORDS + 3] = 25.6;
        logit[4] = 5.0;
        reg[4 * COORDS + 2] = -1.0;
        logit[5] = f32::NAN;
        logit[6] = 1e30;
        let mut out = Vec::new();
        decode(&reg, &logit, &a, MIN_SCORE, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].anchor, 3);
        assert!((out[0].w - 0.1).abs() < 1e-6 && (out[0].h - 0.2).abs() < 1e-6);
        assert!((out[0].xmin - (a[3][0] - 0.05)).abs() < 1e-6);
        assert_eq!(out[1].score, 1.0);
        // Short buffers: no panic, fewer anchors.
        decode(&reg[..3 * COORDS + 5], &logit, &a, MIN_SCORE, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn face_rect_turns_with_the_eyes() {
        let mut d = det(0.9, 0.2, 0.2, 0.4);
        d.keypoints[0] = [0.3, 0.4];
        d.keypoints[1] = [0.5, 0.4];
        let r = face_rect(&d, 100, 100);
        assert!(r.rot.abs() < 1e-6);
        assert!((r.xc - 0.4).abs() < 1e-6);
        // Right eye lower on screen (y down): clockwise, positive rotation.
        d.keypoints[1] = [0.5, 0.6];
        let r = face_rect(&d, 100, 100);
        assert!(
            (r.rot - std::f32::consts::FRAC_PI_4).abs() < 1e-5,
            "{}",
            r.rot
        );
        let m = mesh_roi(r);
        assert!((m.w - 0.6).abs() < 1e-6 && m.rot == r.rot);
    }

    #[test]
    fn unletterbox_inverts_the_padding() {
        let d = det(0.9, 0.25, 0.125, 0.5);
        let o = unletterbox(&d, [0.0, 0.125, 0.0, 0.125]);
        assert!((o.ymin - 0.0).abs() < 1e-6 && (o.h - 2.0 / 3.0).abs() < 1e-6);
        assert!((o.xmin - 0.25).abs() < 1e-6);
    }
}
