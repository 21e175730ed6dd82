//! Finding the agent's virtio-serial port without udev.
//!
//! The kernel lists ports under `/sys/class/virtio-ports/vportXpY/`, with
//! the name given on the QEMU command line in the `name` attribute; devtmpfs
//! creates the matching `/dev/vportXpY` node.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

/// Where the kernel lists virtio-serial ports.
pub const SYS_VIRTIO_PORTS: &str = "/sys/class/virtio-ports";

/// Returns the device name (e.g. `vport1p1`) of the port called `name`,
/// if one is listed under `class_dir`.
pub fn find_port(class_dir: &Path, name: &str) -> io::Result<Option<String>> {
    let entries = match fs::read_dir(class_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        // A port without a name attribute (or one we cannot read) is not ours.
        let Ok(port_name) = fs::read_to_string(entry.path().join("name")) else {
            continue;
        };
        if port_name.trim_end() == name {
            return Ok(Some(entry.file_name().to_string_lossy().into_owned()));
        }
    }
    Ok(None)
}

/// Waits up to `timeout` for port `name` to be listed under `class_dir` and
/// for its node to appear in `dev_dir`; returns the device path.
pub fn wait_for_port(
    class_dir: &Path,
    dev_dir: &Path,
    name: &str,
    timeout: Duration,
) -> io::Result<PathBuf> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(dev) = find_port(class_dir, name)? {
            let path = dev_dir.join(dev);
            if path.exists() {
                return Ok(path);
            }
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no virtio-serial port named {name:?} under {} after {timeout:?}",
                    class_dir.display()
                ),
            ));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_port(class: &Path, dev: &str, name: &str) {
        fs::create_dir_all(class.join(dev)).unwrap();
        fs::write(class.join(dev).join("name"), format!("{name}\n")).unwrap();
    }

    #[test]
    fn finds_port_by_name() {
        let root = tempfile::tempdir().unwrap();
        let class = root.path().join("class");
        fake_port(&class, "vport0p0", "");
        fake_port(&class, "vport1p1", "org.hotmem.agent");
        fs::create_dir_all(class.join("vport2p1")).unwrap(); // no name attribute
        assert_eq!(
            find_port(&class, "org.hotmem.agent").unwrap().as_deref(),
            Some("vport1p1")
        );
        assert_eq!(find_port(&class, "other").unwrap(), None);
        assert_eq!(find_port(&root.path().join("none"), "x").unwrap(), None);
    }

    #[test]
    fn waits_for_device_node() {
        let root = tempfile::tempdir().unwrap();
        let (class, dev) = (root.path().join("class"), root.path().join("dev"));
        fake_port(&class, "vport3p1", "p");
        fs::create_dir_all(&dev).unwrap();
        let short = Duration::from_millis(150);
        let err = wait_for_port(&class, &dev, "p", short).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        fs::write(dev.join("vport3p1"), "").unwrap();
        assert_eq!(
            wait_for_port(&class, &dev, "p", short).unwrap(),
            dev.join("vport3p1")
        );
    }
}
