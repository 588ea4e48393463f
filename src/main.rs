//! The `tollgate` command: wiring of the library crates to a command line, nothing more.
//!
//! Output goes through [`write_out`] and [`note`], never `print!` (denied below): a reader
//! that goes away (`tollgate flows … | head -1`) ends the output quietly instead of a panic.

#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::{
    ffi::{c_int, c_long},
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tollgate_enforcer::{
    bench::{self, scale},
    bpf_datapath::BpfDatapath,
    causes,
    decision::Datapath,
    model::ModelDatapath,
    verify,
};

/// mimalloc for every command: see `Cargo.toml`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long memory freed in whole pages waits before mimalloc gives it back to the system, ms,
/// unless [`PURGE_DELAY`] says otherwise. mimalloc 3 waits 1,000 ms, and so kept what the
/// probe's load had freed (aya parses the kernel's BTF, ~20 MiB resident afterwards) and a
/// full table's old copies: `bench collector`'s flood peaked at 72 MiB and a full table at
/// 233-243, against 57 and 165-171 after 10 ms (mimalloc 2's default), as fast; `bench
/// scale` at 100k pods 1,035 MiB against 1,007, its first compile as fast. See
/// docs/collector.md.
const PURGE_DELAY_MS: c_long = 10;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` (`mimalloc.h`: the deprecated options
/// before it keep their places, so the number holds for every mimalloc 3).
const MI_OPTION_PURGE_DELAY: c_int = 15;

unsafe extern "C" {
    /// mimalloc's version, `major * 10_000 + minor * 100 + patch` (`mimalloc.h`).
    fn mi_version() -> c_int;
    /// mimalloc's setter of an option (`mimalloc.h`), safe to call at any time.
    fn mi_option_set(option: c_int, value: c_long);
}

/// Sets mimalloc's purge delay to [`PURGE_DELAY_MS`], unless the environment chose one (read
/// by mimalloc when the process started) or the linked mimalloc is not version 3 (whose
/// option numbers these are).
fn tune_allocator() {
    // SAFETY: a getter without arguments.
    let version = unsafe { mi_version() };
    if std::env::var_os(PURGE_DELAY).is_none() && version / 10_000 == 3 {
        // SAFETY: `mi_option_set` stores the value of an option that mimalloc 3 has.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

/// Kubernetes NetworkPolicy enforcement and flow auditing on eBPF.
#[derive(Parser)]
#[command(name = "tollgate", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent (one per node, the DaemonSet): keep the probe's maps in step with
    /// the cluster's NetworkPolicies and collect flow records. The node's name comes from
    /// `TOLLGATE_NODE`.
    Agent(AgentArgs),
    /// Check what NetworkPolicies do to given flows, offline (what-if, conformance).
    Verify(VerifyArgs),
    /// Run the seed scenario for real in network namespaces wired like the VPC CNI.
    Lab(LabArgs),
    /// Print the flow records of a local flow directory (what `lab --out` or a local sink
    /// wrote).
    Flows(FlowsArgs),
    /// Isolate a pod at once, ingress and egress (a label and a deny-all NetworkPolicy that
    /// tollgate owns), through the Kubernetes API (kubeconfig or in-cluster); the act is
    /// recorded in the flow log. `--release` lifts it.
    Quarantine(QuarantineArgs),
    /// Write an evidence bundle of a pod's flow records in a time window, from the flow log;
    /// or `evidence verify DIR`.
    Evidence(Box<EvidenceArgs>),
    /// The flow log's signed digest chain: check the flow log against it, or make and export
    /// a signing key.
    Digest {
        #[command(subcommand)]
        command: DigestCommand,
    },
    /// Measure the datapath, the collector or the compiler at cluster scale.
    Bench {
        #[command(subcommand)]
        target: BenchTarget,
    },
}

#[derive(clap::Args)]
struct AgentArgs {
    /// The settings file (`agent:` and `collector:` sections); every field has a default.
    #[arg(long)]
    config: PathBuf,
    /// Remove everything the agent pinned (filters, links, maps) and exit; no agent may run.
    #[arg(long)]
    uninstall: bool,
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// Kubernetes YAML (Namespaces, Pods, NetworkPolicies; Lists too): one or more files,
    /// and the flag may be repeated. A later object replaces an earlier one of the same kind,
    /// namespace and name.
    #[arg(long = "manifests", required = true, num_args = 1..)]
    manifests: Vec<PathBuf>,
    /// One probe per line: `FROM TO PORT/PROTOCOL`; FROM and TO are `namespace/pod` or an IP, and
    /// TO may be `service:namespace/name` or a ClusterIP (one result per ready backend).
    #[arg(long)]
    probes: PathBuf,
    /// `model` evaluates the compiled maps in userspace; `bpf` runs the real programs under
    /// BPF_PROG_TEST_RUN (needs root).
    #[arg(long, value_enum)]
    datapath: DatapathKind,
    /// `json`: one object per probe and line; `table`: aligned columns.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(clap::Args)]
struct LabArgs {
    /// `table`: readable steps and flow events; `json`: one object per check and line.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// `auto`: TCX links where the kernel has them, else clsact; `clsact`: always clsact.
    #[arg(long, value_enum, default_value_t = AttachArg::Auto)]
    attach: AttachArg,
    /// Keep the flow directory (Parquet, partitioned like the bucket) here; a temporary
    /// directory, named at the end, otherwise.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Two steps more: default-deny for kube-system in audit mode, then the amazonlinux
    /// client quarantined while it keeps trying nginx and kube-dns; its evidence bundle goes
    /// to `<out>/evidence`.
    #[arg(long)]
    quarantine: bool,
    /// The cluster's address family: `ipv4` (pods 198.18.0.0/24, Services 198.19.0.0/16) or
    /// `ipv6` (an EKS IPv6 cluster: pods 2001:db8::/64, Services 2001:db8:ffff::/112).
    #[arg(long, value_enum, default_value_t = IpFamilyArg::Ipv4)]
    ip_family: IpFamilyArg,
    /// The amazonlinux client as a pod with security groups: a branch ENI in the VPC CNI's
    /// strict mode (a `vlan…` veth, a VLAN of the trunk ENI, a per-VLAN route table and its
    /// `ip rule`s, a VPC behind the node); IPv4 only.
    #[arg(long)]
    sgp: bool,
    /// The records also as OCSF 1.1 Network Activity for Amazon Security Lake, beside the flow
    /// log in the custom source's layout (`<out>/ext/tollgate/region=lab/…`).
    #[arg(long)]
    ocsf: bool,
}

#[derive(clap::Args)]
struct FlowsArgs {
    /// The flow directory (`cluster=…/dt=…/hour=…/*.parquet` under it).
    #[arg(long)]
    dir: PathBuf,
    /// Only denied flows (`action = 'REJECT'`), with the loss records.
    #[arg(long)]
    denied: bool,
    /// Only records that end at or after this time: `2026-11-25T06:00:00Z`, Unix seconds, or
    /// an age such as `15m`, `2h`, `1d`.
    #[arg(long)]
    since: Option<String>,
    /// `table`: aligned columns; `json`: one record per line.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(clap::Args)]
struct QuarantineArgs {
    /// The pod, as NAMESPACE/POD.
    pod: tollgate_incident::PodRef,
    /// Why (required): goes into the policy's annotations and the isolation record.
    #[arg(long, value_parser = tollgate_incident::quarantine::parse_reason)]
    reason: String,
    /// Lift the quarantine instead: remove the label, delete the policy. Legal holds stay
    /// (`evidence release-hold` lifts them).
    #[arg(long)]
    release: bool,
    /// On a bucket with Object Lock, a legal hold goes on every flow-log object and digest of
    /// the cluster from this long before the act (`24h`, `90m`, seconds).
    #[arg(long, default_value = "24h")]
    hold_since: String,
    /// The cluster's name in the flow log (the collectors' `cluster` setting).
    #[arg(long, value_parser = tollgate_incident::record::parse_cluster)]
    cluster: String,
    /// The flow log: `s3://bucket/prefix` (the collectors' sink) or a local directory.
    #[arg(long)]
    flow_log: tollgate_incident::location::FlowLogLocation,
    #[command(flatten)]
    s3: S3Args,
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct EvidenceArgs {
    #[command(subcommand)]
    verify: Option<EvidenceCommand>,
    /// The pod, as NAMESPACE/POD.
    #[arg(required = true)]
    pod: Option<tollgate_incident::PodRef>,
    /// Window start: `2026-11-25T06:00:00Z`, Unix seconds, or an age such as `2h`.
    #[arg(long, required = true)]
    from: Option<String>,
    /// Window end (exclusive), as --from; now when absent.
    #[arg(long)]
    to: Option<String>,
    /// The bundle's directory (created; must be empty).
    #[arg(long, required = true)]
    out: Option<PathBuf>,
    /// The flow log: `s3://bucket/prefix` or a local directory.
    #[arg(long, required = true)]
    flow_log: Option<tollgate_incident::location::FlowLogLocation>,
    /// Only this cluster's records (every cluster's in the flow log otherwise).
    #[arg(long)]
    cluster: Option<String>,
    /// Also read the pod's namespace's NetworkPolicies from the Kubernetes API now
    /// (kubeconfig or in-cluster) into `policies.json`.
    #[arg(long)]
    policies_from_cluster: bool,
    /// Accept a bundle without a single record of the pod (exit 0): without it, an empty
    /// bundle is reported as an error, since it is no proof that the pod had no traffic.
    #[arg(long)]
    allow_empty: bool,
    /// Find the pod's objects through Athena, in this workgroup: one query over the flow
    /// table names the objects that hold its records, and only those are read from S3 (with
    /// their ETags, as without it). Needs an `s3://` --flow-log that the table points to.
    #[arg(long)]
    athena_workgroup: Option<String>,
    /// The Glue database of the flow table (with --athena-workgroup).
    #[arg(
        long,
        default_value = tollgate_incident::athena::DEFAULT_DATABASE,
        requires = "athena_workgroup"
    )]
    athena_database: String,
    /// The flow table (with --athena-workgroup).
    #[arg(
        long,
        default_value = tollgate_incident::athena::DEFAULT_TABLE,
        requires = "athena_workgroup"
    )]
    athena_table: String,
    /// An Athena endpoint instead of the region's, e.g. a VPC endpoint (with
    /// --athena-workgroup; the region is --region's).
    #[arg(long, requires = "athena_workgroup")]
    athena_endpoint_url: Option<String>,
    #[command(flatten)]
    s3: S3Args,
}

#[derive(Subcommand)]
enum EvidenceCommand {
    /// Re-check a bundle: every file's size and SHA-256 against its manifest, no file missing
    /// or added. Exit code 1 on any difference.
    Verify {
        /// The bundle's directory.
        dir: PathBuf,
        /// The manifest's own SHA-256, as printed when the bundle was written.
        #[arg(long)]
        manifest_sha256: Option<String>,
        /// A trusted public key of the nodes' digests (PEM, as `digest public-key` prints
        /// it); repeatable. Without one, each digest is checked against the key it carries.
        #[arg(long)]
        public_key: Vec<PathBuf>,
    },
    /// Lift the legal holds that `quarantine` or `evidence` placed on a window's flow-log
    /// objects and digests; the release is logged, with who and why, in the flow log itself
    /// (`_legal-holds/release-….json`).
    ReleaseHold {
        /// The flow log: `s3://bucket/prefix`.
        #[arg(long)]
        flow_log: tollgate_incident::location::FlowLogLocation,
        /// The cluster's name in the flow log.
        #[arg(long, value_parser = tollgate_incident::record::parse_cluster)]
        cluster: String,
        /// Window start, as `evidence --from`.
        #[arg(long)]
        from: String,
        /// Window end (exclusive), as `--from`.
        #[arg(long)]
        to: String,
        /// Why (required): goes into the release's log.
        #[arg(long, value_parser = tollgate_incident::quarantine::parse_reason)]
        reason: String,
        #[command(flatten)]
        s3: S3Args,
    },
}

#[derive(Subcommand)]
enum DigestCommand {
    /// Check every digest's signature, the chains' continuity, each listed object's presence
    /// and SHA-256, objects in no digest, and gaps in each node's sequence numbers. Exit code
    /// 0 only when everything holds; 1 with one line per problem.
    Verify {
        /// The flow log: `s3://bucket/prefix` or a local directory.
        #[arg(long)]
        flow_log: tollgate_incident::location::FlowLogLocation,
        /// Window start, as `evidence --from`; the whole flow log when absent.
        #[arg(long)]
        from: Option<String>,
        /// Window end (exclusive), as `--from`.
        #[arg(long)]
        to: Option<String>,
        /// A trusted public key (PEM, as `digest public-key` prints it); repeatable. Without
        /// one (or --kms-key), each node's chain is checked against the key of its first
        /// digest.
        #[arg(long)]
        public_key: Vec<PathBuf>,
        /// A trusted KMS signing key (its ARN), whose public key is read with
        /// `GetPublicKey` in --region; repeatable.
        #[arg(long)]
        kms_key: Vec<String>,
        /// A KMS endpoint instead of the region's (with --kms-key).
        #[arg(long)]
        kms_endpoint_url: Option<String>,
        /// Where the collectors' Amazon Security Lake objects (`ext/…`) are, when not in the
        /// flow log: `s3://<Security Lake bucket>` or a local directory.
        #[arg(long)]
        security_lake: Option<tollgate_incident::location::FlowLogLocation>,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Print the public key (PEM) of a local signing key file, or of a KMS signing key.
    PublicKey {
        /// The key file (the collector's `digest.signing.key_file`).
        #[arg(long, required_unless_present = "kms_key", conflicts_with = "kms_key")]
        key_file: Option<PathBuf>,
        /// A KMS signing key (its ARN), read with `GetPublicKey` in --region.
        #[arg(long, requires = "region")]
        kms_key: Option<String>,
        /// The KMS key's region.
        #[arg(long)]
        region: Option<String>,
        /// A KMS endpoint instead of the region's.
        #[arg(long)]
        kms_endpoint_url: Option<String>,
    },
    /// Write a new Ed25519 signing key (PKCS#8 PEM, mode 0600) and print its public key.
    Keygen {
        /// Where (refused when the file exists).
        #[arg(long)]
        key_file: PathBuf,
    },
}

/// How to reach an S3 flow log.
#[derive(clap::Args)]
struct S3Args {
    /// The bucket's region; `AWS_REGION` or `AWS_DEFAULT_REGION` when absent.
    #[arg(long)]
    region: Option<String>,
    /// An S3-compatible endpoint instead of AWS.
    #[arg(long)]
    endpoint_url: Option<String>,
    /// Path-style addressing (most S3-compatible servers).
    #[arg(long)]
    path_style: bool,
}

impl S3Args {
    fn options(
        &self,
        location: &tollgate_incident::location::FlowLogLocation,
    ) -> anyhow::Result<tollgate_incident::location::S3Options> {
        let region = self
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok());
        let region = match (location, region) {
            (_, Some(region)) => region,
            (tollgate_incident::location::FlowLogLocation::Local(_), None) => String::new(),
            (_, None) => anyhow::bail!("--region: needed for {location} (or set AWS_REGION)"),
        };
        Ok(tollgate_incident::location::S3Options {
            region,
            endpoint_url: self.endpoint_url.clone(),
            path_style: self.path_style,
        })
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum AttachArg {
    Auto,
    Clsact,
}

#[derive(Clone, Copy, ValueEnum)]
enum IpFamilyArg {
    Ipv4,
    Ipv6,
}

#[derive(Subcommand)]
enum BenchTarget {
    /// Kernel-reported ns per packet under BPF_PROG_TEST_RUN (needs root).
    Datapath {
        /// Packets per case.
        #[arg(long, default_value_t = 100_000)]
        packets: u32,
    },
    /// iperf3 between two pods wired like the VPC CNI, with the probe on their veths against
    /// without it and with an empty program: TCP and 64-byte UDP (needs root and iperf3).
    Veth {
        /// CIDR rules in the server's policy; the last allows the client.
        #[arg(long, default_value_t = 1_000)]
        rules: usize,
        /// Seconds of each iperf3 run.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Trials, each running every case unfiltered, then filtered.
        #[arg(long, default_value_t = 3)]
        trials: u32,
    },
    /// Collector events per second per core, ring buffer to Parquet bytes, against the bare
    /// arrow-rs writer (needs root).
    Collector {
        /// Events to collect (each a distinct denied flow).
        #[arg(long, default_value_t = 2_000_000)]
        events: u64,
    },
    /// Compile time (first pass and after one change), map entries and peak RSS of generated
    /// clusters, one fresh process per case (no root needed).
    Scale(ScaleArgs),
    /// What a node agent holds after its first pass on a generated cluster, and how long
    /// that pass takes (no root needed).
    Agent {
        /// Pods in the cluster (`100k`).
        #[arg(long, value_parser = scale::parse_count, default_value = "100k")]
        pods: usize,
        /// NetworkPolicies; by default as `bench scale` picks them for the size.
        #[arg(long, value_parser = scale::parse_count)]
        policies: Option<usize>,
        /// Pods per node; the node under test holds that many.
        #[arg(long, value_parser = scale::parse_count, default_value = "250")]
        node_pods: usize,
    },
}

#[derive(clap::Args)]
struct ScaleArgs {
    /// Cluster sizes in pods, comma-separated (`2500`, `10k`, `1m`).
    #[arg(long, value_delimiter = ',', value_parser = scale::parse_count,
          default_values = ["1k", "10k", "50k", "100k"])]
    sizes: Vec<usize>,
    /// NetworkPolicy counts, comma-separated: every size runs with each. Without it: 100 for
    /// up to 1k pods, 1,000 up to 10k, 5,000 beyond.
    #[arg(long, value_delimiter = ',', value_parser = scale::parse_count)]
    policies: Vec<usize>,
    /// Pods per node, comma-separated: every size runs with each; the node under test holds
    /// that many.
    #[arg(long, value_delimiter = ',', value_parser = scale::parse_count,
          default_values = ["110", "250"])]
    node_pods: Vec<usize>,
    /// One JSON object per case and line instead of the table.
    #[arg(long)]
    json: bool,
    /// Measure one case of this many pods in this process (one --policies, one --node-pods)
    /// and print it as one JSON line: what the command runs per case.
    #[arg(long, hide = true, value_parser = scale::parse_count)]
    one: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum)]
enum DatapathKind {
    Model,
    Bpf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Json,
    Table,
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    // The agent sets up its own telemetry from its settings file.
    if !matches!(cli.command, Command::Agent(_)) {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            note(&report(&error));
            ExitCode::from(2)
        }
    }
}

/// Writes `text` to standard output. A reader that went away (EPIPE: Rust ignores SIGPIPE, so
/// `tollgate flows … | head -1` gets the error instead of the signal) ends the output there,
/// quietly; the command still exits with the code its own work decided (0 when all went
/// well), as if the reader had read everything.
fn write_out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(error).context("writing to standard output")
        }
        _ => Ok(()),
    }
}

/// Writes `text` and a newline to standard error. A closed standard error (`2>&1 | head`) is
/// left as [`write_out`] leaves a closed standard output: nothing is left to tell.
fn note(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// `error` as printed: the error, then each cause on a line of its own, each once. tollgate's
/// errors never write their cause into their own message; a cause whose text an earlier line
/// already holds is still left out, for the errors of other crates that do.
fn report(error: &anyhow::Error) -> String {
    let mut lines = causes::chain(error.as_ref()).into_iter();
    let mut report = format!("error: {}", lines.next().unwrap_or_default());
    for cause in lines {
        report.push_str("\n  because: ");
        report.push_str(&cause);
    }
    report
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Agent(args) => agent_command(&args),
        Command::Verify(args) => verify_command(&args),
        Command::Lab(args) => lab_command(&args),
        Command::Flows(args) => flows_command(&args),
        Command::Quarantine(args) => quarantine_command(&args),
        Command::Evidence(args) => evidence_command(&args),
        Command::Digest { command } => digest_command(&command),
        Command::Bench {
            target: BenchTarget::Datapath { packets },
        } => {
            let results = bench::datapath(packets)?;
            write_out(&bench::render(&results))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            target:
                BenchTarget::Veth {
                    rules,
                    seconds,
                    trials,
                },
        } => {
            let options = tollgate_lab::bench::VethOptions {
                rules,
                seconds,
                trials,
            };
            let results = tollgate_lab::bench::veth(&options)?;
            write_out(&tollgate_lab::bench::render(&options, &results))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            target: BenchTarget::Collector { events },
        } => {
            let result = tollgate_collector::bench::collector(events)?;
            write_out(&tollgate_collector::bench::render(&result))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            target: BenchTarget::Scale(args),
        } => bench_scale_command(&args),
        Command::Bench {
            target:
                BenchTarget::Agent {
                    pods,
                    policies,
                    node_pods,
                },
        } => bench_agent_command(scale::Shape {
            pods,
            policies: policies.unwrap_or_else(|| scale::default_policies(pods)),
            node_pods,
        }),
    }
}

/// `bench agent`: this process writes the generated cluster's lists into a temporary
/// directory, and a child (this program again, told the directory by [`BENCH_LISTING`])
/// measures an agent reading them, with an allocator that gives freed memory back at once
/// (`MIMALLOC_PURGE_DELAY=0`, read when a process starts), so that what the case dropped is
/// not counted as held and the generated objects are not in the process measured.
fn bench_agent_command(shape: scale::Shape) -> anyhow::Result<ExitCode> {
    if let Some(dir) = std::env::var_os(BENCH_LISTING) {
        let case =
            tollgate_agent::bench::agent(shape, Path::new(&dir)).map_err(anyhow::Error::msg)?;
        write_out(&tollgate_agent::bench::render(&case))?;
        return Ok(ExitCode::SUCCESS);
    }
    let dir = std::env::temp_dir().join(format!("tollgate-bench-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let measured = tollgate_agent::bench::write_listing(shape, &dir)
        .map_err(anyhow::Error::msg)
        .and_then(|()| {
            let status = std::process::Command::new(std::env::current_exe()?)
                .args(std::env::args_os().skip(1))
                .env(PURGE_DELAY, "0")
                .env(BENCH_LISTING, &dir)
                .status()?;
            Ok(status.success())
        });
    let _ = std::fs::remove_dir_all(&dir);
    Ok(match measured? {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    })
}

/// Where `bench agent`'s child finds the lists to read.
const BENCH_LISTING: &str = "TOLLGATE_BENCH_LISTING";

/// mimalloc's setting of how long freed memory waits before it goes back to the system, ms.
const PURGE_DELAY: &str = "MIMALLOC_PURGE_DELAY";

/// `bench scale`: each case in a child process (this program with `--one`), rows printed as
/// they come; exit 1 when a case failed.
fn bench_scale_command(args: &ScaleArgs) -> anyhow::Result<ExitCode> {
    let policy_counts = |pods| match args.policies.as_slice() {
        [] => vec![scale::default_policies(pods)],
        counts => counts.to_vec(),
    };
    if let Some(pods) = args.one {
        let (&[policies], &[node_pods]) =
            (policy_counts(pods).as_slice(), args.node_pods.as_slice())
        else {
            anyhow::bail!("--one takes exactly one --policies and one --node-pods");
        };
        let shape = scale::Shape {
            pods,
            policies,
            node_pods,
        };
        let result = scale::measure(shape).map_err(anyhow::Error::msg)?;
        write_out(&format!("{}\n", serde_json::to_string(&result)?))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut shapes = Vec::new();
    for &pods in &args.sizes {
        for &node_pods in &args.node_pods {
            for policies in policy_counts(pods) {
                let shape = scale::Shape {
                    pods,
                    policies,
                    node_pods,
                };
                shape.check().map_err(anyhow::Error::msg)?;
                shapes.push(shape);
            }
        }
    }
    if !args.json {
        write_out(&scale::render_header())?;
    }
    let mut failed = 0;
    let mut output = Ok(());
    scale::run_children(
        &shapes,
        |shape| {
            [
                "bench",
                "scale",
                "--one",
                &shape.pods.to_string(),
                "--policies",
                &shape.policies.to_string(),
                "--node-pods",
                &shape.node_pods.to_string(),
            ]
            .map(str::to_owned)
            .to_vec()
        },
        |result| match result {
            Ok(result) if output.is_ok() => {
                output = if args.json {
                    serde_json::to_string(&result)
                        .map_err(anyhow::Error::from)
                        .and_then(|line| write_out(&format!("{line}\n")))
                } else {
                    write_out(&scale::render_row(&result))
                };
            }
            Ok(_) => {}
            Err(error) => {
                failed += 1;
                note(&format!("bench scale: {error}"));
            }
        },
    );
    output?;
    if !args.json {
        write_out(&scale::render_footer())?;
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The node agent until SIGTERM or SIGINT; or, with `--uninstall`, removal of its pins.
fn agent_command(args: &AgentArgs) -> anyhow::Result<ExitCode> {
    use tollgate_agent::{config::AgentConfig, daemon, pins, source::KubeSource, telemetry};
    let node = std::env::var("TOLLGATE_NODE").ok();
    let config = AgentConfig::load(&args.config, node)?;
    let (telemetry, subscriber) =
        telemetry::Telemetry::subscriber(config.agent.log_format, &config.agent.otlp_endpoint)?;
    tracing::subscriber::set_global_default(subscriber)
        .context("installing the tracing subscriber")?;
    if args.uninstall {
        let uninstalled = pins::uninstall(&config.agent.bpffs)?;
        tracing::info!(
            root = %config.agent.bpffs.display(),
            veths = uninstalled.veths.len(),
            removed_root = uninstalled.removed_root,
            "uninstalled"
        );
        telemetry.shutdown();
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the API server (in-cluster or kubeconfig)")?;
        let source = KubeSource::start(client);
        daemon::run_agent(config, source, shutdown_signal()?).await?;
        anyhow::Ok(())
    });
    drop(runtime);
    telemetry.shutdown();
    result.map(|()| ExitCode::SUCCESS)
}

/// Completes on the first SIGTERM (the kubelet stopping the pod) or SIGINT.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    Ok(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
    })
}

/// Exit code 0 only when all input was valid; 1 when some was not (the valid part was still
/// evaluated); 2 on a fatal error.
fn verify_command(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let read = |path: &PathBuf| {
        verify::SourceText::read(path).with_context(|| format!("reading {}", path.display()))
    };
    let input = verify::VerifyInput {
        manifests: args
            .manifests
            .iter()
            .map(read)
            .collect::<anyhow::Result<_>>()?,
        probes: read(&args.probes)?,
    };
    let mut datapath: Box<dyn Datapath> = match args.datapath {
        DatapathKind::Model => Box::new(ModelDatapath::new()),
        DatapathKind::Bpf => Box::new(BpfDatapath::new()?),
    };
    let verification = verify::verify(&input, datapath.as_mut())?;
    for error in &verification.errors {
        note(&format!("error: {error}"));
    }
    write_out(&match args.output {
        Output::Json => verify::render_json(&verification.results),
        Output::Table => verify::render_table(&verification.results),
    })?;
    Ok(if verification.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn flows_command(args: &FlowsArgs) -> anyhow::Result<ExitCode> {
    use tollgate_collector::{clock, readback};
    let now_s = clock::unix_now_ns() / clock::NS_PER_S;
    let since_s = match &args.since {
        Some(text) => Some(readback::parse_since(text, now_s).with_context(|| {
            format!(
                "--since {text:?}: expected YYYY-MM-DDTHH:MM:SSZ, Unix seconds, or an age like \
                 15m, 2h, 1d"
            )
        })?),
        None => None,
    };
    let filter = readback::Filter {
        denied: args.denied,
        since_s,
    };
    let (text, skipped) = match args.output {
        Output::Table => {
            let log = readback::read_flow_log(&args.dir, &filter)?;
            (readback::render_table(&log.records), log.skipped)
        }
        Output::Json => {
            let log = readback::read_flow_log_columns(&args.dir, &filter)?;
            let mut text = String::new();
            for record in &log.records {
                text.push_str(&serde_json::to_string(record)?);
                text.push('\n');
            }
            (text, log.skipped)
        }
    };
    write_out(&text)?;
    if skipped.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for error in &skipped {
        note(&format!(
            "skipped {}: {}",
            error.path().display(),
            error.reason()
        ));
    }
    note(&format!(
        "error: {} file(s) of the flow log could not be read; their records are not above",
        skipped.len()
    ));
    Ok(ExitCode::from(1))
}

/// Exit code 0 only when every outcome matched the seed.
fn lab_command(args: &LabArgs) -> anyhow::Result<ExitCode> {
    let options = tollgate_lab::LabOptions {
        output: match args.output {
            Output::Json => tollgate_lab::OutputFormat::Json,
            Output::Table => tollgate_lab::OutputFormat::Table,
        },
        attach: match args.attach {
            AttachArg::Auto => tollgate_lab::Attach::Auto,
            AttachArg::Clsact => tollgate_lab::Attach::Clsact,
        },
        out: args.out.clone(),
        quarantine: args.quarantine,
        ip_family: match args.ip_family {
            IpFamilyArg::Ipv4 => tollgate_lab::IpFamily::V4,
            IpFamilyArg::Ipv6 => tollgate_lab::IpFamily::V6,
        },
        sgp: args.sgp,
        ocsf: args.ocsf,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = runtime.block_on(tollgate_lab::run(&options))?;
    write_out(&match args.output {
        Output::Json => report.render_json(),
        Output::Table => report.render_table(),
    })?;
    Ok(if report.all_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Exit code 0: done and recorded; 1: done, but the isolation record is not in the flow log
/// yet (it is kept locally, and the command says where); 2: refused or failed, nothing
/// changed (or what is left is named).
fn quarantine_command(args: &QuarantineArgs) -> anyhow::Result<ExitCode> {
    use tollgate_collector::clock::{NS_PER_S, rfc3339_utc, unix_now_ns};
    use tollgate_collector::readback::parse_since;
    use tollgate_incident::{
        cluster::KubeCluster, legal_hold, legal_hold::Target, quarantine, record, source::Reader,
    };
    let s3 = args.s3.options(&args.flow_log)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the API server (in-cluster or kubeconfig)")?;
        let cluster = KubeCluster::new(client);
        let now = || unix_now_ns() / NS_PER_S;
        let mut outcome = if args.release {
            quarantine::release(&cluster, &args.pod, &args.reason, now).await?
        } else {
            quarantine::quarantine(&cluster, &args.pod, &args.reason, now).await?
        };
        let done = if args.release {
            "released"
        } else {
            "quarantined"
        };
        let reader = Reader::new(&args.flow_log, &s3).await;
        let holds = if args.release {
            None
        } else {
            let from_s = parse_since(&args.hold_since, outcome.at_s).with_context(|| {
                format!(
                    "--hold-since {:?}: expected an age like 24h, or a time",
                    args.hold_since
                )
            })?;
            Some(legal_hold::at_quarantine(&reader, &args.cluster, &mut outcome, from_s).await)
        };
        let isolation = &outcome.isolation;
        write_out(&format!(
            "{done} {}: {}, label {}, by {} at {}\n",
            args.pod,
            isolation.policy_label(),
            quarantine::LABEL,
            isolation.actor,
            rfc3339_utc(outcome.at_s)
        ))?;
        let staging = std::env::temp_dir().join("tollgate-isolation-records");
        if let Some(holds) = &holds {
            write_out(&format!("legal holds: {}\n", holds.summary()["status"]))?;
        }
        match record::deliver(&args.cluster, &outcome, &args.flow_log, &s3, &staging).await {
            Ok(location) => {
                write_out(&format!("isolation record: {location}\n"))?;
                let Some(holds) = holds else {
                    return Ok(ExitCode::SUCCESS);
                };
                let record_hold = if matches!(holds.status, legal_hold::HoldStatus::Placed) {
                    let record = Target {
                        key: record::key(&args.cluster, &outcome),
                        version_id: None,
                    };
                    legal_hold::Holds::place(&reader, &[record]).await.failed
                } else {
                    Vec::new()
                };
                match &holds.status {
                    legal_hold::HoldStatus::Unavailable(why) => {
                        note(&format!("note: no legal hold placed: {why}"));
                    }
                    legal_hold::HoldStatus::Placed => write_out(&format!(
                        "legal hold on {} flow-log objects and digests, and on the record\n",
                        holds.held.len()
                    ))?,
                }
                let failed: Vec<_> = holds.failed.iter().chain(&record_hold).collect();
                if failed.is_empty() {
                    return Ok(ExitCode::SUCCESS);
                }
                for (key, why) in failed {
                    note(&format!("error: no legal hold on {key}: {why}"));
                }
                Ok(ExitCode::from(1))
            }
            Err(error) => {
                note(&format!(
                    "error: the pod IS {done}, but its isolation record is not in the flow log: \
                     {error}\nThe record is kept in {} as {}; copy it there.",
                    staging.display(),
                    record::key(&args.cluster, &outcome)
                ));
                Ok(ExitCode::from(1))
            }
        }
    })
}

/// Exit code 0: bundle written (or verified intact); 1: `verify` found a difference, or the
/// bundle was written without some flow-log files (unreadable) or without any record of the
/// pod (unless `--allow-empty`); 2: error.
fn evidence_command(args: &EvidenceArgs) -> anyhow::Result<ExitCode> {
    use tollgate_collector::{
        clock::{NS_PER_S, unix_now_ns},
        readback::parse_since,
    };
    use tollgate_incident::evidence;
    if let Some(EvidenceCommand::ReleaseHold {
        flow_log,
        cluster,
        from,
        to,
        reason,
        s3,
    }) = &args.verify
    {
        return release_hold_command(flow_log, cluster, (from, to), reason, s3);
    }
    if let Some(EvidenceCommand::Verify {
        dir,
        manifest_sha256,
        public_key,
    }) = &args.verify
    {
        let trusted = read_public_keys(public_key)?;
        let manifest = match evidence::verify(dir, manifest_sha256.as_deref()) {
            Ok(manifest) => manifest,
            Err(tampered) => {
                note(&tampered.to_string());
                return Ok(ExitCode::from(1));
            }
        };
        let provenance = match tollgate_incident::provenance::check(dir, &trusted) {
            Ok(provenance) => provenance,
            Err(problems) => {
                note(&format!(
                    "evidence bundle {} FAILED verification against its digests ({} \
                     problems):\n  {}",
                    dir.display(),
                    problems.len(),
                    problems.join("\n  ")
                ));
                return Ok(ExitCode::from(1));
            }
        };
        write_out(&format!(
            "evidence bundle {} is intact: {} files as listed in its manifest ({}, {} to {}); \
             {} of its {} source objects are listed with their SHA-256 in a signed digest\n",
            dir.display(),
            manifest.files.len(),
            format_args!("{}/{}", manifest.pod.namespace, manifest.pod.name),
            manifest.window.from_utc,
            manifest.window.to_utc,
            provenance.proven,
            provenance.proven + provenance.uncovered
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(pod), Some(from), Some(out), Some(flow_log)) =
        (&args.pod, &args.from, &args.out, &args.flow_log)
    else {
        anyhow::bail!("evidence: NAMESPACE/POD, --from, --out and --flow-log are required");
    };
    let now_s = unix_now_ns() / NS_PER_S;
    let time = |flag: &str, text: &str| {
        parse_since(text, now_s).with_context(|| {
            format!(
                "{flag} {text:?}: expected YYYY-MM-DDTHH:MM:SSZ, Unix seconds, or an age like 2h"
            )
        })
    };
    let request = evidence::Request {
        pod: pod.clone(),
        cluster: args.cluster.clone(),
        from_s: time("--from", from)?,
        to_s: match &args.to {
            Some(to) => time("--to", to)?,
            None => now_s + 1,
        },
        s3: args.s3.options(flow_log)?,
        location: flow_log.clone(),
        out: out.clone(),
        athena: args.athena_workgroup.as_ref().map(|workgroup| {
            tollgate_incident::athena::AthenaOptions {
                database: args.athena_database.clone(),
                table: args.athena_table.clone(),
                endpoint_url: args.athena_endpoint_url.clone(),
                ..tollgate_incident::athena::AthenaOptions::new(workgroup)
            }
        }),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let bundle = runtime.block_on(async {
        let mut policies = Vec::new();
        if args.policies_from_cluster {
            policies.push(cluster_policies(&pod.namespace, now_s).await?);
        }
        anyhow::Ok(evidence::collect(&request, policies, now_s).await?)
    })?;
    let counts = bundle.manifest.counts;
    write_out(&format!(
        "{}\nevidence bundle {}: {} flow records, {} isolation records, {} loss records, from {} \
         flow-log files\nmanifest SHA-256: {} (note it: `tollgate evidence verify {} \
         --manifest-sha256 …` proves the manifest unchanged too)\n",
        bundle.timeline,
        bundle.dir.display(),
        counts.flows,
        counts.isolations,
        counts.losses,
        counts.sources,
        bundle.manifest_sha256,
        bundle.dir.display()
    ))?;
    if bundle.provenance.uncovered > 0 {
        note(&format!(
            "note: {} of {} source objects are in no signed digest (isolation records, or a \
             flow log older than the digests): the bundle cannot prove where those came from",
            bundle.provenance.uncovered,
            bundle.provenance.proven + bundle.provenance.uncovered
        ));
    }
    let shortfalls = bundle.shortfalls(args.allow_empty);
    for shortfall in &shortfalls {
        note(&format!("error: {shortfall}"));
    }
    Ok(if shortfalls.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Exit code 0: the flow log holds up against its digests (or the key was printed); 1: a
/// problem, one line each; 2: error.
fn digest_command(command: &DigestCommand) -> anyhow::Result<ExitCode> {
    use tollgate_collector::sign;
    match command {
        DigestCommand::PublicKey {
            key_file,
            kms_key,
            region,
            kms_endpoint_url,
        } => {
            let der = match (key_file, kms_key, region) {
                (Some(key_file), _, _) => {
                    anyhow::ensure!(
                        key_file.is_file(),
                        "{}: no such key file",
                        key_file.display()
                    );
                    sign::Signer::local(key_file)?.public_key()
                }
                (None, Some(key), Some(region)) => {
                    let runtime =
                        tokio::runtime::Runtime::new().context("starting the async runtime")?;
                    runtime.block_on(async {
                        let client =
                            tollgate_collector::kms::client(region, kms_endpoint_url.as_deref())
                                .await;
                        tollgate_collector::kms::public_key(&client, key).await
                    })?
                }
                _ => anyhow::bail!("public-key: --key-file, or --kms-key with --region"),
            };
            write_out(&sign::public_key_pem(&der))?;
            Ok(ExitCode::SUCCESS)
        }
        DigestCommand::Keygen { key_file } => {
            sign::generate_key(key_file)
                .with_context(|| format!("writing a key to {}", key_file.display()))?;
            let signer = sign::Signer::local(key_file)?;
            write_out(&sign::public_key_pem(&signer.public_key()))?;
            Ok(ExitCode::SUCCESS)
        }
        DigestCommand::Verify {
            flow_log,
            from,
            to,
            public_key,
            kms_key,
            kms_endpoint_url,
            security_lake,
            s3: s3_args,
        } => {
            use tollgate_collector::{
                clock::{NS_PER_S, unix_now_ns},
                readback::parse_since,
            };
            use tollgate_incident::{digest_verify, source::Reader};
            let now_s = unix_now_ns() / NS_PER_S;
            let time = |flag: &str, text: &Option<String>| {
                text.as_ref()
                    .map(|text| {
                        parse_since(text, now_s).with_context(|| {
                            format!(
                                "{flag} {text:?}: expected YYYY-MM-DDTHH:MM:SSZ, Unix seconds, \
                                 or an age like 2h"
                            )
                        })
                    })
                    .transpose()
            };
            let mut trusted = read_public_keys(public_key)?;
            let s3 = s3_args.options(flow_log)?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            if !kms_key.is_empty() {
                let region = s3.region.clone();
                anyhow::ensure!(
                    !region.is_empty(),
                    "--kms-key: needs --region (or AWS_REGION)"
                );
                runtime.block_on(async {
                    let client =
                        tollgate_collector::kms::client(&region, kms_endpoint_url.as_deref()).await;
                    for key in kms_key {
                        trusted.push(tollgate_collector::kms::public_key(&client, key).await?);
                    }
                    anyhow::Ok(())
                })?;
            }
            let request = digest_verify::Request {
                from_s: time("--from", from)?,
                to_s: time("--to", to)?,
                trusted,
            };
            let lake_s3 = security_lake
                .as_ref()
                .map(|location| s3_args.options(location))
                .transpose()?;
            let report = runtime.block_on(async {
                let reader = Reader::new(flow_log, &s3).await;
                let lake = match (security_lake.as_ref(), &lake_s3) {
                    (Some(location), Some(options)) => Some(Reader::new(location, options).await),
                    _ => None,
                };
                digest_verify::verify(&reader, lake.as_ref(), &request).await
            })?;
            for line in &report.notes {
                note(&format!("note: {line}"));
            }
            for line in &report.problems {
                write_out(&format!("{line}\n"))?;
            }
            if report.problems.is_empty() {
                write_out(&format!(
                    "flow log {flow_log} holds up: {} digests of {} nodes, {} objects, each \
                     present with its SHA-256, every chain unbroken, no gap\n",
                    report.digests, report.nodes, report.objects
                ))?;
                Ok(ExitCode::SUCCESS)
            } else {
                note(&format!(
                    "flow log {flow_log}: {} problems",
                    report.problems.len()
                ));
                Ok(ExitCode::from(1))
            }
        }
    }
}

/// `evidence release-hold`: exit code 0 when every hold of the window is lifted and the
/// release is logged in the flow log; 1 when some are not, or the log could not be written;
/// 2 on error.
fn release_hold_command(
    flow_log: &tollgate_incident::location::FlowLogLocation,
    cluster: &str,
    (from, to): (&str, &str),
    reason: &str,
    s3: &S3Args,
) -> anyhow::Result<ExitCode> {
    use tollgate_collector::{
        clock::{NS_PER_S, unix_now_ns},
        readback::parse_since,
    };
    use tollgate_incident::{legal_hold, source::Reader};
    let now_s = unix_now_ns() / NS_PER_S;
    let time = |flag: &str, text: &str| {
        parse_since(text, now_s).with_context(|| {
            format!("{flag} {text:?}: expected YYYY-MM-DDTHH:MM:SSZ, Unix seconds, or an age")
        })
    };
    let (from_s, to_s) = (time("--from", from)?, time("--to", to)?);
    let s3 = s3.options(flow_log)?;
    let actor = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let reader = Reader::new(flow_log, &s3).await;
        let targets = legal_hold::select(&reader, cluster, from_s, to_s).await?;
        let holds = legal_hold::Holds::release(&reader, &targets).await;
        if let legal_hold::HoldStatus::Unavailable(why) = &holds.status {
            anyhow::bail!("no legal hold to release: {why}");
        }
        let mut release = holds.summary();
        release["action"] = "release-hold".into();
        release["actor"] = actor.clone().into();
        release["reason"] = reason.into();
        release["at"] = now_s.into();
        release["window"] = serde_json::json!({ "cluster": cluster, "from": from_s, "to": to_s });
        tracing::warn!(
            actor,
            reason,
            released = holds.held.len(),
            "legal holds released"
        );
        write_out(&format!(
            "released the legal hold of {} objects of {cluster} from {from_s} to {to_s}\n",
            holds.held.len()
        ))?;
        let logged = legal_hold::log_release(flow_log, &s3, &release, now_s).await;
        match &logged {
            Ok(location) => write_out(&format!("release logged: {location}\n"))?,
            Err(error) => note(&format!("error: the release is not logged: {error}")),
        }
        for (key, why) in &holds.failed {
            note(&format!("error: the hold on {key} stays: {why}"));
        }
        Ok(if holds.failed.is_empty() && logged.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}

/// The DER of each `--public-key` PEM file.
fn read_public_keys(files: &[PathBuf]) -> anyhow::Result<Vec<Vec<u8>>> {
    files
        .iter()
        .map(|file| {
            let pem = std::fs::read_to_string(file)
                .with_context(|| format!("--public-key {}", file.display()))?;
            tollgate_collector::sign::parse_public_key_pem(&pem)
                .map_err(|e| anyhow::anyhow!("--public-key {}: {e}", file.display()))
        })
        .collect()
}

/// The NetworkPolicies of `namespace` now, from the API server.
async fn cluster_policies(
    namespace: &str,
    now_s: u64,
) -> anyhow::Result<tollgate_incident::evidence::PolicySnapshot> {
    use tollgate_incident::cluster::{Cluster as _, KubeCluster};
    let client = kube::Client::try_default()
        .await
        .context("--policies-from-cluster: connecting to the API server")?;
    let policies = KubeCluster::new(client)
        .policies(namespace)
        .await
        .context("--policies-from-cluster")?;
    Ok(tollgate_incident::evidence::PolicySnapshot {
        source: "cluster".to_owned(),
        at: now_s,
        policies: policies
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?,
    })
}
