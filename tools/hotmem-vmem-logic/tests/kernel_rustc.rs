//! Compiles `rust/logic/` the way the kernel module will: as `no_std`
//! modules of a library crate, with the compiler the kernel is built with
//! (Debian's `/usr/bin/rustc`, else the `rustc` on `PATH`), the kernel's
//! lint flags as errors, `panic=abort`, optimization and overflow checks.
//! Then checks that the object code calls no panic routine: every
//! operation in the logic is checked, so none may remain.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Symbol fragments of core's panic entry points (`core::panicking::*`,
/// slice index and length failures, `unwrap`/`expect` failures).
const PANIC_SYMBOLS: [&str; 2] = ["panicking", "_fail"];

fn kernel_rustc() -> PathBuf {
    let debian = Path::new("/usr/bin/rustc");
    if debian.exists() {
        debian.to_path_buf()
    } else {
        PathBuf::from("rustc")
    }
}

fn logic_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rust/logic");
    dir.canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

#[test]
fn logic_compiles_as_kernel_code_without_panics() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernel-rustc");
    std::fs::create_dir_all(&dir).unwrap();
    let logic = logic_dir();
    let mut wrapper = String::from(
        "//! Kernel-style build of the HotMem virtio-mem logic.\n\
         #![no_std]\n#![deny(unsafe_code)]\n",
    );
    for module in [
        "wire",
        "partition",
        "retry",
        "control",
        "driver",
        "exchange",
    ] {
        let file = logic.join(format!("{module}.rs"));
        assert!(file.exists(), "{}", file.display());
    }
    wrapper += &format!(
        "#[path = {:?}]\npub mod logic;\n",
        logic.join("mod.rs").display().to_string()
    );
    let source = dir.join("hotmem_logic.rs");
    std::fs::write(&source, wrapper).unwrap();
    let object = dir.join("hotmem_logic.o");
    let rustc = kernel_rustc();
    let output = Command::new(&rustc)
        .args([
            "--edition=2021",
            "--crate-type=lib",
            "--crate-name=hotmem_logic",
        ])
        .args(["--emit=obj", "--cfg", "MODULE"])
        .args(["-Cpanic=abort", "-Copt-level=2", "-Coverflow-checks=on"])
        .args([
            "-Dwarnings",
            "-Dnon_ascii_idents",
            "-Dunsafe_op_in_unsafe_fn",
        ])
        .args(["-Wmissing_docs", "-Wrust_2018_idioms", "-Wunreachable_pub"])
        .arg("-o")
        .arg(&object)
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", rustc.display()));
    assert!(
        output.status.success(),
        "{} failed:\n{}",
        rustc.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let bytes = std::fs::read(&object).unwrap();
    for needle in PANIC_SYMBOLS {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "the object references a panic routine ({needle})"
        );
    }
}
