//! Turning an `--input` argument into a [`Source`]: `-` (stdin), a V4L2 device, a directory, or
//! a file recognised by its first bytes (Y4M, JPEG/MJPEG, PNG) — never by its name alone; a
//! file read in a loop (`--loop`); `fault:SCRIPT:INPUT` for fault injection ([`super::fault`]).

use super::fault::{FaultySource, Script};
use super::mjpeg::MjpegReader;
use super::still::{expand_inputs, StillSource};
use super::v4l2::{CameraConfig, V4l2Source};
use super::y4m::Y4mReader;
use super::{CaptureError, FrameSize, Source};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Largest single MJPEG frame accepted from a stream.
pub const MAX_MJPEG_FRAME: usize = 16 << 20;

/// What an input turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Camera,
    Y4m,
    Mjpeg,
    Stills,
}

/// A parsed `--input` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSpec {
    Stdin,
    Camera(PathBuf),
    Path(PathBuf),
    /// `fault:SCRIPT:INPUT`: INPUT with the faults of SCRIPT injected (tests, diagnostics).
    Fault(String, Box<InputSpec>),
}

impl InputSpec {
    pub fn parse(s: &str) -> InputSpec {
        if s == "-" {
            return InputSpec::Stdin;
        }
        if let Some((script, inner)) = s
            .strip_prefix("fault:")
            .and_then(|rest| rest.split_once(':'))
        {
            return InputSpec::Fault(script.to_string(), Box::new(InputSpec::parse(inner)));
        }
        let p = PathBuf::from(s);
        let is_char_dev = {
            use std::os::unix::fs::FileTypeExt;
            std::fs::metadata(&p)
                .map(|m| m.file_type().is_char_device())
                .unwrap_or(false)
        };
        if is_char_dev || s.starts_with("/dev/video") {
            InputSpec::Camera(p)
        } else {
            InputSpec::Path(p)
        }
    }
}

fn sniff(head: &[u8]) -> Option<InputKind> {
    if head.starts_with(b"YUV4MPEG2") {
        Some(InputKind::Y4m)
    } else if head.starts_with(&[0xFF, 0xD8]) {
        Some(InputKind::Mjpeg)
    } else if head.starts_with(b"\x89PNG") {
        Some(InputKind::Stills)
    } else {
        None
    }
}

const UNKNOWN: &str =
    "expected Y4M (YUV4MPEG2), MJPEG/JPEG, PNG, a directory of images, a V4L2 device or -";

fn open_stream<R: Read + Send + 'static>(r: R, name: &str, live: bool) -> Result<Box<dyn Source>> {
    let mut br = BufReader::with_capacity(1 << 16, r);
    let head = br
        .fill_buf()
        .with_context(|| format!("cannot read {name}"))?;
    if head.is_empty() {
        bail!("{name} is empty");
    }
    match sniff(head) {
        Some(InputKind::Y4m) => Ok(Box::new(
            Y4mReader::new(br, name, live).with_context(|| format!("bad Y4M stream {name}"))?,
        )),
        Some(InputKind::Mjpeg) => Ok(Box::new(MjpegReader::new(br, name, live, MAX_MJPEG_FRAME))),
        _ => bail!("{name}: unrecognised input format ({UNKNOWN})"),
    }
}

/// Open an input. `camera` supplies size, fps and format when the input is a device.
pub fn open_input(spec: &InputSpec, camera: &CameraConfig) -> Result<(Box<dyn Source>, InputKind)> {
    open_input_with(spec, camera, false)
}

/// [`open_input`], and with `looped` a file input starts again from the top when it ends
/// (soak tests, demos); refused for cameras and stdin.
pub fn open_input_with(
    spec: &InputSpec,
    camera: &CameraConfig,
    looped: bool,
) -> Result<(Box<dyn Source>, InputKind)> {
    match spec {
        InputSpec::Fault(script, inner) => {
            let script = Script::parse(script).context("bad fault: input")?;
            let (src, kind) = open_input_with(inner, camera, looped)?;
            Ok((Box::new(FaultySource::new(src, script)), kind))
        }
        InputSpec::Path(p) if looped => {
            let (inner, kind) = open_path(p)?;
            Ok((
                Box::new(Looped {
                    path: p.clone(),
                    inner,
                    produced: false,
                }),
                kind,
            ))
        }
        _ if looped => bail!("--loop needs a file or folder input (not a camera or stdin)"),
        InputSpec::Stdin => {
            let src = open_stream(std::io::stdin(), "stdin", true)?;
            let kind = if src.describe().starts_with("y4m") {
                InputKind::Y4m
            } else {
                InputKind::Mjpeg
            };
            Ok((src, kind))
        }
        InputSpec::Camera(dev) => {
            let cfg = CameraConfig {
                device: dev.clone(),
                ..camera.clone()
            };
            Ok((Box::new(V4l2Source::open(&cfg)?), InputKind::Camera))
        }
        InputSpec::Path(p) => open_path(p),
    }
}

fn open_path(p: &Path) -> Result<(Box<dyn Source>, InputKind)> {
    let meta =
        std::fs::metadata(p).with_context(|| format!("cannot open input {}", p.display()))?;
    if meta.is_dir() {
        return Ok((
            Box::new(StillSource::new(expand_inputs(&[p.to_path_buf()])?)),
            InputKind::Stills,
        ));
    }
    let mut f =
        std::fs::File::open(p).with_context(|| format!("cannot open input {}", p.display()))?;
    let mut head = [0u8; 16];
    let n = f
        .read(&mut head)
        .with_context(|| format!("cannot read {}", p.display()))?;
    let ext = p
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    match sniff(&head[..n]) {
        // One .jpg is a still (its file name goes into the output); other JPEG files are
        // treated as concatenated MJPEG streams (a single JPEG is a one-frame stream).
        Some(InputKind::Mjpeg) if matches!(ext.as_deref(), Some("jpg" | "jpeg")) => Ok((
            Box::new(StillSource::new(vec![p.to_path_buf()])),
            InputKind::Stills,
        )),
        Some(InputKind::Stills) => Ok((
            Box::new(StillSource::new(vec![p.to_path_buf()])),
            InputKind::Stills,
        )),
        Some(kind) => {
            let f = std::fs::File::open(p)
                .with_context(|| format!("cannot open input {}", p.display()))?;
            Ok((open_stream(f, &p.display().to_string(), false)?, kind))
        }
        None if n == 0 => bail!("input {} is empty", p.display()),
        None => bail!("{}: unrecognised input format ({UNKNOWN})", p.display()),
    }
}

/// A file input read again from the top each time it ends.
struct Looped {
    path: PathBuf,
    inner: Box<dyn Source>,
    /// Whether this pass gave a frame: a pass without one ends the loop instead of spinning.
    produced: bool,
}

impl Source for Looped {
    fn read_frame(&mut self, rgb: &mut Vec<u8>) -> Result<Option<FrameSize>, CaptureError> {
        loop {
            match self.inner.read_frame(rgb) {
                Ok(None) if self.produced => {
                    // Allocates the reader's buffers once per pass, not per frame.
                    self.inner = open_path(&self.path).map_err(CaptureError::Fatal)?.0;
                    self.produced = false;
                }
                Ok(Some(size)) => {
                    self.produced = true;
                    return Ok(Some(size));
                }
                r => return r,
            }
        }
    }

    fn is_live(&self) -> bool {
        self.inner.is_live()
    }

    fn describe(&self) -> String {
        format!("{} (looped)", self.inner.describe())
    }

    fn current_file(&self) -> Option<&str> {
        self.inner.current_file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::v4l2::PixelChoice;

    fn data(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name)
    }

    fn camera() -> CameraConfig {
        CameraConfig {
            device: "/dev/video0".into(),
            width: 640,
            height: 480,
            fps: 30,
            format: PixelChoice::Auto,
        }
    }

    #[test]
    fn fault_specs_parse_around_the_inner_input() {
        assert_eq!(
            InputSpec::parse("fault:corrupt@1,gone=2@3:clip.y4m"),
            InputSpec::Fault(
                "corrupt@1,gone=2@3".into(),
                Box::new(InputSpec::Path("clip.y4m".into()))
            )
        );
        assert_eq!(
            InputSpec::parse("fault:end@0:-"),
            InputSpec::Fault("end@0".into(), Box::new(InputSpec::Stdin))
        );
        // no second colon: an ordinary (odd) file name
        assert_eq!(
            InputSpec::parse("fault:x"),
            InputSpec::Path("fault:x".into())
        );
        let err = open_input(&InputSpec::parse("fault:boom@1:x.y4m"), &camera())
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("unknown event"), "{err:#}");
    }

    #[test]
    fn looped_file_starts_again_and_a_loop_needs_a_file() {
        let spec = InputSpec::Path(data("sample-160x120.y4m"));
        let (mut src, kind) = open_input_with(&spec, &camera(), true).unwrap();
        assert_eq!(kind, InputKind::Y4m);
        assert!(src.describe().ends_with("(looped)") && !src.is_live());
        let mut rgb = Vec::new();
        let mut firsts = Vec::new();
        for i in 0..35 {
            rgb.clear();
            let size = src
                .read_frame(&mut rgb)
                .unwrap()
                .expect("a looped file never ends");
            assert_eq!((size.width, size.height), (160, 120));
            if i % 10 == 0 {
                firsts.push(rgb.clone());
            }
        }
        // 10 frames per pass: every pass starts with the same frame
        assert!(firsts.windows(2).all(|w| w[0] == w[1]));
        for spec in [InputSpec::Stdin, InputSpec::Camera("/dev/video0".into())] {
            let err = open_input_with(&spec, &camera(), true).err().unwrap();
            assert!(
                format!("{err:#}").contains("--loop needs a file"),
                "{err:#}"
            );
        }
    }

    #[test]
    fn a_loop_over_nothing_but_corrupt_frames_ends() {
        let dir = std::env::temp_dir().join(format!("expllm-loop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.mjpeg");
        std::fs::write(&p, [0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3, 0xFF, 0xD9]).unwrap();
        let (mut src, _) = open_input_with(&InputSpec::Path(p), &camera(), true).unwrap();
        let mut rgb = Vec::new();
        let mut n = 0;
        loop {
            match src.read_frame(&mut rgb) {
                Ok(None) => break,
                Ok(Some(_)) => panic!("a frame from garbage"),
                Err(_) => n += 1,
            }
            assert!(n < 100, "looped over a file without frames");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
