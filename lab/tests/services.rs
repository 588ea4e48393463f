//! A Service with two backends of which policy allows one: no connection to its ClusterIP ever
//! reaches the other, whether the policy that denies it is the backend's ingress (decided after
//! kube-proxy's DNAT, on the backend's veth) or the client's egress (decided before it, on the
//! ClusterIP: denied as a whole, `service-backends-denied`, since kube-proxy could pick the
//! denied backend). Checked on the servers' own access logs and on the probe's events, over
//! IPv4 and IPv6. Needs root (namespaces, veths, BPF, iptables).

mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use tokio::task::JoinSet;
use tollgate_enforcer::manifest::parse_manifests;
use tollgate_lab::{
    Attach, IpFamily,
    client::{Client, Outcome, Timeouts},
    enforce::NodeAgent,
    family::Manifest,
    flowlog::FlowLog,
    kubeproxy,
    names::RunNames,
    pods::LabPods,
    servers::Servers,
    topology::{Topology, list_netns},
};
use tollgate_schemas::{Direction, Reason, Verdict};

use support::privileged;
use tollgate_test_support::temp_dir;

/// Connections made to the ClusterIP per case: enough that both backends are picked (all on
/// one is 2^-19 likely), each bounded by the client's timeouts.
const CONNECTIONS: usize = 20;

struct Addresses {
    web_a: &'static str,
    web_b: &'static str,
    client: &'static str,
    service: &'static str,
}

fn addresses(family: IpFamily) -> Addresses {
    match family {
        IpFamily::V4 => Addresses {
            web_a: "198.18.0.21",
            web_b: "198.18.0.22",
            client: "198.18.0.40",
            service: "198.19.0.80",
        },
        IpFamily::V6 => Addresses {
            web_a: "2001:db8::21",
            web_b: "2001:db8::22",
            client: "2001:db8::40",
            service: "2001:db8:ffff::50",
        },
    }
}

/// Two nginx pods behind Service `web` (a named targetPort), and a client.
fn cluster(a: &Addresses) -> String {
    let pod = |name: &str, labels: &str, image: &str, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: \
             {{{labels}}}}}\nspec:\n  nodeName: lab-node\n  containers:\n  - name: main\n    \
             image: {image}\n    ports: [{{name: http, containerPort: 80, protocol: TCP}}]\n\
             status: {{phase: Running, podIP: \"{ip}\", podIPs: [{{ip: \"{ip}\"}}]}}\n---\n"
        )
    };
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: \
         {kubernetes.io/metadata.name: default}}\n---\n",
    );
    yaml += &pod("web-a", "app: web, backend: a", "nginx", a.web_a);
    yaml += &pod("web-b", "app: web, backend: b", "nginx", a.web_b);
    yaml += &pod("client", "app: client", "amazonlinux", a.client).replace(
        "    ports: [{name: http, containerPort: 80, protocol: TCP}]\n",
        "",
    );
    yaml += &format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  \
         clusterIP: \"{s}\"\n  clusterIPs: [\"{s}\"]\n  selector: {{app: web}}\n  ports: \
         [{{port: 80, protocol: TCP, targetPort: http}}]\n",
        s = a.service
    );
    yaml
}

/// web-b admits nobody (the node aside).
const WEB_B_ISOLATED: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-b-isolated, namespace: default}
spec:
  podSelector: {matchLabels: {backend: b}}
  policyTypes: [Ingress]
";

/// The client may reach web-a only.
const CLIENT_TO_WEB_A: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-to-web-a, namespace: default}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {backend: a}}}]
    ports: [{protocol: TCP, port: 80}]
";

fn manifest(path: &'static str, yaml: String) -> Manifest {
    Manifest {
        path,
        yaml: Box::leak(yaml.into_boxed_str()),
    }
}

/// `CONNECTIONS` curls to `host`, at once.
async fn connections(client: &Client, host: &str) -> Vec<Outcome> {
    let mut set = JoinSet::new();
    for _ in 0..CONNECTIONS {
        let (client, host) = (client.clone(), host.to_owned());
        set.spawn(async move { client.curl(&host).await.unwrap() });
    }
    set.join_all().await
}

/// Lines of an nginx access log from `client`.
fn requests_from(log: &str, client: &str) -> usize {
    log.lines()
        .filter(|line| line.split_whitespace().next() == Some(client))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_a_denied_backend_is_never_reached_through_the_cluster_ip() {
    if !privileged("privileged_a_denied_backend_is_never_reached_through_the_cluster_ip") {
        return;
    }
    for family in [IpFamily::V4, IpFamily::V6] {
        two_backends(family).await;
    }
}

async fn two_backends(family: IpFamily) {
    let a = addresses(family);
    let pods = LabPods::from_manifests(family, &[manifest("web.yaml", cluster(&a))]).unwrap();
    let with = |path: &str, policy: &str| {
        let (parsed, errors) = parse_manifests(policy, path);
        assert_eq!(errors, Vec::new());
        let mut snapshot = pods.snapshot.clone();
        snapshot.policies = parsed.policies;
        snapshot
    };
    let ingress_case = with("web-b-isolated.yaml", WEB_B_ISOLATED);
    let egress_case = with("client-to-web-a.yaml", CLIENT_TO_WEB_A);

    let names = RunNames::new();
    let prefix = names.prefix().to_owned();
    let scratch = temp_dir("services-test");
    let out = scratch.path().join("flows");
    {
        let topology = Topology::create(names, &pods, None).unwrap();
        let (mut flow_log, collector, tap) = FlowLog::new(&prefix, Some(&out), false);
        let mut agent = NodeAgent::start(
            &topology,
            Attach::Auto,
            collector,
            tap,
            ingress_case.clone(),
        )
        .unwrap();
        let synced = agent.synced(1).await.unwrap();
        let web = synced
            .compiled
            .services
            .iter()
            .find(|s| s.key() == "default/web")
            .expect("Service default/web compiled");
        let backends: BTreeSet<String> = web.ports[0]
            .backends
            .iter()
            .map(|b| std::net::SocketAddr::new(b.addr, b.port).to_string())
            .collect();
        let expected: BTreeSet<String> = [a.web_a, a.web_b]
            .iter()
            .map(|ip| std::net::SocketAddr::new(ip.parse().unwrap(), 80).to_string())
            .collect();
        assert_eq!(
            backends, expected,
            "{family}: the named targetPort resolved"
        );
        kubeproxy::install(topology.node_netns(), &synced.compiled.services, family).unwrap();
        let servers = Servers::start(&topology, &pods).await.unwrap();
        let timeouts = Timeouts {
            connect: Duration::from_secs(1),
            total: Duration::from_secs(2),
        };
        let client = Client::new(&topology, "default/client", timeouts).unwrap();
        let web_a = pods.pods.iter().find(|p| p.name == "web-a").unwrap();
        let web_b = pods.pods.iter().find(|p| p.name == "web-b").unwrap();
        let web_b_ip: IpAddr = a.web_b.parse().unwrap();
        let service_ip: IpAddr = a.service.parse().unwrap();

        // web-b's own ingress policy denies the client, after kube-proxy picked it.
        let outcomes = connections(&client, a.service).await;
        let served = outcomes.iter().filter(|o| o.exit == 0).count();
        assert!(
            outcomes
                .iter()
                .all(|o| (o.exit == 0 && o.body.contains("Welcome to nginx!")) || o.exit == 28),
            "{family}: {outcomes:#?}"
        );
        assert!(
            served > 0 && served < CONNECTIONS,
            "{family}: both backends picked"
        );
        assert_eq!(
            requests_from(&servers.access_log(web_b), a.client),
            0,
            "{family}: web-b never served the client"
        );
        assert_eq!(
            requests_from(&servers.access_log(web_a), a.client),
            served,
            "{family}: web-a served every connection that succeeded"
        );
        let barrier = agent.barrier().await.unwrap();
        let (flows, _) = flow_log.step_events(&barrier);
        assert!(
            flows.iter().any(|f| f.direction == Direction::Ingress
                && f.dst.addr == web_b_ip
                && f.verdict == Verdict::Deny),
            "{family}: web-b's ingress denied the client: {flows:#?}"
        );
        assert!(
            !flows
                .iter()
                .any(|f| f.dst.addr == web_b_ip && f.verdict == Verdict::Allow),
            "{family}: nothing reached web-b: {flows:#?}"
        );

        // The client's egress policy allows web-a only: the ClusterIP, which kube-proxy could
        // send to web-b, is denied as a whole.
        agent.apply(2, &egress_case).await.unwrap();
        let outcomes = connections(&client, a.service).await;
        assert!(
            outcomes.iter().all(|o| o.exit == 28),
            "{family}: {outcomes:#?}"
        );
        assert_eq!(requests_from(&servers.access_log(web_b), a.client), 0);
        assert_eq!(requests_from(&servers.access_log(web_a), a.client), served);
        let barrier = agent.barrier().await.unwrap();
        let (flows, _) = flow_log.step_events(&barrier);
        let denied = flows
            .iter()
            .find(|f| f.direction == Direction::Egress && f.dst.addr == service_ip)
            .unwrap_or_else(|| panic!("{family}: no event for the ClusterIP: {flows:#?}"));
        assert_eq!(denied.verdict, Verdict::Deny);
        assert_eq!(denied.reason, Reason::ServiceBackendsDenied);
        assert_eq!(denied.dst.service.as_deref(), Some("default/web"));
        assert!(
            !flows.iter().any(|f| f.dst.addr == web_b_ip),
            "{family}: nothing was sent on to web-b: {flows:#?}"
        );

        drop(servers);
        agent.stop().await.unwrap();
    }
    let left: Vec<String> = list_netns()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect();
    assert_eq!(left, Vec::<String>::new());
    assert!(out.is_dir(), "the flow log was written");
}
