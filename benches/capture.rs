//! `cargo bench --bench capture`: JPEG decode and YUV → RGB conversion timings.
//!
//! No criterion: a warm-up, then a fixed number of timed iterations per case; prints the
//! median and 90th percentile in milliseconds. Inputs are synthetic and deterministic
//! (gradients + shapes + xorshift noise, JPEG-encoded at quality 80 with `image`'s encoder,
//! YUYV filled from the same generator), so runs are comparable across machines.

use expllm_edge::capture::color::{self, YuvRange};
use expllm_edge::capture::jpeg::decode_jpeg_into;
use std::hint::black_box;
use std::time::Instant;

/// xorshift64* for deterministic test images.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// A camera-like RGB frame: smooth gradients, a few flat discs, mild sensor noise.
fn synthetic_rgb(w: u32, h: u32) -> image::RgbImage {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let discs: Vec<(f32, f32, f32, [u8; 3])> = (0..12)
        .map(|_| {
            let r = rng.next();
            (
                (r % w as u64) as f32,
                ((r >> 16) % h as u64) as f32,
                (20 + (r >> 32) % (h as u64 / 4)) as f32,
                [(r >> 40) as u8, (r >> 48) as u8, (r >> 56) as u8],
            )
        })
        .collect();
    image::RgbImage::from_fn(w, h, |x, y| {
        let mut p = [
            (x * 255 / w) as u8,
            (y * 255 / h) as u8,
            ((x + y) * 127 / (w + h)) as u8 + 64,
        ];
        for &(cx, cy, r, c) in &discs {
            if (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2) < r * r {
                p = c;
            }
        }
        let n = rng.next();
        image::Rgb(p.map(|v| v.saturating_add((n % 9) as u8).saturating_sub(4)))
    })
}

fn jpeg(w: u32, h: u32, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(&synthetic_rgb(w, h))
        .expect("encode");
    out
}

/// Run `f` `warm` times untimed, then `n` times timed; return (median, p90) in ms.
fn time(warm: usize, n: usize, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..warm {
        f();
    }
    let mut ms: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    (ms[n / 2], ms[(n * 9 / 10).min(n - 1)])
}

fn report(case: &str, (median, p90): (f64, f64)) {
    println!("{case:<52} median {median:>8.3} ms   p90 {p90:>8.3} ms");
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| {
                    l.starts_with("model name")
                        || l.starts_with("Model")
                        || l.starts_with("Hardware")
                })
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    let cmd: Vec<String> = std::env::args().collect();
    println!("# capture bench: {}", cmd.join(" "));
    println!(
        "# cpu: {} ({} threads available), profile: {}",
        cpu_model(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!("# warm-up then N timed iterations; single-threaded; times per frame");

    let mut rgb = Vec::new();
    for (w, h) in [(640u32, 480u32), (1280, 720)] {
        let data = jpeg(w, h, 80);
        let n = if w > 640 { 60 } else { 100 };
        let size = decode_jpeg_into(&data, &mut rgb).expect("decode");
        assert_eq!((size.width, size.height), (w, h));
        let check = image::load_from_memory(&data)
            .expect("image decode")
            .to_rgb8();
        assert_eq!(check.as_raw().len(), rgb.len());
        let label = format!("JPEG {w}x{h} q80 ({} KiB)", data.len() / 1024);
        report(
            &format!("{label} decode_jpeg_into"),
            time(5, n, || {
                rgb.clear();
                decode_jpeg_into(black_box(&data), &mut rgb).unwrap();
                black_box(&rgb);
            }),
        );
        report(
            &format!("{label} image::load_from_memory"),
            time(5, n, || {
                black_box(image::load_from_memory(black_box(&data)).unwrap().to_rgb8());
            }),
        );
    }

    for (w, h) in [(640u32, 480u32), (1280, 720)] {
        let mut rng = Rng(12345);
        let yuyv: Vec<u8> = (0..w as usize * h as usize * 2)
            .map(|_| rng.next() as u8)
            .collect();
        let stride = w as usize * 2;
        report(
            &format!("YUYV->RGB {w}x{h} fast (yuv crate)"),
            time(10, 200, || {
                rgb.clear();
                color::yuyv_to_rgb(black_box(&yuyv), w, h, stride, YuvRange::Limited, &mut rgb)
                    .unwrap();
                black_box(&rgb);
            }),
        );
        report(
            &format!("YUYV->RGB {w}x{h} scalar reference"),
            time(3, 30, || {
                rgb.clear();
                color::reference::yuyv_to_rgb(
                    black_box(&yuyv),
                    w,
                    h,
                    stride,
                    YuvRange::Limited,
                    &mut rgb,
                )
                .unwrap();
                black_box(&rgb);
            }),
        );
    }

    let (w, h) = (1280u32, 720u32);
    let mut rng = Rng(777);
    let frame: Vec<u8> = (0..color::Chroma::C420.frame_bytes(w, h))
        .map(|_| rng.next() as u8)
        .collect();
    report(
        &format!("I420->RGB {w}x{h} fast (yuv crate)"),
        time(10, 200, || {
            rgb.clear();
            color::planar_frame_to_rgb(
                color::Chroma::C420,
                black_box(&frame),
                w,
                h,
                YuvRange::Limited,
                &mut rgb,
            )
            .unwrap();
            black_box(&rgb);
        }),
    );
}
