#[allow(unused_imports, reason = "each test binary uses its own part")]
pub use tollgate_test_support::privileged;
#[allow(dead_code, reason = "each test binary uses its own part")]
pub mod golden;
#[allow(dead_code, reason = "each test binary uses its own part")]
pub mod moto;
#[allow(dead_code, reason = "each test binary uses its own part")]
pub mod s3_server;
