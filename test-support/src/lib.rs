//! What tollgate's test suites share (a dev-dependency only; nothing ships with it).
//!
//! [`privileged`] is the one check of every test that needs root (BPF programs, network
//! namespaces, bpffs mounts): without root it says SKIPPED loudly and the test returns, except
//! under CI (`CI` set), which runs as root, where a privileged test must never skip: there it
//! fails instead.

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
