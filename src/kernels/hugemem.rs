//! Large buffers the matmuls stream once per token (the repacked weights, and the bandwidth
//! probe that measures their roofline), in an anonymous mapping aligned to 2 MiB and advised
//! `MADV_HUGEPAGE` before its first touch, so Linux backs it with transparent huge pages
//! where it can (`/sys/kernel/mm/transparent_hugepage/enabled` set to `always` or
//! `madvise`). A decode step reads ~75 MB of weights; in 4 KiB pages that is ~19 000 TLB
//! misses per token, each a page walk (a two-level one in a VM), while a 2 MiB page covers
//! 512 of them. Without huge pages (another OS, THP `never`, no free 2 MiB pages) the buffer
//! is ordinary memory and everything works the same, only with more TLB misses.
//!
//! Owns the mapping and its advice; knows nothing of what is stored (any [`Pod`] type).
//! `EXPLLM_HUGE_PAGES=0` skips the advice (for A/B benchmarks).

use std::marker::PhantomData;

use bytemuck::Pod;
use memmap2::MmapMut;

/// The transparent huge page size the alignment targets (x86_64 and aarch64 with 4 KiB
/// base pages).
pub const HUGE_PAGE: usize = 2 << 20;

/// `n` zero-initialised values of `T` in an anonymous mapping whose start is 2 MiB-aligned
/// and advised for transparent huge pages (see the module doc).
pub struct HugeBuf<T> {
    map: MmapMut,
    off: usize,
    len: usize,
    advised: bool,
    _t: PhantomData<T>,
}

/// Whether [`HugeBuf`]s are advised for huge pages: unless `EXPLLM_HUGE_PAGES=0`.
pub fn enabled() -> bool {
    !std::env::var("EXPLLM_HUGE_PAGES").is_ok_and(|v| v == "0")
}

impl<T: Pod> HugeBuf<T> {
    /// `len` zeroed values. Maps `len · size_of::<T>()` bytes plus up to 2 MiB of address
    /// space (not memory: untouched pages cost nothing) to align the start.
    ///
    /// # Errors
    /// If the size overflows or the mapping fails (out of address space or memory).
    pub fn zeroed(len: usize) -> std::io::Result<HugeBuf<T>> {
        let bytes = len.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::OutOfMemory, "buffer size overflows")
        })?;
        let map_len = bytes
            .checked_add(HUGE_PAGE)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::OutOfMemory, "too large"))?;
        let map = MmapMut::map_anon(map_len)?;
        let addr = map.as_ptr() as usize;
        let off = addr.next_multiple_of(HUGE_PAGE) - addr;
        // Page-aligned (the mapping is), so any Pod type's alignment up to 4 KiB holds.
        debug_assert!(std::mem::align_of::<T>() <= 4096);
        #[cfg(target_os = "linux")]
        let advised = bytes >= HUGE_PAGE
            && enabled()
            && map
                .advise_range(memmap2::Advice::HugePage, off, bytes)
                .is_ok();
        #[cfg(not(target_os = "linux"))]
        let advised = false;
        Ok(HugeBuf {
            map,
            off,
            len,
            advised,
            _t: PhantomData,
        })
    }

    /// Whether the kernel accepted the huge-page advice (it may still back some ranges with
    /// small pages if no 2 MiB page is free).
    pub fn advised(&self) -> bool {
        self.advised
    }

    fn bytes(&self) -> std::ops::Range<usize> {
        self.off..self.off + self.len * std::mem::size_of::<T>()
    }
}

impl<T: Pod> std::ops::Deref for HugeBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        bytemuck::cast_slice(&self.map[self.bytes()])
    }
}

impl<T: Pod> std::ops::DerefMut for HugeBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let r = self.bytes();
        bytemuck::cast_slice_mut(&mut self.map[r])
    }
}

/// Bytes of this process's anonymous memory backed by transparent huge pages
/// (`AnonHugePages` of `/proc/self/smaps_rollup`), `None` where that is not readable: what a
/// benchmark reports beside its figures.
pub fn anon_huge_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    let line = s.lines().find(|l| l.starts_with("AnonHugePages:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_zeroed_aligned_and_writable() {
        for len in [0usize, 1, 7, 1 << 10, (HUGE_PAGE / 8) + 3] {
            let mut b = HugeBuf::<u64>::zeroed(len).unwrap();
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&v| v == 0));
            if len > 0 {
                assert_eq!(b.as_ptr() as usize % HUGE_PAGE, 0, "len {len}");
            }
            for (i, v) in b.iter_mut().enumerate() {
                *v = i as u64 * 3;
            }
            assert!(b.iter().enumerate().all(|(i, &v)| v == i as u64 * 3));
            // Small buffers are not advised (no whole huge page to back).
            if len * 8 < HUGE_PAGE {
                assert!(!b.advised());
            }
        }
    }

    #[test]
    fn oversized_buffers_are_an_error_not_a_panic() {
        assert!(HugeBuf::<u64>::zeroed(usize::MAX / 4).is_err());
        assert!(HugeBuf::<u8>::zeroed(usize::MAX - 10).is_err());
    }
}
