//! `tollgate bench collector`: what the collector costs per event, from the kernel's ring
//! buffer to Parquet bytes in the spool, against the bare arrow-rs writer.
//!
//! Each round fills the real ring buffer through the real probe ([`Flood`]: a distinct denied
//! flow per event, the worst case for aggregation, since no two events share a record), then
//! measures, in CPU time of the collecting thread: draining and decoding the ring, enrichment
//! and aggregation, closing every record (as a window's end does), Arrow encoding and Parquet
//! writing (ZSTD, dictionaries, page statistics) into the open file. The file is closed into
//! the spool after the last round, as the agent closes one at its size or age limit (128 MiB,
//! 300 s: millions of such records), so its footer and commit are measured once, not once per
//! round. Filling is not measured.
//!
//! The upper bound: the same record batches (read back from the files) written again by a bare
//! `ArrowWriter` with the same properties into memory; the ratio says how much of the
//! writer's speed the whole pipeline keeps.
//!
//! Distinct denied flows from unknown endpoints name nobody, so their records are mostly null
//! and compress far better than a node's. [`mix`] writes a realistic mix too and reports its
//! bytes per record: a named cluster ([`MIX_PODS`] pods of Deployments in [`MIX_NAMESPACES`]
//! namespaces with the usual labels, Services, policy rules, isolated endpoints), whose pods'
//! flows as a node records them — each its own record: pod to Service ClusterIP allowed by a
//! rule, pod to pod ingress allowed by a rule, DNS to kube-dns, ingress denied for want of a
//! rule (naming the isolating policies), egress denied by a ClusterNetworkPolicy rule. The
//! mix's events arrive shuffled (with a fixed seed): records are written in the order their
//! flows were first seen, and the generator's own order repeats every [`MIX_PODS`] events, a
//! period ZSTD would find (1.6 bytes per record) where a node's interleaved flows offer none.
//!
//! Last, [`full_table`]: the peak resident set of a pipeline whose table is full, the default
//! `max_open_records` distinct flows open in one window, then closed and written at once (what
//! a flood of new flows costs the agent at worst).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde::Serialize;
use tokio::sync::Notify;

use tollgate_schemas::{
    Direction, FlowEvent, Reason, Verdict, addr, proto,
    rule::{NamedRule, PolicyTier, RuleAction, RuleRef},
};

use tollgate_enforcer::bench::scale;

use crate::{
    clock::{NS_PER_S, monotonic_ns},
    config::{CollectorConfig, SinkConfig},
    flood::{Flood, FloodError, RING_EVENTS},
    identity::{
        EndpointFacts, Identities, Naming, PendingPods, PodClaims, PodIdentity, ServiceAddress,
        ServiceIdentity,
    },
    metrics::Metrics,
    pipeline::Pipeline,
    readback::parquet_files,
    reader::MemorySource,
    spool::SpoolError,
    writer::writer_properties,
};

/// The benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The probe or a test run failed.
    #[error(transparent)]
    Flood(#[from] FloodError),
    /// The spool failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// Reading the files back or rewriting them failed.
    #[error("{0}")]
    Files(String),
}

/// Pods of the realistic mix's cluster.
pub const MIX_PODS: usize = 600;
/// Namespaces of the realistic mix's cluster.
pub const MIX_NAMESPACES: usize = 12;
/// Records of the realistic mix.
pub const MIX_RECORDS: usize = 100_000;
/// Seed of the realistic mix's shuffle.
const MIX_SEED: u64 = 18;

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct CollectorBench {
    /// Events collected.
    pub events: u64,
    /// Flow records written.
    pub records: u64,
    /// Parquet bytes written.
    pub parquet_bytes: u64,
    /// CPU seconds of the collecting thread, all of it.
    pub pipeline_cpu_s: f64,
    /// Of which: draining, decoding, enriching and aggregating (the reader).
    pub reader_cpu_s: f64,
    /// CPU seconds of the bare writer on the same batches.
    pub bare_writer_cpu_s: f64,
    /// Peak resident set of the process while it collected the flood (before the mix), KiB.
    pub peak_rss_kib: u64,
    /// Records of the realistic mix ([`mix`]).
    pub mix_records: u64,
    /// Their Parquet bytes.
    pub mix_parquet_bytes: u64,
    /// Records open at once in [`full_table`] (the default `max_open_records`).
    pub full_table_records: u64,
    /// Peak resident set of the process while [`full_table`] ran, KiB.
    pub full_table_peak_rss_kib: u64,
}

impl CollectorBench {
    /// Events per CPU second, ring buffer to Parquet bytes.
    pub fn events_per_s(&self) -> f64 {
        self.events as f64 / self.pipeline_cpu_s.max(f64::EPSILON)
    }

    /// Events per CPU second of the reader stage alone (ring buffer to aggregated records).
    pub fn reader_events_per_s(&self) -> f64 {
        self.events as f64 / self.reader_cpu_s.max(f64::EPSILON)
    }

    /// Events per CPU second of the bare writer on the same batches.
    pub fn bare_events_per_s(&self) -> f64 {
        self.events as f64 / self.bare_writer_cpu_s.max(f64::EPSILON)
    }

    /// Parquet bytes per flow record.
    pub fn bytes_per_record(&self) -> f64 {
        self.parquet_bytes as f64 / self.records.max(1) as f64
    }

    /// Parquet bytes per flow record of the realistic mix.
    pub fn mix_bytes_per_record(&self) -> f64 {
        self.mix_parquet_bytes as f64 / self.mix_records.max(1) as f64
    }
}

/// A pipeline over a fresh temporary spool named `what`, with `identities`.
fn open(
    what: &str,
    identities: Identities,
) -> Result<(Pipeline, Arc<Metrics>, PathBuf), BenchError> {
    let spool_dir =
        std::env::temp_dir().join(format!("tollgate-bench-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool_dir);
    let config = CollectorConfig {
        spool_dir: spool_dir.clone(),
        sink: SinkConfig::Local {
            dir: spool_dir.join("unused"),
        },
        rotate_age_secs: 3600,
        ..CollectorConfig::default()
    };
    let metrics = Arc::new(Metrics::default());
    let (pipeline, _) = Pipeline::open(
        &config,
        Arc::new(Mutex::new(identities)),
        Arc::clone(&metrics),
        Arc::new(Notify::new()),
    )?;
    Ok((pipeline, metrics, spool_dir))
}

/// The Parquet files a finished pipeline spooled under `spool_dir`, and their bytes.
fn spooled(spool_dir: &Path) -> Result<(Vec<PathBuf>, u64), BenchError> {
    let files =
        parquet_files(&spool_dir.join("ready")).map_err(|e| BenchError::Files(e.to_string()))?;
    let bytes = files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    Ok((files, bytes))
}

/// Collects `events` events (in ring-sized rounds) into Parquet files in a temporary spool,
/// then writes the realistic mix ([`mix`]).
pub fn collector(events: u64) -> Result<CollectorBench, BenchError> {
    let (mut pipeline, metrics, spool_dir) = open("flood", Identities::default())?;
    let (mut flood, mut reader) = Flood::new()?;
    let mut cpu = Duration::ZERO;
    let mut reader_cpu = Duration::ZERO;
    let mut collected = 0;
    while collected < events {
        let round = RING_EVENTS.min(usize::try_from(events - collected).unwrap_or(RING_EVENTS));
        flood.deny(round)?;
        let started = thread_cpu();
        pipeline.drain(&mut reader, &mut None);
        let drained = thread_cpu();
        pipeline.close_windows();
        reader_cpu += drained.saturating_sub(started);
        cpu += thread_cpu().saturating_sub(started);
        collected += round as u64;
    }
    timed(&mut cpu, || pipeline.flush());
    let records = metrics.records.load(std::sync::atomic::Ordering::Relaxed);
    // The flows alone are measured: no kernel loss is read into the files.
    pipeline.finish(&MemorySource::default())?;
    // The flood's peak, before the bare writer and the mix add their own.
    let peak_rss_kib = (scale::peak_rss_mib() * 1024.0) as u64;
    let (files, parquet_bytes) = spooled(&spool_dir)?;
    let bare_writer_cpu_s = bare_writer(&files)?.as_secs_f64();
    let _ = std::fs::remove_dir_all(&spool_dir);
    let (mix_records, mix_parquet_bytes) = mix(MIX_RECORDS)?;
    let (full_table_records, full_table_peak_rss_kib) =
        full_table(CollectorConfig::default().max_open_records)?;
    Ok(CollectorBench {
        events: collected,
        records,
        parquet_bytes,
        pipeline_cpu_s: cpu.as_secs_f64(),
        reader_cpu_s: reader_cpu.as_secs_f64(),
        bare_writer_cpu_s,
        peak_rss_kib,
        mix_records,
        mix_parquet_bytes,
        full_table_records,
        full_table_peak_rss_kib,
    })
}

/// Opens `records` records at once (distinct denied flows of one window, added as the reader
/// adds a ring buffer's worth), then closes and writes them: the records written and the
/// process's peak resident set meanwhile, KiB.
pub fn full_table(records: usize) -> Result<(u64, u64), BenchError> {
    let (mut pipeline, metrics, spool_dir) = open("full", Identities::default())?;
    let now = monotonic_ns();
    let server = (IpAddr::V4(Ipv4Addr::new(198, 18, 0, 30)), 80);
    scale::reset_peak_rss();
    let mut opened = 0;
    while opened < records {
        let round: Vec<FlowEvent> = (opened..records.min(opened + RING_EVENTS))
            .map(|n| {
                let client = IpAddr::V4(Ipv4Addr::from(0xc612_0100 + (n / 60_000) as u32));
                let mut event = flow(
                    &client,
                    1024 + (n % 60_000) as u16,
                    server,
                    Direction::Ingress,
                );
                event.ts_ns = now;
                event.verdict = Verdict::Deny as u8;
                event.reason = Reason::UnknownEndpoint as u8;
                event
            })
            .collect();
        opened += round.len();
        pipeline.ingest(&round);
    }
    pipeline.flush();
    let peak_rss_kib = (scale::peak_rss_mib() * 1024.0) as u64;
    let written = metrics.records.load(std::sync::atomic::Ordering::Relaxed);
    pipeline.finish(&MemorySource::default())?;
    let _ = std::fs::remove_dir_all(&spool_dir);
    Ok((written, peak_rss_kib))
}

/// Writes `records` records of the realistic mix (see the module doc) through the pipeline:
/// the records written and their Parquet bytes.
pub fn mix(records: usize) -> Result<(u64, u64), BenchError> {
    let pods: Vec<(PodIdentity, IpAddr)> = (0..MIX_PODS)
        .map(|n| {
            let app = format!("app-{}", n / 6);
            let labels = BTreeMap::from([
                ("app.kubernetes.io/name".to_owned(), app.clone()),
                (
                    "app.kubernetes.io/part-of".to_owned(),
                    format!("shop-{}", n % 5),
                ),
                (
                    "pod-template-hash".to_owned(),
                    format!("7d9f8c{:04x}", n / 6),
                ),
                ("tier".to_owned(), ["web", "api", "db"][n % 3].to_owned()),
            ]);
            let identity = PodIdentity {
                namespace: format!("team-{}", n % MIX_NAMESPACES),
                name: format!("{app}-7d9f8c{:04x}-{:05x}", n / 6, n * 7919 % 0xfffff),
                workload: format!("Deployment/{app}"),
                labels: Arc::new(labels),
            };
            let address = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + 17 * n as u32 + 5));
            (identity, address)
        })
        .collect();
    let mut changes = PendingPods::default();
    for (identity, address) in &pods {
        let key = (identity.namespace.clone(), identity.name.clone());
        changes.add(key, PodClaims::new(identity.clone(), [*address]));
    }
    let service = |n: usize| (IpAddr::V4(Ipv4Addr::from(0xac14_0000 + n as u32)), 80);
    let dns = (IpAddr::V4(Ipv4Addr::new(172, 20, 0, 10)), 53);
    let mut services: HashMap<ServiceAddress, ServiceIdentity> = (0..MIX_PODS / 6)
        .map(|n| {
            let (addr, port) = service(n);
            let identity = ServiceIdentity {
                namespace: format!("team-{}", n * 6 % MIX_NAMESPACES),
                name: format!("app-{n}"),
            };
            (ServiceAddress::new(addr, proto::TCP, port), identity)
        })
        .collect();
    services.insert(
        ServiceAddress::new(dns.0, proto::UDP, dns.1),
        ServiceIdentity {
            namespace: "kube-system".to_owned(),
            name: "kube-dns".to_owned(),
        },
    );
    let rules = (1..=MIX_PODS as u32 / 6)
        .map(|id| {
            let rule = RuleRef {
                namespace: format!("team-{}", id as usize % MIX_NAMESPACES),
                policy: format!("allow-app-{id}"),
                direction: [Direction::Ingress, Direction::Egress][id as usize % 2],
                index: id % 3,
            };
            let named = NamedRule {
                rule,
                tier: PolicyTier::NetworkPolicy,
                action: RuleAction::Allow,
                version: format!("{}", 48_213 + id * 37),
            };
            (id, named)
        })
        .collect();
    let endpoints = (0..MIX_PODS as u32)
        .map(|id| {
            let namespace = id as usize % MIX_NAMESPACES;
            let facts = EndpointFacts {
                flags: 0,
                ifindex: 100 + id,
                isolating: [0, 1].map(|_| Arc::from([format!("team-{namespace}/default-deny")])),
            };
            (id, facts)
        })
        .collect();
    let mut identities = Identities::default();
    let now = monotonic_ns();
    identities.observe(
        Naming {
            pods: changes.take(),
            node_addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 255, 1))],
            services,
            rules,
            endpoints,
        },
        now.saturating_sub(NS_PER_S),
    );
    let (mut pipeline, metrics, spool_dir) = open("mix", identities)?;
    let mut events = (0..records)
        .map(|n| {
            let own = n % MIX_PODS;
            let peer = (n * 31 + 7) % MIX_PODS;
            let sport = 32_768 + (n / MIX_PODS) as u16;
            let mut event = match n % 20 {
                // Egress to a Service's ClusterIP, allowed by a rule.
                0..=6 => flow(&pods[own].1, sport, service(peer / 6), Direction::Egress),
                // Ingress from another pod, allowed by a rule.
                7..=13 => flow(
                    &pods[peer].1,
                    sport,
                    (pods[own].1, 8080),
                    Direction::Ingress,
                ),
                // DNS.
                14..=16 => flow(&pods[own].1, sport, dns, Direction::Egress),
                // Ingress denied for want of a rule.
                17 | 18 => flow(
                    &pods[peer].1,
                    sport,
                    (pods[own].1, 5432),
                    Direction::Ingress,
                ),
                // Egress to the outside denied by a rule.
                _ => flow(
                    &pods[own].1,
                    sport,
                    (IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)), 443),
                    Direction::Egress,
                ),
            };
            event.endpoint = own as u32;
            event.ifindex = 100 + own as u32;
            event.ts_ns = now;
            let (verdict, reason, rule_id) = match n % 20 {
                14..=16 => (Verdict::Allow, Reason::AllowedByRule, 1 + own as u32 / 6),
                17 | 18 => (Verdict::Deny, Reason::IsolatedNoMatch, 0),
                19 => (Verdict::Deny, Reason::DeniedByRule, 1 + peer as u32 / 6),
                _ => (Verdict::Allow, Reason::AllowedByRule, 1 + peer as u32 / 6),
            };
            event.verdict = verdict as u8;
            event.reason = reason as u8;
            event.rule_id = rule_id;
            event
        })
        .collect::<Vec<_>>();
    events.shuffle(&mut StdRng::seed_from_u64(MIX_SEED));
    for chunk in events.chunks(RING_EVENTS) {
        pipeline.ingest(chunk);
        pipeline.flush();
    }
    let written = metrics.records.load(std::sync::atomic::Ordering::Relaxed);
    pipeline.finish(&MemorySource::default())?;
    let (_, bytes) = spooled(&spool_dir)?;
    let _ = std::fs::remove_dir_all(&spool_dir);
    Ok((written, bytes))
}

/// One TCP or UDP (to port 53) flow event from `src` port `sport` to `dst`, seen in
/// `direction`: three packets' worth.
fn flow(src: &IpAddr, sport: u16, dst: (IpAddr, u16), direction: Direction) -> FlowEvent {
    let protocol = if dst.1 == 53 { proto::UDP } else { proto::TCP };
    FlowEvent {
        version: tollgate_schemas::FLOW_EVENT_VERSION,
        family: 4,
        protocol,
        direction: direction as u8,
        tcp_flags: if protocol == proto::TCP { 0x1a } else { 0 },
        src_port: sport,
        dst_port: dst.1,
        src_addr: addr::to_bytes(*src),
        dst_addr: addr::to_bytes(dst.0),
        packets: 3,
        bytes: 214 + u64::from(sport % 900),
        verdict: 0,
        reason: 0,
        ts_ns: 0,
        ifindex: 0,
        endpoint: 0,
        rule_id: 0,
        icmp_type: 0,
        icmp_code: 0,
        _pad: [0; 6],
    }
}

/// CPU time of writing every batch of `files` again with a bare `ArrowWriter` into memory.
fn bare_writer(files: &[std::path::PathBuf]) -> Result<Duration, BenchError> {
    let error = |e: &dyn std::fmt::Display| BenchError::Files(e.to_string());
    let mut cpu = Duration::ZERO;
    for path in files {
        let file = std::fs::File::open(path).map_err(|e| error(&e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| error(&e))?;
        let schema = builder.schema().clone();
        let reader = builder.build().map_err(|e| error(&e))?;
        // Reading back is not measured: each batch is read, then timed as it is written.
        let mut writer = timed(&mut cpu, || {
            ArrowWriter::try_new(Vec::new(), schema, Some(writer_properties()))
        })
        .map_err(|e| error(&e))?;
        for batch in reader {
            let batch = batch.map_err(|e| error(&e))?;
            timed(&mut cpu, || writer.write(&batch)).map_err(|e| error(&e))?;
        }
        timed(&mut cpu, || writer.close()).map_err(|e| error(&e))?;
    }
    Ok(cpu)
}

/// `work`'s result, its CPU time on the calling thread added to `cpu`.
fn timed<T>(cpu: &mut Duration, work: impl FnOnce() -> T) -> T {
    let started = thread_cpu();
    let result = work();
    *cpu += thread_cpu().saturating_sub(started);
    result
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// The result as a table.
pub fn render(bench: &CollectorBench) -> String {
    format!(
        "events collected (distinct denied flows):  {}\n\
         flow records written:                      {}\n\
         reader, ring buffer -> aggregated records: {:.0} events/s per core ({:.0} ns/event)\n\
         collector, ring buffer -> Parquet bytes:   {:.0} events/s per core ({:.0} ns/event)\n\
         bare ArrowWriter, same batches:            {:.0} events/s per core\n\
         ratio collector / bare writer:             {:.2}\n\
         Parquet bytes per flow record (ZSTD):      {:.1}\n\
         ... on a realistic mix:                    {:.1} ({} records)\n\
         peak RSS:                                  {:.1} MiB\n\
         {:<43}{:.1} MiB\n",
        bench.events,
        bench.records,
        bench.reader_events_per_s(),
        1e9 / bench.reader_events_per_s(),
        bench.events_per_s(),
        1e9 / bench.events_per_s(),
        bench.bare_events_per_s(),
        bench.events_per_s() / bench.bare_events_per_s(),
        bench.bytes_per_record(),
        bench.mix_bytes_per_record(),
        bench.mix_records,
        bench.peak_rss_kib as f64 / 1024.0,
        format!(
            "peak RSS, {} records open then closed:",
            bench.full_table_records
        ),
        bench.full_table_peak_rss_kib as f64 / 1024.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_realistic_mix_writes_one_named_record_per_event() {
        let (records, bytes) = mix(2_000).unwrap();
        assert_eq!(records, 2_000);
        // Named records: far more than the ~5 bytes of a distinct unnamed denied flow.
        assert!(bytes / records > 10, "{bytes} bytes");
    }

    #[test]
    fn a_full_table_closes_every_record_it_opened() {
        let (records, peak_rss_kib) = full_table(2_000).unwrap();
        assert_eq!(records, 2_000);
        assert!(peak_rss_kib > 0);
    }
}
