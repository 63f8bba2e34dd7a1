//! V4L2 cameras through the `v4l` crate: listing devices and formats, and mmap streaming of
//! MJPEG or YUYV frames, decoded straight out of the driver's buffers into RGB8.
//!
//! Owns device negotiation (format, size, frame rate) and the per-frame decode. Must not
//! retry or sleep: a lost device (ENODEV, EIO, no frame for 5 s) is a `Lost` error, and the
//! daemon decides when to call [`Source::reopen`].

use super::color::{yuyv_to_rgb, YuvRange};
use super::jpeg::decode_jpeg_into;
use super::{is_device_gone, CaptureError, FrameSize, Source};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;
use v4l::buffer::Type;
use v4l::capability::Flags;
use v4l::framesize::FrameSizeEnum;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, Format, FourCC, Fraction};

/// Pixel format to ask the camera for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelChoice {
    /// YUYV if the camera offers it at the requested size (no decode cost), else MJPEG.
    Auto,
    Mjpeg,
    Yuyv,
}

impl PixelChoice {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => PixelChoice::Auto,
            "mjpeg" | "mjpg" => PixelChoice::Mjpeg,
            "yuyv" => PixelChoice::Yuyv,
            _ => bail!("unknown camera format {s:?} (expected auto, mjpeg or yuyv)"),
        })
    }
}

/// What to open.
#[derive(Debug, Clone)]
pub struct CameraConfig {
    pub device: PathBuf,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub format: PixelChoice,
}

const MJPG: FourCC = FourCC { repr: *b"MJPG" };
const YUYV: FourCC = FourCC { repr: *b"YUYV" };

/// A streaming V4L2 camera.
pub struct V4l2Source {
    /// `None` between closing a lost device and opening it again.
    stream: Option<Stream<'static>>,
    fourcc: FourCC,
    width: u32,
    height: u32,
    stride: u32,
    fps: f64,
    desc: String,
    device: PathBuf,
    /// What was asked for, to open the device again the same way.
    cfg: CameraConfig,
}

impl V4l2Source {
    /// Open and configure the camera and start streaming with 4 mmap buffers.
    pub fn open(cfg: &CameraConfig) -> Result<Self> {
        let path = &cfg.device;
        let dev = Device::with_path(path)
            .with_context(|| format!("cannot open camera {}", path.display()))?;
        let caps = dev
            .query_caps()
            .with_context(|| format!("{} is not a V4L2 device", path.display()))?;
        if !caps.capabilities.contains(Flags::VIDEO_CAPTURE)
            || !caps.capabilities.contains(Flags::STREAMING)
        {
            bail!(
                "{} ({}) cannot stream video capture (try another /dev/video* node; `expllm run --list-cameras` lists them)",
                path.display(),
                caps.card
            );
        }
        let offered: Vec<FourCC> = dev
            .enum_formats()
            .map(|v| v.into_iter().map(|d| d.fourcc).collect())
            .unwrap_or_default();
        let wanted: Vec<FourCC> = match cfg.format {
            PixelChoice::Auto => vec![YUYV, MJPG],
            PixelChoice::Mjpeg => vec![MJPG],
            PixelChoice::Yuyv => vec![YUYV],
        };
        let mut chosen = None;
        for fourcc in wanted
            .iter()
            .filter(|f| offered.is_empty() || offered.contains(f))
        {
            let mut fmt = dev.format().context("VIDIOC_G_FMT")?;
            fmt.width = cfg.width;
            fmt.height = cfg.height;
            fmt.fourcc = *fourcc;
            let got = dev
                .set_format(&fmt)
                .with_context(|| format!("cannot set format {fourcc} on {}", path.display()))?;
            if got.fourcc == *fourcc {
                // Auto: prefer YUYV only if the camera kept (close to) the requested size.
                chosen = Some(got);
                if cfg.format != PixelChoice::Auto
                    || (got.width, got.height) == (cfg.width, cfg.height)
                {
                    break;
                }
            }
        }
        let fmt: Format = chosen.with_context(|| {
            let names: Vec<String> = offered.iter().map(|f| f.to_string()).collect();
            format!(
                "{} offers none of the formats we decode (MJPG, YUYV); it offers: {}",
                path.display(),
                names.join(", ")
            )
        })?;
        if fmt.width == 0
            || fmt.height == 0
            || fmt.width > super::MAX_DIM
            || fmt.height > super::MAX_DIM
        {
            bail!(
                "{} reports an unusable frame size {}x{}",
                path.display(),
                fmt.width,
                fmt.height
            );
        }
        if fmt.fourcc == YUYV && (!fmt.width.is_multiple_of(2) || fmt.stride < fmt.width * 2) {
            bail!(
                "{} reports a bad YUYV layout: width {} stride {}",
                path.display(),
                fmt.width,
                fmt.stride
            );
        }
        let mut fps = 0.0;
        if cfg.fps > 0 {
            if let Ok(mut params) = dev.params() {
                params.interval = Fraction::new(1, cfg.fps);
                if let Ok(p) = dev.set_params(&params) {
                    if p.interval.numerator > 0 {
                        fps = p.interval.denominator as f64 / p.interval.numerator as f64;
                    }
                }
            }
        }
        let mut stream = Stream::with_buffers(&dev, Type::VideoCapture, 4)
            .with_context(|| format!("cannot start mmap streaming on {}", path.display()))?;
        stream.set_timeout(Duration::from_secs(5));
        let desc = format!(
            "v4l2:{} \"{}\" {} {}x{} {:.0}fps",
            path.display(),
            caps.card,
            fmt.fourcc,
            fmt.width,
            fmt.height,
            fps
        );
        Ok(V4l2Source {
            stream: Some(stream),
            fourcc: fmt.fourcc,
            width: fmt.width,
            height: fmt.height,
            stride: fmt.stride,
            fps,
            desc,
            device: path.clone(),
            cfg: cfg.clone(),
        })
    }

    pub fn fps(&self) -> f64 {
        self.fps
    }
}

impl Source for V4l2Source {
    fn read_frame(&mut self, rgb: &mut Vec<u8>) -> Result<Option<FrameSize>, CaptureError> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(CaptureError::Lost(anyhow::anyhow!(
                "{}: camera closed (not re-opened yet)",
                self.device.display()
            )));
        };
        let (buf, meta) = match stream.next() {
            Ok(x) => x,
            Err(e) => {
                // Unplugged (ENODEV), a USB error (EIO) or a hung camera (timeout): closing
                // and opening the device again may bring it back. Anything else is fatal.
                let (what, lost) = match e.raw_os_error() {
                    Some(19) => ("camera disconnected (ENODEV)".to_string(), true),
                    _ if is_device_gone(&e) => (format!("camera read failed: {e}"), true),
                    _ if e.kind() == std::io::ErrorKind::TimedOut => {
                        ("no frame from camera for 5 s".to_string(), true)
                    }
                    _ => (format!("camera read failed: {e}"), false),
                };
                let e = anyhow::anyhow!("{}: {what}", self.device.display());
                return Err(if lost {
                    CaptureError::Lost(e)
                } else {
                    CaptureError::Fatal(e)
                });
            }
        };
        let used = (meta.bytesused as usize).min(buf.len());
        let data = if used > 0 { &buf[..used] } else { buf };
        if self.fourcc == MJPG {
            decode_jpeg_into(data, rgb)
                .map(Some)
                .map_err(CaptureError::Corrupt)
        } else {
            // V4L2 YUYV from UVC cameras is limited range BT.601.
            yuyv_to_rgb(
                data,
                self.width,
                self.height,
                self.stride as usize,
                YuvRange::Limited,
                rgb,
            )
            .map_err(CaptureError::Corrupt)?;
            Ok(Some(FrameSize {
                width: self.width,
                height: self.height,
            }))
        }
    }

    fn is_live(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        self.desc.clone()
    }

    /// Close the device (unmapping the buffers, so the new open is not refused as busy) and
    /// open the same node with the same requested format. Every failure is `Lost`: a camera
    /// being plugged back in goes through "no node", "permission denied" (udev not done yet)
    /// and "busy" before it streams again.
    fn reopen(&mut self) -> Result<(), CaptureError> {
        self.stream = None;
        let fresh = V4l2Source::open(&self.cfg).map_err(CaptureError::Lost)?;
        if (fresh.fourcc, fresh.width, fresh.height) != (self.fourcc, self.width, self.height) {
            log::warn!("camera re-opened as {} (was {})", fresh.desc, self.desc);
        }
        *self = fresh;
        Ok(())
    }
}

/// `/dev/video*` nodes, sorted by number.
fn video_nodes() -> Vec<PathBuf> {
    let mut nodes: Vec<(u32, PathBuf)> = std::fs::read_dir("/dev")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let n: u32 = name.strip_prefix("video")?.parse().ok()?;
                    Some((n, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    nodes.into_iter().map(|(_, p)| p).collect()
}

/// Human-readable listing of every V4L2 capture device, its formats, sizes and frame rates.
/// Returns an empty list when there are none.
pub fn list_cameras() -> Vec<String> {
    let mut out = Vec::new();
    for path in video_nodes() {
        out.push(describe_device(&path));
    }
    out
}

fn describe_device(path: &Path) -> String {
    let dev = match Device::with_path(path) {
        Ok(d) => d,
        Err(e) => return format!("{}  cannot open: {e}", path.display()),
    };
    let caps = match dev.query_caps() {
        Ok(c) => c,
        Err(e) => return format!("{}  not a V4L2 device: {e}", path.display()),
    };
    let mut s = format!(
        "{}  \"{}\" ({}, {})",
        path.display(),
        caps.card,
        caps.driver,
        caps.bus
    );
    if !caps.capabilities.contains(Flags::VIDEO_CAPTURE) {
        s.push_str("  [no video capture: metadata or output node]");
        return s;
    }
    for f in dev.enum_formats().unwrap_or_default() {
        let usable = f.fourcc == MJPG || f.fourcc == YUYV;
        s.push_str(&format!(
            "\n  {} {:<20}{}",
            f.fourcc,
            f.description,
            if usable {
                ""
            } else {
                " (not decoded by expllm)"
            }
        ));
        for size in dev.enum_framesizes(f.fourcc).unwrap_or_default() {
            match size.size {
                FrameSizeEnum::Discrete(d) => {
                    let rates: Vec<String> = dev
                        .enum_frameintervals(f.fourcc, d.width, d.height)
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|i| match i.interval {
                            v4l::frameinterval::FrameIntervalEnum::Discrete(fr)
                                if fr.numerator > 0 =>
                            {
                                Some(format!(
                                    "{:.0}",
                                    fr.denominator as f64 / fr.numerator as f64
                                ))
                            }
                            _ => None,
                        })
                        .collect();
                    s.push_str(&format!(
                        "\n      {}x{} @ {} fps",
                        d.width,
                        d.height,
                        rates.join(",")
                    ));
                }
                FrameSizeEnum::Stepwise(sw) => s.push_str(&format!(
                    "\n      {}x{} .. {}x{} (step {}x{})",
                    sw.min_width,
                    sw.min_height,
                    sw.max_width,
                    sw.max_height,
                    sw.step_width,
                    sw.step_height
                )),
            }
        }
    }
    s
}
