//! Guest configuration and the QEMU command line built from it.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use hotmem_units::qemu_size;

/// QOM path of the virtio-mem device (`-device virtio-mem-pci,id=vm0`).
pub const VMEM_QOM_PATH: &str = "/machine/peripheral/vm0";

/// Name of the agent's virtio-serial port.
pub const AGENT_PORT_NAME: &str = hotmem_proto::AGENT_PORT_NAME;

/// Longest Unix socket path (`sun_path` is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Default limit for one agent command.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The files QEMU and hotmemctl keep in a run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// Wraps `path` (not created or checked).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Guest serial console output.
    pub fn console_log(&self) -> PathBuf {
        self.path.join("console.log")
    }

    /// QEMU's own stdout/stderr.
    pub fn qemu_log(&self) -> PathBuf {
        self.path.join("qemu.log")
    }

    /// QMP socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.path.join("qmp.sock")
    }

    /// Guest agent socket (host end of the virtio-serial port).
    pub fn agent_socket(&self) -> PathBuf {
        self.path.join("agent.sock")
    }

    /// The agent's `hello` at boot (JSON), to notice a restarted agent.
    pub fn agent_hello(&self) -> PathBuf {
        self.path.join("agent-hello.json")
    }

    /// Where `hotmemctl events` keeps its [`crate::agent::EventCursor`].
    pub fn event_cursor(&self) -> PathBuf {
        self.path.join("events.cursor")
    }

    /// Lock file serialising hotmemctl invocations on this guest.
    pub fn lock_file(&self) -> PathBuf {
        self.path.join("hotmemctl.lock")
    }

    /// PID of the QEMU process.
    pub fn pid_file(&self) -> PathBuf {
        self.path.join("qemu.pid")
    }

    /// The full QEMU command line, shell-quoted, for humans.
    pub fn cmdline_file(&self) -> PathBuf {
        self.path.join("qemu.cmdline")
    }
}

/// CPU accelerator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Software emulation (`-accel tcg -cpu max`); timings are not representative.
    #[default]
    Tcg,
    /// Hardware virtualization (`-accel kvm -cpu host`).
    Kvm,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Tcg => "TCG",
            Accel::Kvm => "KVM",
        })
    }
}

impl FromStr for Accel {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcg" => Ok(Accel::Tcg),
            "kvm" => Ok(Accel::Kvm),
            _ => Err(ConfigError(format!(
                "unknown accelerator {s:?} (expected tcg or kvm)"
            ))),
        }
    }
}

/// An invalid [`VmConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid VM configuration: {0}")]
pub struct ConfigError(pub String);

/// Everything needed to boot a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// QEMU binary (default `qemu-system-x86_64`, looked up in `PATH`).
    pub qemu: PathBuf,
    /// Guest kernel (bzImage).
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initrd: PathBuf,
    /// Extra kernel command line, appended to `console=ttyS0 panic=-1`.
    pub append: String,
    /// Accelerator (default TCG).
    pub accel: Accel,
    /// Number of vCPUs (default 2).
    pub smp: u32,
    /// Boot memory in bytes (default 1 GiB).
    pub memory: u64,
    /// virtio-mem region size in bytes (default 4 GiB).
    pub vmem_size: u64,
    /// virtio-mem block size in bytes (default 2 MiB).
    pub vmem_block_size: u64,
    /// Initial virtio-mem requested size in bytes (default 0).
    pub vmem_requested: u64,
    /// NUMA node of the virtio-mem device (default 0).
    pub vmem_node: u32,
    /// Whether QEMU reserves swap space for the whole virtio-mem region up
    /// front (default true). `false` (`reserve=off`, `MAP_NORESERVE`) lets
    /// a region larger than the host's memory plus swap be mapped, e.g.
    /// 256 GiB on a 24 GiB host: only what the guest plugs and touches is
    /// ever backed.
    pub vmem_reserve: bool,
    /// Whether the device preallocates the memory of every block it plugs
    /// before it answers the PLUG (`prealloc=on`; default false): each PLUG
    /// takes the time to populate its blocks.
    pub vmem_prealloc: bool,
    /// Number of NUMA nodes (default 1); boot memory is split between them.
    pub numa_nodes: u32,
    /// Where sockets and logs go.
    pub run_dir: PathBuf,
    /// Limit for QEMU start + guest boot + agent hello (default 120 s).
    pub boot_timeout: Duration,
    /// Default limit for one agent command (default 60 s).
    pub command_timeout: Duration,
}

impl VmConfig {
    /// A configuration with the defaults documented on each field.
    pub fn new(
        kernel: impl Into<PathBuf>,
        initrd: impl Into<PathBuf>,
        run_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            qemu: PathBuf::from("qemu-system-x86_64"),
            kernel: kernel.into(),
            initrd: initrd.into(),
            append: String::new(),
            accel: Accel::Tcg,
            smp: 2,
            memory: GIB,
            vmem_size: 4 * GIB,
            vmem_block_size: 2 * MIB,
            vmem_requested: 0,
            vmem_node: 0,
            vmem_reserve: true,
            vmem_prealloc: false,
            numa_nodes: 1,
            run_dir: run_dir.into(),
            boot_timeout: Duration::from_secs(120),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }

    /// The run directory as a [`RunDir`].
    pub fn dir(&self) -> RunDir {
        RunDir::new(&self.run_dir)
    }

    /// Checks the values QEMU would otherwise reject with a less clear message.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError(msg));
        let bs = self.vmem_block_size;
        if self.smp == 0 {
            return fail("smp must be at least 1".into());
        }
        if self.numa_nodes == 0 {
            return fail("numa_nodes must be at least 1".into());
        }
        if self.vmem_node >= self.numa_nodes {
            return fail(format!(
                "vmem node {} does not exist ({} NUMA node(s))",
                self.vmem_node, self.numa_nodes
            ));
        }
        if self.memory == 0 || self.memory % (2 * MIB) != 0 {
            return fail("boot memory must be a non-zero multiple of 2 MiB".into());
        }
        if self.memory / u64::from(self.numa_nodes) < 2 * MIB {
            return fail("boot memory too small for the number of NUMA nodes".into());
        }
        if !bs.is_power_of_two() || bs < MIB {
            return fail("vmem block size must be a power of two >= 1 MiB".into());
        }
        if self.vmem_size == 0 || self.vmem_size % bs != 0 {
            return fail("vmem region size must be a non-zero multiple of the block size".into());
        }
        if self.vmem_requested > self.vmem_size || self.vmem_requested % bs != 0 {
            return fail(
                "vmem requested size must be a multiple of the block size within the region".into(),
            );
        }
        self.check_socket_paths()
    }

    fn check_socket_paths(&self) -> Result<(), ConfigError> {
        let dir = self.dir();
        for sock in [dir.qmp_socket(), dir.agent_socket()] {
            if sock.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(ConfigError(format!(
                    "socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter run dir",
                    sock.display()
                )));
            }
        }
        Ok(())
    }

    /// The kernel command line.
    pub fn kernel_cmdline(&self) -> String {
        format!("console=ttyS0 panic=-1 {}", self.append)
            .trim_end()
            .to_owned()
    }

    /// QEMU arguments (without the program), after [`VmConfig::validate`].
    pub fn qemu_args(&self) -> Result<Vec<OsString>, ConfigError> {
        self.validate()?;
        let dir = self.dir();
        let mut a = Args::default();
        a.push("-machine").push("q35");
        match self.accel {
            Accel::Tcg => a.push("-accel").push("tcg").push("-cpu").push("max"),
            Accel::Kvm => a.push("-accel").push("kvm").push("-cpu").push("host"),
        };
        a.push("-smp").push(self.smp_topology());
        let maxmem = self.memory + self.vmem_size;
        a.push("-m").push(format!(
            "{},maxmem={}",
            qemu_size(self.memory),
            qemu_size(maxmem)
        ));
        self.push_numa(&mut a);
        a.push("-nodefaults")
            .push("-display")
            .push("none")
            .push("-no-reboot");
        a.push("-kernel").push(&self.kernel);
        a.push("-initrd").push(&self.initrd);
        a.push("-append").push(self.kernel_cmdline());
        a.push("-chardev")
            .push(opt_path("file,id=con0,path=", &dir.console_log(), ""));
        a.push("-serial").push("chardev:con0");
        let server = ",server=on,wait=off";
        a.push("-qmp")
            .push(opt_path("unix:", &dir.qmp_socket(), server));
        a.push("-device").push("virtio-serial-pci,id=vser0");
        a.push("-chardev").push(opt_path(
            "socket,id=agent0,path=",
            &dir.agent_socket(),
            server,
        ));
        a.push("-device").push(format!(
            "virtserialport,bus=vser0.0,chardev=agent0,name={AGENT_PORT_NAME}"
        ));
        self.push_vmem(&mut a);
        Ok(a.0)
    }

    /// The `-smp` value: with several nodes and vCPUs that divide evenly,
    /// one socket per node, so that no cache is shared across nodes (the
    /// guest warns at boot about an LLC shared by CPUs of different nodes).
    fn smp_topology(&self) -> String {
        let (smp, nodes) = (self.smp, self.numa_nodes);
        if nodes > 1 && smp % nodes == 0 {
            format!("{smp},sockets={nodes},cores={},threads=1", smp / nodes)
        } else {
            smp.to_string()
        }
    }

    /// `-object`/`-numa` pairs splitting boot memory and vCPUs between nodes.
    fn push_numa(&self, a: &mut Args) {
        let nodes = u64::from(self.numa_nodes);
        if nodes <= 1 {
            return;
        }
        let per_node = self.memory / nodes / (2 * MIB) * (2 * MIB);
        for node in 0..self.numa_nodes {
            let last = u64::from(node) == nodes - 1;
            let size = if last {
                self.memory - per_node * (nodes - 1)
            } else {
                per_node
            };
            a.push("-object").push(format!(
                "memory-backend-ram,id=ram-node{node},size={}",
                qemu_size(size)
            ));
            let mut numa = format!("node,nodeid={node},memdev=ram-node{node}");
            if let Some(cpus) = cpu_range(node, self.numa_nodes, self.smp) {
                numa.push_str(&format!(",cpus={cpus}"));
            }
            a.push("-numa").push(numa);
        }
    }

    /// The virtio-mem memory backend and device.
    fn push_vmem(&self, a: &mut Args) {
        a.push("-object").push(format!(
            "memory-backend-ram,id=vmem0,size={}{}",
            qemu_size(self.vmem_size),
            if self.vmem_reserve {
                ""
            } else {
                ",reserve=off"
            }
        ));
        a.push("-device").push(format!(
            "virtio-mem-pci,id=vm0,memdev=vmem0,node={},block-size={},requested-size={}{}",
            self.vmem_node,
            qemu_size(self.vmem_block_size),
            qemu_size(self.vmem_requested),
            if self.vmem_prealloc {
                ",prealloc=on"
            } else {
                ""
            }
        ));
    }
}

/// The vCPUs of `node` when `smp` vCPUs are split contiguously over `nodes`
/// nodes, as a QEMU range (`2` or `2-3`); `None` for a CPU-less node.
fn cpu_range(node: u32, nodes: u32, smp: u32) -> Option<String> {
    let first = node * smp / nodes;
    let end = (node + 1) * smp / nodes;
    match end.checked_sub(first)? {
        0 => None,
        1 => Some(first.to_string()),
        _ => Some(format!("{first}-{}", end - 1)),
    }
}

/// A QEMU option string embedding `path`, with commas doubled as QEMU's
/// option syntax requires.
fn opt_path(prefix: &str, path: &Path, suffix: &str) -> OsString {
    let mut bytes = prefix.as_bytes().to_vec();
    for &b in path.as_os_str().as_bytes() {
        bytes.push(b);
        if b == b',' {
            bytes.push(b',');
        }
    }
    bytes.extend_from_slice(suffix.as_bytes());
    OsString::from_vec(bytes)
}

/// Argument list builder.
#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.0.push(arg.as_ref().to_owned());
        self
    }
}

/// Renders a command line for a shell, quoting where needed.
pub fn shell_quote<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let quote = |arg: &OsStr| {
        let s = arg.to_string_lossy();
        let plain = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_./,:=@%+-".contains(c));
        if plain {
            s.into_owned()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    args.into_iter()
        .map(|a| quote(a.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cfg: &VmConfig) -> Vec<String> {
        cfg.qemu_args()
            .unwrap()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn default_command_line_matches_the_reference_shape() {
        let cfg = VmConfig::new("/k/bzImage", "/k/initrd.gz", "/run/d");
        let want = "-machine q35 -accel tcg -cpu max -smp 2 -m 1G,maxmem=5G \
            -nodefaults -display none -no-reboot -kernel /k/bzImage -initrd /k/initrd.gz \
            -append 'console=ttyS0 panic=-1' \
            -chardev file,id=con0,path=/run/d/console.log -serial chardev:con0 \
            -qmp unix:/run/d/qmp.sock,server=on,wait=off \
            -device virtio-serial-pci,id=vser0 \
            -chardev socket,id=agent0,path=/run/d/agent.sock,server=on,wait=off \
            -device virtserialport,bus=vser0.0,chardev=agent0,name=org.hotmem.agent \
            -object memory-backend-ram,id=vmem0,size=4G \
            -device virtio-mem-pci,id=vm0,memdev=vmem0,node=0,block-size=2M,requested-size=0";
        assert_eq!(shell_quote(cfg.qemu_args().unwrap()), want);
    }

    #[test]
    fn kvm_and_custom_sizes() {
        let mut cfg = VmConfig::new("k", "i", "/d");
        cfg.accel = Accel::Kvm;
        cfg.smp = 4;
        cfg.memory = 1536 * MIB;
        cfg.vmem_size = 8 * GIB;
        cfg.vmem_block_size = 4 * MIB;
        cfg.vmem_requested = 512 * MIB;
        cfg.append = "memhp_default_state=online quiet".into();
        let a = args(&cfg);
        assert_eq!(after(&a, "-accel"), ["kvm"]);
        assert_eq!(after(&a, "-cpu"), ["host"]);
        assert_eq!(after(&a, "-smp"), ["4"]);
        assert_eq!(after(&a, "-m"), ["1536M,maxmem=9728M"]);
        assert_eq!(
            after(&a, "-append"),
            ["console=ttyS0 panic=-1 memhp_default_state=online quiet"]
        );
        assert!(a.contains(
            &"virtio-mem-pci,id=vm0,memdev=vmem0,node=0,block-size=4M,requested-size=512M".into()
        ));
        assert!(after(&a, "-numa").is_empty());
    }

    #[test]
    fn vmem_reserve_off_and_prealloc() {
        let mut cfg = VmConfig::new("k", "i", "/d");
        cfg.vmem_size = 256 * GIB;
        cfg.vmem_block_size = 128 * MIB;
        cfg.vmem_reserve = false;
        let a = args(&cfg);
        assert!(
            after(&a, "-object").contains(&"memory-backend-ram,id=vmem0,size=256G,reserve=off"),
            "{a:?}"
        );
        assert_eq!(after(&a, "-m"), ["1G,maxmem=257G"]);
        assert!(!a.iter().any(|x| x.contains("prealloc")));
        cfg.vmem_reserve = true;
        cfg.vmem_prealloc = true;
        let a = args(&cfg);
        assert!(after(&a, "-object").contains(&"memory-backend-ram,id=vmem0,size=256G"));
        assert!(after(&a, "-device").contains(
            &"virtio-mem-pci,id=vm0,memdev=vmem0,node=0,block-size=128M,requested-size=0,\
              prealloc=on"
        ));
    }

    #[test]
    fn numa_nodes_get_a_socket_each_when_cpus_divide_evenly() {
        let mut cfg = VmConfig::new("k", "i", "/d");
        cfg.numa_nodes = 2;
        cfg.smp = 2;
        assert_eq!(
            after(&args(&cfg), "-smp"),
            ["2,sockets=2,cores=1,threads=1"]
        );
        cfg.numa_nodes = 3;
        assert_eq!(after(&args(&cfg), "-smp"), ["2"]);
        cfg.numa_nodes = 1;
        assert_eq!(after(&args(&cfg), "-smp"), ["2"]);
    }

    #[test]
    fn numa_nodes_split_memory_and_cpus() {
        let mut cfg = VmConfig::new("k", "i", "/d");
        cfg.numa_nodes = 3;
        cfg.vmem_node = 2;
        cfg.smp = 2;
        let a = args(&cfg);
        // 1024 MiB / 3 = 341.33 MiB, aligned down to 340 MiB; the rest to the last.
        assert_eq!(
            after(&a, "-object")[..3],
            [
                "memory-backend-ram,id=ram-node0,size=340M",
                "memory-backend-ram,id=ram-node1,size=340M",
                "memory-backend-ram,id=ram-node2,size=344M",
            ]
        );
        assert_eq!(
            after(&a, "-numa"),
            [
                "node,nodeid=0,memdev=ram-node0",
                "node,nodeid=1,memdev=ram-node1,cpus=0",
                "node,nodeid=2,memdev=ram-node2,cpus=1",
            ]
        );
        assert!(a
            .iter()
            .any(|x| x.contains("virtio-mem-pci") && x.contains("node=2,")));
    }

    #[test]
    fn cpu_ranges() {
        assert_eq!(cpu_range(0, 2, 4).as_deref(), Some("0-1"));
        assert_eq!(cpu_range(1, 2, 4).as_deref(), Some("2-3"));
        assert_eq!(cpu_range(0, 1, 1).as_deref(), Some("0"));
        assert_eq!(cpu_range(0, 2, 1), None);
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        let cfg = VmConfig::new("k", "i", "/tmp/a,b");
        let a = args(&cfg);
        assert!(a.contains(&"unix:/tmp/a,,b/qmp.sock,server=on,wait=off".into()));
        assert!(a.contains(&"file,id=con0,path=/tmp/a,,b/console.log".into()));
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let base = VmConfig::new("k", "i", "/d");
        let cases: Vec<fn(&mut VmConfig)> = vec![
            |c| c.smp = 0,
            |c| c.numa_nodes = 0,
            |c| c.vmem_node = 1,
            |c| c.memory = 3 * MIB,
            |c| c.vmem_block_size = 3 * MIB,
            |c| c.vmem_size = 5 * MIB,
            |c| c.vmem_requested = 5 * GIB,
            |c| c.vmem_requested = 3 * MIB,
            |c| c.run_dir = PathBuf::from("/").join("x".repeat(100)),
        ];
        for (i, mutate) in cases.into_iter().enumerate() {
            let mut cfg = base.clone();
            mutate(&mut cfg);
            assert!(cfg.qemu_args().is_err(), "case {i} should be rejected");
        }
    }

    #[test]
    fn accel_parsing() {
        assert_eq!("tcg".parse::<Accel>(), Ok(Accel::Tcg));
        assert_eq!("KVM".parse::<Accel>(), Ok(Accel::Kvm));
        assert!("hvf".parse::<Accel>().is_err());
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(
            shell_quote(["a", "b c", "it's", ""]),
            r"a 'b c' 'it'\''s' ''"
        );
    }
}
