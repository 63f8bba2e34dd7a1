//! Output: MQTT-style lines on stdout, one message per line, flushed, never a blank line.
//!
//! Owns the wire format (topics, schema version, the JSON payload structs) and the single
//! writer all stages share. Default form is `TOPIC JSON`, exactly what `mosquitto_sub -v`
//! prints; `--payload-only` prints just the JSON for `mosquitto_pub -l`. Must not know where
//! the numbers come from: stages hand it plain data.
//!
//! Every field is documented in README.md ("Output schema"); bump [`SCHEMA_VERSION`] when a
//! field changes meaning or goes away (adding a field does not bump it).

use serde::Serialize;
use std::io::{self, Write};
use std::sync::Mutex;

/// `"v"` in every payload.
pub const SCHEMA_VERSION: u32 = 1;

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    /// `expllm/cam0/expression {"v":1,...}` (like `mosquitto_sub -v`).
    TopicPayload,
    /// `{"v":1,...}` (for `mosquitto_pub -l -t TOPIC`).
    PayloadOnly,
}

/// Why publishing failed.
#[derive(Debug)]
pub enum PublishError {
    /// The reader of stdout went away (EPIPE): the daemon exits cleanly with status 0.
    Closed,
    Io(io::Error),
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::Closed => write!(f, "stdout reader closed the pipe"),
            PublishError::Io(e) => write!(f, "cannot write to stdout: {e}"),
        }
    }
}
impl std::error::Error for PublishError {}

impl From<io::Error> for PublishError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            PublishError::Closed
        } else {
            PublishError::Io(e)
        }
    }
}

/// Topic kinds under `<prefix>/<camera>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Status,
    Frame,
    Expression,
    Cot,
}

impl Topic {
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Status => "status",
            Topic::Frame => "frame",
            Topic::Expression => "expression",
            Topic::Cot => "cot",
        }
    }
}

struct Inner {
    out: Box<dyn Write + Send>,
    line: Vec<u8>,
    closed: bool,
}

/// The one writer every stage publishes through. A message is serialised and written as a
/// single `write_all` of a complete line under a lock, then flushed, so lines from the vision
/// and CoT threads never interleave.
pub struct Publisher {
    inner: Mutex<Inner>,
    format: LineFormat,
    /// `<prefix>/<camera>/` with the trailing slash.
    base: String,
    frame_topic: bool,
}

impl Publisher {
    pub fn new(out: Box<dyn Write + Send>, prefix: &str, camera: &str, format: LineFormat) -> Self {
        Publisher {
            inner: Mutex::new(Inner {
                out,
                line: Vec::with_capacity(4096),
                closed: false,
            }),
            format,
            base: format!("{}/{}/", prefix.trim_end_matches('/'), camera),
            frame_topic: true,
        }
    }

    /// Stdout, unbuffered beyond one line (each line is flushed as it is written).
    pub fn stdout(prefix: &str, camera: &str, format: LineFormat) -> Self {
        Self::new(Box::new(io::stdout()), prefix, camera, format)
    }

    /// Turn the per-frame `frame` topic on or off (default on).
    pub fn set_frame_topic(&mut self, on: bool) {
        self.frame_topic = on;
    }

    pub fn frame_topic(&self) -> bool {
        self.frame_topic
    }

    /// Refuse every later message (after `offline`, nothing may be published).
    pub fn seal(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
    }

    /// Serialise `payload` and write it as one line. After the reader has gone (EPIPE) every
    /// call returns [`PublishError::Closed`] without writing.
    pub fn publish<T: Serialize>(&self, topic: Topic, payload: &T) -> Result<(), PublishError> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.closed {
            return Err(PublishError::Closed);
        }
        let Inner { out, line, closed } = &mut *g;
        line.clear();
        if self.format == LineFormat::TopicPayload {
            line.extend_from_slice(self.base.as_bytes());
            line.extend_from_slice(topic.as_str().as_bytes());
            line.push(b' ');
        }
        // serde_json never writes a raw newline inside a string, so one message is one line.
        serde_json::to_writer(&mut *line, payload)
            .map_err(|e| PublishError::Io(io::Error::other(e)))?;
        line.push(b'\n');
        let r = out.write_all(line).and_then(|_| out.flush());
        if let Err(e) = r {
            let e = PublishError::from(e);
            if matches!(e, PublishError::Closed) {
                *closed = true;
            }
            return Err(e);
        }
        Ok(())
    }
}

/// The seven expression classes, in the classifier's output order.
pub const LABELS: [&str; 7] = [
    "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral",
];

/// `expllm/<camera>/status`: `online` at start (and when a lost camera is back), `running`
/// heartbeats, `waiting` while a lost camera is being re-opened, `offline` at exit.
#[derive(Debug, Clone, Serialize)]
pub struct StatusMsg<'a> {
    pub v: u32,
    pub state: &'a str,
    pub ts: u64,
    pub camera: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<&'a RunInfo>,
    pub uptime_s: f64,
    pub fps: f64,
    /// 1 − cot_unfaithful / cot_published; null before the first CoT.
    pub cot_faithful_rate: Option<f64>,
    pub counters: Counts,
}

/// Static facts about this run, sent with `online`.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub version: &'static str,
    pub source: String,
    pub board: Option<String>,
    pub threads: usize,
    pub kernel_path: &'static str,
    pub cpu_features: Vec<&'static str>,
    pub vision: &'static str,
    pub cot: &'static str,
    pub live: bool,
}

/// Counters since start (all monotonic).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub frames_read: u64,
    pub frames_dropped: u64,
    pub frames_processed: u64,
    pub faces: u64,
    pub errors: u64,
    pub decode_errors: u64,
    pub cot_published: u64,
    pub cot_dropped: u64,
    /// Generated CoTs that failed the faithfulness check and were replaced by the engine's.
    pub cot_unfaithful: u64,
    /// Times a lost camera was re-opened.
    pub reconnects: u64,
}

/// Milliseconds spent per stage for one message.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FrameLatency {
    /// Read + decode + colour conversion.
    pub capture: f32,
    /// Waiting in the frame queue.
    pub queue: f32,
    /// Vision stage (detect, mesh, blendshapes, AUs, classifier).
    pub vision: f32,
    /// Capture start to publish.
    pub total: f32,
}

/// `expllm/<camera>/frame`: one per processed frame (turn off with `--no-frame-topic`).
#[derive(Debug, Clone, Serialize)]
pub struct FrameMsg<'a> {
    pub v: u32,
    pub seq: u64,
    pub ts: u64,
    pub width: u32,
    pub height: u32,
    pub faces: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<&'a str>,
    pub latency_ms: FrameLatency,
}

/// `expllm/<camera>/expression`: one per face per processed frame.
#[derive(Debug, Clone, Serialize)]
pub struct ExpressionMsg<'a> {
    pub v: u32,
    pub seq: u64,
    pub ts: u64,
    pub face_id: u32,
    pub label: &'static str,
    pub score: f32,
    pub scores: LabelScores<'a>,
    /// The expression classifier's own probabilities (before fusion with the AU evidence).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classifier: Option<LabelScores<'a>>,
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    pub aus: AuMap<'a>,
    /// The detector's six keypoints in pixels (eye, eye, nose tip, mouth centre, ear, ear);
    /// absent for stages without a detector.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keypoints: Option<&'a [[f32; 2]; 6]>,
    /// MediaPipe's 52 blendshapes by name (`infer -v` / `--detail`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blendshapes: Option<BlendshapeMap<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<&'a str>,
    pub latency_ms: FrameLatency,
}

/// Blendshape scores, serialised as `{"_neutral": s, "browDownLeft": s, …}` in MediaPipe's
/// order straight from the array.
#[derive(Debug, Clone, Copy)]
pub struct BlendshapeMap<'a>(pub &'a [f32; 52]);

impl Serialize for BlendshapeMap<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = ser.serialize_map(Some(52))?;
        for (k, v) in crate::au::BLENDSHAPE_NAMES.iter().zip(self.0) {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// Per-label probabilities, serialised as `{"angry": p, …}` straight from the classifier's
/// array (no map built per face per frame).
#[derive(Debug, Clone, Copy)]
pub struct LabelScores<'a>(pub &'a [f32; 7]);

impl Serialize for LabelScores<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = ser.serialize_map(Some(7))?;
        for (k, v) in LABELS.iter().zip(self.0) {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// AU intensities, serialised as `{"AU1": {"i": …, "letter": "B"}, …}` in [`crate::au::AUS`]
/// order straight from the array.
#[derive(Debug, Clone, Copy)]
pub struct AuMap<'a>(pub &'a crate::au::AuIntensities);

impl Serialize for AuMap<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = ser.serialize_map(Some(self.0.len()))?;
        for (au, &i) in crate::au::AUS.iter().zip(self.0) {
            m.serialize_entry(
                au.key(),
                &AuValue {
                    i,
                    letter: crate::au::facs_letter(i),
                },
            )?;
        }
        m.end()
    }
}

/// One AU's intensity in [0, 1] and its FACS letter (A–E), or `-` below trace.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct AuValue {
    pub i: f32,
    pub letter: char,
}

/// `expllm/<camera>/cot`: the condensed chain of thought for one face at one frame.
#[derive(Debug, Clone, Serialize)]
pub struct CotMsg<'a> {
    pub v: u32,
    pub seq: u64,
    pub ts: u64,
    pub face_id: u32,
    pub label: &'static str,
    pub text: &'a str,
    /// `llm` or `engine` (the deterministic Exp-CoT engine).
    pub source: &'static str,
    pub faithful: bool,
    pub latency_ms: CotLatency,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CotLatency {
    /// Waiting in the CoT queue.
    pub queue: f32,
    /// Generating the text.
    pub cot: f32,
    /// Capture start to publish.
    pub total: f32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
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

    fn frame_msg(file: Option<&str>) -> FrameMsg<'_> {
        FrameMsg {
            v: 1,
            seq: 3,
            ts: 5,
            width: 4,
            height: 2,
            faces: 0,
            file,
            latency_ms: Default::default(),
        }
    }

    #[test]
    fn lines_are_topic_space_json_and_parse_back() {
        let buf = Shared::default();
        let p = Publisher::new(
            Box::new(buf.clone()),
            "expllm/",
            "cam0",
            LineFormat::TopicPayload,
        );
        p.publish(Topic::Frame, &frame_msg(Some("a \"quoted\"\nname.jpg")))
            .unwrap();
        p.publish(Topic::Frame, &frame_msg(None)).unwrap();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        assert_eq!(
            lines.len(),
            2,
            "a newline inside a string must stay escaped: {text}"
        );
        for l in lines {
            let (topic, json) = l.split_once(' ').unwrap();
            assert_eq!(topic, "expllm/cam0/frame");
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            assert_eq!(v["v"], 1);
            assert_eq!(v["seq"], 3);
        }
    }

    #[test]
    fn payload_only_has_no_topic() {
        let buf = Shared::default();
        let p = Publisher::new(Box::new(buf.clone()), "x", "c", LineFormat::PayloadOnly);
        p.publish(Topic::Frame, &frame_msg(None)).unwrap();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with('{') && text.ends_with("}\n"), "{text}");
    }

    #[test]
    fn broken_pipe_is_closed_and_sticky() {
        let p = Publisher::new(Box::new(Broken), "x", "c", LineFormat::PayloadOnly);
        assert!(matches!(
            p.publish(Topic::Frame, &frame_msg(None)),
            Err(PublishError::Closed)
        ));
        assert!(matches!(
            p.publish(Topic::Frame, &frame_msg(None)),
            Err(PublishError::Closed)
        ));
    }
}
