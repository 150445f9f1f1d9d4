//! Build script: `--version` names the git commit when the binary is built from a
//! checkout (`dialsync 0.1.0 (git 1a2b3c4)`); a build from a source package says only the
//! version.

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=10", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|c| !c.is_empty());
    let suffix = commit.map_or_else(String::new, |c| format!(" (git {c})"));
    println!("cargo:rustc-env=DIALSYNC_VERSION_SUFFIX={suffix}");
    // Build again when another commit is checked out or made (not on every edit: the
    // commit says what the build started from).
    if std::path::Path::new(".git/HEAD").exists() {
        println!("cargo:rerun-if-changed=.git/HEAD");
    }
    if let Ok(head) = std::fs::read_to_string(".git/HEAD") {
        // A branch's file (a packed ref has none: then the HEAD file alone is watched).
        let branch = head
            .strip_prefix("ref: ")
            .map(|r| format!(".git/{}", r.trim()));
        if let Some(b) = branch.filter(|b| std::path::Path::new(b).exists()) {
            println!("cargo:rerun-if-changed={b}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
