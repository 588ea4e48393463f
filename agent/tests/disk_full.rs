//! Enforcement never depends on the flow log's disk: `run_agent` in the node of `daemon.rs`
//! with its spool on a full filesystem (a small tmpfs this test mounts on its temporary
//! directory, unmounted when the test ends, also when it fails), and with a spool whose state
//! cannot be read (the collector cannot start at all). In both the agent becomes ready and
//! enforces the seed.
//!
//! Needs root (CI runs as root); without it the test says SKIPPED loudly and returns.

mod support;

use std::ffi::CString;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tollgate_agent::source::StaticSource;

use support::{
    Bpffs, Node, Pod, RunningAgent, agent_config, http_ok, privileged, seed, tcp_reaches,
};
use tollgate_test_support::temp_dir;

const WAIT_PASS: Duration = Duration::from_secs(2);
const WAIT_DENY: Duration = Duration::from_millis(700);

/// A tmpfs of `size` bytes mounted on `dir` (created); unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: usize) -> Self {
        std::fs::create_dir_all(dir).expect("creating the mount point");
        let target = CString::new(dir.as_os_str().as_bytes()).expect("a path");
        let options = CString::new(format!("size={size},mode=0700")).expect("options");
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let mounted = unsafe {
            libc::mount(
                c"tollgate-test".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(
            mounted,
            0,
            "mounting a tmpfs on {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
        Self {
            dir: dir.to_owned(),
        }
    }

    /// Fills the filesystem to its last byte.
    fn fill(&self) {
        let mut file = std::fs::File::create(self.dir.join("filler")).expect("the filler");
        for chunk in [64 * 1024, 4096, 1] {
            let bytes = vec![0xa5; chunk];
            while file.write_all(&bytes).is_ok() {}
        }
    }

    /// Gives the filler's space back.
    fn free(&self) {
        std::fs::remove_file(self.dir.join("filler")).expect("removing the filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.dir.as_os_str().as_bytes()) {
            // SAFETY: a NUL-terminated path that outlives the call.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// The agent is ready within 10 s, allows amazonlinux → nginx:80 and denies → httpd:80.
fn assert_enforces(node: &Node, config_http: std::net::SocketAddr, amazonlinux: &Pod) {
    let ready = (0..100).any(|_| {
        let ok = http_ok(node, config_http, "/readyz");
        if !ok {
            std::thread::sleep(Duration::from_millis(100));
        }
        ok
    });
    assert!(
        ready,
        "/readyz never answered 200: the agent does not enforce"
    );
    assert!(
        tcp_reaches(amazonlinux, node.pod("nginx"), WAIT_PASS),
        "amazonlinux → nginx:80 is allowed"
    );
    assert!(
        !tcp_reaches(amazonlinux, node.pod("httpd"), WAIT_DENY),
        "amazonlinux → httpd:80 is denied"
    );
}

#[test]
fn privileged_the_agent_enforces_with_its_spool_on_a_full_disk() {
    if !privileged("privileged_the_agent_enforces_with_its_spool_on_a_full_disk") {
        return;
    }
    let mut node = Node::new("diskfull");
    node.add_pod("nginx", "198.18.0.20", 1);
    node.add_pod("httpd", "198.18.0.30", 2);
    let amazonlinux = node.add_pod("amazonlinux", "198.18.0.40", 3);
    let bpffs = Bpffs::new("diskfull");
    let files = temp_dir("diskfull");
    let disk = Tmpfs::mount(files.path(), 1 << 20);
    disk.fill();

    let (source, _handle) = StaticSource::new(seed());
    let config = agent_config(&node, &bpffs, files.path());
    let http = config.agent.health_address;
    let agent = RunningAgent::start(&node.netns, config, source);
    assert_enforces(&node, http, &amazonlinux);

    // Space returns: the collector writes what it has on the way out.
    disk.free();
    agent.stop().expect("agent stopped cleanly");
    assert!(
        files.path().join("flows").is_dir(),
        "the flow log was written once there was room"
    );
}

#[test]
fn privileged_a_collector_that_cannot_start_does_not_stop_enforcement() {
    if !privileged("privileged_a_collector_that_cannot_start_does_not_stop_enforcement") {
        return;
    }
    let mut node = Node::new("nocollector");
    node.add_pod("nginx", "198.18.0.20", 1);
    node.add_pod("httpd", "198.18.0.30", 2);
    let amazonlinux = node.add_pod("amazonlinux", "198.18.0.40", 3);
    let bpffs = Bpffs::new("nocollector");
    let files = temp_dir("nocollector");
    // A spool whose state file holds no valid slot: the collector refuses to guess.
    let spool = files.path().join("spool");
    std::fs::create_dir_all(&spool).expect("the spool");
    std::fs::write(spool.join("state"), vec![0x5a; 8192]).expect("a corrupt state");
    std::fs::write(spool.join("state.json"), b"not json").expect("a corrupt state");

    let (source, _handle) = StaticSource::new(seed());
    let config = agent_config(&node, &bpffs, files.path());
    let http = config.agent.health_address;
    let agent = RunningAgent::start(&node.netns, config, source);
    assert_enforces(&node, http, &amazonlinux);

    let error = agent
        .stop()
        .expect_err("the collector's failure is the run's result");
    assert!(error.contains("spool"), "{error}");
}
