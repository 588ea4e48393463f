//! Link arguments for bpf-linker that aya-build's RUSTFLAGS leave out.
//!
//! - `--disable-expand-memcpy-in-order`: bpf-linker asks LLVM to expand `memcpy` in order
//!   (`--bpf-expand-memcpy-in-order`); with that option LLVM also stops expanding `memset` and
//!   calls the exported builtin instead, a loop of single-byte stores (~4 instructions per
//!   byte). The probe zeroes addresses and small fields on every packet, so it turns the
//!   option off: LLVM then writes every `memset` and `memcpy` as stores of its own, as wide as
//!   the alignment it can prove (hence `parse::Addr`'s).
//! - `--cpu-features=+allows-misaligned-mem-access` (LLVM 22): without it LLVM reads a header
//!   field it cannot prove aligned (every field past the 14-byte Ethernet header) one byte at a
//!   time, and puts it together with shifts; with it, a word at a time. The programs shrink by
//!   a fifth. The verifier accepts misaligned access to the packet and to map values on
//!   x86-64 and arm64 (`CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS`), never to the stack: what
//!   the probe reads this way from the stack is placed so that it is aligned (`stack`,
//!   `maps::HEADER`).

fn main() {
    println!("cargo::rustc-link-arg-bins=--disable-expand-memcpy-in-order");
    println!("cargo::rustc-link-arg-bins=--cpu-features=+allows-misaligned-mem-access");
}
