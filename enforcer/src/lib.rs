//! tollgate's enforcer: from Kubernetes objects to the probe's maps, and the probe itself.
//!
//! Data flows through the modules in this order:
//! - [`manifest`]: Kubernetes YAML → [`snapshot::Snapshot`] plus [`snapshot::InputError`]s.
//! - [`crd`]: the ClusterNetworkPolicy custom resources (upstream's and AWS's) the snapshot
//!   holds besides the built-in kinds.
//! - [`compile`]: snapshot → [`desired::DesiredState`] (pure: no I/O, no aya).
//! - [`sync`]: desired vs. current state → adds/deletes, applied through the
//!   [`sync::PolicyMaps`] trait ([`sync::InMemoryMaps`] or [`aya_maps::AyaMaps`], which keeps
//!   the revisions array in step with the endpoint map through [`revision_slots`]).
//! - [`probe`]: loads the embedded eBPF object and attaches it to veths (TCX, else clsact).
//! - [`events`]: decodes the flow events the probe writes into its ring buffer.
//! - [`decision`]: the [`decision::Datapath`] trait that answers "what happens to this flow",
//!   by the userspace [`model`] or by the real programs under BPF_PROG_TEST_RUN
//!   ([`bpf_datapath`], with packets from [`packet`]).
//! - [`verify`]: the offline policy checker built on both datapaths.
//!
//! Shared by every crate: [`causes`] (an error with each cause once) and [`columns`] (the
//! CLI's plain tables).

pub mod aya_maps;
pub mod bench;
pub mod bpf_datapath;
pub mod causes;
pub mod columns;
pub mod compile;
pub mod crd;
pub mod decision;
pub mod desired;
pub mod events;
pub mod manifest;
pub mod model;
pub mod packet;
pub mod probe;
pub mod revision_slots;
pub mod snapshot;
pub mod sync;
pub mod verify;
