//! The `tollgate` command: wiring of the library crates to a command line, nothing more.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tollgate_enforcer::{
    bench, bpf_datapath::BpfDatapath, decision::Datapath, model::ModelDatapath, verify,
};

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
    /// Measure the datapath or the collector.
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
    /// One probe per line: `FROM TO PORT/PROTOCOL`; FROM and TO are `namespace/pod` or an IP.
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

#[derive(Clone, Copy, ValueEnum)]
enum AttachArg {
    Auto,
    Clsact,
}

#[derive(Subcommand)]
enum BenchTarget {
    /// Kernel-reported ns per packet under BPF_PROG_TEST_RUN (needs root).
    Datapath {
        /// Packets per case.
        #[arg(long, default_value_t = 100_000)]
        packets: u32,
    },
    /// Collector events per second per core, ring buffer to Parquet bytes, against the bare
    /// arrow-rs writer (needs root).
    Collector {
        /// Events to collect (each a distinct denied flow).
        #[arg(long, default_value_t = 2_000_000)]
        events: u64,
    },
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
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Agent(args) => agent_command(&args),
        Command::Verify(args) => verify_command(&args),
        Command::Lab(args) => lab_command(&args),
        Command::Flows(args) => flows_command(&args),
        Command::Bench {
            target: BenchTarget::Datapath { packets },
        } => {
            let results = bench::datapath(packets)?;
            print!("{}", bench::render(&results));
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            target: BenchTarget::Collector { events },
        } => {
            let result = tollgate_collector::bench::collector(events)?;
            print!("{}", tollgate_collector::bench::render(&result));
            Ok(ExitCode::SUCCESS)
        }
    }
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
        eprintln!("error: {error}");
    }
    match args.output {
        Output::Json => print!("{}", verify::render_json(&verification.results)),
        Output::Table => print!("{}", verify::render_table(&verification.results)),
    }
    Ok(if verification.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn flows_command(args: &FlowsArgs) -> anyhow::Result<ExitCode> {
    use tollgate_collector::{clock, read};
    let now_s = clock::unix_now_ns() / clock::NS_PER_S;
    let since_s = match &args.since {
        Some(text) => Some(read::parse_since(text, now_s).with_context(|| {
            format!(
                "--since {text:?}: expected YYYY-MM-DDTHH:MM:SSZ, Unix seconds, or an age like \
                 15m, 2h, 1d"
            )
        })?),
        None => None,
    };
    let filter = read::Filter {
        denied: args.denied,
        since_s,
    };
    let records = read::read_dir(&args.dir, &filter)?;
    match args.output {
        Output::Table => print!("{}", read::render_table(&records)),
        Output::Json => {
            for record in &records {
                println!("{}", serde_json::to_string(record)?);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
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
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = runtime.block_on(tollgate_lab::run(&options))?;
    match args.output {
        Output::Json => print!("{}", report.render_json()),
        Output::Table => print!("{}", report.render_table()),
    }
    Ok(if report.all_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
