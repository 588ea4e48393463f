//! The probe under the node agent's capabilities (the DaemonSet adds BPF, NET_ADMIN, PERFMON
//! and SYS_RESOURCE, never SYS_ADMIN): everything the collector does with the probe's maps
//! must work without CAP_SYS_ADMIN. Needs root to start from.
//!
//! Capabilities are per thread on Linux: the test drops CAP_SYS_ADMIN from the effective set
//! of a thread of its own, so the rest of the test process is unaffected.

use aya::maps::MapData;
use tollgate_test_support::privileged;

/// `_LINUX_CAPABILITY_VERSION_3`.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
/// `CAP_SYS_ADMIN`.
const CAP_SYS_ADMIN: u32 = 21;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Removes CAP_SYS_ADMIN from the calling thread's effective set.
fn drop_sys_admin() {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and two data structs, as capget with version 3 expects.
    let got = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    assert_eq!(got, 0, "capget: {}", std::io::Error::last_os_error());
    data[0].effective &= !(1 << CAP_SYS_ADMIN);
    // SAFETY: as above; capset only narrows this thread's effective set.
    let set = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    assert_eq!(set, 0, "capset: {}", std::io::Error::last_os_error());
}

#[test]
fn privileged_the_collectors_handles_on_the_probes_maps_need_no_cap_sys_admin() {
    if !privileged("privileged_the_collectors_handles_on_the_probes_maps_need_no_cap_sys_admin") {
        return;
    }
    std::thread::spawn(|| {
        drop_sys_admin();
        // The drop took: opening a map by id is a CAP_SYS_ADMIN operation.
        let by_id = MapData::from_id(1).expect_err("opening a map by id needs CAP_SYS_ADMIN");
        assert!(
            by_id.to_string().contains("bpf_map_get_fd_by_id"),
            "{by_id}"
        );

        let mut probe = tollgate_enforcer::probe::Probe::load().expect("load");
        let mut events = probe
            .take_events()
            .expect("take the ring buffer and map handles");
        assert!(events.drain().is_empty());
        events.flush_denies().expect("the deny map");
        events.counters().expect("the counters");
        events.tracked_flows().expect("the conntrack map");
    })
    .join()
    .expect("the thread without CAP_SYS_ADMIN");
}
