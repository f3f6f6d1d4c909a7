//! The guest physical memory map of the guest ABI (HYPERCALLS.md). Guest memory is
//! identity-mapped, so each of these is also the guest virtual address. An
//! image loaded over them (a course guest linked at 0) moves the hypervisor's
//! structures out of its way: [`SystemArea`].

use std::ops::Range;

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
/// Bytes of the GDT: null, code and data descriptors.
pub const GDT_SIZE: u64 = 3 * 8;
/// Bytes of the argument block: the count and [`MAX_GUEST_ARGS`] values.
pub const ARGS_SIZE: u64 = 8 * (1 + MAX_GUEST_ARGS as u64);
/// Bytes of one page table (PML4, PDPT or page directory).
pub const TABLE_SIZE: u64 = 0x1000;
/// Room kept free for the stack at the top of memory when the structures move.
pub const STACK_ROOM: u64 = 64 << 10;
/// The first MiB: all that real-mode code reaches (segment:offset).
pub const REAL_MODE_REACH: u64 = 1 << 20;
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

/// One of the hypervisor's structures in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Structure {
    /// The guest arguments (the count, then the values).
    Args,
    /// HC_numExitsByType's mailbox.
    Mailbox,
    /// Page-map level 4 (long mode).
    Pml4,
    /// Page-directory-pointer table (long mode).
    Pdpt,
    /// Page directory (long mode and paged32).
    PageDirectory,
    /// Global descriptor table (every mode but real).
    Gdt,
}

impl Structure {
    /// What it is, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Args => "guest arguments",
            Self::Mailbox => "HC_numExitsByType mailbox",
            Self::Pml4 => "PML4",
            Self::Pdpt => "PDPT",
            Self::PageDirectory => "page directory",
            Self::Gdt => "GDT",
        }
    }

    fn abi_range(self) -> Range<u64> {
        let (start, size) = match self {
            Self::Args => (ARGS, ARGS_SIZE),
            Self::Mailbox => (MAILBOX, MAILBOX_SLOTS * MAILBOX_SLOT_SIZE),
            Self::Pml4 => (PML4, TABLE_SIZE),
            Self::Pdpt => (PDPT, TABLE_SIZE),
            Self::PageDirectory => (PAGE_DIRECTORY, TABLE_SIZE),
            Self::Gdt => (GDT, GDT_SIZE),
        };
        start..start + size
    }
}

/// Where one VM's structures lie: at the ABI's addresses, or all moved up by
/// `shift` bytes (a multiple of 4 KiB, so the page tables stay aligned).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SystemArea {
    /// How far every structure moved up from its ABI address.
    pub shift: u64,
}

impl SystemArea {
    /// Where `structure` lies.
    pub fn range(&self, structure: Structure) -> Range<u64> {
        let abi = structure.abi_range();
        abi.start + self.shift..abi.end + self.shift
    }

    /// Where `structure` starts.
    pub fn start(&self, structure: Structure) -> u64 {
        self.range(structure).start
    }
}

/// An image that leaves the hypervisor's structures no room.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// The image covers 0x500, and the guest was given arguments, which the
    /// ABI puts there.
    #[error(
        "the image spans 0x{:x}..0x{:x}, over the guest arguments' block (0x{:x}..0x{:x}), and this VM is given \
         arguments: run it without them, or load it at 0x10000 (load = 0x10000)",
        image.start, image.end, ARGS, ARGS + ARGS_SIZE
    )]
    ArgsCovered {
        /// Where the image lies.
        image: Range<u64>,
    },
    /// Neither at the ABI's addresses nor below the top of memory do the
    /// structures fit beside the image.
    #[error(
        "the image spans 0x{:x}..0x{:x}, over the {} (0x{:x}..0x{:x}), and leaves no room to move it below \
         0x{top:x} either: give the VM more memory (memory = \"4M\") or load the image at 0x10000",
        image.start, image.end, structure.name(), at.start, at.end
    )]
    NoRoom {
        /// Where the image lies.
        image: Range<u64>,
        /// The first structure it covers.
        structure: Structure,
        /// Where that structure lies at the ABI's addresses.
        at: Range<u64>,
        /// The highest address the structures could move below.
        top: u64,
    },
}

/// Places the `needed` structures beside an image at `image`: at the ABI's
/// addresses when the image leaves them free, else as high as they go below
/// the stack's room at the top of `reach` (the end of memory, or of what the
/// mode can address). Guest arguments cannot move (the guest reads them at
/// 0x500), so a covered block with `has_args` is refused.
pub fn place(
    needed: &[Structure],
    image: Range<u64>,
    reach: u64,
    has_args: bool,
) -> Result<SystemArea, PlacementError> {
    let covered = |area: SystemArea| {
        needed.iter().copied().find(|s| {
            let at = area.range(*s);
            at.start < image.end && image.start < at.end
        })
    };
    let Some(structure) = covered(SystemArea::default()) else { return Ok(SystemArea::default()) };
    if has_args && needed.contains(&Structure::Args) {
        return Err(PlacementError::ArgsCovered { image });
    }
    let top = reach.saturating_sub(STACK_ROOM);
    let end = needed.iter().map(|s| s.abi_range().end).max().unwrap_or(0);
    let shift = top.saturating_sub(end) & !(TABLE_SIZE - 1);
    let moved = SystemArea { shift };
    if shift > 0 && covered(moved).is_none() {
        return Ok(moved);
    }
    Err(PlacementError::NoRoom { image, structure, at: structure.abi_range(), top })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: &[Structure] = &[
        Structure::Args,
        Structure::Mailbox,
        Structure::Pml4,
        Structure::Pdpt,
        Structure::PageDirectory,
        Structure::Gdt,
    ];

    #[test]
    fn an_image_clear_of_the_structures_leaves_them_at_the_abi_addresses() {
        assert_eq!(place(LONG, 0x10000..0x20000, 2 << 20, true), Ok(SystemArea::default()));
        // A small image linked at 0 ends before the arguments at 0x500.
        assert_eq!(place(LONG, 0..0x4ff, 2 << 20, true), Ok(SystemArea::default()));
    }

    #[test]
    fn a_covering_image_moves_them_below_the_stack_room() {
        let area = place(LONG, 0..0x1800, 2 << 20, false).unwrap();
        assert_eq!(area.shift % 0x1000, 0);
        assert_eq!(area.shift, 0x1e_a000);
        assert_eq!(area.start(Structure::Pml4), 0x1e_c000);
        assert!(area.range(Structure::Gdt).end <= (2 << 20) - STACK_ROOM);
        assert!(area.start(Structure::Args) >= 0x1800);
        // Real mode reaches only the first MiB.
        let real = place(&[Structure::Args, Structure::Mailbox], 0..0x1800, REAL_MODE_REACH, false).unwrap();
        assert!(real.range(Structure::Mailbox).end <= REAL_MODE_REACH - STACK_ROOM);
    }

    #[test]
    fn arguments_cannot_move_and_a_full_memory_leaves_no_room() {
        let args = place(LONG, 0..0x800, 2 << 20, true).unwrap_err();
        assert!(args.to_string().contains("over the guest arguments' block (0x500..0x600)"), "{args}");
        let full = place(LONG, 0..(2 << 20), 2 << 20, false).unwrap_err();
        assert_eq!(
            full.to_string(),
            "the image spans 0x0..0x200000, over the guest arguments (0x500..0x600), and leaves no room to move it \
             below 0x1f0000 either: give the VM more memory (memory = \"4M\") or load the image at 0x10000"
        );
    }
}
