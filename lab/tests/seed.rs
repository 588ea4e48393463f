//! The lab's manifests: the seed's policies verbatim, the lab's pods as the lab reads them,
//! and the errors for pods it cannot run. No root needed.

use std::net::Ipv4Addr;
use std::path::Path;

use tollgate_lab::{
    LabError,
    pods::{LabPods, Page, Service},
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
    let pods = LabPods::embedded().unwrap();
    let policies: Vec<usize> = STEPS
        .iter()
        .map(|s| s.snapshot(&pods).unwrap().policies.len())
        .collect();
    assert_eq!(policies, [0, 1, 3]);
}

#[test]
fn lab_pods_are_read_from_the_example() {
    let pods = LabPods::embedded().unwrap();
    let summary: Vec<(String, Ipv4Addr, Vec<Service>)> = pods
        .pods
        .iter()
        .map(|p| (p.key(), p.ip, p.services.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (
                "kube-system/kube-dns".to_string(),
                Ipv4Addr::new(198, 18, 0, 10),
                vec![Service::Dns { port: 53 }]
            ),
            (
                "default/nginx".to_string(),
                Ipv4Addr::new(198, 18, 0, 20),
                vec![Service::Http {
                    port: 80,
                    page: Page::NginxWelcome
                }]
            ),
            (
                "default/httpd".to_string(),
                Ipv4Addr::new(198, 18, 0, 30),
                vec![Service::Http {
                    port: 80,
                    page: Page::HttpdItWorks
                }]
            ),
            (
                "default/amazonlinux".to_string(),
                Ipv4Addr::new(198, 18, 0, 40),
                vec![]
            ),
        ]
    );
    assert_eq!(pods.snapshot.namespaces.len(), 2);
    assert_eq!(
        pods.zone.lookup("nginx.default.svc.cluster.local"),
        Some(Ipv4Addr::new(198, 18, 0, 20))
    );
    let (dns, port) = pods.dns_server().unwrap();
    assert_eq!((dns.key(), port), ("kube-system/kube-dns".to_string(), 53));
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

#[test]
fn pods_the_lab_cannot_run_are_named_with_their_field() {
    let Err(LabError::Input { manifest, errors }) = LabPods::from_manifests(BAD_PODS, "bad.yaml")
    else {
        panic!("bad pods accepted");
    };
    assert_eq!(manifest, "bad.yaml");
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
        ],
        "{errors:#?}"
    );
    assert!(errors[0].message.contains("198.18.0.0/24"));
}
