//! The daemon's pipeline: capture thread → bounded frame queue → vision stage → label
//! published at once → CoT stage behind its own bounded queue.
//!
//! ```text
//!  capture thread ──frames──▶ [queue, drop-oldest when live] ──▶ vision (this thread)
//!                                                                  │ publish frame + expression
//!                                                                  ▼
//!                                   [CoT queue, drop-oldest] ──▶ CoT thread ──▶ publish cot
//!  heartbeat thread ──▶ publish status every `heartbeat`
//! ```
//!
//! A live source that loses its device ([`CaptureError::Lost`]: camera unplugged) is re-opened
//! by the capture thread with capped exponential backoff ([`Backoff`]) while `status` says
//! `waiting`; when it is back, `online` again and `reconnects` counts it. Shutdown interrupts
//! the wait.
//!
//! Owns threads, queues, counters, shutdown and the status messages. Must not decode, run
//! models or format lines itself: sources, stages and the publisher do that.

pub mod queue;

use crate::capture::{CaptureError, Source};
use crate::cot::{CotJob, CotStage};
use crate::frame::{now_ms, Frame, FramePool};
use crate::publish::{
    AuMap, BlendshapeMap, CotLatency, CotMsg, Counts, ExpressionMsg, FrameLatency, FrameMsg,
    LabelScores, PublishError, Publisher, RunInfo, StatusMsg, Topic, LABELS, SCHEMA_VERSION,
};
use crate::vision::{FaceObservation, VisionStage};
use queue::{BoundedQueue, Pop};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How often blocked stages look at the shutdown flag.
const POLL: Duration = Duration::from_millis(50);

/// Pipeline settings.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Camera name used in topics and `status`.
    pub camera: String,
    /// Frames held between capture and vision (≥ 1).
    pub frame_queue: usize,
    /// CoT jobs held between vision and the CoT stage (≥ 1).
    pub cot_queue: usize,
    /// Never drop frames: capture waits for the vision stage (default for files).
    pub lossless: bool,
    /// Period of `status` heartbeats; zero turns them off.
    pub heartbeat: Duration,
    /// Stop after this many frames read.
    pub max_frames: Option<u64>,
    /// Publish `status` lines (online/heartbeat/offline). `infer` turns them off.
    pub status: bool,
    /// Add blendshapes to each `expression` line.
    pub detail: bool,
    /// Explain a face again after this long even when its label has not changed (zero: only
    /// when it changes, and the first time it is seen).
    pub cot_every: Duration,
    /// Explain every face of every frame (`infer`: stills are unrelated pictures).
    pub cot_always: bool,
    /// Write an annotated PNG per processed frame into this folder (`infer --annotate`).
    pub annotate: Option<std::path::PathBuf>,
    /// Waits between attempts to re-open a lost camera.
    pub reconnect: Backoff,
    pub info: RunInfo,
}

/// Capped exponential backoff: wait `first`, then twice as long each time, at most `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    /// 0.1 s doubling to 5 s: a replugged USB camera is usually back within a second or two;
    /// one that stays away costs one open attempt per 5 s.
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(100),
            cap: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The wait after `wait`.
    pub fn next(&self, wait: Duration) -> Duration {
        // never zero: a zero wait would spin on re-open attempts
        wait.saturating_mul(2)
            .min(self.cap)
            .max(Duration::from_millis(1))
    }
}

/// Monotonic counters shared by the pipeline threads.
#[derive(Default)]
pub struct Counters {
    pub frames_read: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub frames_processed: AtomicU64,
    pub faces: AtomicU64,
    pub errors: AtomicU64,
    pub decode_errors: AtomicU64,
    pub cot_published: AtomicU64,
    pub cot_dropped: AtomicU64,
    pub cot_unfaithful: AtomicU64,
    pub reconnects: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> Counts {
        Counts {
            frames_read: self.frames_read.load(Relaxed),
            frames_dropped: self.frames_dropped.load(Relaxed),
            frames_processed: self.frames_processed.load(Relaxed),
            faces: self.faces.load(Relaxed),
            errors: self.errors.load(Relaxed),
            decode_errors: self.decode_errors.load(Relaxed),
            cot_published: self.cot_published.load(Relaxed),
            cot_dropped: self.cot_dropped.load(Relaxed),
            cot_unfaithful: self.cot_unfaithful.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
        }
    }
}

/// Why the pipeline stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The input ended (or `max_frames` was reached).
    EndOfInput,
    /// SIGTERM / SIGINT.
    Signal,
    /// The stdout reader went away (EPIPE).
    ReaderClosed,
    /// The source failed for good.
    SourceFailed(String),
}

impl Exit {
    /// The `reason` published in the `offline` status.
    pub fn reason(&self) -> &str {
        match self {
            Exit::EndOfInput => "end of input",
            Exit::Signal => "signal",
            Exit::ReaderClosed => "stdout closed",
            Exit::SourceFailed(m) => m,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub exit: Exit,
    pub counts: Counts,
}

/// State shared by the threads of one run.
struct Shared {
    publisher: Arc<Publisher>,
    counters: Counters,
    shutdown: Arc<AtomicBool>,
    reader_closed: AtomicBool,
    cfg: DaemonConfig,
    started: Instant,
    /// Why the camera is away while the capture thread re-opens it (heartbeats say `waiting`).
    lost: Mutex<Option<String>>,
}

impl Shared {
    /// Publish; EPIPE stops the whole pipeline. Other write errors are counted and logged.
    fn publish<T: serde::Serialize>(&self, topic: Topic, msg: &T) {
        match self.publisher.publish(topic, msg) {
            Ok(()) => {}
            Err(PublishError::Closed) => {
                if !self.reader_closed.swap(true, Relaxed) {
                    log::info!("stdout reader went away; stopping");
                }
                self.shutdown.store(true, Relaxed);
            }
            Err(e) => {
                self.counters.errors.fetch_add(1, Relaxed);
                log::error!("{e}");
            }
        }
    }

    fn status(&self, state: &str, reason: Option<&str>, fps: f64, with_info: bool) {
        if !self.cfg.status {
            return;
        }
        let counters = self.counters.snapshot();
        // Share of published CoTs that passed the check as generated (engine lines always do);
        // null until a CoT is published.
        let cot_faithful_rate = (counters.cot_published > 0).then(|| {
            let r = 1.0 - counters.cot_unfaithful as f64 / counters.cot_published as f64;
            (r * 10000.0).round() / 10000.0
        });
        let msg = StatusMsg {
            v: SCHEMA_VERSION,
            state,
            ts: now_ms(),
            camera: &self.cfg.camera,
            reason,
            info: with_info.then_some(&self.cfg.info),
            uptime_s: (self.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            fps: (fps * 100.0).round() / 100.0,
            cot_faithful_rate,
            counters,
        };
        self.publish(Topic::Status, &msg);
    }
}

/// Milliseconds, rounded to the microsecond (what the output carries).
fn ms(d: Duration) -> f32 {
    ((d.as_secs_f64() * 1e6).round() / 1e3) as f32
}

/// Run the pipeline until the input ends, a signal sets `shutdown`, or stdout closes.
pub fn run(
    mut source: Box<dyn Source>,
    mut vision: Box<dyn VisionStage>,
    cot: Option<Box<dyn CotStage>>,
    publisher: Arc<Publisher>,
    cfg: DaemonConfig,
    shutdown: Arc<AtomicBool>,
) -> Summary {
    let sh = Arc::new(Shared {
        publisher,
        counters: Counters::default(),
        shutdown,
        reader_closed: AtomicBool::new(false),
        cfg,
        started: Instant::now(),
        lost: Mutex::new(None),
    });
    sh.status("online", None, 0.0, true);

    let frames: Arc<BoundedQueue<Frame>> = Arc::new(BoundedQueue::new(sh.cfg.frame_queue));
    let source_error: Arc<Mutex<Option<String>>> = Arc::default();

    // Capture thread. Not joined on signal: it may be blocked in a read of stdin.
    {
        let (sh, frames, source_error) = (sh.clone(), frames.clone(), source_error.clone());
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || capture_loop(&mut *source, &sh, &frames, &source_error))
            .expect("spawn capture thread");
    }

    // Heartbeat thread.
    let hb_stop = Arc::new((Mutex::new(false), Condvar::new()));
    let heartbeat = (sh.cfg.status && !sh.cfg.heartbeat.is_zero()).then(|| {
        let (sh, hb_stop) = (sh.clone(), hb_stop.clone());
        std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || heartbeat_loop(&sh, &hb_stop))
            .expect("spawn heartbeat thread")
    });

    // CoT thread.
    let cot_jobs: Arc<BoundedQueue<CotJob>> = Arc::new(BoundedQueue::new(sh.cfg.cot_queue));
    let cot_thread = cot.map(|mut stage| {
        let (sh, jobs) = (sh.clone(), cot_jobs.clone());
        std::thread::Builder::new()
            .name("cot".into())
            .spawn(move || cot_loop(&mut *stage, &sh, &jobs))
            .expect("spawn CoT thread")
    });
    let want_cot = cot_thread.is_some();

    // Vision loop on this thread.
    let mut faces: Vec<FaceObservation> = Vec::with_capacity(8);
    let mut policy = CotPolicy::default();
    while !sh.shutdown.load(Relaxed) {
        let frame = match frames.pop_timeout(POLL) {
            Pop::Item(f) => f,
            Pop::Timeout => continue,
            Pop::Closed => break,
        };
        process_frame(
            &sh,
            &mut *vision,
            &frame,
            &mut faces,
            want_cot.then_some(&*cot_jobs),
            &mut policy,
        );
    }

    let by_signal = sh.shutdown.load(Relaxed);
    frames.close();
    if by_signal {
        frames.clear();
        cot_jobs.clear();
    }
    cot_jobs.close();
    if let Some(t) = cot_thread {
        if !by_signal {
            let _ = t.join(); // drain pending CoTs at end of input
        }
    }
    {
        let (lock, cv) = &*hb_stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }
    if let Some(t) = heartbeat {
        let _ = t.join();
    }

    let exit = if sh.reader_closed.load(Relaxed) {
        Exit::ReaderClosed
    } else if by_signal {
        Exit::Signal
    } else if let Some(e) = source_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        Exit::SourceFailed(e)
    } else {
        Exit::EndOfInput
    };
    let fps = sh.counters.frames_processed.load(Relaxed) as f64
        / sh.started.elapsed().as_secs_f64().max(1e-9);
    sh.status("offline", Some(exit.reason()), fps, false);
    // Nothing may follow `offline`: a CoT thread still running after a signal is cut off.
    sh.publisher.seal();
    Summary {
        exit,
        counts: sh.counters.snapshot(),
    }
}

fn capture_loop(
    source: &mut dyn Source,
    sh: &Shared,
    frames: &BoundedQueue<Frame>,
    error: &Mutex<Option<String>>,
) {
    let pool = FramePool::new(sh.cfg.frame_queue + 3);
    let lossless = sh.cfg.lossless || !source.is_live();
    let mut seq = 0u64;
    while !sh.shutdown.load(Relaxed) {
        if sh.cfg.max_frames.is_some_and(|m| seq >= m) {
            break;
        }
        let mut buf = pool.take();
        let t0 = Instant::now();
        match source.read_frame(&mut buf) {
            Ok(Some(size)) => {
                let mut f = Frame::new(size.width, size.height, buf).with_pool(&pool);
                f.seq = seq;
                f.captured = t0;
                f.capture_ms = ms(t0.elapsed());
                f.file = source.current_file().map(str::to_owned);
                seq += 1;
                sh.counters.frames_read.fetch_add(1, Relaxed);
                if lossless {
                    if frames.push_wait(f).is_err() {
                        break;
                    }
                } else if frames.push_drop_oldest(f).is_some() {
                    sh.counters.frames_dropped.fetch_add(1, Relaxed);
                }
            }
            Ok(None) => break,
            Err(CaptureError::Corrupt(m)) => {
                seq += 1; // the unreadable frame still had a place in the stream
                sh.counters.decode_errors.fetch_add(1, Relaxed);
                log::warn!("skipped {m}");
            }
            Err(CaptureError::Lost(e)) => match reconnect(source, sh, &e) {
                Reconnect::Back => {}
                Reconnect::Shutdown => break,
                Reconnect::Failed(m) => {
                    sh.counters.errors.fetch_add(1, Relaxed);
                    log::error!("{m}");
                    *error.lock().unwrap_or_else(|p| p.into_inner()) = Some(m);
                    break;
                }
            },
            Err(CaptureError::Fatal(e)) => {
                sh.counters.errors.fetch_add(1, Relaxed);
                log::error!("{e:#}");
                *error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{e:#}"));
                break;
            }
        }
    }
    frames.close();
}

enum Reconnect {
    Back,
    Shutdown,
    /// The source cannot be re-opened at all: the run ends with this reason.
    Failed(String),
}

/// Re-open a lost source with [`Backoff`] until it is back, says it never will be, or shutdown.
/// Publishes `waiting` (reason `camera lost: …`) at once and in heartbeats, `online` (reason
/// `reconnected`) when back. Sources that cannot re-open (files, stdin) end the run as before.
fn reconnect(source: &mut dyn Source, sh: &Shared, lost: &anyhow::Error) -> Reconnect {
    let why = format!("camera lost: {lost:#}");
    log::warn!("{why}; re-opening");
    *sh.lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
    sh.status("waiting", Some(&why), 0.0, false);
    let t0 = Instant::now();
    let mut wait = sh.cfg.reconnect.first;
    let mut attempts = 0u32;
    let outcome = loop {
        if !sleep_unless_shutdown(sh, wait) {
            break Reconnect::Shutdown;
        }
        attempts = attempts.saturating_add(1);
        match source.reopen() {
            Ok(()) => break Reconnect::Back,
            Err(CaptureError::Fatal(e)) => break Reconnect::Failed(format!("{lost:#} ({e:#})")),
            Err(e) => {
                // Every attempt at debug; at info now and then, so a long outage stays visible.
                if attempts.is_power_of_two() {
                    log::info!("camera still away after {attempts} attempts: {e}");
                } else {
                    log::debug!("re-open attempt {attempts}: {e}");
                }
            }
        }
        wait = sh.cfg.reconnect.next(wait);
    };
    *sh.lost.lock().unwrap_or_else(|p| p.into_inner()) = None;
    if let Reconnect::Back = outcome {
        sh.counters.reconnects.fetch_add(1, Relaxed);
        log::warn!(
            "camera back after {:.1} s ({attempts} attempts): {}",
            t0.elapsed().as_secs_f64(),
            source.describe()
        );
        sh.status("online", Some("reconnected"), 0.0, true);
    }
    outcome
}

/// Sleep `d` in slices of [`POLL`]; false if shutdown was asked for meanwhile.
fn sleep_unless_shutdown(sh: &Shared, d: Duration) -> bool {
    let end = Instant::now() + d;
    loop {
        if sh.shutdown.load(Relaxed) {
            return false;
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(POLL));
    }
}

fn process_frame(
    sh: &Shared,
    vision: &mut dyn VisionStage,
    frame: &Frame,
    faces: &mut Vec<FaceObservation>,
    cot_jobs: Option<&BoundedQueue<CotJob>>,
    policy: &mut CotPolicy,
) {
    let t_pop = Instant::now();
    let ok = match vision.process(frame, faces) {
        Ok(()) => true,
        Err(e) => {
            faces.clear();
            sh.counters.errors.fetch_add(1, Relaxed);
            log::warn!("vision failed on frame {}: {e:#}", frame.seq);
            false
        }
    };
    let t_done = Instant::now();
    let lat = FrameLatency {
        capture: frame.capture_ms,
        queue: ((ms(t_pop.saturating_duration_since(frame.captured)) - frame.capture_ms).max(0.0)
            * 1e3)
            .round()
            / 1e3,
        vision: ms(t_done - t_pop),
        total: ms(t_done - frame.captured),
    };
    sh.counters.frames_processed.fetch_add(1, Relaxed);
    if !ok {
        return;
    }
    sh.counters.faces.fetch_add(faces.len() as u64, Relaxed);
    let file = frame.file.as_deref();
    if sh.publisher.frame_topic() {
        let msg = FrameMsg {
            v: SCHEMA_VERSION,
            seq: frame.seq,
            ts: frame.ts_ms,
            width: frame.width,
            height: frame.height,
            faces: faces.len(),
            file,
            latency_ms: lat,
        };
        sh.publish(Topic::Frame, &msg);
    }
    for face in faces.iter() {
        let label = LABELS.get(face.label).copied().unwrap_or("neutral");
        let msg = ExpressionMsg {
            v: SCHEMA_VERSION,
            seq: frame.seq,
            ts: frame.ts_ms,
            face_id: face.face_id,
            label,
            score: face.scores.get(face.label).copied().unwrap_or(0.0),
            scores: LabelScores(&face.scores),
            classifier: (!face.landmarks.is_empty()).then_some(LabelScores(&face.classifier)),
            bbox: face.bbox,
            aus: AuMap(&face.aus),
            keypoints: (!face.landmarks.is_empty()).then_some(&face.keypoints),
            blendshapes: (sh.cfg.detail && !face.landmarks.is_empty())
                .then_some(BlendshapeMap(&face.blendshapes)),
            file,
            latency_ms: lat,
        };
        sh.publish(Topic::Expression, &msg);
        let due = |p: &mut CotPolicy| {
            sh.cfg.cot_always || p.due(face.face_id, face.label, sh.cfg.cot_every)
        };
        if let Some(q) = cot_jobs.filter(|_| due(policy)) {
            let job = CotJob {
                seq: frame.seq,
                ts_ms: frame.ts_ms,
                face_id: face.face_id,
                label: face.label,
                scores: face.scores,
                classifier: face.classifier,
                aus: face.aus,
                captured: frame.captured,
                queued: Instant::now(),
            };
            if q.push_drop_oldest(job).is_some() {
                sh.counters.cot_dropped.fetch_add(1, Relaxed);
            }
        }
    }
    if let Some(dir) = &sh.cfg.annotate {
        let stem = frame
            .file
            .as_deref()
            .and_then(|f| std::path::Path::new(f).file_stem())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("frame-{:06}", frame.seq));
        match crate::annotate::write(dir, &stem, frame.width, frame.height, &frame.rgb, faces) {
            Ok(p) => log::info!("annotated {}", p.display()),
            Err(e) => {
                sh.counters.errors.fetch_add(1, Relaxed);
                log::warn!("{e:#}");
            }
        }
    }
}

/// When a face gets a CoT: the first time it is seen, whenever its label changes, and (if
/// `every` is not zero) again after `every`. Remembers the last [`CotPolicy::MAX`] faces only.
#[derive(Default)]
pub struct CotPolicy {
    last: Vec<(u32, usize, Instant)>,
}

impl CotPolicy {
    pub const MAX: usize = 64;

    /// Whether face `id` with `label` is due now; records it if so.
    pub fn due(&mut self, id: u32, label: usize, every: Duration) -> bool {
        let now = Instant::now();
        match self.last.iter_mut().find(|e| e.0 == id) {
            Some(e) if e.1 == label && (every.is_zero() || now.duration_since(e.2) < every) => {
                false
            }
            Some(e) => {
                *e = (id, label, now);
                true
            }
            None => {
                if self.last.len() >= Self::MAX {
                    // Forget the face explained longest ago.
                    if let Some(k) = (0..self.last.len()).min_by_key(|&k| self.last[k].2) {
                        self.last.swap_remove(k);
                    }
                }
                self.last.push((id, label, now));
                true
            }
        }
    }
}

fn cot_loop(stage: &mut dyn CotStage, sh: &Shared, jobs: &BoundedQueue<CotJob>) {
    loop {
        let job = match jobs.pop_timeout(POLL) {
            Pop::Item(j) => j,
            Pop::Timeout if sh.shutdown.load(Relaxed) => return,
            Pop::Timeout => continue,
            Pop::Closed => return,
        };
        let t0 = Instant::now();
        match stage.explain(&job) {
            Ok(cot) => {
                let msg = CotMsg {
                    v: SCHEMA_VERSION,
                    seq: job.seq,
                    ts: job.ts_ms,
                    face_id: job.face_id,
                    label: LABELS.get(cot.label).copied().unwrap_or("neutral"),
                    text: &cot.text,
                    source: cot.source.as_str(),
                    faithful: cot.faithful,
                    latency_ms: CotLatency {
                        queue: ms(t0.saturating_duration_since(job.queued)),
                        cot: ms(t0.elapsed()),
                        total: ms(job.captured.elapsed()),
                    },
                };
                sh.publish(Topic::Cot, &msg);
                sh.counters.cot_published.fetch_add(1, Relaxed);
                if cot.replaced {
                    sh.counters.cot_unfaithful.fetch_add(1, Relaxed);
                }
            }
            Err(e) => {
                sh.counters.errors.fetch_add(1, Relaxed);
                log::warn!(
                    "CoT failed for face {} frame {}: {e:#}",
                    job.face_id,
                    job.seq
                );
            }
        }
    }
}

fn heartbeat_loop(sh: &Shared, stop: &(Mutex<bool>, Condvar)) {
    let (lock, cv) = stop;
    let mut last = (Instant::now(), 0u64);
    let mut stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let deadline = Instant::now() + sh.cfg.heartbeat;
        while !*stopped && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            stopped = cv
                .wait_timeout(stopped, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        if *stopped || sh.shutdown.load(Relaxed) {
            return;
        }
        let n = sh.counters.frames_processed.load(Relaxed);
        let fps = (n - last.1) as f64 / last.0.elapsed().as_secs_f64().max(1e-9);
        last = (Instant::now(), n);
        let lost = sh.lost.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match lost {
            Some(why) => sh.status("waiting", Some(&why), fps, false),
            None => sh.status("running", None, fps, false),
        }
    }
}

#[cfg(test)]
mod tests;
