#!/usr/bin/env bash
# Runs every check and test of tollgate: formatting, lints (userspace and eBPF), and the whole
# test suite, privileged tests included (BPF_PROG_TEST_RUN, network namespaces). Must run as
# root; installs its own prerequisites first (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# .tools/bin: helm, for the chart's tests (installed by setup.sh).
export PATH="$PWD/.tools/bin:$HOME/.cargo/bin:$PATH"
# One-shot builds: incremental caches would only take disk.
export CARGO_INCREMENTAL=0

step() { printf '\n== %s\n' "$*" >&2; }

step "disk free (the suite needs ~8 GiB: target/ ~7, .venv ~0.8)"
df -h . >&2

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (userspace)"
cargo clippy --locked --all-targets -- -D warnings

step "cargo clippy (eBPF probe, bpfel-unknown-none)"
cargo +nightly clippy --locked -p tollgate-probe --target bpfel-unknown-none \
  -Z build-std=core -- -D warnings

step "python: the Athena queries on DuckDB (schemas/athena)"
.venv/bin/python -m unittest discover -s schemas/athena -p 'test_*.py'

step "python: the OCSF validator (schemas/ocsf; the collector's tests run it on its objects)"
.venv/bin/python -m unittest discover -s schemas/ocsf -p 'test_*.py'

step "python: the deployment (deploy/: manifests, chart, capability set)"
.venv/bin/python -m unittest discover -s deploy -p 'test_*.py'

step "terraform: fmt, the layout applied, validation, structure, checkov (terraform/tests)"
.venv/bin/python -m unittest discover -s terraform/tests -p 'test_*.py'

step "cargo test"
cargo test --locked --no-fail-fast

step "python: the notebooks, run headless on a lab run (notebooks/)"
.venv/bin/python -m unittest discover -s notebooks -p 'test_*.py'

step "disk used by target/"
du -sh target >&2
