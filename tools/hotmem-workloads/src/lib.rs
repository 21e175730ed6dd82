//! What the workloads (`hotmem-memhog`, `hotmem-filework`,
//! `hotmem-splice`, `hotmem-hotpath`) share: a private memory mapping that
//! is unmapped on drop; and what `hotmem-hotpath` prints ([`hotpath`]),
//! which `hotmemctl bench` reads.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

pub mod hotpath;

/// Page size of the guests (x86-64).
pub const PAGE: usize = 4096;

/// A private, readable and writable mapping, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// `len` bytes of private anonymous memory.
    pub fn anonymous(len: usize) -> io::Result<Self> {
        Self::map(len, None)
    }

    /// `len` bytes of `file`, `MAP_PRIVATE`: writes make copy-on-write
    /// copies (private anonymous memory) and never reach the file.
    pub fn private_file(len: usize, file: BorrowedFd<'_>) -> io::Result<Self> {
        Self::map(len, Some(file))
    }

    /// `len` bytes of private anonymous memory starting at a multiple of
    /// `align` (a power of two, e.g. 2 MiB so that the range can be backed
    /// by transparent huge pages): maps `len + align` and unmaps the
    /// unaligned head and the tail.
    pub fn anonymous_aligned(len: usize, align: usize) -> io::Result<Self> {
        if !align.is_power_of_two() {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let total = len
            .checked_add(align)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let whole = Self::map(total, None)?;
        let start = whole.ptr.as_ptr() as usize;
        let head = start.next_multiple_of(align) - start;
        let tail = total - head - len;
        let base = whole.ptr.as_ptr();
        std::mem::forget(whole);
        #[allow(unsafe_code)]
        // SAFETY: head and tail are the parts of our fresh mapping outside
        // [base + head, base + head + len); nothing refers to them.
        let ok = unsafe {
            (head == 0 || libc::munmap(base.cast(), head) == 0)
                && (tail == 0 || libc::munmap(base.add(head + len).cast(), tail) == 0)
        };
        #[allow(unsafe_code)]
        // SAFETY: base + head lies inside the mapping (head < align).
        let aligned = unsafe { base.add(head) };
        let ptr = NonNull::new(aligned).ok_or_else(|| io::Error::other("null mapping"))?;
        let map = Self { ptr, len };
        if ok {
            Ok(map)
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn map(len: usize, file: Option<BorrowedFd<'_>>) -> io::Result<Self> {
        let flags = libc::MAP_PRIVATE
            | if file.is_none() {
                libc::MAP_ANONYMOUS
            } else {
                0
            };
        let fd = file.map_or(-1, |f| f.as_raw_fd());
        #[allow(unsafe_code)]
        // SAFETY: a fresh private mapping at an address of the kernel's
        // choosing aliases nothing of ours.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("null mapping"))?;
        Ok(Self { ptr, len })
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty mapping (never: mmap refuses length 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its start, for system calls that take the range (vmsplice).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The memory.
    pub fn bytes(&mut self) -> &mut [u8] {
        #[allow(unsafe_code)]
        // SAFETY: the mapping is valid for len bytes for as long as self,
        // readable and writable, and only reachable through &mut self.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len)
        }
    }

    /// Unmaps it now (rather than on drop), so that the `munmap()` can be
    /// timed and its error seen.
    pub fn unmap(self) -> io::Result<()> {
        let (ptr, len) = (self.ptr, self.len);
        std::mem::forget(self);
        #[allow(unsafe_code)]
        // SAFETY: unmapping exactly what was mapped; self is gone, so no
        // reference into the range is left.
        let ret = unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
        if ret == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// `madvise(advice)` over the first `len` bytes (capped at the mapping).
    pub fn advise(&self, len: usize, advice: libc::c_int) -> io::Result<()> {
        #[allow(unsafe_code)]
        // SAFETY: advice on (part of) the range we mapped. Advice that
        // takes pages away (MADV_HWPOISON) leaves no reference into them
        // live: this program holds none across the call.
        let ret = unsafe { libc::madvise(self.ptr.as_ptr().cast(), len.min(self.len), advice) };
        if ret == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: unmapping exactly what map() mapped; no reference
        // outlives self.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_memory_is_zeroed_and_writable() {
        let mut m = Mapping::anonymous(2 * PAGE).unwrap();
        assert_eq!(m.len(), 2 * PAGE);
        assert!(m.bytes().iter().all(|&b| b == 0));
        m.bytes()[PAGE] = 9;
        assert_eq!(m.bytes()[PAGE], 9);
        m.advise(PAGE, libc::MADV_DONTNEED).unwrap();
        assert_eq!(m.bytes()[PAGE], 9, "only the first page was dropped");
        assert!(Mapping::anonymous(0).is_err());
    }

    #[test]
    fn aligned_mappings_start_at_the_alignment_and_unmap() {
        let align = 2 << 20;
        let mut m = Mapping::anonymous_aligned(3 * PAGE, align).unwrap();
        assert_eq!(m.as_ptr() as usize % align, 0);
        assert_eq!(m.len(), 3 * PAGE);
        m.bytes()[3 * PAGE - 1] = 1;
        m.unmap().unwrap();
        assert!(Mapping::anonymous_aligned(PAGE, 3 * PAGE).is_err());
    }

    #[test]
    fn private_file_writes_stay_private() {
        use std::io::Write;
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[5u8; PAGE]).unwrap();
        let mut m = Mapping::private_file(PAGE, std::os::fd::AsFd::as_fd(&file)).unwrap();
        assert_eq!(m.bytes()[0], 5);
        m.bytes()[0] = 6;
        let mut again = Mapping::private_file(PAGE, std::os::fd::AsFd::as_fd(&file)).unwrap();
        assert_eq!(again.bytes()[0], 5, "the write made a private copy");
    }
}
