//! JPEG and PNG decoding into packed RGB8.
//!
//! JPEG goes through `zune-jpeg` directly (the same decoder `image` uses internally, called
//! without `image`'s extra copy into a `DynamicImage`), with width/height limits checked
//! from the header *before* any pixel buffer is sized. PNG goes through `image`.
//! `cargo bench --bench capture` compares the two JPEG paths.

use super::{FrameSize, MAX_DIM};
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// Decode one JPEG into `rgb` (resized to `w*h*3`; its capacity is reused). Grayscale and CMYK
/// JPEGs are converted to RGB. Errors are one line, fit for a log; a panic inside the decoder
/// is one of them (`no_panic`).
pub fn decode_jpeg_into(data: &[u8], rgb: &mut Vec<u8>) -> Result<FrameSize, String> {
    no_panic("JPEG", || decode_jpeg_unguarded(data, rgb))?
}

fn decode_jpeg_unguarded(data: &[u8], rgb: &mut Vec<u8>) -> Result<FrameSize, String> {
    let opts = DecoderOptions::default()
        .set_max_width(MAX_DIM as usize)
        .set_max_height(MAX_DIM as usize)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut dec = JpegDecoder::new_with_options(ZCursor::new(data), opts);
    dec.decode_headers()
        .map_err(|e| format!("JPEG header: {e:?}"))?;
    let info = dec.info().ok_or("JPEG header: no image info")?;
    let (w, h) = (info.width as u32, info.height as u32);
    if w == 0 || h == 0 {
        return Err(format!("JPEG has an empty size {w}x{h}"));
    }
    let need = dec
        .output_buffer_size()
        .ok_or("JPEG header: no output size")?;
    if need != w as usize * h as usize * 3 {
        return Err(format!("JPEG decodes to {need} bytes, not RGB {w}x{h}"));
    }
    rgb.resize(need, 0);
    dec.decode_into(rgb)
        .map_err(|e| format!("JPEG data: {e:?}"))?;
    Ok(FrameSize {
        width: w,
        height: h,
    })
}

/// Run a third-party decoder's step so that a panic inside it becomes a one-line error.
///
/// Defence in depth for hostile frames: `zune-jpeg` is safe Rust, but a crafted stream can
/// still reach arithmetic that overflows (fuzzing found `dc_prediction * qt_table[0]` in
/// `decode_mcu_block`). The shipped profiles build dependencies without overflow checks, so
/// there it wraps into wrong pixels of a corrupt image; a debug build panics, and any other
/// panic in the decoder (an `unwrap`, an index) must not take the capture thread down either.
/// The error carries the panic's first line; the buffer the closure wrote into holds garbage
/// afterwards, and callers drop the frame.
///
/// While the closure runs, the process's panic hook stays silent on this thread (installed
/// once, chained to the hook before it), so stderr gets our one line, not Rust's panic report.
/// Not under `cfg(fuzzing)`: there libFuzzer's hook must see every panic and abort.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    #[cfg(not(fuzzing))]
    quiet::install();
    let was = quiet::GUARDED.replace(true);
    // AssertUnwindSafe: the only state the closure mutates is the decoder (dropped right after)
    // and the output buffer, which the caller treats as invalid on `Err`.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    quiet::GUARDED.set(was);
    r.map_err(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .and_then(|m| m.lines().next())
            .unwrap_or("no message");
        format!("{what}: the decoder panicked on this input ({msg}); frame dropped")
    })
}

/// The panic hook's silence inside [`no_panic`].
mod quiet {
    use std::cell::Cell;

    thread_local! {
        /// Set while this thread runs a decoder under [`super::no_panic`].
        pub(super) static GUARDED: Cell<bool> = const { Cell::new(false) };
    }

    /// Wrap the panic hook in force once: it reports every panic as before, except on a
    /// thread inside [`super::no_panic`].
    #[cfg(not(fuzzing))]
    pub(super) fn install() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let before = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if !GUARDED.with(Cell::get) {
                    before(info)
                }
            }));
        });
    }
}

/// Decode a PNG (any bit depth / colour type) into packed RGB8. Alpha is dropped.
pub fn decode_png_into(data: &[u8], rgb: &mut Vec<u8>) -> Result<FrameSize, String> {
    let mut reader =
        image::ImageReader::with_format(std::io::Cursor::new(data), image::ImageFormat::Png);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DIM);
    limits.max_image_height = Some(MAX_DIM);
    limits.max_alloc = Some(512 << 20);
    reader.limits(limits);
    let img = no_panic("PNG", || reader.decode())?.map_err(|e| format!("PNG: {e}"))?;
    let img = img.into_rgb8();
    let (w, h) = img.dimensions();
    rgb.clear();
    rgb.extend_from_slice(img.as_raw());
    Ok(FrameSize {
        width: w,
        height: h,
    })
}

/// Decode a still image, choosing the decoder by its magic bytes (not its file name).
pub fn decode_image_into(data: &[u8], rgb: &mut Vec<u8>) -> Result<FrameSize, String> {
    if data.starts_with(&[0xFF, 0xD8]) {
        decode_jpeg_into(data, rgb)
    } else if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png_into(data, rgb)
    } else {
        Err("not a JPEG or PNG image (unknown magic bytes)".into())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A real JPEG made by `image`'s encoder from a smooth gradient.
    pub fn encode_test_jpeg(w: u32, h: u32, quality: u8) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8, 128])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
            .encode_image(&img)
            .unwrap();
        out
    }

    #[test]
    fn jpeg_roundtrip_is_close() {
        let data = encode_test_jpeg(64, 48, 95);
        let mut rgb = Vec::new();
        let s = decode_jpeg_into(&data, &mut rgb).unwrap();
        assert_eq!((s.width, s.height), (64, 48));
        assert_eq!(rgb.len(), 64 * 48 * 3);
        // pixel (32, 24) was (127, 127, 128) before lossy coding
        let p = &rgb[(24 * 64 + 32) * 3..][..3];
        for (got, want) in p.iter().zip([127u8, 127, 128]) {
            assert!((*got as i32 - want as i32).abs() <= 6, "{p:?}");
        }
    }

    #[test]
    fn grayscale_jpeg_becomes_rgb() {
        let img = image::GrayImage::from_fn(16, 8, |x, _| image::Luma([(x * 16) as u8]));
        let mut data = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut data, 95)
            .encode_image(&img)
            .unwrap();
        let mut rgb = Vec::new();
        let s = decode_jpeg_into(&data, &mut rgb).unwrap();
        assert_eq!(rgb.len(), (s.width * s.height * 3) as usize);
        assert!(rgb.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    }

    #[test]
    fn corrupt_and_truncated_jpegs_are_errors_not_panics() {
        let data = encode_test_jpeg(64, 48, 80);
        let mut rgb = Vec::new();
        for cut in [2, 10, 100, data.len() / 2, data.len() - 3] {
            let _ = decode_jpeg_into(&data[..cut], &mut rgb); // must not panic
        }
        assert!(decode_jpeg_into(&data[..20], &mut rgb).is_err());
        let mut bad = data.clone();
        for b in bad.iter_mut().skip(2).take(200) {
            *b = 0xAA;
        }
        assert!(decode_jpeg_into(&bad, &mut rgb).is_err());
        assert!(decode_image_into(b"GIF89a....", &mut rgb).is_err());
    }

    /// A hand-built baseline JPEG (one 8×(8·blocks) grey component) whose DC prediction runs
    /// past what `dc_prediction * qt_table[0]` can hold in an i32: a 16-bit quantisation table
    /// of 65 535s, a DC Huffman table whose one code (`0`) means "category 11", and every
    /// block's DC difference +2047 with an end-of-block AC code. After 17 blocks the
    /// prediction is 34 799 and 34 799 × 65 535 > 2³¹. The same defect the CI fuzz run hit
    /// (`fuzz/seeds/image/dc-overflow.jpg` is this file with 20 blocks).
    pub fn dc_overflow_jpeg(blocks: u16) -> Vec<u8> {
        let mut j = vec![0xFF, 0xD8];
        // DQT: precision 1 (16-bit), table 0, all 65 535.
        j.extend([0xFF, 0xDB, 0x00, 131, 0x10]);
        j.extend(std::iter::repeat_n(0xFF, 128));
        // SOF0: 8-bit samples, 8 high, 8·blocks wide, one component (id 1, 1×1, table 0).
        let wide = (8 * blocks).to_be_bytes();
        j.extend([
            0xFF, 0xC0, 0x00, 11, 8, 0x00, 8, wide[0], wide[1], 1, 1, 0x11, 0,
        ]);
        // DHT: DC table 0 and AC table 0, each one 1-bit code: DC category 11, AC EOB.
        for (class, symbol) in [(0x00u8, 11u8), (0x10, 0x00)] {
            j.extend([0xFF, 0xC4, 0x00, 20, class, 1]);
            j.extend([0u8; 15]);
            j.push(symbol);
        }
        // SOS: one component, tables 0/0, spectral 0..63.
        j.extend([0xFF, 0xDA, 0x00, 8, 1, 1, 0x00, 0, 63, 0]);
        // Per block: DC code `0`, 11 one-bits (+2047), AC code `0` (EOB).
        let mut bits = Vec::new();
        for _ in 0..blocks {
            bits.push(0u8);
            bits.extend([1u8; 11]);
            bits.push(0);
        }
        while bits.len() % 8 != 0 {
            bits.push(1); // pad with one-bits, as the standard says
        }
        for byte in bits.chunks(8) {
            let b = byte.iter().fold(0u8, |acc, &x| acc << 1 | x);
            j.push(b);
            if b == 0xFF {
                j.push(0x00); // byte stuffing
            }
        }
        j.extend([0xFF, 0xD9]);
        j
    }

    #[test]
    fn a_jpeg_that_overflows_the_decoders_arithmetic_is_no_panic() {
        let mut rgb = Vec::new();
        // 16 blocks stay in range: this stream decodes (proves the builder makes a JPEG the
        // decoder walks to the end, so 20 blocks do reach the overflowing multiply).
        let s = decode_jpeg_into(&dc_overflow_jpeg(16), &mut rgb).unwrap();
        assert_eq!((s.width, s.height), (128, 8));
        // 20 blocks: a debug build's overflow check panics inside zune-jpeg (caught: a one-line
        // error); a release build wraps (a corrupt picture). Either way: no panic, and no
        // multi-line error.
        match decode_jpeg_into(&dc_overflow_jpeg(20), &mut rgb) {
            Ok(s) => {
                let overflow_checked = cfg!(debug_assertions);
                assert!(!overflow_checked, "the overflow check did not fire");
                assert_eq!(rgb.len(), (s.width * s.height * 3) as usize)
            }
            Err(e) => assert!(e.starts_with("JPEG: the decoder panicked") && !e.contains('\n')),
        }
    }

    #[test]
    fn a_panic_in_a_decoder_is_a_one_line_error() {
        let r: Result<(), String> = no_panic("JPEG", || panic!("boom\nsecond line"));
        assert_eq!(
            r.unwrap_err(),
            "JPEG: the decoder panicked on this input (boom); frame dropped"
        );
        let n = 3;
        let r: Result<(), String> = no_panic("PNG", || panic!("index {n} out of range"));
        assert_eq!(
            r.unwrap_err(),
            "PNG: the decoder panicked on this input (index 3 out of range); frame dropped"
        );
        assert_eq!(no_panic("PNG", || 7), Ok(7));
        // The hook's silence ends with the call, panic or not.
        assert!(!quiet::GUARDED.with(std::cell::Cell::get));
    }

    #[test]
    fn png_decodes_with_alpha_dropped() {
        let img = image::RgbaImage::from_fn(5, 3, |x, y| image::Rgba([x as u8, y as u8, 9, 200]));
        let mut data = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut data),
            image::ImageFormat::Png,
        )
        .unwrap();
        let mut rgb = Vec::new();
        let s = decode_image_into(&data, &mut rgb).unwrap();
        assert_eq!((s.width, s.height), (5, 3));
        assert_eq!(&rgb[(2 * 5 + 4) * 3..][..3], &[4, 2, 9]);
    }
}
