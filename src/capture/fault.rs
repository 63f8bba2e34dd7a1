//! Fault injection: a [`Source`] that wraps another and, on chosen reads, reports what a real
//! camera does when things go wrong — a frame that fails to decode, the device unplugged
//! (ENODEV) for a while or for good, a stall, a fatal error, the end of input. The daemon's
//! unit tests drive it directly; `--input fault:SCRIPT:INPUT` puts it in front of any input
//! for integration tests and diagnostics (README, "Fault injection").
//!
//! Owns the script language and the simulated device state. Must not sleep except for an
//! injected `stall`, and never retries: the daemon's reconnect logic is what is under test.
//!
//! # Script
//!
//! Comma-separated `EVENT@N`, where `N` is the read number the event fires at: the number of
//! frames (good or corrupt) the wrapper has handed out so far, so `N` is the `seq` the daemon
//! gives the frame that would have come next. Events at the same `N` fire in the order given.
//!
//! | event | what the daemon sees |
//! | --- | --- |
//! | `corrupt` | one `Corrupt` frame (takes a `seq`; the wrapped frame is not consumed) |
//! | `stall=DUR` | the next frame arrives `DUR` late (`250ms`, `2s`, `1.5s`) |
//! | `gone` | `Lost` (ENODEV) and every re-open fails: unplugged for good |
//! | `gone=K` | `Lost` (ENODEV); the first `K` re-opens fail (no device node), then it is back |
//! | `gone=DUR` | `Lost` (ENODEV); re-opens fail until `DUR` has passed since the loss |
//! | `fatal` | a `Fatal` I/O error (EIO) that re-opening cannot cure |
//! | `end` | end of input |
//!
//! Example: `corrupt@3,stall=200ms@5,gone=2@8` — frame 3 is unreadable, frame 5 is 200 ms
//! late, the camera vanishes before frame 8 and is back on the third re-open attempt.

use super::{CaptureError, FrameSize, Source};
use anyhow::{bail, Context, Result};
use std::io;
use std::time::{Duration, Instant};

const ENODEV: i32 = 19;
const ENOENT: i32 = 2;
const EIO: i32 = 5;

/// Longest `stall` or `gone=DUR` a script may ask for.
pub const MAX_FAULT_DURATION: Duration = Duration::from_secs(3600);
/// Most events in one script.
pub const MAX_EVENTS: usize = 1024;

/// When an unplugged device comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Back {
    Never,
    /// After this many failed re-opens (the next one succeeds).
    AfterAttempts(u32),
    /// Once this long has passed since the loss.
    After(Duration),
}

/// One injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Corrupt,
    Stall(Duration),
    Gone(Back),
    Fatal,
    End,
}

/// Faults keyed by read number, in firing order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Script {
    events: Vec<(u64, Fault)>,
}

fn duration(s: &str) -> Option<Duration> {
    let (num, unit) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    let v: f64 = num.parse().ok()?;
    let secs = v * unit;
    (secs.is_finite() && secs >= 0.0 && secs <= MAX_FAULT_DURATION.as_secs_f64())
        .then(|| Duration::from_secs_f64(secs))
}

impl Script {
    /// Faults in firing order (stable for events at the same read number).
    pub fn new(mut events: Vec<(u64, Fault)>) -> Script {
        events.sort_by_key(|e| e.0);
        Script { events }
    }

    /// Parse the script language of the module documentation.
    pub fn parse(s: &str) -> Result<Script> {
        let mut events = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (ev, at) = item
                .rsplit_once('@')
                .with_context(|| format!("fault {item:?}: expected EVENT@FRAME"))?;
            let at: u64 = at
                .parse()
                .with_context(|| format!("fault {item:?}: {at:?} is not a frame number"))?;
            let (name, arg) = match ev.split_once('=') {
                Some((n, a)) => (n, Some(a)),
                None => (ev, None),
            };
            let fault = match (name, arg) {
                ("corrupt", None) => Fault::Corrupt,
                ("fatal", None) => Fault::Fatal,
                ("end", None) => Fault::End,
                ("gone", None) => Fault::Gone(Back::Never),
                ("stall", Some(d)) => Fault::Stall(duration(d).with_context(|| {
                    format!("fault {item:?}: stall needs a duration like 250ms or 2s (≤ 1 h)")
                })?),
                ("gone", Some(a)) => match a.parse::<u32>() {
                    Ok(k) => Fault::Gone(Back::AfterAttempts(k)),
                    Err(_) => Fault::Gone(Back::After(duration(a).with_context(|| {
                        format!(
                            "fault {item:?}: gone=K (failed re-opens) or gone=DURATION (250ms, 2s; ≤ 1 h)"
                        )
                    })?)),
                },
                _ => bail!(
                    "fault {item:?}: unknown event (expected corrupt, stall=DUR, gone, gone=K, gone=DUR, fatal, end)"
                ),
            };
            if events.len() == MAX_EVENTS {
                bail!("fault script has more than {MAX_EVENTS} events");
            }
            events.push((at, fault));
        }
        if events.is_empty() {
            bail!("empty fault script (expected e.g. corrupt@3,gone=2@8)");
        }
        Ok(Script::new(events))
    }
}

/// Simulated device state while unplugged.
struct Unplugged {
    back: Back,
    since: Instant,
    failed: u32,
}

/// Wraps a source and injects the faults of a [`Script`]. Reports itself as live (it stands
/// for a camera) and re-openable.
pub struct FaultySource {
    inner: Box<dyn Source>,
    script: Script,
    /// Index of the next event to fire.
    next: usize,
    /// Frames (good or corrupt) handed out so far.
    reads: u64,
    unplugged: Option<Unplugged>,
    ended: bool,
}

impl FaultySource {
    pub fn new(inner: Box<dyn Source>, script: Script) -> Self {
        FaultySource {
            inner,
            script,
            next: 0,
            reads: 0,
            unplugged: None,
            ended: false,
        }
    }

    fn io_error(&self, code: i32, what: &str) -> anyhow::Error {
        anyhow::Error::new(io::Error::from_raw_os_error(code)).context(format!(
            "fault:{}: {what} (injected)",
            self.inner.describe()
        ))
    }
}

impl Source for FaultySource {
    fn read_frame(&mut self, rgb: &mut Vec<u8>) -> Result<Option<FrameSize>, CaptureError> {
        if self.ended {
            return Ok(None);
        }
        if self.unplugged.is_some() {
            return Err(CaptureError::Lost(
                self.io_error(ENODEV, "camera disconnected"),
            ));
        }
        while let Some(&(at, fault)) = self.script.events.get(self.next) {
            if at > self.reads {
                break;
            }
            self.next += 1;
            match fault {
                Fault::Stall(d) => std::thread::sleep(d),
                Fault::Corrupt => {
                    self.reads += 1;
                    return Err(CaptureError::Corrupt(format!(
                        "frame {at}: injected corrupt frame"
                    )));
                }
                Fault::Gone(back) => {
                    self.unplugged = Some(Unplugged {
                        back,
                        since: Instant::now(),
                        failed: 0,
                    });
                    return Err(CaptureError::Lost(
                        self.io_error(ENODEV, "camera disconnected"),
                    ));
                }
                Fault::Fatal => {
                    self.ended = true;
                    return Err(CaptureError::Fatal(self.io_error(EIO, "read failed")));
                }
                Fault::End => {
                    self.ended = true;
                    return Ok(None);
                }
            }
        }
        let r = self.inner.read_frame(rgb);
        if matches!(r, Ok(Some(_)) | Err(CaptureError::Corrupt(_))) {
            self.reads += 1;
        }
        r
    }

    fn is_live(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("fault:{}", self.inner.describe())
    }

    fn current_file(&self) -> Option<&str> {
        self.inner.current_file()
    }

    fn reopen(&mut self) -> Result<(), CaptureError> {
        let Some(u) = self.unplugged.as_mut() else {
            return Ok(());
        };
        let back = match u.back {
            Back::Never => false,
            Back::AfterAttempts(k) => u.failed >= k,
            Back::After(d) => u.since.elapsed() >= d,
        };
        if back {
            self.unplugged = None;
            return Ok(());
        }
        u.failed += 1;
        Err(CaptureError::Lost(
            self.io_error(ENOENT, "cannot open camera"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` 2×1 frames whose first byte is the frame number.
    struct Counting {
        n: u8,
        limit: u8,
    }
    impl Source for Counting {
        fn read_frame(&mut self, rgb: &mut Vec<u8>) -> Result<Option<FrameSize>, CaptureError> {
            if self.n == self.limit {
                return Ok(None);
            }
            rgb.clear();
            rgb.extend_from_slice(&[self.n, 0, 0, 0, 0, 0]);
            self.n += 1;
            Ok(Some(FrameSize {
                width: 2,
                height: 1,
            }))
        }
        fn is_live(&self) -> bool {
            false
        }
        fn describe(&self) -> String {
            "counting".into()
        }
    }

    fn faulty(script: &str, limit: u8) -> FaultySource {
        FaultySource::new(
            Box::new(Counting { n: 0, limit }),
            Script::parse(script).unwrap(),
        )
    }

    /// What each read gives: frame byte, `C` corrupt, `L` lost, `F` fatal, `E` end.
    fn trace(src: &mut FaultySource, reads: usize) -> Vec<String> {
        let mut rgb = Vec::new();
        (0..reads)
            .map(|_| match src.read_frame(&mut rgb) {
                Ok(Some(_)) => rgb[0].to_string(),
                Ok(None) => "E".into(),
                Err(CaptureError::Corrupt(_)) => "C".into(),
                Err(CaptureError::Lost(e)) => {
                    let io = e.downcast_ref::<io::Error>().expect("an io::Error inside");
                    assert_eq!(io.raw_os_error(), Some(ENODEV));
                    "L".into()
                }
                Err(CaptureError::Fatal(_)) => "F".into(),
            })
            .collect()
    }

    #[test]
    fn parses_every_event_and_rejects_bad_scripts() {
        let s =
            Script::parse("gone=3@8, corrupt@3,stall=200ms@5,gone@9,gone=1.5s@10,fatal@11,end@12")
                .unwrap();
        assert_eq!(
            s.events,
            vec![
                (3, Fault::Corrupt),
                (5, Fault::Stall(Duration::from_millis(200))),
                (8, Fault::Gone(Back::AfterAttempts(3))),
                (9, Fault::Gone(Back::Never)),
                (10, Fault::Gone(Back::After(Duration::from_millis(1500)))),
                (11, Fault::Fatal),
                (12, Fault::End),
            ]
        );
        for bad in [
            "",
            "corrupt",
            "corrupt@x",
            "boom@1",
            "stall@1",
            "stall=5@1",
            "stall=-1s@1",
            "stall=NaNs@1",
            "stall=1e300s@1",
            "gone=soon@2",
            "corrupt=1@2",
            "@3",
        ] {
            assert!(Script::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn corrupt_takes_a_frame_number_without_consuming_a_frame() {
        let mut s = faulty("corrupt@1,corrupt@1,end@5", 10);
        assert_eq!(trace(&mut s, 7), ["0", "C", "C", "1", "2", "E", "E"]);
    }

    #[test]
    fn gone_then_back_after_k_failed_reopens_resumes_where_it_was() {
        let mut s = faulty("gone=2@2", 4);
        assert_eq!(trace(&mut s, 4), ["0", "1", "L", "L"]);
        assert!(matches!(s.reopen(), Err(CaptureError::Lost(_))));
        assert!(matches!(s.reopen(), Err(CaptureError::Lost(_))));
        assert!(s.reopen().is_ok());
        assert_eq!(trace(&mut s, 3), ["2", "3", "E"]);
        assert!(
            s.reopen().is_ok(),
            "re-opening a present device is harmless"
        );
    }

    #[test]
    fn gone_for_good_never_comes_back_and_fatal_ends() {
        let mut s = faulty("gone@0", 4);
        assert_eq!(trace(&mut s, 1), ["L"]);
        for _ in 0..100 {
            assert!(matches!(s.reopen(), Err(CaptureError::Lost(_))));
        }
        let mut s = faulty("fatal@1", 4);
        assert_eq!(trace(&mut s, 3), ["0", "F", "E"]);
    }

    #[test]
    fn gone_for_a_duration_comes_back_after_it() {
        let mut s = faulty("gone=300ms@0", 2);
        assert_eq!(trace(&mut s, 1), ["L"]);
        let t0 = Instant::now();
        while s.reopen().is_err() {
            // generous: only detects "never comes back"
            assert!(t0.elapsed() < Duration::from_secs(30), "never came back");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(s.unplugged.is_none());
        assert_eq!(trace(&mut s, 3), ["0", "1", "E"]);
    }
}
