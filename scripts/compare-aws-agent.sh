#!/usr/bin/env bash
# Side by side: the aws agent's ingress program under `tollgate bench datapath`'s harness.
#
#   sudo bash scripts/compare-aws-agent.sh AWS_AGENT_CHECKOUT [PACKETS]
#
# AWS_AGENT_CHECKOUT: a checkout of github.com/aws/aws-network-policy-agent (measured at
# c8619c05). Builds its pkg/ebpf/c/tc.v4ingress.bpf.c with clang, as the agent does, against
# this kernel's BTF, with three changes that only let it load on its own and be measured:
# - its conntrack map and ring buffer, which the agent shares from another object, are
#   defined in it (as v4events.bpf.c defines them), the ring at 64 MiB so that every event is
#   written;
# - its section is aya's `classifier`, and nothing is pinned;
# - an empty program, `empty`, gives the harness's floor.
# Then runs `enforcer/examples/aws_agent_datapath.rs` on the object, and `tollgate bench
# datapath` right after it, both on CPU 1.
set -euo pipefail

log() { printf '[compare-aws-agent] %s\n' "$*" >&2; }

checkout=$(realpath "${1:?usage: compare-aws-agent.sh AWS_AGENT_CHECKOUT [PACKETS]}")
packets=${2:-100000}
source_file="$checkout/pkg/ebpf/c/tc.v4ingress.bpf.c"
[ -f "$source_file" ] || { log "no $source_file"; exit 1; }
cd "$(dirname "$0")/.."

# clang builds the agent's program, bpftool writes this kernel's vmlinux.h, libbpf-dev has
# the headers it includes.
TOLLGATE_SETUP_EXTRA_PKGS="clang-22 bpftool libbpf-dev" bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bpftool btf dump file /sys/kernel/btf/vmlinux format c > "$work/vmlinux.h"
python3 - "$source_file" "$work/tc.v4ingress.bpf.c" <<'PY'
import sys
source = open(sys.argv[1]).read()
changes = {
    'struct bpf_map_def_pvt aws_conntrack_map;':
        'struct bpf_map_def_pvt SEC("maps") aws_conntrack_map = {\n'
        '    .type = BPF_MAP_TYPE_LRU_HASH,\n'
        '    .key_size = sizeof(struct conntrack_key),\n'
        '    .value_size = sizeof(struct conntrack_value),\n'
        '    .max_entries = 512 * 1024,\n'
        '};',
    'struct bpf_map_def_pvt policy_events;':
        'struct bpf_map_def_pvt SEC("maps") policy_events = {\n'
        '    .type = BPF_MAP_TYPE_RINGBUF,\n'
        '    .max_entries = 64 * 1024 * 1024,\n'
        '};',
    'SEC("tc_cls")': 'SEC("classifier")',
}
for old, new in changes.items():
    if old not in source:
        sys.exit(f"{sys.argv[1]}: no {old!r}: the agent's source changed")
    source = source.replace(old, new)
source = source.replace('.pinning = PIN_GLOBAL_NS,', '')
source = source.replace('.pinning     = PIN_GLOBAL_NS,', '')
source += '\nSEC("classifier")\nint empty(struct __sk_buff *skb)\n{\n\treturn -1;\n}\n'
open(sys.argv[2], 'w').write(source)
PY
clang-22 -O2 -g -target bpf -D__TARGET_ARCH_x86 -I"$work" \
  -c "$work/tc.v4ingress.bpf.c" -o "$work/tc.v4ingress.bpf.o"

cargo build --release --locked --example aws_agent_datapath -p tollgate-enforcer
cargo build --release --locked
log "aws agent, $packets packets per case"
taskset -c 1 target/release/examples/aws_agent_datapath "$work/tc.v4ingress.bpf.o" "$packets"
log "tollgate, $packets packets per case"
taskset -c 1 target/release/tollgate bench datapath --packets "$packets"
