//! The serve loops: sequential request/response over a byte stream.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use hotmem_proto::{decode_request, encode_line, ErrorInfo, ErrorKind, Op, Response};

use crate::cancel::Cancel;
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

/// Sends on a writer shared by the request threads; a failure (the host
/// went away) is logged, the reader sees it as end of input.
fn send_shared<W: Write>(writer: &Mutex<W>, response: &Response) {
    let mut w = writer.lock().unwrap_or_else(PoisonError::into_inner);
    if let Err(e) = send(&mut *w, response) {
        crate::log!("cannot send the answer to request {:?}: {e}", response.id);
    }
}

/// Serves requests from `reader` until end of input or a power-off request.
///
/// Each request runs on its own thread, so a long `exec`, `events` wait,
/// `wait_free_partitions` or `stop_instance` does not hold up the others;
/// answers go out as they are ready, matched by id. `cancel` and
/// `poweroff` are handled at once. At end of input (the host went away) or
/// a power-off, the requests still running are cancelled and waited for.
pub fn serve<R: BufRead, W: Write + Send>(
    handler: &Handler,
    reader: &mut R,
    writer: W,
) -> io::Result<Session> {
    let writer = Mutex::new(writer);
    let writer = &writer;
    thread::scope(|scope| {
        let mut buf = Vec::new();
        let mut requests = 0;
        let ended = loop {
            let request = match read_line(reader, &mut buf, MAX_LINE) {
                Err(e) => {
                    handler.cancel_all();
                    return Err(e);
                }
                Ok(LineRead::Eof) => break Ended::Eof,
                Ok(LineRead::TooLong) => {
                    let msg = format!("request line longer than {MAX_LINE} bytes");
                    let info = ErrorInfo::new(ErrorKind::BadRequest, msg);
                    send_shared(writer, &Response::error(None, info));
                    requests += 1;
                    continue;
                }
                Ok(LineRead::Line) if buf.trim_ascii().is_empty() => continue,
                Ok(LineRead::Line) => decode_request(&buf),
            };
            requests += 1;
            let request = match request {
                Ok(request) => request,
                Err(rejected) => {
                    send_shared(writer, &rejected.into_response());
                    continue;
                }
            };
            if matches!(request.op, Op::Poweroff | Op::Cancel(_)) {
                let (response, after) = handler.handle(request, &Cancel::never());
                send_shared(writer, &response);
                if after == After::PowerOff {
                    break Ended::PowerOff;
                }
                continue;
            }
            let id = request.id;
            let token = handler.requests.begin(id);
            scope.spawn(move || {
                let (response, _) = handler.handle(request, &token);
                handler.requests.end(id, &token);
                send_shared(writer, &response);
            });
        };
        let running = handler.cancel_all();
        if running > 0 {
            crate::log!("cancelling {running} running request(s)");
        }
        Ok(Session { requests, ended })
    })
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
    loop {
        let session = serve(handler, &mut reader, port)?;
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
    use hotmem_proto::{
        decode_agent_message, AgentMessage, CancelArgs, EventList, EventsArgs, ExecArgs,
        StartInstanceArgs,
    };
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

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
    fn answers_each_line() {
        let input = b"{\"v\":1,\"id\":1,\"op\":\"hello\"}\n\n  \ngarbage\n{\"v\":1,\"id\":3,\"op\":\"hello\"}\n";
        let (session, responses) = run(input);
        assert_eq!(session.ended, Ended::Eof);
        assert_eq!(session.requests, 3);
        let mut ids: Vec<_> = responses.iter().map(|r| r.id).collect();
        ids.sort();
        assert_eq!(ids, [None, Some(1), Some(3)]);
        let garbage = responses.iter().find(|r| r.id.is_none()).unwrap();
        assert!(garbage.outcome.is_err());
    }

    /// The host end of a serve loop running on a socket pair.
    struct Host {
        writer: UnixStream,
        reader: BufReader<UnixStream>,
    }

    impl Host {
        fn send(&mut self, id: u64, op: Op) {
            let line = encode_line(&hotmem_proto::Request::new(id, op)).unwrap();
            self.writer.write_all(&line).unwrap();
        }

        fn recv(&mut self) -> Response {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            match decode_agent_message(line.as_bytes()).unwrap() {
                AgentMessage::Response(r) => r,
                AgentMessage::Event(e) => panic!("unexpected event {e:?}"),
            }
        }
    }

    /// Serves `handler` on a socket pair on a thread; the returned thread
    /// ends when the host end is dropped.
    fn serve_on_socket(handler: Handler) -> (Host, thread::JoinHandle<Session>) {
        let (host, agent) = UnixStream::pair().unwrap();
        let agent_writer = agent.try_clone().unwrap();
        let server = thread::spawn(move || {
            serve(&handler, &mut BufReader::new(agent), agent_writer).unwrap()
        });
        let host = Host {
            writer: host.try_clone().unwrap(),
            reader: BufReader::new(host),
        };
        (host, server)
    }

    #[test]
    fn long_requests_do_not_block_others_and_can_be_cancelled() {
        let (mut host, server) = serve_on_socket(Handler::default());
        host.send(
            1,
            Op::Exec(ExecArgs {
                argv: vec!["sleep".into(), "30".into()],
                ..ExecArgs::default()
            }),
        );
        host.send(
            2,
            Op::Events(EventsArgs {
                wait_ms: 30_000,
                after_seq: Some(0),
                agent_id: None,
            }),
        );
        let start = Instant::now();
        host.send(3, Op::Hello);
        let r = host.recv();
        assert_eq!(r.id, Some(3), "hello answered while exec and events wait");
        assert!(start.elapsed() < Duration::from_secs(10));
        // The host gives up on the exec: cancel answers, then the exec
        // itself answers `cancelled` (its sleep killed).
        host.send(4, Op::Cancel(CancelArgs { request: 1 }));
        let mut answers: Vec<Response> = vec![host.recv(), host.recv()];
        answers.sort_by_key(|r| r.id);
        assert_eq!(answers[0].id, Some(1));
        assert_eq!(
            answers[0].outcome.as_ref().unwrap_err().kind,
            ErrorKind::Cancelled
        );
        assert_eq!(
            answers[1].outcome.as_ref().unwrap(),
            &serde_json::json!({"cancelled": true})
        );
        assert!(start.elapsed() < Duration::from_secs(10));
        // The host goes away: the events wait is cancelled, serve returns.
        drop(host);
        let session = server.join().unwrap();
        assert_eq!(session.ended, Ended::Eof);
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    /// A transport that loses the first answer to request `lose`.
    struct Lossy<W> {
        inner: W,
        lose: u64,
        lost: bool,
    }

    impl<W: Write> Write for Lossy<W> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if !self.lost {
                if let Ok(AgentMessage::Response(r)) = decode_agent_message(buf) {
                    if r.id == Some(self.lose) {
                        self.lost = true;
                        return Ok(buf.len());
                    }
                }
            }
            self.inner.write(buf)
        }

        fn flush(&mut self) -> io::Result<()> {
            self.inner.flush()
        }
    }

    #[test]
    fn a_lost_events_answer_loses_no_event() {
        let (_dir, instances) = crate::instances::tests::table(crate::instances::tests::FAKE_BIND);
        let handler = Handler {
            instances: instances.clone(),
            ..Handler::default()
        };
        for _ in 0..2 {
            instances
                .start(
                    &StartInstanceArgs {
                        argv: vec!["true".into()],
                        hotmem: false,
                        ..StartInstanceArgs::default()
                    },
                    &Cancel::never(),
                )
                .unwrap();
        }
        let (host, agent) = UnixStream::pair().unwrap();
        let writer = Lossy {
            inner: agent.try_clone().unwrap(),
            lose: 1,
            lost: false,
        };
        let server =
            thread::spawn(move || serve(&handler, &mut BufReader::new(agent), writer).unwrap());
        let mut host = Host {
            writer: host.try_clone().unwrap(),
            reader: BufReader::new(host),
        };
        let ask = |host: &mut Host, id| {
            host.send(
                id,
                Op::Events(EventsArgs {
                    wait_ms: 5000,
                    after_seq: Some(0),
                    agent_id: None,
                }),
            )
        };
        // Wait until both exits are queued (the answers are not lost).
        let mut got = Vec::new();
        for id in 10.. {
            ask(&mut host, id);
            let list: EventList = serde_json::from_value(host.recv().outcome.unwrap()).unwrap();
            got = list.events;
            if got.len() == 2 {
                break;
            }
        }
        // The answer to request 1 is lost on the way...
        ask(&mut host, 1);
        // ...so the host asks again with the same cursor: same events.
        ask(&mut host, 2);
        let r = host.recv();
        assert_eq!(r.id, Some(2));
        let list: EventList = serde_json::from_value(r.outcome.unwrap()).unwrap();
        assert_eq!(list.events, got);
        assert_eq!(list.dropped, 0);
        drop(host);
        server.join().unwrap();
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
