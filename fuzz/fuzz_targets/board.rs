//! The board-file (TOML) parser and its validation.
#![no_main]
use expllm_edge::board::Board;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Board::parse(text, "fuzz");
    }
});
