//! What the lab's test binaries share.

/// Whether the test runs as root; says SKIPPED loudly when not.
pub fn is_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("!!!!!!!! SKIPPED (needs root): {test} !!!!!!!!");
    }
    root
}
