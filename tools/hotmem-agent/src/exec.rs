//! The `exec` operation: run a program with captured output and a deadline.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use hotmem_proto::{ErrorInfo, ErrorKind, ExecArgs, ExecResult, DEFAULT_EXEC_TIMEOUT_MS};

use crate::cancel::{cancelled, Cancel};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// `PATH` used when neither the agent nor the request sets one (the kernel
/// starts init without `PATH`, and busybox keeps modprobe in /sbin).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long to keep reading a pipe after the program exited. A background
/// grandchild may hold the pipe open forever; we do not wait for it.
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// Longest pause between two checks for the program's exit.
const MAX_POLL: Duration = Duration::from_millis(5);

/// How [`wait_until`] ended.
enum Waited {
    Exited(ExitStatus),
    TimedOut(ExitStatus),
    Cancelled,
}

/// Runs `args.argv`, capturing at most `cap` bytes of each output stream.
///
/// The program runs in its own process group with stdin on /dev/null; on
/// timeout (the request's, or [`DEFAULT_EXEC_TIMEOUT_MS`]) the whole group
/// is killed with SIGKILL and `timed_out` is set. If `cancel` fires, the
/// group is killed as well and the answer is a `cancelled` error.
pub fn run(args: &ExecArgs, cap: usize, cancel: &Cancel) -> Result<ExecResult, ErrorInfo> {
    let mut cmd = command(args)?;
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| {
        ErrorInfo::new(
            ErrorKind::Io,
            format!("cannot spawn {:?}: {e}", args.argv[0]),
        )
    })?;
    let stdout = Capture::start(child.stdout.take(), cap);
    let stderr = Capture::start(child.stderr.take(), cap);
    let deadline = start.checked_add(timeout_of(args));
    let waited = wait_until(&mut child, deadline, cancel)
        .map_err(|e| ErrorInfo::new(ErrorKind::Io, format!("waiting for child: {e}")))?;
    let (status, timed_out) = match waited {
        Waited::Exited(status) => (status, false),
        Waited::TimedOut(status) => (status, true),
        Waited::Cancelled => return Err(cancelled(&format!("exec {:?}", args.argv[0]))),
    };
    let duration = start.elapsed();
    let (stdout, out_truncated) = stdout.finish();
    let (stderr, err_truncated) = stderr.finish();
    Ok(ExecResult {
        status: status.code(),
        signal: status.signal(),
        timed_out,
        stdout,
        stderr,
        duration_us: u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
        truncated: out_truncated || err_truncated,
    })
}

/// The request's timeout, or the default: no `exec` runs unbounded.
fn timeout_of(args: &ExecArgs) -> Duration {
    Duration::from_millis(args.timeout_ms.unwrap_or(DEFAULT_EXEC_TIMEOUT_MS))
}

/// Builds the [`Command`] for `args`, validating `argv`.
fn command(args: &ExecArgs) -> Result<Command, ErrorInfo> {
    let Some((program, rest)) = args.argv.split_first() else {
        return Err(ErrorInfo::new(ErrorKind::BadRequest, "exec: empty argv"));
    };
    let mut cmd = Command::new(program);
    cmd.args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let request_sets_path = args.env.iter().any(|(k, _)| k == "PATH");
    if std::env::var_os("PATH").is_none() && !request_sets_path {
        cmd.env("PATH", DEFAULT_PATH);
    }
    cmd.envs(args.env.iter().map(|(k, v)| (k, v)));
    Ok(cmd)
}

/// Waits for `child` to exit, killing its process group at `deadline` or
/// when `cancel` fires.
///
/// Polls `try_wait` with a short backoff rather than blocking in `wait` on
/// another thread: the child stays unreaped until we have killed it, so its
/// process-group id cannot have been reused when we signal it.
fn wait_until(
    child: &mut Child,
    deadline: Option<Instant>,
    cancel: &Cancel,
) -> std::io::Result<Waited> {
    let mut pause = Duration::from_micros(100);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Waited::Exited(status));
        }
        if cancel.is_cancelled() {
            kill_group(child);
            child.wait()?;
            return Ok(Waited::Cancelled);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            kill_group(child);
            return Ok(Waited::TimedOut(child.wait()?));
        }
        thread::sleep(pause);
        pause = (pause * 2).min(MAX_POLL);
    }
}

/// SIGKILLs the child's process group (falling back to the child alone).
fn kill_group(child: &mut Child) {
    let group = i32::try_from(child.id()).map(Pid::from_raw);
    let killed = group.is_ok_and(|pgid| killpg(pgid, Signal::SIGKILL).is_ok());
    if !killed {
        // Best effort: the child may already be a zombie, which is fine.
        let _ = child.kill();
    }
}

/// Output captured from one pipe by a reader thread.
#[derive(Default)]
struct Captured {
    data: Vec<u8>,
    truncated: bool,
}

/// A pipe being drained by a background thread.
struct Capture {
    buf: Arc<Mutex<Captured>>,
    done: mpsc::Receiver<()>,
}

impl Capture {
    /// Starts draining `pipe`; keeps the first `cap` bytes, discards the rest
    /// (still reading, so the program never blocks on a full pipe).
    fn start<R: Read + Send + 'static>(pipe: Option<R>, cap: usize) -> Capture {
        let buf = Arc::new(Mutex::new(Captured::default()));
        let (tx, done) = mpsc::channel();
        if let Some(pipe) = pipe {
            let shared = Arc::clone(&buf);
            thread::spawn(move || {
                drain(pipe, &shared, cap);
                let _ = tx.send(());
            });
        }
        Capture { buf, done }
    }

    /// Waits briefly for EOF and returns the output as lossy UTF-8.
    fn finish(self) -> (String, bool) {
        let complete = !matches!(
            self.done.recv_timeout(PIPE_GRACE),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        let mut captured = self.buf.lock().unwrap_or_else(PoisonError::into_inner);
        let data = std::mem::take(&mut captured.data);
        let text = String::from_utf8_lossy(&data).into_owned();
        (text, captured.truncated || !complete)
    }
}

/// Reads `pipe` to EOF, appending at most `cap` bytes to `shared`.
fn drain<R: Read>(mut pipe: R, shared: &Mutex<Captured>, cap: usize) {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match pipe.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let mut captured = shared.lock().unwrap_or_else(PoisonError::into_inner);
        let room = cap.saturating_sub(captured.data.len());
        captured.data.extend_from_slice(&chunk[..n.min(room)]);
        captured.truncated |= n > room;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str], timeout_ms: Option<u64>) -> ExecArgs {
        ExecArgs {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            timeout_ms,
        }
    }

    fn run(a: &ExecArgs, cap: usize) -> Result<ExecResult, ErrorInfo> {
        super::run(a, cap, &Cancel::never())
    }

    #[test]
    fn cancel_kills_the_process_group() {
        let cancel = Cancel::default();
        let c = cancel.clone();
        let canceller = thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            c.cancel();
        });
        let start = Instant::now();
        let e =
            super::run(&args(&["sh", "-c", "sleep 30; true"], None), 1024, &cancel).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Cancelled);
        assert!(start.elapsed() < Duration::from_secs(10), "not killed");
        canceller.join().unwrap();
    }

    #[test]
    fn exec_without_timeout_gets_the_default() {
        assert_eq!(
            timeout_of(&args(&["true"], None)),
            Duration::from_millis(DEFAULT_EXEC_TIMEOUT_MS)
        );
        assert_eq!(
            timeout_of(&args(&["true"], Some(5))),
            Duration::from_millis(5)
        );
    }

    #[test]
    fn true_succeeds() {
        let r = run(&args(&["true"], None), 1024).unwrap();
        assert_eq!((r.status, r.signal, r.timed_out), (Some(0), None, false));
        assert!(r.success());
    }

    #[test]
    fn exit_status_and_output_are_reported() {
        let r = run(
            &args(&["sh", "-c", "echo out; echo err >&2; exit 3"], None),
            1024,
        )
        .unwrap();
        assert_eq!(r.status, Some(3));
        assert_eq!(r.stdout, "out\n");
        assert_eq!(r.stderr, "err\n");
        assert!(!r.truncated);
    }

    #[test]
    fn env_is_passed() {
        let mut a = args(&["sh", "-c", "printf %s \"$HOTMEM_X\""], None);
        a.env = vec![("HOTMEM_X".into(), "y z".into())];
        assert_eq!(run(&a, 1024).unwrap().stdout, "y z");
    }

    #[test]
    fn timeout_kills_the_process_group() {
        let start = Instant::now();
        // The grandchild `sleep` holds the pipes open: only a group kill ends it.
        let r = run(&args(&["sh", "-c", "sleep 30; true"], Some(200)), 1024).unwrap();
        assert!(r.timed_out);
        assert_eq!(r.signal, Some(libc_sigkill()));
        assert!(start.elapsed() < Duration::from_secs(10), "not killed");
        assert!(r.duration_us >= 200_000);
    }

    fn libc_sigkill() -> i32 {
        Signal::SIGKILL as i32
    }

    #[test]
    fn output_is_capped() {
        let r = run(&args(&["sh", "-c", "head -c 100000 /dev/zero"], None), 1000).unwrap();
        assert_eq!(r.stdout.len(), 1000);
        assert!(r.truncated);
        assert!(r.success());
    }

    #[test]
    fn missing_program_is_an_io_error() {
        let e = run(&args(&["/nonexistent/prog"], None), 10).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Io);
        assert!(e.message.contains("No such file"), "{}", e.message);
    }

    #[test]
    fn empty_argv_is_a_bad_request() {
        let e = run(&args(&[], None), 10).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
    }
}
