//! Annotated images for a person to look at (`expllm infer --annotate DIR`): each face's box,
//! its 478 mesh points, the six detector keypoints, the label with its score and the
//! strongest AUs with their FACS letters, drawn into a copy of the frame and written as PNG.
//!
//! Owns only drawing (a built-in 5×7 pixel font, no font files); must not run models or
//! decide labels.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::au::{facs_letter, AUS};
use crate::publish::LABELS;
use crate::vision::FaceObservation;

/// Draws `faces` onto a copy of the RGB8 image and writes `dir/<stem>.png`; returns the path.
pub fn write(
    dir: &Path,
    stem: &str,
    width: u32,
    height: u32,
    rgb: &[u8],
    faces: &[FaceObservation],
) -> Result<PathBuf> {
    let mut c = Canvas {
        w: width as i64,
        h: height as i64,
        px: rgb.to_vec(),
    };
    let scale = ((width.min(height) / 320).max(1)) as i64;
    for f in faces {
        let col = face_colour(f.face_id);
        for p in &f.landmarks {
            c.dot(p[0] as i64, p[1] as i64, 0, [40, 220, 255]);
        }
        for k in &f.keypoints {
            c.dot(k[0] as i64, k[1] as i64, scale, [255, 60, 60]);
        }
        let [x, y, w, h] = f.bbox.map(|v| v as i64);
        c.rect(x, y, w, h, scale, col);
        let label = LABELS.get(f.label).copied().unwrap_or("?");
        let score = f.scores.get(f.label).copied().unwrap_or(0.0);
        let head = format!("#{} {} {:.0}%", f.face_id, label, score * 100.0);
        let ty = (y - 9 * scale - 2).max(0);
        c.text(x, ty, scale, &head, col);
        // Strongest AUs (≥ A), four at most, under the box.
        let mut idx: Vec<usize> = (0..AUS.len())
            .filter(|&k| facs_letter(f.aus[k]) != '-')
            .collect();
        idx.sort_by(|&a, &b| f.aus[b].total_cmp(&f.aus[a]));
        let aus: Vec<String> = idx
            .iter()
            .take(4)
            .map(|&k| format!("AU{}{}", AUS[k].0, facs_letter(f.aus[k])))
            .collect();
        if !aus.is_empty() {
            c.text(
                x,
                (y + h + 3).min(c.h - 8 * scale),
                scale,
                &aus.join(" "),
                col,
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let out = dir.join(format!("{stem}.png"));
    image::save_buffer(&out, &c.px, width, height, image::ExtendedColorType::Rgb8)
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(out)
}

fn face_colour(id: u32) -> [u8; 3] {
    const C: [[u8; 3]; 4] = [[0, 255, 0], [255, 200, 0], [255, 0, 255], [0, 160, 255]];
    C[id as usize % C.len()]
}

struct Canvas {
    w: i64,
    h: i64,
    px: Vec<u8>,
}

impl Canvas {
    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && x < self.w && y < self.h {
            let k = ((y * self.w + x) * 3) as usize;
            self.px[k..k + 3].copy_from_slice(&c);
        }
    }
    fn dot(&mut self, x: i64, y: i64, r: i64, c: [u8; 3]) {
        for dy in -r..=r {
            for dx in -r..=r {
                self.set(x + dx, y + dy, c);
            }
        }
    }
    fn rect(&mut self, x: i64, y: i64, w: i64, h: i64, t: i64, c: [u8; 3]) {
        for k in 0..t.max(1) {
            for i in x..=x + w {
                self.set(i, y - k, c);
                self.set(i, y + h + k, c);
            }
            for j in y..=y + h {
                self.set(x - k, j, c);
                self.set(x + w + k, j, c);
            }
        }
    }
    /// 5×7 glyphs, `s`× scaled, on a dark box for contrast.
    fn text(&mut self, x: i64, y: i64, s: i64, t: &str, c: [u8; 3]) {
        let n = t.chars().count() as i64;
        for j in y..y + 9 * s {
            for i in x..x + (6 * n + 1) * s {
                self.set(i, j, [0, 0, 0]);
            }
        }
        for (k, ch) in t.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        for dy in 0..s {
                            for dx in 0..s {
                                self.set(
                                    x + (1 + 6 * k as i64 + col) * s + dx,
                                    y + (1 + row as i64) * s + dy,
                                    c,
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// 5×7 bitmap rows (bit 4 = leftmost column). Lower case draws as upper case; unknown
/// characters as a box.
fn glyph(ch: char) -> [u8; 7] {
    match ch.to_ascii_uppercase() {
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        ' ' => [0; 7],
        '#' => [0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_box_and_text_and_writes_a_png() {
        let (w, h) = (120u32, 90u32);
        let rgb = vec![100u8; (w * h * 3) as usize];
        let mut f = FaceObservation {
            face_id: 1,
            bbox: [30.0, 30.0, 40.0, 40.0],
            label: 3,
            ..Default::default()
        };
        f.scores[3] = 0.9;
        f.aus[8] = 0.6; // AU12 C
        f.landmarks = vec![[50.0, 50.0, 0.0]];
        let dir = std::env::temp_dir().join(format!("expllm-annotate-{}", std::process::id()));
        let p = write(&dir, "x", w, h, &rgb, &[f]).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (w, h));
        assert_eq!(img.get_pixel(30, 50).0, face_colour(1), "box edge");
        assert_eq!(img.get_pixel(50, 50).0, [40, 220, 255], "mesh point");
        assert_eq!(img.get_pixel(5, 5).0, [100, 100, 100], "untouched");
        // Text drawn somewhere in the label strip above the box.
        let strip = (30..120).flat_map(|x| (19..30).map(move |y| (x, y)));
        assert!(strip
            .into_iter()
            .any(|(x, y)| img.get_pixel(x, y).0 == face_colour(1)));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn glyphs_are_distinct() {
        let s = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let g: Vec<_> = s.chars().map(glyph).collect();
        for i in 0..g.len() {
            for j in i + 1..g.len() {
                assert_ne!(g[i], g[j], "{} vs {}", &s[i..=i], &s[j..=j]);
            }
        }
    }
}
