//! Anonymous memory: `mmap(2)` and `munmap(2)`, for a buffer whose pages cost nothing
//! until they are written.
//!
//! A record buffer must hold the largest record (64 KiB and a header), and a record is
//! almost always a few bytes. `vec![0u8; n]` is `calloc`, and glibc's `calloc` clears
//! with `memset` whatever memory the heap already had: 64 KiB resident in the primary
//! (and so in every worker it forks) and 64 KiB more in each worker's control thread,
//! for bytes that are never read. A private anonymous mapping reads as zeroes and gets a
//! page only when one is written; `recvmsg` writes the few bytes of each record.
#![allow(unsafe_code)]

use std::ptr::NonNull;

/// A zero-filled byte buffer in a mapping of its own (`mmap` with `MAP_PRIVATE |
/// MAP_ANONYMOUS`), unmapped on drop. Resident: only the pages written so far.
#[derive(Debug)]
pub(crate) struct ZeroedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

impl ZeroedBuf {
    /// Corresponds to `mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE |
    /// MAP_ANONYMOUS, -1, 0)`. When the mapping cannot be made, the allocation-error
    /// handler runs, as for `vec![0u8; len]`.
    pub(crate) fn new(len: usize) -> ZeroedBuf {
        if len == 0 {
            return ZeroedBuf::default();
        }
        // SAFETY: a new private anonymous mapping at an address the kernel picks touches
        // no existing memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        match NonNull::new(p.cast::<u8>()) {
            Some(ptr) if p != libc::MAP_FAILED => ZeroedBuf { ptr, len },
            _ => std::alloc::handle_alloc_error(
                std::alloc::Layout::from_size_align(len, 1).expect("a byte layout"),
            ),
        }
    }
}

impl Default for ZeroedBuf {
    /// An empty buffer, no mapping.
    fn default() -> ZeroedBuf {
        ZeroedBuf {
            ptr: NonNull::dangling(),
            len: 0,
        }
    }
}

impl std::ops::Deref for ZeroedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is `len` readable bytes (a live mapping, zero-filled or written
        // since), or dangling with `len` 0; `&self` keeps `&mut` access away.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for ZeroedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for ZeroedBuf {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: `ptr`/`len` are the mapping `new` made, unmapped only here; no
            // borrow of it outlives `self`.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_as_zeroes_and_keeps_what_is_written() {
        let mut b = ZeroedBuf::new(64 * 1024 + 9);
        assert_eq!(b.len(), 64 * 1024 + 9);
        assert!(b.iter().all(|&x| x == 0));
        b[64 * 1024 + 8] = 7;
        assert_eq!(b[64 * 1024 + 8], 7);
        assert_eq!(ZeroedBuf::default().len(), 0);
        assert_eq!(ZeroedBuf::new(0).len(), 0);
    }
}
