//! Turning an `--input` argument into a [`Source`]: `-` (stdin), a V4L2 device, a directory, or
//! a file recognised by its first bytes (Y4M, JPEG/MJPEG, PNG) — never by its name alone.

use super::mjpeg::MjpegReader;
use super::still::{expand_inputs, StillSource};
use super::v4l2::{CameraConfig, V4l2Source};
use super::y4m::Y4mReader;
use super::Source;
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
}

impl InputSpec {
    pub fn parse(s: &str) -> InputSpec {
        if s == "-" {
            return InputSpec::Stdin;
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
    match spec {
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
