//! Keys built on the stack, placed so that their 16-byte addresses start at 8-byte boundaries.
//!
//! The probe is built with misaligned loads and stores allowed (`probe/build.rs`): LLVM then
//! reads and writes headers and addresses a word at a time instead of a byte at a time. The
//! verifier accepts a misaligned access to the packet or to a map value, but not to the stack,
//! and a key of 4-byte alignment (a [`FlowKey`](tollgate_schemas::FlowKey), the peer trie's
//! key) may land 4 bytes off an 8-byte boundary, where LLVM's 8-byte copies of its addresses
//! would be refused. Each key on the stack is therefore wrapped so that its addresses are
//! 8-byte aligned: [`Aligned`] for a key whose addresses sit at multiples of 8 from its start,
//! [`OffWord`] for one whose addresses sit 4 bytes past them.

/// `T` at an 8-byte boundary.
#[repr(C, align(8))]
pub struct Aligned<T>(pub T);

/// `T` 4 bytes past an 8-byte boundary. `T` must be aligned to at most 4 bytes, so that
/// nothing is put between the skipped word and it.
#[repr(C, align(8))]
pub struct OffWord<T> {
    _skip: u32,
    pub value: T,
}

impl<T> OffWord<T> {
    #[inline(always)]
    pub const fn new(value: T) -> Self {
        const { assert!(align_of::<T>() <= 4) };
        Self { _skip: 0, value }
    }
}
