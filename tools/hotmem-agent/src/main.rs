//! `hotmem-agent`: the HotMem guest agent.
//!
//! Runs as root in the guest's initramfs and serves the `hotmem-proto`
//! protocol, each request on its own thread, on the virtio-serial port named
//! `org.hotmem.agent` (or on stdin/stdout with `--stdio`, for host tests).
//! Diagnostics go to stderr, i.e. the guest console.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hotmem_proto::AGENT_PORT_NAME;
use nix::sys::reboot::{reboot, RebootMode};

/// Logs one diagnostic line to stderr (the guest console).
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        eprintln!("hotmem-agent: {}", format_args!($($arg)*))
    };
}

mod cancel;
mod exec;
mod handler;
mod instances;
mod port;
mod serve;
mod sysfs;

use handler::Handler;
use serve::Ended;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "HotMem guest agent (serves hotmem-proto on virtio-serial)"
)]
struct Args {
    /// Name of the virtio-serial port to serve on.
    #[arg(long, default_value = AGENT_PORT_NAME)]
    port_name: String,

    /// Serve on this device instead of looking the port up by name.
    #[arg(long, conflicts_with = "stdio")]
    device: Option<PathBuf>,

    /// Serve on stdin/stdout and exit at EOF (host tests). A `poweroff`
    /// request only makes the agent exit in this mode.
    #[arg(long)]
    stdio: bool,

    /// How long to wait for the port to appear (e.g. 30s, 2m).
    #[arg(long, value_parser = hotmem_units::parse_duration, default_value = "30s")]
    wait: Duration,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let handler = Handler::default();
    if args.stdio {
        return serve_stdio(&handler);
    }
    let device = match device_path(&args) {
        Ok(path) => path,
        Err(e) => {
            log!("{e}");
            return ExitCode::FAILURE;
        }
    };
    loop {
        serve::serve_device(&handler, &device);
        // Returns only if reboot(2) failed: keep serving rather than exit,
        // since the agent may be PID 1.
        power_off();
    }
}

/// The device to serve on: `--device`, or the port found by name.
fn device_path(args: &Args) -> io::Result<PathBuf> {
    if let Some(device) = &args.device {
        return Ok(device.clone());
    }
    log!("looking for virtio-serial port {:?}", args.port_name);
    port::wait_for_port(
        Path::new(port::SYS_VIRTIO_PORTS),
        Path::new("/dev"),
        &args.port_name,
        args.wait,
    )
}

/// Serves on stdin/stdout until EOF or a power-off request.
fn serve_stdio(handler: &Handler) -> ExitCode {
    let stdin = io::stdin();
    match serve::serve(handler, &mut stdin.lock(), io::stdout()) {
        Ok(session) => {
            if session.ended == Ended::PowerOff {
                log!("poweroff requested; --stdio mode, so just exiting");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            log!("stdio: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Syncs filesystems and powers the machine off.
fn power_off() {
    log!("powering off");
    nix::unistd::sync();
    // reboot(2) only returns on failure.
    let Err(e) = reboot(RebootMode::RB_POWER_OFF);
    log!("reboot(RB_POWER_OFF) failed: {e}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_wait_is_a_duration() {
        let args = Args::try_parse_from(["hotmem-agent", "--wait", "2m"]).unwrap();
        assert_eq!(args.wait, Duration::from_secs(120));
        assert_eq!(
            Args::try_parse_from(["hotmem-agent"]).unwrap().wait,
            Duration::from_secs(30)
        );
        assert!(Args::try_parse_from(["hotmem-agent", "--wait", "30"]).is_err());
    }
}
