//! The lab's manifests: the seed's policies verbatim, the lab's pods and Services (IPv4 and
//! IPv6) as the lab reads them, and the errors for objects it cannot run. No root needed.

use std::net::IpAddr;
use std::path::Path;

use tollgate_lab::{
    IpFamily, LabError,
    family::Manifest,
    pods::{HttpServer, LabPods, Serves},
    scenario::{ALL_DENY, ALLOW_AMAZONLINUX_TO_NGINX, STEPS},
};

/// The seed document, next to the repository as `shared/seed/` (as in CI and on developer
/// machines).
const SEED: &str = "../../shared/seed/000_bc637db3022f3643.txt";

#[test]
fn policies_are_the_seed_yaml_verbatim() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(SEED);
    let Ok(seed) = std::fs::read_to_string(&path) else {
        eprintln!(
            "!!!!!!!! SKIPPED (seed document not found at {}) !!!!!!!!",
            path.display()
        );
        return;
    };
    let blocks: Vec<&str> = seed
        .split("```yaml\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap())
        .collect();
    assert_eq!(blocks, [ALL_DENY.yaml, ALLOW_AMAZONLINUX_TO_NGINX.yaml]);
}

#[test]
fn steps_apply_the_seed_policies_in_order() {
    let applied: Vec<Vec<&str>> = STEPS
        .iter()
        .map(|s| s.policies.iter().map(|p| p.path).collect())
        .collect();
    assert_eq!(
        applied,
        [
            vec![],
            vec!["examples/seed/all-deny.yaml"],
            vec![
                "examples/seed/all-deny.yaml",
                "examples/seed/allow-amazonlinux-to-nginx.yaml"
            ],
        ]
    );
    let pods = LabPods::embedded(IpFamily::V4).unwrap();
    let policies: Vec<usize> = STEPS
        .iter()
        .map(|s| s.snapshot(&pods).unwrap().policies.len())
        .collect();
    assert_eq!(policies, [0, 1, 3]);
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn lab_pods_and_services_are_read_from_the_examples_of_both_families() {
    for (family, dns, nginx, services) in [
        (
            IpFamily::V4,
            "198.18.0.10",
            "198.18.0.20",
            ["198.19.0.10", "198.19.104.37", "198.19.212.118"],
        ),
        (
            IpFamily::V6,
            "2001:db8::10",
            "2001:db8::20",
            [
                "2001:db8:ffff::a",
                "2001:db8:ffff::6825",
                "2001:db8:ffff::d476",
            ],
        ),
    ] {
        let pods = LabPods::embedded(family).unwrap();
        let summary: Vec<(String, IpAddr, Vec<Serves>)> = pods
            .pods
            .iter()
            .map(|p| (p.key(), p.ip, p.serves.clone()))
            .collect();
        let http = |server| vec![Serves::Http { port: 80, server }];
        assert_eq!(
            summary[..2],
            [
                (
                    "kube-system/kube-dns".to_string(),
                    ip(dns),
                    vec![Serves::Dns { port: 53 }]
                ),
                (
                    "default/nginx".to_string(),
                    ip(nginx),
                    http(HttpServer::Nginx)
                ),
            ],
            "{family}"
        );
        assert_eq!(summary[2].2, http(HttpServer::Apache));
        assert_eq!(summary[3].0, "default/amazonlinux");
        assert!(summary[3].2.is_empty());
        assert_eq!(pods.snapshot.namespaces.len(), 2);
        assert_eq!(pods.snapshot.services.len(), 3);
        let names: Vec<(&str, IpAddr)> = pods
            .names
            .iter()
            .map(|n| (n.fqdn.as_str(), n.cluster_ip))
            .collect();
        assert_eq!(
            names,
            [
                ("kube-dns.kube-system.svc.cluster.local", ip(services[0])),
                ("nginx.default.svc.cluster.local", ip(services[1])),
                ("httpd.default.svc.cluster.local", ip(services[2])),
            ]
        );
        assert_eq!(pods.dns_cluster_ip().unwrap(), ip(services[0]));
    }
}

/// The Services of `services.yaml` with `kubectl expose`'s shape: one unnamed TCP port 80 with
/// targetPort 80 and the Deployment's selector; kube-dns with UDP and TCP 53.
#[test]
fn services_are_what_the_seeds_commands_create() {
    let pods = LabPods::embedded(IpFamily::V4).unwrap();
    for service in &pods.snapshot.services {
        let name = service.metadata.name.as_deref().unwrap();
        let spec = service.spec.as_ref().unwrap();
        let ports: Vec<(Option<&str>, &str, i32)> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref(), p.protocol.as_deref().unwrap(), p.port))
            .collect();
        match name {
            "kube-dns" => assert_eq!(
                ports,
                [(Some("dns"), "UDP", 53), (Some("dns-tcp"), "TCP", 53)]
            ),
            "nginx" | "httpd" => {
                assert_eq!(ports, [(None, "TCP", 80)]);
                let selector = spec.selector.as_ref().unwrap();
                assert_eq!(selector.get("app").map(String::as_str), Some(name));
            }
            other => panic!("unexpected Service {other}"),
        }
    }
}

const BAD_PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: outside, namespace: default}
spec:
  containers:
  - {name: web, image: nginx, ports: [{containerPort: 80}]}
status: {podIP: 10.0.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: odd, namespace: default}
spec:
  containers:
  - {name: db, image: postgres}
  - {name: web, image: "nginx:1.25", ports: [{containerPort: 53, protocol: UDP}]}
status: {podIP: 198.18.0.7}
---
apiVersion: v1
kind: Pod
metadata: {name: fine, namespace: default}
spec:
  containers:
  - {name: web, image: httpd, ports: [{containerPort: 8080}]}
status: {podIP: 198.18.0.8}
"#;

const BAD_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.100.0.7
  selector: {app: web}
  ports: [{port: 80}]
"#;

#[test]
fn pods_the_lab_cannot_run_are_named_with_their_field() {
    let manifests = [
        Manifest {
            path: "bad.yaml",
            yaml: BAD_PODS,
        },
        Manifest {
            path: "service.yaml",
            yaml: BAD_SERVICE,
        },
    ];
    let Err(LabError::Input { manifest, errors }) =
        LabPods::from_manifests(IpFamily::V4, &manifests)
    else {
        panic!("bad pods accepted");
    };
    assert_eq!(manifest, "bad.yaml, service.yaml");
    let found: Vec<(&str, &str)> = errors
        .iter()
        .map(|e| (e.object.as_str(), e.field.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            ("Pod default/outside", "status.podIP"),
            ("Pod default/odd", "spec.containers[0].image"),
            ("Pod default/odd", "spec.containers[1].ports[0]"),
            ("Service default/web", "spec.clusterIP"),
        ],
        "{errors:#?}"
    );
    assert!(errors[0].message.contains("198.18.0.0/24"));
    assert!(errors[3].message.contains("198.19.0.0/16"));
    // The IPv4 pods on an IPv6 cluster: every address is refused.
    let Err(LabError::Input { errors, .. }) =
        LabPods::from_manifests(IpFamily::V6, &IpFamily::V4.manifests())
    else {
        panic!("IPv4 pods accepted on an IPv6 cluster");
    };
    assert!(
        errors
            .iter()
            .any(|e| e.object == "Pod default/nginx" && e.message.contains("2001:db8::/64")),
        "{errors:#?}"
    );
}
