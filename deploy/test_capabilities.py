"""The agent's capability set, tried on this kernel (privileged: root, as CI is).

    python3 -m unittest deploy/test_capabilities.py

The DaemonSet's capability list (deploy/manifests/tollgate.yaml) is what the agent's bpf(2) work
runs under: this test does that work in a process whose capabilities are exactly that list (the
bounding set, as a container gets it), inside a network and mount namespace of its own with a
veth pair and a private BPF filesystem: create a ring buffer, an LPM trie and an LRU hash; load
a SCHED_CLS program that reserves and submits ring-buffer records and reads bpf_jiffies64 and
bpf_ktime_get_coarse_ns, and run it once under BPF_PROG_TEST_RUN (the loader calibrates the
probe's clock so); pin map, program and TCX link; open the pinned map again. All of it must
work with the list, and fail without CAP_BPF or without CAP_NET_ADMIN. Opening a map by its id
must fail: the kernel asks CAP_SYS_ADMIN for that, so the agent reaches its objects through
pins and file descriptors only. CAP_PERFMON is needed by the real probe's verification, which
this small program does not show (deploy/README.md); CAP_SYS_RESOURCE matters only on kernels
before 5.11.
"""

import ctypes
import json
import os
import platform
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import unittest

import yaml

DEPLOY = os.path.dirname(os.path.abspath(__file__))
MANIFESTS = os.path.join(DEPLOY, "manifests", "tollgate.yaml")

# bpf(2) commands, map and program types, helpers and attach types (include/uapi/linux/bpf.h).
BPF_MAP_CREATE, BPF_PROG_LOAD, BPF_OBJ_PIN, BPF_OBJ_GET = 0, 5, 6, 7
BPF_PROG_TEST_RUN, BPF_MAP_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD, BPF_LINK_CREATE = 10, 14, 15, 28
MAP_LRU_HASH, MAP_LPM_TRIE, MAP_RINGBUF = 9, 11, 27
PROG_SCHED_CLS = 3
FN_JIFFIES64, FN_KTIME_GET_COARSE_NS, FN_RINGBUF_RESERVE, FN_RINGBUF_SUBMIT = 118, 160, 131, 132
BPF_TCX_INGRESS = 46
BPF_F_NO_PREALLOC = 1
SYS_BPF = {"x86_64": 321, "aarch64": 280}


def deployed_capabilities():
    with open(MANIFESTS, encoding="utf-8") as f:
        for doc in yaml.safe_load_all(f):
            if doc and doc["kind"] == "DaemonSet":
                return doc["spec"]["template"]["spec"]["containers"][0]["securityContext"][
                    "capabilities"
                ]["add"]
    raise AssertionError("no DaemonSet")


# ---- the child: runs inside the namespaces, under the capability set being tried ----

libc = ctypes.CDLL(None, use_errno=True)


def bpf(cmd, attr):
    size = 128
    buf = ctypes.create_string_buffer(attr.ljust(size, b"\0"), size)
    fd = libc.syscall(SYS_BPF[platform.machine()], cmd, buf, size)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def create_map(kind, key_size, value_size, entries, flags=0):
    return bpf(BPF_MAP_CREATE, struct.pack("=IIIII", kind, key_size, value_size, entries, flags))


def insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def load_program(ring):
    """A TC program: reserve 8 bytes of the ring buffer, read jiffies, write the time (coarse),
    submit; pass."""
    code = b"".join(
        [
            insn(0x18, dst=1, src=1, imm=ring),  # r1 = the ring buffer (pseudo map fd)
            insn(0),
            insn(0xB7, dst=2, imm=8),  # r2 = 8
            insn(0xB7, dst=3, imm=0),  # r3 = 0
            insn(0x85, imm=FN_RINGBUF_RESERVE),
            insn(0x15, dst=0, off=7, imm=0),  # if r0 == 0 goto pass
            insn(0xBF, dst=7, src=0),  # r7 = r0
            insn(0x85, imm=FN_JIFFIES64),
            insn(0x85, imm=FN_KTIME_GET_COARSE_NS),
            insn(0x7B, dst=7, src=0),  # *(u64 *)(r7 + 0) = r0
            insn(0xBF, dst=1, src=7),  # r1 = r7
            insn(0xB7, dst=2, imm=0),  # r2 = 0
            insn(0x85, imm=FN_RINGBUF_SUBMIT),
            insn(0xB7, dst=0, imm=-1),  # pass: r0 = TCX_NEXT
            insn(0x95),  # exit
        ]
    )
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(1 << 16)
    attr = struct.pack(
        "=IIQQIIQ",
        PROG_SCHED_CLS,
        len(code) // 8,
        ctypes.addressof(insns),
        ctypes.addressof(license_),
        1,
        len(log),
        ctypes.addressof(log),
    )
    try:
        return bpf(BPF_PROG_LOAD, attr)
    except OSError as error:
        raise OSError(error.errno, f"{error.strerror}: {log.value.decode(errors='replace')[-200:]}")


def test_run(prog):
    """One BPF_PROG_TEST_RUN of `prog` on a zeroed 64-byte frame."""
    frame = ctypes.create_string_buffer(64)
    out = ctypes.create_string_buffer(64)
    attr = struct.pack(
        "=IIIIQQII", prog, 0, 64, 64, ctypes.addressof(frame), ctypes.addressof(out), 1, 0
    )
    bpf(BPF_PROG_TEST_RUN, attr)


def pin(fd, path):
    name = ctypes.create_string_buffer(path.encode())
    bpf(BPF_OBJ_PIN, struct.pack("=QI", ctypes.addressof(name), fd))


def open_pinned(path):
    name = ctypes.create_string_buffer(path.encode())
    return bpf(BPF_OBJ_GET, struct.pack("=QI", ctypes.addressof(name), 0))


def map_id(fd):
    info = ctypes.create_string_buffer(80)
    bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("=IIQ", fd, len(info), ctypes.addressof(info)))
    return struct.unpack_from("=II", info.raw)[1]


def child(bpffs, ifname):
    """Each step's outcome, `ok` or the errno's name, as JSON on stdout."""
    results = {}

    def step(name, action, *needs):
        if any(results.get(n) != "ok" for n in needs):
            results[name] = "not reached"
            return None
        try:
            value = action()
            results[name] = "ok"
            return value
        except OSError as error:
            results[name] = errno_name(error.errno)
            return None

    ring = step("create ring buffer", lambda: create_map(MAP_RINGBUF, 0, 0, 1 << 22))
    step("create LPM trie", lambda: create_map(MAP_LPM_TRIE, 20, 8, 1024, BPF_F_NO_PREALLOC))
    lru = step("create LRU hash", lambda: create_map(MAP_LRU_HASH, 8, 8, 1024))
    prog = step("load SCHED_CLS program", lambda: load_program(ring), "create ring buffer")
    step("test run", lambda: test_run(prog), "load SCHED_CLS program")
    directory = os.path.join(bpffs, "tollgate")
    step("mkdir in bpffs", lambda: os.mkdir(directory))
    step("pin map", lambda: pin(lru, f"{directory}/conntrack"), "create LRU hash", "mkdir in bpffs")
    step("open pinned map", lambda: open_pinned(f"{directory}/conntrack"), "pin map")
    step("open map by id", lambda: bpf(BPF_MAP_GET_FD_BY_ID, struct.pack("=I", map_id(lru))), "create LRU hash")
    step("pin program", lambda: pin(prog, f"{directory}/from_pod"), "load SCHED_CLS program", "mkdir in bpffs")
    ifindex = socket.if_nametoindex(ifname)
    link = step(
        "TCX attach",
        lambda: bpf(BPF_LINK_CREATE, struct.pack("=IIII", prog, ifindex, BPF_TCX_INGRESS, 0)),
        "load SCHED_CLS program",
    )
    step("pin link", lambda: pin(link, f"{directory}/from_pod_link"), "TCX attach", "mkdir in bpffs")
    print(json.dumps(results))


def errno_name(number):
    import errno

    return errno.errorcode.get(number, str(number))


# ---- the test ----


def kernel_at_least(major, minor):
    release = platform.release().split("-")[0].split(".")
    return (int(release[0]), int(release[1])) >= (major, minor)


def can_isolate():
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ["unshare", "setpriv", "ip"]):
        return False
    return subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True).returncode == 0


@unittest.skipUnless(can_isolate(), "needs root with unshare, setpriv and ip (CI has them)")
@unittest.skipUnless(kernel_at_least(6, 6), "TCX needs Linux 6.6")
class CapabilityTest(unittest.TestCase):
    def run_with(self, capabilities):
        """The child's results under exactly `capabilities` (container names, as in the manifest)."""
        bounding = ",".join(["-all"] + ["+" + c.lower() for c in capabilities])
        bpffs = tempfile.mkdtemp(prefix="tollgate-bpffs-")
        script = (
            'set -e; mount -t bpf bpf "$1"; '
            "ip link add tg-host type veth peer name tg-pod; ip link set tg-host up; "
            f'exec setpriv --bounding-set {bounding} -- "$2" "$3" --child "$1" tg-host'
        )
        try:
            # A network and a mount namespace of its own: the veth, the bpffs mount and every
            # object go away with the child.
            result = subprocess.run(
                ["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                 bpffs, sys.executable, os.path.abspath(__file__)],
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            os.rmdir(bpffs)
        self.assertEqual(result.returncode, 0, result.stderr)
        return json.loads(result.stdout)

    def test_the_deployed_capabilities_suffice(self):
        results = self.run_with(deployed_capabilities())
        expected = {step: "ok" for step in results}
        expected["open map by id"] = "EPERM"  # CAP_SYS_ADMIN only: use pins and fds
        self.assertEqual(results, expected)

    def test_without_cap_bpf_nothing_is_created(self):
        results = self.run_with([c for c in deployed_capabilities() if c != "BPF"])
        for step in ["create ring buffer", "create LPM trie", "create LRU hash"]:
            self.assertEqual(results[step], "EPERM", step)

    def test_without_cap_net_admin_no_tc_program_loads(self):
        results = self.run_with([c for c in deployed_capabilities() if c != "NET_ADMIN"])
        self.assertEqual(results["create LRU hash"], "ok")
        self.assertEqual(results["load SCHED_CLS program"], "EPERM")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3])
    else:
        unittest.main()
