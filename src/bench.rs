//! On-device benchmarks (`expllm bench`): what a stage costs on the machine it runs on.
//!
//! Owns timing, the memory-bandwidth probe and the report structs. It calls the very code
//! the daemon runs (`Model::forward`, `Model::matmul_quantized`) and must not change it or its
//! results. Speed is measured here, never asserted in tests.
//!
//! The LLM stage: decode and prefill tokens/s for one kernel path and thread count, the
//! bytes of weights one decode step streams, the read bandwidth of this machine measured
//! over a buffer of that size and over 256 MiB (beyond any cache), the roofline they imply
//! (bandwidth ÷ bytes per token), and per matrix shape the matvec time, GB/s and GOP/s.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::kernels::hugemem::{self, HugeBuf};
use crate::kernels::quants::QuantizedActs;
use crate::kernels::{self, pool, GgmlType};
use crate::llm::model::{Model, Weight};
use crate::llm::tokenizer::{Tokenizer, TokenizerSpec};

/// The fixed English text whose first `prompt_tokens` tokens form the prefill prompt
/// (repeated if short), so every run and llama.cpp's script see the same ids.
pub const PROMPT_TEXT: &str = "A camera on a small board watches the door of a quiet lab. \
When a person walks in, it finds the face, measures how the brows, eyelids, cheeks and lips \
move, and writes one short line that names the expression and says which facial action \
units support it. The line goes to a message broker, and a dashboard shows it a moment \
later. Nothing leaves the board but that line, and the board runs for months without a \
restart, so every stage must be fast, small and predictable.";

/// Options of one LLM run.
#[derive(Debug, Clone)]
pub struct LlmBenchOptions {
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    pub runs: usize,
    /// Time each matrix shape too.
    pub shapes: bool,
}

/// One kernel path × thread count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LlmRun {
    pub kernel: String,
    pub threads: usize,
    pub model: String,
    pub load_ms: f64,
    /// Bytes of weights a decode step multiplies by (every layer matrix + the output matrix).
    pub bytes_per_token: u64,
    /// Read bandwidth over a buffer of `bytes_per_token` (what decode streams), GB/s, with
    /// this run's thread count: the median of the probes taken just before each decode run
    /// (each the best of 18 passes, plain and prefetching; [`BandwidthProbe`]).
    pub bandwidth_model_size_gbs: f64,
    /// Those probes, one per decode run, in order.
    #[serde(default)]
    pub bandwidth_model_size_gbs_runs: Vec<f64>,
    /// The same probes' plain-read passes alone (no software prefetch; what the `BW GB/s`
    /// column measured before the eleventh session), one per decode run.
    #[serde(default)]
    pub bandwidth_model_size_plain_gbs_runs: Vec<f64>,
    /// The same over 256 MiB, once before the runs.
    pub bandwidth_256mib_gbs: f64,
    /// `bandwidth_model_size_gbs · 1e9 / bytes_per_token`.
    pub roofline_tok_s: f64,
    pub prefill_tokens: usize,
    /// Median over runs; the prompt goes through `Model::prefill` (batches of
    /// `llm::model::MAX_BATCH` tokens, every weight row loaded once per batch).
    pub prefill_tok_s: f64,
    pub decode_tokens: usize,
    /// Median over runs of greedy decode (forward + argmax), after the prompt.
    pub decode_tok_s: f64,
    pub decode_tok_s_runs: Vec<f64>,
    /// The median over decode runs of each run's decode tok/s over its own roofline (from the
    /// probe just before it), so a swing of the memory system between runs does not pair a
    /// run with another moment's bandwidth.
    pub roofline_fraction: f64,
    /// The decode kernel's own rate on weights in L2 ([`KernelProbe`]), GB/s, all threads:
    /// the median of the probes taken just after each run's bandwidth probe; `None` when
    /// nothing is packed.
    #[serde(default)]
    pub kernel_l2_gbs: Option<f64>,
    /// Those probes, one per decode run, in order.
    #[serde(default)]
    pub kernel_l2_gbs_runs: Vec<f64>,
    /// `kernel_l2_gbs · 1e9 / bytes_per_token`: the decode rate the kernel alone allows.
    #[serde(default)]
    pub compute_roof_tok_s: Option<f64>,
    /// The median over decode runs of decode tok/s over the lower of that run's two roofs
    /// (memory's and the kernel's).
    #[serde(default)]
    pub lower_roof_fraction: Option<f64>,
    /// [`core_round_trip_ns`] after each run's probes, in order (empty with one thread).
    #[serde(default)]
    pub core_round_trip_ns_runs: Vec<f64>,
    /// The process's memory in transparent huge pages after the runs (the packed weights
    /// and the probe's buffer ask for them: `kernels::hugemem`), bytes; `None` where the OS
    /// does not say.
    #[serde(default)]
    pub huge_page_bytes: Option<u64>,
    pub shapes: Vec<ShapeRun>,
}

/// One matrix shape: timed by cycling over all matrices of that shape (so the weights come
/// from wherever decode gets them, not from a hot L1/L2).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShapeRun {
    pub role: String,
    pub ty: String,
    pub rows: usize,
    pub cols: usize,
    /// Matrices of this shape per decode step.
    pub count: usize,
    pub us_per_matvec: f64,
    pub gb_s: f64,
    /// 2·rows·cols multiply-adds per µs ·1e-3.
    pub gop_s: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

/// Read bandwidth (GB/s) over `bytes` with the pool's threads ([`BandwidthProbe`], once).
pub fn read_bandwidth(bytes: usize) -> Result<f64> {
    Ok(BandwidthProbe::new(bytes)?.measure())
}

/// A buffer to measure read bandwidth over, filled once and measured as often as asked: the
/// LLM benchmark measures it again before every decode run, so each run's roofline comes from
/// the memory system as it was then (on a shared VM it swings by tens of percent within
/// minutes). The buffer is the kind the packed weights live in ([`HugeBuf`]: huge pages
/// where the OS gives them), so the roofline is measured on the same memory the matmuls
/// stream.
pub struct BandwidthProbe {
    buf: HugeBuf<u64>,
}

impl BandwidthProbe {
    /// A buffer of `bytes` (at least 512 KiB), its pages touched (not timed).
    pub fn new(bytes: usize) -> Result<BandwidthProbe> {
        let n = (bytes / 8).max(1 << 16);
        let mut buf = HugeBuf::<u64>::zeroed(n).context("mapping the bandwidth probe's buffer")?;
        buf.iter_mut().zip(0u64..).for_each(|(v, i)| *v = i);
        Ok(BandwidthProbe { buf })
    }

    /// GB/s: the best of 18 passes, each part summing its share of the buffer, plain or
    /// prefetching each of [`PROBE_AHEAD`]'s distances ahead, in turn
    /// ([`measure_each`](Self::measure_each)): the most this machine's memory gave.
    pub fn measure(&self) -> f64 {
        let (plain, ahead) = self.measure_each();
        plain.max(ahead)
    }

    /// `(plain, prefetching)`: the best of 3 plain passes, and of 15 prefetching ones (3 per
    /// distance), in turn so all see the same minutes. Why: on the 2-vCPU EPYC VM plain reads
    /// (what the hardware prefetchers alone give, as a STREAM-like loop) reached 72–77 GB/s
    /// where the same loop asking for the line 4 KiB ahead reached 89–97 GB/s in the same
    /// minutes, and 8–12 KiB ahead ~4 % more at 2 threads and ~15 % more at 1 (44.5–44.9
    /// against 48.9–52.2 GB/s); the decode GEMVs prefetch like that, so a plain probe
    /// understates the roofline (BENCHMARKS, "eleventh session").
    pub fn measure_each(&self) -> (f64, f64) {
        let (buf, n) = (&self.buf, self.buf.len());
        let parts = pool::threads() * 4;
        let per = n.div_ceil(parts);
        let mut best = [0f64; 2];
        let distances = [0].into_iter().chain(PROBE_AHEAD);
        for dist in distances.cycle().take(3 * (PROBE_AHEAD.len() + 1)) {
            let ahead = dist > 0;
            let t = Instant::now();
            pool::run(parts, &|p| {
                let s = &buf[(p * per).min(n)..((p + 1) * per).min(n)];
                // Eight independent sums (a cache line) so the adds keep up with the loads.
                let mut acc = [0u64; 8];
                let step = dist / 8;
                for (j, c) in s.chunks_exact(8).enumerate() {
                    if ahead {
                        let next = s.get(j * 8 + step..).unwrap_or(&[]);
                        crate::kernels::prefetch_l2(bytemuck::cast_slice(next));
                    }
                    for k in 0..8 {
                        acc[k] = acc[k].wrapping_add(c[k]);
                    }
                }
                black_box(acc);
            });
            let dt = t.elapsed().as_secs_f64();
            let b = &mut best[usize::from(ahead)];
            *b = b.max((n * 8) as f64 / dt / 1e9);
        }
        (best[0], best[1])
    }
}

/// The decode GEMV's own ceiling: each thread runs the decode kernel over [`KERNEL_PROBE_BYTES`]
/// of its share of the model's largest packed matrix, over and over, so the weights stay in
/// its L2 and memory is out of the picture (no barriers either: the parts run on their own).
/// Why: on the 2-vCPU EPYC VM the memory sometimes gives ~105 GB/s while the host gives the
/// VM a third less compute (prefill drops from ~2600 to ~1750 tok/s); then this probe shows
/// whether the kernel, not memory, is the lower roof. Its rate × 1e9 / bytes per token is
/// the decode rate the kernel alone would allow.
pub struct KernelProbe<'m> {
    m: &'m crate::kernels::quants::PackedMatrix,
    /// The matrix's tiles.
    all: usize,
    act: QuantizedActs,
    /// Tiles per part, and bytes per tile.
    tiles: usize,
    tile_bytes: usize,
}

/// Weight bytes per thread in [`KernelProbe`]'s passes: a quarter of the EPYC's and the
/// Cortex-A76's L2 (1 MiB, 512 KiB), half of the Cortex-A72's.
pub const KERNEL_PROBE_BYTES: usize = 256 << 10;

impl<'m> KernelProbe<'m> {
    /// The probe for `model` on the active kernel path, or `None` when nothing is packed (a
    /// path or weight type without the repacked GEMV: the decode then runs other kernels).
    pub fn new(model: &'m Model) -> Result<Option<KernelProbe<'m>>> {
        use crate::kernels::quants::q4_0x8::{BlockQ4_0x8, TILE_ROWS};
        let Some((rows, cols, m)) = model
            .matrices()
            .into_iter()
            .filter_map(|(_, w)| model.packed(w).map(|p| (w.rows, w.cols, p)))
            .max_by_key(|(r, c, _)| r * c)
        else {
            return Ok(None);
        };
        let tile_bytes = std::mem::size_of::<BlockQ4_0x8>() * cols / 32;
        let threads = pool::threads().max(1);
        let tiles = (KERNEL_PROBE_BYTES / tile_bytes).clamp(1, (rows / TILE_ROWS / threads).max(1));
        let x: Vec<f32> = (0..cols)
            .map(|i| ((i * 7919) % 255) as f32 / 127.0 - 1.0)
            .collect();
        let mut act = QuantizedActs::new();
        act.quantize_for(GgmlType::Q4_0, &x)?;
        Ok(Some(KernelProbe {
            m,
            all: rows / TILE_ROWS,
            act,
            tiles,
            tile_bytes,
        }))
    }

    /// GB/s of weights through the decode kernel, all threads together: the best of 5
    /// passes of 200 repetitions each (~50 MB per thread per pass).
    pub fn measure(&self) -> Result<f64> {
        let threads = pool::threads().max(1);
        let (all, path) = (self.all, kernels::active());
        const REPS: usize = 200;
        let failed = std::sync::OnceLock::new();
        let mut best = 0f64;
        for _ in 0..5 {
            let t = Instant::now();
            pool::run(threads, &|i| {
                // Part `i` starts where its decode share starts (so the tiles lie as they do
                // in decode), `self.tiles` tiles of it.
                let t0 = crate::kernels::quants::share(all, i, threads).start;
                let t0 = t0.min(all - self.tiles);
                let mut out = vec![0f32; self.tiles * crate::kernels::quants::q4_0x8::TILE_ROWS];
                if let Err(e) = crate::kernels::quants::gemv_tiles_repeated(
                    path, self.m, t0, &self.act, REPS, &mut out,
                ) {
                    let _ = failed.set(e);
                }
                black_box(&out);
            });
            let dt = t.elapsed().as_secs_f64();
            if let Some(e) = failed.get() {
                anyhow::bail!("kernel probe: {e}");
            }
            best = best.max((threads * self.tiles * self.tile_bytes * REPS) as f64 / dt / 1e9);
        }
        Ok(best)
    }
}

/// The time a cache line takes from one compute thread's core to another's and back, ns:
/// threads 0 and 1 of the pool hand a counter to each other 10 000 times, the median of 5
/// passes; `None` with one thread, or if the two parts did not run at once (a part waits at
/// most 100 ms for the other, so a pool that ran them one after the other cannot hang it).
/// Why: on the 2-vCPU EPYC VM the minutes when memory is fast (~110–130 GB/s) are those
/// when this is ~350–400 ns instead of ~80–140, and a decode step meets ~180 barriers and
/// job hand-offs, each a few such trips.
pub fn core_round_trip_ns() -> Option<f64> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
    use std::time::Duration;
    if pool::threads() < 2 {
        return None;
    }
    #[repr(align(128))]
    struct Line(AtomicU64);
    const TRIPS: u64 = 10_000;
    let flag = Line(AtomicU64::new(0));
    let started = [AtomicBool::new(false), AtomicBool::new(false)];
    let failed = AtomicBool::new(false);
    let took = std::sync::Mutex::new(Duration::ZERO);
    let mut passes = Vec::new();
    for _ in 0..5 {
        flag.0.store(0, Relaxed);
        started.iter().for_each(|s| s.store(false, Relaxed));
        pool::run(2, &|p| {
            started[p].store(true, Release);
            let t0 = Instant::now();
            while !started[1 - p].load(Acquire) {
                if failed.load(Relaxed) || t0.elapsed() > Duration::from_millis(100) {
                    failed.store(true, Relaxed);
                    return;
                }
                std::hint::spin_loop();
            }
            let t = Instant::now();
            for i in 0..TRIPS {
                // Part 0 turns 2i into 2i + 1, part 1 that into 2i + 2.
                let (theirs, mine) = if p == 0 {
                    (2 * i, 2 * i + 1)
                } else {
                    (2 * i + 1, 2 * i + 2)
                };
                let mut spins = 0u32;
                while flag.0.load(Acquire) != theirs {
                    spins = spins.wrapping_add(1);
                    if spins.is_multiple_of(1 << 16)
                        && (failed.load(Relaxed) || t.elapsed() > Duration::from_secs(1))
                    {
                        failed.store(true, Relaxed);
                        return;
                    }
                }
                flag.0.store(mine, Release);
            }
            if p == 0 {
                *took.lock().unwrap_or_else(|e| e.into_inner()) = t.elapsed();
            }
        });
        if failed.load(Relaxed) {
            return None;
        }
        let d = *took.lock().unwrap_or_else(|e| e.into_inner());
        passes.push(d.as_secs_f64() * 1e9 / TRIPS as f64);
    }
    Some(median(&mut passes))
}

/// How far ahead the probe's prefetching passes ask for lines, in bytes: around the decode
/// GEMVs' distances (`kernels::x86::GEMV_PREFETCH`, `kernels::x86_vnni::GEMV2_PREFETCH_ALONE`
/// and `GEMV2_PREFETCH_SHARED`'s two, 2 and 32 KiB), so the roofline is the most the memory
/// gives to any of the ways decode asks for it.
pub const PROBE_AHEAD: [usize; 5] = [4 << 10, 8 << 10, 12 << 10, 16 << 10, 32 << 10];

/// Benchmark the LLM stage with the kernel path and thread count already in force.
pub fn llm(model_path: &Path, o: &LlmBenchOptions, progress: &dyn Fn(&str)) -> Result<LlmRun> {
    let t0 = Instant::now();
    let model = Model::load(model_path)?;
    let tok = Tokenizer::new(TokenizerSpec::from_gguf(model.gguf())?).context("tokenizer")?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;

    let mats = model.matrices();
    let bytes_per_token: u64 = mats.iter().map(|(_, w)| model.data(w).len() as u64).sum();
    progress("bandwidth probe");
    let probe = BandwidthProbe::new(bytes_per_token as usize)?;
    let kernel_probe = KernelProbe::new(&model)?;
    let bw_256 = read_bandwidth(256 << 20)?;

    let mut prompt = Vec::new();
    tok.encode(PROMPT_TEXT, false, &mut prompt);
    let base = prompt.clone();
    while prompt.len() < o.prompt_tokens {
        prompt.extend_from_slice(&base);
    }
    prompt.truncate(o.prompt_tokens.max(1));

    let mut st = model.new_state(prompt.len() + o.decode_tokens + 1);
    let (mut pre, mut dec, mut bws, mut plains) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut kernels_l2, mut trips) = (Vec::new(), Vec::new());
    for r in 0..o.runs.max(1) {
        progress(&format!("run {}/{}", r + 1, o.runs.max(1)));
        st.reset();
        let t = Instant::now();
        model.prefill(&mut st, &prompt, true)?;
        pre.push(prompt.len() as f64 / t.elapsed().as_secs_f64());
        let mut next = argmax(st.logits());
        // This run's roofline: the probe just before it.
        let (plain, ahead) = probe.measure_each();
        bws.push(plain.max(ahead));
        plains.push(plain);
        if let Some(k) = &kernel_probe {
            kernels_l2.push(k.measure()?);
        }
        trips.extend(core_round_trip_ns());
        #[cfg(feature = "pool-stats")]
        {
            pool::stats::take();
            crate::llm::model::phases::take(1);
        }
        let t = Instant::now();
        for _ in 0..o.decode_tokens {
            let l = model
                .forward(&mut st, next, true)?
                .context("forward gave no logits")?;
            next = argmax(l);
        }
        dec.push(o.decode_tokens as f64 / t.elapsed().as_secs_f64());
        #[cfg(feature = "pool-stats")]
        eprintln!(
            "pool stats, {} decode tokens in {:.2} ms: {}",
            o.decode_tokens,
            t.elapsed().as_secs_f64() * 1e3,
            pool::stats::take()
        );
        #[cfg(feature = "pool-stats")]
        eprintln!(
            "layer phases: {}",
            crate::llm::model::phases::take(o.decode_tokens)
        );
    }
    let decode_runs = dec.clone();
    let huge_page_bytes = hugemem::anon_huge_bytes();
    let roof = |bw: f64| bw * 1e9 / bytes_per_token as f64;
    let mut fractions: Vec<f64> = dec.iter().zip(&bws).map(|(d, &b)| d / roof(b)).collect();
    let mut lower: Vec<f64> = dec
        .iter()
        .zip(&bws)
        .zip(&kernels_l2)
        .map(|((d, &b), &k)| d / roof(b.min(k)))
        .collect();
    let kernel_l2_runs = kernels_l2.clone();
    let kernel_l2 = (!kernels_l2.is_empty()).then(|| median(&mut kernels_l2));
    let bandwidth_runs = bws.clone();
    let bw_model = median(&mut bws);
    let decode_tok_s = median(&mut dec);

    let mut shapes = Vec::new();
    if o.shapes {
        progress("matrix shapes");
        shapes = time_shapes(&model)?;
    }
    Ok(LlmRun {
        kernel: kernels::active().as_str().to_string(),
        threads: pool::threads(),
        model: model_path.display().to_string(),
        load_ms,
        bytes_per_token,
        bandwidth_model_size_gbs: bw_model,
        bandwidth_model_size_gbs_runs: bandwidth_runs,
        bandwidth_model_size_plain_gbs_runs: plains,
        bandwidth_256mib_gbs: bw_256,
        roofline_tok_s: roof(bw_model),
        prefill_tokens: prompt.len(),
        prefill_tok_s: median(&mut pre),
        decode_tokens: o.decode_tokens,
        decode_tok_s,
        decode_tok_s_runs: decode_runs,
        roofline_fraction: median(&mut fractions),
        core_round_trip_ns_runs: trips,
        kernel_l2_gbs: kernel_l2,
        kernel_l2_gbs_runs: kernel_l2_runs,
        compute_roof_tok_s: kernel_l2.map(roof),
        lower_roof_fraction: (!lower.is_empty()).then(|| median(&mut lower)),
        huge_page_bytes,
        shapes,
    })
}

fn argmax(l: &[f32]) -> u32 {
    crate::llm::generate::argmax(l) as u32
}

fn time_shapes(model: &Model) -> Result<Vec<ShapeRun>> {
    /// (type, rows, cols) → (role of the first, type, every matrix's bytes).
    type Group<'a> = (String, GgmlType, Vec<&'a Weight>);
    let mut groups: BTreeMap<(u8, usize, usize), Group> = BTreeMap::new();
    for (name, w) in model.matrices() {
        let role = name.rsplit('.').next().unwrap_or(&name).to_string();
        groups
            .entry((w.ty as u8, w.rows, w.cols))
            .or_insert_with(|| (role, w.ty, Vec::new()))
            .2
            .push(w);
    }
    let mut out = Vec::new();
    for ((_, rows, cols), (role, ty, datas)) in groups {
        let x: Vec<f32> = (0..cols)
            .map(|i| ((i * 7919) % 997) as f32 / 500.0 - 1.0)
            .collect();
        let mut acts = QuantizedActs::new();
        acts.quantize_for(ty, &x)?;
        let mut y = vec![0f32; rows];
        let acts = std::slice::from_ref(&acts);
        for w in &datas {
            model.matmul_quantized(w, acts, &mut y)?;
        }
        let (mut calls, t) = (0usize, Instant::now());
        while t.elapsed().as_secs_f64() < 0.3 || calls < 2 * datas.len() {
            for w in &datas {
                model.matmul_quantized(w, acts, &mut y)?;
                calls += 1;
            }
        }
        let s = t.elapsed().as_secs_f64() / calls as f64;
        black_box(&y);
        out.push(ShapeRun {
            role,
            ty: ty.name().to_string(),
            rows,
            cols,
            count: datas.len(),
            us_per_matvec: s * 1e6,
            gb_s: model.data(datas[0]).len() as f64 / s / 1e9,
            gop_s: 2.0 * (rows * cols) as f64 / s / 1e9,
        });
    }
    Ok(out)
}

/// The human table for a set of runs (one row per kernel path × threads, then the shapes of
/// each run).
pub fn llm_table(runs: &[LlmRun]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if let Some(r) = runs.first() {
        let _ = writeln!(
            s,
            "model {} — {:.1} MB of weights per decode step",
            r.model,
            r.bytes_per_token as f64 / 1e6
        );
    }
    let _ = writeln!(
        s,
        "{:<13} {:>3} {:>10} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "kernel",
        "thr",
        "decode t/s",
        "prefill t/s",
        "BW GB/s",
        "BW256 GB/s",
        "roofline",
        "of roof"
    );
    for r in runs {
        let _ = writeln!(
            s,
            "{:<13} {:>3} {:>10.1} {:>11.1} {:>9.1} {:>10.1} {:>9.1} {:>6.0}%",
            r.kernel,
            r.threads,
            r.decode_tok_s,
            r.prefill_tok_s,
            r.bandwidth_model_size_gbs,
            r.bandwidth_256mib_gbs,
            r.roofline_tok_s,
            r.roofline_fraction * 100.0
        );
    }
    for r in runs
        .iter()
        .filter(|r| !r.bandwidth_model_size_plain_gbs_runs.is_empty())
    {
        let mut plain = r.bandwidth_model_size_plain_gbs_runs.clone();
        let _ = writeln!(
            s,
            "BW GB/s: the faster of plain and prefetching reads ({} {} thr: plain {:.1}, \
             medians over the runs)",
            r.kernel,
            r.threads,
            median(&mut plain)
        );
    }
    for r in runs {
        if let (Some(k), Some(c), Some(f)) =
            (r.kernel_l2_gbs, r.compute_roof_tok_s, r.lower_roof_fraction)
        {
            let _ = writeln!(
                s,
                "decode kernel on weights in L2 ({} {} thr): {:.1} GB/s = {:.1} tok/s, the \
                 kernel's own roof; decode {:.0}% of the lower roof (medians over the runs)",
                r.kernel,
                r.threads,
                k,
                c,
                f * 100.0
            );
        }
    }
    for r in runs
        .iter()
        .filter(|r| !r.core_round_trip_ns_runs.is_empty())
    {
        let mut t = r.core_round_trip_ns_runs.clone();
        let _ = writeln!(
            s,
            "cache line between the cores of threads 0 and 1 and back ({} {} thr): {:.0} ns \
             (median over the runs)",
            r.kernel,
            r.threads,
            median(&mut t)
        );
    }
    if let Some(b) = runs.iter().filter_map(|r| r.huge_page_bytes).max() {
        let _ = writeln!(
            s,
            "memory in transparent huge pages after the runs: {:.1} MB (packed weights; \
             EXPLLM_HUGE_PAGES=0 turns the advice off)",
            b as f64 / 1e6
        );
    }
    for r in runs.iter().filter(|r| !r.shapes.is_empty()) {
        let _ = writeln!(s, "\nper shape, {} {} thread(s):", r.kernel, r.threads);
        let _ = writeln!(
            s,
            "  {:<12} {:<5} {:>6} {:>6} {:>4} {:>9} {:>7} {:>7}",
            "role", "type", "rows", "cols", "n", "µs/matvec", "GB/s", "GOP/s"
        );
        for h in &r.shapes {
            let _ = writeln!(
                s,
                "  {:<12} {:<5} {:>6} {:>6} {:>4} {:>9.1} {:>7.1} {:>7.1}",
                h.role, h.ty, h.rows, h.cols, h.count, h.us_per_matvec, h.gb_s, h.gop_s
            );
        }
    }
    s
}

/// One vision configuration (precision × threads) over a set of images.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VisionRun {
    pub precision: String,
    pub threads: usize,
    /// The four ONNX files loaded.
    pub models: Vec<String>,
    /// Model loading (parse + optimise + plan), milliseconds.
    pub load_ms: f64,
    pub images: Vec<VisionImageRun>,
    /// Medians over all timed frames of all images, per stage, milliseconds per *call*:
    /// detector per frame, mesh per candidate box, blendshapes and classifier per face.
    pub detect_ms: f64,
    pub mesh_ms: f64,
    pub blendshapes_ms: f64,
    pub classifier_ms: f64,
    /// Mean over images of (whole-frame median ÷ faces in the frame).
    pub total_per_face_ms: f64,
}

/// One image under one configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VisionImageRun {
    pub image: String,
    pub width: usize,
    pub height: usize,
    pub faces: usize,
    /// Detector boxes sent to the mesh (faces + rejected by presence).
    pub candidates: usize,
    /// `FaceLandmarker::detect` on the decoded image (all stages, all faces): median, p90,
    /// min over the timed runs.
    pub frame_ms: Stats,
}

/// Latency statistics, milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Stats {
    pub median: f64,
    pub p90: f64,
    pub min: f64,
    pub n: usize,
}

impl Stats {
    pub fn of(v: &mut [f64]) -> Stats {
        if v.is_empty() {
            return Stats {
                median: 0.0,
                p90: 0.0,
                min: 0.0,
                n: 0,
            };
        }
        v.sort_by(f64::total_cmp);
        let p90 = v[((v.len() - 1) as f64 * 0.9).round() as usize];
        Stats {
            median: median(v),
            p90,
            min: v[0],
            n: v.len(),
        }
    }
}

/// Times the vision pipeline on decoded images: `warmup` untimed then `runs` timed calls per
/// image, one configuration. Images are `(name, width, height, rgb)`.
pub fn vision(
    cfg: crate::vision::VisionConfig,
    images: &[(String, usize, usize, Vec<u8>)],
    warmup: usize,
    runs: usize,
    progress: &dyn Fn(&str),
) -> Result<VisionRun> {
    use crate::vision::{geometry::Rgb, FaceLandmarker, VisionStage};
    let (threads, precision) = (cfg.threads, cfg.precision);
    let t = Instant::now();
    let mut lm = FaceLandmarker::load(cfg)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let (mut det, mut mesh, mut bs, mut cls) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut per_image = Vec::new();
    let mut faces = Vec::new();
    for (name, w, h, rgb) in images {
        progress(name);
        let img = Rgb::new(*w, *h, rgb).context("image buffer size")?;
        for _ in 0..warmup {
            lm.detect(img, &mut faces)?;
        }
        let mut frame = Vec::with_capacity(runs);
        let mut st = Default::default();
        for _ in 0..runs {
            let t = Instant::now();
            lm.detect(img, &mut faces)?;
            frame.push(t.elapsed().as_secs_f64() * 1e3);
            st = lm.last_times().unwrap_or_default();
            det.push(st.detect as f64);
            if st.candidates > 0 {
                mesh.push(st.mesh as f64 / st.candidates as f64);
            }
            if st.faces > 0 {
                bs.push(st.blendshapes as f64 / st.faces as f64);
                cls.push(st.classifier as f64 / st.faces as f64);
            }
        }
        per_image.push(VisionImageRun {
            image: name.clone(),
            width: *w,
            height: *h,
            faces: st.faces as usize,
            candidates: st.candidates as usize,
            frame_ms: Stats::of(&mut frame),
        });
    }
    let with_faces: Vec<f64> = per_image
        .iter()
        .filter(|r| r.faces > 0)
        .map(|r| r.frame_ms.median / r.faces as f64)
        .collect();
    Ok(VisionRun {
        precision: precision.as_str().into(),
        threads,
        models: lm.files().iter().map(|s| s.to_string()).collect(),
        load_ms,
        images: per_image,
        detect_ms: Stats::of(&mut det).median,
        mesh_ms: Stats::of(&mut mesh).median,
        blendshapes_ms: Stats::of(&mut bs).median,
        classifier_ms: Stats::of(&mut cls).median,
        total_per_face_ms: with_faces.iter().sum::<f64>() / with_faces.len().max(1) as f64,
    })
}

/// The human table of [`vision`] runs, with MediaPipe's figures beside them when given
/// (`tests/golden/vision/mediapipe_bench.json` format: `threads.N.images.X.landmarker_ms`).
pub fn vision_table(runs: &[VisionRun], mediapipe: Option<&serde_json::Value>) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<9} {:>3} | {:>8} {:>8} {:>8} {:>8} | {:>9} | {:>9} {:>6}",
        "precision",
        "thr",
        "detect",
        "mesh",
        "blendsh",
        "classif",
        "per face",
        "MediaPipe",
        "ratio"
    );
    for r in runs {
        let mp = mediapipe.and_then(|m| mediapipe_per_face(m, r.threads, &r.images));
        let (mp_s, ratio) = match mp {
            Some(v) => (format!("{v:.2}"), format!("{:.2}", r.total_per_face_ms / v)),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            s,
            "{:<9} {:>3} | {:>8.2} {:>8.2} {:>8.2} {:>8.2} | {:>9.2} | {:>9} {:>6}",
            r.precision,
            r.threads,
            r.detect_ms,
            r.mesh_ms,
            r.blendshapes_ms,
            r.classifier_ms,
            r.total_per_face_ms,
            mp_s,
            ratio
        );
    }
    let _ = writeln!(
        s,
        "ms, medians: detect per frame, mesh per candidate box, blendshapes (+AUs) and classifier per face;\n\
         per face = whole-frame median / faces, averaged over the images with faces. MediaPipe = \
         FaceLandmarker.detect() per face on the same images (its detector + mesh + blendshapes, no classifier)."
    );
    for r in runs.iter().take(1) {
        for i in &r.images {
            let _ = writeln!(
                s,
                "  {} ({}x{}): {} face(s), {} candidate box(es)",
                i.image, i.width, i.height, i.faces, i.candidates
            );
        }
    }
    s
}

/// MediaPipe's per-face latency for `threads` on the same images (mean over images with faces
/// of median ÷ faces), if the JSON has all of them.
pub fn mediapipe_per_face(
    m: &serde_json::Value,
    threads: usize,
    images: &[VisionImageRun],
) -> Option<f64> {
    let t = m.get("threads")?.get(threads.to_string())?.get("images")?;
    let mut v = Vec::new();
    for i in images.iter().filter(|i| i.faces > 0) {
        let e = t.get(&i.image)?;
        let faces = e.get("faces")?.as_f64()?;
        v.push(e.get("landmarker_ms")?.get("median")?.as_f64()? / faces.max(1.0));
    }
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Latency distribution of one stage, milliseconds per call.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Latency {
    pub n: usize,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(v: &mut [f64]) -> Latency {
        if v.is_empty() {
            return Latency::default();
        }
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        Latency {
            n: v.len(),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p50: q(0.5),
            p95: q(0.95),
            p99: q(0.99),
            max: v[v.len() - 1],
        }
    }
}

/// The CoT stage the end-to-end benchmark runs per face.
pub enum BenchCot {
    Off,
    /// The Exp-CoT engine's condensed line.
    Engine,
    Llm(Box<crate::cot::llm::LlmStage>),
}

/// End-to-end figures (`expllm bench` without `--stage`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineRun {
    pub input: String,
    pub board: Option<String>,
    pub cpu: String,
    pub cpu_features: Vec<String>,
    pub kernel_path: String,
    pub threads: usize,
    pub vision: String,
    pub cot: String,
    pub warmup_frames: usize,
    pub frames: usize,
    /// Faces labelled in the measured frames.
    pub labels: usize,
    pub cots: usize,
    /// Model loading, then from the start of the command to the first published label
    /// (loading included; `None` when no frame had a face).
    pub load_ms: f64,
    pub startup_to_first_label_ms: Option<f64>,
    /// Per stage, per call: capture = read + decode + colour conversion of one frame;
    /// detect per frame; mesh, blendshapes (+ AUs), classifier per frame (all its faces);
    /// label_path = capture + vision of one frame (what a label waits for); CoT per face.
    pub capture: Latency,
    pub detect: Latency,
    pub mesh: Latency,
    pub blendshapes: Latency,
    pub classifier: Latency,
    pub label_path: Latency,
    pub cot_prefill: Latency,
    pub cot_decode: Latency,
    pub cot_total: Latency,
    /// Label path throughput (capture + vision on one thread; the daemon runs the CoT on its
    /// own thread, so it does not slow the labels).
    pub frames_per_s: f64,
    pub labels_per_s: f64,
    /// CoT thread throughput: CoTs per second of CoT work.
    pub cots_per_s: f64,
    /// LLM generated tokens per second of decode, prompt tokens per second of prefill.
    pub decode_tokens_per_s: f64,
    pub prefill_tokens_per_s: f64,
    pub mean_cot_tokens: f64,
    /// VmHWM of this process at the end, MiB.
    pub peak_rss_mib: f64,
}

/// Peak resident set size of this process (VmHWM), MiB; 0 where /proc is missing.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// What [`pipeline`] needs besides the stages.
pub struct PipelineOptions<'a> {
    /// Opens the input afresh (it is re-opened at its end until enough frames were read).
    pub open: &'a mut dyn FnMut() -> Result<Box<dyn crate::capture::Source>>,
    pub warmup: usize,
    pub frames: usize,
    /// When the command started (for start-up to first label) and what loading took.
    pub started: Instant,
    pub load_ms: f64,
    pub progress: &'a mut dyn FnMut(usize, usize),
}

/// Runs capture → vision → (per face) CoT on one thread, frame after frame, the very stages
/// the daemon runs, and times each. The first `warmup` frames are not counted.
pub fn pipeline(
    o: PipelineOptions,
    vision: &mut dyn crate::vision::VisionStage,
    cot: &mut BenchCot,
) -> Result<PipelineRun> {
    use crate::capture::CaptureError;
    use crate::cot::{engine, CotJob, CotStage};
    let mut source = (o.open)()?;
    let input = source.describe();
    let mut rgb = Vec::new();
    let mut faces = Vec::new();
    let mut first_label = None;
    let (mut cap, mut det, mut mesh, mut bs, mut cls, mut path) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut pre, mut dec, mut tot) = (vec![], vec![], vec![]);
    let (mut labels, mut cots, mut cot_tokens) = (0usize, 0usize, 0usize);
    let (mut gen, mut prompt_new) = (0usize, 0usize);
    let mut path_wall = 0.0f64;
    let total = o.warmup + o.frames;
    let mut done = 0usize;
    let mut empty_reopens = 0;
    while done < total {
        rgb.clear();
        let t0 = Instant::now();
        let size = match source.read_frame(&mut rgb) {
            Ok(Some(s)) => {
                empty_reopens = 0;
                s
            }
            Ok(None) => {
                empty_reopens += 1;
                anyhow::ensure!(empty_reopens < 2, "{input}: no frame could be read");
                source = (o.open)()?;
                continue;
            }
            Err(CaptureError::Corrupt(m)) => {
                log::warn!("bench: skipped {m}");
                continue;
            }
            Err(CaptureError::Fatal(e)) => return Err(e),
            // A benchmark does not wait for a camera to come back: its figures would mix in
            // the outage.
            Err(e @ CaptureError::Lost(_)) => anyhow::bail!("{input}: {e}"),
        };
        let capture_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut frame = crate::frame::Frame::new(size.width, size.height, std::mem::take(&mut rgb));
        let t1 = Instant::now();
        vision.process(&frame, &mut faces)?;
        let vision_ms = t1.elapsed().as_secs_f64() * 1e3;
        rgb = std::mem::take(&mut frame.rgb);
        if first_label.is_none() && !faces.is_empty() {
            first_label = Some(o.started.elapsed().as_secs_f64() * 1e3);
        }
        let measured = done >= o.warmup;
        if measured {
            cap.push(capture_ms);
            path.push(capture_ms + vision_ms);
            path_wall += capture_ms + vision_ms;
            if let Some(st) = vision.last_times() {
                det.push(st.detect as f64);
                if st.candidates > 0 {
                    mesh.push(st.mesh as f64);
                }
                if st.faces > 0 {
                    bs.push(st.blendshapes as f64);
                    cls.push(st.classifier as f64);
                }
            }
            labels += faces.len();
        }
        for f in &faces {
            let job = CotJob {
                seq: done as u64,
                ts_ms: 0,
                face_id: f.face_id,
                label: f.label,
                scores: f.scores,
                classifier: f.classifier,
                aus: f.aus,
                captured: t0,
                queued: Instant::now(),
            };
            let t = Instant::now();
            let (text, trace) = match cot {
                BenchCot::Off => break,
                BenchCot::Engine => (engine::explain(&f.aus, &f.classifier).condensed, None),
                BenchCot::Llm(s) => {
                    let c = s.explain(&job)?;
                    (c.text, Some(s.last_trace().clone()))
                }
            };
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if measured {
                cots += 1;
                tot.push(ms);
                cot_tokens += match cot {
                    BenchCot::Llm(s) => s.count_tokens(&text),
                    _ => text.split_whitespace().count(),
                };
                if let Some(tr) = trace.filter(|t| t.ran) {
                    pre.push(tr.prefill_ms);
                    dec.push(tr.decode_ms);
                    gen += tr.generated_tokens;
                    prompt_new += tr.prompt_tokens - tr.reused_tokens;
                }
            }
        }
        done += 1;
        (o.progress)(done, total);
    }
    let sum = |v: &[f64]| v.iter().sum::<f64>();
    let per_s = |n: usize, ms: f64| if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 };
    let (pre_ms, dec_ms, tot_ms) = (sum(&pre), sum(&dec), sum(&tot));
    Ok(PipelineRun {
        input,
        board: None,
        cpu: String::new(),
        cpu_features: kernels::cpu_features()
            .iter()
            .map(|s| s.to_string())
            .collect(),
        kernel_path: kernels::active().as_str().into(),
        threads: pool::threads(),
        vision: vision.name().into(),
        cot: match cot {
            BenchCot::Off => "off",
            BenchCot::Engine => "engine-condensed",
            BenchCot::Llm(_) => "llm",
        }
        .into(),
        warmup_frames: o.warmup,
        frames: o.frames,
        labels,
        cots,
        load_ms: o.load_ms,
        startup_to_first_label_ms: first_label,
        frames_per_s: per_s(cap.len(), path_wall),
        labels_per_s: per_s(labels, path_wall),
        cots_per_s: per_s(cots, tot_ms),
        decode_tokens_per_s: per_s(gen, dec_ms),
        prefill_tokens_per_s: per_s(prompt_new, pre_ms),
        mean_cot_tokens: if cots > 0 {
            cot_tokens as f64 / cots as f64
        } else {
            0.0
        },
        capture: Latency::of(&mut cap),
        detect: Latency::of(&mut det),
        mesh: Latency::of(&mut mesh),
        blendshapes: Latency::of(&mut bs),
        classifier: Latency::of(&mut cls),
        label_path: Latency::of(&mut path),
        cot_prefill: Latency::of(&mut pre),
        cot_decode: Latency::of(&mut dec),
        cot_total: Latency::of(&mut tot),
        peak_rss_mib: peak_rss_mib(),
    })
}

/// The human table of one [`pipeline`] run.
pub fn pipeline_table(r: &PipelineRun) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "input {} — {} frames measured after {} warm-up; vision {}, CoT {}",
        r.input, r.frames, r.warmup_frames, r.vision, r.cot
    );
    let _ = writeln!(
        s,
        "CPU {} [{}]; kernel path {}, {} thread(s){}",
        r.cpu,
        r.cpu_features.join(" "),
        r.kernel_path,
        r.threads,
        r.board
            .as_ref()
            .map(|b| format!(", board {b}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "\nstage (ms per call)        n     mean      p50      p95      p99      max"
    );
    for (name, l) in [
        ("capture+decode /frame", &r.capture),
        ("detect /frame", &r.detect),
        ("mesh /frame", &r.mesh),
        ("blendshapes+AUs /frame", &r.blendshapes),
        ("classifier /frame", &r.classifier),
        ("label path /frame", &r.label_path),
        ("CoT prefill /face", &r.cot_prefill),
        ("CoT decode /face", &r.cot_decode),
        ("CoT total /face", &r.cot_total),
    ] {
        if l.n > 0 {
            let _ = writeln!(
                s,
                "{name:<24} {:>5} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                l.n, l.mean, l.p50, l.p95, l.p99, l.max
            );
        }
    }
    let _ = writeln!(
        s,
        "\nframes/s {:.2} · labels/s {:.2} (label path, one thread) · CoTs/s {:.2} (CoT thread) · \
decode {:.1} tok/s · prefill {:.1} tok/s · {:.1} tokens per CoT",
        r.frames_per_s,
        r.labels_per_s,
        r.cots_per_s,
        r.decode_tokens_per_s,
        r.prefill_tokens_per_s,
        r.mean_cot_tokens
    );
    let _ = writeln!(
        s,
        "models loaded in {:.0} ms · start-up to first label {} · peak RSS {:.1} MiB",
        r.load_ms,
        r.startup_to_first_label_ms
            .map_or("n/a (no face in the input)".into(), |m| format!(
                "{m:.0} ms"
            )),
        r.peak_rss_mib
    );
    s
}
