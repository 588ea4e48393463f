//! The agent against a scripted API server: real `watcher`s fed with API server responses
//! (`tests/fixtures/watch/`), the real compiler, and the map sync into in-memory maps that log
//! every write.
//!
//! The cluster is the seed's (`examples/seed/`): kube-dns, nginx, httpd and amazonlinux on
//! this node (`lab-node`, address 10.0.1.17), the three seed policies, and besides, a
//! host-network aws-node pod here, a prometheus pod on another node, a policy that lets
//! namespaces labelled `tollgate.io/scrape=true` scrape nginx on 9113, and the Services of an
//! EKS cluster: `default/kubernetes` (no selector: the API server's addresses in a slice of its
//! own) and `kube-system/kube-dns` (ClusterIP 198.19.0.10), each with its EndpointSlice. Every
//! test starts from the initial lists (resourceVersion 1000) and serves one scenario's watch
//! responses, then checks which endpoints' entries were written and what the probe's decision
//! logic (the userspace model, over the very maps the sync wrote) makes of the flows that
//! matter.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tollgate_agent::{
    reconcile::LocalEndpoints,
    run::{Agent, Pass},
    source::KubeSource,
};
use tollgate_enforcer::{
    compile::ObjectKind,
    decision::{Decision, ProbeFlow},
    desired::{Capacity, DesiredState, PeerEntryKey},
    model::{decide_flow, decide_hook},
    snapshot::{Updates, pod_addresses},
    sync::{InMemoryMaps, MapFull, PolicyMaps},
};
use tollgate_schemas::{
    Direction, EndpointKey, EndpointState, PeerIdentity, PolicyEntry, PolicyKey, PolicyValue,
    Reason, Verdict, addr, endpoint_flags,
};
use tollgate_test_support::apiserver::{ApiServer, Resource, Verb};

/// The node the agent runs on, as the pods' `spec.nodeName` says.
const NODE: &str = "lab-node";

/// The node's address (its pods' `status.hostIP`).
const NODE_ADDRESS: &str = "10.0.1.17";

/// ClusterIPs of the fixtures' Services.
const KUBE_DNS: &str = "198.19.0.10";
const KUBERNETES: &str = "198.19.0.1";
const NGINX: &str = "198.19.117.42";
const HTTPD: &str = "198.19.205.17";

/// Every pod of the fixtures that has an address of its own.
const PODS: &[(&str, &str)] = &[
    ("kube-system/kube-dns", "198.18.0.10"),
    ("default/nginx", "198.18.0.20"),
    ("default/nginx-7c5ddbdf54-x2x9k", "198.18.0.21"),
    ("default/httpd", "198.18.0.30"),
    ("default/amazonlinux", "198.18.0.40"),
    ("default/curl", "198.18.0.41"),
    ("monitoring/prometheus-0", "198.18.1.50"),
    ("kube-system/coredns-5d78c9869d-7xq2m", "198.18.1.53"),
];

fn ip(pod: &str) -> IpAddr {
    let (_, ip) = PODS.iter().find(|(name, _)| *name == pod).unwrap();
    ip.parse().unwrap()
}

fn pod_at(ip: IpAddr) -> &'static str {
    PODS.iter()
        .find(|(_, a)| a.parse::<IpAddr>().unwrap() == ip)
        .map(|(name, _)| *name)
        .unwrap_or_else(|| panic!("no pod has {ip}"))
}

/// The node's endpoints as the VPC CNI makes them: the pods scheduled here that have an
/// address of their own, each on a host veth, here numbered 100 + the address's last byte; and
/// the node's address.
#[derive(Default)]
struct ScheduledHere(BTreeMap<String, u32>);

impl LocalEndpoints for ScheduledHere {
    fn track(&mut self, pods: &Updates<Pod>) {
        for ((namespace, name), pod) in pods {
            let key = format!("{namespace}/{name}");
            let here = pod.as_deref().filter(|pod| {
                let spec = pod.spec.as_ref();
                spec.and_then(|s| s.node_name.as_deref()) == Some(NODE)
                    && !spec.and_then(|s| s.host_network).unwrap_or(false)
            });
            match here.and_then(|pod| pod_addresses(pod).first().copied()) {
                Some(IpAddr::V4(v4)) => self.0.insert(key, 100 + u32::from(v4.octets()[3])),
                Some(IpAddr::V6(_)) | None => self.0.remove(&key),
            };
        }
    }

    fn local(&mut self) -> BTreeMap<String, u32> {
        self.0.clone()
    }

    fn node_addresses(&mut self) -> Vec<IpAddr> {
        vec![NODE_ADDRESS.parse().unwrap()]
    }
}

/// In-memory policy maps that log every write (its endpoint id, the policy set of a policy
/// entry, or what else it writes), in order.
#[derive(Default)]
struct Recorder {
    maps: InMemoryMaps,
    writes: Vec<Write>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    Endpoint(u32),
    /// An entry of this policy set.
    Policy(u32),
    /// A peer prefix, a rule set or a node address: node-wide, no endpoint's own.
    NodeWide,
}

impl PolicyMaps for Recorder {
    type Error = MapFull;

    fn capacity(&self) -> Result<Capacity, MapFull> {
        self.maps.capacity()
    }

    fn read(&self) -> Result<DesiredState, MapFull> {
        self.maps.read()
    }

    fn upsert_endpoint(&mut self, key: &EndpointKey, value: &EndpointState) -> Result<(), MapFull> {
        self.writes.push(Write::Endpoint(value.id));
        self.maps.upsert_endpoint(key, value)
    }

    fn delete_endpoint(&mut self, key: &EndpointKey) -> Result<(), MapFull> {
        self.writes
            .push(Write::Endpoint(self.maps.state.endpoints[key].id));
        self.maps.delete_endpoint(key)
    }

    fn upsert_peer(&mut self, key: &PeerEntryKey, value: &PeerIdentity) -> Result<(), MapFull> {
        self.writes.push(Write::NodeWide);
        self.maps.upsert_peer(key, value)
    }

    fn delete_peer(&mut self, key: &PeerEntryKey) -> Result<(), MapFull> {
        self.writes.push(Write::NodeWide);
        self.maps.delete_peer(key)
    }

    fn upsert_policy(&mut self, key: &PolicyKey, value: &PolicyEntry) -> Result<(), MapFull> {
        self.writes.push(Write::Policy(key.set));
        self.maps.upsert_policy(key, value)
    }

    fn delete_policy(&mut self, key: &PolicyKey) -> Result<(), MapFull> {
        self.writes.push(Write::Policy(key.set));
        self.maps.delete_policy(key)
    }

    fn write_ruleset(&mut self, id: u32, value: &PolicyValue) -> Result<(), MapFull> {
        self.writes.push(Write::NodeWide);
        self.maps.write_ruleset(id, value)
    }

    fn clear_ruleset(&mut self, id: u32) -> Result<(), MapFull> {
        self.writes.push(Write::NodeWide);
        self.maps.clear_ruleset(id)
    }

    fn insert_node_addr(&mut self, key: &EndpointKey) -> Result<(), MapFull> {
        self.writes.push(Write::NodeWide);
        self.maps.insert_node_addr(key)
    }

    fn delete_node_addr(&mut self, key: &EndpointKey) -> Result<(), MapFull> {
        self.writes.push(Write::NodeWide);
        self.maps.delete_node_addr(key)
    }
}

/// One pass and what it wrote.
struct Step {
    pass: Pass,
    /// The pods whose entries were written or removed, from the write log.
    written: BTreeSet<&'static str>,
    /// The write log of the pass.
    writes: Vec<Write>,
}

impl Step {
    /// Checks that exactly `pods` had entries written, by the write log and by the report.
    fn assert_written(&self, pods: &[&str]) {
        let expected: BTreeSet<&str> = pods.iter().copied().collect();
        assert_eq!(self.written, expected, "pods written");
        let touched: BTreeSet<&str> = self
            .pass
            .report
            .touched
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(touched, expected, "pods the report names");
        assert_eq!(
            self.pass.report.sync.upserts + self.pass.report.sync.deletes,
            self.writes.len()
        );
    }
}

/// One node's agent against the scripted API server.
struct Node {
    server: ApiServer,
    agent: Agent<KubeSource, ScheduledHere>,
    maps: Recorder,
}

impl Node {
    /// An agent on a fresh API server; nothing is served yet.
    fn new() -> Node {
        let (client, server) = ApiServer::start();
        server.replay_from(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/watch"));
        Node {
            server,
            agent: Agent::new(KubeSource::start(client), ScheduledHere::default()),
            maps: Recorder::default(),
        }
    }

    /// An agent that has synced the initial lists.
    async fn started() -> Node {
        let mut node = Node::new();
        node.serve_initial_lists();
        let first = node.pass().await;
        assert_eq!(first.written.len(), 4);
        node
    }

    fn serve_initial_lists(&self) {
        self.server.serve(
            Resource::Namespaces,
            Verb::List,
            "initial/namespaces.list.json",
        );
        self.server
            .serve(Resource::Pods, Verb::List, "initial/pods.list.json");
        self.server.serve(
            Resource::NetworkPolicies,
            Verb::List,
            "initial/networkpolicies.list.json",
        );
        self.serve_service_lists();
        self.serve_cluster_wide_lists();
    }

    /// The upstream ClusterNetworkPolicies (none), AWS's, whose CRD is not installed, and the
    /// nodes.
    fn serve_cluster_wide_lists(&self) {
        self.server
            .serve(Resource::Nodes, Verb::List, "initial/nodes.list.json");
        self.server.serve(
            Resource::ClusterNetworkPolicies,
            Verb::List,
            "initial/clusternetworkpolicies.list.json",
        );
        self.server.serve(
            Resource::AwsClusterNetworkPolicies,
            Verb::List,
            "initial/aws-clusternetworkpolicies.not-found.json",
        );
    }

    fn serve_service_lists(&self) {
        self.server
            .serve(Resource::Services, Verb::List, "initial/services.list.json");
        self.server.serve(
            Resource::EndpointSlices,
            Verb::List,
            "initial/endpointslices.list.json",
        );
    }

    /// Waits for the agent's next pass.
    async fn pass(&mut self) -> Step {
        let before = self.maps.maps.state.clone();
        self.maps.writes.clear();
        let pass = tokio::time::timeout(Duration::from_secs(30), self.agent.next(&mut self.maps))
            .await
            .expect("a pass within 30 s")
            .expect("the source goes on")
            .expect("the pass succeeds");
        let writes = std::mem::take(&mut self.maps.writes);
        let written = writes
            .iter()
            .flat_map(|w| match *w {
                Write::Endpoint(id) => self.pods_of(id, &before),
                Write::Policy(set) => self.pods_of_set(set),
                Write::NodeWide => Vec::new(),
            })
            .collect();
        assert!(pass.latency.is_some());
        Step {
            pass,
            written,
            writes,
        }
    }

    /// The pods of endpoint `id`, now and before the pass: two when the id changed hands (a
    /// removed endpoint's id is free for a new one in the same pass).
    fn pods_of(&self, id: u32, before: &DesiredState) -> Vec<&'static str> {
        let pods: Vec<&'static str> = [&self.maps.maps.state, before]
            .into_iter()
            .flat_map(|state| &state.endpoints)
            .filter(|(_, state)| state.id == id)
            .map(|(key, _)| pod_at(addr::from_bytes(key.addr)))
            .collect();
        assert!(!pods.is_empty(), "endpoint {id} is in no endpoint map");
        pods
    }

    /// The pods whose endpoints use policy set `set` after the pass (the endpoints that used
    /// it before and not any more have their own endpoint write).
    fn pods_of_set(&self, set: u32) -> Vec<&'static str> {
        self.maps
            .maps
            .state
            .endpoints
            .iter()
            .filter(|(_, state)| state.ingress_set == set || state.egress_set == set)
            .map(|(key, _)| pod_at(addr::from_bytes(key.addr)))
            .collect()
    }

    /// The endpoint state of `pod`, if it is an endpoint.
    fn endpoint(&self, pod: &str) -> Option<EndpointState> {
        let key = EndpointKey {
            addr: addr::to_bytes(ip(pod)),
        };
        self.maps.maps.state.endpoints.get(&key).copied()
    }

    /// What the probe does with a new flow from `from` to `to` on `port`/`protocol`.
    fn verdict(&self, from: &str, to: &str, protocol: u8, port: u16) -> Verdict {
        let flow = ProbeFlow {
            src: ip(from),
            dst: ip(to),
            protocol,
            src_port: 40_000,
            dst_port: port,
            service: None,
        };
        decide_flow(&self.maps.maps.state, &flow).verdict()
    }

    /// How `from`'s egress decides a new connection to a Service's ClusterIP (`vip`) and port:
    /// what the probe sees before kube-proxy's DNAT.
    fn to_service(&self, from: &str, vip: &str, protocol: u8, port: u16) -> Decision {
        let (src, vip): (IpAddr, IpAddr) = (ip(from), vip.parse().unwrap());
        decide_hook(
            &self.maps.maps.state,
            Direction::Egress,
            addr::to_bytes(src),
            addr::to_bytes(vip),
            protocol,
            port,
        )
        .unwrap_or_else(|| panic!("{from} is no endpoint"))
    }

    /// How `to`'s ingress decides a new connection from `src` on `port`.
    fn ingress_from(&self, src: &str, to: &str, protocol: u8, port: u16) -> Decision {
        let src: IpAddr = src.parse().unwrap();
        decide_hook(
            &self.maps.maps.state,
            Direction::Ingress,
            addr::to_bytes(ip(to)),
            addr::to_bytes(src),
            protocol,
            port,
        )
        .unwrap_or_else(|| panic!("{to} is no endpoint"))
    }
}

const TCP: u8 = 6;
const UDP: u8 = 17;

const ALL_ISOLATED: u32 =
    endpoint_flags::PROGRAMMED | endpoint_flags::INGRESS_ISOLATED | endpoint_flags::EGRESS_ISOLATED;

#[tokio::test]
async fn nothing_is_synced_before_every_initial_list_is_complete() {
    let mut node = Node::new();
    node.server.serve(
        Resource::Namespaces,
        Verb::List,
        "initial/namespaces.list.json",
    );
    node.server.serve(
        Resource::NetworkPolicies,
        Verb::List,
        "initial/networkpolicies.list.json",
    );
    node.serve_service_lists();
    node.serve_cluster_wide_lists();
    // The pod list is outstanding: the agent waits, and the maps stay empty (in strict mode
    // the probe denies every pod that is not programmed yet).
    node.server.requested(Resource::Pods, Verb::List, 1).await;
    let early =
        tokio::time::timeout(Duration::from_millis(500), node.agent.next(&mut node.maps)).await;
    assert!(early.is_err(), "no pass before the pod list");
    assert_eq!(node.maps.maps.state, DesiredState::default());

    node.server
        .serve(Resource::Pods, Verb::List, "initial/pods.list.json");
    let first = node.pass().await;
    let changes = first.pass.changes.as_ref().unwrap();
    assert_eq!(
        changes.listed,
        BTreeSet::from([
            ObjectKind::Namespace,
            ObjectKind::Pod,
            ObjectKind::NetworkPolicy,
            ObjectKind::Service,
            ObjectKind::EndpointSlice,
            ObjectKind::ClusterNetworkPolicy,
            ObjectKind::AwsClusterNetworkPolicy,
            ObjectKind::Node,
        ])
    );
    let compiled = node.agent.synced().unwrap();
    assert_eq!(compiled.services.len(), 2);
    assert_eq!(
        node.agent.node_addresses(),
        [NODE_ADDRESS.parse::<IpAddr>().unwrap()]
    );
    // Every pod went to the compiler and was handed on, once.
    assert_eq!(first.pass.pods.len(), 6);
    // The four pods of this node with an address of their own: not the host-network aws-node
    // pod, not prometheus on the other node.
    first.assert_written(&[
        "kube-system/kube-dns",
        "default/nginx",
        "default/httpd",
        "default/amazonlinux",
    ]);
    assert_eq!(first.pass.report.endpoints, 4);
    assert_eq!(first.pass.report.errors, vec![]);
    assert_eq!(
        node.endpoint("kube-system/kube-dns").unwrap().flags,
        endpoint_flags::PROGRAMMED
    );
    assert_eq!(node.endpoint("default/httpd").unwrap().flags, ALL_ISOLATED);

    // The seed's outcome.
    assert_eq!(
        node.verdict("default/amazonlinux", "kube-system/kube-dns", UDP, 53),
        Verdict::Allow
    );
    assert_eq!(
        node.verdict("default/amazonlinux", "default/nginx", TCP, 80),
        Verdict::Allow
    );
    assert_eq!(
        node.verdict("default/amazonlinux", "default/httpd", TCP, 80),
        Verdict::Deny
    );
    // Through kube-dns's ClusterIP: DNS over UDP reaches its one backend, which amazonlinux
    // may reach; TCP 53 and the API server's addresses it may not.
    let dns = node.to_service("default/amazonlinux", KUBE_DNS, UDP, 53);
    assert_eq!(
        (dns.verdict, dns.reason),
        (Verdict::Allow, Reason::AllowedByRule)
    );
    for (vip, protocol, port) in [(KUBE_DNS, TCP, 53), (KUBERNETES, TCP, 443)] {
        let denied = node.to_service("default/amazonlinux", vip, protocol, port);
        assert_eq!(
            (denied.verdict, denied.reason),
            (Verdict::Deny, Reason::IsolatedNoMatch),
            "{vip}:{port}"
        );
    }
    // The node's own traffic passes httpd's default-deny ingress (kubelet probes); another
    // address does not.
    let probe = node.ingress_from(NODE_ADDRESS, "default/httpd", TCP, 80);
    assert_eq!(
        (probe.verdict, probe.reason),
        (Verdict::Allow, Reason::FromNode)
    );
    let other = node.ingress_from("10.0.2.31", "default/httpd", TCP, 80);
    assert_eq!(other.verdict, Verdict::Deny);

    // Each kind then watches from its list's resourceVersion, with bookmarks.
    for resource in [
        Resource::Namespaces,
        Resource::Pods,
        Resource::NetworkPolicies,
        Resource::Services,
        Resource::EndpointSlices,
        Resource::ClusterNetworkPolicies,
        Resource::Nodes,
    ] {
        let watch = node.server.requested(resource, Verb::Watch, 1).await;
        assert_eq!(watch.param("resourceVersion"), Some("1000"), "{resource:?}");
        assert_eq!(watch.param("allowWatchBookmarks"), Some("true"));
    }
    // AWS's kind is not served: no watch, and the list is tried again.
    node.server
        .requested(Resource::AwsClusterNetworkPolicies, Verb::List, 2)
        .await;
    assert_eq!(node.server.unexpected(), Vec::<String>::new());
}

#[tokio::test]
async fn a_new_pod_is_enforced_once_it_has_an_address() {
    let mut node = Node::started().await;

    // Created, then scheduled here: no address yet, so no endpoint and no peer.
    node.server.serve(
        Resource::Pods,
        Verb::Watch,
        "pod-created/pods.1.watch.jsonl",
    );
    let scheduled = node.pass().await;
    let changes = scheduled.pass.changes.as_ref().unwrap();
    assert_eq!(changes.resource_versions[&ObjectKind::Pod], "1102");
    scheduled.assert_written(&[]);

    // Its address, then Running, in one burst: one pass. The new pod's entries are written
    // (before its endpoint, which the probe looks up first), and so are amazonlinux's, whose
    // egress rule to app=nginx now has a second peer. No other endpoint is touched.
    node.server.serve(
        Resource::Pods,
        Verb::Watch,
        "pod-created/pods.2.watch.jsonl",
    );
    let addressed = node.pass().await;
    let changes = addressed.pass.changes.as_ref().unwrap();
    assert_eq!(changes.events, 2);
    assert_eq!(changes.resource_versions[&ObjectKind::Pod], "1107");
    addressed.assert_written(&["default/nginx-7c5ddbdf54-x2x9k", "default/amazonlinux"]);

    let new = node.endpoint("default/nginx-7c5ddbdf54-x2x9k").unwrap();
    assert_eq!(new.flags, ALL_ISOLATED);
    assert_eq!(new.ifindex, 121);
    let endpoint_write = addressed
        .writes
        .iter()
        .position(|w| *w == Write::Endpoint(new.id))
        .unwrap();
    // Nothing of its policy sets is written after it.
    let sets = [new.ingress_set, new.egress_set];
    assert!(
        addressed.writes[endpoint_write..]
            .iter()
            .all(|w| !matches!(w, Write::Policy(set) if sets.contains(set))),
        "{:?}",
        addressed.writes
    );

    let new = "default/nginx-7c5ddbdf54-x2x9k";
    assert_eq!(
        node.verdict("default/amazonlinux", new, TCP, 80),
        Verdict::Allow
    );
    assert_eq!(node.verdict("default/httpd", new, TCP, 80), Verdict::Deny);
    assert_eq!(node.verdict(new, "default/nginx", TCP, 80), Verdict::Deny);
}

#[tokio::test]
async fn a_label_change_rewrites_only_the_endpoints_it_affects() {
    let mut node = Node::started().await;
    let before: BTreeMap<&str, EndpointState> = ["kube-system/kube-dns", "default/nginx"]
        .into_iter()
        .map(|pod| (pod, node.endpoint(pod).unwrap()))
        .collect();
    assert_eq!(
        node.verdict("default/amazonlinux", "default/httpd", TCP, 80),
        Verdict::Deny
    );

    // httpd restarts a container (no change that matters: dropped before the reconciler),
    // then is relabelled app=nginx: the nginx policies now select it, and amazonlinux's
    // egress rule to app=nginx has it as a peer. nginx and kube-dns are not touched.
    node.server
        .serve(Resource::Pods, Verb::Watch, "label-change/pods.watch.jsonl");
    let relabelled = node.pass().await;
    let changes = relabelled.pass.changes.as_ref().unwrap();
    assert_eq!(changes.events, 1);
    assert_eq!(changes.resource_versions[&ObjectKind::Pod], "1203");
    relabelled.assert_written(&["default/httpd", "default/amazonlinux"]);
    for (pod, state) in before {
        assert_eq!(node.endpoint(pod), Some(state), "{pod}");
    }
    assert_eq!(
        node.verdict("default/amazonlinux", "default/httpd", TCP, 80),
        Verdict::Allow
    );
    assert_eq!(
        node.verdict("default/nginx", "default/httpd", TCP, 80),
        Verdict::Deny
    );

    // The response ended with a bookmark: the watch resumes from it.
    let resumed = node.server.requested(Resource::Pods, Verb::Watch, 2).await;
    assert_eq!(resumed.param("resourceVersion"), Some("1250"));
}

#[tokio::test]
async fn a_deleted_policy_lifts_its_enforcement() {
    let mut node = Node::started().await;
    assert_eq!(
        node.verdict("default/nginx", "default/httpd", TCP, 80),
        Verdict::Deny
    );

    // all-deny goes: httpd is isolated by nothing any more; nginx keeps its ingress policies
    // but its egress is open, amazonlinux keeps its egress policy but its ingress is open.
    // kube-dns (another namespace) is not touched.
    node.server.serve(
        Resource::NetworkPolicies,
        Verb::Watch,
        "policy-deleted/networkpolicies.watch.jsonl",
    );
    let deleted = node.pass().await;
    assert_eq!(
        deleted.pass.changes.as_ref().unwrap().resource_versions[&ObjectKind::NetworkPolicy],
        "1301"
    );
    deleted.assert_written(&["default/nginx", "default/httpd", "default/amazonlinux"]);
    assert_eq!(
        node.endpoint("default/httpd").unwrap().flags,
        endpoint_flags::PROGRAMMED
    );
    assert_eq!(
        node.endpoint("default/nginx").unwrap().flags,
        endpoint_flags::PROGRAMMED | endpoint_flags::INGRESS_ISOLATED
    );
    assert_eq!(
        node.verdict("default/nginx", "default/httpd", TCP, 80),
        Verdict::Allow
    );
    assert_eq!(
        node.verdict("default/httpd", "default/nginx", TCP, 80),
        Verdict::Deny
    );
    assert_eq!(
        node.verdict("default/amazonlinux", "default/nginx", TCP, 80),
        Verdict::Allow
    );
}

#[tokio::test]
async fn a_cluster_network_policy_decides_before_the_namespace_policies() {
    let mut node = Node::started().await;
    assert_eq!(
        node.verdict("default/amazonlinux", "default/nginx", TCP, 80),
        Verdict::Allow
    );

    // An Admin-tier Deny of amazonlinux's TCP 80 to app=nginx, then its status written by
    // some implementation (no change: the status is never read).
    node.server.serve(
        Resource::ClusterNetworkPolicies,
        Verb::Watch,
        "cluster-policy/clusternetworkpolicies.1.watch.jsonl",
    );
    let added = node.pass().await;
    let changes = added.pass.changes.as_ref().unwrap();
    assert_eq!(changes.events, 1);
    assert_eq!(
        changes.resource_versions[&ObjectKind::ClusterNetworkPolicy],
        "1401"
    );
    added.assert_written(&["default/amazonlinux"]);
    let denied = node.to_service("default/amazonlinux", "198.18.0.20", TCP, 80);
    assert_eq!(
        (denied.verdict, denied.reason),
        (Verdict::Deny, Reason::DeniedByRule)
    );
    let rule = &node.agent.synced().unwrap().rules[&denied.rule_id];
    assert_eq!(
        rule.to_string(),
        "ClusterNetworkPolicy/deny-client-to-nginx egress[0]"
    );
    // The Admin tier decides only what it matches: DNS still passes the NetworkPolicy tier.
    assert_eq!(
        node.verdict("default/amazonlinux", "kube-system/kube-dns", UDP, 53),
        Verdict::Allow
    );

    node.server.serve(
        Resource::ClusterNetworkPolicies,
        Verb::Watch,
        "cluster-policy/clusternetworkpolicies.2.watch.jsonl",
    );
    let deleted = node.pass().await;
    deleted.assert_written(&["default/amazonlinux"]);
    assert_eq!(
        node.verdict("default/amazonlinux", "default/nginx", TCP, 80),
        Verdict::Allow
    );
    assert_eq!(node.server.unexpected(), Vec::<String>::new());
}

#[tokio::test]
async fn a_namespace_label_change_reaches_the_policies_that_select_it() {
    let mut node = Node::started().await;
    assert_eq!(
        node.verdict("monitoring/prometheus-0", "default/nginx", TCP, 9113),
        Verdict::Deny
    );

    // monitoring gains tollgate.io/scrape=true: nginx's ingress gains prometheus-0's address
    // on 9113, and nothing else changes.
    node.server.serve(
        Resource::Namespaces,
        Verb::Watch,
        "namespace-label/namespaces.watch.jsonl",
    );
    let labelled = node.pass().await;
    assert_eq!(
        labelled.pass.changes.as_ref().unwrap().resource_versions[&ObjectKind::Namespace],
        "1401"
    );
    labelled.assert_written(&["default/nginx"]);
    // nginx's endpoint (new revision), prometheus-0's address (a new identity), the entry of
    // nginx's ingress set for that identity, and the rule set it names (9113); nothing goes.
    let sync = labelled.pass.report.sync;
    assert_eq!(
        (
            sync.endpoints.upserts,
            sync.peers.upserts,
            sync.policy.upserts,
            sync.rulesets.upserts,
            sync.deletes
        ),
        (1, 1, 1, 1, 0)
    );
    assert_eq!(
        node.verdict("monitoring/prometheus-0", "default/nginx", TCP, 9113),
        Verdict::Allow
    );
    assert_eq!(
        node.verdict("monitoring/prometheus-0", "default/nginx", TCP, 80),
        Verdict::Deny
    );
}

#[tokio::test]
async fn an_expired_watch_relists_and_loses_no_deletion() {
    let mut node = Node::started().await;
    let amazonlinux = node.endpoint("default/amazonlinux").unwrap();

    // A bookmark, then 410 Gone: the pod watcher lists again (after its backoff). While it
    // was down, amazonlinux was deleted and curl started; no event says so.
    node.server.serve(
        Resource::Pods,
        Verb::Watch,
        "watch-restart/pods.watch.jsonl",
    );
    node.server.requested(Resource::Pods, Verb::List, 2).await;

    // While the relist is outstanding the pod store still holds the old list, whole: a
    // namespace change meanwhile compiles against it and removes nothing.
    node.server.serve(
        Resource::Namespaces,
        Verb::Watch,
        "namespace-label/namespaces.watch.jsonl",
    );
    let meanwhile = node.pass().await;
    meanwhile.assert_written(&["default/nginx"]);
    assert_eq!(node.endpoint("default/amazonlinux"), Some(amazonlinux));

    // The relist replaces the store at once: amazonlinux's endpoint and every entry of it
    // go, nginx's ingress loses amazonlinux's address, curl is programmed.
    node.server
        .serve(Resource::Pods, Verb::List, "watch-restart/pods.list.json");
    let relisted = node.pass().await;
    let changes = relisted.pass.changes.as_ref().unwrap();
    assert_eq!(changes.listed, BTreeSet::from([ObjectKind::Pod]));
    relisted.assert_written(&["default/amazonlinux", "default/nginx", "default/curl"]);
    assert_eq!(node.endpoint("default/amazonlinux"), None);
    // No policy entry is left of a set no endpoint uses, and curl (isolated by all-deny
    // alone) has none, also when it took over amazonlinux's endpoint id.
    let state = &node.maps.maps.state;
    let sets: BTreeSet<u32> = state
        .endpoints
        .values()
        .flat_map(|e| [e.ingress_set, e.egress_set])
        .collect();
    let curl = node.endpoint("default/curl").unwrap();
    assert_eq!(curl.flags, ALL_ISOLATED);
    for key in state.policy.keys() {
        assert!(sets.contains(&key.set), "{key:?}");
        assert!(key.set != curl.ingress_set && key.set != curl.egress_set);
    }
    assert_eq!(
        node.verdict("default/curl", "default/nginx", TCP, 80),
        Verdict::Deny
    );

    // The new watch starts from the relist's resourceVersion.
    let watch = node.server.requested(Resource::Pods, Verb::Watch, 2).await;
    assert_eq!(watch.param("resourceVersion"), Some("1620"));
}

#[tokio::test]
async fn services_and_their_backends_reach_the_compiler() {
    let mut node = Node::started().await;
    for vip in [NGINX, HTTPD] {
        let unknown = node.to_service("default/amazonlinux", vip, TCP, 80);
        assert_eq!(unknown.verdict, Verdict::Deny, "{vip}");
    }

    // Added: `kubectl expose deployment nginx --port 80`, and httpd the same. Before their
    // EndpointSlices, each Service's backends are the ready pods its selector matches:
    // amazonlinux may reach nginx's ClusterIP (only its egress entries change), not httpd's.
    node.server.serve(
        Resource::Services,
        Verb::Watch,
        "services/services.1.watch.jsonl",
    );
    let exposed = node.pass().await;
    let changes = exposed.pass.changes.as_ref().unwrap();
    assert_eq!(
        (
            changes.events,
            changes.resource_versions[&ObjectKind::Service].as_str()
        ),
        (2, "1702")
    );
    exposed.assert_written(&["default/amazonlinux"]);
    let nginx = node.to_service("default/amazonlinux", NGINX, TCP, 80);
    assert_eq!(
        (nginx.verdict, nginx.reason),
        (Verdict::Allow, Reason::AllowedByRule)
    );
    assert_eq!(
        node.to_service("default/amazonlinux", HTTPD, TCP, 80)
            .verdict,
        Verdict::Deny
    );

    // Their EndpointSlices name the same backends: a pass, and nothing to write.
    node.server.serve(
        Resource::EndpointSlices,
        Verb::Watch,
        "services/endpointslices.1.watch.jsonl",
    );
    let sliced = node.pass().await;
    assert_eq!(
        sliced.pass.changes.as_ref().unwrap().resource_versions[&ObjectKind::EndpointSlice],
        "1704"
    );
    sliced.assert_written(&[]);

    // Backends change: CoreDNS scales to two, and kube-dns's slice names the new replica (on
    // another node) before the pod's own events arrive. amazonlinux's policy cannot be shown
    // to allow a pod the agent does not know, and kube-proxy may pick it: DNS through the
    // ClusterIP is denied, with its reason (fail closed).
    node.server.serve(
        Resource::EndpointSlices,
        Verb::Watch,
        "services/endpointslices.2.watch.jsonl",
    );
    let scaled = node.pass().await;
    scaled.assert_written(&["default/amazonlinux"]);
    let partly = node.to_service("default/amazonlinux", KUBE_DNS, UDP, 53);
    assert_eq!(
        (partly.verdict, partly.reason),
        (Verdict::Deny, Reason::ServiceBackendsDenied)
    );
    // Its pod arrives (created, then running): amazonlinux may reach it, so both backends.
    node.server
        .serve(Resource::Pods, Verb::Watch, "services/pods.watch.jsonl");
    let arrived = node.pass().await;
    assert_eq!(
        arrived.pass.changes.as_ref().unwrap().resource_versions[&ObjectKind::Pod],
        "1709"
    );
    arrived.assert_written(&["default/amazonlinux"]);
    let both = node.to_service("default/amazonlinux", KUBE_DNS, UDP, 53);
    assert_eq!(
        (both.verdict, both.reason),
        (Verdict::Allow, Reason::AllowedByRule)
    );

    // Scaled back: the replica stops being ready, then stops serving (a change of nothing the
    // compiler reads: dropped before the change log), then leaves the slice. Two changes, and
    // DNS through the ClusterIP stays allowed.
    node.server.serve(
        Resource::EndpointSlices,
        Verb::Watch,
        "services/endpointslices.3.watch.jsonl",
    );
    let drained = node.pass().await;
    let changes = drained.pass.changes.as_ref().unwrap();
    assert_eq!(
        (
            changes.events,
            changes.resource_versions[&ObjectKind::EndpointSlice].as_str()
        ),
        (2, "1722")
    );
    drained.assert_written(&[]);
    assert_eq!(
        node.to_service("default/amazonlinux", KUBE_DNS, UDP, 53)
            .verdict,
        Verdict::Allow
    );

    // Deleted: an annotation (no change), then nginx's Service goes: its ClusterIP leaves
    // amazonlinux's entries. Its slice, garbage-collected after it, changes nothing more.
    node.server.serve(
        Resource::Services,
        Verb::Watch,
        "services/services.2.watch.jsonl",
    );
    let deleted = node.pass().await;
    let changes = deleted.pass.changes.as_ref().unwrap();
    assert_eq!(
        (
            changes.events,
            changes.resource_versions[&ObjectKind::Service].as_str()
        ),
        (1, "1731")
    );
    deleted.assert_written(&["default/amazonlinux"]);
    assert_eq!(
        node.to_service("default/amazonlinux", NGINX, TCP, 80)
            .verdict,
        Verdict::Deny
    );
    node.server.serve(
        Resource::EndpointSlices,
        Verb::Watch,
        "services/endpointslices.4.watch.jsonl",
    );
    node.pass().await.assert_written(&[]);
    let compiled = node.agent.synced().unwrap();
    let names: Vec<&str> = compiled.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["httpd", "kubernetes", "kube-dns"]);
    assert_eq!(node.server.unexpected(), Vec::<String>::new());
}
