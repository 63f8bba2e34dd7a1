//! Frames: one decoded RGB8 image and the metadata that travels with it through the pipeline.
//!
//! Owns the frame buffer pool so that, once warm, capturing a frame allocates nothing: a
//! [`Frame`]'s pixel buffer goes back to its [`FramePool`] when the frame is dropped (after the
//! vision stage, or when the queue evicts it). Must not know about sources, models or output.

use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A recycling pool of pixel buffers. Holds at most `keep` idle buffers, so memory is bounded
/// by `keep + frames in flight` buffers whatever the frame rate.
#[derive(Clone)]
pub struct FramePool {
    free: Arc<Mutex<Vec<Vec<u8>>>>,
    keep: usize,
}

impl FramePool {
    pub fn new(keep: usize) -> Self {
        FramePool {
            free: Arc::new(Mutex::new(Vec::with_capacity(keep))),
            keep,
        }
    }

    /// An empty buffer, recycled if one is idle (its capacity is kept, so refilling it with a
    /// frame of the same size does not allocate).
    pub fn take(&self) -> Vec<u8> {
        let mut v = self
            .free
            .lock()
            .map(|mut f| f.pop())
            .unwrap_or(None)
            .unwrap_or_default();
        v.clear();
        v
    }

    fn give_back(&self, buf: Vec<u8>) {
        if let Ok(mut free) = self.free.lock() {
            if free.len() < self.keep {
                free.push(buf);
            }
        }
    }

    /// Number of idle buffers (for tests and counters).
    pub fn idle(&self) -> usize {
        self.free.lock().map(|f| f.len()).unwrap_or(0)
    }
}

/// One captured frame, RGB8 interleaved, `width * height * 3` bytes, rows packed.
pub struct Frame {
    /// Sequence number assigned by the capture thread, from 0, counting every frame read
    /// (so gaps show frames dropped before the vision stage).
    pub seq: u64,
    /// Wall-clock capture time, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// Monotonic capture time, for latency measurement.
    pub captured: Instant,
    /// Time spent reading + decoding + converting this frame, milliseconds.
    pub capture_ms: f32,
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
    /// Where a still image came from (None for streams and cameras).
    pub file: Option<String>,
    pool: Option<FramePool>,
}

impl Frame {
    pub fn new(width: u32, height: u32, rgb: Vec<u8>) -> Self {
        debug_assert_eq!(rgb.len(), width as usize * height as usize * 3);
        Frame {
            seq: 0,
            ts_ms: now_ms(),
            captured: Instant::now(),
            capture_ms: 0.0,
            width,
            height,
            rgb,
            file: None,
            pool: None,
        }
    }

    /// Attach the pool the pixel buffer returns to on drop.
    pub fn with_pool(mut self, pool: &FramePool) -> Self {
        self.pool = Some(pool.clone());
        self
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give_back(std::mem::take(&mut self.rgb));
        }
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_recycles_buffers_and_stays_bounded() {
        let pool = FramePool::new(2);
        let frames: Vec<Frame> = (0..5)
            .map(|_| {
                let mut b = pool.take();
                b.resize(12, 7);
                Frame::new(2, 2, b).with_pool(&pool)
            })
            .collect();
        assert_eq!(pool.idle(), 0);
        drop(frames);
        assert_eq!(pool.idle(), 2, "pool keeps at most `keep` idle buffers");
        let b = pool.take();
        assert!(
            b.is_empty() && b.capacity() >= 12,
            "recycled buffer keeps its capacity"
        );
    }
}
