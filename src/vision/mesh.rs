//! Face Mesh v2 post-processing: the 1434 raw outputs (478 × x, y, z in 256×256 crop pixels)
//! projected back through the rotated ROI into the image (TensorsToLandmarksCalculator +
//! LandmarkProjectionCalculator), and the face-presence score. Pure functions.

use super::geometry::Rect;

/// Side of the mesh model's square input tensor.
pub const INPUT: usize = 256;
/// Landmarks per face (468 mesh + 10 iris).
pub const LANDMARKS: usize = 478;
/// FaceLandmarker's default minimum face-presence score.
pub const MIN_PRESENCE: f32 = 0.5;
/// Outer eye corners (image left, image right for an upright frontal face): the
/// inter-ocular distance of the parity tolerance and the classifier crop's axis.
pub const EYE_OUTER: [usize; 2] = [33, 263];

/// Raw crop-pixel landmarks → image pixels `[x·W, y·H, z·W]` (z in the scale of x, as
/// MediaPipe's normalised z times the image width). `out` gets exactly [`LANDMARKS`] points;
/// returns false (and leaves `out` empty) when `raw` is shorter than 1434 values.
pub fn project(
    raw: &[f32],
    roi: Rect,
    width: usize,
    height: usize,
    out: &mut Vec<[f32; 3]>,
) -> bool {
    out.clear();
    if raw.len() < LANDMARKS * 3 {
        return false;
    }
    let (c, s) = ((roi.rot as f64).cos(), (roi.rot as f64).sin());
    let (w, h) = (width as f64, height as f64);
    for p in raw[..LANDMARKS * 3].chunks_exact(3) {
        let x = p[0] as f64 / INPUT as f64 - 0.5;
        let y = p[1] as f64 / INPUT as f64 - 0.5;
        let z = p[2] as f64 / INPUT as f64;
        let nx = (c * x - s * y) * roi.w as f64 + roi.xc as f64;
        let ny = (s * x + c * y) * roi.h as f64 + roi.yc as f64;
        let nz = z * roi.w as f64;
        out.push([(nx * w) as f32, (ny * h) as f32, (nz * w) as f32]);
    }
    true
}

/// Sigmoid of the presence logit (NaN reads as absent).
pub fn presence(logit: f32) -> f32 {
    if logit.is_nan() {
        return 0.0;
    }
    (1.0 / (1.0 + (-(logit as f64)).exp())) as f32
}

/// `[x, y, w, h]` in pixels: min/max over the points (the box we report and track).
pub fn bbox(points: &[[f32; 3]]) -> [f32; 4] {
    let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
    for p in points {
        x0 = x0.min(p[0]);
        y0 = y0.min(p[1]);
        x1 = x1.max(p[0]);
        y1 = y1.max(p[1]);
    }
    if points.is_empty() {
        return [0.0; 4];
    }
    [x0, y0, x1 - x0, y1 - y0]
}

/// Distance between the outer eye corners, pixels (0 when fewer points).
pub fn inter_ocular(points: &[[f32; 3]]) -> f32 {
    match (points.get(EYE_OUTER[0]), points.get(EYE_OUTER[1])) {
        (Some(a), Some(b)) => ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt(),
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crop_centre_lands_on_the_roi_centre_at_any_rotation() {
        let raw: Vec<f32> = (0..LANDMARKS).flat_map(|_| [128.0, 128.0, 10.0]).collect();
        let mut out = Vec::new();
        for rot in [0.0, 0.7, -2.0] {
            let roi = Rect {
                xc: 0.4,
                yc: 0.6,
                w: 0.5,
                h: 0.25,
                rot,
            };
            assert!(project(&raw, roi, 200, 100, &mut out));
            assert_eq!(out.len(), LANDMARKS);
            assert!((out[0][0] - 80.0).abs() < 1e-4 && (out[0][1] - 60.0).abs() < 1e-4);
            assert!((out[0][2] - 10.0 / 256.0 * 0.5 * 200.0).abs() < 1e-4);
        }
        assert!(!project(&raw[..10], Rect::default(), 1, 1, &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn a_quarter_turn_maps_crop_right_to_image_down() {
        let mut raw = vec![128.0f32; LANDMARKS * 3];
        raw[0] = 256.0; // point 0 at the crop's right edge, centre row
        let roi = Rect {
            xc: 0.5,
            yc: 0.5,
            w: 0.2,
            h: 0.2,
            rot: std::f32::consts::FRAC_PI_2,
        };
        let mut out = Vec::new();
        project(&raw, roi, 100, 100, &mut out);
        assert!(
            (out[0][0] - 50.0).abs() < 1e-3 && (out[0][1] - 60.0).abs() < 1e-3,
            "{:?}",
            out[0]
        );
    }

    #[test]
    fn presence_box_and_eyes() {
        assert_eq!(presence(0.0), 0.5);
        assert_eq!(presence(f32::NAN), 0.0);
        let mut pts = vec![[1.0f32, 2.0, 0.0]; LANDMARKS];
        pts[33] = [0.0, 0.0, 0.0];
        pts[263] = [3.0, 4.0, 0.0];
        assert_eq!(inter_ocular(&pts), 5.0);
        assert_eq!(bbox(&pts), [0.0, 0.0, 3.0, 4.0]);
        assert_eq!(bbox(&[]), [0.0; 4]);
    }
}
