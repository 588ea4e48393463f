//! The probe on real veths, in network namespaces each test creates and removes: what the
//! kernel hands the TC hooks where BPF_PROG_TEST_RUN cannot tell (a VLAN tag the kernel keeps
//! out of the frame, IPv4 options the forwarding path processes), and which layer drops what.
//!
//! Network safety: traffic only inside the tests' own namespaces, addresses from
//! 198.18.0.0/15, nothing in the root namespace; every traffic loop is bounded in count and
//! time; the namespaces go on drop, also when a test fails. Needs root: without it a test says
//! SKIPPED loudly and returns, except under CI (which runs as root), where it fails.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tollgate_enforcer::{
    compile::{Placement, compile},
    desired::Ids,
    events::EventReader,
    manifest::parse_manifests,
    probe::Probe,
    sync::sync,
};
use tollgate_schemas::{Counter, Direction, FlowEvent, Reason, Verdict, addr, proto};
use tollgate_test_support::netns::{Netns, enter_netns, in_netns, ip, sysctl};
use tollgate_test_support::privileged;

/// Network namespaces of one test, removed on drop (with their veths, routes and sockets'
/// traffic).
struct Namespaces {
    tag: String,
    created: Vec<Netns>,
}

impl Namespaces {
    fn new(tag: &str) -> Self {
        Self {
            tag: format!("tg-{tag}-{}", std::process::id()),
            created: Vec::new(),
        }
    }

    /// Adds `<tag>-<name>` with loopback up and IPv6 off (no router solicitations or MLD
    /// reports reach the probe), and returns its name.
    fn add(&mut self, name: &str) -> String {
        let netns = format!("{}-{name}", self.tag);
        self.created.push(Netns::add(&netns));
        sysctl(
            &netns,
            &[
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        );
        netns
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // The last made first, as they were made.
        while let Some(netns) = self.created.pop() {
            drop(netns);
        }
    }
}

fn ifindex(netns: &str, ifname: &str) -> u32 {
    let out = ip(&["-n", netns, "-o", "link", "show", "dev", ifname]);
    out.split(':')
        .next()
        .and_then(|index| index.trim().parse().ok())
        .expect("ifindex")
}

/// A veth pair: `host` in `node`, `eth0` in `pod`, both up.
fn veth(node: &str, host: &str, pod: &str) {
    ip(&[
        "-n", node, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", pod,
    ]);
    ip(&["-n", node, "link", "set", host, "up"]);
    ip(&["-n", pod, "link", "set", "eth0", "up"]);
}

/// A pod `default/<name>` with `labels` and address `ip`.
fn pod(name: &str, labels: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, \
         labels: {labels}}}\nspec: {{containers: [{{name: c, image: i}}]}}\nstatus: {{phase: \
         Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n"
    )
}

/// The probe, loaded and attached to host veths in `node`, with its events.
struct Attached {
    probe: Probe,
    events: EventReader,
    interfaces: BTreeMap<String, u32>,
    ids: Ids,
}

impl Attached {
    /// `veths`: (pod `namespace/name`, host veth) pairs.
    fn new(node: &str, veths: &[(&str, &str)]) -> Self {
        let mut probe = Probe::load().expect("load the probe");
        let events = probe.take_events().expect("events");
        let mut interfaces = BTreeMap::new();
        for (pod, host) in veths {
            interfaces.insert((*pod).to_owned(), ifindex(node, host));
            in_netns(node, || probe.attach(host).expect("attach"));
        }
        Self {
            probe,
            events,
            interfaces,
            ids: Ids::default(),
        }
    }

    /// Compiles `objects` and syncs the maps.
    fn program(&mut self, objects: &str) {
        let (snapshot, errors) = parse_manifests(objects, "test");
        assert!(errors.is_empty(), "{errors:?}");
        let compiled = compile(
            &snapshot,
            &Placement::Interfaces(&self.interfaces),
            &self.ids,
        );
        assert!(compiled.errors.is_empty(), "{:?}", compiled.errors);
        sync(&mut self.probe.policy_maps(), &compiled.desired).expect("sync");
        self.ids = compiled.ids;
    }

    /// The UDP events of the flow from `src` to `dst` written since the last call.
    fn udp_events(&mut self, src: &str, dst: &str) -> Vec<FlowEvent> {
        let (src, dst) = (v4_bytes(src), v4_bytes(dst));
        self.events
            .drain()
            .into_iter()
            .filter(|e| e.protocol == proto::UDP && e.src_addr == src && e.dst_addr == dst)
            .collect()
    }
}

fn v4_bytes(text: &str) -> [u8; 16] {
    addr::to_bytes(text.parse().expect("address"))
}

fn decided(event: &FlowEvent) -> (Direction, Verdict, Reason) {
    (
        Direction::from_raw(event.direction).expect("direction"),
        Verdict::from_raw(event.verdict).expect("verdict"),
        Reason::from_raw(event.reason).expect("reason"),
    )
}

/// Whether a UDP datagram that `send` sends from inside `from` reaches a socket bound to `to`
/// inside `at`: `send` is called 3 times, 200 ms apart, and the receiver waits at most 2 s.
fn udp_arrives(at: &str, to: SocketAddrV4, from: &str, send: impl Fn() + Send + Sync) -> bool {
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::scope(|scope| {
        let receiver = scope.spawn(move || {
            enter_netns(at);
            let socket = UdpSocket::bind(to).expect("bind the receiver");
            ready_tx.send(()).expect("ready");
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut buf = [0u8; 1500];
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                socket
                    .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                    .expect("timeout");
                if socket.recv_from(&mut buf).is_ok() {
                    return true;
                }
            }
            false
        });
        ready_rx.recv().expect("receiver bound");
        let sender = scope.spawn(|| {
            enter_netns(from);
            for _ in 0..3 {
                send();
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        sender.join().expect("sender");
        receiver.join().expect("receiver")
    })
}

/// The MAC address of `ifname` in `netns`.
fn mac(netns: &str, ifname: &str) -> [u8; 6] {
    let out = ip(&["-n", netns, "-o", "link", "show", "dev", ifname]);
    let text = out
        .split("link/ether ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("link/ether");
    let mut mac = [0u8; 6];
    for (byte, hex) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(hex, 16).expect("hex");
    }
    mac
}

/// An Ethernet frame from `src_mac` to `dst_mac` with `tags` (ethertype, TCI) in the frame
/// itself, carrying an IPv4 UDP datagram with `options` (padded to 4 bytes by the caller).
fn udp_frame(
    (dst_mac, src_mac): ([u8; 6], [u8; 6]),
    tags: &[(u16, u16)],
    (src, dst): (SocketAddrV4, SocketAddrV4),
    options: &[u8],
) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let mut frame = Vec::new();
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    for (ethertype, tci) in tags {
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(&tci.to_be_bytes());
    }
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    let payload = b"tollgate veth test";
    let header_len = 20 + options.len();
    let total = (header_len + 8 + payload.len()) as u16;
    let mut header = vec![0x40 | (header_len / 4) as u8, 0];
    header.extend_from_slice(&total.to_be_bytes());
    header.extend_from_slice(&[0x12, 0x34, 0x40, 0]); // id, don't fragment
    header.extend_from_slice(&[64, proto::UDP, 0, 0]);
    header.extend_from_slice(&src.ip().octets());
    header.extend_from_slice(&dst.ip().octets());
    header.extend_from_slice(options);
    let checksum = !header
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
        .fold(0u32, |sum, word| {
            let sum = sum + word;
            (sum & 0xffff) + (sum >> 16)
        }) as u16;
    header[10..12].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&header);
    frame.extend_from_slice(&src.port().to_be_bytes());
    frame.extend_from_slice(&dst.port().to_be_bytes());
    frame.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0]); // no UDP checksum
    frame.extend_from_slice(payload);
    frame
}

/// Sends `frame` as it is out of `ifname` of the calling thread's namespace (a packet socket:
/// the kernel adds and strips nothing).
fn send_frame(ifname: &str, frame: &[u8]) {
    let index = ifindex_here(ifname);
    // SAFETY: plain socket call; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_ifindex = index;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: the buffer and the address are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            std::ptr::from_ref(&to).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    let error = std::io::Error::last_os_error();
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    assert_eq!(sent, frame.len() as isize, "sendto: {error}");
}

fn ifindex_here(ifname: &str) -> i32 {
    let name = std::ffi::CString::new(ifname).expect("name");
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(index, 0, "no interface {ifname}");
    index as i32
}

const NODE_V: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 3, 1), 7001);
const POD_V: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 3, 2), 5001);
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// A pod that tags its frames, on a real veth with the probe on the node's side (this kernel
/// has no 8021q module, so the pod writes its tags itself, through a packet socket, as a VLAN
/// device would on a veth without tag offload). The kernel takes a received frame's outer tag
/// into the skb's metadata before TC ingress, so the probe decides the IP packet inside, by
/// policy: allowed when no policy isolates the pod (a priority-only tag, VLAN 0, is then
/// delivered to the node as plain IP), denied on record when one does. Only a tag still in the
/// frame after that — the inner one of QinQ — is a frame the probe cannot read: dropped,
/// counted as malformed, without an event.
#[test]
fn privileged_vlan_tagged_frames_through_a_real_veth_are_decided_as_the_ip_inside() {
    if !privileged("privileged_vlan_tagged_frames_through_a_real_veth_are_decided_as_the_ip_inside")
    {
        return;
    }
    let mut namespaces = Namespaces::new("vlan");
    let node = namespaces.add("node");
    let pod_ns = namespaces.add("pod");
    veth(&node, "tgvlan0", &pod_ns);
    ip(&[
        "-n",
        &node,
        "addr",
        "add",
        "198.18.3.1/30",
        "dev",
        "tgvlan0",
    ]);
    ip(&["-n", &pod_ns, "addr", "add", "198.18.3.2/30", "dev", "eth0"]);
    let macs = (mac(&node, "tgvlan0"), mac(&pod_ns, "eth0"));
    let mut probe = Attached::new(&node, &[("default/tagged", "tgvlan0")]);
    let pod_yaml = pod("tagged", "{app: tagged}", "198.18.3.2");
    probe.program(&pod_yaml);
    let tagged = |tags: &'static [(u16, u16)]| {
        let frame = udp_frame(macs, tags, (POD_V, NODE_V), &[]);
        move || send_frame("eth0", &frame)
    };
    let priority_tag = tagged(&[(ETH_P_8021Q, 0xa000)]); // priority 5, VLAN 0
    let vlan_100 = tagged(&[(ETH_P_8021Q, 100)]);
    let qinq = tagged(&[(ETH_P_8021AD, 100), (ETH_P_8021Q, 200)]);
    let (pod_ip, node_ip) = ("198.18.3.2", "198.18.3.1");

    // No policy selects the pod: decided as IPv4 UDP, allowed.
    assert!(udp_arrives(&node, NODE_V, &pod_ns, &priority_tag));
    let events = probe.udp_events(pod_ip, node_ip);
    assert!(
        !events.is_empty(),
        "no event for the priority-tagged packet"
    );
    assert_eq!(
        decided(&events[0]),
        (Direction::Egress, Verdict::Allow, Reason::NotSelected)
    );
    assert_eq!(events[0].family, 4);
    probe.probe.clear_flow_state().expect("clear");
    in_netns(&pod_ns, &vlan_100);
    let events = probe.udp_events(pod_ip, node_ip);
    assert_eq!(
        events.iter().map(decided).collect::<Vec<_>>(),
        [(Direction::Egress, Verdict::Allow, Reason::NotSelected)]
    );

    // Isolated: the same tagged packets are denied by policy, on record.
    probe.program(&format!(
        "{pod_yaml}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: \
         {{name: isolate, namespace: default}}\nspec: {{podSelector: {{}}, policyTypes: \
         [Egress]}}\n"
    ));
    assert!(!udp_arrives(&node, NODE_V, &pod_ns, &priority_tag));
    for send in [&priority_tag, &vlan_100] {
        probe.probe.clear_flow_state().expect("clear");
        probe.udp_events(pod_ip, node_ip);
        in_netns(&pod_ns, send);
        let events = probe.udp_events(pod_ip, node_ip);
        assert_eq!(
            events.iter().map(decided).collect::<Vec<_>>(),
            [(Direction::Egress, Verdict::Deny, Reason::IsolatedNoMatch)]
        );
    }

    // QinQ: the inner tag stays in the frame, the probe cannot read it: dropped, no event.
    let before = probe.probe.counters().expect("counters");
    in_netns(&pod_ns, &qinq);
    let after = probe.probe.counters().expect("counters");
    assert!(probe.udp_events(pod_ip, node_ip).is_empty());
    assert_eq!(
        after.get(Counter::Malformed),
        before.get(Counter::Malformed) + 1
    );
}

/// The `Ip:` counter `name` of `netns`'s stack (`/proc/net/snmp`).
fn ip_counter(netns: &str, name: &str) -> u64 {
    let out = ip(&["netns", "exec", netns, "cat", "/proc/net/snmp"]);
    let mut lines = out.lines().filter(|line| line.starts_with("Ip:"));
    let (names, values) = (lines.next().expect("names"), lines.next().expect("values"));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .expect("counter")
}

/// What happened to one datagram sent through the node.
#[derive(Debug, PartialEq, Eq)]
struct Fate {
    arrived: bool,
    /// The probe's decisions, in order (the sender's egress, the receiver's ingress).
    decisions: Vec<(Direction, Verdict, Reason)>,
    /// Header errors the node's stack counted (bad options among them).
    node_header_errors: u64,
    /// Header errors the receiving pod's stack counted.
    pod_header_errors: u64,
}

/// IPv4 options through the probe and the node's forwarding, on an allowed flow between two
/// pods of one node: the probe skips every option by the header length, so no option is the
/// probe's business. Record Route is processed by the node's forwarding path
/// (`ip_options_compile`, then `ip_forward_options` writes the node's address in): a
/// well-formed one, with room or full, is forwarded and delivered like NOPs; a malformed one
/// (pointer below 4, length past the header) is dropped by the node's stack as a header error
/// (and answered with a parameter problem) after the probe allowed it.
#[test]
fn privileged_ipv4_options_through_a_real_veth_reach_the_pod_unless_the_kernel_refuses_them() {
    if !privileged(
        "privileged_ipv4_options_through_a_real_veth_reach_the_pod_unless_the_kernel_refuses_them",
    ) {
        return;
    }
    let mut namespaces = Namespaces::new("ipopt");
    let node = namespaces.add("node");
    sysctl(&node, &["net.ipv4.ip_forward=1"]);
    let (a, b) = (namespaces.add("a"), namespaces.add("b"));
    for (pod_ns, host, gateway, cidr) in [
        (&a, "tgopta", "198.18.4.1/30", "198.18.4.2/30"),
        (&b, "tgoptb", "198.18.4.5/30", "198.18.4.6/30"),
    ] {
        veth(&node, host, pod_ns);
        ip(&["-n", &node, "addr", "add", gateway, "dev", host]);
        ip(&["-n", pod_ns, "addr", "add", cidr, "dev", "eth0"]);
        let via = gateway.split('/').next().expect("address");
        ip(&["-n", pod_ns, "route", "add", "default", "via", via]);
    }
    let mut probe = Attached::new(&node, &[("default/a", "tgopta"), ("default/b", "tgoptb")]);
    probe.program(&format!(
        "{}{}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: \
         b-from-a, namespace: default}}\nspec:\n  podSelector: {{matchLabels: {{app: b}}}}\n  \
         ingress: [{{from: [{{podSelector: {{matchLabels: {{app: a}}}}}}], ports: [{{protocol: \
         UDP, port: 7002}}]}}]\n",
        pod("a", "{app: a}", "198.18.4.2"),
        pod("b", "{app: b}", "198.18.4.6"),
    ));
    let from = SocketAddrV4::new(Ipv4Addr::new(198, 18, 4, 2), 5002);
    let to = SocketAddrV4::new(Ipv4Addr::new(198, 18, 4, 6), 7002);
    let macs = (mac(&node, "tgopta"), mac(&a, "eth0"));
    let mut fate = |options: &[u8]| {
        probe.probe.clear_flow_state().expect("clear");
        probe.udp_events("198.18.4.2", "198.18.4.6");
        let frame = udp_frame(macs, &[], (from, to), options);
        let (node_errors, pod_errors) = (
            ip_counter(&node, "InHdrErrors"),
            ip_counter(&b, "InHdrErrors"),
        );
        // Each case sends up to 3 copies; only the first one is decided (the rest is
        // established), so the decisions are those of the first.
        let arrived = udp_arrives(&b, to, &a, || send_frame("eth0", &frame));
        Fate {
            arrived,
            decisions: probe
                .udp_events("198.18.4.2", "198.18.4.6")
                .iter()
                .map(decided)
                .collect(),
            node_header_errors: ip_counter(&node, "InHdrErrors") - node_errors,
            pod_header_errors: ip_counter(&b, "InHdrErrors") - pod_errors,
        }
    };
    let allowed = vec![
        (Direction::Egress, Verdict::Allow, Reason::NotSelected),
        (Direction::Ingress, Verdict::Allow, Reason::AllowedByRule),
    ];
    let delivered = Fate {
        arrived: true,
        decisions: allowed.clone(),
        node_header_errors: 0,
        pod_header_errors: 0,
    };
    const RR: u8 = 7;
    for (name, options) in [
        ("no options", vec![]),
        ("four NOPs", vec![1, 1, 1, 1]),
        (
            "record route with room",
            vec![RR, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        (
            "record route, full",
            vec![RR, 11, 12, 198, 18, 9, 1, 198, 18, 9, 2, 0],
        ),
    ] {
        assert_eq!(fate(&options), delivered, "{name}");
    }
    // The largest, as `ping -R` sends it: room for nine addresses, the 40 bytes of options full.
    let mut nine = vec![RR, 39, 4];
    nine.resize(40, 0);
    assert_eq!(fate(&nine), delivered, "record route with nine slots");
    for (name, options) in [
        (
            "record route, pointer 3",
            vec![RR, 11, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        (
            "record route past the header",
            vec![RR, 15, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
    ] {
        let fate = fate(&options);
        assert_eq!(
            (
                fate.arrived,
                &fate.decisions[..1],
                fate.node_header_errors > 0
            ),
            (false, &allowed[..1], true),
            "{name}: {fate:?}"
        );
    }
}
