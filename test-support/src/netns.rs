//! The network namespaces of a test: [`Netns`] is one, made with `ip netns add` (so `ip -n`,
//! `ip netns exec` and the code under test find it by name under `/run/netns`) and removed on
//! drop, with its veths, routes and sockets, however the test ends (aya's integration tests
//! guard theirs the same way).
//!
//! Code runs inside a namespace on a thread of its own ([`in_netns`], [`spawn_in_netns`]), moved there
//! alone with `setns(CLONE_NEWNET)`, so no other code of the test ever runs in the wrong
//! namespace; what it creates stays in the namespace it was created in (a socket bound there
//! stays there after the thread is gone). [`enter_netns`] moves the calling thread, for a process
//! that exists to run in one namespace.

use std::fs::File;
use std::os::fd::AsFd;
use std::process::Command;
use std::thread::JoinHandle;

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

/// A network namespace with loopback up, removed on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Adds namespace `name` (`ip netns add`) and brings its loopback up.
    pub fn add(name: &str) -> Self {
        ip(&["netns", "add", name]);
        let netns = Self {
            name: name.to_owned(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"]);
        netns
    }

    /// Its name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Removes it now, and panics if `ip netns del` fails (dropping it ignores a failure).
    pub fn delete(mut self) {
        ip(&["netns", "del", &std::mem::take(&mut self.name)]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }
}

/// Moves the calling thread into network namespace `netns`; threads it starts afterwards
/// inherit it. Call it only on a thread of its own, or in a process that exists for it.
pub fn enter_netns(netns: &str) {
    let handle = File::open(format!("/run/netns/{netns}"))
        .unwrap_or_else(|e| panic!("opening namespace {netns}: {e}"));
    move_into_link_name_space(handle.as_fd(), Some(LinkNameSpaceType::Network))
        .unwrap_or_else(|e| panic!("setns into {netns}: {e}"));
}

/// Runs `f` on a fresh thread inside network namespace `netns` and returns its result; a
/// panic in `f` is resumed on the calling thread. `f` may borrow from the caller.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter_netns(netns);
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Starts `f` on a thread of its own inside network namespace `netns`.
pub fn spawn_in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let netns = netns.to_owned();
    std::thread::spawn(move || {
        enter_netns(&netns);
        f()
    })
}

/// Runs `ip` with `args` ([`crate::run`]).
pub fn ip(args: &[&str]) -> String {
    crate::run("ip", args)
}

/// Sets sysctls (`key=value`) inside network namespace `netns`.
pub fn sysctl(netns: &str, settings: &[&str]) {
    let mut args = vec!["netns", "exec", netns, "sysctl", "-q", "-w"];
    args.extend_from_slice(settings);
    ip(&args);
}
