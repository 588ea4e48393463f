//! What tollgate's test suites share (a dev-dependency only; nothing ships with it).
//!
//! [`privileged`] is the one check of every test that needs root (BPF programs, network
//! namespaces, bpffs mounts): without root it says SKIPPED loudly and the test returns, except
//! under CI (`CI` set), which runs as root, where a privileged test must never skip: there it
//! fails instead. Every such test is named `privileged_…` and passes its own name, so
//! `cargo test privileged_` runs them and `cargo test -- --skip privileged_` leaves them out.
//! [`netns`] is the network namespace of a test, removed on drop, and the way into it.
//!
//! [`temp_dir`] makes a test's temporary directory. With the `apiserver` feature,
//! `apiserver` is the one mock Kubernetes API server; with `http-stub`, `http_stub` is an
//! HTTP peer that records requests and answers what the test says.

#[cfg(feature = "apiserver")]
pub mod apiserver;
#[cfg(feature = "http-stub")]
pub mod http_stub;
pub mod netns;

/// Whether `test` may run its privileged part: `true` as root. Otherwise it prints a SKIPPED
/// line naming `test` and returns `false`, or panics when `CI` is set.
pub fn privileged(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root, and CI runs every privileged test as root"
    );
    eprintln!("!!!!!!!! SKIPPED (needs root): {test} !!!!!!!!");
    false
}

/// Runs `program` with `args` and returns its standard output; panics with its standard error
/// if it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A temporary directory, removed on drop ([`temp_dir`] makes one).
pub use tempfile::TempDir;

/// A fresh, empty directory under the system's temporary directory, named
/// `tollgate-<what>-<random>`, removed when the [`TempDir`] is dropped.
pub fn temp_dir(what: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("tollgate-{what}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("a temporary directory for {what}: {e}"))
}
