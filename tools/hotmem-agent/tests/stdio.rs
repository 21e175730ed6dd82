//! Runs the real `hotmem-agent --stdio` binary and talks the protocol to it.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use hotmem_proto::{
    decode_agent_message, encode_line, AgentMessage, ErrorKind, ExecArgs, ExecResult, HelloResult,
    Op, Request, Response,
};

struct Agent {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Agent {
    fn spawn() -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hotmem-agent"))
            .arg("--stdio")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn hotmem-agent");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Agent {
            child,
            stdin,
            stdout,
        }
    }

    fn send_raw(&mut self, line: &[u8]) -> Response {
        self.stdin.write_all(line).unwrap();
        self.stdin.flush().unwrap();
        let mut reply = String::new();
        self.stdout.read_line(&mut reply).unwrap();
        match decode_agent_message(reply.as_bytes()).unwrap() {
            AgentMessage::Response(r) => r,
            AgentMessage::Event(e) => panic!("unexpected event {e:?}"),
        }
    }

    fn call(&mut self, id: u64, op: Op) -> Response {
        let resp = self.send_raw(&encode_line(&Request::new(id, op)).unwrap());
        assert_eq!(resp.id, Some(id));
        resp
    }
}

#[test]
fn serves_requests_over_stdio() {
    let mut agent = Agent::spawn();

    let hello: HelloResult =
        serde_json::from_value(agent.call(1, Op::Hello).outcome.unwrap()).unwrap();
    assert_eq!(hello.version, hotmem_proto::PROTOCOL_VERSION);

    let exec = Op::Exec(ExecArgs {
        argv: vec!["sh".into(), "-c".into(), "echo hi; exit 3".into()],
        ..ExecArgs::default()
    });
    let result: ExecResult = serde_json::from_value(agent.call(2, exec).outcome.unwrap()).unwrap();
    assert_eq!((result.status, result.stdout.as_str()), (Some(3), "hi\n"));

    let bad = agent.send_raw(b"{\"v\":1,\"id\":\n");
    assert_eq!(bad.id, None);
    assert_eq!(bad.outcome.unwrap_err().kind, ErrorKind::BadRequest);

    let unknown = agent.send_raw(b"{\"v\":1,\"id\":4,\"op\":\"migrate_instance\"}\n");
    assert_eq!(unknown.id, Some(4));
    assert_eq!(unknown.outcome.unwrap_err().kind, ErrorKind::UnsupportedOp);

    // Instance operations: bad arguments and unknown instances are answered
    // with errors, and the agent keeps serving.
    let bad = agent.send_raw(b"{\"v\":1,\"id\":6,\"op\":\"start_instance\",\"argv\":7}\n");
    assert_eq!(bad.id, Some(6));
    assert_eq!(bad.outcome.unwrap_err().kind, ErrorKind::BadRequest);
    let empty = agent.send_raw(b"{\"v\":1,\"id\":7,\"op\":\"start_instance\",\"argv\":[]}\n");
    assert_eq!(empty.outcome.unwrap_err().kind, ErrorKind::BadRequest);
    let missing = agent.send_raw(b"{\"v\":1,\"id\":8,\"op\":\"stop_instance\",\"instance\":99}\n");
    assert_eq!(missing.outcome.unwrap_err().kind, ErrorKind::NoSuchInstance);
    let list = agent.send_raw(b"{\"v\":1,\"id\":9,\"op\":\"list_instances\"}\n");
    assert_eq!(list.outcome.unwrap(), serde_json::json!({"instances": []}));
    let events = agent.send_raw(b"{\"v\":1,\"id\":10,\"op\":\"events\",\"wait_ms\":10}\n");
    let events = events.outcome.unwrap();
    assert_eq!(
        (&events["events"], &events["dropped"]),
        (&serde_json::json!([]), &serde_json::json!(0))
    );
    assert_eq!(events["agent_id"], serde_json::json!(hello.agent_id));

    // In --stdio mode a poweroff is acknowledged and the agent just exits.
    assert!(agent.call(5, Op::Poweroff).outcome.is_ok());
    assert!(agent.child.wait().unwrap().success());
}

#[test]
fn exits_cleanly_at_eof() {
    let mut agent = Agent::spawn();
    assert!(agent.call(1, Op::Hello).outcome.is_ok());
    drop(agent.stdin);
    assert!(agent.child.wait().unwrap().success());
}
