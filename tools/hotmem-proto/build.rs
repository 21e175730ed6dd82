//! Records the git revision the crate is built from as `HOTMEM_BUILD_REVISION`,
//! so that the host can tell an agent built from another revision (a stale
//! initramfs). `HOTMEM_BUILD_REVISION` in the environment overrides it.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=HOTMEM_BUILD_REVISION");
    let revision = std::env::var("HOTMEM_BUILD_REVISION")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    // Rebuild when HEAD moves (checkout, commit, reset).
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]).map(PathBuf::from) {
        for rel in ["HEAD", "packed-refs", "refs/heads"] {
            let path = dir.join(rel);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    println!("cargo:rustc-env=HOTMEM_BUILD_REVISION={revision}");
}
