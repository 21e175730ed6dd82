//! A lock on a run directory, so that two `hotmemctl` invocations on one
//! guest never interleave a read-modify-write (e.g. of the virtio-mem
//! `requested-size`: read it, add a partition, write it back).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Pause between two attempts to take a busy lock.
const RETRY: Duration = Duration::from_millis(50);

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock file could not be opened.
    #[error("cannot open lock file {}: {source}", path.display())]
    Open {
        /// The lock file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// Another process held it for longer than the timeout.
    #[error("{} is locked by another hotmemctl ({holder}) for more than {timeout:?}", path.display())]
    Busy {
        /// The lock file.
        path: PathBuf,
        /// What the holder wrote into it (its pid and command).
        holder: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// flock(2) failed.
    #[error("flock {}: {source}", path.display())]
    Flock {
        /// The lock file.
        path: PathBuf,
        /// errno.
        #[source]
        source: Errno,
    },
}

/// An exclusive `flock` on a run directory's lock file, released on drop
/// (or when the process dies).
#[derive(Debug)]
pub struct RunDirLock {
    _lock: Flock<File>,
}

impl RunDirLock {
    /// Takes the lock on `path`, waiting up to `timeout` for another holder.
    pub fn acquire(path: &Path, timeout: Duration) -> Result<Self, LockError> {
        let deadline = Instant::now() + timeout;
        let mut file = Self::open(path)?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(mut lock) => {
                    // Who holds it, for the other side's error message.
                    let me = format!(
                        "pid {} {}",
                        std::process::id(),
                        std::env::args().collect::<Vec<_>>().join(" ")
                    );
                    let _ = lock.set_len(0);
                    let _ = lock.write_all(me.as_bytes());
                    return Ok(Self { _lock: lock });
                }
                Err((f, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    file = f;
                    thread::sleep(RETRY);
                }
                Err((_, Errno::EWOULDBLOCK)) => {
                    return Err(LockError::Busy {
                        path: path.to_owned(),
                        holder: std::fs::read_to_string(path)
                            .unwrap_or_default()
                            .trim()
                            .to_owned(),
                        timeout,
                    })
                }
                Err((_, source)) => {
                    return Err(LockError::Flock {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
        }
    }

    fn open(path: &Path) -> Result<File, LockError> {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .read(true)
            .open(path)
            .map_err(|source| LockError::Open {
                path: path.to_owned(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_second_holder_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hotmemctl.lock");
        let first = RunDirLock::acquire(&path, Duration::ZERO).unwrap();
        // While held: a short wait fails and names the holder.
        let err = RunDirLock::acquire(&path, Duration::from_millis(100)).unwrap_err();
        let LockError::Busy { holder, .. } = &err else {
            panic!("{err}");
        };
        assert!(
            holder.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        // A waiter gets it once the first lets go.
        let (tx, rx) = mpsc::channel();
        let waiter_path = path.clone();
        let waiter = thread::spawn(move || {
            let lock = RunDirLock::acquire(&waiter_path, Duration::from_secs(10));
            tx.send(()).unwrap();
            lock.map(drop)
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "the waiter got the lock while it was held"
        );
        drop(first);
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        waiter.join().unwrap().unwrap();
    }

    #[test]
    fn unopenable_lock_files_are_errors() {
        let err =
            RunDirLock::acquire(Path::new("/nonexistent/dir/lock"), Duration::ZERO).unwrap_err();
        assert!(matches!(err, LockError::Open { .. }), "{err}");
    }
}
