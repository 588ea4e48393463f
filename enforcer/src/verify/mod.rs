//! `tollgate verify`: which of these flows would the policies let through? Answered offline,
//! from manifests, by the userspace model or by the real eBPF programs.
//!
//! Data flows through it in this order ([`verify`] runs every step):
//! 1. [`load_manifests`]: manifest files → one [`Snapshot`] (later objects replace earlier
//!    ones of the same kind, namespace and name).
//! 2. [`compile`]: snapshot → desired map state, every pod an endpoint on interface 1
//!    (loopback, where BPF_PROG_TEST_RUN runs the programs).
//! 3. [`parse_probes`] then [`resolve_probes`]: probes file → flows between addresses.
//! 4. [`run`]: programs the [`Datapath`] and decides each flow → [`ProbeResult`]s.
//! 5. [`render_json`] / [`render_table`]: results → text.
//!
//! Invalid input at any step (a bad object, a bad probe line) becomes an [`InputError`] and
//! is left out; everything valid is still evaluated. Only a datapath that cannot answer is
//! fatal ([`DatapathError`]).

mod manifests;
mod probes;
mod render;
mod run;

pub use manifests::{SourceText, load_manifests};
pub use probes::{
    Peer, ProbeSpec, Protocol, ResolvedProbe, UnknownProtocol, parse_probe_bytes, parse_probes,
    resolve_probes,
};
pub use render::{render_json, render_table};
pub use run::{
    HookResult, Hooks, LOOPBACK_REASON, NO_BACKENDS_REASON, NO_ENDPOINT_REASON, ProbeResult,
    ProbeVerdict, run,
};

use tollgate_schemas::Reason;

use crate::compile::{Compiled, Placement, compile};
use crate::decision::{Datapath, DatapathError};
use crate::desired::Ids;
use crate::snapshot::{InputError, Snapshot};

/// Interface index every endpoint gets: BPF_PROG_TEST_RUN runs the programs on loopback.
pub const VERIFY_IFINDEX: u32 = 1;

/// Everything `tollgate verify` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyInput {
    /// Manifest files, merged in this order.
    pub manifests: Vec<SourceText>,
    /// The probes file.
    pub probes: SourceText,
}

/// What `tollgate verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// One result per valid probe, in input order.
    pub results: Vec<ProbeResult>,
    /// Every invalid input, in this order: manifest objects, compilation problems, malformed
    /// probe lines, probes that do not resolve.
    pub errors: Vec<InputError>,
}

/// Loads, compiles, resolves and decides everything in `input` on `datapath`.
pub fn verify(
    input: &VerifyInput,
    datapath: &mut dyn Datapath,
) -> Result<Verification, DatapathError> {
    let (snapshot, mut errors) = load_manifests(&input.manifests);
    let compiled = compile_for_verify(&snapshot);
    errors.extend(compiled.errors.iter().cloned());
    let (specs, mut probe_errors) = parse_probe_bytes(&input.probes.bytes, &input.probes.source);
    errors.append(&mut probe_errors);
    let (resolved, mut resolve_errors) = resolve_probes(&specs, &snapshot, &compiled.services);
    errors.append(&mut resolve_errors);
    let results = run(&compiled, &resolved, datapath)?;
    for result in &results {
        let partial = result
            .hooks
            .egress
            .as_ref()
            .is_some_and(|hook| hook.reason == Reason::ServiceBackendsDenied.name());
        if partial && let Some(service) = &result.service {
            tracing::warn!(
                from = %result.from,
                service = %service,
                backend = result.backend.as_deref().unwrap_or_default(),
                "policy allows only some ready backends of the Service on this port: every \
                 connection through its ClusterIP is denied (kube-proxy could pick a denied one)"
            );
        }
    }
    tracing::info!(
        probes = results.len(),
        errors = errors.len(),
        endpoints = compiled.endpoint_pods.len(),
        rules = compiled.rules.len(),
        "verify decided every valid probe"
    );
    Ok(Verification { results, errors })
}

/// Compiles a snapshot the way [`verify`] does: every pod an endpoint on [`VERIFY_IFINDEX`],
/// fresh ids.
pub fn compile_for_verify(snapshot: &Snapshot) -> Compiled {
    compile(
        snapshot,
        &Placement::AllPods {
            ifindex: VERIFY_IFINDEX,
        },
        &Ids::default(),
    )
}
