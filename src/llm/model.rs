//! The transformer: llama and qwen2 architectures as GGUF describes them — token embedding
//! (tied output when `output.weight` is absent), RMSNorm, RoPE (normal or NeoX pairing),
//! grouped-query attention over a KV cache, SwiGLU FFN; qwen2 adds Q/K/V biases.
//!
//! Every hyper-parameter comes from the file's metadata. Weights stay in the memory map
//! (zero-copy) and only the small norm vectors and biases are copied to f32 at load — except
//! that where the kernel path has a GEMM kernel for a matrix's type (Q4_0 on every SIMD path
//! today), the matrix is also repacked once at load into eight-row tiles
//! ([`quants::q4_0x8`]; same bits, faster matmuls; the mapped pages of a packed matrix
//! are then released, so RAM holds one copy; see `Model::repack`, `EXPLLM_REPACK=0` turns it
//! off). The KV cache
//! is f16 (as llama.cpp's default) and grows with the context actually used, up to the limit
//! given to [`Model::new_state`]. Numerics follow ggml's CPU path: activations are quantized
//! to the weight type's dot-product type (Q8_0 / Q8_1 / Q8_K) once per matmul input, RMSNorm
//! sums squares in f64, Q and the softmax weights are rounded to f16 before meeting the f16
//! cache. Must not tokenize or sample (see `tokenizer`, `generate`).

use crate::kernels::act;
use crate::kernels::kv::{self, KvOps};
use crate::kernels::pool;
use crate::kernels::quants::{self, Epilogue, PackArena, PackedMatrix, QuantizedActs};
use crate::kernels::GgmlType;
use crate::llm::gguf::{GgufFile, TensorInfo};
use anyhow::{bail, ensure, Context, Result};
use half::f16;
use half::slice::HalfFloatSliceExt;
use std::ops::Range;
use std::path::Path;

/// Architectures we run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
}

/// Hyper-parameters, all read from GGUF metadata.
#[derive(Debug, Clone)]
pub struct Config {
    pub arch: Arch,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub rope_base: f32,
    pub rope_dims: usize,
    /// NeoX pairing (i, i + d/2) instead of adjacent pairs (2i, 2i + 1).
    pub rope_neox: bool,
    pub rms_eps: f32,
}

/// A weight matrix in the map: `rows` × `cols`, rows contiguous, `cols` = GGUF `ne0`.
#[derive(Debug, Clone, Copy)]
pub struct Weight {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    offset: usize,
    len: usize,
    /// Index into [`Model`]'s packed copies, when the active kernel path has a GEMM kernel
    /// for this type ([`PackedMatrix`]); the mapped bytes stay the reference.
    packed: Option<usize>,
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Weight,
    wk: Weight,
    wv: Weight,
    wo: Weight,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    w_gate: Weight,
    w_up: Weight,
    w_down: Weight,
}

/// A loaded model: the mapped file plus typed views into it.
pub struct Model {
    file: GgufFile,
    pub cfg: Config,
    tok_embd: Weight,
    output: Weight,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    /// Weights repacked at load for the active path's GEMM kernels (see [`Weight::packed`]).
    packed: Vec<PackedMatrix>,
}

/// Per-sequence state: the KV cache and every scratch buffer a forward pass needs, so a token
/// step allocates nothing (the cache grows in chunks of [`KV_CHUNK`] positions).
pub struct State {
    /// Per layer: keys and values, `[pos][n_head_kv * head_dim]`, f16.
    k: Vec<Vec<f16>>,
    v: Vec<Vec<f16>>,
    n_past: usize,
    max_ctx: usize,
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    /// One token's next-layer queries, computed in the job that still reads `q` (then
    /// swapped with it).
    q2: Vec<f32>,
    /// Attention scratch, one per part of the attention job: KV head `h` (its group of
    /// query heads) of the tokens `c·ATT_TOKENS..(c+1)·ATT_TOKENS` of a batch at index
    /// `c·n_head_kv + h` (the parts run on the compute threads in parallel). One token in
    /// the fused decode job: the first ones, one per slice of the query heads (a thread's).
    heads: Vec<HeadScratch>,
    kk: Vec<f32>,
    vv: Vec<f32>,
    att_out: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    ffn_out: Vec<f32>,
    proj: Vec<f32>,
    logits: Vec<f32>,
    /// One quantized activation row per token of a batch.
    acts: Vec<QuantizedActs>,
    /// The FFN's down-projection input, quantized by the gate/up matmul's SwiGLU epilogue.
    ffn_acts: Vec<QuantizedActs>,
    /// One token's normed and quantized input per compute thread, each made by that thread
    /// in the matmul job that reads it ([`Model::matmul_normed`]).
    part_acts: Vec<QuantizedActs>,
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
}

/// Tokens of a batch per part of the attention job (with the KV heads: `n_head_kv · ⌈nb / 4⌉`
/// parts, one hand-out per layer, small enough to balance over the threads).
const ATT_TOKENS: usize = 4;

/// With the `pool-stats` feature: the wall time of each phase of a forward pass's layers,
/// summed over every layer and token since the last [`take`](phases::take); `expllm bench
/// --stage llm` prints it per decode run, beside the pool's own figures. Diagnostics for
/// where a decode step goes (the attention job, the serial steps between matmuls).
#[cfg(feature = "pool-stats")]
pub mod phases {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::time::Instant;

    /// The phases in layer order; each runs from the end of the one before. (One token on
    /// packed matrices: the attention, `wo`, the FFN and the next layer's Q/K/V and cache
    /// row are one job, counted as `ffn`; `norm+qkv` and `rope+kv-cache` are then layer 0's
    /// alone, `attention`, `copy+wo` and `ffn-norm` empty.)
    pub const NAMES: [&str; 6] = [
        "norm+qkv",
        "rope+kv-cache",
        "attention",
        "copy+wo",
        "ffn-norm",
        "ffn",
    ];
    static SUMS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

    /// Add the time since `since` to phase `i`; the time now, where the next phase starts.
    pub(super) fn lap(i: usize, since: Instant) -> Instant {
        let now = Instant::now();
        SUMS[i].fetch_add((now - since).as_nanos() as u64, Relaxed);
        now
    }

    /// The sums since the last call, in µs per token over `tokens` tokens, as one line; and
    /// start over.
    pub fn take(tokens: usize) -> String {
        let per = |ns: u64| ns as f64 / 1e3 / tokens.max(1) as f64;
        let parts: Vec<String> = NAMES
            .iter()
            .zip(&SUMS)
            .map(|(n, s)| format!("{n} {:.0}", per(s.swap(0, Relaxed))))
            .collect();
        format!("µs per token: {}", parts.join(", "))
    }
}

/// [`phases::lap`] of phase `$i` on the timer `$clock` with the `pool-stats` feature; nothing
/// without it.
macro_rules! lap {
    ($clock:ident, $i:expr) => {
        #[cfg(feature = "pool-stats")]
        {
            $clock = phases::lap($i, $clock);
        }
    };
}

/// One KV head's attention scratch for up to [`ATT_TOKENS`] tokens: its query heads' rows
/// rounded through f16, their scores over the context (head by head), their outputs per
/// token (heads side by side, as in the attention output). In the fused decode job, one
/// slice's: its query heads' run under each KV head in turn, in the same buffers.
struct HeadScratch {
    qh: Vec<f32>,
    scores: Vec<f32>,
    out: Vec<f32>,
}

/// A layer's KV cache `c` (rows of `len` values) cut before row `at`: the rows before it,
/// read-only, and row `at` itself; `None`s without a cache or if it is shorter.
fn split_row(
    c: Option<&mut Vec<f16>>,
    at: usize,
    len: usize,
) -> (Option<&[f16]>, Option<&mut [f16]>) {
    match c {
        Some(c) if c.len() >= (at + 1) * len => {
            let (past, row) = c.split_at_mut(at * len);
            (Some(&*past), Some(&mut row[..len]))
        }
        _ => (None, None),
    }
}

/// Tokens per [`Model::forward_batch`] (prefill chunk); the state's buffers hold this many.
pub const MAX_BATCH: usize = 32;
// A batch's FFN input is quantized in the gate/up matmul's epilogue.
const _: () = assert!(MAX_BATCH <= quants::MAX_EPILOGUE_ROWS);

/// Most KV heads whose attention parts quantize their outputs straight into `wo`'s input
/// (one token; the parts' items live on the stack). More: gathered and quantized after.
const MAX_KV_HEADS_FUSED: usize = 16;

/// KV cache growth step (positions).
pub const KV_CHUNK: usize = 256;

impl State {
    /// Tokens in the cache.
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    /// Forget the sequence (keeps the buffers).
    pub fn reset(&mut self) {
        self.n_past = 0;
    }

    /// Keep only the first `n` positions (a shared prompt prefix); the next token goes at `n`.
    /// Positions past `n` are overwritten as the sequence grows again.
    pub fn truncate(&mut self, n: usize) {
        self.n_past = self.n_past.min(n);
    }

    /// Bytes held by the KV cache right now.
    pub fn kv_bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|c| c.capacity() * 2).sum()
    }

    pub fn max_ctx(&self) -> usize {
        self.max_ctx
    }

    /// Logits of the last forward pass that asked for them.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }
}

fn f32_vec(file: &GgufFile, t: &TensorInfo, n: usize) -> Result<Vec<f32>> {
    ensure!(
        t.n_elements == n as u64,
        "tensor {} has {} elements, expected {n}",
        t.name,
        t.n_elements
    );
    let mut out = vec![0.0; n];
    quants::dequantize_row(t.ty, file.tensor_data(t), &mut out)
        .map_err(|e| anyhow::anyhow!("tensor {}: {e}", t.name))?;
    Ok(out)
}

impl Model {
    /// Map a GGUF file and check that it holds a complete llama or qwen2 model.
    pub fn load(path: &Path) -> Result<Model> {
        let file = GgufFile::open(path)?;
        Self::from_gguf(file).with_context(|| format!("cannot load model {}", path.display()))
    }

    pub fn from_gguf(file: GgufFile) -> Result<Model> {
        let arch_name = file
            .get_str("general.architecture")?
            .context("missing general.architecture")?
            .to_string();
        let arch = match arch_name.as_str() {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => bail!("architecture {other:?} is not supported (supported: llama, qwen2)"),
        };
        let a = arch_name.as_str();
        let req = |k: &str| -> Result<usize> {
            Ok(file
                .get_u32(&format!("{a}.{k}"))?
                .with_context(|| format!("missing metadata {a}.{k}"))? as usize)
        };
        let n_embd = req("embedding_length")?;
        let n_head = req("attention.head_count")?;
        let n_head_kv = file
            .get_u32(&format!("{a}.attention.head_count_kv"))?
            .map_or(n_head, |v| v as usize);
        ensure!(
            n_head > 0 && n_head_kv > 0 && n_head % n_head_kv == 0,
            "bad head counts {n_head}/{n_head_kv}"
        );
        ensure!(
            n_embd % n_head == 0,
            "embedding length {n_embd} is not a multiple of {n_head} heads"
        );
        let head_dim = file
            .get_u32(&format!("{a}.attention.key_length"))?
            .map_or(n_embd / n_head, |v| v as usize);
        let rope_dims = file
            .get_u32(&format!("{a}.rope.dimension_count"))?
            .map_or(head_dim, |v| v as usize);
        ensure!(
            rope_dims <= head_dim && rope_dims % 2 == 0,
            "bad rope.dimension_count {rope_dims}"
        );
        let tok = file
            .tensor("token_embd.weight")
            .context("missing tensor token_embd.weight")?;
        let n_vocab = tok.dims.get(1).copied().unwrap_or(0) as usize;
        let cfg = Config {
            arch,
            n_layer: req("block_count")?,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: req("feed_forward_length")?,
            n_vocab,
            n_ctx_train: req("context_length")?,
            rope_base: file
                .get_f32(&format!("{a}.rope.freq_base"))?
                .unwrap_or(10000.0),
            rope_dims,
            rope_neox: arch == Arch::Qwen2,
            rms_eps: file
                .get_f32(&format!("{a}.attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
        };
        ensure!(
            cfg.n_layer > 0 && cfg.n_layer <= 1024,
            "bad block_count {}",
            cfg.n_layer
        );
        ensure!(
            head_dim == n_embd / n_head,
            "attention.key_length {head_dim} != n_embd / n_head is not supported"
        );
        let weight = |name: &str, rows: usize, cols: usize| -> Result<Weight> {
            let t = file
                .tensor(name)
                .with_context(|| format!("missing tensor {name}"))?;
            ensure!(
                t.dims.len() == 2 && t.dims[0] == cols as u64 && t.dims[1] == rows as u64,
                "tensor {name} has shape {:?}, expected [{cols}, {rows}]",
                t.dims
            );
            Ok(Weight {
                ty: t.ty,
                rows,
                cols,
                offset: t.offset,
                len: t.n_bytes,
                packed: None,
            })
        };
        let vec = |name: &str, n: usize| -> Result<Vec<f32>> {
            let t = file
                .tensor(name)
                .with_context(|| format!("missing tensor {name}"))?;
            f32_vec(&file, t, n)
        };
        let opt_vec = |name: &str, n: usize| -> Result<Option<Vec<f32>>> {
            file.tensor(name).map(|t| f32_vec(&file, t, n)).transpose()
        };
        let kv_dim = n_head_kv * head_dim;
        let tok_embd = weight("token_embd.weight", n_vocab, n_embd)?;
        let output = if file.tensor("output.weight").is_some() {
            weight("output.weight", n_vocab, n_embd)?
        } else {
            tok_embd
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = |s: &str| format!("blk.{i}.{s}");
            layers.push(Layer {
                attn_norm: vec(&p("attn_norm.weight"), n_embd)?,
                wq: weight(&p("attn_q.weight"), n_head * head_dim, n_embd)?,
                wk: weight(&p("attn_k.weight"), kv_dim, n_embd)?,
                wv: weight(&p("attn_v.weight"), kv_dim, n_embd)?,
                wo: weight(&p("attn_output.weight"), n_embd, n_head * head_dim)?,
                bq: opt_vec(&p("attn_q.bias"), n_head * head_dim)?,
                bk: opt_vec(&p("attn_k.bias"), kv_dim)?,
                bv: opt_vec(&p("attn_v.bias"), kv_dim)?,
                ffn_norm: vec(&p("ffn_norm.weight"), n_embd)?,
                w_gate: weight(&p("ffn_gate.weight"), cfg.n_ff, n_embd)?,
                w_up: weight(&p("ffn_up.weight"), cfg.n_ff, n_embd)?,
                w_down: weight(&p("ffn_down.weight"), n_embd, cfg.n_ff)?,
            });
        }
        let output_norm = vec("output_norm.weight", n_embd)?;
        let mut model = Model {
            file,
            cfg,
            tok_embd,
            output,
            output_norm,
            layers,
            packed: Vec::new(),
        };
        model.repack()?;
        Ok(model)
    }

    /// Repack every matrix a forward pass multiplies by for the active kernel path's GEMM
    /// kernels, where it has them (Q4_0 on every SIMD path → [`quants::q4_0x8`],
    /// `PackedMatrix::has_kernel`), unless `EXPLLM_REPACK=0` (for A/B benchmarks). A one-time
    /// copy at load, as many bytes as the original, into one huge-page arena
    /// ([`PackArena`]); the token embedding is not packed (one row is read per token) — a
    /// tied output matrix gets its own packed copy.
    fn repack(&mut self) -> Result<()> {
        if std::env::var("EXPLLM_REPACK").is_ok_and(|v| v == "0") {
            return Ok(());
        }
        let path = crate::kernels::active();
        // One huge-page arena for every packed matrix (`quants::PackArena`), sized first.
        let tied = self.output.offset == self.tok_embd.offset;
        let mut all: Vec<(&mut Weight, bool)> = Vec::new();
        for l in &mut self.layers {
            for w in [
                &mut l.wq,
                &mut l.wk,
                &mut l.wv,
                &mut l.wo,
                &mut l.w_gate,
                &mut l.w_up,
                &mut l.w_down,
            ] {
                all.push((w, true));
            }
        }
        all.push((&mut self.output, !tied));
        let packs: Vec<(usize, usize)> = all
            .iter()
            .filter(|(w, _)| PackedMatrix::tiles_for(path, w.ty, w.rows, w.cols).is_some())
            .map(|(w, _)| (w.rows, w.cols))
            .collect();
        // Laid out by thread share: each compute thread streams its own region per token.
        let mut arena = PackArena::new(&packs, pool::threads())
            .context("mapping memory for the packed weights")?;
        // Each packed matrix's mapped pages are not read again: they are dropped from RSS
        // right after packing, so the process holds one copy of those weights (and the peak
        // is the file plus one matrix). A tied output matrix is the token embedding, whose
        // rows are still read: its pages stay.
        for (w, release) in all {
            let data = &self.file.bytes()[w.offset..w.offset + w.len];
            if let Some(i) = arena
                .pack(path, w.ty, data, w.rows, w.cols)
                .map_err(|e| anyhow::anyhow!("{e}"))?
            {
                w.packed = Some(i);
                if release {
                    self.file.release_range(w.offset, w.len);
                }
            }
        }
        self.packed = arena.finish();
        Ok(())
    }

    pub fn gguf(&self) -> &GgufFile {
        &self.file
    }

    /// A weight's packed copy, if the active kernel path packed it.
    pub fn packed(&self, w: &Weight) -> Option<&PackedMatrix> {
        w.packed.map(|i| &self.packed[i])
    }

    /// The bytes of a weight (a view into the mapped file).
    pub fn data(&self, w: &Weight) -> &[u8] {
        &self.file.bytes()[w.offset..w.offset + w.len]
    }

    /// Every matrix a decode step multiplies by, with a short role name (`blk.N.ffn_up`,
    /// `output`): the weights streamed from memory once per generated token. The token
    /// embedding is not in it (one row is read per token).
    pub fn matrices(&self) -> Vec<(String, &Weight)> {
        let mut m = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for (name, w) in [
                ("attn_q", &l.wq),
                ("attn_k", &l.wk),
                ("attn_v", &l.wv),
                ("attn_output", &l.wo),
                ("ffn_gate", &l.w_gate),
                ("ffn_up", &l.w_up),
                ("ffn_down", &l.w_down),
            ] {
                m.push((format!("blk.{i}.{name}"), w));
            }
        }
        m.push(("output".to_string(), &self.output));
        m
    }

    /// A fresh sequence state whose KV cache may grow to `max_ctx` positions (capped at the
    /// model's training context).
    pub fn new_state(&self, max_ctx: usize) -> State {
        let c = &self.cfg;
        let max_ctx = max_ctx.clamp(1, c.n_ctx_train.max(1));
        let half = c.rope_dims / 2;
        State {
            k: (0..c.n_layer).map(|_| Vec::new()).collect(),
            v: (0..c.n_layer).map(|_| Vec::new()).collect(),
            n_past: 0,
            max_ctx,
            x: vec![0.0; MAX_BATCH * c.n_embd],
            xn: vec![0.0; MAX_BATCH * c.n_embd],
            q: vec![0.0; MAX_BATCH * c.n_head * c.head_dim],
            q2: vec![0.0; MAX_BATCH * c.n_head * c.head_dim],
            heads: (0..c.n_head_kv * MAX_BATCH.div_ceil(ATT_TOKENS))
                .map(|_| {
                    let gd = c.n_head / c.n_head_kv * c.head_dim;
                    HeadScratch {
                        qh: vec![0.0; gd],
                        scores: vec![0.0; c.n_head / c.n_head_kv * max_ctx],
                        out: vec![0.0; ATT_TOKENS * gd],
                    }
                })
                .collect(),
            kk: vec![0.0; MAX_BATCH * c.n_head_kv * c.head_dim],
            vv: vec![0.0; MAX_BATCH * c.n_head_kv * c.head_dim],
            att_out: vec![0.0; MAX_BATCH * c.n_head * c.head_dim],
            gate: vec![0.0; MAX_BATCH * c.n_ff],
            up: vec![0.0; MAX_BATCH * c.n_ff],
            ffn_out: vec![0.0; MAX_BATCH * c.n_ff],
            proj: vec![0.0; MAX_BATCH * c.n_embd],
            logits: vec![0.0; c.n_vocab],
            acts: (0..MAX_BATCH).map(|_| QuantizedActs::new()).collect(),
            ffn_acts: (0..MAX_BATCH).map(|_| QuantizedActs::new()).collect(),
            part_acts: (0..pool::threads()).map(|_| QuantizedActs::new()).collect(),
            rope_cos: vec![0.0; MAX_BATCH * half],
            rope_sin: vec![0.0; MAX_BATCH * half],
        }
    }

    /// `out[b] = W · x[b]` for the rows `x` (each `w.cols` long): quantize each row for `W`'s
    /// type into `acts`, then one matmul that loads every weight row once for all of them.
    /// `fresh`: `acts` already hold `x` quantized for `w.ty` (the previous matmul read the
    /// same input with the same weight type): skip quantizing it again.
    fn matmul(
        &self,
        w: &Weight,
        x: &[f32],
        acts: &mut [QuantizedActs],
        out: &mut [f32],
        fresh: bool,
    ) -> Result<()> {
        if !fresh {
            self.quantize(w, x, acts)?;
        }
        self.matmul_quantized(w, &acts[..x.len() / w.cols], out)
    }

    /// Quantize each row of `x` (`w.cols` long) for `w`'s type into `acts`, one row per part,
    /// spread over the compute threads (a batch's rows are independent; one row runs on this
    /// thread).
    fn quantize(&self, w: &Weight, x: &[f32], acts: &mut [QuantizedActs]) -> Result<()> {
        let nb = x.len() / w.cols;
        let err = std::sync::OnceLock::new();
        pool::for_each_mut(&mut acts[..nb], &|b, a| {
            if let Err(e) = a.quantize_for(w.ty, &x[b * w.cols..(b + 1) * w.cols]) {
                let _ = err.set(e);
            }
        });
        match err.into_inner() {
            Some(e) => bail!("{e}"),
            None => Ok(()),
        }
    }

    /// [`matmul`](Self::matmul) of several matrices with the same input `x`: quantized once
    /// per weight type, and where every matrix has a packed copy, one job for the compute
    /// threads ([`quants::matmul_packed_many`]). The same bits as one call per matrix.
    fn matmul_many<const N: usize>(
        &self,
        x: &[f32],
        acts: &mut [QuantizedActs],
        jobs: [(&Weight, &mut [f32]); N],
    ) -> Result<()> {
        let Some(first) = jobs.first().map(|j| *j.0) else {
            return Ok(());
        };
        if N <= quants::MAX_PACKED_JOBS && jobs.iter().all(|(w, _)| w.packed.is_some()) {
            self.quantize(&first, x, acts)?;
            // (Every `packed` is `Some`: checked just above.)
            let mut packed = jobs.map(|(w, o)| (&self.packed[w.packed.unwrap_or(0)], o));
            let nb = x.len() / first.cols;
            return quants::matmul_packed_many(&mut packed, &acts[..nb])
                .map_err(|e| anyhow::anyhow!("{e}"));
        }
        let mut prev = None;
        for (w, out) in jobs {
            self.matmul(w, x, acts, out, prev == Some(w.ty))?;
            prev = Some(w.ty);
        }
        Ok(())
    }

    /// `jobs[m].1 = W_m · rms_norm(x, norm)` for one token's row `x`, with `epilogue`, where
    /// every matrix is packed: one job whose every part norms and quantizes `x` itself into
    /// its own `part_acts` (the same bits on every thread) before its rows, so no thread
    /// waits for another to make the input. `None` (nothing run) where a matrix is not
    /// packed: the caller takes the general path.
    fn matmul_normed(
        &self,
        x: &[f32],
        norm: &[f32],
        part_acts: &mut [QuantizedActs],
        jobs: &mut [(&Weight, &mut [f32])],
        epilogue: Epilogue<'_>,
    ) -> Option<Result<()>> {
        let (n, ty) = (jobs.len(), jobs.first()?.0.ty);
        if n > quants::MAX_PACKED_JOBS || jobs.iter().any(|(w, _)| w.packed.is_none()) {
            return None;
        }
        let mut packed: [(&PackedMatrix, &mut [f32]); quants::MAX_PACKED_JOBS] =
            std::array::from_fn(|_| (&self.packed[0], &mut [][..]));
        for ((w, o), p) in jobs.iter_mut().zip(&mut packed) {
            // (Every `packed` is `Some`: checked above.)
            *p = (&self.packed[w.packed.unwrap_or(0)], &mut **o);
        }
        let eps = self.cfg.rms_eps;
        let fill = |a: &mut QuantizedActs| {
            a.quantize_made_for(ty, x.len(), |row| rms_norm(x, norm, eps, row))
        };
        Some(
            quants::matmul_packed_each(&mut packed[..n], part_acts, &fill, epilogue)
                .map_err(|e| anyhow::anyhow!("{e}")),
        )
    }

    /// `resid[b] += W · x[b]` (a residual connection): on a packed matrix added in the
    /// matmul's epilogue by the thread that computed the rows, else through `proj` (scratch
    /// as long as `resid`). The same bits either way.
    fn matmul_add(
        &self,
        w: &Weight,
        x: &[f32],
        acts: &mut [QuantizedActs],
        resid: &mut [f32],
        proj: &mut [f32],
    ) -> Result<()> {
        let Some(i) = w.packed else {
            self.matmul(w, x, acts, proj, false)?;
            resid.iter_mut().zip(&*proj).for_each(|(r, p)| *r += p);
            return Ok(());
        };
        self.quantize(w, x, acts)?;
        let nb = x.len() / w.cols;
        quants::matmul_packed_then(
            &mut [(&self.packed[i], resid)],
            &acts[..nb],
            Epilogue::Accumulate,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// `out[b·rows + r] = W[r] · acts[b]` with activations already quantized for `w.ty`: the
    /// packed copy where there is one, else the mapped bytes (the kernels a forward pass
    /// runs; `bench` times them per shape).
    pub fn matmul_quantized(
        &self,
        w: &Weight,
        acts: &[QuantizedActs],
        out: &mut [f32],
    ) -> Result<()> {
        match w.packed {
            Some(i) => quants::matmul_packed(&self.packed[i], acts, out),
            None => quants::matmul(w.ty, self.data(w), w.rows, w.cols, acts, out),
        }
        .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Run one token at the next position. Returns the logits when `want_logits` (the output
    /// projection is the most expensive matmul; prefill skips it for all but the last token).
    pub fn forward<'s>(
        &self,
        st: &'s mut State,
        token: u32,
        want_logits: bool,
    ) -> Result<Option<&'s [f32]>> {
        self.forward_batch(st, &[token], want_logits)
    }

    /// Run up to [`MAX_BATCH`] tokens at the next positions in one pass (prefill): every
    /// weight row is loaded once for all of them (`quants::matmul`). Causal attention, so the
    /// result is **bit-identical** to calling [`forward`](Self::forward) token by token (same
    /// kernels per row, same per-token attention). Returns the last token's logits when
    /// `want_logits`. Longer prompts: call it per chunk ([`prefill`](Self::prefill)).
    pub fn forward_batch<'s>(
        &self,
        st: &'s mut State,
        tokens: &[u32],
        want_logits: bool,
    ) -> Result<Option<&'s [f32]>> {
        let c = &self.cfg;
        let nb = tokens.len();
        ensure!(nb > 0, "empty batch");
        ensure!(nb <= MAX_BATCH, "batch of {nb} tokens > {MAX_BATCH}");
        for &token in tokens {
            ensure!(
                (token as usize) < c.n_vocab,
                "token id {token} is outside the vocabulary ({})",
                c.n_vocab
            );
        }
        ensure!(
            st.n_past + nb <= st.max_ctx,
            "context full: {} tokens (raise the context limit)",
            st.max_ctx
        );
        let (d, dq, kv_dim) = (c.n_embd, c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
        let half = c.rope_dims / 2;
        for (b, &token) in tokens.iter().enumerate() {
            quants::get_row(
                self.tok_embd.ty,
                self.data(&self.tok_embd),
                d,
                token as usize,
                &mut st.x[b * d..(b + 1) * d],
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            // RoPE angles for this position, as ggml computes them (theta *= base^(-2/d)).
            let theta_scale = c.rope_base.powf(-2.0 / c.rope_dims as f32);
            let mut theta = (st.n_past + b) as f32;
            for i in 0..half {
                st.rope_cos[b * half + i] = theta.cos();
                st.rope_sin[b * half + i] = theta.sin();
                theta *= theta_scale;
            }
        }

        // grow the KV cache in chunks
        let last = st.n_past + nb - 1;
        if st.k[0].len() < (last + 1) * kv_dim {
            let new_len = ((last + 1).div_ceil(KV_CHUNK) * KV_CHUNK).min(st.max_ctx) * kv_dim;
            for l in 0..c.n_layer {
                st.k[l].resize(new_len, f16::ZERO);
                st.v[l].resize(new_len, f16::ZERO);
            }
        }

        if st.part_acts.len() < pool::threads() {
            // A row per compute thread; grows only if the thread count grew after the state
            // was made.
            st.part_acts
                .resize_with(pool::threads(), QuantizedActs::new);
        }
        let group = c.n_head / c.n_head_kv;
        let scale = 1.0 / (c.head_dim as f32).sqrt();
        // One token: this layer's Q, K and V (and, with `kv_ready`, its KV cache row) were
        // computed by the layer before's last job; the logits by the last layer's.
        let (mut qkv_ready, mut kv_ready, mut logits_ready) = (false, false, false);
        for (li, l) in self.layers.iter().enumerate() {
            #[cfg(feature = "pool-stats")]
            let mut clock = std::time::Instant::now();
            // (One token: the layer before computed this layer's Q, K and V already.)
            let normed = if std::mem::take(&mut qkv_ready) {
                Some(Ok(()))
            } else if nb == 1 {
                self.matmul_normed(
                    &st.x[..d],
                    &l.attn_norm,
                    &mut st.part_acts,
                    &mut [
                        (&l.wq, &mut st.q[..dq]),
                        (&l.wk, &mut st.kk[..kv_dim]),
                        (&l.wv, &mut st.vv[..kv_dim]),
                    ],
                    Epilogue::Store,
                )
            } else {
                None
            };
            match normed {
                Some(r) => r?,
                None => {
                    rms_norm_rows(
                        &st.x[..nb * d],
                        &l.attn_norm,
                        c.rms_eps,
                        &mut st.xn[..nb * d],
                    );
                    self.matmul_many(
                        &st.xn[..nb * d],
                        &mut st.acts,
                        [
                            (&l.wq, &mut st.q[..nb * dq]),
                            (&l.wk, &mut st.kk[..nb * kv_dim]),
                            (&l.wv, &mut st.vv[..nb * kv_dim]),
                        ],
                    )?;
                }
            }
            lap!(clock, 0);
            for (bias, t, n) in [
                (&l.bq, &mut st.q, dq),
                (&l.bk, &mut st.kk, kv_dim),
                (&l.bv, &mut st.vv, kv_dim),
            ] {
                if let Some(bias) = bias {
                    for row in t[..nb * n].chunks_exact_mut(n) {
                        row.iter_mut().zip(bias).for_each(|(x, b)| *x += b);
                    }
                }
            }
            // RoPE on each token's k, then k and v into the f16 cache at the token's position:
            // the batch's tokens spread over the compute threads. (q's RoPE runs in the
            // attention job below, on each head's own copy.)
            if !std::mem::take(&mut kv_ready) {
                let (cos, sin) = (&st.rope_cos, &st.rope_sin);
                pool::for_each_chunk_mut(&mut st.kk[..nb * kv_dim], kv_dim, &|b, k| {
                    let (cos, sin) = (&cos[b * half..][..half], &sin[b * half..][..half]);
                    for h in k.chunks_exact_mut(c.head_dim) {
                        rope(h, cos, sin, c.rope_neox);
                    }
                });
                let (kk, vv) = (&st.kk, &st.vv);
                let cached = st.n_past * kv_dim..(st.n_past + nb) * kv_dim;
                pool::for_each_chunk_mut2(
                    &mut st.k[li][cached.clone()],
                    kv_dim,
                    &mut st.v[li][cached],
                    kv_dim,
                    &|b, kc, vc| {
                        kc.convert_from_f32_slice(&kk[b * kv_dim..(b + 1) * kv_dim]);
                        vc.convert_from_f32_slice(&vv[b * kv_dim..(b + 1) * kv_dim]);
                    },
                );
            }

            lap!(clock, 1);
            // attention per token and head over positions 0..=pos (causal): one job per
            // layer, a part per KV head (its group of query heads, which share each cached
            // key and value row's load in the grouped kernels) and group of ATT_TOKENS
            // tokens, each with its own scratch
            // (This layer's cache read-only; the next layer's, whose row at this position the
            // last job of this layer may write, apart.)
            let (k_here, k_next) = st.k.split_at_mut(li + 1);
            let (v_here, v_next) = st.v.split_at_mut(li + 1);
            let (kc, vc) = (&k_here[li], &v_here[li]);
            let kv = KvOps::for_path(crate::kernels::active());
            let (n_kv, hd, n_past, neox) = (c.n_head_kv, c.head_dim, st.n_past, c.rope_neox);
            let gd = group * hd;
            let (cos, sin) = (&st.rope_cos, &st.rope_sin);
            let parts = n_kv * nb.div_ceil(ATT_TOKENS);
            let q_all = &st.q;
            // Query heads `h0..h1` of one KV head (`kvh`) for token `b` of the batch, their
            // outputs into `out` (heads side by side), with the scratch's `qh` and `scores`.
            let heads = |b: usize,
                         kvh: usize,
                         h0: usize,
                         h1: usize,
                         qh: &mut [f32],
                         scores: &mut [f32],
                         out: &mut [f32]| {
                let n = n_past + b + 1;
                let (qh, out) = (&mut qh[..(h1 - h0) * hd], &mut out[..(h1 - h0) * hd]);
                // the heads' q with RoPE at the token's position, then rounded to f16 as it
                // meets the f16 keys, as in ggml.
                qh.copy_from_slice(&q_all[b * dq + h0 * hd..][..(h1 - h0) * hd]);
                for qh in qh.chunks_exact_mut(hd) {
                    rope(qh, &cos[b * half..][..half], &sin[b * half..][..half], neox);
                }
                (kv.round_f16)(qh);
                let scores = &mut scores[..(h1 - h0) * n];
                (kv.scores_group)(qh, hd, &kc[kvh * hd..], kv_dim, scale, scores);
                // The weights rounded to f16, as ggml's f16 V product does.
                for s in scores.chunks_exact_mut(n) {
                    (kv.softmax_f16)(s);
                }
                out.fill(0.0);
                (kv.weighted_sum_group)(out, hd, scores, &vc[kvh * hd..], kv_dim);
            };
            let attend = |i: usize, hs: &mut HeadScratch| {
                let (t, kvh) = (i / n_kv, i % n_kv);
                for (k, b) in (t * ATT_TOKENS..nb.min((t + 1) * ATT_TOKENS)).enumerate() {
                    let out = &mut hs.out[k * gd..(k + 1) * gd];
                    heads(
                        b,
                        kvh,
                        kvh * group,
                        (kvh + 1) * group,
                        &mut hs.qh,
                        &mut hs.scores,
                        out,
                    );
                }
            };
            // One token into a packed `wo` (Q8_0 input): each part quantizes its heads'
            // outputs (whole blocks) straight into `wo`'s input, which is then ready when the
            // job ends. Else the outputs are gathered and quantized after it.
            let wo_packed =
                l.wo.packed
                    .filter(|_| nb == 1 && gd.is_multiple_of(32) && n_kv <= MAX_KV_HEADS_FUSED);
            if let Some(wo) = wo_packed {
                if let (Some(g), Some(u), Some(dn), true) = (
                    l.w_gate.packed,
                    l.w_up.packed,
                    l.w_down.packed,
                    hd.is_multiple_of(32),
                ) {
                    // The attention, wo, the whole FFN and the next layer's Q/K/V (or the
                    // output matrix) as one job of stages. The attention in as many slices of
                    // the query heads as there are threads (each a scratch of its own).
                    let slices = pool::threads().clamp(1, c.n_head.min(st.heads.len()));
                    let (eps, ty) = (c.rms_eps, l.w_gate.ty);
                    let fill = |x: &[f32], a: &mut QuantizedActs| {
                        a.quantize_made_for(ty, d, |row| rms_norm(x, &l.ffn_norm, eps, row))
                    };
                    // The next layer's Q, K and V where they are packed and have no biases,
                    // their RoPE'd keys and values into the cache (llama's RoPE).
                    let next = self.layers.get(li + 1);
                    let next_qkv = next
                        .filter(|n| n.bq.is_none() && n.bk.is_none() && n.bv.is_none())
                        .and_then(|n| Some((n.wq.packed?, n.wk.packed?, n.wv.packed?)));
                    let next_norm = next.map_or(&self.output_norm, |n| &n.attn_norm);
                    let fill_next = |x: &[f32], a: &mut QuantizedActs| {
                        a.quantize_made_for(ty, d, |row| rms_norm(x, next_norm, eps, row))
                    };
                    // The next layer's cache: its rows before this token's (read by the
                    // warm-up below) and this token's (written in the stage).
                    let ((k_past, k_row), (v_past, v_row)) = (
                        split_row(k_next.first_mut(), n_past, kv_dim),
                        split_row(v_next.first_mut(), n_past, kv_dim),
                    );
                    // Each part asks for the next layer's cached keys and values of the query
                    // heads it will attend (its slices' KV heads) into L2, as the stage that
                    // computes that layer's Q/K/V starts: they arrive while it streams its
                    // weights, instead of as misses in the attention.
                    let threads = pool::threads().max(1);
                    let warm = |i: usize| {
                        let (Some(kp), Some(vp)) = (k_past, v_past) else {
                            return;
                        };
                        for (_, u) in quants::pre_slices(c.n_head, slices, i, threads) {
                            // The KV heads of query heads `u`.
                            let cols = u.start / group * hd..((u.end - 1) / group + 1) * hd;
                            kv::prefetch_rows_l2(kp, kv_dim, cols.clone(), 0..n_past);
                            kv::prefetch_rows_l2(vp, kv_dim, cols, 0..n_past);
                        }
                    };
                    let then = match (next_qkv, k_row, v_row) {
                        (Some((q, k, v)), Some(kn), Some(vn)) => Some(quants::ThenStage {
                            mats: [
                                Some((&self.packed[q], &mut st.q2[..dq])),
                                Some((&self.packed[k], &mut st.kk[..kv_dim])),
                                Some((&self.packed[v], &mut st.vv[..kv_dim])),
                                None,
                            ],
                            fill: &fill_next,
                            warm: Some(&warm),
                            kv: (!neox).then(|| quants::KvRows {
                                k: 1,
                                v: 2,
                                k_row: kn,
                                v_row: vn,
                                head_dim: hd,
                                cos: &cos[..half],
                                sin: &sin[..half],
                            }),
                        }),
                        // The last layer: the logits, where the output matrix is packed.
                        _ if next.is_none() && want_logits && self.output.packed.is_some() => {
                            Some(quants::ThenStage {
                                mats: [
                                    Some((
                                        &self.packed[self.output.packed.unwrap_or(0)],
                                        &mut st.logits[..],
                                    )),
                                    None,
                                    None,
                                    None,
                                ],
                                fill: &fill_next,
                                warm: None,
                                kv: None,
                            })
                        }
                        _ => None,
                    };
                    let chained = then.as_ref().map(|t| (t.mats[1].is_some(), t.kv.is_some()));
                    // A slice of the query heads (one token), KV head by KV head, each run's
                    // outputs quantized into its blocks of `wo`'s input.
                    let attend_q8 =
                        |u: Range<usize>, hs: &mut HeadScratch, q: &mut quants::Q8Part| {
                            let mut h0 = u.start;
                            while h0 < u.end {
                                let kvh = h0 / group;
                                let h1 = u.end.min((kvh + 1) * group);
                                let out = &mut hs.out[..(h1 - h0) * hd];
                                heads(0, kvh, h0, h1, &mut hs.qh, &mut hs.scores, out);
                                let per = hd / 32;
                                q.sub((h0 - u.start) * per..(h1 - u.start) * per)
                                    .quantize(out);
                                h0 = h1;
                            }
                        };
                    quants::attn_out_ffn(
                        quants::AttnOutFfn {
                            wo: &self.packed[wo],
                            att: &mut st.acts[0],
                            x: &mut st.x[..d],
                            fill: &fill,
                            part_acts: &mut st.part_acts,
                            gate: &self.packed[g],
                            up: &self.packed[u],
                            down: &self.packed[dn],
                            gate_out: &mut st.gate[..c.n_ff],
                            up_out: &mut st.up[..c.n_ff],
                            h: &mut st.ffn_out[..c.n_ff],
                            next: &mut st.ffn_acts[0],
                            then,
                        },
                        Some(quants::PreStage {
                            items: &mut st.heads[..slices],
                            units: c.n_head,
                            unit_len: hd,
                            f: &attend_q8,
                        }),
                    )
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                    match chained {
                        Some((true, kv)) => {
                            std::mem::swap(&mut st.q, &mut st.q2);
                            (qkv_ready, kv_ready) = (true, kv);
                        }
                        Some((false, _)) => logits_ready = true,
                        None => {}
                    }
                    lap!(clock, 5);
                    continue;
                }
                let mut items: [(Option<&mut HeadScratch>, Option<quants::Q8Part>);
                    MAX_KV_HEADS_FUSED] = std::array::from_fn(|_| (None, None));
                let q8 = st.acts[0]
                    .q8_0_parts(dq, gd)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                for ((it, hs), q) in items.iter_mut().zip(&mut st.heads[..n_kv]).zip(q8) {
                    *it = (Some(hs), Some(q));
                }
                pool::for_each_mut(&mut items[..n_kv], &|i, it| {
                    if let (Some(hs), Some(q)) = it {
                        attend(i, hs);
                        q.quantize(&hs.out[..gd]);
                    }
                });
                lap!(clock, 2);
                quants::matmul_packed_then(
                    &mut [(&self.packed[wo], &mut st.x[..d])],
                    &st.acts[..1],
                    Epilogue::Accumulate,
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            } else {
                pool::for_each_mut(&mut st.heads[..parts], &attend);
                lap!(clock, 2);
                for (i, hs) in st.heads[..parts].iter().enumerate() {
                    let (t, kvh) = (i / n_kv, i % n_kv);
                    for (k, b) in (t * ATT_TOKENS..nb.min((t + 1) * ATT_TOKENS)).enumerate() {
                        st.att_out[b * dq + kvh * gd..][..gd]
                            .copy_from_slice(&hs.out[k * gd..][..gd]);
                    }
                }
                self.matmul_add(
                    &l.wo,
                    &st.att_out[..nb * dq],
                    &mut st.acts,
                    &mut st.x[..nb * d],
                    &mut st.proj[..nb * d],
                )?;
            }

            lap!(clock, 3);
            // SwiGLU FFN (its norm in the gate/up job for one token)
            if nb > 1 || !self.ffn_packed(l) {
                rms_norm_rows(
                    &st.x[..nb * d],
                    &l.ffn_norm,
                    c.rms_eps,
                    &mut st.xn[..nb * d],
                );
            }
            lap!(clock, 4);
            self.ffn(l, st, nb)?;
            lap!(clock, 5);
        }
        st.n_past += nb;
        if !want_logits {
            return Ok(None);
        }
        if logits_ready {
            return Ok(Some(&st.logits));
        }
        let lastx = &st.x[(nb - 1) * d..nb * d];
        let normed = self.matmul_normed(
            lastx,
            &self.output_norm,
            &mut st.part_acts,
            &mut [(&self.output, &mut st.logits)],
            Epilogue::Store,
        );
        if let Some(r) = normed {
            r?;
        } else {
            rms_norm(lastx, &self.output_norm, c.rms_eps, &mut st.xn[..d]);
            self.matmul(
                &self.output,
                &st.xn[..d],
                &mut st.acts,
                &mut st.logits,
                false,
            )?;
        }
        Ok(Some(&st.logits))
    }

    /// The SwiGLU FFN of layer `l` on the batch's normed rows (`st.xn`), added into `st.x`.
    /// Where gate, up and down are all packed: one job for gate and up whose epilogue runs
    /// SwiGLU and quantizes the down input per thread, then down added into x in its own
    /// epilogue; else the separate steps (the same bits).
    fn ffn(&self, l: &Layer, st: &mut State, nb: usize) -> Result<()> {
        let (d, dff) = (self.cfg.n_embd, self.cfg.n_ff);
        if let (Some(g), Some(u), Some(dn)) = (l.w_gate.packed, l.w_up.packed, l.w_down.packed) {
            // One job computes gate and up, SwiGLU and the down input's Q8_0 blocks, each
            // thread on its own rows; the next adds the down projection into x. One token:
            // each thread norms and quantizes x itself in the first job; a batch: normed
            // (`st.xn`) and quantized before it.
            let glu = Epilogue::SwiGluQ8 {
                h: &mut st.ffn_out[..nb * dff],
                next: &mut st.ffn_acts[..nb],
            };
            if nb == 1 {
                self.matmul_normed(
                    &st.x[..d],
                    &l.ffn_norm,
                    &mut st.part_acts,
                    &mut [
                        (&l.w_gate, &mut st.gate[..dff]),
                        (&l.w_up, &mut st.up[..dff]),
                    ],
                    glu,
                )
                .unwrap_or_else(|| bail!("FFN matrices not packed"))?;
            } else {
                self.quantize(&l.w_gate, &st.xn[..nb * d], &mut st.acts)?;
                quants::matmul_packed_then(
                    &mut [
                        (&self.packed[g], &mut st.gate[..nb * dff]),
                        (&self.packed[u], &mut st.up[..nb * dff]),
                    ],
                    &st.acts[..nb],
                    glu,
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            quants::matmul_packed_then(
                &mut [(&self.packed[dn], &mut st.x[..nb * d])],
                &st.ffn_acts[..nb],
                Epilogue::Accumulate,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        } else {
            self.matmul_many(
                &st.xn[..nb * d],
                &mut st.acts,
                [
                    (&l.w_gate, &mut st.gate[..nb * dff]),
                    (&l.w_up, &mut st.up[..nb * dff]),
                ],
            )?;
            let (gate, up) = (&st.gate, &st.up);
            let path = crate::kernels::active();
            pool::for_each_chunk_mut(&mut st.ffn_out[..nb * dff], dff, &|b, o| {
                act::swiglu(path, &gate[b * dff..][..dff], &up[b * dff..][..dff], o)
            });
            self.matmul_add(
                &l.w_down,
                &st.ffn_out[..nb * dff],
                &mut st.acts,
                &mut st.x[..nb * d],
                &mut st.proj[..nb * d],
            )?;
        }
        Ok(())
    }

    /// Whether layer `l`'s FFN runs on packed matrices only ([`ffn`](Self::ffn)'s fused path).
    fn ffn_packed(&self, l: &Layer) -> bool {
        [&l.w_gate, &l.w_up, &l.w_down]
            .iter()
            .all(|w| w.packed.is_some())
    }

    /// Feed `tokens` (any number) in batches of [`MAX_BATCH`]; logits of the last when
    /// `want_logits`.
    pub fn prefill<'s>(
        &self,
        st: &'s mut State,
        tokens: &[u32],
        want_logits: bool,
    ) -> Result<Option<&'s [f32]>> {
        ensure!(!tokens.is_empty(), "empty prompt");
        let n = tokens.chunks(MAX_BATCH).count();
        for (i, chunk) in tokens.chunks(MAX_BATCH).enumerate() {
            if i + 1 < n {
                self.forward_batch(st, chunk, false)?;
            } else {
                return self.forward_batch(st, chunk, want_logits);
            }
        }
        unreachable!("at least one chunk")
    }
}

/// [`rms_norm`] of every row of `x` (rows of `w.len()` values) into the same rows of `out`,
/// the rows spread over the compute threads (one row: on this thread).
fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    pool::for_each_chunk_mut(out, n, &|b, o| rms_norm(&x[b * n..(b + 1) * n], w, eps, o));
}

/// RMSNorm as ggml: mean of squares accumulated in f64, then `x * w / sqrt(mean + eps)`.
///
/// The sum runs in eight f64 lanes (`x[8i + k]²` into lane `k`, the lanes added in pairs at
/// the end): independent adds the compiler vectorizes, where ggml's single running sum is a
/// chain of dependent adds (576 of them per norm for SmolLM2, on one thread while the others
/// wait). The two sums differ only in the last bits of an f64, which the rounding of the mean
/// to f32 almost always absorbs; the result is the same on every kernel path.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let mut acc = [0f64; 8];
    let (chunks, tail) = x.as_chunks::<8>();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += (v * v) as f64;
        }
    }
    for (a, &v) in acc.iter_mut().zip(tail) {
        *a += (v * v) as f64;
    }
    let sum = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, x), w) in out.iter_mut().zip(x).zip(w) {
        *o = x * scale * w;
    }
}

/// Rotate pairs: adjacent (2i, 2i+1) for llama, (i, i + d/2) for NeoX; dims past the rotary
/// part stay as they are.
pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32], neox: bool) {
    let half = cos.len();
    for i in 0..half {
        let (a, b) = if neox {
            (i, i + half)
        } else {
            (2 * i, 2 * i + 1)
        };
        let (x0, x1) = (x[a], x[b]);
        x[a] = x0 * cos[i] - x1 * sin[i];
        x[b] = x0 * sin[i] + x1 * cos[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rotates_pairs_and_keeps_norm() {
        let mut x = [1.0, 0.0, 0.0, 1.0, 5.0];
        let (c, s) = ([0.0f32.cos(), 1.0f32.cos()], [0.0f32.sin(), 1.0f32.sin()]);
        rope(&mut x[..4], &c, &s, false);
        assert_eq!(x[0], 1.0);
        assert!((x[2] + 1.0f32.sin()).abs() < 1e-6 && (x[3] - 1.0f32.cos()).abs() < 1e-6);
        assert_eq!(x[4], 5.0);
        let mut y = [1.0, 2.0, 3.0, 4.0];
        rope(&mut y, &c, &s, true); // pairs (0,2) and (1,3)
        assert_eq!((y[0], y[2]), (1.0, 3.0));
        let n0 = 2.0f32.powi(2) + 4.0f32.powi(2);
        assert!((y[1].powi(2) + y[3].powi(2) - n0).abs() < 1e-4);
    }

    #[test]
    fn rms_norm_matches_its_definition() {
        let mut out = [0.0; 2];
        rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0, &mut out);
        let r = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / r).abs() < 1e-6 && (out[1] - 8.0 / r).abs() < 1e-6);
        // Every length past the eight lanes, values over many magnitudes: the lane sum's
        // result within one f32 rounding of ggml's sequential f64 sum's.
        let mut s = 0x2545_f491u32;
        for n in 1..=80usize {
            let x: Vec<f32> = (0..n)
                .map(|i| {
                    s ^= s << 13;
                    s ^= s >> 17;
                    s ^= s << 5;
                    (s as f32 / u32::MAX as f32 - 0.5) * 10f32.powi((i % 7) as i32 - 3)
                })
                .collect();
            let w = vec![1.0; n];
            let mut out = vec![0.0; n];
            rms_norm(&x, &w, 1e-5, &mut out);
            let sum: f64 = x.iter().map(|v| (v * v) as f64).sum();
            let scale = 1.0 / ((sum / n as f64) as f32 + 1e-5).sqrt();
            for (o, v) in out.iter().zip(&x) {
                let want = v * scale;
                assert!(
                    (o - want).abs() <= want.abs() * 2.0 * f32::EPSILON,
                    "n={n}: {o:e} vs {want:e}"
                );
            }
        }
    }

    /// Batched prefill must be bit-identical to token-by-token forwards (same kernels per row,
    /// same causal attention): logits of the last token and of the next decode step, on the
    /// K-quant tiny model and (if fetched) SmolLM2, with a prompt longer than one batch and a
    /// second chunk that starts mid-cache.
    #[test]
    fn batched_prefill_is_bit_identical_to_token_by_token() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut paths = vec![root.join("tests/golden/llm/tiny-llama-kq.gguf")];
        paths.extend(crate::llm::gguf::test_support::test_model_path());
        // The tuned CoT model (Q4_0): its matrices are packed, so one token runs the jobs
        // of stages (`quants::attn_out_ffn`) and a batch the separate steps.
        let tuned = root.join("models/SmolLM2-135M-Instruct-ExpCoT.Q4_0.gguf");
        if tuned.is_file() {
            paths.push(tuned);
        }
        for path in paths {
            let m = Model::load(&path).unwrap();
            let n_vocab = m.cfg.n_vocab as u32;
            let prompt: Vec<u32> = (0..MAX_BATCH as u32 + 9)
                .map(|i| (i * 7919 + 3) % n_vocab)
                .collect();
            let mut a = m.new_state(256);
            for (i, &t) in prompt.iter().enumerate() {
                m.forward(&mut a, t, i + 1 == prompt.len()).unwrap();
            }
            let mut b = m.new_state(256);
            m.prefill(&mut b, &prompt[..5], false).unwrap();
            m.prefill(&mut b, &prompt[5..], true).unwrap();
            let bits = |l: &[f32]| l.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(a.logits()),
                bits(b.logits()),
                "{}: prefill logits",
                path.display()
            );
            let la = bits(m.forward(&mut a, 42, true).unwrap().unwrap());
            let lb = bits(m.forward(&mut b, 42, true).unwrap().unwrap());
            assert_eq!(la, lb, "{}: next step after prefill", path.display());
            // A whole batch on a state that has just run single tokens (whose one-token
            // steps swap buffers around: after an odd and an even number of them), against
            // the same tokens one by one.
            for round in 0..2u32 {
                m.forward(&mut a, 7 + round, false).unwrap();
                m.forward(&mut b, 7 + round, false).unwrap();
                let more: Vec<u32> = (0..MAX_BATCH as u32)
                    .map(|i| (i * 104_729 + 11 + round) % n_vocab)
                    .collect();
                m.prefill(&mut a, &more, true).unwrap();
                for (i, &t) in more.iter().enumerate() {
                    m.forward(&mut b, t, i + 1 == more.len()).unwrap();
                }
                assert_eq!(
                    bits(a.logits()),
                    bits(b.logits()),
                    "{}: a batch after single tokens",
                    path.display()
                );
            }
        }
    }
}
