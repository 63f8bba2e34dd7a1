//! Pipeline tests with fake sources and stages: real threads, queues and publisher, no models.

use super::*;
use crate::capture::FrameSize;
use crate::cot::{Cot, CotSource};
use crate::publish::LineFormat;
use std::io::{self, Write};

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);
impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
impl Sink {
    fn lines(&self) -> Vec<(String, serde_json::Value)> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.split_terminator('\n')
            .map(|l| {
                let (t, j) = l
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("no topic in {l:?}"));
                (
                    t.to_string(),
                    serde_json::from_str(j).unwrap_or_else(|e| panic!("bad JSON {j:?}: {e}")),
                )
            })
            .collect()
    }
    fn count(&self, topic: &str) -> usize {
        self.lines().iter().filter(|(t, _)| t == topic).count()
    }
}

struct Broken;
impl Write for Broken {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::BrokenPipe.into())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Synthetic frames; `None` items are corrupt frames; `limit: None` never ends.
struct FakeSource {
    n: u64,
    limit: Option<u64>,
    corrupt_every: Option<u64>,
    fatal_at: Option<u64>,
    /// Report `Lost` here (and keep the default, failing `reopen`).
    lost_at: Option<u64>,
    live: bool,
    delay: Duration,
}
impl FakeSource {
    fn new(limit: Option<u64>, live: bool) -> Self {
        FakeSource {
            n: 0,
            limit,
            corrupt_every: None,
            fatal_at: None,
            lost_at: None,
            live,
            delay: Duration::ZERO,
        }
    }
}
impl Source for FakeSource {
    fn read_frame(&mut self, rgb: &mut Vec<u8>) -> Result<Option<FrameSize>, CaptureError> {
        std::thread::sleep(self.delay);
        if self.limit.is_some_and(|l| self.n >= l) {
            return Ok(None);
        }
        self.n += 1;
        if self.fatal_at == Some(self.n) {
            return Err(CaptureError::Fatal(anyhow::anyhow!("camera unplugged")));
        }
        if self.lost_at == Some(self.n) {
            return Err(CaptureError::Lost(anyhow::anyhow!("camera unplugged")));
        }
        if self.corrupt_every.is_some_and(|k| self.n.is_multiple_of(k)) {
            return Err(CaptureError::Corrupt("bad frame".into()));
        }
        rgb.resize(4 * 2 * 3, self.n as u8);
        Ok(Some(FrameSize {
            width: 4,
            height: 2,
        }))
    }
    fn is_live(&self) -> bool {
        self.live
    }
    fn describe(&self) -> String {
        "fake".into()
    }
}

/// One face per frame, label cycling; optional per-frame delay.
struct OneFace(Duration);
impl VisionStage for OneFace {
    fn process(&mut self, frame: &Frame, faces: &mut Vec<FaceObservation>) -> anyhow::Result<()> {
        std::thread::sleep(self.0);
        faces.clear();
        let label = (frame.seq % 7) as usize;
        let mut scores = [0.0; 7];
        scores[label] = 0.9;
        faces.push(FaceObservation {
            face_id: 1,
            bbox: [1.0, 2.0, 3.0, 4.0],
            label,
            scores,
            aus: [0.5; crate::au::N_AUS],
            ..Default::default()
        });
        Ok(())
    }
    fn name(&self) -> &'static str {
        "one-face"
    }
}

/// Blocks each explanation until the sink holds `wait_for` expression lines (or 10 s pass).
struct GatedCot {
    sink: Sink,
    wait_for: usize,
}
impl CotStage for GatedCot {
    fn explain(&mut self, job: &CotJob) -> anyhow::Result<Cot> {
        let t0 = Instant::now();
        while self.sink.count("expllm/cam0/expression") < self.wait_for {
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(10),
                "labels waited for the CoT stage"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(Cot {
            label: job.label,
            text: format!("AU12 C → {}", LABELS[job.label]),
            source: CotSource::Engine,
            faithful: true,
            replaced: false,
        })
    }
    fn name(&self) -> &'static str {
        "gated"
    }
}

fn cfg(lossless: bool) -> DaemonConfig {
    DaemonConfig {
        camera: "cam0".into(),
        frame_queue: 2,
        cot_queue: 2,
        lossless,
        heartbeat: Duration::ZERO,
        max_frames: None,
        status: true,
        detail: false,
        cot_every: Duration::ZERO,
        cot_always: false,
        annotate: None,
        reconnect: Backoff {
            first: Duration::from_millis(1),
            cap: Duration::from_millis(20),
        },
        info: RunInfo {
            version: "test",
            source: "fake".into(),
            board: None,
            threads: 1,
            kernel_path: "scalar",
            cpu_features: vec![],
            vision: "test",
            cot: "off",
            live: false,
        },
    }
}

fn publisher(sink: &Sink) -> Arc<Publisher> {
    Arc::new(Publisher::new(
        Box::new(sink.clone()),
        "expllm",
        "cam0",
        LineFormat::TopicPayload,
    ))
}

#[test]
fn file_input_is_lossless_and_brackets_frames_with_online_and_offline() {
    let sink = Sink::default();
    let mut src = FakeSource::new(Some(30), false);
    src.corrupt_every = Some(10);
    let s = run(
        Box::new(src),
        Box::new(OneFace(Duration::from_millis(1))),
        None,
        publisher(&sink),
        cfg(false),
        Arc::default(),
    );
    assert_eq!(s.exit, Exit::EndOfInput);
    assert_eq!(
        (
            s.counts.frames_read,
            s.counts.decode_errors,
            s.counts.frames_dropped
        ),
        (27, 3, 0)
    );
    assert_eq!(s.counts.frames_processed, 27);
    let lines = sink.lines();
    assert_eq!(lines.first().unwrap().1["state"], "online");
    assert_eq!(lines.first().unwrap().1["info"]["source"], "fake");
    let (t, last) = lines.last().unwrap();
    assert_eq!(
        (t.as_str(), last["state"].as_str()),
        ("expllm/cam0/status", Some("offline"))
    );
    assert_eq!(last["counters"]["frames_processed"], 27);
    assert_eq!(last["reason"], "end of input");
    assert_eq!(sink.count("expllm/cam0/frame"), 27);
    let exprs: Vec<_> = lines
        .iter()
        .filter(|(t, _)| t == "expllm/cam0/expression")
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(exprs.len(), 27);
    // seq counts corrupt frames too, so frame 10, 20, 30 (seq 9, 19, 29) are missing
    let seqs: Vec<u64> = exprs.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert!(!seqs.contains(&9) && seqs.contains(&10) && seqs.windows(2).all(|w| w[0] < w[1]));
    let e = &exprs[3];
    assert_eq!(e["v"], 1);
    assert_eq!(e["label"], LABELS[3]);
    assert_eq!(e["scores"][LABELS[3]].as_f64().unwrap() as f32, 0.9);
    assert_eq!(e["box"], serde_json::json!([1.0, 2.0, 3.0, 4.0]));
    assert_eq!(e["aus"]["AU12"]["letter"], "C");
    assert_eq!(e["scores"].as_object().unwrap().len(), 7);
    assert_eq!(e["aus"].as_object().unwrap().len(), crate::au::N_AUS);
}

#[test]
fn live_input_drops_the_oldest_frames_when_vision_is_slow() {
    let sink = Sink::default();
    let mut src = FakeSource::new(Some(200), true);
    src.delay = Duration::from_micros(200);
    let s = run(
        Box::new(src),
        Box::new(OneFace(Duration::from_millis(3))),
        None,
        publisher(&sink),
        cfg(false),
        Arc::default(),
    );
    assert_eq!(s.counts.frames_read, 200);
    assert!(s.counts.frames_dropped > 0, "{:?}", s.counts);
    assert_eq!(s.counts.frames_processed + s.counts.frames_dropped, 200);
    // the last frame read is never the one dropped: drop-oldest keeps the newest
    let last_seq = sink
        .lines()
        .iter()
        .filter(|(t, _)| t.ends_with("/frame"))
        .map(|(_, v)| v["seq"].as_u64().unwrap())
        .max();
    assert_eq!(last_seq, Some(199));
}

#[test]
fn labels_never_wait_for_the_cot_stage_and_cot_drops_are_counted() {
    let sink = Sink::default();
    let cot = GatedCot {
        sink: sink.clone(),
        wait_for: 20,
    };
    let s = run(
        Box::new(FakeSource::new(Some(20), false)),
        Box::new(OneFace(Duration::ZERO)),
        Some(Box::new(cot)),
        publisher(&sink),
        cfg(false),
        Arc::default(),
    );
    assert_eq!(
        s.counts.errors, 0,
        "the CoT stage timed out: labels waited for it"
    );
    assert_eq!(sink.count("expllm/cam0/expression"), 20);
    let cots = sink.count("expllm/cam0/cot") as u64;
    assert_eq!(cots, s.counts.cot_published);
    assert!(s.counts.cot_dropped > 0);
    assert_eq!(cots + s.counts.cot_dropped, 20, "{:?}", s.counts);
    // the newest job survives (drop-oldest), and every CoT line comes after its label
    let lines = sink.lines();
    let last_cot = lines
        .iter()
        .rev()
        .find(|(t, _)| t.ends_with("/cot"))
        .unwrap();
    assert_eq!(last_cot.1["seq"], 19);
    assert_eq!(last_cot.1["source"], "engine");
    assert_eq!(lines.last().unwrap().1["state"], "offline");
}

#[test]
fn closed_stdout_stops_an_endless_live_source() {
    let s = run(
        Box::new(FakeSource::new(None, true)),
        Box::new(OneFace(Duration::ZERO)),
        None,
        Arc::new(Publisher::new(
            Box::new(Broken),
            "expllm",
            "cam0",
            LineFormat::TopicPayload,
        )),
        cfg(false),
        Arc::default(),
    );
    assert_eq!(s.exit, Exit::ReaderClosed);
}

#[test]
fn shutdown_flag_ends_an_endless_source_with_offline_last() {
    let sink = Sink::default();
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = {
        let (stop, sink) = (stop.clone(), sink.clone());
        std::thread::spawn(move || {
            while sink.count("expllm/cam0/frame") < 5 {
                std::thread::sleep(Duration::from_millis(1));
            }
            stop.store(true, Relaxed);
        })
    };
    let mut src = FakeSource::new(None, true);
    src.delay = Duration::from_millis(1);
    let mut c = cfg(false);
    c.heartbeat = Duration::from_millis(5);
    let s = run(
        Box::new(src),
        Box::new(OneFace(Duration::ZERO)),
        None,
        publisher(&sink),
        c,
        stop,
    );
    stopper.join().unwrap();
    assert_eq!(s.exit, Exit::Signal);
    let lines = sink.lines();
    assert_eq!(lines.last().unwrap().1["state"], "offline");
    assert_eq!(lines.last().unwrap().1["reason"], "signal");
    assert_eq!(
        lines
            .iter()
            .filter(|(_, v)| v["state"] == "offline")
            .count(),
        1
    );
}

#[test]
fn heartbeats_carry_counters() {
    let sink = Sink::default();
    let mut src = FakeSource::new(Some(40), true);
    src.delay = Duration::from_millis(2);
    let mut c = cfg(false);
    c.heartbeat = Duration::from_millis(10);
    run(
        Box::new(src),
        Box::new(OneFace(Duration::ZERO)),
        None,
        publisher(&sink),
        c,
        Arc::default(),
    );
    let beats: Vec<_> = sink
        .lines()
        .into_iter()
        .filter(|(_, v)| v["state"] == "running")
        .collect();
    assert!(!beats.is_empty());
    let last = &beats.last().unwrap().1;
    assert!(last["counters"]["frames_read"].as_u64().unwrap() > 0);
    assert!(last["fps"].as_f64().unwrap() >= 0.0);
}

#[test]
fn fatal_source_error_is_the_offline_reason() {
    let sink = Sink::default();
    let mut src = FakeSource::new(Some(10), true);
    src.fatal_at = Some(4);
    let s = run(
        Box::new(src),
        Box::new(OneFace(Duration::ZERO)),
        None,
        publisher(&sink),
        cfg(false),
        Arc::default(),
    );
    assert_eq!(s.exit, Exit::SourceFailed("camera unplugged".into()));
    assert_eq!(s.counts.frames_read, 3);
    assert_eq!(sink.lines().last().unwrap().1["reason"], "camera unplugged");
}

#[test]
fn max_frames_stops_reading() {
    let sink = Sink::default();
    let mut c = cfg(false);
    c.max_frames = Some(7);
    c.status = false;
    let s = run(
        Box::new(FakeSource::new(None, false)),
        Box::new(crate::vision::Passthrough),
        None,
        publisher(&sink),
        c,
        Arc::default(),
    );
    assert_eq!((s.exit, s.counts.frames_read), (Exit::EndOfInput, 7));
    let lines = sink.lines();
    assert_eq!(lines.len(), 7, "status off: only frame lines");
    assert!(lines
        .iter()
        .all(|(t, v)| t == "expllm/cam0/frame" && v["faces"] == 0));
}

/// Status lines (state, reason) in order.
fn states(sink: &Sink) -> Vec<(String, String)> {
    sink.lines()
        .into_iter()
        .filter(|(t, _)| t == "expllm/cam0/status")
        .map(|(_, v)| {
            (
                v["state"].as_str().unwrap().to_string(),
                v["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn faulty(src: FakeSource, script: &str) -> Box<dyn Source> {
    Box::new(FaultySource::new(
        Box::new(src),
        Script::parse(script).unwrap(),
    ))
}

use crate::capture::fault::{FaultySource, Script};

#[test]
fn camera_lost_then_back_is_waiting_then_online_and_frames_go_on() {
    let sink = Sink::default();
    // frame 2 corrupt, frame 3 late, camera gone before frame 5 and back on the 4th re-open
    let src = faulty(
        FakeSource::new(Some(20), true),
        "corrupt@2,stall=30ms@3,gone=3@5",
    );
    let s = run(
        src,
        Box::new(OneFace(Duration::ZERO)),
        None,
        publisher(&sink),
        cfg(true),
        Arc::default(),
    );
    assert_eq!(s.exit, Exit::EndOfInput);
    assert_eq!(
        (
            s.counts.frames_read,
            s.counts.frames_processed,
            s.counts.decode_errors,
            s.counts.reconnects,
            s.counts.errors
        ),
        (20, 20, 1, 1, 0)
    );
    let st = states(&sink);
    let names: Vec<&str> = st.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(names, ["online", "waiting", "online", "offline"], "{st:?}");
    assert!(
        st[1].1.starts_with("camera lost: ") && st[1].1.contains("camera disconnected"),
        "{st:?}"
    );
    assert_eq!(st[2].1, "reconnected");
    assert_eq!(st[3].1, "end of input");
    let lines = sink.lines();
    let back = lines
        .iter()
        .position(|(_, v)| v["state"] == "online" && v["reason"] == "reconnected")
        .unwrap();
    assert_eq!(
        lines[back].1["info"]["source"], "fake",
        "online again carries info"
    );
    assert_eq!(lines[back].1["counters"]["reconnects"], 1);
    // seq 0..=20 without 2 (corrupt); everything from 5 on comes after the camera is back
    let seqs: Vec<(usize, u64)> = lines
        .iter()
        .enumerate()
        .filter(|(_, (t, _))| t.ends_with("/frame"))
        .map(|(i, (_, v))| (i, v["seq"].as_u64().unwrap()))
        .collect();
    let want: Vec<u64> = (0..=20).filter(|&k| k != 2).collect();
    assert_eq!(seqs.iter().map(|x| x.1).collect::<Vec<_>>(), want);
    assert!(seqs.iter().filter(|x| x.1 >= 5).all(|x| x.0 > back));
}

#[test]
fn camera_lost_for_good_waits_until_shutdown_then_goes_offline() {
    let sink = Sink::default();
    let stop = Arc::new(AtomicBool::new(false));
    // Stop once two `waiting` lines are out: the one at the loss and one heartbeat.
    let stopper = {
        let (stop, sink) = (stop.clone(), sink.clone());
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while states(&sink).iter().filter(|s| s.0 == "waiting").count() < 2 {
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "no waiting heartbeat"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            stop.store(true, Relaxed);
            Instant::now()
        })
    };
    let mut c = cfg(false);
    c.heartbeat = Duration::from_millis(5);
    // A backoff of an hour: run() returning at all shows the wait is interrupted.
    c.reconnect = Backoff {
        first: Duration::from_secs(3600),
        cap: Duration::from_secs(3600),
    };
    let s = run(
        faulty(FakeSource::new(None, true), "gone@3"),
        Box::new(OneFace(Duration::ZERO)),
        None,
        publisher(&sink),
        c,
        stop,
    );
    let stopped = stopper.join().unwrap();
    // Generous: detects a wait that ignores shutdown, does not time the exit.
    assert!(stopped.elapsed() < Duration::from_secs(30));
    assert_eq!(s.exit, Exit::Signal);
    assert_eq!((s.counts.frames_read, s.counts.reconnects), (3, 0));
    let st = states(&sink);
    assert_eq!(st.first().unwrap().0, "online");
    assert_eq!(
        st.last().unwrap(),
        &("offline".to_string(), "signal".to_string())
    );
    let waiting: Vec<_> = st.iter().filter(|s| s.0 == "waiting").collect();
    assert!(waiting.len() >= 2, "{st:?}");
    assert!(waiting.iter().all(|w| w.1.starts_with("camera lost: ")));
    let first_wait = st.iter().position(|s| s.0 == "waiting").unwrap();
    assert!(
        !st[first_wait..].iter().any(|s| s.0 == "running"),
        "heartbeats say waiting while the camera is away: {st:?}"
    );
}

#[test]
fn reopen_attempts_back_off_to_the_cap() {
    let b = Backoff {
        first: Duration::from_millis(100),
        cap: Duration::from_secs(5),
    };
    let mut w = b.first;
    let mut seq = vec![w];
    for _ in 0..8 {
        w = b.next(w);
        seq.push(w);
    }
    let ms: Vec<u128> = seq.iter().map(|d| d.as_millis()).collect();
    assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    assert_eq!(Backoff::default(), b);
    let zero = Backoff {
        first: Duration::ZERO,
        cap: Duration::ZERO,
    };
    assert!(
        !zero.next(Duration::ZERO).is_zero(),
        "a zero wait would spin"
    );
}

#[test]
fn a_lost_source_that_cannot_reopen_ends_the_run_with_its_error() {
    let sink = Sink::default();
    let mut src = FakeSource::new(Some(10), true);
    src.lost_at = Some(4);
    let s = run(
        Box::new(src),
        Box::new(OneFace(Duration::ZERO)),
        None,
        publisher(&sink),
        cfg(false),
        Arc::default(),
    );
    match &s.exit {
        Exit::SourceFailed(m) => {
            assert!(
                m.starts_with("camera unplugged") && m.contains("cannot be re-opened"),
                "{m}"
            )
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(
        (s.counts.frames_read, s.counts.reconnects, s.counts.errors),
        (3, 0, 1)
    );
    let st = states(&sink);
    assert_eq!(
        st.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        ["online", "waiting", "offline"]
    );
}

#[test]
fn a_fatal_fault_and_an_injected_end_stop_the_run() {
    let sink = Sink::default();
    let s = run(
        faulty(FakeSource::new(None, true), "fatal@6"),
        Box::new(OneFace(Duration::ZERO)),
        None,
        publisher(&sink),
        cfg(true),
        Arc::default(),
    );
    assert!(
        matches!(&s.exit, Exit::SourceFailed(m) if m.contains("read failed")),
        "{:?}",
        s.exit
    );
    assert_eq!((s.counts.frames_processed, s.counts.errors), (6, 1));
    let s = run(
        faulty(FakeSource::new(None, true), "end@4"),
        Box::new(OneFace(Duration::ZERO)),
        None,
        publisher(&Sink::default()),
        cfg(true),
        Arc::default(),
    );
    assert_eq!((s.exit, s.counts.frames_processed), (Exit::EndOfInput, 4));
}
