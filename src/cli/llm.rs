//! `expllm llm …`: inspect, run and requantize GGUF language models.

use crate::kernels::GgmlType;
use crate::llm::chat;
use crate::llm::generate::{generate, GenerateOptions, Sampler, StopReason};
use crate::llm::gguf::GgufFile;
use crate::llm::model::Model;
use crate::llm::tokenizer::{Tokenizer, TokenizerSpec};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Subcommand, Debug)]
pub enum LlmCommand {
    /// Generate text from a prompt (streams tokens to stdout; timing on stderr).
    Generate(GenerateArgs),
    /// Print a GGUF file's metadata and tensor table (types, shapes, sizes).
    Info(InfoArgs),
    /// Requantize a GGUF file's weight matrices to Q4_0 or Q8_0 (optionally merging a LoRA
    /// adapter first), writing a new GGUF.
    Quantize(QuantizeArgs),
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// GGUF model file (llama or qwen2 architecture).
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: PathBuf,
    /// The prompt. Special tokens such as <|im_start|> in it are honoured.
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt as one ChatML user turn (with the model's default system prompt, if its
    /// chat template has one).
    #[arg(long)]
    chat: bool,
    /// System prompt for --chat (replaces the template's default).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Maximum new tokens.
    #[arg(short = 'n', long, default_value_t = 64)]
    max_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temp: f32,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Context limit in tokens (the KV cache grows up to it as it is used).
    #[arg(long, default_value_t = 2048)]
    ctx: usize,
    /// Print token ids instead of text.
    #[arg(long)]
    ids: bool,
    /// Compute threads for the matmuls, this one included (default: all cores).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: Option<u64>,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// GGUF file.
    file: PathBuf,
    /// Print long arrays (e.g. the vocabulary) in full instead of their first items.
    #[arg(long)]
    full: bool,
}

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Input GGUF.
    input: PathBuf,
    /// Output GGUF (written to a temporary file, then renamed).
    output: PathBuf,
    /// Target type: q4_0 or q8_0.
    #[arg(long = "type", default_value = "q4_0")]
    ty: String,
    /// Merge this LoRA adapter (llama.cpp's adapter GGUF, e.g. models/lora/*.gguf) into the
    /// weights before quantizing: W' = W + alpha/r · B·A.
    #[arg(long)]
    lora: Option<PathBuf>,
}

pub fn run(cmd: LlmCommand) -> Result<ExitCode> {
    match cmd {
        LlmCommand::Generate(a) => generate_cmd(a),
        LlmCommand::Info(a) => info(a),
        LlmCommand::Quantize(a) => quantize(a),
    }
}

fn generate_cmd(a: GenerateArgs) -> Result<ExitCode> {
    let t0 = Instant::now();
    if let Some(t) = a.threads {
        crate::kernels::pool::set_threads(t as usize);
    }
    let model = Model::load(&a.model)?;
    let tok = Tokenizer::new(TokenizerSpec::from_gguf(model.gguf())?).context("tokenizer")?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let text = if a.chat {
        let template = model
            .gguf()
            .get_str("tokenizer.chat_template")?
            .unwrap_or("");
        if !chat::is_chatml(template) {
            bail!(
                "--chat needs a ChatML model; {} has no ChatML chat template",
                a.model.display()
            );
        }
        let system = a.system.as_deref().or(chat::default_system(template));
        chat::chatml(system, &a.prompt)
    } else {
        a.prompt.clone()
    };
    let mut ids = Vec::new();
    tok.encode(&text, true, &mut ids);
    let mut st = model.new_state(a.ctx);
    let stop_tokens: Vec<u32> = (0..tok.n_vocab() as u32)
        .filter(|&t| tok.is_eog(t))
        .collect();
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampler: Sampler {
            temperature: a.temp,
            top_p: a.top_p,
            seed: a.seed,
        },
        stop_tokens,
        constraints: Vec::new(),
    };
    let mut out = std::io::stdout().lock();
    let mut bytes = Vec::new();
    let mut t_first = None;
    let t_gen = Instant::now();
    let mut write_err = None;
    let (new, reason) = generate(&model, &mut st, &ids, &opts, |t| {
        t_first.get_or_insert_with(Instant::now);
        let r = if a.ids {
            write!(out, "{t} ")
        } else if tok.is_eog(t) {
            Ok(())
        } else {
            bytes.clear();
            tok.decode_token(t, &mut bytes);
            out.write_all(&bytes)
        };
        match r.and_then(|_| out.flush()) {
            Ok(()) => true,
            Err(e) => {
                write_err = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = write_err {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Ok(ExitCode::SUCCESS);
        }
        return Err(e).context("writing to stdout");
    }
    let _ = writeln!(out);
    let prefill_s = t_first.map_or(0.0, |t| (t - t_gen).as_secs_f64());
    let decode_s = t_first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    eprintln!(
        "load {load_ms:.0} ms | prompt {} tokens in {:.0} ms ({:.1} tok/s) | {} new tokens, {:.1} tok/s decode | stop: {} | KV cache {:.1} MiB",
        ids.len(),
        prefill_s * 1e3,
        ids.len() as f64 / prefill_s.max(1e-9),
        new.len(),
        (new.len().saturating_sub(1)) as f64 / decode_s.max(1e-9),
        match reason {
            StopReason::StopToken => "end token",
            StopReason::MaxTokens => "max tokens",
            StopReason::Callback => "stdout closed",
            StopReason::ContextFull => "context full",
            StopReason::Guide => "guide",
        },
        st.kv_bytes() as f64 / (1 << 20) as f64
    );
    Ok(ExitCode::SUCCESS)
}

fn info(a: InfoArgs) -> Result<ExitCode> {
    let g = GgufFile::open(&a.file)?;
    let mut out = std::io::stdout().lock();
    let size = g.bytes().len();
    writeln!(
        out,
        "{}: GGUF v{}, {} bytes, {} metadata keys, {} tensors, alignment {}",
        a.file.display(),
        g.version(),
        size,
        g.metadata().len(),
        g.tensors().len(),
        g.alignment()
    )?;
    writeln!(out, "\nmetadata:")?;
    for (k, v) in g.metadata() {
        if a.full {
            writeln!(out, "  {k} = {v:?}")?;
        } else {
            writeln!(out, "  {k} = {v}")?;
        }
    }
    writeln!(out, "\ntensors:")?;
    writeln!(
        out,
        "  {:<32} {:<6} {:<18} {:>12} {:>12}",
        "name", "type", "shape (ne0, ne1..)", "bytes", "offset"
    )?;
    let mut by_type: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for t in g.tensors() {
        let shape = t
            .dims
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(" x ");
        writeln!(
            out,
            "  {:<32} {:<6} {:<18} {:>12} {:>12}",
            t.name,
            t.ty.name(),
            shape,
            t.n_bytes,
            t.offset
        )?;
        let e = by_type.entry(t.ty.name()).or_default();
        e.0 += 1;
        e.1 += t.n_bytes;
    }
    writeln!(out, "\nby type:")?;
    for (ty, (n, b)) in by_type {
        writeln!(
            out,
            "  {ty:<6} {n:>4} tensors {:>10.2} MiB",
            b as f64 / (1 << 20) as f64
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn quantize(a: QuantizeArgs) -> Result<ExitCode> {
    let target = match a.ty.to_ascii_lowercase().as_str() {
        "q4_0" => GgmlType::Q4_0,
        "q8_0" => GgmlType::Q8_0,
        other => bail!("--type {other}: can quantize to q4_0 or q8_0"),
    };
    let t0 = Instant::now();
    crate::llm::quantize::quantize_file_with(
        &a.input,
        &a.output,
        target,
        a.lora.as_deref(),
        |i, n, name| {
            if i % 16 == 0 || i == n {
                eprint!("\rquantize: {i}/{n} tensors {name:<40}");
            }
        },
    )?;
    eprintln!(
        "\rquantize: wrote {} ({}) in {:.1} s{:<40}",
        a.output.display(),
        target.name(),
        t0.elapsed().as_secs_f64(),
        ""
    );
    Ok(ExitCode::SUCCESS)
}
