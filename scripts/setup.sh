#!/usr/bin/env bash
# Installs everything tollgate needs to build, run the lab and run the tests.
# Idempotent: every step checks before it installs. Safe to run on every invocation.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    log "must run as root (apt-get, BPF, network namespaces)"; exit 1
  fi
}
need_root

export PATH="$HOME/.cargo/bin:$PATH"

# Debian packages: iproute2 for namespaces/veth, LLVM 22 for bpf-linker.
apt_pkgs=(iproute2 llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Nightly rust-src: the eBPF crate is built with -Z build-std for bpfel-unknown-none; nightly
# clippy lints it.
for component in rust-src clippy; do
  if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q "^$component"; then
    log "rustup component add $component --toolchain nightly"
    rustup component add "$component" --toolchain nightly
  fi
done

# bpf-linker 0.13.0 against Debian's LLVM 22.
if ! bpf-linker --version 2>/dev/null | grep -q '0\.13\.0'; then
  log "cargo install bpf-linker 0.13.0 (LLVM 22)"
  LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version 0.13.0 --locked \
    --no-default-features --features llvm-22
fi

# Python venv at <repo>/.venv for the Athena queries' local runner (schemas/athena/run_duckdb.py,
# DuckDB + sqlglot) and its tests; requirements.txt is reinstalled only when its sha256 changes.
athena_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
athena_venv="$athena_repo/.venv"
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  log "apt-get install python3 python3-venv"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
fi
if ! "$athena_venv/bin/python" -c '' 2>/dev/null; then
  log "python3 -m venv $athena_venv"
  rm -rf "$athena_venv"
  python3 -m venv "$athena_venv"
fi
athena_req_sum="$(sha256sum "$athena_repo/requirements.txt" | cut -d' ' -f1)"
if [ "$(cat "$athena_venv/requirements.sha256" 2>/dev/null)" != "$athena_req_sum" ]; then
  log "pip install -r requirements.txt into $athena_venv"
  "$athena_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$athena_repo/requirements.txt"
  printf '%s\n' "$athena_req_sum" >"$athena_venv/requirements.sha256"
fi

# s3s-fs 0.14.1: the S3-compatible server (a directory per bucket, SigV4 checked) that the
# collector's S3 tests start on 127.0.0.1.
if ! s3s-fs --version 2>/dev/null | grep -q '^s3s-fs 0\.14\.1$'; then
  log "cargo install s3s-fs 0.14.1"
  cargo install s3s-fs@0.14.1 --features binary --locked
fi

log "prerequisites ready"
