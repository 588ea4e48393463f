//! The node agent (`tollgate agent`, one per node): keeps the probe's policy maps in step
//! with the cluster.
//!
//! Data flows through the modules in this order:
//! - [`watch`]: watches for Namespaces, Pods, NetworkPolicies, Services and EndpointSlices
//!   hold the objects that changed, slimmed to what the compiler reads ([`slim`]), until the
//!   next pass takes them (no store of the cluster: a fingerprint per object tells a change
//!   from churn), and every change that matters goes into a change log that coalesces bursts
//!   into batches;
//! - [`source`]: the [`source::ClusterSource`] the agent reads: "it changed", and the delta of
//!   what changed, object by object (never a copy of the cluster).
//!   [`source::KubeSource`] is the watches on EKS; [`source::StaticSource`] is a snapshot
//!   set in code (the lab, tests) — everything after it is the same path;
//! - [`reconcile`]: delta → the compiler, kept between passes (it checks each changed object
//!   once and recomputes only what the change touches; for this node's endpoints, ids carried
//!   over from the previous compilation) → the difference to what the maps were last synced to →
//!   `tollgate_enforcer::sync` writes only the entries that changed;
//! - [`run`]: the loop that waits for changes, reconciles, retries a failed sync, and
//!   measures the propagation latency (watch event arrival → maps synced).
//!
//! [`daemon`] wires them into `tollgate agent`: the pinned probe ([`pins`]), the node's veths
//! ([`endpoints`], named as the node's VPC CNI configuration says: [`cni`]) as the reconciler's local endpoints and the node's own addresses
//! ([`node_addresses`]: their traffic to local pods passes ingress policy), kept current between
//! cluster changes by a netlink watch ([`links`]: a new veth gets the probe at once, a late host
//! route or a changed node address starts a pass), the collector on the probe's events (named
//! through the table [`naming`] builds after every pass), and the HTTP endpoints.
//!
//! Around them: [`bench`] (`tollgate bench agent`: what the agent holds for a generated
//! cluster), [`config`] (the one settings file of agent and collector), [`http`]
//! (`/metrics`, `/healthz`, `/readyz`), [`netlink`] (the node's links, addresses, routes and
//! rules as the kernel lists them) and [`telemetry`] (text or JSON logs; traces over OTLP).

pub mod bench;
pub mod cni;
pub mod config;
pub mod daemon;
pub mod endpoints;
pub mod http;
pub mod links;
pub mod metrics;
pub mod naming;
pub mod netlink;
pub mod node_addresses;
pub mod pins;
pub mod reconcile;
pub mod run;
pub mod slim;
pub mod source;
pub mod telemetry;
pub mod watch;

use tollgate_enforcer::aya_maps::AyaMapError;
use tollgate_enforcer::sync::{MapsError, SyncError};

/// What can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error<E: MapsError = AyaMapError> {
    /// A watch stopped before its first list was complete (its task ended).
    #[error("the watch of {kind} stopped before its first list was complete")]
    WatchStopped {
        /// The kind watched.
        kind: &'static str,
    },
    /// The policy maps could not be read or written; the next pass syncs again.
    #[error("syncing the policy maps")]
    Sync {
        /// The map sync's error, naming the map and the key.
        #[from]
        source: SyncError<E>,
    },
}

/// Every value of [`Error::metric_label`].
pub const ERROR_LABELS: [&str; 4] = ["watch_stopped", "map_read", "map_write", "maps_full"];

impl<E: MapsError> Error<E> {
    /// What failed, as the `error` label of `tollgate_agent_sync_failures_total`.
    pub fn metric_label(&self) -> &'static str {
        ERROR_LABELS[self.metric_index()]
    }

    /// The index of [`Error::metric_label`] in [`ERROR_LABELS`].
    pub fn metric_index(&self) -> usize {
        match self {
            Self::WatchStopped { .. } => 0,
            Self::Sync { source } => match source {
                SyncError::Read { .. } => 1,
                SyncError::Write { .. } => 2,
                SyncError::NotProgrammed { .. } => 3,
            },
        }
    }
}
