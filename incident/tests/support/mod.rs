//! What the incident crate's test binaries share: a stub of Athena, flow logs, and a node; the
//! API server and temporary directories are `tollgate_test_support`'s.
#![allow(dead_code, reason = "each test binary uses its own part")]

pub mod athena_stub;
pub mod flowlog;
pub mod node;

#[allow(unused_imports, reason = "each test binary uses its own part")]
pub use tollgate_test_support::temp_dir;
