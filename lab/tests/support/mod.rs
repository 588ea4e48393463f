//! What the lab's test binaries share.

#[allow(unused_imports, reason = "each test binary uses its own part")]
pub use tollgate_test_support::privileged;
