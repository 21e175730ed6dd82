//! The serve loops: sequential request/response over a byte stream.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;
use std::thread;
use std::time::Duration;

use hotmem_proto::{encode_line, ErrorInfo, ErrorKind, Response};

use crate::handler::{After, Handler};

/// Longest request line accepted; longer lines are answered with an error.
pub const MAX_LINE: usize = 16 << 20;

/// Pause before reading again after the host went away.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// Why [`serve`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// End of input (on virtio-serial: no host connected).
    Eof,
    /// The host requested a power-off, which has been acknowledged.
    PowerOff,
}

/// Outcome of one [`serve`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// Number of requests answered.
    pub requests: u64,
    /// Why the session ended.
    pub ended: Ended,
}

/// Result of reading one line.
#[derive(Debug, PartialEq, Eq)]
enum LineRead {
    /// A complete line (with its `\n`) is in the buffer.
    Line,
    /// A line longer than the limit was skipped.
    TooLong,
    /// End of input; a trailing partial line (from a host that went away
    /// mid-request) is discarded.
    Eof,
}

/// Reads one `\n`-terminated line of at most `max` bytes into `buf`.
fn read_line<R: BufRead>(r: &mut R, buf: &mut Vec<u8>, max: usize) -> io::Result<LineRead> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = match r.fill_buf() {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(LineRead::Eof);
        }
        let newline = available.iter().position(|&b| b == b'\n');
        let len = newline.map_or(available.len(), |i| i + 1);
        if !too_long && buf.len() + len > max {
            too_long = true;
            buf.clear();
        }
        if !too_long {
            buf.extend_from_slice(&available[..len]);
        }
        r.consume(len);
        if newline.is_some() {
            return Ok(if too_long {
                LineRead::TooLong
            } else {
                LineRead::Line
            });
        }
    }
}

/// Writes `response` as one line and flushes it.
fn send<W: Write>(writer: &mut W, response: &Response) -> io::Result<()> {
    let line = encode_line(response)
        .or_else(|e| {
            let info = ErrorInfo::new(ErrorKind::Internal, format!("encoding response: {e}"));
            encode_line(&Response::error(response.id, info))
        })
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    writer.write_all(&line)?;
    writer.flush()
}

/// Serves requests from `reader` until end of input or a power-off request.
pub fn serve<R: BufRead, W: Write>(
    handler: &Handler,
    reader: &mut R,
    writer: &mut W,
) -> io::Result<Session> {
    let mut buf = Vec::new();
    let mut requests = 0;
    loop {
        let response = match read_line(reader, &mut buf, MAX_LINE)? {
            LineRead::Eof => {
                return Ok(Session {
                    requests,
                    ended: Ended::Eof,
                })
            }
            LineRead::TooLong => {
                let msg = format!("request line longer than {MAX_LINE} bytes");
                (
                    Response::error(None, ErrorInfo::new(ErrorKind::BadRequest, msg)),
                    After::Continue,
                )
            }
            LineRead::Line if buf.trim_ascii().is_empty() => continue,
            LineRead::Line => handler.handle_line(&buf),
        };
        send(writer, &response.0)?;
        requests += 1;
        if response.1 == After::PowerOff {
            return Ok(Session {
                requests,
                ended: Ended::PowerOff,
            });
        }
    }
}

/// Serves on the virtio-serial device at `path` until a power-off request.
///
/// Never gives up on I/O trouble: while no host is connected, reads return
/// EOF (we pause and read again); on errors we reopen the device.
pub fn serve_device(handler: &Handler, path: &Path) {
    loop {
        let port = open_port(path);
        match serve_port(handler, &port) {
            Ok(()) => return,
            Err(e) => crate::log!("{}: {e}; reopening", path.display()),
        }
        drop(port);
        thread::sleep(RECONNECT_PAUSE);
    }
}

/// Serves on an open port until power-off (`Ok`) or an I/O error.
fn serve_port(handler: &Handler, port: &File) -> io::Result<()> {
    let mut reader = BufReader::new(port);
    let mut writer = port;
    loop {
        let session = serve(handler, &mut reader, &mut writer)?;
        match session.ended {
            Ended::PowerOff => return Ok(()),
            Ended::Eof if session.requests > 0 => {
                crate::log!("host disconnected after {} request(s)", session.requests);
            }
            Ended::Eof => {}
        }
        thread::sleep(RECONNECT_PAUSE);
    }
}

/// Opens the port read/write, retrying forever (logging now and then).
fn open_port(path: &Path) -> File {
    let mut failures = 0u64;
    loop {
        match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => {
                crate::log!("serving on {}", path.display());
                return file;
            }
            Err(e) => {
                if failures % 100 == 0 {
                    crate::log!("cannot open {}: {e}; retrying", path.display());
                }
                failures += 1;
                thread::sleep(RECONNECT_PAUSE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotmem_proto::{decode_agent_message, AgentMessage};

    fn run(input: &[u8]) -> (Session, Vec<Response>) {
        let mut reader = input;
        let mut out = Vec::new();
        let session = serve(&Handler::default(), &mut reader, &mut out).unwrap();
        let responses = out
            .split_inclusive(|&b| b == b'\n')
            .map(|line| match decode_agent_message(line).unwrap() {
                AgentMessage::Response(r) => r,
                AgentMessage::Event(e) => panic!("unexpected event {e:?}"),
            })
            .collect();
        (session, responses)
    }

    #[test]
    fn answers_each_line_in_order() {
        let input = b"{\"v\":1,\"id\":1,\"op\":\"hello\"}\n\n  \ngarbage\n{\"v\":1,\"id\":3,\"op\":\"hello\"}\n";
        let (session, responses) = run(input);
        assert_eq!(session.ended, Ended::Eof);
        let ids: Vec<_> = responses.iter().map(|r| r.id).collect();
        assert_eq!(ids, [Some(1), None, Some(3)]);
        assert!(responses[1].outcome.is_err());
    }

    #[test]
    fn partial_line_at_eof_is_dropped() {
        let (session, responses) = run(b"{\"v\":1,\"id\":1,\"op\":\"hello\"}\n{\"v\":1,\"id\":2,");
        assert_eq!((session.requests, responses.len()), (1, 1));
    }

    #[test]
    fn stops_after_poweroff() {
        let input =
            b"{\"v\":1,\"id\":1,\"op\":\"poweroff\"}\n{\"v\":1,\"id\":2,\"op\":\"hello\"}\n";
        let (session, responses) = run(input);
        assert_eq!(session.ended, Ended::PowerOff);
        assert_eq!(responses.len(), 1);
    }

    #[test]
    fn overlong_lines_are_rejected_and_skipped() {
        let mut reader = BufReader::with_capacity(8, &b"0123456789abcdef\nshort\n"[..]);
        let mut buf = Vec::new();
        assert_eq!(
            read_line(&mut reader, &mut buf, 10).unwrap(),
            LineRead::TooLong
        );
        assert_eq!(
            read_line(&mut reader, &mut buf, 10).unwrap(),
            LineRead::Line
        );
        assert_eq!(buf, b"short\n");
        assert_eq!(read_line(&mut reader, &mut buf, 10).unwrap(), LineRead::Eof);
    }
}
