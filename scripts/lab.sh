#!/usr/bin/env bash
# Runs the seed scenario (`tollgate lab`) on this machine, installing prerequisites first.
# Must run as root (BPF, network namespaces). Extra arguments go to `tollgate lab`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --locked --quiet
exec ./target/debug/tollgate lab "$@"
