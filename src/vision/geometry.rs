//! Image geometry shared by the vision models: rotated rectangles, MediaPipe's letterbox and
//! rotated-ROI crops (bilinear, with MediaPipe's border modes), the grey aligned crop of the
//! classifier. Pure functions over borrowed pixels writing into caller-owned buffers; no
//! models, no allocation.

/// A rotated rectangle in coordinates normalised by the image size (MediaPipe's
/// `NormalizedRect`): centre, width, height, rotation in radians (clockwise on screen, since
/// the image y axis points down).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rect {
    pub xc: f32,
    pub yc: f32,
    pub w: f32,
    pub h: f32,
    pub rot: f32,
}

impl Rect {
    /// The same rectangle in pixels of a `width` × `height` image.
    pub fn to_px(self, width: usize, height: usize) -> PxRect {
        PxRect {
            cx: self.xc as f64 * width as f64,
            cy: self.yc as f64 * height as f64,
            w: self.w as f64 * width as f64,
            h: self.h as f64 * height as f64,
            rot: self.rot as f64,
        }
    }
}

/// A rotated rectangle in pixels (integer coordinates are pixel centres).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PxRect {
    pub cx: f64,
    pub cy: f64,
    pub w: f64,
    pub h: f64,
    pub rot: f64,
}

/// A borrowed RGB8 image, rows packed.
#[derive(Clone, Copy)]
pub struct Rgb<'a> {
    pub width: usize,
    pub height: usize,
    pub data: &'a [u8],
}

impl<'a> Rgb<'a> {
    /// `None` unless `data` holds exactly `width * height * 3` bytes and both sides are > 0.
    pub fn new(width: usize, height: usize, data: &'a [u8]) -> Option<Self> {
        (width > 0 && height > 0 && width.checked_mul(height)?.checked_mul(3)? == data.len())
            .then_some(Rgb {
                width,
                height,
                data,
            })
    }
}

/// What a read outside the image returns (OpenCV's border modes as MediaPipe uses them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Border {
    /// Pixel value 0 (the detector's letterbox padding).
    Zero,
    /// The nearest edge pixel (the mesh ROI crop).
    Replicate,
}

/// MediaPipe's letterbox of the whole image into a square tensor (ImageToTensorCalculator
/// with `keep_aspect_ratio`): the pixel rect to crop and the padding `[left, top, right,
/// bottom]` as fractions of the tensor side.
pub fn letterbox(width: usize, height: usize) -> (PxRect, [f32; 4]) {
    let (w, h) = (width as f64, height as f64);
    let roi_ar = h / w;
    let (mut rw, mut rh) = (w, h);
    let (mut hpad, mut vpad) = (0.0, 0.0);
    if 1.0 > roi_ar {
        rh = w;
        vpad = (1.0 - roi_ar) / 2.0;
    } else {
        rw = h;
        hpad = (1.0 - 1.0 / roi_ar) / 2.0;
    }
    let r = PxRect {
        cx: w / 2.0,
        cy: h / 2.0,
        w: rw,
        h: rh,
        rot: 0.0,
    };
    (r, [hpad as f32, vpad as f32, hpad as f32, vpad as f32])
}

/// Crops `roi` out of `img` into an `out_w` × `out_h` RGB tensor (HWC, f32), bilinear, as
/// OpenCV's `warpPerspective` does for MediaPipe: tensor pixel (col j, row i) samples
/// `corner + j/out_w · U + i/out_h · V`, with U, V the rect's rotated width and height
/// vectors. Each sample is rounded to an 8-bit value (MediaPipe crops to an 8-bit image
/// first) and written as `value * scale + offset`. `out.len()` must be `out_w * out_h * 3`.
pub fn warp_rgb(
    img: Rgb,
    roi: PxRect,
    out_w: usize,
    out_h: usize,
    border: Border,
    (scale, offset): (f32, f32),
    out: &mut [f32],
) {
    assert_eq!(out.len(), out_w * out_h * 3, "warp_rgb: output buffer size");
    let (c, s) = (roi.rot.cos(), roi.rot.sin());
    let (ux, uy) = (c * roi.w, s * roi.w);
    let (vx, vy) = (-s * roi.h, c * roi.h);
    let ox = roi.cx - 0.5 * ux - 0.5 * vx;
    let oy = roi.cy - 0.5 * uy - 0.5 * vy;
    let (dxj, dyj) = (ux / out_w as f64, uy / out_w as f64);
    let (dxi, dyi) = (vx / out_h as f64, vy / out_h as f64);
    for i in 0..out_h {
        let row = &mut out[i * out_w * 3..(i + 1) * out_w * 3];
        for j in 0..out_w {
            let sx = ox + dxj * j as f64 + dxi * i as f64;
            let sy = oy + dyj * j as f64 + dyi * i as f64;
            let px = bilinear_rgb(img, sx, sy, border);
            for ch in 0..3 {
                row[j * 3 + ch] = px[ch].round().clamp(0.0, 255.0) * scale + offset;
            }
        }
    }
}

fn bilinear_rgb(img: Rgb, sx: f64, sy: f64, border: Border) -> [f32; 3] {
    // Far outside (or NaN): the border value without indexing arithmetic on huge numbers.
    let lim = (img.width.max(img.height) as f64) * 4.0 + 4.0;
    let (sx, sy) = if sx.is_finite() && sy.is_finite() {
        (sx.clamp(-lim, lim), sy.clamp(-lim, lim))
    } else {
        (-lim, -lim)
    };
    let x0 = sx.floor();
    let y0 = sy.floor();
    let fx = (sx - x0) as f32;
    let fy = (sy - y0) as f32;
    let (x0, y0) = (x0 as i64, y0 as i64);
    let p = |y: i64, x: i64| -> [f32; 3] {
        let inside = x >= 0 && y >= 0 && (x as usize) < img.width && (y as usize) < img.height;
        if !inside && border == Border::Zero {
            return [0.0; 3];
        }
        let xc = x.clamp(0, img.width as i64 - 1) as usize;
        let yc = y.clamp(0, img.height as i64 - 1) as usize;
        let k = (yc * img.width + xc) * 3;
        [
            img.data[k] as f32,
            img.data[k + 1] as f32,
            img.data[k + 2] as f32,
        ]
    };
    let (a, b, c, d) = (p(y0, x0), p(y0, x0 + 1), p(y0 + 1, x0), p(y0 + 1, x0 + 1));
    let mut o = [0.0; 3];
    for ch in 0..3 {
        let top = a[ch] * (1.0 - fx) + b[ch] * fx;
        let bot = c[ch] * (1.0 - fx) + d[ch] * fx;
        o[ch] = top * (1.0 - fy) + bot * fy;
    }
    o
}

/// The classifier's aligned square crop ("aligned-square-1.2", see
/// `models/vision/mp_face_ref.py::classifier_crop`): centre, side (pixels) and angle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SquareCrop {
    pub cx: f64,
    pub cy: f64,
    pub side: f64,
    pub angle: f64,
}

/// The crop rule: rotate the 478 landmarks (pixels) into the frame of the outer eye corners
/// (33 → 263), take their bounding box there, and a square of `side_scale` × its longer side
/// around its centre. `None` when fewer than 264 points or non-finite geometry.
pub fn aligned_square(points: &[[f32; 3]], side_scale: f64) -> Option<SquareCrop> {
    if points.len() < 264 {
        return None;
    }
    let (l, r) = (points[33], points[263]);
    let a = (r[1] as f64 - l[1] as f64).atan2(r[0] as f64 - l[0] as f64);
    let (c, s) = (a.cos(), a.sin());
    let (mut umin, mut umax, mut vmin, mut vmax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in points {
        let (x, y) = (p[0] as f64, p[1] as f64);
        let u = x * c + y * s;
        let v = -x * s + y * c;
        umin = umin.min(u);
        umax = umax.max(u);
        vmin = vmin.min(v);
        vmax = vmax.max(v);
    }
    let (uc, vc) = ((umin + umax) / 2.0, (vmin + vmax) / 2.0);
    let side = side_scale * (umax - umin).max(vmax - vmin);
    let crop = SquareCrop {
        cx: uc * c - vc * s,
        cy: uc * s + vc * c,
        side,
        angle: a,
    };
    (crop.cx.is_finite() && crop.cy.is_finite() && side.is_finite() && side > 0.0).then_some(crop)
}

/// Samples the grey image (0.299 R + 0.587 G + 0.114 B in float, no rounding) over `crop`
/// into an `n` × `n` tensor: output pixel (row i, col j) at
/// `centre + ((j + 0.5)/n − 0.5)·side·e_u + ((i + 0.5)/n − 0.5)·side·e_v`, bilinear with
/// edge clamping, written as `(grey/255 − 0.5)·2`.
pub fn grey_crop(img: Rgb, crop: SquareCrop, n: usize, out: &mut [f32]) {
    assert_eq!(out.len(), n * n, "grey_crop: output buffer size");
    let (c, s) = (crop.angle.cos(), crop.angle.sin());
    for i in 0..n {
        let ti = (i as f64 + 0.5) / n as f64 - 0.5;
        for j in 0..n {
            let tj = (j as f64 + 0.5) / n as f64 - 0.5;
            let sx = crop.cx + tj * crop.side * c - ti * crop.side * s;
            let sy = crop.cy + tj * crop.side * s + ti * crop.side * c;
            let g = bilinear_grey(img, sx, sy);
            out[i * n + j] = (g / 255.0 - 0.5) * 2.0;
        }
    }
}

fn bilinear_grey(img: Rgb, sx: f64, sy: f64) -> f32 {
    let p = bilinear_rgb(img, sx, sy, Border::Replicate);
    // Grey of each neighbour then interpolation equals interpolation then grey (linear).
    p[0] * 0.299 + p[1] * 0.587 + p[2] * 0.114
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: usize, h: usize) -> Vec<u8> {
        (0..w * h * 3).map(|k| ((k / 3) % 251) as u8).collect()
    }

    #[test]
    fn letterbox_pads_the_short_side() {
        let (r, pad) = letterbox(640, 480);
        assert_eq!((r.w, r.h), (640.0, 640.0));
        assert!((pad[1] - 0.125).abs() < 1e-6 && pad[0] == 0.0);
        let (r, pad) = letterbox(300, 600);
        assert_eq!((r.w, r.h), (600.0, 600.0));
        assert!((pad[0] - 0.25).abs() < 1e-6 && pad[1] == 0.0);
    }

    #[test]
    fn identity_warp_copies_the_image() {
        // A rect covering the image exactly, same size out: tensor pixel (j, i) samples the
        // source at (j - 0.5 + 0.5, ...) = pixel corners shifted by half a pixel, as OpenCV.
        let (w, h) = (8, 6);
        let data = ramp(w, h);
        let img = Rgb::new(w, h, &data).unwrap();
        let roi = PxRect {
            cx: w as f64 / 2.0,
            cy: h as f64 / 2.0,
            w: w as f64,
            h: h as f64,
            rot: 0.0,
        };
        let mut out = vec![0.0; w * h * 3];
        warp_rgb(img, roi, w, h, Border::Replicate, (1.0, 0.0), &mut out);
        for i in 0..h {
            for j in 0..w {
                let want = data[(i * w + j) * 3] as f32;
                assert_eq!(out[(i * w + j) * 3], want, "pixel {j},{i}");
            }
        }
    }

    #[test]
    fn zero_border_pads_and_replicate_repeats() {
        let data = vec![200u8; 4 * 4 * 3];
        let img = Rgb::new(4, 4, &data).unwrap();
        // A rect twice the image: the outer ring reads outside.
        let roi = PxRect {
            cx: 2.0,
            cy: 2.0,
            w: 8.0,
            h: 8.0,
            rot: 0.0,
        };
        let mut z = vec![0.0; 8 * 8 * 3];
        warp_rgb(img, roi, 8, 8, Border::Zero, (1.0, 0.0), &mut z);
        assert_eq!(z[0], 0.0);
        assert_eq!(z[(4 * 8 + 4) * 3], 200.0);
        let mut r = vec![0.0; 8 * 8 * 3];
        warp_rgb(img, roi, 8, 8, Border::Replicate, (1.0, 0.0), &mut r);
        assert!(r.iter().all(|&v| v == 200.0));
    }

    #[test]
    fn rotation_by_half_a_turn_flips_the_crop() {
        let (w, h) = (6, 6);
        let data = ramp(w, h);
        let img = Rgb::new(w, h, &data).unwrap();
        let base = PxRect {
            cx: 3.0,
            cy: 3.0,
            w: 6.0,
            h: 6.0,
            rot: 0.0,
        };
        let mut a = vec![0.0; w * h * 3];
        let mut b = vec![0.0; w * h * 3];
        warp_rgb(img, base, w, h, Border::Replicate, (1.0, 0.0), &mut a);
        warp_rgb(
            img,
            PxRect {
                rot: std::f64::consts::PI,
                ..base
            },
            w,
            h,
            Border::Replicate,
            (1.0, 0.0),
            &mut b,
        );
        // Under a half turn, tensor pixel (j, i) samples where (w-j, h-i) did (corner-based
        // mapping), i.e. one pixel off the mirror for the inner pixels.
        for i in 1..h {
            for j in 1..w {
                assert_eq!(
                    b[(i * w + j) * 3],
                    a[((h - i) * w + (w - j)) * 3],
                    "{j},{i}"
                );
            }
        }
    }

    #[test]
    fn hostile_coordinates_do_not_panic() {
        let data = vec![7u8; 3 * 2 * 3];
        let img = Rgb::new(3, 2, &data).unwrap();
        let mut out = vec![0.0; 4 * 4 * 3];
        for v in [f64::NAN, f64::INFINITY, -1e300, 1e300] {
            let roi = PxRect {
                cx: v,
                cy: 1.0,
                w: v,
                h: 4.0,
                rot: v,
            };
            warp_rgb(img, roi, 4, 4, Border::Zero, (1.0, 0.0), &mut out);
            warp_rgb(img, roi, 4, 4, Border::Replicate, (1.0, 0.0), &mut out);
        }
        assert!(Rgb::new(3, 2, &data[1..]).is_none());
        assert!(Rgb::new(0, 2, &[]).is_none());
    }

    #[test]
    fn aligned_square_of_a_level_face_is_its_box() {
        let mut pts = vec![[0.0f32; 3]; 478];
        for (k, p) in pts.iter_mut().enumerate() {
            *p = [10.0 + (k % 20) as f32, 50.0 + (k % 10) as f32, 0.0];
        }
        pts[33] = [10.0, 55.0, 0.0];
        pts[263] = [29.0, 55.0, 0.0];
        let c = aligned_square(&pts, 1.2).unwrap();
        assert!(c.angle.abs() < 1e-9);
        assert!((c.cx - 19.5).abs() < 1e-9 && (c.cy - 54.5).abs() < 1e-9);
        assert!((c.side - 1.2 * 19.0).abs() < 1e-9);
        assert!(aligned_square(&pts[..100], 1.2).is_none());
    }
}
