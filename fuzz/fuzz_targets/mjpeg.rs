//! The concatenated-MJPEG splitter + JPEG decode on arbitrary bytes (resync, truncation).
#![no_main]
use expllm_edge::capture::mjpeg::MjpegReader;
use expllm_edge::capture::{CaptureError, Source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = MjpegReader::new(std::io::Cursor::new(data), "fuzz", false, 1 << 20);
    let mut rgb = Vec::new();
    for _ in 0..64 {
        match r.read_frame(&mut rgb) {
            Ok(Some(_)) | Err(CaptureError::Corrupt(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
});
