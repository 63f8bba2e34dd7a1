//! GGUF language-model runtime: file reading (memory-mapped, bounds-checked), tensor types,
//! the llama/qwen2 forward pass, the tokenizer and constrained generation.
//!
//! Filled in by the GGUF runtime issue. Must not do SIMD itself (that is `kernels`) or know
//! about faces or frames.
