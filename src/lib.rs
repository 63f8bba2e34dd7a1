//! expllm-edge: facial expressions with a faithful chain of thought, on a board.
//!
//! Data flows one way through plain structs: [`capture`] (frames) → [`vision`] + [`au`]
//! (faces, AUs, class scores) → [`publish`] (label lines) and [`cot`] (explanations, with the
//! [`llm`] runtime on [`kernels`]) → [`publish`]. [`daemon`] owns the threads and queues that
//! connect them; [`cli`] builds a pipeline from flags.

pub mod annotate;
pub mod au;
pub mod bench;
pub mod board;
pub mod capture;
pub mod cli;
pub mod cot;
pub mod daemon;
pub mod eval;
pub mod frame;
pub mod kernels;
pub mod llm;
pub mod models;
pub mod publish;
pub mod vision;
