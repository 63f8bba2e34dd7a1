//! GGUF language-model runtime: file reading (memory-mapped, bounds-checked), tensor types,
//! the llama/qwen2 forward pass, the tokenizer and constrained generation.
//!
//! Filled in by the GGUF runtime issue. Must not do SIMD itself (that is `kernels`) or know
//! about faces or frames.

pub mod chat;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod quantize;
pub mod tokenizer;
pub mod unicode;
