//! YUV4MPEG2 (`.y4m`) stream reader: `ffmpeg -f yuv4mpegpipe`, mjpegtools, test clips, pipes.
//!
//! Owns parsing the Y4M stream header and `FRAME` markers, reading exactly one frame of raw
//! planar YUV at a time into a reused buffer, resynchronising after a bad marker, and handing
//! the planes to [`super::color`] for the RGB conversion. Must not do colour maths itself,
//! open files or devices (it is given any `Read`), or know what the frames are used for.
//!
//! Accepted: 8-bit `C420jpeg`, `C420paldv`, `C420mpeg2`, `C420` (all read as planar 4:2:0,
//! chroma siting ignored), `C422`, `C444`, `Cmono`; `C420jpeg` when `C` is absent. Anything
//! else (`C420p10`, `C444alpha`, `C411`, …) is refused when the reader is created. Interlaced
//! streams (`It`/`Ib`/`Im`) are converted as progressive frames (fields stay woven).
//! `XCOLORRANGE=FULL` selects full-range YUV; `XCOLORRANGE=LIMITED` (what `ffmpeg` writes),
//! no `XCOLORRANGE`, or an unknown value selects limited range. The matrix is always BT.601.
//!
//! Bounds: the stream header line is at most [`MAX_HEADER_BYTES`], a `FRAME` line at most
//! [`MAX_FRAME_LINE_BYTES`]; width and height must be in `1..=MAX_DIM` and one raw frame at
//! most the reader's frame byte limit ([`DEFAULT_MAX_FRAME_BYTES`] unless given). The raw
//! buffer grows only as frame data actually arrives, so a lying header costs nothing until the
//! bytes are there.

use super::color::{self, Chroma, YuvRange};
use super::{CaptureError, FrameSize, Source, MAX_DIM};
use anyhow::{anyhow, bail};
use std::io::{self, BufRead, BufReader, Read};

/// Longest stream header line accepted (without its newline).
pub const MAX_HEADER_BYTES: usize = 4096;
/// Longest `FRAME` line accepted (without its newline); frame parameters are ignored.
pub const MAX_FRAME_LINE_BYTES: usize = 1024;
/// Default limit on one raw frame: 128 MiB admits 8192x8192 4:2:0 and 4:2:2 (not 4:4:4).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 128 << 20;
/// After a bad frame marker, give up (Fatal) if no `FRAME` marker turns up within this many
/// frame sizes of data.
const RESYNC_FRAMES: usize = 4;

/// A Y4M stream as a [`Source`].
pub struct Y4mReader<R: Read> {
    inner: BufReader<R>,
    name: String,
    live: bool,
    width: u32,
    height: u32,
    fps: Option<(u32, u32)>,
    /// Colour space as written in the header (without the `C`), for `describe`.
    colorspace: String,
    chroma: Chroma,
    range: YuvRange,
    frame_bytes: usize,
    /// Raw planar frame, reused from frame to frame.
    raw: Vec<u8>,
    /// Current header / `FRAME` line, reused.
    line: Vec<u8>,
    /// Frames read so far (good or not), for messages.
    frames: u64,
    /// A resync found a `FRAME` marker: the reader is at that frame's data.
    at_data: bool,
    done: bool,
}

/// How [`read_line_capped`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// A full line (newline consumed, not stored).
    Complete,
    /// End of input before any byte.
    Eof,
    /// End of input in the middle of a line.
    EofPartial,
    /// `cap` bytes without a newline; those bytes are consumed and stored.
    TooLong,
}

/// Read one `\n`-terminated line into `line` (cleared first), storing at most `cap` bytes.
fn read_line_capped<R: Read>(
    inner: &mut BufReader<R>,
    line: &mut Vec<u8>,
    cap: usize,
) -> io::Result<Line> {
    line.clear();
    loop {
        let buf = match inner.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(if line.is_empty() {
                Line::Eof
            } else {
                Line::EofPartial
            });
        }
        let room = cap - line.len();
        let look = buf.len().min(room + 1);
        if let Some(p) = buf[..look].iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&buf[..p]);
            inner.consume(p + 1);
            return Ok(Line::Complete);
        }
        if buf.len() > room {
            line.extend_from_slice(&buf[..room]);
            inner.consume(room);
            return Ok(Line::TooLong);
        }
        let n = buf.len();
        line.extend_from_slice(buf);
        inner.consume(n);
    }
}

/// Finds `FRAME` followed by a space or newline in a byte stream, one byte at a time.
#[derive(Default)]
struct MarkerScan(usize);

impl MarkerScan {
    /// Feed one byte. `Some(true)`: just saw `FRAME ` (parameters follow up to the newline);
    /// `Some(false)`: just saw `FRAME\n` (frame data follows).
    fn push(&mut self, b: u8) -> Option<bool> {
        if self.0 == 5 {
            self.0 = 0;
            match b {
                b'\n' => return Some(false),
                b' ' => return Some(true),
                _ => {}
            }
        }
        if b == b"FRAME"[self.0] {
            self.0 += 1;
        } else {
            self.0 = (b == b'F') as usize;
        }
        None
    }
}

/// Why resynchronisation stopped without finding a marker.
enum Resync {
    Eof,
    Lost(usize),
    Io(io::Error),
}

/// Printable start of a bad line, for a one-line message.
fn preview(bytes: &[u8]) -> String {
    let s: String = bytes
        .iter()
        .take(16)
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    if bytes.len() > 16 {
        format!("\"{s}\"…")
    } else {
        format!("\"{s}\"")
    }
}

impl<R: Read> Y4mReader<R> {
    /// Read and check the stream header. `name` is for messages and `describe`; `live` is
    /// true for pipes and stdin, false for files.
    pub fn new(reader: R, name: impl Into<String>, live: bool) -> anyhow::Result<Self> {
        Self::with_max_frame_bytes(reader, name, live, DEFAULT_MAX_FRAME_BYTES)
    }

    /// Like [`Y4mReader::new`] with a different limit on one raw frame's size in bytes.
    pub fn with_max_frame_bytes(
        reader: R,
        name: impl Into<String>,
        live: bool,
        max_frame_bytes: usize,
    ) -> anyhow::Result<Self> {
        let name = name.into();
        let mut inner = BufReader::with_capacity(64 << 10, reader);
        let mut line = Vec::with_capacity(256);
        let end = read_line_capped(&mut inner, &mut line, MAX_HEADER_BYTES)
            .map_err(|e| anyhow!("{name}: reading Y4M header: {e}"))?;
        let signed = line.starts_with(b"YUV4MPEG2") && matches!(line.get(9), None | Some(b' '));
        if end == Line::Eof {
            bail!("{name}: empty input, not a Y4M stream");
        }
        if !signed {
            bail!(
                "{name}: not a Y4M stream (starts with {}, not YUV4MPEG2)",
                preview(&line)
            );
        }
        if end == Line::TooLong {
            bail!("{name}: Y4M header longer than {MAX_HEADER_BYTES} bytes without a newline");
        }
        let (mut width, mut height, mut fps) = (None, None, None);
        let mut colorspace = "420jpeg".to_string();
        let mut range = YuvRange::Limited;
        for tok in line[9..].split(|&b| b == b' ').filter(|t| !t.is_empty()) {
            let val = std::str::from_utf8(&tok[1..]).map_err(|_| {
                anyhow!("{name}: Y4M header parameter {} is not ASCII", preview(tok))
            })?;
            match tok[0] {
                b'W' | b'H' => {
                    let what = if tok[0] == b'W' { "width" } else { "height" };
                    let v: u32 = val
                        .parse()
                        .map_err(|_| anyhow!("{name}: bad Y4M {what} {:?}", val))?;
                    if v == 0 || v > MAX_DIM {
                        bail!("{name}: Y4M {what} {v} outside 1..={MAX_DIM}");
                    }
                    *(if tok[0] == b'W' {
                        &mut width
                    } else {
                        &mut height
                    }) = Some(v);
                }
                b'F' => {
                    // Lenient: a malformed or zero rate only makes `describe` say "?fps".
                    fps = val
                        .split_once(':')
                        .and_then(|(n, d)| Some((n.parse().ok()?, d.parse().ok()?)));
                    fps = fps.filter(|&(n, d): &(u32, u32)| n > 0 && d > 0);
                }
                b'C' => colorspace = val.to_string(),
                b'X' => {
                    if let Some(v) = val.strip_prefix("COLORRANGE=") {
                        range = if v.eq_ignore_ascii_case("FULL") {
                            YuvRange::Full
                        } else {
                            if !v.eq_ignore_ascii_case("LIMITED") {
                                log::warn!(
                                    "{name}: unknown Y4M XCOLORRANGE={v}, assuming limited range"
                                );
                            }
                            YuvRange::Limited
                        };
                    }
                }
                _ => {} // I (interlacing), A (aspect), unknown tags: ignored, as the format allows
            }
        }
        let chroma = match colorspace.as_str() {
            "420jpeg" | "420paldv" | "420mpeg2" | "420" => Chroma::C420,
            "422" => Chroma::C422,
            "444" => Chroma::C444,
            "mono" => Chroma::Mono,
            other => bail!(
                "{name}: unsupported Y4M colour space C{other} (only 8-bit C420*, C422, C444, Cmono)"
            ),
        };
        let width = width.ok_or_else(|| anyhow!("{name}: Y4M header has no width (W)"))?;
        let height = height.ok_or_else(|| anyhow!("{name}: Y4M header has no height (H)"))?;
        let frame_bytes = chroma.frame_bytes(width, height);
        if frame_bytes > max_frame_bytes {
            bail!(
                "{name}: Y4M frame {width}x{height} C{colorspace} is {frame_bytes} bytes, over the {max_frame_bytes}-byte limit"
            );
        }
        // An unterminated header (EOF right after it) is a stream with no frames.
        let done = end == Line::EofPartial;
        Ok(Y4mReader {
            inner,
            name,
            live,
            width,
            height,
            fps,
            colorspace,
            chroma,
            range,
            frame_bytes,
            raw: Vec::new(),
            line,
            frames: 0,
            at_data: false,
            done,
        })
    }

    /// Frame size from the header.
    pub fn size(&self) -> FrameSize {
        FrameSize {
            width: self.width,
            height: self.height,
        }
    }

    /// Chroma layout from the header.
    pub fn chroma(&self) -> Chroma {
        self.chroma
    }

    /// YUV range from the header (`XCOLORRANGE`).
    pub fn range(&self) -> YuvRange {
        self.range
    }

    /// Frame rate `(numerator, denominator)` if the header gave a valid one.
    pub fn fps(&self) -> Option<(u32, u32)> {
        self.fps
    }

    /// Read up to `frame_bytes` of frame data into `raw`, growing it only as data arrives.
    /// Returns the number of bytes read (less than `frame_bytes` only at end of input).
    fn read_raw(&mut self) -> io::Result<usize> {
        let need = self.frame_bytes;
        if self.raw.capacity() >= need {
            self.raw.resize(need, 0); // no-op once warm
        }
        let mut got = 0;
        while got < need {
            if got == self.raw.len() {
                let grow = got.max(64 << 10).min(need - got);
                self.raw.reserve_exact(got + grow - self.raw.len());
                self.raw.resize(got + grow, 0);
            }
            let end = self.raw.len();
            match self.inner.read(&mut self.raw[got..end]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    /// After a bad `FRAME` line (still in `self.line`), find the next marker. On success the
    /// reader is at the first byte of that frame's data.
    fn resync(&mut self, line_end: Line) -> Result<(), Resync> {
        let budget = self.frame_bytes.saturating_mul(RESYNC_FRAMES).max(64 << 10);
        let mut scan = MarkerScan::default();
        let complete = line_end == Line::Complete;
        let mut scanned = self.line.len() + complete as usize;
        // The marker may sit inside the bad line itself (garbage glued before `FRAME`).
        let mut need_rest = false;
        let tail = if complete { Some(b'\n') } else { None };
        for b in self.line.iter().copied().chain(tail) {
            match scan.push(b) {
                Some(params) if complete || !params => return Ok(()),
                Some(_) => {
                    need_rest = true;
                    break;
                }
                None => {}
            }
        }
        loop {
            if need_rest {
                // `FRAME ` found: skip its parameters up to the newline.
                need_rest = false;
                match read_line_capped(&mut self.inner, &mut self.line, MAX_FRAME_LINE_BYTES) {
                    Ok(Line::Complete) => return Ok(()),
                    Ok(Line::TooLong) => scanned += MAX_FRAME_LINE_BYTES,
                    Ok(Line::Eof | Line::EofPartial) => return Err(Resync::Eof),
                    Err(e) => return Err(Resync::Io(e)),
                }
            }
            if scanned > budget {
                return Err(Resync::Lost(scanned));
            }
            let buf = match self.inner.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Resync::Io(e)),
            };
            if buf.is_empty() {
                return Err(Resync::Eof);
            }
            let mut used = buf.len();
            let mut hit = None;
            for (i, &b) in buf.iter().enumerate() {
                if let Some(params) = scan.push(b) {
                    hit = Some(params);
                    used = i + 1;
                    break;
                }
            }
            self.inner.consume(used);
            scanned += used;
            match hit {
                Some(false) => return Ok(()),
                Some(true) => need_rest = true,
                None => {}
            }
        }
    }

    fn fatal(&mut self, e: anyhow::Error) -> CaptureError {
        self.done = true;
        CaptureError::Fatal(e)
    }
}

impl<R: Read + Send> Source for Y4mReader<R> {
    fn read_frame(&mut self, rgb: &mut Vec<u8>) -> Result<Option<FrameSize>, CaptureError> {
        if self.done {
            return Ok(None);
        }
        let n = self.frames;
        if std::mem::take(&mut self.at_data) {
            return self.read_data(rgb);
        }
        let end = match read_line_capped(&mut self.inner, &mut self.line, MAX_FRAME_LINE_BYTES) {
            Ok(end) => end,
            Err(e) => {
                return Err(self.fatal(anyhow!("{}: read error before frame {n}: {e}", self.name)))
            }
        };
        match end {
            Line::Eof => {
                self.done = true;
                return Ok(None);
            }
            Line::EofPartial => {
                self.done = true;
                return Err(CaptureError::Corrupt(format!(
                    "frame {n}: stream ends inside its header {}",
                    preview(&self.line)
                )));
            }
            _ => {}
        }
        let good = end == Line::Complete
            && self.line.starts_with(b"FRAME")
            && matches!(self.line.get(5), None | Some(b' '));
        if !good {
            self.frames += 1;
            let what = format!("frame {n}: bad frame marker {}", preview(&self.line));
            return match self.resync(end) {
                Ok(()) => {
                    self.at_data = true;
                    Err(CaptureError::Corrupt(format!("{what}, resynchronised")))
                }
                Err(Resync::Eof) => {
                    self.done = true;
                    Err(CaptureError::Corrupt(format!(
                        "{what}, no further frame before end of stream"
                    )))
                }
                Err(Resync::Lost(bytes)) => Err(self.fatal(anyhow!(
                    "{}: lost sync after frame {n}: no FRAME marker in {bytes} bytes",
                    self.name
                ))),
                Err(Resync::Io(e)) => {
                    Err(self.fatal(anyhow!("{}: read error after frame {n}: {e}", self.name)))
                }
            };
        }
        self.read_data(rgb)
    }

    fn is_live(&self) -> bool {
        self.live
    }

    fn describe(&self) -> String {
        let fps = match self.fps {
            None => "?fps".to_string(),
            Some((n, 1)) => format!("{n}fps"),
            Some((n, d)) => format!("{:.2}fps", n as f64 / d as f64),
        };
        let range = if self.range == YuvRange::Full {
            " full-range"
        } else {
            ""
        };
        format!(
            "y4m:{} {}x{} {fps} C{}{range}",
            self.name, self.width, self.height, self.colorspace
        )
    }
}

impl<R: Read> Y4mReader<R> {
    /// Read the data of frame `self.frames` (its `FRAME` line is consumed) and convert it.
    fn read_data(&mut self, rgb: &mut Vec<u8>) -> Result<Option<FrameSize>, CaptureError> {
        let n = self.frames;
        let got = match self.read_raw() {
            Ok(got) => got,
            Err(e) => {
                return Err(self.fatal(anyhow!("{}: read error in frame {n}: {e}", self.name)))
            }
        };
        self.frames += 1;
        if got < self.frame_bytes {
            self.done = true;
            return Err(CaptureError::Corrupt(format!(
                "frame {n}: truncated, stream ends after {got} of {} bytes",
                self.frame_bytes
            )));
        }
        let raw = &self.raw[..self.frame_bytes];
        color::planar_frame_to_rgb(self.chroma, raw, self.width, self.height, self.range, rgb)
            .map_err(|e| CaptureError::Corrupt(format!("frame {n}: {e}")))?;
        Ok(Some(self.size()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::color::reference;
    use crate::capture::color::tests::Rng;

    /// Test encoder: a Y4M stream from a header parameter string and raw planar frames.
    fn y4m(params: &str, frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = format!("YUV4MPEG2 {params}\n").into_bytes();
        for f in frames {
            out.extend_from_slice(b"FRAME\n");
            out.extend_from_slice(f);
        }
        out
    }

    /// Random planar frame with luma in the legal 16..=235 range (so one reference applies,
    /// see `color` on sub-black luma) and chroma anywhere.
    fn frame(rng: &mut Rng, chroma: Chroma, w: u32, h: u32) -> Vec<u8> {
        let ylen = (w * h) as usize;
        let mut f = rng.plane(chroma.frame_bytes(w, h));
        f[..ylen]
            .iter_mut()
            .for_each(|v| *v = 16 + (*v as u32 * 219 / 255) as u8);
        f
    }

    /// The oracle: split the planes by hand and convert with the scalar reference.
    fn expected(chroma: Chroma, f: &[u8], w: u32, h: u32, range: YuvRange) -> Vec<u8> {
        let ylen = (w * h) as usize;
        let (cw, ch) = chroma.plane_dims(w, h);
        let clen = (cw * ch) as usize;
        let mut out = Vec::new();
        let planes = [&f[..ylen], &f[ylen..ylen + clen], &f[ylen + clen..]];
        reference::planar_to_rgb(chroma, planes, w, h, range, &mut out).unwrap();
        out
    }

    fn assert_rgb_close(got: &[u8], want: &[u8], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (*a as i32 - *b as i32).abs() <= 2,
                "{what}: byte {i}: {a} vs {b}"
            );
        }
    }

    fn reader(data: Vec<u8>) -> Y4mReader<std::io::Cursor<Vec<u8>>> {
        Y4mReader::new(std::io::Cursor::new(data), "test", false).unwrap()
    }

    /// Read to the end: `Ok` sizes, and `Err` messages for Corrupt (Fatal panics the test).
    fn drain<S: Source>(src: &mut S) -> Vec<Result<(FrameSize, Vec<u8>), String>> {
        let mut out = Vec::new();
        let mut rgb = Vec::new();
        for _ in 0..1000 {
            rgb.clear();
            match src.read_frame(&mut rgb) {
                Ok(Some(s)) => out.push(Ok((s, rgb.clone()))),
                Ok(None) => return out,
                Err(CaptureError::Corrupt(m)) => out.push(Err(m)),
                Err(CaptureError::Fatal(e) | CaptureError::Lost(e)) => {
                    panic!("unexpected fatal: {e:#}")
                }
            }
        }
        panic!("source did not end");
    }

    #[test]
    fn every_colorspace_decodes_to_reference_pixels() {
        let mut rng = Rng::new(42);
        for (cs, chroma) in [
            ("C420jpeg", Chroma::C420),
            ("C420mpeg2", Chroma::C420),
            ("C420paldv", Chroma::C420),
            ("C420", Chroma::C420),
            ("", Chroma::C420), // default
            ("C422", Chroma::C422),
            ("C444", Chroma::C444),
            ("Cmono", Chroma::Mono),
        ] {
            for (w, h) in [(16u32, 8u32), (17, 9), (1, 1), (33, 2)] {
                for (x, range) in [
                    ("", YuvRange::Limited),
                    (" XCOLORRANGE=FULL", YuvRange::Full),
                ] {
                    let frames: Vec<_> = (0..3).map(|_| frame(&mut rng, chroma, w, h)).collect();
                    let data = y4m(&format!("W{w} H{h} F25:1 Ip A1:1 {cs}{x}"), &frames);
                    let mut r = reader(data);
                    assert_eq!((r.chroma(), r.range()), (chroma, range));
                    let got = drain(&mut r);
                    assert_eq!(got.len(), 3, "{cs} {w}x{h}");
                    for (g, f) in got.iter().zip(&frames) {
                        let (size, rgb) = g.as_ref().unwrap();
                        assert_eq!((size.width, size.height), (w, h));
                        assert_rgb_close(
                            rgb,
                            &expected(chroma, f, w, h, range),
                            &format!("{cs} {w}x{h}{x}"),
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn describe_and_params() {
        let mut rng = Rng::new(1);
        let f = frame(&mut rng, Chroma::C420, 640, 480);
        let r = Y4mReader::new(
            std::io::Cursor::new(y4m("W640 H480 F25:1 C420jpeg", &[f])),
            "clip.y4m",
            false,
        )
        .unwrap();
        assert_eq!(r.describe(), "y4m:clip.y4m 640x480 25fps C420jpeg");
        assert!(!r.is_live());
        let r = Y4mReader::new(
            &b"YUV4MPEG2 H2 W4 F30000:1001 XCOLORRANGE=FULL C444 Xfoo=bar\n"[..],
            "-",
            true,
        )
        .unwrap();
        assert_eq!(r.describe(), "y4m:- 4x2 29.97fps C444 full-range");
        assert!(r.is_live());
        let r = Y4mReader::new(
            &b"YUV4MPEG2 W4 H2 F0:0 XCOLORRANGE=LIMITED\n"[..],
            "x",
            false,
        )
        .unwrap();
        assert_eq!(r.describe(), "y4m:x 4x2 ?fps C420jpeg");
        assert_eq!(r.range(), YuvRange::Limited);
    }

    #[test]
    fn buffers_are_reused_across_frames() {
        let mut rng = Rng::new(3);
        let frames: Vec<_> = (0..4)
            .map(|_| frame(&mut rng, Chroma::C420, 64, 48))
            .collect();
        let mut r = reader(y4m("W64 H48", &frames));
        let mut rgb = Vec::new();
        r.read_frame(&mut rgb).unwrap().unwrap();
        let (raw_ptr, rgb_ptr) = (r.raw.as_ptr(), rgb.as_ptr());
        for _ in 0..3 {
            rgb.clear();
            r.read_frame(&mut rgb).unwrap().unwrap();
            assert_eq!(
                (r.raw.as_ptr(), rgb.as_ptr()),
                (raw_ptr, rgb_ptr),
                "no per-frame allocation"
            );
        }
        assert!(r.read_frame(&mut rgb).unwrap().is_none());
    }

    #[test]
    fn frame_params_are_accepted() {
        let mut rng = Rng::new(4);
        let f = frame(&mut rng, Chroma::C420, 8, 4);
        let mut data = b"YUV4MPEG2 W8 H4\nFRAME Ip Xsomething=1\n".to_vec();
        data.extend_from_slice(&f);
        let got = drain(&mut reader(data));
        assert_eq!(got.len(), 1);
        assert!(got[0].is_ok());
    }

    #[test]
    fn truncated_last_frame_is_corrupt_then_eof() {
        let mut rng = Rng::new(5);
        let frames: Vec<_> = (0..3)
            .map(|_| frame(&mut rng, Chroma::C420, 20, 10))
            .collect();
        let mut data = y4m("W20 H10", &frames);
        data.truncate(data.len() - 7);
        let mut r = reader(data);
        let got = drain(&mut r);
        assert_eq!(got.len(), 3);
        assert!(got[0].is_ok() && got[1].is_ok());
        let msg = got[2].as_ref().unwrap_err();
        assert!(
            msg.contains("truncated") && msg.contains("293 of 300"),
            "{msg}"
        );
        let mut rgb = Vec::new();
        assert!(r.read_frame(&mut rgb).unwrap().is_none(), "stays at EOF");
        // Cut inside the FRAME line too.
        let mut data = y4m("W20 H10", &frames[..1]);
        data.extend_from_slice(b"FRA");
        let got = drain(&mut reader(data));
        assert_eq!(got.len(), 2);
        assert!(got[0].is_ok() && got[1].is_err());
    }

    #[test]
    fn garbage_between_frames_is_one_corrupt_then_next_frame() {
        let mut rng = Rng::new(6);
        let (w, h) = (24u32, 16u32);
        let frames: Vec<_> = (0..4)
            .map(|_| frame(&mut rng, Chroma::C420, w, h))
            .collect();
        for garbage in [
            &b"garbage!!"[..],         // glued before the next FRAME
            &b"junk\nmore junk\n"[..], // whole lines
            &b"FRAMX\nFRAMEFRAM"[..],  // near-misses
            &[0xFFu8; 2000][..],       // binary, longer than a FRAME line
        ] {
            let mut data = y4m(&format!("W{w} H{h}"), &frames[..2]);
            data.extend_from_slice(garbage);
            data.extend_from_slice(
                &y4m(&format!("W{w} H{h}"), &frames[2..])[b"YUV4MPEG2 W24 H16\n".len()..],
            );
            let got = drain(&mut reader(data));
            let what = preview(garbage);
            assert_eq!(got.len(), 5, "{what}: 2 ok, 1 corrupt, 2 ok");
            assert!(
                got[2]
                    .as_ref()
                    .is_err_and(|m| m.contains("bad frame marker")),
                "{what}: {:?}",
                got[2]
            );
            for (g, f) in [
                (&got[0], &frames[0]),
                (&got[1], &frames[1]),
                (&got[3], &frames[2]),
                (&got[4], &frames[3]),
            ] {
                let rgb = &g.as_ref().unwrap_or_else(|e| panic!("{what}: {e}")).1;
                assert_rgb_close(
                    rgb,
                    &expected(Chroma::C420, f, w, h, YuvRange::Limited),
                    &what,
                );
            }
        }
    }

    #[test]
    fn endless_garbage_is_fatal_not_a_hang() {
        let mut rng = Rng::new(7);
        let f = frame(&mut rng, Chroma::C420, 8, 8);
        let mut data = y4m("W8 H8", &[f]);
        data.extend(std::iter::repeat_n(b'x', 200_000));
        let mut r = reader(data);
        let mut rgb = Vec::new();
        assert!(r.read_frame(&mut rgb).unwrap().is_some());
        match r.read_frame(&mut rgb) {
            Err(CaptureError::Fatal(e)) => assert!(format!("{e}").contains("lost sync"), "{e}"),
            other => panic!("expected Fatal, got {other:?}"),
        }
        assert!(r.read_frame(&mut rgb).unwrap().is_none());
    }

    #[test]
    fn header_errors_are_errors_not_panics() {
        let bad: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"RIFF....WAVEfmt ", "not a Y4M"),
            (b"YUV4MPEG2X W4 H4\n", "not a Y4M"),
            (b"YUV4MPEG2 W0 H4\n", "width 0"),
            (b"YUV4MPEG2 W100000 H4\n", "width 100000"),
            (b"YUV4MPEG2 W4 H8193\n", "height 8193"),
            (b"YUV4MPEG2 W-4 H4\n", "bad Y4M width"),
            (b"YUV4MPEG2 W4294967296 H4\n", "bad Y4M width"),
            (b"YUV4MPEG2 W4\n", "no height"),
            (b"YUV4MPEG2 W4 H4 C420p10\n", "C420p10"),
            (b"YUV4MPEG2 W4 H4 C444alpha\n", "C444alpha"),
            (b"YUV4MPEG2 W4 H4 C\n", "colour space C "),
            (b"YUV4MPEG2 W4 H4 X\xff\xfe\n", "not ASCII"),
        ];
        for (data, want) in bad {
            let e = Y4mReader::new(*data, "t", false).err().expect("must fail");
            let msg = format!("{e:#}");
            assert!(
                msg.contains(want) && !msg.contains('\n'),
                "{:?}: {msg}",
                preview(data)
            );
        }
        let mut long = b"YUV4MPEG2 W4 H4 ".to_vec();
        long.extend(std::iter::repeat_n(b'A', 100_000));
        let e = Y4mReader::new(&long[..], "t", false)
            .err()
            .expect("must fail");
        assert!(format!("{e}").contains("longer than 4096"), "{e}");
        // Frame size over the limit.
        let e = Y4mReader::with_max_frame_bytes(
            &b"YUV4MPEG2 W8192 H8192 C444\n"[..],
            "t",
            false,
            1 << 20,
        )
        .err()
        .expect("must fail");
        assert!(
            format!("{e}").contains("over the 1048576-byte limit"),
            "{e}"
        );
    }

    #[test]
    fn lying_header_does_not_allocate_the_claimed_frame() {
        // 8192x8192 4:2:2 claims 128 MiB a frame; only 10 bytes follow.
        let data = b"YUV4MPEG2 W8192 H8192 C422\nFRAME\n0123456789".to_vec();
        let mut r = reader(data);
        let mut rgb = Vec::new();
        assert!(matches!(
            r.read_frame(&mut rgb),
            Err(CaptureError::Corrupt(_))
        ));
        assert!(
            r.raw.capacity() <= 64 << 10,
            "raw grew to {}",
            r.raw.capacity()
        );
        assert!(rgb.capacity() == 0);
        assert!(r.read_frame(&mut rgb).unwrap().is_none());
    }

    #[test]
    fn mutated_streams_never_panic() {
        let mut rng = Rng::new(8);
        let frames: Vec<_> = (0..3)
            .map(|_| frame(&mut rng, Chroma::C420, 6, 4))
            .collect();
        let base = y4m("W6 H4 F5:1", &frames);
        let mut rgb = Vec::new();
        for _ in 0..500 {
            let mut d = base.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(d.len() as u64) as usize;
                match rng.below(3) {
                    0 => d[i] = rng.next() as u8,
                    1 => d.truncate(i),
                    _ => d.insert(i, b"F\nFRAME \n"[rng.below(9) as usize]),
                }
                if d.is_empty() {
                    break;
                }
            }
            let Ok(mut r) = Y4mReader::new(&d[..], "fuzz", false) else {
                continue;
            };
            let mut calls = 0;
            loop {
                calls += 1;
                assert!(calls < 1000, "no progress");
                rgb.clear();
                match r.read_frame(&mut rgb) {
                    Ok(Some(s)) => assert_eq!(rgb.len(), (s.width * s.height * 3) as usize),
                    Ok(None) | Err(CaptureError::Fatal(_) | CaptureError::Lost(_)) => break,
                    Err(CaptureError::Corrupt(_)) => {}
                }
            }
        }
    }

    /// `tests/data/testsrc-64x48.y4m` was made with
    /// `ffmpeg -f lavfi -i testsrc=size=64x48:rate=5 -frames:v 3 -pix_fmt yuv420p -f yuv4mpegpipe`
    /// (ffmpeg 5.1; header `W64 H48 F5:1 Ip A1:1 C420jpeg XYSCSS=420JPEG XCOLORRANGE=LIMITED`).
    #[test]
    fn reads_ffmpeg_testsrc_file() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/testsrc-64x48.y4m");
        let data = std::fs::read(path).unwrap();
        let file = std::fs::File::open(path).unwrap();
        let mut r = Y4mReader::new(file, "testsrc-64x48.y4m", false).unwrap();
        assert_eq!(r.describe(), "y4m:testsrc-64x48.y4m 64x48 5fps C420jpeg");
        let got = drain(&mut r);
        assert_eq!(got.len(), 3);
        // Oracle: cut the file by hand (header line, then "FRAME\n" + 4608 bytes per frame).
        let start = data.iter().position(|&b| b == b'\n').unwrap() + 1;
        let fb = 64 * 48 * 3 / 2;
        assert_eq!(data.len(), start + 3 * (6 + fb));
        for (i, g) in got.iter().enumerate() {
            let (size, rgb) = g.as_ref().unwrap();
            assert_eq!((size.width, size.height), (64, 48));
            let off = start + i * (6 + fb);
            assert_eq!(&data[off..off + 6], b"FRAME\n");
            let want = expected(
                Chroma::C420,
                &data[off + 6..off + 6 + fb],
                64,
                48,
                YuvRange::Limited,
            );
            // testsrc has no sub-black luma, so the plain reference applies.
            assert_rgb_close(rgb, &want, &format!("testsrc frame {i}"));
        }
        // Independent golden pixels: ffmpeg's own conversion of this file,
        // `ffmpeg -i testsrc-64x48.y4m -frames:v 1 -pix_fmt rgb24 -f rawvideo -`, at pixels
        // inside flat areas (so chroma upsampling filters agree). ffmpeg's fixed-point
        // swscale rounds differently: tolerance 3.
        let rgb0 = &got[0].as_ref().unwrap().1;
        for &((x, y), want) in FFMPEG_GOLDEN {
            let p = &rgb0[(y * 64 + x) * 3..][..3];
            for c in 0..3 {
                assert!(
                    (p[c] as i32 - want[c] as i32).abs() <= 3,
                    "({x},{y}): ours {p:?} ffmpeg {want:?}"
                );
            }
        }
    }

    const FFMPEG_GOLDEN: &[((usize, usize), [u8; 3])] = &[
        ((3, 9), [0, 0, 0]),
        ((20, 17), [254, 0, 253]),
        ((26, 16), [0, 0, 254]),
        ((34, 16), [253, 253, 0]),
        ((60, 6), [255, 255, 255]),
        ((42, 19), [0, 255, 0]),
        ((12, 21), [0, 255, 255]),
        ((52, 21), [253, 0, 0]),
    ];
}
