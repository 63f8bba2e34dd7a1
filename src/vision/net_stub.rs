//! Stand-in for `net.rs` in builds without the `vision` feature — the fuzz targets, which
//! never run a network and would otherwise build tract under the sanitizers (longer than
//! everything else together). Loading a network is an error that says so; nothing else is
//! reachable, because no [`Net`] can exist.

use anyhow::{bail, Result};
use std::path::Path;

/// No executor without tract.
pub enum Executor {}

pub fn executor(_threads: usize) -> Option<Executor> {
    None
}

enum Never {}

pub struct Net {
    never: Never,
}

impl Net {
    pub fn load(
        path: &Path,
        _input_shape: &[usize],
        _output_lens: &[usize],
        _executor: Option<Executor>,
    ) -> Result<Net> {
        bail!(
            "{}: this expllm was built without the `vision` feature (no ONNX runtime)",
            path.display()
        )
    }

    pub fn fill_input(&mut self, _fill: impl FnOnce(&mut [f32])) -> Result<()> {
        match self.never {}
    }

    pub fn run(&mut self) -> Result<()> {
        match self.never {}
    }

    pub fn output(&self, _k: usize) -> Result<&[f32]> {
        match self.never {}
    }

    pub fn name(&self) -> &str {
        match self.never {}
    }
}
