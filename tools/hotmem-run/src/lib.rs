//! Binding the calling process to a HotMem partition.
//!
//! The kernel side is `prctl(PR_HOTMEM, PR_HOTMEM_BIND, flags, timeout_ms, 0)`
//! (see the kernel series' `Documentation/admin-guide/mm/hotmem.rst`). The
//! binding lives in the process's mm: it is inherited by fork and survives
//! exec, which is what lets `hotmem-run` bind and then exec the function.

use std::io;

pub mod privs;

/// `PR_HOTMEM` from `include/uapi/linux/prctl.h` of the HotMem series.
pub const PR_HOTMEM: libc::c_int = 0x484d_454d;
/// Bind the calling process to a free partition.
pub const PR_HOTMEM_BIND: libc::c_ulong = 1;
/// Read the partition the calling process is bound to.
pub const PR_HOTMEM_GET: libc::c_ulong = 2;
/// Do not wait for a partition to become free.
pub const PR_HOTMEM_NONBLOCK: libc::c_ulong = 1;

/// Why binding failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The kernel has no HotMem, or it was booted with `hotmem=off`.
    #[error("HotMem is not available (kernel without CONFIG_HOTMEM, or booted without hotmem=on)")]
    NotSupported,
    /// Binding needs CAP_SYS_RESOURCE.
    #[error("binding needs CAP_SYS_RESOURCE")]
    PermissionDenied,
    /// The process is already bound; binding is one-way.
    #[error("this process is already bound to a partition")]
    AlreadyBound,
    /// No partition is free and `nonblock` was asked for.
    #[error("no HotMem partition is free")]
    NoneFree,
    /// No partition became free before the timeout.
    #[error("timed out waiting for a free HotMem partition")]
    TimedOut,
    /// A signal interrupted the wait.
    #[error("interrupted while waiting for a free HotMem partition")]
    Interrupted,
    /// Any other failure.
    #[error("prctl(PR_HOTMEM) failed: {0}")]
    Other(io::Error),
}

impl BindError {
    fn from_errno(err: io::Error) -> Self {
        match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => Self::NotSupported,
            Some(libc::EPERM) => Self::PermissionDenied,
            Some(libc::EBUSY) => Self::AlreadyBound,
            Some(libc::EAGAIN) => Self::NoneFree,
            Some(libc::ETIMEDOUT) => Self::TimedOut,
            Some(libc::EINTR) => Self::Interrupted,
            _ => Self::Other(err),
        }
    }
}

/// How to wait for a partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Wait {
    /// Wait until one is free (interruptible).
    #[default]
    Forever,
    /// Wait at most this many milliseconds.
    Millis(u64),
    /// Fail at once if none is free.
    No,
}

fn prctl(op: libc::c_ulong, arg3: libc::c_ulong, arg4: libc::c_ulong) -> io::Result<i64> {
    #[allow(unsafe_code)]
    // SAFETY: prctl(PR_HOTMEM, ...) takes only integer arguments and
    // touches no memory of ours.
    let ret = unsafe { libc::prctl(PR_HOTMEM, op, arg3, arg4, 0 as libc::c_ulong) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(i64::from(ret))
    }
}

/// Binds the calling process to a free HotMem partition.
///
/// Returns the partition id.
pub fn bind(wait: Wait) -> Result<u64, BindError> {
    let (flags, timeout) = match wait {
        Wait::Forever => (0, 0),
        Wait::Millis(ms) => (0, ms.max(1)),
        Wait::No => (PR_HOTMEM_NONBLOCK, 0),
    };
    let timeout = libc::c_ulong::try_from(timeout).unwrap_or(libc::c_ulong::MAX);
    prctl(PR_HOTMEM_BIND, flags, timeout)
        .map(|id| id.unsigned_abs())
        .map_err(BindError::from_errno)
}

/// The partition the calling process is bound to, if any.
pub fn current() -> Result<Option<u64>, BindError> {
    match prctl(PR_HOTMEM_GET, 0, 0) {
        Ok(id) => Ok(Some(id.unsigned_abs())),
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
        Err(e) => Err(BindError::from_errno(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping() {
        let e = |n| BindError::from_errno(io::Error::from_raw_os_error(n));
        assert!(matches!(e(libc::EPERM), BindError::PermissionDenied));
        assert!(matches!(e(libc::EBUSY), BindError::AlreadyBound));
        assert!(matches!(e(libc::EAGAIN), BindError::NoneFree));
        assert!(matches!(e(libc::ETIMEDOUT), BindError::TimedOut));
        assert!(matches!(e(libc::EINTR), BindError::Interrupted));
        assert!(matches!(e(libc::EINVAL), BindError::NotSupported));
        assert!(matches!(e(libc::ENOMEM), BindError::Other(_)));
    }

    #[test]
    fn host_kernel_without_hotmem_says_so() {
        // The host kernel has no PR_HOTMEM: prctl fails with EINVAL.
        assert!(matches!(bind(Wait::No), Err(BindError::NotSupported)));
        assert!(matches!(current(), Err(BindError::NotSupported)));
    }
}
