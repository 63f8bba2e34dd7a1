//! The Y4M stream reader on arbitrary bytes: header, frame headers, every chroma layout.
#![no_main]
use expllm_edge::capture::y4m::Y4mReader;
use expllm_edge::capture::{CaptureError, Source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut r) = Y4mReader::new(std::io::Cursor::new(data), "fuzz", false) else {
        return;
    };
    let mut rgb = Vec::new();
    for _ in 0..64 {
        match r.read_frame(&mut rgb) {
            Ok(Some(_)) | Err(CaptureError::Corrupt(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
});
