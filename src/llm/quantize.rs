//! Requantizing a GGUF file: every 2-D weight matrix (row length a multiple of 32) becomes
//! Q4_0 or Q8_0; 1-D tensors (norms, biases) and anything else stay as they are, byte for
//! byte. Metadata is copied, with `general.file_type` set to llama.cpp's file type for the
//! target (Q4_0 = 2, Q8_0 = 7), so llama.cpp reads the result as such a file.

use crate::kernels::quants;
use crate::kernels::GgmlType;
use crate::llm::gguf::{write_gguf, GgufFile, MetaValue};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Requantize `input` to `target` (Q4_0 or Q8_0), writing `output`. `progress` sees
/// (tensors done, tensors total, name).
pub fn quantize_file(
    input: &Path,
    output: &Path,
    target: GgmlType,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<()> {
    let ftype = match target {
        GgmlType::Q4_0 => 2u32,
        GgmlType::Q8_0 => 7,
        other => bail!("can quantize to Q4_0 or Q8_0, not {}", other.name()),
    };
    if input.canonicalize().ok() == output.canonicalize().ok() {
        bail!("output {} is the input file", output.display());
    }
    let g = GgufFile::open(input)?;
    let mut metadata: Vec<(String, MetaValue)> = g.metadata().to_vec();
    match metadata.iter_mut().find(|(k, _)| k == "general.file_type") {
        Some((_, v)) => *v = MetaValue::U32(ftype),
        None => metadata.push(("general.file_type".into(), MetaValue::U32(ftype))),
    }
    let n = g.tensors().len();
    // `None`: unchanged, written straight from the map.
    let mut converted: Vec<Option<Vec<u8>>> = Vec::with_capacity(n);
    let mut row = Vec::new();
    for (i, t) in g.tensors().iter().enumerate() {
        progress(i, n, &t.name);
        let src = g.tensor_data(t);
        let cols = t.dims[0] as usize;
        if t.dims.len() == 2 && cols.is_multiple_of(32) && t.ty != target {
            let rows = t.dims[1] as usize;
            let in_row = t.ty.row_bytes(cols as u64).context("row size")? as usize;
            let out_row = target.row_bytes(cols as u64).context("row size")? as usize;
            let mut out = vec![0u8; rows * out_row];
            row.resize(cols, 0.0);
            for r in 0..rows {
                quants::dequantize_row(t.ty, &src[r * in_row..(r + 1) * in_row], &mut row)
                    .map_err(|e| anyhow::anyhow!("tensor {}: {e}", t.name))?;
                quants::quantize_row(target, &row, &mut out[r * out_row..(r + 1) * out_row])
                    .map_err(|e| anyhow::anyhow!("tensor {}: {e}", t.name))?;
            }
            converted.push(Some(out));
        } else {
            converted.push(None);
        }
    }
    progress(n, n, "");
    let tensors: Vec<(String, Vec<u64>, GgmlType, &[u8])> = g
        .tensors()
        .iter()
        .zip(&converted)
        .map(|(t, c)| match c {
            Some(data) => (t.name.clone(), t.dims.clone(), target, data.as_slice()),
            None => (t.name.clone(), t.dims.clone(), t.ty, g.tensor_data(t)),
        })
        .collect();
    write_gguf(output, &metadata, &tensors)
        .with_context(|| format!("cannot write {}", output.display()))
}
