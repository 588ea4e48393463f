//! Builds the eBPF programs of `probe/` for bpfel-unknown-none (nightly, build-std) and leaves
//! the object in OUT_DIR, where `probe_object()` embeds it.

fn main() -> anyhow::Result<()> {
    let probe = aya_build::Package {
        name: "tollgate-probe",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../probe"),
        ..Default::default()
    };
    aya_build::build_ebpf([probe], aya_build::Toolchain::default())
}
