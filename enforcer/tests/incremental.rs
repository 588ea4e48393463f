//! The incremental compiler against the full one: over random sequences of changes to pods,
//! namespaces, nodes, NetworkPolicies (whole, or only their ports), ClusterNetworkPolicies
//! (both APIs, both tiers, every action, `nodes` peers), Services and EndpointSlices, a
//! `Compiler` fed one change at a
//! time compiles exactly what `compile_with` compiles from the whole cluster, ids, maps,
//! revisions and errors included (each pass taking the previous pass's ids as prior); so does
//! one handed the whole cluster at every step (`Compiler::load`, which skips the objects whose
//! resourceVersion it already has).
//!
//! Each sequence comes from a fixed seed, so a failure names a seed and a step that replay.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tollgate_enforcer::compile::{Compiler, Object, ObjectKind, Placement, compile_with};
use tollgate_enforcer::crd::{AwsClusterNetworkPolicy, ClusterNetworkPolicy};
use tollgate_enforcer::desired::{Capacity, Ids};
use tollgate_enforcer::snapshot::Snapshot;

const NAMESPACES: [&str; 4] = ["a", "a-b", "kube-system", "monitoring"];
const APPS: [&str; 4] = ["web", "api", "db", "dns"];
const TEAMS: [&str; 2] = ["blue", "green"];

/// The cluster as plain objects, by kind and (namespace, name).
#[derive(Default)]
struct World {
    objects: BTreeMap<(ObjectKind, String, String), Value>,
    /// The last resourceVersion handed out.
    version: u64,
}

impl World {
    fn snapshot(&self, node_addresses: &[IpAddr]) -> Snapshot {
        let mut snapshot = Snapshot {
            node_addresses: node_addresses.to_vec(),
            ..Snapshot::default()
        };
        for ((kind, ..), value) in &self.objects {
            let value = value.clone();
            match kind {
                ObjectKind::Namespace => snapshot.namespaces.push(parse(value)),
                ObjectKind::Pod => snapshot.pods.push(parse(value)),
                ObjectKind::NetworkPolicy => snapshot.policies.push(parse(value)),
                ObjectKind::Service => snapshot.services.push(parse(value)),
                ObjectKind::EndpointSlice => snapshot.endpoint_slices.push(parse(value)),
                ObjectKind::ClusterNetworkPolicy => snapshot.cluster_policies.push(parse(value)),
                ObjectKind::AwsClusterNetworkPolicy => {
                    snapshot.aws_cluster_policies.push(parse(value))
                }
                ObjectKind::Node => snapshot.nodes.push(parse(value)),
            }
        }
        snapshot
    }
}

fn parse<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("a generated object parses")
}

/// Hands `value` of `kind` to the compiler.
fn apply(compiler: &mut Compiler, kind: ObjectKind, value: &Value) {
    let result = match kind {
        ObjectKind::Namespace => {
            compiler.apply(Object::Namespace(&parse::<Namespace>(value.clone())))
        }
        ObjectKind::Pod => compiler.apply(Object::Pod(&parse::<Pod>(value.clone()))),
        ObjectKind::NetworkPolicy => compiler.apply(Object::NetworkPolicy(
            &parse::<NetworkPolicy>(value.clone()),
        )),
        ObjectKind::Service => compiler.apply(Object::Service(&parse::<Service>(value.clone()))),
        ObjectKind::EndpointSlice => compiler.apply(Object::EndpointSlice(
            &parse::<EndpointSlice>(value.clone()),
        )),
        ObjectKind::ClusterNetworkPolicy => {
            compiler.apply(Object::ClusterNetworkPolicy(
                &parse::<ClusterNetworkPolicy>(value.clone()),
            ))
        }
        ObjectKind::AwsClusterNetworkPolicy => {
            compiler.apply(Object::AwsClusterNetworkPolicy(&parse::<
                AwsClusterNetworkPolicy,
            >(
                value.clone()
            )))
        }
        ObjectKind::Node => compiler.apply(Object::Node(&parse::<Node>(value.clone()))),
    };
    result.expect("generated objects are named");
}

fn namespace(rng: &mut StdRng) -> Value {
    let name = *NAMESPACES.choose(rng).unwrap();
    let mut labels = json!({});
    if rng.random_bool(0.5) {
        labels["team"] = json!(*TEAMS.choose(rng).unwrap());
    }
    let mut value = json!({"metadata": {"name": name, "labels": labels}});
    if rng.random_bool(0.15) {
        value["metadata"]["annotations"] = json!({"tollgate.io/enforcement": "audit"});
    }
    value
}

fn pod(rng: &mut StdRng) -> Value {
    let namespace = *NAMESPACES.choose(rng).unwrap();
    let index = rng.random_range(0..12u8);
    let app = *APPS.choose(rng).unwrap();
    let ips = match rng.random_range(0..10) {
        0 => json!([]),
        1 => json!([{"ip": format!("2001:db8::{index:x}")}]),
        2 => json!([{"ip": format!("198.18.0.{index}")}, {"ip": format!("2001:db8::{index:x}")}]),
        // An address another pod may hold too: the last by key wins it.
        3 => json!([{"ip": format!("198.18.0.{}", index / 2)}]),
        _ => json!([{"ip": format!("198.18.0.{index}")}]),
    };
    let phase = if rng.random_bool(0.1) {
        "Succeeded"
    } else {
        "Running"
    };
    let ready = if rng.random_bool(0.2) {
        "False"
    } else {
        "True"
    };
    let port = if rng.random_bool(0.5) { 80 } else { 8080 };
    json!({
        "metadata": {"name": format!("p{index}"), "namespace": namespace,
                     "labels": {"app": app, "team": *TEAMS.choose(rng).unwrap()}},
        "spec": {"containers": [{"name": "main", "ports": [
            {"name": "http", "containerPort": port, "protocol": "TCP"},
            {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}],
                 "hostNetwork": rng.random_bool(0.05)},
        "status": {"phase": phase, "podIPs": ips,
                   "conditions": [{"type": "Ready", "status": ready}]}
    })
}

fn peer(rng: &mut StdRng) -> Value {
    match rng.random_range(0..6) {
        0 => json!({"podSelector": {"matchLabels": {"app": *APPS.choose(rng).unwrap()}}}),
        1 => json!({"namespaceSelector": {}}),
        2 => json!({"namespaceSelector": {"matchLabels": {"team": *TEAMS.choose(rng).unwrap()}},
                    "podSelector": {"matchExpressions": [
                        {"key": "app", "operator": "In", "values": ["web", "api"]}]}}),
        3 => json!({"ipBlock": {"cidr": "198.18.0.0/28", "except": ["198.18.0.4/30"]}}),
        4 => json!({"ipBlock": {"cidr": "0.0.0.0/0", "except": ["198.18.0.0/15"]}}),
        _ => json!({"namespaceSelector": {"matchLabels": {
                        "kubernetes.io/metadata.name": *NAMESPACES.choose(rng).unwrap()}}}),
    }
}

fn ports(rng: &mut StdRng) -> Value {
    match rng.random_range(0..4) {
        0 => json!([]),
        1 => json!([{"port": "http"}]),
        2 => json!([{"protocol": "UDP", "port": 53}]),
        _ => json!([{"port": 80, "endPort": 8080}]),
    }
}

fn rules(rng: &mut StdRng, side: &str) -> Value {
    let count = rng.random_range(0..3);
    (0..count)
        .map(|_| {
            let peers: Vec<Value> = (0..rng.random_range(0..3)).map(|_| peer(rng)).collect();
            let mut rule = json!({"ports": ports(rng)});
            if !peers.is_empty() {
                rule[side] = json!(peers);
            }
            rule
        })
        .collect()
}

fn policy(rng: &mut StdRng) -> Value {
    let types: Vec<&str> = match rng.random_range(0..3) {
        0 => vec!["Ingress"],
        1 => vec!["Egress"],
        _ => vec!["Ingress", "Egress"],
    };
    let selector = if rng.random_bool(0.4) {
        json!({})
    } else {
        json!({"matchLabels": {"app": *APPS.choose(rng).unwrap()}})
    };
    json!({
        "metadata": {"name": format!("np{}", rng.random_range(0..6)),
                     "namespace": *NAMESPACES.choose(rng).unwrap()},
        "spec": {"podSelector": selector, "policyTypes": types,
                 "ingress": rules(rng, "from"), "egress": rules(rng, "to")}
    })
}

/// A ClusterNetworkPolicy of either API (few names and priorities: ties and replacements).
fn cluster_policy(rng: &mut StdRng) -> (ObjectKind, Value) {
    let aws = rng.random_bool(0.3);
    let subject = match rng.random_range(0..3) {
        0 => json!({"namespaces": {}}),
        1 => json!({"namespaces": {"matchLabels": {"team": *TEAMS.choose(rng).unwrap()}}}),
        _ => json!({"pods": {"namespaceSelector": {},
                             "podSelector": {"matchLabels": {"app": *APPS.choose(rng).unwrap()}}}}),
    };
    let cluster_rules = |rng: &mut StdRng, side: &str| -> Value {
        (0..rng.random_range(0..3))
            .map(|_| {
                let action = *["Accept", "Deny", "Pass"].choose(rng).unwrap();
                let peer = match rng.random_range(0..4) {
                    0 => json!({"namespaces": {}}),
                    1 => json!({"pods": {"namespaceSelector": {"matchLabels": {
                                    "team": *TEAMS.choose(rng).unwrap()}},
                                "podSelector": {"matchLabels": {"app": *APPS.choose(rng).unwrap()}}}}),
                    2 if side == "to" => json!({"networks": ["198.18.0.0/29", "2001:db8::/64"]}),
                    3 if side == "to" && rng.random_bool(0.5) => json!({"nodes": {"matchLabels": {
                                    "role": *["control-plane", "worker"].choose(rng).unwrap()}}}),
                    // A peer of a type this compiler does not know: the rule fails closed.
                    _ => json!({"future": {}}),
                };
                let mut rule = json!({"action": action, side: [peer]});
                match (rng.random_range(0..3), aws) {
                    (0, _) => {}
                    (1, false) => rule["protocols"] = json!([{"tcp": {"destinationPort": {"number": 80}}},
                                                             {"destinationNamedPort": "dns"}]),
                    (1, true) => rule["ports"] = json!([{"portNumber": {"protocol": "TCP", "port": 80}},
                                                        {"namedPort": "dns"}]),
                    (_, false) => rule["protocols"] = json!([{"tcp": {"destinationPort": {
                                                        "range": {"start": 80, "end": 8080}}}}]),
                    (_, true) => rule["ports"] = json!([{"portRange": {"protocol": "TCP",
                                                        "start": 80, "end": 8080}}]),
                }
                rule
            })
            .collect()
    };
    let kind = if aws {
        ObjectKind::AwsClusterNetworkPolicy
    } else {
        ObjectKind::ClusterNetworkPolicy
    };
    let value = json!({
        "metadata": {"name": format!("cnp{}", rng.random_range(0..4))},
        "spec": {"tier": *["Admin", "Baseline"].choose(rng).unwrap(),
                 "priority": rng.random_range(0..3), "subject": subject,
                 "ingress": cluster_rules(rng, "from"), "egress": cluster_rules(rng, "to")}
    });
    (kind, value)
}

/// A node: a role label and an address or two (one sometimes a pod's too).
fn node(rng: &mut StdRng) -> Value {
    let index = rng.random_range(0..3u8);
    let mut addresses = vec![json!({"type": "InternalIP", "address": format!("198.18.1.{index}")})];
    if rng.random_bool(0.3) {
        addresses.push(json!({"type": "ExternalIP", "address": format!("198.18.0.{}", 8 + index)}));
    }
    addresses.push(json!({"type": "Hostname", "address": format!("n{index}.internal")}));
    json!({
        "metadata": {"name": format!("n{index}"),
                     "labels": {"role": *["control-plane", "worker"].choose(rng).unwrap()}},
        "status": {"addresses": addresses}
    })
}

fn service(rng: &mut StdRng) -> (Value, Option<Value>) {
    let namespace = *NAMESPACES.choose(rng).unwrap();
    let index = rng.random_range(0..3u8);
    let name = format!("s{index}");
    let app = *APPS.choose(rng).unwrap();
    let service = json!({
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterIP": format!("198.19.{}.{index}", NAMESPACES.iter().position(|n| *n == namespace).unwrap()),
                 "selector": {"app": app},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}
    });
    let slice = rng.random_bool(0.5).then(|| {
        let endpoints: Vec<Value> = (0..rng.random_range(0..3u8))
            .map(|i| {
                let mut endpoint = json!({
                    "addresses": [format!("198.18.0.{}", rng.random_range(0..12u8))],
                    "conditions": {"ready": rng.random_bool(0.8)}});
                // Without a targetRef, the pod is found by its address.
                if rng.random_bool(0.7) {
                    endpoint["targetRef"] =
                        json!({"kind": "Pod", "namespace": namespace, "name": format!("p{i}")});
                }
                endpoint
            })
            .collect();
        // Sometimes the slice of another Service of the namespace, or one kube-proxy ignores.
        let owner = if rng.random_bool(0.2) {
            format!("s{}", rng.random_range(0..3u8))
        } else {
            name.clone()
        };
        let address_type = if rng.random_bool(0.1) { "FQDN" } else { "IPv4" };
        json!({
            "metadata": {"name": format!("{name}-x"), "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": owner}},
            "addressType": address_type,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints
        })
    });
    (service, slice)
}

fn key_of(kind: ObjectKind, value: &Value) -> (ObjectKind, String, String) {
    let meta = &value["metadata"];
    let namespace = match kind.scope() {
        Some(scope) => scope.to_owned(),
        None => meta["namespace"].as_str().unwrap_or("default").to_owned(),
    };
    (kind, namespace, meta["name"].as_str().unwrap().to_owned())
}

/// One random change, made to both the world and the compiler.
fn change(rng: &mut StdRng, world: &mut World, compiler: &mut Compiler) {
    let delete = rng.random_bool(0.25);
    if delete && !world.objects.is_empty() {
        let keys: Vec<_> = world.objects.keys().cloned().collect();
        let (kind, namespace, name) = keys.choose(rng).unwrap().clone();
        world
            .objects
            .remove(&(kind, namespace.clone(), name.clone()));
        compiler.delete(kind, &namespace, &name);
        return;
    }
    let policies: Vec<Value> = world
        .objects
        .iter()
        .filter(|((kind, ..), _)| *kind == ObjectKind::NetworkPolicy)
        .map(|(_, value)| value.clone())
        .collect();
    let mut upsert = |kind: ObjectKind, mut value: Value| {
        world.version += 1;
        value["metadata"]["resourceVersion"] = json!(world.version.to_string());
        apply(compiler, kind, &value);
        world.objects.insert(key_of(kind, &value), value);
    };
    match rng.random_range(0..14) {
        0 => upsert(ObjectKind::Namespace, namespace(rng)),
        1..=4 => upsert(ObjectKind::Pod, pod(rng)),
        5..=7 => upsert(ObjectKind::NetworkPolicy, policy(rng)),
        // Only the ports of a policy: the same rules, peers and selectors.
        8 if !policies.is_empty() => {
            let mut edited = policies.choose(rng).unwrap().clone();
            for side in ["ingress", "egress"] {
                if let Some(rules) = edited["spec"][side].as_array_mut() {
                    for rule in rules {
                        rule["ports"] = ports(rng);
                    }
                }
            }
            upsert(ObjectKind::NetworkPolicy, edited);
        }
        11 | 12 => {
            let (kind, value) = cluster_policy(rng);
            upsert(kind, value);
        }
        13 => upsert(ObjectKind::Node, node(rng)),
        _ => {
            let (service, slice) = service(rng);
            upsert(ObjectKind::Service, service);
            if let Some(slice) = slice {
                upsert(ObjectKind::EndpointSlice, slice);
            }
        }
    }
}

#[test]
fn incremental_compiles_exactly_what_a_full_compile_does() {
    let node = [
        "198.18.255.1".parse().unwrap(),
        "2001:db8::ff".parse().unwrap(),
    ];
    for seed in 0..40u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut world = World::default();
        let mut compiler = Compiler::new();
        compiler.set_node_addresses(node.to_vec());
        // Handed the whole cluster at each step, as the agent does.
        let mut loaded = Compiler::new();
        let capacity = if seed % 4 == 3 {
            // Small maps: what does not fit must fail the same way.
            Capacity {
                endpoints: 6,
                peers: 12,
                policy: 24,
                rulesets: 5,
                node_addrs: 1,
            }
        } else {
            Capacity::default()
        };
        let local: BTreeMap<String, u32> = (0..12)
            .filter(|i| i % 3 == 0)
            .map(|i| (format!("{}/p{i}", NAMESPACES[i % 4]), 10 + i as u32))
            .collect();
        let mut prior = Ids::default();
        // Every pass's ids: now and then a pass gets an older pass's as prior (as after an
        // agent restart, whose ids come from the maps), which the compiler must notice.
        let mut history: Vec<Ids> = Vec::new();
        for step in 0..60 {
            // Mostly one change per pass; now and then several, as a watch batches them.
            let changes = if step % 5 == 4 {
                rng.random_range(2..6)
            } else {
                1
            };
            for _ in 0..changes {
                change(&mut rng, &mut world, &mut compiler);
            }
            if step % 7 == 6 {
                prior = history[step / 2].clone();
            }
            let placement = if seed % 2 == 0 {
                Placement::AllPods { ifindex: 7 }
            } else {
                Placement::Interfaces(&local)
            };
            let full = compile_with(&world.snapshot(&node), &placement, &prior, &capacity);
            let incremental = compiler.compile(&placement, &prior, &capacity);
            assert!(
                incremental == full,
                "seed {seed} step {step}: the incremental compile differs from the full one\n\
                 incremental errors: {:?}\nfull errors: {:?}",
                incremental.errors,
                full.errors
            );
            loaded.load(&world.snapshot(&node));
            let reloaded = loaded.compile(&placement, &prior, &capacity);
            assert!(
                reloaded == full,
                "seed {seed} step {step}: a compiler loaded with each snapshot differs from \
                 the full compile"
            );
            history.push(full.ids.clone());
            prior = full.ids;
        }
    }
}
