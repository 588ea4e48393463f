//! The collector's naming table ([`Naming`]), built from what the agent knows: its pods, the
//! node's own addresses and the compilation. The collector takes plain names, never a
//! Kubernetes object: what a pod, a Service, a rule id or an endpoint is called is decided
//! here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use tollgate_collector::identity::{
    EndpointFacts, Naming, PendingPods, PodChanges, PodClaims, PodIdentity, ServiceAddress,
    ServiceIdentity,
};
use tollgate_enforcer::{
    compile::{Compiled, services::ServiceInfo},
    snapshot::{Updates, pod_addresses},
};

/// The naming table after a pass: the pods that changed (`pods`), the node's own addresses,
/// and the Services, rule ids and endpoints of `compiled`.
pub fn naming(pods: PodChanges, node_addresses: &[IpAddr], compiled: &Compiled) -> Naming {
    let endpoints = compiled
        .desired
        .endpoints
        .values()
        .map(|state| {
            let isolating = compiled.isolating.get(&state.id);
            let facts = EndpointFacts {
                flags: state.flags,
                ifindex: state.ifindex,
                isolating: [0, 1].map(|slot| {
                    isolating.map_or_else(|| Arc::from([]), |names| Arc::from(&names[slot][..]))
                }),
            };
            (state.id, facts)
        })
        .collect();
    Naming {
        pods,
        node_addresses: node_addresses.to_vec(),
        services: service_addresses(&compiled.services),
        rules: compiled
            .rules
            .iter()
            .map(|(id, rule)| (*id, rule.clone()))
            .collect(),
        endpoints,
    }
}

/// Who `pod` is, as flow records name it.
pub fn pod_identity(pod: &Pod) -> PodIdentity {
    let meta = &pod.metadata;
    let name = meta.name.clone().unwrap_or_default();
    PodIdentity {
        namespace: meta
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        workload: workload_of(pod),
        labels: Arc::new(
            meta.labels
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        ),
        name,
    }
}

/// The workload that owns `pod`, as `Kind/name`: its controller owner, with a ReplicaSet
/// named `<deployment>-<pod-template-hash>` read as `Deployment/<deployment>` (what
/// `kubectl get deploy` shows); `Pod/<name>` for a pod without a controller.
pub fn workload_of(pod: &Pod) -> String {
    let meta = &pod.metadata;
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|owner| owner.controller == Some(true));
    let Some(owner) = controller else {
        return format!("Pod/{}", meta.name.as_deref().unwrap_or_default());
    };
    let hash = meta
        .labels
        .as_ref()
        .and_then(|labels| labels.get("pod-template-hash"));
    if owner.kind == "ReplicaSet"
        && let Some(hash) = hash
        && let Some(deployment) = owner
            .name
            .strip_suffix(hash.as_str())
            .and_then(|rest| rest.strip_suffix('-'))
        && !deployment.is_empty()
    {
        return format!("Deployment/{deployment}");
    }
    format!("{}/{}", owner.kind, owner.name)
}

/// What `pod` claims: its addresses with its identity; `None` for a hostNetwork pod (its
/// addresses are its node's, shared by every such pod of the node) or one without an address.
pub fn pod_claims(pod: &Pod) -> Option<PodClaims> {
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.host_network)
        .unwrap_or(false);
    if host_network {
        return None;
    }
    PodClaims::new(pod_identity(pod), pod_addresses(pod))
}

/// Adds what each pod of `pods` claims now (`None`: gone) to `pending`.
pub fn add_pods(pending: &mut PendingPods, pods: &Updates<Pod>) {
    for (key, pod) in pods {
        pending.add(key.clone(), pod.as_deref().and_then(pod_claims));
    }
}

/// What each pod of `pods` claims now.
pub fn pod_changes(pods: &Updates<Pod>) -> PodChanges {
    let mut pending = PendingPods::default();
    add_pods(&mut pending, pods);
    pending.take()
}

/// Every (ClusterIP, protocol, port) of `services` with the Service it stands for; headless
/// Services have no ClusterIP and add nothing.
fn service_addresses(services: &[Arc<ServiceInfo>]) -> HashMap<ServiceAddress, ServiceIdentity> {
    let mut table = HashMap::new();
    for service in services {
        let identity = ServiceIdentity {
            namespace: service.namespace.clone(),
            name: service.name.clone(),
        };
        for cluster_ip in &service.cluster_ips {
            for port in &service.ports {
                table.insert(
                    ServiceAddress::new(*cluster_ip, port.protocol, port.port),
                    identity.clone(),
                );
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodIP, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    /// A pod of namespace `default` listing `ips`.
    fn pod(name: &str, ips: &[&str], host_network: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("default".to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                host_network: host_network.then_some(true),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                pod_ips: Some(
                    ips.iter()
                        .map(|ip| PodIP {
                            ip: (*ip).to_owned(),
                        })
                        .collect(),
                ),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn a_host_network_pod_or_one_without_an_address_claims_nothing() {
        assert!(pod_claims(&pod("agent", &["10.0.0.9"], true)).is_none());
        assert!(pod_claims(&pod("pending", &[], false)).is_none());
        let web = pod("web", &["10.0.0.1", "fd00::1"], false);
        let mut pending = PendingPods::default();
        add_pods(
            &mut pending,
            &[(
                ("default".to_owned(), "web".to_owned()),
                Some(Arc::new(web)),
            )]
            .into(),
        );
        let changes = pending.take();
        assert!(changes[&("default".to_owned(), "web".to_owned())].is_some());
    }
}
