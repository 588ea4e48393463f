//! The NetworkPolicy conformance suite, table-driven from `tests/fixtures`.
//!
//! Each case file under `fixtures/upstream` (our translation of the Kubernetes network-policy
//! e2e tests), `fixtures/upstream-cnp` (our translation of SIG Network's ClusterNetworkPolicy
//! conformance tests, network-policy-api v0.2.0) and `fixtures/tollgate` (our own cases) is a
//! `VerifyCase` document followed by
//! Kubernetes objects. Data flows like this:
//! 1. The case's `base` chain (a cluster under `fixtures/clusters`, or another case) and then
//!    the case itself go through `verify::load_manifests` (later objects replace earlier ones,
//!    which is how a case relabels a pod or updates a policy) and the real compiler.
//! 2. The compile and manifest errors must be exactly the case's `errors` (object and field).
//! 3. Every reachability matrix (rows = from, columns = to; `.` allow, `X` deny, `A` allowed
//!    in audit mode only; self cells are loopback, always `.`) and every explicit probe is
//!    decided by the `ModelDatapath` and compared with the expectation; a mismatching matrix is
//!    printed as upstream prints it: expected, observed, and which cells differ.
//! 4. As root, the very same flows go through the real eBPF programs (`BpfDatapath`, under
//!    BPF_PROG_TEST_RUN), which must give the model's `FlowOutcome`s, hook by hook.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Deserialize;
use tollgate_enforcer::bpf_datapath::BpfDatapath;
use tollgate_enforcer::compile::Compiled;
use tollgate_enforcer::model::ModelDatapath;
use tollgate_enforcer::verify::{
    self, HookResult, Peer, ProbeResult, ProbeSpec, ProbeVerdict, Protocol, ResolvedProbe,
    SourceText,
};
use tollgate_test_support::privileged;

/// The first document of a case file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Header {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: CaseSpec,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseSpec {
    /// What the case shows.
    description: String,
    /// The upstream e2e test it translates, if any.
    #[serde(default)]
    upstream: Option<String>,
    /// File whose objects come first, relative to the case file.
    base: String,
    #[serde(default)]
    checks: Vec<Check>,
    /// `FROM TO PORT/PROTOCOL VERDICT [reason=R] [policy=NS/NAME] [rule=DIR[I]]`, the last
    /// three about the deciding decision, plus `egress=NS/NAME:DIR[I]` and
    /// `ingress=NS/NAME:DIR[I]`: the rule that let the packet through that hook. TO may be a
    /// Service (`service:NS/NAME` or its ClusterIP): every backend's flow must meet the
    /// expectation, or only `backend=NS/POD`'s when given.
    #[serde(default)]
    probes: Vec<String>,
    #[serde(default)]
    errors: Vec<ExpectedError>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Check {
    port: String,
    reachability: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedError {
    object: String,
    field: String,
}

/// What a matrix cell or probe expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Allow,
    Deny,
    Audit,
}

impl Mark {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "." | "allow" => Some(Self::Allow),
            "X" | "deny" => Some(Self::Deny),
            "A" | "audit" => Some(Self::Audit),
            _ => None,
        }
    }

    fn of(result: &ProbeResult) -> Self {
        match (result.verdict, result.audit) {
            (ProbeVerdict::Allow, false) => Self::Allow,
            (ProbeVerdict::Allow, true) => Self::Audit,
            (ProbeVerdict::Deny, _) => Self::Deny,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Self::Allow => ".",
            Self::Deny => "X",
            Self::Audit => "A",
        }
    }
}

/// A reachability matrix: rows (from) × columns (to).
struct Matrix {
    froms: Vec<String>,
    tos: Vec<String>,
    marks: Vec<Vec<Mark>>,
}

impl Matrix {
    fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header: Vec<&str> = lines
            .next()
            .ok_or("empty matrix")?
            .split_whitespace()
            .collect();
        let Some((&"-", tos)) = header.split_first() else {
            return Err("the header line must start with '-'".into());
        };
        let tos: Vec<String> = tos.iter().map(|s| s.to_string()).collect();
        let mut froms = Vec::new();
        let mut marks = Vec::new();
        for line in lines {
            let cells: Vec<&str> = line.split_whitespace().collect();
            let (from, row) = cells.split_first().ok_or("empty row")?;
            if row.len() != tos.len() {
                return Err(format!(
                    "row {from} has {} cells for {} columns",
                    row.len(),
                    tos.len()
                ));
            }
            let row = row
                .iter()
                .zip(&tos)
                .map(|(cell, to)| {
                    let mark = Mark::parse(cell).ok_or(format!("bad cell {cell:?}"))?;
                    if to == from && mark != Mark::Allow {
                        return Err(format!("self cell {from} must be '.' (loopback)"));
                    }
                    Ok(mark)
                })
                .collect::<Result<Vec<_>, String>>()?;
            froms.push(from.to_string());
            marks.push(row);
        }
        Ok(Self { froms, tos, marks })
    }

    /// Upstream's layout: a header of destinations, one row per source.
    fn print(&self, cell: impl Fn(usize, usize) -> &'static str) -> String {
        let width = self
            .froms
            .iter()
            .chain(&self.tos)
            .map(String::len)
            .max()
            .unwrap_or(1)
            + 1;
        let mut out = format!("{:width$}", "-");
        for to in &self.tos {
            let _ = write!(out, " {to:width$}");
        }
        out = out.trim_end().to_owned();
        for (i, from) in self.froms.iter().enumerate() {
            let mut line = format!("{from:width$}");
            for j in 0..self.tos.len() {
                let _ = write!(line, " {:width$}", cell(i, j));
            }
            let _ = write!(out, "\n{}", line.trim_end());
        }
        out
    }
}

/// A case after loading: what it decided on the model, kept for the BPF comparison.
struct Evaluated {
    name: String,
    compiled: Compiled,
    probes: Vec<ResolvedProbe>,
    model: Vec<ProbeResult>,
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The name a fixture file is known by in errors: its path under `fixtures`.
fn source_name(path: &Path) -> String {
    path.strip_prefix(fixtures_dir())
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// The case header of a file: its first document, when that is a `VerifyCase`.
fn header(text: &str) -> Result<Option<Header>, String> {
    let first = text.split("\n---\n").next().unwrap_or_default();
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(first).map_err(|e| e.to_string())?;
    if value.get("kind").and_then(|k| k.as_str()) != Some("VerifyCase") {
        return Ok(None);
    }
    let header: Header = serde_yaml_ng::from_value(value).map_err(|e| e.to_string())?;
    if header.api_version != "tollgate.io/v1alpha1" || header.kind != "VerifyCase" {
        return Err(format!("unexpected {}/{}", header.api_version, header.kind));
    }
    Ok(Some(header))
}

/// The manifest files of a case, base chain first.
fn sources(path: &Path) -> Result<Vec<SourceText>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut files = match header(&text).map_err(|e| format!("{}: {e}", path.display()))? {
        Some(header) => {
            let base = path
                .parent()
                .unwrap_or(Path::new("."))
                .join(&header.spec.base);
            sources(&base)?
        }
        None => Vec::new(),
    };
    files.push(SourceText::new(source_name(path), text));
    Ok(files)
}

fn case_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["upstream", "upstream-cnp", "tollgate"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(fixtures_dir().join(dir)).expect("fixture directory"))
        .map(|entry| entry.expect("fixture entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn parse_port(text: &str) -> Result<(u16, Protocol), String> {
    let (port, protocol) = text
        .split_once('/')
        .ok_or(format!("{text:?}: expected PORT/PROTO"))?;
    let port = port.parse().map_err(|_| format!("{text:?}: bad port"))?;
    let protocol = protocol.parse().map_err(|e| format!("{text:?}: {e}"))?;
    Ok((port, protocol))
}

fn peer(text: &str) -> Peer {
    Peer::parse(text).unwrap_or_else(|| panic!("{text:?} is not a peer"))
}

/// A readable line for one probe's answer.
fn describe(result: &ProbeResult) -> String {
    let mark = Mark::of(result);
    let by = match (&result.policy, &result.rule) {
        (Some(policy), Some(rule)) => format!(" by {policy} {rule}"),
        _ => String::new(),
    };
    format!(
        "{} -> {}{} {}/{}: {} ({}{by}) [{} -> {}]",
        result.from,
        result.to,
        result
            .backend
            .as_ref()
            .map_or(String::new(), |b| format!(" (backend {b})")),
        result.port,
        result.protocol,
        match mark {
            Mark::Allow => "allow",
            Mark::Deny => "deny",
            Mark::Audit => "allow (audit)",
        },
        result.reason,
        result.src,
        result.dst
    )
}

/// Loads, compiles and checks one case on the model; failures are appended to `failures`.
fn evaluate(path: &Path, failures: &mut Vec<String>) -> Option<Evaluated> {
    let name = source_name(path);
    let text = std::fs::read_to_string(path).expect("fixture readable");
    let header = match header(&text) {
        Ok(Some(header)) => header,
        Ok(None) => {
            failures.push(format!("{name}: the first document must be a VerifyCase"));
            return None;
        }
        Err(e) => {
            failures.push(format!("{name}: bad case header: {e}"));
            return None;
        }
    };
    let label = match &header.spec.upstream {
        Some(upstream) => format!("{name} (upstream: {upstream:?})"),
        None => name.clone(),
    };
    let mut fail = |message: String| failures.push(format!("{label}: {message}"));
    if header.metadata.name.is_empty() || header.spec.description.is_empty() {
        fail("a case needs a name and a description".into());
    }
    let files = match sources(path) {
        Ok(files) => files,
        Err(e) => {
            fail(e);
            return None;
        }
    };
    let (snapshot, mut errors) = verify::load_manifests(&files);
    let compiled = verify::compile_for_verify(&snapshot);
    errors.extend(compiled.errors.iter().cloned());

    let found: BTreeSet<ExpectedError> = errors
        .iter()
        .map(|e| ExpectedError {
            object: e.object.clone(),
            field: e.field.clone(),
        })
        .collect();
    let expected: BTreeSet<ExpectedError> = header.spec.errors.iter().cloned().collect();
    if found != expected || errors.len() != expected.len() {
        let listed: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        fail(format!(
            "input errors differ.\nexpected (object, field): {expected:?}\nfound:\n{}",
            listed.join("\n")
        ));
    }

    let mut specs = Vec::new();
    let mut explicit = Vec::new();
    let mut expectations = Vec::new();
    let mut matrices = Vec::new();
    for (index, check) in header.spec.checks.iter().enumerate() {
        let origin = format!("{name} checks[{index}]");
        let (port, protocol) = match parse_port(&check.port) {
            Ok(parsed) => parsed,
            Err(e) => {
                fail(format!("checks[{index}].port: {e}"));
                continue;
            }
        };
        let matrix = match Matrix::parse(&check.reachability) {
            Ok(matrix) => matrix,
            Err(e) => {
                fail(format!("checks[{index}].reachability: {e}"));
                continue;
            }
        };
        let first = specs.len();
        for from in &matrix.froms {
            for to in &matrix.tos {
                specs.push(ProbeSpec {
                    origin: origin.clone(),
                    from: peer(from),
                    to: peer(to),
                    port,
                    protocol,
                });
            }
        }
        matrices.push((index, check.port.clone(), matrix, first));
    }
    for (index, line) in header.spec.probes.iter().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 4 {
            fail(format!(
                "probes[{index}]: expected FROM TO PORT/PROTO VERDICT ...: {line:?}"
            ));
            continue;
        }
        let (parsed, parse_errors) =
            verify::parse_probes(&fields[..3].join(" "), &format!("{name} probes[{index}]"));
        let (Some(spec), true) = (parsed.into_iter().next(), parse_errors.is_empty()) else {
            fail(format!("probes[{index}]: {parse_errors:?}"));
            continue;
        };
        let Some(mark) = Mark::parse(fields[3]) else {
            fail(format!("probes[{index}]: bad verdict {:?}", fields[3]));
            continue;
        };
        let mut wanted = Vec::new();
        for extra in &fields[4..] {
            match extra.split_once('=') {
                Some((
                    key @ ("reason" | "policy" | "rule" | "egress" | "ingress" | "backend"),
                    value,
                )) => wanted.push((key.to_owned(), value.to_owned())),
                _ => fail(format!("probes[{index}]: bad expectation {extra:?}")),
            }
        }
        expectations.push((index, mark, wanted));
        explicit.push(spec);
    }

    // A probe to a Service resolves to one flow per ready backend: each explicit probe's
    // results are the range its own resolution adds.
    let services = &compiled.services;
    let (mut probes, mut resolve_errors) = verify::resolve_probes(&specs, &snapshot, services);
    let mut ranges = Vec::new();
    for spec in &explicit {
        let (mut resolved, mut errors) =
            verify::resolve_probes(std::slice::from_ref(spec), &snapshot, services);
        ranges.push(probes.len()..probes.len() + resolved.len());
        probes.append(&mut resolved);
        resolve_errors.append(&mut errors);
    }
    if !resolve_errors.is_empty() {
        let first: Vec<String> = resolve_errors
            .iter()
            .take(5)
            .map(|e| format!("  {e}"))
            .collect();
        fail(format!(
            "{} probes do not resolve, the first ones:\n{}",
            resolve_errors.len(),
            first.join("\n")
        ));
        return None;
    }
    let model = match verify::run(&compiled, &probes, &mut ModelDatapath::new()) {
        Ok(model) => model,
        Err(e) => {
            fail(e.to_string());
            return None;
        }
    };

    for (index, port, matrix, first) in &matrices {
        let observed = |i: usize, j: usize| Mark::of(&model[first + i * matrix.tos.len() + j]);
        let differs = (0..matrix.froms.len())
            .any(|i| (0..matrix.tos.len()).any(|j| observed(i, j) != matrix.marks[i][j]));
        if differs {
            let mut details = String::new();
            for i in 0..matrix.froms.len() {
                for j in 0..matrix.tos.len() {
                    if observed(i, j) != matrix.marks[i][j] {
                        let result = &model[first + i * matrix.tos.len() + j];
                        let _ = write!(
                            details,
                            "\n  expected {} for {}",
                            matrix.marks[i][j].symbol(),
                            describe(result)
                        );
                    }
                }
            }
            fail(format!(
                "checks[{index}] {port}: reachability differs\n\nexpected:\n{}\n\nobserved:\n{}\n\ncomparison (X = differs):\n{}\n{details}",
                matrix.print(|i, j| matrix.marks[i][j].symbol()),
                matrix.print(|i, j| observed(i, j).symbol()),
                matrix.print(|i, j| if observed(i, j) == matrix.marks[i][j] {
                    "."
                } else {
                    "X"
                }),
            ));
        }
    }
    for ((index, mark, wanted), range) in expectations.iter().zip(&ranges) {
        let backend = wanted
            .iter()
            .find(|(key, _)| key == "backend")
            .map(|(_, value)| value.as_str());
        let results: Vec<&ProbeResult> = model[range.clone()]
            .iter()
            .filter(|r| backend.is_none() || r.backend.as_deref() == backend)
            .collect();
        if results.is_empty() {
            fail(format!("probes[{index}]: no flow (backend {backend:?})"));
        }
        for result in results {
            let mut wrong = Vec::new();
            if Mark::of(result) != *mark {
                wrong.push(format!("verdict {}", mark.symbol()));
            }
            for (key, value) in wanted {
                let hook_rule = |hook: &Option<HookResult>| {
                    let hook = hook.as_ref()?;
                    Some(format!(
                        "{}:{}",
                        hook.policy.as_deref()?,
                        hook.rule.as_deref()?
                    ))
                };
                let actual = match key.as_str() {
                    "reason" => Some(result.reason.to_owned()),
                    "policy" => result.policy.clone(),
                    "rule" => result.rule.clone(),
                    "egress" => hook_rule(&result.hooks.egress),
                    "backend" => result.backend.clone(),
                    _ => hook_rule(&result.hooks.ingress),
                };
                if actual.as_deref() != Some(value.as_str()) {
                    wrong.push(format!("{key}={value}"));
                }
            }
            if !wrong.is_empty() {
                fail(format!(
                    "probes[{index}]: expected {}, got {}",
                    wrong.join(" "),
                    describe(result)
                ));
            }
        }
    }
    Some(Evaluated {
        name,
        compiled,
        probes,
        model,
    })
}

/// Every case, evaluated on the model; panics listing every failure.
fn evaluate_all() -> Vec<Evaluated> {
    let mut failures = Vec::new();
    let files = case_files();
    let evaluated: Vec<Evaluated> = files
        .iter()
        .filter_map(|path| evaluate(path, &mut failures))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases fail:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
    evaluated
}

#[test]
fn model_datapath_meets_every_fixture() {
    let started = Instant::now();
    let evaluated = evaluate_all();
    let flows: usize = evaluated.iter().map(|e| e.probes.len()).sum();
    assert!(
        evaluated.len() >= 60,
        "only {} cases found",
        evaluated.len()
    );
    println!(
        "conformance (model): {} cases, {flows} flows, {:?}",
        evaluated.len(),
        started.elapsed()
    );
}

#[test]
fn privileged_bpf_datapath_agrees_with_model_on_every_fixture() {
    if !privileged("privileged_bpf_datapath_agrees_with_model_on_every_fixture") {
        return;
    }
    let evaluated = evaluate_all();
    let started = Instant::now();
    let mut bpf = BpfDatapath::new().expect("load the eBPF programs");
    let mut differences = Vec::new();
    let mut flows = 0;
    for case in &evaluated {
        let results = verify::run(&case.compiled, &case.probes, &mut bpf)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        for ((probe, model), bpf) in case.probes.iter().zip(&case.model).zip(&results) {
            flows += usize::from(model.outcome.is_some());
            if model.outcome != bpf.outcome {
                differences.push(format!(
                    "{} ({}): {} -> {} {}/{}\n  model: {:?}\n  bpf:   {:?}",
                    case.name,
                    probe.spec.origin,
                    probe.spec.from,
                    probe.spec.to,
                    probe.spec.port,
                    probe.spec.protocol,
                    model.outcome,
                    bpf.outcome
                ));
            }
        }
    }
    assert!(
        differences.is_empty(),
        "{} flows decided differently by the eBPF programs and the model:\n\n{}",
        differences.len(),
        differences.join("\n\n")
    );
    println!(
        "conformance (bpf = model): {} cases, {flows} flows, {:?}",
        evaluated.len(),
        started.elapsed()
    );
}
