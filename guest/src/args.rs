//! Guest arguments: the hypervisor writes a u64 count at 0x500 and up to 31 u64
//! values after it before the VM starts (scenario key `args`, or `--arg` on the CLI).

/// Guest physical (and virtual) address of the argument block.
pub const ARGS_ADDR: u64 = 0x500;
/// Most arguments a guest can be given.
pub const MAX_ARGS: usize = 31;

/// The arguments this guest was started with (possibly none).
pub fn all() -> &'static [u64] {
    // SAFETY: 0x500..0x600 is identity-mapped guest memory reserved for the
    // argument block; the hypervisor fills it before the first instruction and
    // never changes it afterwards. The count is clamped to the block's size.
    unsafe {
        let count = core::ptr::read_volatile(ARGS_ADDR as *const u64);
        let count = core::cmp::min(count, MAX_ARGS as u64) as usize;
        core::slice::from_raw_parts((ARGS_ADDR + 8) as *const u64, count)
    }
}

/// Argument `index`, or `default` when it was not given or is 0.
pub fn get_or(index: usize, default: u64) -> u64 {
    match all().get(index) {
        Some(&value) if value != 0 => value,
        _ => default,
    }
}
