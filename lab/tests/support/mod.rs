//! What the lab's test binaries share.

/// Whether the test runs as root; says SKIPPED loudly when not. Under CI (`CI` set), which
/// runs as root, a test that would skip fails instead: the privileged tests always run there.
pub fn is_root(test: &str) -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test} needs root, and CI runs every privileged test"
        );
        eprintln!("!!!!!!!! SKIPPED (needs root): {test} !!!!!!!!");
    }
    root
}
