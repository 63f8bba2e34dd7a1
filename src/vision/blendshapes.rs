//! Blendshape model input: MediaPipe's 146-landmark subset (`kLandmarksSubsetIdxs` of
//! `face_blendshapes_graph.cc`) as image-pixel `(x, y)` pairs. The 52 output names live in
//! [`crate::au::BLENDSHAPE_NAMES`].

/// Landmarks the blendshape model reads, in its input order.
pub const SUBSET: [u16; 146] = [
    0, 1, 4, 5, 6, 7, 8, 10, 13, 14, 17, 21, 33, 37, 39, 40, 46, 52, 53, 54, 55, 58, 61, 63, 65,
    66, 67, 70, 78, 80, 81, 82, 84, 87, 88, 91, 93, 95, 103, 105, 107, 109, 127, 132, 133, 136,
    144, 145, 146, 148, 149, 150, 152, 153, 154, 155, 157, 158, 159, 160, 161, 162, 163, 168, 172,
    173, 176, 178, 181, 185, 191, 195, 197, 234, 246, 249, 251, 263, 267, 269, 270, 276, 282, 283,
    284, 285, 288, 291, 293, 295, 296, 297, 300, 308, 310, 311, 312, 314, 317, 318, 321, 323, 324,
    332, 334, 336, 338, 356, 361, 362, 365, 373, 374, 375, 377, 378, 379, 380, 381, 382, 384, 385,
    386, 387, 388, 389, 390, 397, 398, 400, 402, 405, 409, 415, 454, 466, 468, 469, 470, 471, 472,
    473, 474, 475, 476, 477,
];

/// Number of blendshape coefficients the model returns.
pub const OUTPUTS: usize = 52;

/// Writes the model input (146 × `(x, y)` pixels) from landmarks in pixels. `out` must hold
/// 292 values; returns false when there are fewer than 478 landmarks.
pub fn input(landmarks_px: &[[f32; 3]], out: &mut [f32]) -> bool {
    if landmarks_px.len() < super::mesh::LANDMARKS || out.len() != SUBSET.len() * 2 {
        return false;
    }
    for (k, &i) in SUBSET.iter().enumerate() {
        let p = landmarks_px[i as usize];
        out[2 * k] = p[0];
        out[2 * k + 1] = p[1];
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_is_sorted_unique_and_in_range() {
        assert!(SUBSET.windows(2).all(|w| w[0] < w[1]));
        assert!(*SUBSET.last().unwrap() < 478);
        let pts: Vec<[f32; 3]> = (0..478).map(|k| [k as f32, -(k as f32), 0.0]).collect();
        let mut out = [0.0f32; 292];
        assert!(input(&pts, &mut out));
        assert_eq!(&out[24..26], &[33.0, -33.0]);
        assert!(!input(&pts[..400], &mut out));
    }
}
