//! JPEG/PNG decode as the still-image and MJPEG paths call it.
#![no_main]
use expllm_edge::capture::jpeg::decode_image_into;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rgb = Vec::new();
    let _ = decode_image_into(data, &mut rgb);
});
