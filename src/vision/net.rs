//! One ONNX network through tract: loaded and checked once (input shape fixed, outputs of the
//! expected sizes), optimised, planned, and its state and input tensor reused frame after
//! frame (the caller writes the input in place: no copy, no allocation for it per run). The
//! only module that touches tract types; the rest of `vision` sees `&mut [f32]` in and `&[f32]`
//! out.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tract_onnx::prelude::*;

/// tract's matmul executor for `threads` threads (None = tract's single-thread default).
pub fn executor(threads: usize) -> Option<tract_onnx::prelude::multithread::Executor> {
    (threads > 1).then(|| {
        tract_onnx::prelude::multithread::Executor::multithread_with_name(threads, "expllm-vision")
    })
}

/// A loaded network with a fixed input shape.
pub struct Net {
    name: String,
    /// Handed to tract by reference count; exclusive again once a run returns, so the next
    /// frame writes into the same buffer (`Arc::make_mut` copies only if tract kept it).
    input: Arc<Tensor>,
    output_lens: Vec<usize>,
    state: TypedSimpleState,
    outputs: TVec<TValue>,
}

impl Net {
    /// Loads `path`, fixes input 0 to `input_shape` (f32), optimises, and checks that the
    /// model has at least `output_lens.len()` outputs with those element counts — a wrong
    /// ONNX file (another network, a truncated file) is one clear error here, not garbage
    /// later.
    pub fn load(
        path: &Path,
        input_shape: &[usize],
        output_lens: &[usize],
        executor: Option<tract_onnx::prelude::multithread::Executor>,
    ) -> Result<Net> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let what = || format!("{}: not a usable ONNX model for this stage", path.display());
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot open model {}", path.display()))?;
        if !meta.is_file() {
            bail!("model {} is not a file", path.display());
        }
        let model = tract_onnx::onnx().model_for_path(path).map_err(|e| {
            anyhow::anyhow!(
                "{}: not a valid ONNX file: {}",
                path.display(),
                one_line(&e)
            )
        })?;
        let n_in = model.input_outlets().map(|o| o.len()).unwrap_or(0);
        if n_in != 1 {
            bail!("{}: expected 1 input, the model has {n_in}", path.display());
        }
        let model = model
            .with_input_fact(0, f32::fact(input_shape).into())
            .and_then(|m| m.into_optimized())
            .map_err(|e| anyhow::anyhow!("{}: {}", what(), one_line(&e)))
            .with_context(|| format!("expected input f32 {input_shape:?}"))?;
        let outs = model
            .output_outlets()
            .map(|o| o.to_vec())
            .unwrap_or_default();
        if outs.len() < output_lens.len() {
            bail!(
                "{}: expected {} outputs, the model has {}",
                what(),
                output_lens.len(),
                outs.len()
            );
        }
        for (k, (&o, &want)) in outs.iter().zip(output_lens).enumerate() {
            let fact = model
                .outlet_fact(o)
                .map_err(|e| anyhow::anyhow!("{}: {e}", what()))?;
            let got = fact
                .shape
                .as_concrete()
                .map(|s| s.iter().product::<usize>());
            if got != Some(want) || fact.datum_type != f32::datum_type() {
                bail!(
                    "{}: output {k} is {:?} {:?}, expected f32 with {want} values",
                    what(),
                    fact.datum_type,
                    fact.shape
                );
            }
        }
        let opts = RunOptions {
            executor,
            ..Default::default()
        };
        let plan = model
            .into_runnable_with_options(&opts)
            .map_err(|e| anyhow::anyhow!("{}: {}", what(), one_line(&e)))?;
        let state = plan
            .spawn()
            .map_err(|e| anyhow::anyhow!("{}: {}", what(), one_line(&e)))?;
        let input = Tensor::zero::<f32>(input_shape)
            .map_err(|e| anyhow::anyhow!("{}: {}", what(), one_line(&e)))?;
        Ok(Net {
            name,
            input: Arc::new(input),
            output_lens: output_lens.to_vec(),
            state,
            outputs: tvec!(),
        })
    }

    /// Lets `fill` write the input (row-major, the fixed input shape) in place.
    pub fn fill_input(&mut self, fill: impl FnOnce(&mut [f32])) -> Result<()> {
        let t = Arc::make_mut(&mut self.input);
        let mut view = t
            .try_as_plain_ram_mut()
            .map_err(|e| anyhow::anyhow!("{}: input: {}", self.name, one_line(&e)))?;
        let slice = view
            .as_slice_mut::<f32>()
            .map_err(|e| anyhow::anyhow!("{}: input: {}", self.name, one_line(&e)))?;
        fill(slice);
        Ok(())
    }

    /// Runs the network on the input last written by [`Net::fill_input`]. Read the outputs
    /// with [`Net::output`] until the next run.
    pub fn run(&mut self) -> Result<()> {
        // Drop the previous outputs first: they may hold the only other reference tract keeps.
        self.outputs.clear();
        self.outputs = self
            .state
            .run(tvec!(TValue::from_const(self.input.clone())))
            .map_err(|e| anyhow::anyhow!("{}: run failed: {}", self.name, one_line(&e)))?;
        Ok(())
    }

    /// Whether the input buffer is ours alone (tract kept no reference after the last run).
    #[cfg(test)]
    fn input_exclusive(&self) -> bool {
        Arc::strong_count(&self.input) == 1
    }

    /// Output `k` of the last run as a flat f32 slice (checked length).
    pub fn output(&self, k: usize) -> Result<&[f32]> {
        let t = self
            .outputs
            .get(k)
            .with_context(|| format!("{}: no output {k} (not run yet?)", self.name))?;
        let v = t
            .try_as_plain_ram()
            .and_then(|p| p.as_slice::<f32>())
            .map_err(|e| anyhow::anyhow!("{}: output {k}: {}", self.name, one_line(&e)))?;
        if v.len() != self.output_lens[k] {
            bail!(
                "{}: output {k} has {} values, expected {}",
                self.name,
                v.len(),
                self.output_lens[k]
            );
        }
        Ok(v)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

fn one_line(e: &impl std::fmt::Display) -> String {
    format!("{e:#}").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_input_buffer_is_written_in_place_and_reused_across_runs() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/vision/face_blendshapes.onnx");
        let mut n = Net::load(&p, &[1, 146, 2], &[52], None).unwrap();
        let mut first = Vec::new();
        for k in 0..3 {
            // A different point pattern per run (the network normalises position and
            // scale, so a shifted copy would give the same output).
            n.fill_input(|x| {
                for (i, v) in x.iter_mut().enumerate() {
                    *v = ((i * (k + 3)) % 53) as f32 * 4.0;
                }
            })
            .unwrap();
            n.run().unwrap();
            assert!(
                n.input_exclusive(),
                "tract kept a reference to the input after run {k}"
            );
            if k == 0 {
                first = n.output(0).unwrap().to_vec();
            } else {
                // A different input gives a different output: the write reached the network.
                assert_ne!(first, n.output(0).unwrap());
            }
        }
    }
}
