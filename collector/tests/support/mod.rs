#[allow(dead_code, reason = "each test binary uses its own part")]
pub mod golden;
#[allow(dead_code, reason = "each test binary uses its own part")]
pub mod moto;
#[allow(dead_code, reason = "each test binary uses its own part")]
pub mod s3_server;

/// Whether the test runs as root; says SKIPPED loudly when not.
#[allow(dead_code, reason = "the S3 sink tests need no root")]
pub fn is_root(test: &str) -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("!!!!!!!! SKIPPED (needs root): {test} !!!!!!!!");
    }
    root
}
