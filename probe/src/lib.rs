//! Host-side library target of the probe crate. It is empty: the programs live in the
//! `tollgate-probe` binary, built for bpfel-unknown-none by `enforcer/build.rs`. This target
//! exists so that the enforcer can name the crate as a build dependency, which makes cargo
//! rebuild the embedded object when the probe changes.
#![no_std]
