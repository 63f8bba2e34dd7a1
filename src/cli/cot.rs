//! `expllm cot …`: the synthetic Exp-CoT data for the fine-tune, and the held-out evaluation of
//! an LLM CoT model (format, faithfulness, agreement, length, latency).

use crate::cot::llm::{prompt_text, LlmStage, Trace, MAX_TOKENS};
use crate::cot::synth::{self, Split};
use crate::cot::{engine, faithful, CotJob, CotSource, CotStage};
use crate::publish::LABELS;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Subcommand, Debug)]
pub enum CotCommand {
    /// Write synthetic Exp-CoT cases as JSONL (one per line: AUs, classifier, label, the exact
    /// prompt the LLM stage uses, and the engine's condensed CoT as the target completion).
    Data(DataArgs),
    /// Evaluate an LLM CoT model on held-out synthetic cases: format-valid rate, faithful rate,
    /// agreement of the model's own conclusion with the fused label, tokens, latency.
    Eval(CotEvalArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SplitArg {
    Train,
    Heldout,
}

impl From<SplitArg> for Split {
    fn from(s: SplitArg) -> Split {
        match s {
            SplitArg::Train => Split::Train,
            SplitArg::Heldout => Split::Heldout,
        }
    }
}

#[derive(Args, Debug)]
pub struct DataArgs {
    /// Which stream: `train` for the fine-tune, `heldout` for evaluation (never trained on).
    #[arg(long, value_enum)]
    split: SplitArg,
    /// Number of cases.
    #[arg(short = 'n', long, default_value_t = 4000)]
    n: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output file (default: stdout).
    #[arg(long, short)]
    out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CotEvalArgs {
    /// GGUF instruct model to evaluate (default: the daemon's `--cot-model`).
    #[arg(long, default_value = super::COT_MODEL)]
    model: PathBuf,
    /// Number of held-out cases.
    #[arg(short = 'n', long, default_value_t = 500)]
    n: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Compute threads for the matmuls.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also write every case (prompt, the model's description, the published line) as JSONL.
    #[arg(long)]
    cases: Option<PathBuf>,
    /// Decode without the faithfulness guide (the daemon always guides): measures how faithful
    /// the model is on its own.
    #[arg(long)]
    unguided: bool,
}

pub fn run(cmd: CotCommand) -> Result<ExitCode> {
    match cmd {
        CotCommand::Data(a) => data(a),
        CotCommand::Eval(a) => eval(a),
    }
}

fn job_of(c: &synth::Case) -> CotJob {
    let e = engine::explain(&c.aus, &c.classifier);
    CotJob {
        seq: 0,
        ts_ms: 0,
        face_id: 0,
        label: c.label,
        scores: e.fused,
        classifier: c.classifier,
        aus: c.aus,
        captured: Instant::now(),
        queued: Instant::now(),
    }
}

fn data(a: DataArgs) -> Result<ExitCode> {
    let split: Split = a.split.into();
    let mut out: Box<dyn Write> = match &a.out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    for i in 0..a.n {
        let c = synth::case(split, a.seed, i);
        let e = engine::explain(&c.aus, &c.classifier);
        // The target: the engine's condensed CoT; with nothing measured there is no prompt for
        // the model (the stage publishes the engine's line), so the case has no completion.
        let (prefix, completion) = match e.condensed.split_once(':') {
            Some((p, rest)) if !e.condensed.starts_with("no AU") => {
                (format!("{p}:"), format!("{rest}<|im_end|>"))
            }
            _ => (String::new(), String::new()),
        };
        let line = serde_json::json!({
            "id": i,
            "split": split.as_str(),
            "kind": c.kind.as_str(),
            "aus": synth::aus_json(&c.aus),
            "classifier": c.classifier.iter().map(|p| (p * 1e4).round() / 1e4).collect::<Vec<_>>(),
            "label": LABELS[c.label],
            "engine": e.condensed,
            "prompt": if prefix.is_empty() { String::new() } else { prompt_text(true, &c.aus, c.label, &prefix) },
            "completion": completion,
        });
        if let Err(e) = writeln!(out, "{line}") {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(e).context("write");
        }
    }
    out.flush().context("write")?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize, Debug)]
struct EvalReport {
    model: String,
    cases: u64,
    /// Cases where the model ran (the others had no AU at ≥ B: the engine's line is used).
    model_cases: usize,
    /// The decode was guided (vetoes tokens naming unmeasured evidence), as in the daemon.
    guided: bool,
    threads: u64,
    kernel: String,
    /// The model ended its description itself within the budget, non-empty, with no newline run-on.
    format_valid_rate: f64,
    /// The model's line passed the faithfulness check (before any fallback).
    faithful_rate: f64,
    /// With the label slot open to all seven labels, the model's pick equals the fused label.
    agreement_rate: Option<f64>,
    /// Every published line (model or fallback) is faithful, concludes the published label and
    /// is ≤ MAX_TOKENS tokens: these are the stage's guarantees, checked on every case.
    published_faithful_rate: f64,
    published_max_tokens: usize,
    mean_tokens: f64,
    mean_prompt_tokens: f64,
    mean_reused_tokens: f64,
    mean_generated_tokens: f64,
    /// Tokens the guide vetoed per model case, and the share of model cases with any veto.
    mean_vetoed: f64,
    vetoed_case_rate: f64,
    latency_ms_mean: f64,
    latency_ms_p50: f64,
    latency_ms_p95: f64,
    prefill_ms_mean: f64,
    decode_ms_mean: f64,
    per_kind: Vec<KindRow>,
}

#[derive(Serialize, Debug, Default, Clone)]
struct KindRow {
    kind: String,
    model_cases: usize,
    faithful: usize,
    agree: usize,
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn eval(a: CotEvalArgs) -> Result<ExitCode> {
    if a.n == 0 {
        bail!("-n must be at least 1");
    }
    crate::kernels::pool::set_threads(a.threads as usize);
    let mut stage = LlmStage::load(&a.model)?;
    stage.set_guided(!a.unguided);
    let mut cases_out = match &a.cases {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?,
        )),
        None => None,
    };
    // One warm-up CoT (first-touch of the weights, KV growth), not counted.
    let warm = job_of(&synth::case(Split::Heldout, a.seed ^ 0xFFFF, 0));
    stage.explain(&warm)?;

    let kinds = ["prototype", "mixture", "neutral", "contempt", "random"];
    let mut rows: Vec<KindRow> = kinds
        .iter()
        .map(|k| KindRow {
            kind: k.to_string(),
            ..Default::default()
        })
        .collect();
    let (mut ran, mut valid, mut faithful_n, mut agree, mut picked) = (0usize, 0, 0, 0, 0);
    let (mut pub_ok, mut max_tok, mut tok_sum) = (0usize, 0usize, 0usize);
    let (mut prompt_sum, mut reused_sum, mut gen_sum) = (0usize, 0usize, 0usize);
    let (mut veto_sum, mut veto_cases) = (0usize, 0usize);
    let (mut prefill_sum, mut decode_sum) = (0.0f64, 0.0f64);
    let mut lat = Vec::with_capacity(a.n as usize);
    let progress = !a.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    for i in 0..a.n {
        let c = synth::case(Split::Heldout, a.seed, i);
        let job = job_of(&c);
        let t0 = Instant::now();
        let cot = stage.explain_traced(&job, true)?;
        let tr: Trace = stage.last_trace().clone();
        // The eval-only free label pick is not part of what the daemon would wait for.
        let ms = t0.elapsed().as_secs_f64() * 1e3 - tr.label_ms;
        let n_tok = stage.count_tokens(&cot.text);
        let published_ok = faithful::check(&cot.text, &job.aus, job.label).is_faithful()
            && faithful::conclusion(&cot.text) == Some(job.label)
            && n_tok <= MAX_TOKENS;
        pub_ok += published_ok as usize;
        max_tok = max_tok.max(n_tok);
        tok_sum += n_tok;
        let row = &mut rows[kinds
            .iter()
            .position(|k| *k == c.kind.as_str())
            .unwrap_or(0)];
        if tr.ran {
            ran += 1;
            row.model_cases += 1;
            lat.push(ms);
            prompt_sum += tr.prompt_tokens;
            reused_sum += tr.reused_tokens;
            gen_sum += tr.generated_tokens;
            veto_sum += tr.vetoed;
            veto_cases += (tr.vetoed > 0) as usize;
            prefill_sum += tr.prefill_ms;
            decode_sum += tr.decode_ms;
            let d = tr.description.trim();
            valid += (tr.ended && !d.is_empty()) as usize;
            let model_faithful = cot.source == CotSource::Llm;
            faithful_n += model_faithful as usize;
            row.faithful += model_faithful as usize;
            if let Some(l) = tr.model_label {
                picked += 1;
                agree += (l == job.label) as usize;
                row.agree += (l == job.label) as usize;
            }
        }
        if let Some(w) = cases_out.as_mut() {
            let prefix = cot.text.split_once(':').map(|(p, _)| p).unwrap_or("");
            writeln!(
                w,
                "{}",
                serde_json::json!({
                    "id": i, "kind": c.kind.as_str(), "label": LABELS[job.label],
                    "prompt": prompt_text(true, &c.aus, job.label, &format!("{prefix}:")),
                    "description": tr.description, "vetoed": tr.vetoed, "model_label": tr.model_label.map(|l| LABELS[l]),
                    "published": cot.text, "source": cot.source.as_str(), "ms": ms,
                })
            )
            .context("write --cases")?;
        }
        if progress && (i % 10 == 9 || i + 1 == a.n) {
            eprint!("\rcot eval: {}/{} cases", i + 1, a.n);
        }
    }
    if progress {
        eprintln!();
    }
    lat.sort_by(f64::total_cmp);
    let div = |x: f64, n: usize| if n == 0 { 0.0 } else { x / n as f64 };
    let r = EvalReport {
        model: a.model.display().to_string(),
        cases: a.n,
        model_cases: ran,
        guided: !a.unguided,
        threads: a.threads,
        kernel: crate::kernels::active().as_str().to_string(),
        format_valid_rate: div(valid as f64, ran),
        faithful_rate: div(faithful_n as f64, ran),
        agreement_rate: (picked > 0).then(|| agree as f64 / picked as f64),
        published_faithful_rate: pub_ok as f64 / a.n as f64,
        published_max_tokens: max_tok,
        mean_tokens: tok_sum as f64 / a.n as f64,
        mean_prompt_tokens: div(prompt_sum as f64, ran),
        mean_reused_tokens: div(reused_sum as f64, ran),
        mean_generated_tokens: div(gen_sum as f64, ran),
        mean_vetoed: div(veto_sum as f64, ran),
        vetoed_case_rate: div(veto_cases as f64, ran),
        latency_ms_mean: div(lat.iter().sum(), lat.len()),
        latency_ms_p50: pct(&lat, 0.5),
        latency_ms_p95: pct(&lat, 0.95),
        prefill_ms_mean: div(prefill_sum, ran),
        decode_ms_mean: div(decode_sum, ran),
        per_kind: rows,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_report(&r);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(r: &EvalReport) {
    let p = |x: f64| format!("{:.1} %", x * 100.0);
    println!(
        "CoT eval: {} — {} held-out cases, model ran on {} ({} threads, kernel {}, {})",
        r.model,
        r.cases,
        r.model_cases,
        r.threads,
        r.kernel,
        if r.guided { "guided" } else { "unguided" }
    );
    println!("| metric | value |\n| --- | --- |");
    println!(
        "| format-valid (model ended its description itself) | {} |",
        p(r.format_valid_rate)
    );
    println!(
        "| faithful (model line passed the check, no fallback) | {} |",
        p(r.faithful_rate)
    );
    match r.agreement_rate {
        Some(a) => println!(
            "| agreement (model's own label pick = fused label) | {} |",
            p(a)
        ),
        None => println!("| agreement | n/a (label tokens not distinct) |"),
    }
    println!(
        "| published lines faithful, concluding the label, ≤ {MAX_TOKENS} tokens | {} |",
        p(r.published_faithful_rate)
    );
    println!(
        "| tokens per published CoT: mean / max | {:.1} / {} |",
        r.mean_tokens, r.published_max_tokens
    );
    println!(
        "| prompt tokens (reused from cache) / generated | {:.1} ({:.1}) / {:.1} |",
        r.mean_prompt_tokens, r.mean_reused_tokens, r.mean_generated_tokens
    );
    println!(
        "| guide vetoes per model case (cases with any) | {:.2} ({}) |",
        r.mean_vetoed,
        p(r.vetoed_case_rate)
    );
    println!(
        "| latency per CoT ms: mean / p50 / p95 | {:.0} / {:.0} / {:.0} |",
        r.latency_ms_mean, r.latency_ms_p50, r.latency_ms_p95
    );
    println!(
        "| of which prefill / decode ms (mean) | {:.0} / {:.0} |",
        r.prefill_ms_mean, r.decode_ms_mean
    );
    println!("\nper kind (model cases: faithful, agreement):");
    for k in &r.per_kind {
        if k.model_cases > 0 {
            println!(
                "  {:<10} {:>4} cases  faithful {:>5.1} %  agree {:>5.1} %",
                k.kind,
                k.model_cases,
                100.0 * k.faithful as f64 / k.model_cases as f64,
                100.0 * k.agree as f64 / k.model_cases as f64
            );
        }
    }
}
