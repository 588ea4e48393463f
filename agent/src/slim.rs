//! What the agent keeps of each watched object, and so which updates matter.
//!
//! Every object a watch delivers passes through one `slim_*` function before it is handed on
//! ([`crate::watch`]): it keeps what the compiler reads (and, of pods, what the collector names
//! flows by) and drops the rest. The watch then compares the slimmed update's [`fingerprint`]
//! with the one of what it handed on last: an update that changed only dropped fields — a container's restart
//! count, a Service's load-balancer status, an EndpointSlice's `serving`/`terminating`
//! conditions or its `endpoints.kubernetes.io/last-change-trigger-time` annotation — is no
//! change, and never starts a compilation.
//!
//! What each kind keeps, beyond the metadata every kind keeps ([`slim_meta`]):
//! - Pod: labels, phase, addresses, `hostNetwork`, node, named container ports, and its
//!   `Ready` condition (type and status: the compiler's ready pods when a Service has no
//!   EndpointSlice).
//! - Namespace: nothing more (its labels feed namespaceSelectors).
//! - Node: its addresses (`status.addresses`), what a ClusterNetworkPolicy's `nodes` peer
//!   selects; not its conditions, capacity or images, which change all the time.
//! - NetworkPolicy, ClusterNetworkPolicy (both APIs): its spec (a ClusterNetworkPolicy's status,
//!   which implementations write, is never decoded).
//! - Service: its ClusterIPs, selector and ports (name, protocol, port, targetPort); not its
//!   labels, which select nothing (a chart's version label, bumped by every upgrade, is no
//!   change).
//! - EndpointSlice: of its labels only `kubernetes.io/service-name` (the others are copied from
//!   its Service's), its address type, ports (name, protocol, port), and each endpoint's
//!   addresses, `ready` condition and the pod it names (kind, namespace, name).
//!
//! An EndpointSlice endpoint's `serving` and `terminating` conditions are dropped: the compiler
//! decides a ClusterIP from its ready endpoints only (kube-proxy falls back to serving,
//! terminating endpoints only when none is ready, and then the compiler, seeing no backend,
//! grants nothing: closed, not open).

use std::collections::BTreeMap;

use k8s_openapi::api::{
    core::v1::{
        Container, Namespace, Node, NodeStatus, ObjectReference, Pod, PodCondition, PodSpec,
        PodStatus, Service, ServicePort, ServiceSpec,
    },
    discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    networking::v1::NetworkPolicy,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tollgate_enforcer::compile::{ENFORCEMENT_ANNOTATION, services::SERVICE_NAME_LABEL};
use tollgate_enforcer::crd::{AwsClusterNetworkPolicy, ClusterNetworkPolicy};

/// The pod condition a Service's selector needs (`Ready`).
const READY: &str = "Ready";

/// What a slimmed object is, but for its resourceVersion: the SHA-256 of its JSON.
pub type Fingerprint = [u8; 32];

/// The [`Fingerprint`] of `object`: two slimmed versions of an object have the same exactly
/// when they differ only in their resourceVersion.
pub fn fingerprint<K: Resource + Clone + Serialize>(object: &K) -> Fingerprint {
    let mut unversioned = object.clone();
    unversioned.meta_mut().resource_version = None;
    // The API types serialize to JSON without fail: string-keyed maps, no custom serializer
    // that can refuse.
    let json = serde_json::to_vec(&unversioned).expect("a Kubernetes object serializes");
    Sha256::digest(&json).into()
}

/// The metadata every kind keeps: identity, labels, owners, and the enforcement annotation.
fn slim_meta(meta: &mut ObjectMeta) {
    let annotations = meta.annotations.take().and_then(|mut all| {
        let kept: BTreeMap<String, String> = all
            .remove_entry(ENFORCEMENT_ANNOTATION)
            .into_iter()
            .collect();
        (!kept.is_empty()).then_some(kept)
    });
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        resource_version: meta.resource_version.take(),
        labels: meta.labels.take(),
        owner_references: meta.owner_references.take(),
        annotations,
        ..ObjectMeta::default()
    };
}

/// Keeps what the compiler reads of a pod (labels, addresses, phase, host network, named
/// container ports, readiness) and what the collector names it by (owners), plus its node.
pub fn slim_pod(pod: &mut Pod) {
    slim_meta(&mut pod.metadata);
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        containers: spec
            .containers
            .into_iter()
            .map(|container| Container {
                name: container.name,
                ports: container.ports,
                ..Container::default()
            })
            .collect(),
        host_network: spec.host_network,
        node_name: spec.node_name,
        ..PodSpec::default()
    });
    pod.status = pod.status.take().map(|status| PodStatus {
        phase: status.phase,
        pod_ip: status.pod_ip,
        pod_ips: status.pod_ips,
        conditions: status.conditions.and_then(|conditions| {
            let ready: Vec<PodCondition> = conditions
                .into_iter()
                .filter(|condition| condition.type_ == READY)
                .map(|condition| PodCondition {
                    type_: condition.type_,
                    status: condition.status,
                    ..PodCondition::default()
                })
                .collect();
            (!ready.is_empty()).then_some(ready)
        }),
        ..PodStatus::default()
    });
}

/// Keeps a namespace's name, labels and enforcement annotation.
pub fn slim_namespace(namespace: &mut Namespace) {
    slim_meta(&mut namespace.metadata);
    namespace.spec = None;
    namespace.status = None;
}

/// Keeps a NetworkPolicy's spec and enforcement annotation (not, for one, the
/// `last-applied-configuration` copy of its spec).
pub fn slim_policy(policy: &mut NetworkPolicy) {
    slim_meta(&mut policy.metadata);
}

/// Keeps a node's labels and addresses.
pub fn slim_node(node: &mut Node) {
    slim_meta(&mut node.metadata);
    node.spec = None;
    node.status = node.status.take().map(|status| NodeStatus {
        addresses: status.addresses,
        ..NodeStatus::default()
    });
}

/// Keeps a ClusterNetworkPolicy's spec.
pub fn slim_cluster_policy(policy: &mut ClusterNetworkPolicy) {
    slim_meta(&mut policy.metadata);
}

/// Keeps an AWS ClusterNetworkPolicy's spec.
pub fn slim_aws_cluster_policy(policy: &mut AwsClusterNetworkPolicy) {
    slim_meta(&mut policy.metadata);
}

/// Keeps a Service's ClusterIPs, selector and ports; not its labels, its status (load
/// balancers), its node ports or its traffic policies.
pub fn slim_service(service: &mut Service) {
    slim_meta(&mut service.metadata);
    service.metadata.labels = None;
    service.spec = service.spec.take().map(|spec| ServiceSpec {
        cluster_ip: spec.cluster_ip,
        cluster_ips: spec.cluster_ips,
        selector: spec.selector,
        ports: spec.ports.map(|ports| {
            ports
                .into_iter()
                .map(|port| ServicePort {
                    name: port.name,
                    protocol: port.protocol,
                    port: port.port,
                    target_port: port.target_port,
                    ..ServicePort::default()
                })
                .collect()
        }),
        ..ServiceSpec::default()
    });
    service.status = None;
}

/// Keeps an EndpointSlice's Service name label, address type, ports, and each endpoint's
/// addresses, readiness and pod; not its other labels, its topology (node, zone, hints),
/// hostname, `serving` or `terminating`.
pub fn slim_endpoint_slice(slice: &mut EndpointSlice) {
    slim_meta(&mut slice.metadata);
    slice.metadata.labels = slice.metadata.labels.take().and_then(|mut labels| {
        let kept: BTreeMap<String, String> = labels
            .remove_entry(SERVICE_NAME_LABEL)
            .into_iter()
            .collect();
        (!kept.is_empty()).then_some(kept)
    });
    slice.ports = slice.ports.take().map(|ports| {
        ports
            .into_iter()
            .map(|port| EndpointPort {
                name: port.name,
                protocol: port.protocol,
                port: port.port,
                ..EndpointPort::default()
            })
            .collect()
    });
    slice.endpoints = slice.endpoints.take().map(|endpoints| {
        endpoints
            .into_iter()
            .map(|endpoint| Endpoint {
                addresses: endpoint.addresses,
                // Absent means ready: an absent `ready` stays absent.
                conditions: endpoint
                    .conditions
                    .and_then(|conditions| conditions.ready)
                    .map(|ready| EndpointConditions {
                        ready: Some(ready),
                        ..EndpointConditions::default()
                    }),
                target_ref: endpoint.target_ref.map(|target| ObjectReference {
                    kind: target.kind,
                    namespace: target.namespace,
                    name: target.name,
                    ..ObjectReference::default()
                }),
                ..Endpoint::default()
            })
            .collect()
    });
}

#[cfg(test)]
mod tests {
    use kube::ResourceExt;

    use super::*;

    #[test]
    fn slimming_keeps_what_the_compiler_reads() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-1", "namespace": "shop", "uid": "u1", "resourceVersion": "5",
                "labels": {"app": "web"},
                "annotations": {"kubectl.kubernetes.io/restartedAt": "now"},
                "managedFields": [{"manager": "kubelet", "operation": "Update"}],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "web-5d", "uid": "u0", "controller": true}]
            },
            "spec": {"nodeName": "n1", "hostNetwork": false, "containers": [{
                "name": "web", "image": "nginx",
                "env": [{"name": "A", "value": "b"}],
                "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}]
            }]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}],
                "hostIP": "192.168.0.1",
                "conditions": [
                    {"type": "Initialized", "status": "True",
                        "lastTransitionTime": "2025-03-14T09:02:00Z"},
                    {"type": "Ready", "status": "True", "lastProbeTime": null,
                        "lastTransitionTime": "2025-03-14T09:02:05Z"}],
                "containerStatuses": [{"name": "web", "image": "nginx", "imageID": "",
                    "ready": true, "restartCount": 3}]}
        }))
        .unwrap();
        let mut slim = pod.clone();
        slim_pod(&mut slim);
        let expected: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-1", "namespace": "shop", "uid": "u1", "resourceVersion": "5",
                "labels": {"app": "web"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "web-5d", "uid": "u0", "controller": true}]
            },
            "spec": {"nodeName": "n1", "hostNetwork": false, "containers": [{
                "name": "web",
                "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}]
            }]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}],
                "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        assert_eq!(slim, expected);

        // A restart count is no change; readiness and a label are.
        let mut restarted = pod.clone();
        restarted.metadata.resource_version = Some("6".to_owned());
        let status = restarted.status.as_mut().unwrap();
        status.container_statuses.as_mut().unwrap()[0].restart_count = 4;
        let mut unready = restarted.clone();
        slim_pod(&mut restarted);
        assert_eq!(fingerprint(&slim), fingerprint(&restarted));
        unready
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[1]
            .status = "False".to_owned();
        slim_pod(&mut unready);
        assert_ne!(fingerprint(&slim), fingerprint(&unready));
        restarted
            .labels_mut()
            .insert("tier".to_owned(), "front".to_owned());
        assert_ne!(fingerprint(&slim), fingerprint(&restarted));

        let mut policy: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "shop", "annotations": {
                ENFORCEMENT_ANNOTATION: "audit",
                "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"podSelector": {}}
        }))
        .unwrap();
        slim_policy(&mut policy);
        assert_eq!(
            policy.annotations(),
            &BTreeMap::from([(ENFORCEMENT_ANNOTATION.to_owned(), "audit".to_owned())])
        );
    }

    /// The kube-dns Service of an EKS cluster, as `kubectl get -o json` prints it.
    fn kube_dns() -> Service {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {
                "name": "kube-dns", "namespace": "kube-system", "uid": "s1",
                "resourceVersion": "270",
                "labels": {"eks.amazonaws.com/component": "kube-dns", "k8s-app": "kube-dns",
                    "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"},
                "annotations": {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"}
            },
            "spec": {
                "clusterIP": "198.19.0.10", "clusterIPs": ["198.19.0.10"],
                "internalTrafficPolicy": "Cluster", "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack",
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                    {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}],
                "selector": {"k8s-app": "kube-dns"},
                "sessionAffinity": "None", "type": "ClusterIP"
            },
            "status": {"loadBalancer": {}}
        }))
        .unwrap()
    }

    #[test]
    fn a_node_keeps_its_labels_and_addresses_not_its_status_churn() {
        let node = |heartbeat: &str, version: &str| -> Node {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "n1", "resourceVersion": version,
                             "labels": {"role": "worker"}},
                "spec": {"providerID": "aws:///eu-west-1a/i-1"},
                "status": {
                    "addresses": [{"type": "InternalIP", "address": "10.0.1.17"}],
                    "conditions": [{"type": "Ready", "status": "True",
                                    "lastHeartbeatTime": heartbeat}],
                    "allocatable": {"cpu": "2"},
                },
            }))
            .unwrap()
        };
        let (mut before, mut after) = (
            node("2025-03-14T10:00:00Z", "1"),
            node("2025-03-14T10:05:00Z", "2"),
        );
        slim_node(&mut before);
        slim_node(&mut after);
        assert_eq!(
            fingerprint(&before),
            fingerprint(&after),
            "a heartbeat is no change"
        );
        assert_eq!(before.labels()["role"], "worker");
        let status = before.status.unwrap();
        assert_eq!(status.addresses.unwrap()[0].address, "10.0.1.17");
        assert!(status.conditions.is_none() && before.spec.is_none());
    }

    #[test]
    fn a_service_keeps_its_addresses_selector_and_ports() {
        let mut slim = kube_dns();
        slim_service(&mut slim);
        let spec = slim.spec.as_ref().unwrap();
        assert_eq!(
            spec.cluster_ips.as_deref(),
            Some(&["198.19.0.10".to_owned()][..])
        );
        assert_eq!(spec.ports.as_ref().unwrap().len(), 3);
        assert_eq!(spec.type_, None);
        assert_eq!(slim.status, None);
        assert_eq!(slim.annotations(), &BTreeMap::new());
        assert_eq!(slim.labels(), &BTreeMap::new());

        // A note or a label is no change; a new port is.
        let mut annotated = kube_dns();
        annotated.metadata.resource_version = Some("271".to_owned());
        annotated
            .annotations_mut()
            .insert("team".to_owned(), "platform".to_owned());
        annotated
            .labels_mut()
            .insert("helm.sh/chart".to_owned(), "coredns-1.36.0".to_owned());
        slim_service(&mut annotated);
        assert_eq!(fingerprint(&slim), fingerprint(&annotated));
        let mut ported = kube_dns();
        ported.spec.as_mut().unwrap().ports.as_mut().unwrap()[2].target_port = Some(
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("metrics".to_owned()),
        );
        slim_service(&mut ported);
        assert_ne!(fingerprint(&slim), fingerprint(&ported));
    }

    /// kube-dns's EndpointSlice with one CoreDNS pod whose conditions are `conditions`.
    fn kube_dns_slice(conditions: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": "kube-dns-7bq4h", "namespace": "kube-system", "uid": "e1",
                "resourceVersion": "301", "generation": 4,
                "labels": {"endpointslice.kubernetes.io/managed-by":
                    "endpointslice-controller.k8s.io", "kubernetes.io/service-name": "kube-dns"},
                "annotations": {"endpoints.kubernetes.io/last-change-trigger-time":
                    "2025-03-14T09:02:05Z"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "kube-dns",
                    "uid": "s1", "controller": true, "blockOwnerDeletion": true}]
            },
            "addressType": "IPv4",
            "endpoints": [{
                "addresses": ["198.18.0.10"], "conditions": conditions,
                "nodeName": "lab-node", "zone": "eu-west-1a",
                "targetRef": {"kind": "Pod", "namespace": "kube-system", "name": "kube-dns",
                    "uid": "p1"}
            }],
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                {"name": "metrics", "port": 9153, "protocol": "TCP"}]
        }))
        .unwrap()
    }

    #[test]
    fn an_endpoint_slice_keeps_readiness_not_serving_or_terminating() {
        let ready = serde_json::json!({"ready": true, "serving": true, "terminating": false});
        let mut slim = kube_dns_slice(ready);
        slim_endpoint_slice(&mut slim);
        let expected: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "kube-dns-7bq4h", "namespace": "kube-system", "uid": "e1",
                "resourceVersion": "301",
                "labels": {"kubernetes.io/service-name": "kube-dns"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "kube-dns",
                    "uid": "s1", "controller": true, "blockOwnerDeletion": true}]
            },
            "addressType": "IPv4",
            "endpoints": [{
                "addresses": ["198.18.0.10"], "conditions": {"ready": true},
                "targetRef": {"kind": "Pod", "namespace": "kube-system", "name": "kube-dns"}
            }],
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                {"name": "metrics", "port": 9153, "protocol": "TCP"}]
        }))
        .unwrap();
        assert_eq!(slim, expected);

        // A terminating pod: not ready is a change; then its `serving` going false is not.
        let terminating = serde_json::json!({"ready": false, "serving": true, "terminating": true});
        let mut draining = kube_dns_slice(terminating);
        slim_endpoint_slice(&mut draining);
        assert_ne!(fingerprint(&slim), fingerprint(&draining));
        let gone = serde_json::json!({"ready": false, "serving": false, "terminating": true});
        let mut stopped = kube_dns_slice(gone);
        stopped.metadata.resource_version = Some("302".to_owned());
        slim_endpoint_slice(&mut stopped);
        assert_eq!(fingerprint(&draining), fingerprint(&stopped));

        // No `ready` means ready, and stays so.
        let mut unknown = kube_dns_slice(serde_json::json!({"serving": true}));
        slim_endpoint_slice(&mut unknown);
        assert_eq!(unknown.endpoints.unwrap()[0].conditions, None);
    }
}
