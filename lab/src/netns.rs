//! Running code inside a named network namespace.
//!
//! [`in_netns`] opens `/run/netns/NAME` (where `ip netns add` bind-mounts it), starts a
//! dedicated thread, moves that thread alone into the namespace with `setns(CLONE_NEWNET)`,
//! runs the closure there and hands its result back; the thread then ends, so no other code
//! ever runs in the wrong namespace. What the closure creates keeps the namespace it was
//! created in: a socket bound there stays there after the thread is gone, and a TC program
//! attached to an interface by name finds the interface of that namespace.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;

use crate::LabError;

/// Where `ip netns` keeps the namespace named `name`.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// Runs `f` on a fresh thread inside network namespace `netns` and returns its result.
///
/// `f` may borrow from the caller (the thread is scoped). A panic in `f` is resumed on the
/// calling thread.
pub fn in_netns<T, F>(netns: &str, f: F) -> Result<T, LabError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let error = |source| LabError::Netns {
        netns: netns.to_string(),
        source,
    };
    let handle = File::open(netns_path(netns)).map_err(error)?;
    let joined = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // Only this thread moves into the namespace, and it ends after `f`.
                rustix::thread::move_into_link_name_space(
                    handle.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
                Ok(f())
            })
            .join()
    });
    match joined {
        Ok(result) => result.map_err(error),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
