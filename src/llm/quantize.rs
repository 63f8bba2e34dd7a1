//! Requantizing a GGUF file: every 2-D weight matrix (row length a multiple of 32) becomes
//! Q4_0 or Q8_0; 1-D tensors (norms, biases) and anything else stay as they are, byte for
//! byte. Metadata is copied, with `general.file_type` set to llama.cpp's file type for the
//! target (Q4_0 = 2, Q8_0 = 7), so llama.cpp reads the result as such a file.
//!
//! With a LoRA adapter ([`Lora`]) each adapted matrix is merged before it is quantized:
//! `W' = W + (alpha / r) · B · A`, in f32 from the dequantized base rows.
//!
//! **Adapter format** — llama.cpp's LoRA GGUF (what `convert_lora_to_gguf.py` writes and
//! `training/` exports): metadata `general.type = "adapter"`, `adapter.type = "lora"`,
//! `adapter.lora.alpha` (f32); per adapted base tensor `NAME` two F32 or F16 tensors
//! `NAME.lora_a` with ne = [n_in, r] (r rows of n_in) and `NAME.lora_b` with ne = [r, n_out]
//! (n_out rows of r). Every check is against the base file: an adapter for another model (a
//! missing tensor, other shapes) is refused with the tensor's name.

use crate::kernels::quants;
use crate::kernels::GgmlType;
use crate::llm::gguf::{write_gguf, GgufFile, MetaValue};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// A LoRA adapter, read whole into f32 (a few MB).
pub struct Lora {
    scale: f32,
    /// base tensor name → (A: r × n_in row-major, B: n_out × r row-major, r)
    pairs: std::collections::HashMap<String, (Vec<f32>, Vec<f32>, usize)>,
}

fn f32_tensor(g: &GgufFile, name: &str) -> Result<(Vec<f32>, u64, u64)> {
    let t = g
        .tensor(name)
        .with_context(|| format!("adapter tensor {name} missing"))?;
    if t.dims.len() != 2 || !matches!(t.ty, GgmlType::F32 | GgmlType::F16) {
        bail!("adapter tensor {name}: expected a 2-D F32 or F16 matrix");
    }
    let n = t.dims[0]
        .checked_mul(t.dims[1])
        .filter(|&n| n <= 1 << 28)
        .with_context(|| format!("adapter tensor {name} is too large"))?;
    let mut v = vec![0.0; n as usize];
    quants::dequantize_row(t.ty, g.tensor_data(t), &mut v)
        .map_err(|e| anyhow::anyhow!("adapter tensor {name}: {e}"))?;
    if v.iter().any(|x| !x.is_finite()) {
        bail!("adapter tensor {name} holds a non-finite value");
    }
    Ok((v, t.dims[0], t.dims[1]))
}

impl Lora {
    /// Reads an adapter and checks it against `base`.
    pub fn load(path: &Path, base: &GgufFile) -> Result<Lora> {
        let g = GgufFile::open(path)?;
        let what = format!("{} is not a LoRA adapter", path.display());
        if g.get_str("general.type")? != Some("adapter")
            || g.get_str("adapter.type")? != Some("lora")
        {
            bail!("{what} (general.type must be \"adapter\", adapter.type \"lora\")");
        }
        let alpha = g
            .get_f32("adapter.lora.alpha")?
            .with_context(|| format!("{what}: adapter.lora.alpha missing"))?;
        if !alpha.is_finite() {
            bail!("{what}: adapter.lora.alpha is not finite");
        }
        let mut pairs = std::collections::HashMap::new();
        let mut rank = None;
        for t in g.tensors() {
            let Some(name) = t.name.strip_suffix(".lora_a") else {
                if !t.name.ends_with(".lora_b") {
                    bail!("{what}: unexpected tensor {}", t.name);
                }
                continue;
            };
            let (a, a_in, r) = f32_tensor(&g, &t.name)?;
            let (b, b_r, b_out) = f32_tensor(&g, &format!("{name}.lora_b"))?;
            let w = base.tensor(name).with_context(|| {
                format!("adapter names {name}, which the base model does not have")
            })?;
            if w.dims.len() != 2 || w.dims[0] != a_in || w.dims[1] != b_out || b_r != r {
                bail!(
                    "adapter {name}: A is {a_in}x{r}, B is {b_r}x{b_out}, base is {:?}",
                    w.dims
                );
            }
            if r == 0 || *rank.get_or_insert(r) != r {
                bail!("adapter {name}: rank {r} differs from the other tensors'");
            }
            pairs.insert(name.to_string(), (a, b, r as usize));
        }
        let r = rank.with_context(|| format!("{what}: no lora_a tensors"))?;
        if g.tensors().len() != 2 * pairs.len() {
            bail!("{what}: a lora_b tensor has no lora_a");
        }
        Ok(Lora {
            scale: alpha / r as f32,
            pairs,
        })
    }

    /// Number of adapted matrices.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Adds `scale · (B · A)[row]` to `w` (row `row` of the base tensor `name`).
    fn merge_row(&self, name: &str, row: usize, w: &mut [f32]) {
        if let Some((a, b, r)) = self.pairs.get(name) {
            let n_in = w.len();
            for k in 0..*r {
                let c = self.scale * b[row * r + k];
                if c != 0.0 {
                    for (x, &ak) in w.iter_mut().zip(&a[k * n_in..(k + 1) * n_in]) {
                        *x += c * ak;
                    }
                }
            }
        }
    }
}

/// Requantize `input` to `target` (Q4_0 or Q8_0), writing `output`. `progress` sees
/// (tensors done, tensors total, name).
pub fn quantize_file(
    input: &Path,
    output: &Path,
    target: GgmlType,
    progress: impl FnMut(usize, usize, &str),
) -> Result<()> {
    quantize_file_with(input, output, target, None, progress)
}

/// [`quantize_file`], merging the LoRA adapter at `lora` first when given.
pub fn quantize_file_with(
    input: &Path,
    output: &Path,
    target: GgmlType,
    lora: Option<&Path>,
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
    let lora = lora.map(|p| Lora::load(p, &g)).transpose()?;
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
        let adapted = lora.as_ref().is_some_and(|l| l.pairs.contains_key(&t.name));
        if t.dims.len() == 2 && cols.is_multiple_of(32) && (t.ty != target || adapted) {
            let rows = t.dims[1] as usize;
            let in_row = t.ty.row_bytes(cols as u64).context("row size")? as usize;
            let out_row = target.row_bytes(cols as u64).context("row size")? as usize;
            let mut out = vec![0u8; rows * out_row];
            row.resize(cols, 0.0);
            for r in 0..rows {
                quants::dequantize_row(t.ty, &src[r * in_row..(r + 1) * in_row], &mut row)
                    .map_err(|e| anyhow::anyhow!("tensor {}: {e}", t.name))?;
                if let Some(l) = &lora {
                    l.merge_row(&t.name, r, &mut row);
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn adapter_meta(alpha: f32) -> Vec<(String, MetaValue)> {
        vec![
            (
                "general.architecture".into(),
                MetaValue::Str("llama".into()),
            ),
            ("general.type".into(), MetaValue::Str("adapter".into())),
            ("adapter.type".into(), MetaValue::Str("lora".into())),
            ("adapter.lora.alpha".into(), MetaValue::F32(alpha)),
        ]
    }

    #[test]
    fn a_lora_adapter_is_merged_before_quantizing_and_foreign_adapters_are_refused() {
        let dir = std::env::temp_dir().join(format!("expllm-lora-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (n_in, n_out, r) = (64usize, 3usize, 2usize);
        let w: Vec<f32> = (0..n_in * n_out)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 100.0)
            .collect();
        let other: Vec<f32> = (0..n_in * 2).map(|i| (i % 7) as f32 / 10.0).collect();
        let norm = vec![1.0f32; n_in];
        let base = dir.join("base.gguf");
        let base_meta = vec![(
            "general.architecture".to_string(),
            MetaValue::Str("llama".into()),
        )];
        write_gguf(
            &base,
            &base_meta,
            &[
                (
                    "w".into(),
                    vec![n_in as u64, n_out as u64],
                    GgmlType::F32,
                    &f32_bytes(&w),
                ),
                (
                    "other".into(),
                    vec![n_in as u64, 2],
                    GgmlType::F32,
                    &f32_bytes(&other),
                ),
                (
                    "norm".into(),
                    vec![n_in as u64],
                    GgmlType::F32,
                    &f32_bytes(&norm),
                ),
            ],
        )
        .unwrap();
        let a: Vec<f32> = (0..r * n_in)
            .map(|i| ((i % 11) as f32 - 5.0) / 20.0)
            .collect();
        let b: Vec<f32> = (0..n_out * r).map(|i| (i as f32 - 2.0) / 4.0).collect();
        let alpha = 4.0;
        let lora = dir.join("lora.gguf");
        write_gguf(
            &lora,
            &adapter_meta(alpha),
            &[
                (
                    "w.lora_a".into(),
                    vec![n_in as u64, r as u64],
                    GgmlType::F32,
                    &f32_bytes(&a),
                ),
                (
                    "w.lora_b".into(),
                    vec![r as u64, n_out as u64],
                    GgmlType::F32,
                    &f32_bytes(&b),
                ),
            ],
        )
        .unwrap();
        let out = dir.join("out.gguf");
        quantize_file_with(&base, &out, GgmlType::Q8_0, Some(&lora), |_, _, _| {}).unwrap();
        let g = GgufFile::open(&out).unwrap();
        let read = |name: &str, n: usize| {
            let t = g.tensor(name).unwrap();
            let mut v = vec![0.0; n];
            quants::dequantize_row(t.ty, g.tensor_data(t), &mut v).unwrap();
            (t.ty, v)
        };
        let (ty, merged) = read("w", n_in * n_out);
        assert_eq!(ty, GgmlType::Q8_0);
        let scale = alpha / r as f32;
        for o in 0..n_out {
            for i in 0..n_in {
                let want = w[o * n_in + i]
                    + scale * (0..r).map(|k| b[o * r + k] * a[k * n_in + i]).sum::<f32>();
                let got = merged[o * n_in + i];
                // Q8_0: half a step of a 32-block's scale (max |x| / 127).
                assert!((got - want).abs() < 0.02, "w[{o}][{i}] {got} vs {want}");
            }
        }
        // Not adapted: only requantized; 1-D: unchanged.
        let (_, o2) = read("other", n_in * 2);
        assert!(o2.iter().zip(&other).all(|(x, y)| (x - y).abs() < 0.01));
        assert_eq!(read("norm", n_in), (GgmlType::F32, norm.clone()));

        // Adapters that do not fit are refused, naming the problem.
        let bad = |meta: Vec<(String, MetaValue)>,
                   tensors: &[(String, Vec<u64>, GgmlType, &[u8])]| {
            let p = dir.join("bad.gguf");
            write_gguf(&p, &meta, tensors).unwrap();
            let e = quantize_file_with(&base, &out, GgmlType::Q4_0, Some(&p), |_, _, _| {})
                .unwrap_err();
            format!("{e:#}")
        };
        let ab = f32_bytes(&a);
        let bb = f32_bytes(&b);
        let e = bad(
            adapter_meta(alpha),
            &[
                (
                    "missing.lora_a".into(),
                    vec![n_in as u64, r as u64],
                    GgmlType::F32,
                    &ab,
                ),
                (
                    "missing.lora_b".into(),
                    vec![r as u64, n_out as u64],
                    GgmlType::F32,
                    &bb,
                ),
            ],
        );
        assert!(e.contains("base model does not have"), "{e}");
        let e = bad(
            adapter_meta(alpha),
            &[
                (
                    "w.lora_a".into(),
                    vec![n_in as u64, r as u64],
                    GgmlType::F32,
                    &ab,
                ),
                (
                    "w.lora_b".into(),
                    vec![r as u64, 2],
                    GgmlType::F32,
                    &bb[..2 * r * 4],
                ),
            ],
        );
        assert!(e.contains("base is"), "{e}");
        let e = bad(
            adapter_meta(alpha),
            &[(
                "w.lora_a".into(),
                vec![n_in as u64, r as u64],
                GgmlType::F32,
                &ab,
            )],
        );
        assert!(e.contains("w.lora_b missing"), "{e}");
        let e = bad(base_meta.clone(), &[]);
        assert!(e.contains("not a LoRA adapter"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
