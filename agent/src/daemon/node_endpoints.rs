//! The node's endpoints for each pass ([`LocalEndpoints`]): the local pods' veths discovered
//! from the kernel (and the CNI's routes), the probe attached to new ones before their
//! entries are written, the node's own addresses, and the netlink watch that starts a pass
//! when a veth, a host route or a node address comes or goes.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tollgate_collector::identity::{EndpointInterface, Eni};
use tollgate_enforcer::snapshot::{Updates, pod_addresses};

use super::SharedProbe;
use crate::cni::VethNames;
use crate::config::NodeIngress;
use crate::endpoints::{Attacher, Discovery, Endpoints, LocalPod, Veth, discover};
use crate::links::{LinkWatch, pod_links};
use crate::node_addresses;
use crate::pins::PinError;
use crate::reconcile::LocalEndpoints;
use tollgate_enforcer::causes::Causes;

/// Quiet time that ends a burst of node changes (a pod's CNI ADD: the veth, its state, the
/// host route) before the pass they start.
const NODE_QUIET: Duration = Duration::from_millis(20);

/// Longest a burst of node changes delays its pass.
const NODE_BURST_MAX: Duration = Duration::from_millis(200);

/// The node's endpoints as the reconciler asks for them: discovered from the host routes of
/// the calling thread's network namespace, with the probe attached to their veths, and to
/// every other pod veth (pods the cluster has not named yet); and the node's own
/// addresses, read from the same namespace.
#[derive(Debug)]
pub struct NodeEndpoints {
    endpoints: Endpoints<SharedProbe>,
    node: String,
    names: VethNames,
    /// Whether the node's addresses pass ingress policy (then they are read and watched).
    node_ingress: NodeIngress,
    /// The node's addresses as last read: kept when a read fails.
    addresses: Vec<IpAddr>,
    /// Whether the addresses must be read again: at first, after the netlink watch heard one
    /// come or go (or dropped notifications), and after a failed read. Reading them costs a
    /// netlink dump of every link (~0.8 ms with 220 interfaces), so a pass that nothing about
    /// them started does not pay it.
    addresses_stale: bool,
    /// The netlink watch of the node's links, routes and (with `node_ingress: allow`)
    /// addresses; `None` if it could not be opened or failed (discovery then happens only on
    /// cluster changes and rechecks).
    watch: Option<LinkWatch>,
    /// Set by the first node change of a burst: when the burst's pass is due at the latest.
    /// Kept here, not in [`LocalEndpoints::changed`]'s future, which the loop may drop.
    burst_end: Option<tokio::time::Instant>,
    /// Whether [`NodeEndpoints::adopt`] ran: before, veths an earlier agent pinned are left
    /// to it (their entries are written, their programs swapped by the adoption).
    adopted: bool,
    discovery: Discovery,
    /// The pods that may be on this node (see [`NodeEndpoints::track`]), by `namespace/name`.
    pods: BTreeMap<String, LocalPod>,
    /// What the last call returned: the endpoints kept when a discovery fails.
    interfaces: BTreeMap<String, u32>,
    /// The addresses of those endpoints on another veth than their pod's (multi-NIC pods).
    extra_addresses: BTreeMap<IpAddr, u32>,
    /// Whether the last call attached every discovered veth.
    complete: bool,
}

impl NodeEndpoints {
    /// The endpoints of node `node` on the pod veths `names`, watching the links and routes
    /// of the calling thread's network namespace, and its addresses unless `node_ingress` is
    /// [`NodeIngress::Policy`] (call it inside the runtime).
    pub fn new(
        probe: SharedProbe,
        node: &str,
        names: &VethNames,
        node_ingress: NodeIngress,
    ) -> Self {
        let watch = LinkWatch::open(names, node_ingress == NodeIngress::Allow)
            .inspect_err(|error| {
                tracing::warn!(error = %Causes(error), "no netlink watch: new veths wait for the pod's watch event");
            })
            .ok();
        Self {
            endpoints: Endpoints::new(probe),
            node: node.to_owned(),
            names: names.clone(),
            node_ingress,
            addresses: Vec::new(),
            addresses_stale: true,
            watch,
            burst_end: None,
            adopted: false,
            discovery: Discovery::default(),
            pods: BTreeMap::new(),
            interfaces: BTreeMap::new(),
            extra_addresses: BTreeMap::new(),
            complete: false,
        }
    }

    /// Whether the last pass found every local endpoint's veth with the probe on it.
    pub fn complete(&self) -> bool {
        self.complete
    }

    /// Takes over the links of an earlier agent, then attaches and detaches to match the
    /// last discovery. Call once, after the first pass synced the maps.
    pub fn adopt(&mut self) -> Result<(), PinError> {
        let adoption = self.endpoints.attacher().lock().adopt()?;
        tracing::info!(
            adopted = adoption.adopted.len(),
            stale = adoption.stale.len(),
            old_layouts = adoption.old_layouts.len(),
            "links of an earlier agent adopted"
        );
        self.adopted = true;
        let applied = self.endpoints.apply(&self.discovery);
        self.complete = applied.failed.is_empty();
        Ok(())
    }
}

fn is_local(pod: &Pod, node: &str) -> bool {
    let Some(spec) = &pod.spec else {
        return false;
    };
    spec.host_network != Some(true)
        && spec
            .node_name
            .as_deref()
            .is_none_or(|name| node.is_empty() || name == node)
}

impl NodeEndpoints {
    /// The host interfaces the probe is on, by index, as flow records name them: the veth's
    /// name, and a branch ENI when discovery found one behind it (a `vlan…` veth, or a route
    /// through a VLAN of the trunk: [`Discovery::branch_eni`]).
    pub fn endpoint_interfaces(&self) -> HashMap<u32, EndpointInterface> {
        self.endpoints
            .attacher()
            .attached()
            .into_iter()
            .map(|(name, ifindex)| {
                let eni = match self.discovery.branch_eni.contains(&name) {
                    true => Eni::Branch,
                    false => Eni::Node,
                };
                (ifindex, EndpointInterface { name, eni })
            })
            .collect()
    }
}

impl LocalEndpoints for NodeEndpoints {
    /// Keeps the pods that may be on this node: those with an address, not `hostNetwork`,
    /// and scheduled here (or not scheduled anywhere yet, as in a snapshot set in code).
    fn track(&mut self, changed: &Updates<Pod>) {
        for ((namespace, name), pod) in changed {
            let key = format!("{namespace}/{name}");
            let local = pod
                .as_deref()
                .filter(|pod| is_local(pod, &self.node))
                .map(|pod| LocalPod {
                    pod: key.clone(),
                    ips: pod_addresses(pod),
                })
                .filter(|pod| !pod.ips.is_empty());
            match local {
                Some(local) => self.pods.insert(key, local),
                None => self.pods.remove(&key),
            };
        }
    }

    fn local(&mut self) -> BTreeMap<String, u32> {
        let pods: Vec<LocalPod> = self.pods.values().cloned().collect();
        match discover(&pods, &self.names) {
            Ok(discovery) => self.discovery = discovery,
            Err(error) => {
                // The previous endpoints stand (none before the first discovery).
                tracing::warn!(error = %Causes(&error), "endpoint discovery failed");
                self.complete = false;
                return self.interfaces.clone();
            }
        }
        if self.adopted {
            let applied = self.endpoints.apply(&self.discovery);
            self.complete = applied.failed.is_empty();
            self.interfaces = self.endpoints.interfaces();
            self.extra_addresses = self.endpoints.address_interfaces();
            return self.interfaces.clone();
        }
        // Before the adoption: new veths are attached now, veths pinned by an earlier agent
        // keep its programs (on the maps this pass syncs) until the adoption swaps them.
        let (pinned, fresh, fresh_links) = {
            let probe = self.endpoints.attacher().lock();
            let (pinned, fresh): (BTreeMap<_, _>, BTreeMap<_, _>) = self
                .discovery
                .veths
                .clone()
                .into_iter()
                .partition(|(_, veth)| probe.has_foreign_pins(&veth.ifname));
            let fresh_links: Vec<Veth> = self
                .discovery
                .links
                .iter()
                .filter(|veth| !probe.has_foreign_pins(&veth.ifname))
                .cloned()
                .collect();
            (pinned, fresh, fresh_links)
        };
        let (fresh_extra, pinned_extra): (BTreeMap<_, _>, BTreeMap<_, _>) = self
            .discovery
            .extra
            .clone()
            .into_iter()
            .partition(|(pod, _)| fresh.contains_key(pod));
        let applied = self.endpoints.apply(&Discovery {
            veths: fresh,
            links: fresh_links,
            extra: fresh_extra,
            ..Discovery::default()
        });
        self.complete = applied.failed.is_empty();
        let mut interfaces = self.endpoints.interfaces();
        let mut extra_addresses = self.endpoints.address_interfaces();
        extra_addresses.extend(pinned_extra.into_iter().flat_map(|(pod, addresses)| {
            let kept = pinned.contains_key(&pod);
            addresses
                .into_iter()
                .filter(move |_| kept)
                .map(|(ip, veth)| (ip, veth.ifindex))
        }));
        interfaces.extend(pinned.into_iter().map(|(pod, veth)| (pod, veth.ifindex)));
        self.interfaces = interfaces;
        self.extra_addresses = extra_addresses;
        self.interfaces.clone()
    }

    fn address_interfaces(&self) -> BTreeMap<IpAddr, u32> {
        self.extra_addresses.clone()
    }

    fn node_addresses(&mut self) -> Vec<IpAddr> {
        if self.node_ingress == NodeIngress::Policy {
            return Vec::new();
        }
        // Without the watch no change would be heard: read at every pass.
        if !self.addresses_stale && self.watch.is_some() {
            return self.addresses.clone();
        }
        match node_addresses::discover(&self.names) {
            Ok(addresses) => {
                if addresses != self.addresses {
                    tracing::info!(
                        ?addresses,
                        "node addresses: their traffic to local pods passes ingress policy"
                    );
                    self.addresses = addresses;
                }
                self.addresses_stale = false;
            }
            // The previous addresses stand (none before the first read); read again next pass.
            Err(error) => {
                tracing::warn!(error = %Causes(&error), "reading the node's addresses failed")
            }
        }
        self.addresses.clone()
    }

    fn changed(&mut self) -> impl Future<Output = ()> + Send {
        let Self {
            watch,
            endpoints,
            names,
            burst_end,
            addresses_stale,
            ..
        } = self;
        async move {
            let Some(link_watch) = watch.as_mut() else {
                return std::future::pending().await;
            };
            loop {
                let read = match *burst_end {
                    None => link_watch.next().await,
                    Some(end) => {
                        let quiet = (tokio::time::Instant::now() + NODE_QUIET).min(end);
                        match tokio::time::timeout_at(quiet, link_watch.next()).await {
                            Ok(read) => read,
                            Err(_) => {
                                *burst_end = None;
                                return;
                            }
                        }
                    }
                };
                let events = match read {
                    Ok(events) => events,
                    Err(error) => {
                        tracing::warn!(error = %Causes(&error), "netlink watch failed; new veths now wait for the pod's watch event");
                        *watch = None;
                        *burst_end = None;
                        return;
                    }
                };
                let mut links = events.new_links.clone();
                if events.overflowed {
                    match pod_links(names) {
                        Ok(all) => links = all,
                        Err(error) => {
                            tracing::warn!(error = %Causes(&error), "listing the veths after a netlink overflow")
                        }
                    }
                }
                // A new veth gets the probe before anything else: from here on its pod is
                // enforced (an unknown endpoint until its entries are written). The loop asks
                // for node changes only after a pass synced, and the adoption follows that
                // first pass: no earlier agent's pins are left to leave alone here.
                endpoints.attach_new(&links);
                *addresses_stale |= events.addresses_changed || events.overflowed;
                if events.relevant() && burst_end.is_none() {
                    *burst_end = Some(tokio::time::Instant::now() + NODE_BURST_MAX);
                }
            }
        }
    }
}
