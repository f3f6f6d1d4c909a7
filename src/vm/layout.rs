//! The guest physical memory map of the guest ABI (HYPERCALLS.md). Guest memory is
//! identity-mapped, so each of these is also the guest virtual address.

/// The reference guest writes 42 here before it halts.
pub const REFERENCE_RESULT: u64 = 0x400;
/// Guest arguments: a u64 count, then up to [`MAX_GUEST_ARGS`] u64 values.
pub const ARGS: u64 = 0x500;
/// Most guest arguments one VM can be given.
pub const MAX_GUEST_ARGS: usize = 31;
/// The hypervisor's mailbox for HC_numExitsByType.
pub const MAILBOX: u64 = 0x1000;
/// Slots in the mailbox, used round-robin.
pub const MAILBOX_SLOTS: u64 = 32;
/// Bytes per mailbox slot, terminating NUL included.
pub const MAILBOX_SLOT_SIZE: u64 = 128;
/// Page-map level 4 table.
pub const PML4: u64 = 0x2000;
/// Page-directory-pointer table.
pub const PDPT: u64 = 0x3000;
/// Page directory of 2 MiB pages (one directory maps the largest memory, 1 GiB).
pub const PAGE_DIRECTORY: u64 = 0x4000;
/// Global descriptor table.
pub const GDT: u64 = 0x5000;
/// Where guest images are loaded, and the entry point of flat images.
pub const IMAGE_BASE: u64 = 0x10000;

/// Size of one large page, and the unit of guest memory sizes.
pub const PAGE_2M: u64 = 2 << 20;
/// Smallest guest memory.
pub const MIN_MEMORY: u64 = PAGE_2M;
/// Default guest memory.
pub const DEFAULT_MEMORY: u64 = PAGE_2M;
/// Largest guest memory: what one page directory maps.
pub const MAX_MEMORY: u64 = 1 << 30;
