//! Link arguments for bpf-linker that aya-build's RUSTFLAGS leave out.
//!
//! bpf-linker asks LLVM to expand `memcpy` in order (`--bpf-expand-memcpy-in-order`); with that
//! option LLVM also stops expanding `memset` and calls the exported builtin instead, a loop of
//! single-byte stores (~4 instructions per byte). The probe zeroes addresses and small fields
//! on every packet, so it turns the option off: LLVM then writes every `memset` and `memcpy`
//! as stores of its own, as wide as the alignment it can prove (hence `parse::Addr`'s).

fn main() {
    println!("cargo::rustc-link-arg-bins=--disable-expand-memcpy-in-order");
}
