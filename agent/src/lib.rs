//! The node agent (`tollgate agent`, one per node): keeps the probe's policy maps in step
//! with the cluster.
//!
//! Data flows through the modules in this order:
//! - [`watch`]: reflectors for Namespaces, Pods, NetworkPolicies, Services and EndpointSlices
//!   fill shared stores with objects slimmed to what the compiler reads ([`slim`]), and every
//!   change that matters goes into a change log that coalesces bursts into batches;
//! - [`source`]: the [`source::ClusterSource`] the agent reads: a snapshot of the cluster and
//!   "it changed". [`source::KubeSource`] is the reflectors on EKS; [`source::StaticSource`]
//!   is a snapshot set in code (the lab, tests) — everything after it is the same path;
//! - [`reconcile`]: snapshot → the compiler, kept between passes (it checks again only the
//!   objects whose resourceVersion moved; for this node's endpoints, ids carried over from the
//!   previous compilation) → the difference to what the maps were last synced to →
//!   `tollgate_enforcer::sync` writes only the entries that changed;
//! - [`run`]: the loop that waits for changes, reconciles, retries a failed sync, and
//!   measures the propagation latency (watch event arrival → maps synced).
//!
//! [`daemon`] wires them into `tollgate agent`: the pinned probe ([`pins`]), the node's veths
//! ([`endpoints`], named as the node's VPC CNI configuration says: [`cni`]) as the reconciler's local endpoints and the node's own addresses
//! ([`node_addresses`]: their traffic to local pods passes ingress policy), kept current between
//! cluster changes by a netlink watch ([`links`]: a new veth gets the probe at once, a late host
//! route or a changed node address starts a pass), the collector on the probe's events, and the
//! HTTP endpoints.
//!
//! Around them: [`config`] (the one settings file of agent and collector), [`http`]
//! (`/metrics`, `/healthz`, `/readyz`) and [`telemetry`] (text or JSON logs; traces and
//! metrics over OTLP).

pub mod cni;
pub mod config;
pub mod daemon;
pub mod endpoints;
pub mod http;
pub mod links;
pub mod metrics;
pub mod node_addresses;
pub mod pins;
pub mod reconcile;
pub mod run;
pub mod slim;
pub mod source;
pub mod telemetry;
pub mod watch;

/// What can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A reflector stopped before its first list was complete (its task ended).
    #[error("a watch stopped before its first list was complete: {source}")]
    WatchStopped {
        /// The store's error.
        #[from]
        source: kube::runtime::reflector::store::WriterDropped,
    },
    /// The policy maps could not be read or written; the next pass syncs again.
    #[error("syncing the policy maps: {source}")]
    Sync {
        /// The map sync's error, naming the map and the key.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
