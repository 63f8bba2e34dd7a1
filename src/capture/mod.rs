//! Inputs: V4L2 cameras, still images and folders, Y4M and concatenated-MJPEG streams.
//!
//! Owns reading bytes and turning them into RGB8 frames (JPEG decode, YUV → RGB). Every source
//! implements [`Source`]; the daemon's capture thread drives one. Must not know about models,
//! queues or output: a source only reads, decodes and reports what went wrong.

pub mod color;
pub mod fault;
pub mod jpeg;
pub mod mjpeg;
pub mod open;
pub mod still;
pub mod v4l2;
pub mod y4m;

pub use open::{open_input, open_input_with, InputKind, InputSpec};

/// What a source reports instead of a frame.
#[derive(Debug)]
pub enum CaptureError {
    /// One frame was unreadable (corrupt JPEG, truncated Y4M frame, bad marker, …). The source
    /// has resynchronised or reached its end; the caller counts it and reads on.
    Corrupt(String),
    /// A live source lost its device (camera unplugged: ENODEV; USB error: EIO; no frame for
    /// seconds). [`Source::reopen`] may bring it back; the daemon retries with backoff. Only
    /// sources that can re-open report this; for the others a lost input is `Fatal`.
    Lost(anyhow::Error),
    /// The source cannot go on (I/O error on a file or pipe, lost sync for good).
    Fatal(anyhow::Error),
}

impl std::fmt::Display for CaptureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaptureError::Corrupt(m) => write!(f, "corrupt frame: {m}"),
            CaptureError::Lost(e) | CaptureError::Fatal(e) => write!(f, "{e:#}"),
        }
    }
}

/// Size of one decoded frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSize {
    pub width: u32,
    pub height: u32,
}

/// Largest frame any source accepts (either side), so a hostile header cannot make us allocate
/// gigabytes: 8K UHD.
pub const MAX_DIM: u32 = 8192;

/// A source of frames. `read_frame` fills `rgb` (cleared by the caller, capacity reused) with
/// `width * height * 3` bytes of packed RGB8 and returns the size, or `Ok(None)` at the end of
/// the input.
pub trait Source: Send {
    fn read_frame(&mut self, rgb: &mut Vec<u8>) -> Result<Option<FrameSize>, CaptureError>;

    /// A live source (camera, pipe) produces frames in real time: the daemon drops the oldest
    /// queued frame rather than fall behind. A file is read as fast as the pipeline goes,
    /// losing nothing.
    fn is_live(&self) -> bool;

    /// One line for logs and the `status` message, e.g. `y4m:clip.y4m 640x480 25fps`.
    fn describe(&self) -> String;

    /// File name of the frame just read, for still images.
    fn current_file(&self) -> Option<&str> {
        None
    }

    /// After [`CaptureError::Lost`]: close and open the same input again with the same
    /// settings. `Err(Lost)` means "not back yet, try again later"; `Err(Fatal)` means it never
    /// will be. Must not sleep or retry itself: the daemon owns the backoff. Sources that never
    /// report `Lost` keep the default.
    fn reopen(&mut self) -> Result<(), CaptureError> {
        Err(CaptureError::Fatal(anyhow::anyhow!(
            "{} cannot be re-opened",
            self.describe()
        )))
    }
}

/// Whether an I/O error means "the device went away" (a USB camera unplugged or reset): what
/// V4L2 returns then, and what opening a vanished device node gives.
pub fn is_device_gone(e: &std::io::Error) -> bool {
    const ENXIO: i32 = 6;
    const EIO: i32 = 5;
    const ENODEV: i32 = 19;
    const ENOENT: i32 = 2;
    matches!(e.raw_os_error(), Some(ENODEV | EIO | ENXIO | ENOENT))
}
