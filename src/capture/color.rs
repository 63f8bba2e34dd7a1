//! YUV → packed RGB8 conversions for the capture sources (V4L2 YUYV, Y4M planar frames).
//!
//! Owns the colour maths: the BT.601 matrix, limited/full range, chroma layouts and the
//! length checks on every input plane. The fast paths call the `yuv` crate (SIMD, fixed
//! point); [`reference`](mod@reference) holds plain scalar float formulas that serve as the
//! test oracle and the bench baseline. Must not read files or devices, parse containers or
//! know about frames beyond "planes in, RGB out": callers pass slices, this module only
//! validates and converts.
//!
//! # Matrix
//!
//! Always ITU-R BT.601 (Kr = 0.299, Kb = 0.114), which is what V4L2 webcams and SD/`ffmpeg`
//! Y4M output use unless told otherwise:
//!
//! ```text
//! R = Y' + 1.402    Cr
//! G = Y' - 0.344136 Cb - 0.714136 Cr
//! B = Y' + 1.772    Cb
//! ```
//!
//! with, for [`YuvRange::Limited`] ("TV", Y in 16..=235, Cb/Cr in 16..=240):
//! `Y' = (Y - 16) * 255 / 219`, `Cb = (U - 128) * 255 / 224`, `Cr = (V - 128) * 255 / 224`,
//! and for [`YuvRange::Full`] ("PC"/JPEG, 0..=255): `Y' = Y`, `Cb = U - 128`, `Cr = V - 128`.
//! Results are rounded and clamped to 0..=255.
//!
//! Fast paths agree with [`reference`](mod@reference) within 2 levels per channel (planar) or
//! 3 (YUYV, which the crate computes with 6 fractional bits) — see the tests. One known
//! deviation: in [`YuvRange::Limited`] the crate's SIMD code clamps sub-black luma (Y < 16)
//! to 16 *before* the matrix while its scalar row tail does not, so out-of-range Y < 16 with
//! strong chroma can come out up to ~20 levels brighter than the formula. Legal input (Y >= 16) is unaffected.
//!
//! Chroma is upsampled by replication (each chroma sample covers its 2x1 or 2x2 block of
//! luma); chroma siting (JPEG/MPEG-2/PAL-DV) is ignored, as it shifts colour by under a pixel.
//!
//! Every function resizes the output `Vec` to exactly `width * height * 3` bytes, so a
//! buffer reused from frame to frame is not reallocated once warm.

use super::MAX_DIM;

/// Quantisation range of the Y, U and V samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YuvRange {
    /// "TV" range: Y in 16..=235, U/V in 16..=240 (V4L2 and video default).
    Limited,
    /// "PC"/JPEG range: all of 0..=255.
    Full,
}

impl YuvRange {
    fn to_yuv(self) -> yuv::YuvRange {
        match self {
            YuvRange::Limited => yuv::YuvRange::Limited,
            YuvRange::Full => yuv::YuvRange::Full,
        }
    }
}

/// Layout of a planar 8-bit YUV frame: Y plane (`width x height`), then U, then V.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chroma {
    /// 4:2:0 (I420): chroma planes are `ceil(w/2) x ceil(h/2)`.
    C420,
    /// 4:2:2: chroma planes are `ceil(w/2) x h`.
    C422,
    /// 4:4:4: chroma planes are `w x h`.
    C444,
    /// Luma only (no chroma planes).
    Mono,
}

impl Chroma {
    /// Width and height of each chroma plane (`(0, 0)` for [`Chroma::Mono`]).
    pub fn plane_dims(self, width: u32, height: u32) -> (u32, u32) {
        match self {
            Chroma::C420 => (width.div_ceil(2), height.div_ceil(2)),
            Chroma::C422 => (width.div_ceil(2), height),
            Chroma::C444 => (width, height),
            Chroma::Mono => (0, 0),
        }
    }

    /// Bytes of one frame (all planes, packed rows).
    pub fn frame_bytes(self, width: u32, height: u32) -> usize {
        let (cw, ch) = self.plane_dims(width, height);
        width as usize * height as usize + 2 * (cw as usize * ch as usize)
    }
}

fn check_dims(width: u32, height: u32) -> Result<(), String> {
    if width == 0 || height == 0 || width > MAX_DIM || height > MAX_DIM {
        return Err(format!("frame size {width}x{height} outside 1..={MAX_DIM}"));
    }
    Ok(())
}

fn check_len(what: &str, got: usize, want: usize) -> Result<(), String> {
    if got != want {
        return Err(format!("{what} has {got} bytes, expected {want}"));
    }
    Ok(())
}

/// Size `rgb` to `w*h*3` (no reallocation if its capacity already suffices).
fn size_rgb(rgb: &mut Vec<u8>, width: u32, height: u32) -> usize {
    let n = width as usize * height as usize * 3;
    rgb.resize(n, 0);
    n
}

/// Packed YUYV 4:2:2 (`Y0 U Y1 V`, V4L2 `YUYV`) to RGB8. `stride` is the source row length in
/// bytes (V4L2 `bytesperline`, at least `width * 2`); `width` must be even. `yuyv` must hold
/// at least `stride * (height - 1) + width * 2` bytes (extra bytes past the last row are
/// ignored).
pub fn yuyv_to_rgb(
    yuyv: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    range: YuvRange,
    rgb: &mut Vec<u8>,
) -> Result<(), String> {
    check_dims(width, height)?;
    if !width.is_multiple_of(2) {
        return Err(format!("YUYV width {width} is odd (must be even)"));
    }
    let row = width as usize * 2;
    if stride < row {
        return Err(format!("YUYV stride {stride} is less than width*2 = {row}"));
    }
    let stride32 = u32::try_from(stride).map_err(|_| format!("YUYV stride {stride} too large"))?;
    let full_rows = stride
        .checked_mul(height as usize)
        .ok_or_else(|| format!("YUYV stride {stride} x height {height} overflows"))?;
    let need = full_rows - stride + row;
    if yuyv.len() < need {
        return Err(format!(
            "YUYV buffer has {} bytes, expected at least {need}",
            yuyv.len()
        ));
    }
    let n = size_rgb(rgb, width, height);
    let rgb_stride = width * 3;
    // The crate wants exactly `stride * rows` bytes; a buffer whose last row is short of the
    // stride padding is converted as `height - 1` padded rows plus one packed row.
    let (body_rows, body_len) = if yuyv.len() >= full_rows {
        (height, full_rows)
    } else {
        (height - 1, full_rows - stride)
    };
    let conv = |src: &[u8], stride: u32, rows: u32, dst: &mut [u8]| {
        let img = yuv::YuvPackedImage {
            yuy: src,
            yuy_stride: stride,
            width,
            height: rows,
        };
        yuv::yuyv422_to_rgb(
            &img,
            dst,
            rgb_stride,
            range.to_yuv(),
            yuv::YuvStandardMatrix::Bt601,
        )
        .map_err(|e| format!("YUYV conversion: {e}"))
    };
    let split = body_rows as usize * rgb_stride as usize;
    let (top, last) = rgb[..n].split_at_mut(split);
    if body_rows > 0 {
        conv(&yuyv[..body_len], stride32, body_rows, top)?;
    }
    if body_rows < height {
        conv(&yuyv[body_len..body_len + row], row as u32, 1, last)?;
    }
    Ok(())
}

/// Planar 8-bit YUV to RGB8 with the planes given separately (each packed, no row padding).
pub fn planar_to_rgb(
    chroma: Chroma,
    [y, u, v]: [&[u8]; 3],
    width: u32,
    height: u32,
    range: YuvRange,
    rgb: &mut Vec<u8>,
) -> Result<(), String> {
    check_dims(width, height)?;
    check_len("Y plane", y.len(), width as usize * height as usize)?;
    let (cw, ch) = chroma.plane_dims(width, height);
    if chroma != Chroma::Mono {
        check_len("U plane", u.len(), cw as usize * ch as usize)?;
        check_len("V plane", v.len(), cw as usize * ch as usize)?;
    }
    let n = size_rgb(rgb, width, height);
    let out = &mut rgb[..n];
    let (yr, m) = (range.to_yuv(), yuv::YuvStandardMatrix::Bt601);
    let res = if chroma == Chroma::Mono {
        let img = yuv::YuvGrayImage {
            y_plane: y,
            y_stride: width,
            width,
            height,
        };
        yuv::yuv400_to_rgb(&img, out, width * 3, yr, m)
    } else {
        let img = yuv::YuvPlanarImage {
            y_plane: y,
            y_stride: width,
            u_plane: u,
            u_stride: cw,
            v_plane: v,
            v_stride: cw,
            width,
            height,
        };
        match chroma {
            Chroma::C420 => yuv::yuv420_to_rgb(&img, out, width * 3, yr, m),
            Chroma::C422 => yuv::yuv422_to_rgb(&img, out, width * 3, yr, m),
            _ => yuv::yuv444_to_rgb(&img, out, width * 3, yr, m),
        }
    };
    res.map_err(|e| format!("YUV {chroma:?} conversion: {e}"))
}

/// Planar frame stored contiguously (Y, then U, then V; the Y4M and raw `yuv420p` layout).
pub fn planar_frame_to_rgb(
    chroma: Chroma,
    frame: &[u8],
    width: u32,
    height: u32,
    range: YuvRange,
    rgb: &mut Vec<u8>,
) -> Result<(), String> {
    check_dims(width, height)?;
    check_len("YUV frame", frame.len(), chroma.frame_bytes(width, height))?;
    let ylen = width as usize * height as usize;
    let (cw, ch) = chroma.plane_dims(width, height);
    let clen = cw as usize * ch as usize;
    let (y, rest) = frame.split_at(ylen);
    let (u, v) = rest.split_at(clen);
    planar_to_rgb(chroma, [y, u, v], width, height, range, rgb)
}

/// Planar I420 (4:2:0) to RGB8; chroma planes are `ceil(w/2) x ceil(h/2)`.
pub fn yuv420p_to_rgb(
    y: &[u8],
    u: &[u8],
    v: &[u8],
    width: u32,
    height: u32,
    range: YuvRange,
    rgb: &mut Vec<u8>,
) -> Result<(), String> {
    planar_to_rgb(Chroma::C420, [y, u, v], width, height, range, rgb)
}

/// Planar 4:2:2 to RGB8; chroma planes are `ceil(w/2) x h`.
pub fn yuv422p_to_rgb(
    y: &[u8],
    u: &[u8],
    v: &[u8],
    width: u32,
    height: u32,
    range: YuvRange,
    rgb: &mut Vec<u8>,
) -> Result<(), String> {
    planar_to_rgb(Chroma::C422, [y, u, v], width, height, range, rgb)
}

/// Planar 4:4:4 to RGB8; chroma planes are `w x h`.
pub fn yuv444p_to_rgb(
    y: &[u8],
    u: &[u8],
    v: &[u8],
    width: u32,
    height: u32,
    range: YuvRange,
    rgb: &mut Vec<u8>,
) -> Result<(), String> {
    planar_to_rgb(Chroma::C444, [y, u, v], width, height, range, rgb)
}

/// Luma only to grey RGB8 (R = G = B; limited range is expanded to 0..=255).
pub fn gray_to_rgb(
    y: &[u8],
    width: u32,
    height: u32,
    range: YuvRange,
    rgb: &mut Vec<u8>,
) -> Result<(), String> {
    planar_to_rgb(Chroma::Mono, [y, &[], &[]], width, height, range, rgb)
}

/// Scalar float BT.601 conversions: slow, obviously right, the oracle for tests and the
/// baseline for `cargo bench --bench capture`. Same signatures and checks as the fast paths.
pub mod reference {
    use super::{check_dims, check_len, size_rgb, Chroma, YuvRange};

    /// One pixel, straight from the formulas in the module docs.
    pub fn pixel(y: u8, u: u8, v: u8, range: YuvRange) -> [u8; 3] {
        let (y, cb, cr) = match range {
            YuvRange::Limited => (
                (y as f32 - 16.0) * 255.0 / 219.0,
                (u as f32 - 128.0) * 255.0 / 224.0,
                (v as f32 - 128.0) * 255.0 / 224.0,
            ),
            YuvRange::Full => (y as f32, u as f32 - 128.0, v as f32 - 128.0),
        };
        let q = |x: f32| x.round().clamp(0.0, 255.0) as u8;
        [
            q(y + 1.402 * cr),
            q(y - 0.344_136 * cb - 0.714_136 * cr),
            q(y + 1.772 * cb),
        ]
    }

    /// Reference for [`super::yuyv_to_rgb`].
    pub fn yuyv_to_rgb(
        yuyv: &[u8],
        width: u32,
        height: u32,
        stride: usize,
        range: YuvRange,
        rgb: &mut Vec<u8>,
    ) -> Result<(), String> {
        check_dims(width, height)?;
        if !width.is_multiple_of(2) || stride < width as usize * 2 {
            return Err(format!(
                "bad YUYV geometry {width}x{height} stride {stride}"
            ));
        }
        let need = stride
            .saturating_mul(height as usize - 1)
            .saturating_add(width as usize * 2);
        if yuyv.len() < need {
            return Err(format!(
                "YUYV buffer has {} bytes, expected at least {need}",
                yuyv.len()
            ));
        }
        size_rgb(rgb, width, height);
        for row in 0..height as usize {
            let src = &yuyv[row * stride..][..width as usize * 2];
            let dst = &mut rgb[row * width as usize * 3..][..width as usize * 3];
            for (s, d) in src.chunks_exact(4).zip(dst.chunks_exact_mut(6)) {
                d[..3].copy_from_slice(&pixel(s[0], s[1], s[3], range));
                d[3..].copy_from_slice(&pixel(s[2], s[1], s[3], range));
            }
        }
        Ok(())
    }

    /// Reference for [`super::planar_to_rgb`] (nearest chroma sample, like the fast path).
    pub fn planar_to_rgb(
        chroma: Chroma,
        [y, u, v]: [&[u8]; 3],
        width: u32,
        height: u32,
        range: YuvRange,
        rgb: &mut Vec<u8>,
    ) -> Result<(), String> {
        check_dims(width, height)?;
        check_len("Y plane", y.len(), width as usize * height as usize)?;
        let (cw, ch) = chroma.plane_dims(width, height);
        if chroma != Chroma::Mono {
            check_len("U plane", u.len(), cw as usize * ch as usize)?;
            check_len("V plane", v.len(), cw as usize * ch as usize)?;
        }
        size_rgb(rgb, width, height);
        let (w, h) = (width as usize, height as usize);
        for row in 0..h {
            for col in 0..w {
                let yv = y[row * w + col];
                let (uv, vv) = match chroma {
                    Chroma::Mono => (128, 128),
                    Chroma::C420 => {
                        let i = (row / 2) * cw as usize + col / 2;
                        (u[i], v[i])
                    }
                    Chroma::C422 => {
                        let i = row * cw as usize + col / 2;
                        (u[i], v[i])
                    }
                    Chroma::C444 => (u[row * w + col], v[row * w + col]),
                };
                rgb[(row * w + col) * 3..][..3].copy_from_slice(&pixel(yv, uv, vv, range));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// xorshift64*: deterministic test data without extra crates.
    pub(crate) struct Rng(u64);
    impl Rng {
        pub(crate) fn new(seed: u64) -> Self {
            Rng(seed.max(1))
        }
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        /// Random bytes, biased towards the extremes and the limited-range edges.
        pub(crate) fn plane(&mut self, n: usize) -> Vec<u8> {
            const EDGES: [u8; 6] = [0, 255, 16, 235, 240, 128];
            (0..n)
                .map(|_| match self.below(8) {
                    0 => EDGES[self.below(6) as usize],
                    _ => self.next() as u8,
                })
                .collect()
        }
    }

    /// Per-channel tolerance between fast path and oracle, planar input. The `yuv` crate works
    /// in fixed point with 13 fractional bits here; coefficient and final rounding move a
    /// channel by at most 1 on x86-64 (AVX2 and scalar tail; measured over every (Y, U, V)
    /// triple by a one-off probe, and by `all_yuv_triples_within_tolerance` on a 1/8 subset); 2 leaves room for other SIMD back ends.
    /// A wrong matrix, range, chroma layout or stride is off by far more.
    const TOL_PLANAR: i32 = 2;
    /// Same for packed YUYV, which the crate converts with only 6 fractional bits: the luma
    /// gain 255/219 = 1.1644 becomes 75/64 = 1.1719, i.e. +0.0075 per step of (Y - 16), which
    /// with chroma rounding reaches 3 for super-white luma (Y > 235) with extreme chroma in its
    /// scalar tail (measured: 2048 of 2^24 triples), and at most 2 elsewhere.
    const TOL_YUYV: i32 = 3;

    /// Compare `fast` with the oracle. `slow` is the reference for the input as is; `slow16`
    /// the reference with luma clamped to >= 16 (limited range only, else equal to `slow`):
    /// the crate's SIMD paths clamp sub-black luma before the matrix (`subs_epu8`), its scalar
    /// tails do not, so each pixel must match one of the two within `tol`.
    fn assert_close(fast: &[u8], slow: &[u8], slow16: &[u8], tol: i32, what: &str) {
        assert_eq!(fast.len(), slow.len(), "{what}: length");
        for (i, ((f, a), b)) in fast
            .chunks(3)
            .zip(slow.chunks(3))
            .zip(slow16.chunks(3))
            .enumerate()
        {
            let d = |r: &[u8]| {
                (0..3)
                    .map(|c| (f[c] as i32 - r[c] as i32).abs())
                    .max()
                    .unwrap()
            };
            let (da, db) = (d(a), d(b));
            assert!(
                da.min(db) <= tol,
                "{what}: pixel {i} fast {f:?} ref {a:?} (Y>=16: {b:?})"
            );
        }
    }

    fn clamp_luma(y: &[u8], range: YuvRange) -> Vec<u8> {
        match range {
            YuvRange::Limited => y.iter().map(|&v| v.max(16)).collect(),
            YuvRange::Full => y.to_vec(),
        }
    }

    /// Same for YUYV: clamp every Y byte (even offsets) of the packed data.
    fn clamp_yuyv_luma(src: &[u8], range: YuvRange) -> Vec<u8> {
        let mut out = src.to_vec();
        if range == YuvRange::Limited {
            out.iter_mut().step_by(2).for_each(|v| *v = (*v).max(16));
        }
        out
    }

    #[test]
    fn reference_pixel_known_values() {
        // Hand-checked against the BT.601 formulas.
        use YuvRange::*;
        assert_eq!(reference::pixel(16, 128, 128, Limited), [0, 0, 0]);
        assert_eq!(reference::pixel(235, 128, 128, Limited), [255, 255, 255]);
        assert_eq!(reference::pixel(0, 128, 128, Full), [0, 0, 0]);
        assert_eq!(reference::pixel(255, 128, 128, Full), [255, 255, 255]);
        assert_eq!(reference::pixel(126, 128, 128, Limited), [128, 128, 128]);
        // Limited-range 100% red (from RGB (255,0,0)): Y=81, U=90, V=240.
        let r = reference::pixel(81, 90, 240, Limited);
        assert!(r[0] >= 254 && r[1] <= 1 && r[2] <= 1, "{r:?}");
        // Full-range pure blue: Y=29, U=255, V=107 (JPEG).
        let b = reference::pixel(29, 255, 107, Full);
        assert!(b[0] <= 1 && b[1] <= 1 && b[2] >= 254, "{b:?}");
    }

    #[test]
    fn yuyv_fast_matches_reference_random_sizes() {
        let mut rng = Rng::new(0x5eed_0001);
        let (mut fast, mut slow, mut slow16) = (Vec::new(), Vec::new(), Vec::new());
        for iter in 0..60 {
            let w = 2 * (1 + rng.below(70) as u32);
            let h = 1 + rng.below(40) as u32;
            let stride = w as usize * 2
                + if iter % 3 == 0 {
                    rng.below(9) as usize * 2
                } else {
                    0
                };
            let src = rng.plane(stride * h as usize);
            for range in [YuvRange::Limited, YuvRange::Full] {
                yuyv_to_rgb(&src, w, h, stride, range, &mut fast).unwrap();
                reference::yuyv_to_rgb(&src, w, h, stride, range, &mut slow).unwrap();
                let src16 = clamp_yuyv_luma(&src, range);
                reference::yuyv_to_rgb(&src16, w, h, stride, range, &mut slow16).unwrap();
                assert_close(
                    &fast,
                    &slow,
                    &slow16,
                    TOL_YUYV,
                    &format!("YUYV {w}x{h} stride {stride} {range:?}"),
                );
            }
        }
    }

    #[test]
    fn yuyv_short_last_row_and_length_errors() {
        let mut rng = Rng::new(7);
        let (w, h, stride) = (8u32, 5u32, 24usize);
        // Last row unpadded, luma kept legal so one reference suffices.
        let src = rng.plane(stride * (h as usize - 1) + w as usize * 2);
        let src = clamp_yuyv_luma(&src, YuvRange::Limited);
        let (mut fast, mut slow) = (Vec::new(), Vec::new());
        yuyv_to_rgb(&src, w, h, stride, YuvRange::Limited, &mut fast).unwrap();
        reference::yuyv_to_rgb(&src, w, h, stride, YuvRange::Limited, &mut slow).unwrap();
        assert_close(&fast, &slow, &slow, TOL_YUYV, "short last row");
        let mut rgb = Vec::new();
        assert!(yuyv_to_rgb(
            &src[..src.len() - 1],
            w,
            h,
            stride,
            YuvRange::Full,
            &mut rgb
        )
        .is_err());
        assert!(
            yuyv_to_rgb(&src, 7, 2, 14, YuvRange::Full, &mut rgb).is_err(),
            "odd width"
        );
        assert!(
            yuyv_to_rgb(&src, 8, 2, 15, YuvRange::Full, &mut rgb).is_err(),
            "stride < w*2"
        );
        assert!(yuyv_to_rgb(&src, 0, 2, 16, YuvRange::Full, &mut rgb).is_err());
        assert!(yuyv_to_rgb(&src, MAX_DIM + 2, 1, 1 << 20, YuvRange::Full, &mut rgb).is_err());
        assert!(yuyv_to_rgb(&src, 8, 2, usize::MAX, YuvRange::Full, &mut rgb).is_err());
    }

    #[test]
    fn planar_fast_matches_reference_random_sizes_incl_odd() {
        let mut rng = Rng::new(0x5eed_0002);
        let (mut fast, mut slow, mut slow16) = (Vec::new(), Vec::new(), Vec::new());
        let mut odd_seen = 0;
        for iter in 0..120 {
            let chroma = [Chroma::C420, Chroma::C422, Chroma::C444, Chroma::Mono][iter % 4];
            let w = 1 + rng.below(67) as u32;
            let h = 1 + rng.below(45) as u32;
            odd_seen += (w % 2 == 1 || h % 2 == 1) as u32;
            let (cw, ch) = chroma.plane_dims(w, h);
            let y = rng.plane((w * h) as usize);
            let u = rng.plane((cw * ch) as usize);
            let v = rng.plane((cw * ch) as usize);
            for range in [YuvRange::Limited, YuvRange::Full] {
                planar_to_rgb(chroma, [&y, &u, &v], w, h, range, &mut fast).unwrap();
                reference::planar_to_rgb(chroma, [&y, &u, &v], w, h, range, &mut slow).unwrap();
                let y16 = clamp_luma(&y, range);
                reference::planar_to_rgb(chroma, [&y16, &u, &v], w, h, range, &mut slow16).unwrap();
                assert_close(
                    &fast,
                    &slow,
                    &slow16,
                    TOL_PLANAR,
                    &format!("{chroma:?} {w}x{h} {range:?}"),
                );
            }
        }
        assert!(odd_seen > 20, "the sizes must include odd ones");
    }

    #[test]
    fn odd_sizes_use_the_right_chroma_sample() {
        // 3x3 I420: chroma 2x2. Make the last chroma column/row very different so a layout
        // error (wrong stride or clamping of the odd edge) shows up as a large difference.
        let y = [128u8; 9];
        let u = [128u8, 255, 128, 255];
        let v = [128u8, 128, 0, 0];
        let mut rgb = Vec::new();
        yuv420p_to_rgb(&y, &u, &v, 3, 3, YuvRange::Full, &mut rgb).unwrap();
        let px = |x: usize, yy: usize| &rgb[(yy * 3 + x) * 3..][..3];
        let want = |uu, vv| reference::pixel(128, uu, vv, YuvRange::Full);
        for (x, yy, uu, vv) in [
            (0, 0, 128, 128),
            (2, 0, 255, 128),
            (0, 2, 128, 0),
            (2, 2, 255, 0),
        ] {
            let (got, exp) = (px(x, yy), want(uu, vv));
            for c in 0..3 {
                assert!(
                    (got[c] as i32 - exp[c] as i32).abs() <= TOL_PLANAR,
                    "({x},{yy}) {got:?} vs {exp:?}"
                );
            }
        }
    }

    #[test]
    fn extreme_values_all_combinations() {
        // Every combination of the edge values, as a 4:4:4 image, in both ranges.
        const E: [u8; 7] = [0, 1, 16, 128, 235, 240, 255];
        let mut y = Vec::new();
        let (mut u, mut v) = (Vec::new(), Vec::new());
        for a in E {
            for b in E {
                for c in E {
                    y.push(a);
                    u.push(b);
                    v.push(c);
                }
            }
        }
        let (w, h) = (E.len() as u32 * E.len() as u32, E.len() as u32);
        let (mut fast, mut slow, mut slow16) = (Vec::new(), Vec::new(), Vec::new());
        for range in [YuvRange::Limited, YuvRange::Full] {
            yuv444p_to_rgb(&y, &u, &v, w, h, range, &mut fast).unwrap();
            reference::planar_to_rgb(Chroma::C444, [&y, &u, &v], w, h, range, &mut slow).unwrap();
            let y16 = clamp_luma(&y, range);
            reference::planar_to_rgb(Chroma::C444, [&y16, &u, &v], w, h, range, &mut slow16)
                .unwrap();
            assert_close(
                &fast,
                &slow,
                &slow16,
                TOL_PLANAR,
                &format!("extremes {range:?}"),
            );
        }
        gray_to_rgb(&y, w, h, YuvRange::Full, &mut fast).unwrap();
        assert!(
            fast.chunks(3).zip(&y).all(|(p, &l)| p == [l, l, l]),
            "full-range grey is identity"
        );
    }

    #[test]
    fn planar_length_errors_are_errors() {
        let mut rgb = Vec::new();
        let y = vec![0u8; 12];
        let c = vec![0u8; 4];
        assert!(yuv420p_to_rgb(&y, &c, &c, 4, 3, YuvRange::Limited, &mut rgb).is_ok());
        assert!(yuv420p_to_rgb(&y[..11], &c, &c, 4, 3, YuvRange::Limited, &mut rgb).is_err());
        assert!(yuv420p_to_rgb(&y, &c[..3], &c, 4, 3, YuvRange::Limited, &mut rgb).is_err());
        assert!(yuv420p_to_rgb(&y, &c, &[], 4, 3, YuvRange::Limited, &mut rgb).is_err());
        assert!(yuv422p_to_rgb(&y, &c, &c, 4, 3, YuvRange::Limited, &mut rgb).is_err());
        assert!(yuv444p_to_rgb(&y, &c, &c, 4, 3, YuvRange::Limited, &mut rgb).is_err());
        assert!(gray_to_rgb(&y, 4, 0, YuvRange::Limited, &mut rgb).is_err());
        assert!(planar_frame_to_rgb(Chroma::C420, &y, 4, 3, YuvRange::Full, &mut rgb).is_err());
        let e = yuv420p_to_rgb(&y[..11], &c, &c, 4, 3, YuvRange::Limited, &mut rgb).unwrap_err();
        assert!(!e.contains('\n') && e.contains("11"), "{e}");
    }

    /// Every Y and U with every 8th V (2.1 M triples), through the 4:4:4 and YUYV fast paths
    /// (YUYV: both pixels of a pair get the same Y and chroma, so the pair is a 4:4:4 sample).
    #[test]
    fn all_yuv_triples_within_tolerance() {
        let (w, h) = (1024u32, 2048u32); // 256 * 256 * 32 pixels
        let n = (w * h) as usize;
        let (mut y, mut u, mut v) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                for c in (0..=255u8).step_by(8) {
                    y.push(a);
                    u.push(b);
                    v.push(c);
                }
            }
        }
        let yuyv: Vec<u8> = (0..n)
            .step_by(2)
            .flat_map(|i| [y[i], u[i], y[i], v[i]])
            .collect();
        let (mut yp, mut up, mut vp) = (y.clone(), u.clone(), v.clone());
        (0..n)
            .step_by(2)
            .for_each(|i| (yp[i + 1], up[i + 1], vp[i + 1]) = (y[i], u[i], v[i]));
        let (mut fast, mut slow, mut slow16) = (Vec::new(), Vec::new(), Vec::new());
        for range in [YuvRange::Limited, YuvRange::Full] {
            yuv444p_to_rgb(&y, &u, &v, w, h, range, &mut fast).unwrap();
            reference::planar_to_rgb(Chroma::C444, [&y, &u, &v], w, h, range, &mut slow).unwrap();
            let y16 = clamp_luma(&y, range);
            reference::planar_to_rgb(Chroma::C444, [&y16, &u, &v], w, h, range, &mut slow16)
                .unwrap();
            assert_close(
                &fast,
                &slow,
                &slow16,
                TOL_PLANAR,
                &format!("all triples 4:4:4 {range:?}"),
            );

            yuyv_to_rgb(&yuyv, w, h, w as usize * 2, range, &mut fast).unwrap();
            reference::planar_to_rgb(Chroma::C444, [&yp, &up, &vp], w, h, range, &mut slow)
                .unwrap();
            let y16 = clamp_luma(&yp, range);
            reference::planar_to_rgb(Chroma::C444, [&y16, &up, &vp], w, h, range, &mut slow16)
                .unwrap();
            assert_close(
                &fast,
                &slow,
                &slow16,
                TOL_YUYV,
                &format!("all triples YUYV {range:?}"),
            );
        }
    }

    #[test]
    fn output_buffer_is_reused() {
        let y = vec![100u8; 64 * 48];
        let c = vec![120u8; 32 * 24];
        let mut rgb = Vec::new();
        yuv420p_to_rgb(&y, &c, &c, 64, 48, YuvRange::Limited, &mut rgb).unwrap();
        let (ptr, cap) = (rgb.as_ptr(), rgb.capacity());
        for _ in 0..3 {
            rgb.clear();
            yuv420p_to_rgb(&y, &c, &c, 64, 48, YuvRange::Limited, &mut rgb).unwrap();
            assert_eq!((rgb.as_ptr(), rgb.capacity()), (ptr, cap));
        }
    }
}
