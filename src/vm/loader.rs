//! Loads a guest image into guest memory: a static ELF64 executable (recognised by
//! its magic) whose segments go where its program headers say, or anything else
//! as a flat binary at the VM's load address (0x10000 unless told). Every check
//! happens before a byte is written, and each error says what was wrong and how
//! to fix the image or the VM's settings.

use linux_loader::elf::{
    EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB, EM_X86_64, ET_DYN, ET_EXEC, Elf64_Ehdr, Elf64_Phdr, PT_INTERP, PT_LOAD,
};
use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::cpu_mode::CpuMode;
use super::layout::{IMAGE_BASE, REAL_MODE_REACH};
use super::memory::GuestMemory;

const ELFCLASS32: u8 = 1;

/// Where a VM's settings ask its image to go and start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestLayout {
    /// The CPU mode it starts in.
    pub mode: CpuMode,
    /// Guest physical address of a flat image's first byte (default 0x10000).
    pub load: Option<u64>,
    /// Where it starts (default: the load address, or the ELF header's entry).
    pub entry: Option<u64>,
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

/// What kind of image a file was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// A static ELF64 executable.
    Elf,
    /// A flat binary loaded and entered at 0x10000.
    Flat,
}

/// Where a loaded image lies and starts running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    /// The entry point (guest address; linear in real mode).
    pub entry: u64,
    /// ELF or flat.
    pub kind: ImageKind,
    /// From its lowest to one past its highest guest address.
    pub span: std::ops::Range<u64>,
}

/// A guest image that cannot be loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoadError {
    /// The file has no bytes.
    #[error("the image is empty")]
    Empty,
    /// A flat image does not fit between its load address and the end of memory.
    #[error(
        "the flat image is {size} bytes but guest memory from its load address 0x{load:x} up holds only {room}; \
         give the VM more memory (--mem) or a lower load address"
    )]
    FlatTooLarge {
        /// Image size in bytes.
        size: u64,
        /// Where it was to be loaded.
        load: u64,
        /// Bytes available from the load address to the end of memory.
        room: u64,
    },
    /// A load address was given for an ELF file, which says where it goes.
    #[error(
        "a load address (0x{0:x}) applies to flat images; this is an ELF file, whose program headers say where \
         it goes: drop `load`, or link the guest with --oformat binary"
    )]
    LoadWithElf(u64),
    /// An ELF64 file for a mode other than long.
    #[error(
        "an ELF64 file runs in long mode, and this VM starts in {0} mode: set mode = \"long\", or build a flat \
         binary for {0} mode (ld --oformat binary, or objcopy -O binary) and give its load address"
    )]
    ElfOutsideLongMode(&'static str),
    /// An ELF32 file.
    #[error(
        "32-bit ELF files are not loaded: link the guest with --oformat binary (or objcopy -O binary) and run \
         the flat image with mode = \"protected\" or \"paged32\" and its load address (load = 0x0 if linked at 0)"
    )]
    Elf32,
    /// The entry (given, or the load address) is not inside guest memory.
    #[error(
        "the entry point 0x{entry:x} is outside guest memory (0x0 to 0x{memory_end:x}); give an entry inside it \
         (entry = 0x...) or the VM more memory"
    )]
    EntryOutside {
        /// The entry point.
        entry: u64,
        /// End of guest memory.
        memory_end: u64,
    },
    /// A real-mode entry past the first MiB, which CS:IP cannot name.
    #[error(
        "the entry point 0x{0:x} is past the first MiB, which real-mode CS:IP cannot reach; load and enter real-mode \
         code below 0x100000"
    )]
    RealModeEntry(u64),
    /// The ELF header is cut short or malformed.
    #[error("not a usable ELF file: {0}")]
    BadElf(&'static str),
    /// The ELF file is not a static x86-64 executable.
    #[error(
        "the ELF file is {0}; guests must be static, non-PIE x86-64 executables linked at 0x10000 (gcc -static -nostdlib -no-pie -Wl,-Ttext=0x10000)"
    )]
    WrongElfKind(&'static str),
    /// A loadable segment lies (partly) outside the place images may occupy.
    #[error(
        "ELF segment {index} spans 0x{start:x}..0x{end:x}, outside guest memory from 0x10000 to 0x{memory_end:x}; link the guest at 0x10000 or give it more memory (--mem)"
    )]
    SegmentOutsideMemory {
        /// Index of the program header.
        index: usize,
        /// First guest address of the segment.
        start: u64,
        /// One past its last guest address.
        end: u64,
        /// End of guest memory.
        memory_end: u64,
    },
    /// The ELF file has nothing to load.
    #[error(
        "the ELF file has no loadable segment (PT_LOAD), so the VM would run zeroed memory; link it with a linker script that places .text"
    )]
    NoSegments,
    /// Two loadable segments overlap in guest memory.
    #[error(
        "ELF segments {first} and {second} overlap in guest memory (0x{start:x}..0x{end:x}); fix the linker script so that no two segments share an address"
    )]
    SegmentsOverlap {
        /// Index of the earlier program header.
        first: usize,
        /// Index of the later one.
        second: usize,
        /// Where the overlap starts.
        start: u64,
        /// Where it ends.
        end: u64,
    },
    /// The ELF file asks for a program interpreter (dynamic linking).
    #[error(
        "the ELF file asks for a program interpreter (PT_INTERP): it is dynamically linked; link the guest with -static -nostdlib"
    )]
    Interpreter,
    /// The entry point is not inside guest memory.
    #[error("the ELF entry point 0x{entry:x} is outside guest memory (0x10000 to 0x{memory_end:x})")]
    EntryOutsideMemory {
        /// The entry point from the header.
        entry: u64,
        /// End of guest memory.
        memory_end: u64,
    },
}

/// Loads `image` into `memory` (whose size is `memory_size`) as `layout` says.
pub fn load(
    memory: &GuestMemory,
    memory_size: u64,
    image: &[u8],
    layout: GuestLayout,
) -> Result<LoadedImage, LoadError> {
    if image.is_empty() {
        return Err(LoadError::Empty);
    }
    if !image.starts_with(ELF_MAGIC) {
        return load_flat(memory, memory_size, image, layout);
    }
    if let Some(load) = layout.load {
        return Err(LoadError::LoadWithElf(load));
    }
    if image.get(EI_CLASS) == Some(&ELFCLASS32) {
        return Err(LoadError::Elf32);
    }
    if layout.mode != CpuMode::Long {
        return Err(LoadError::ElfOutsideLongMode(layout.mode.name()));
    }
    load_elf(memory, memory_size, image, layout.entry)
}

fn load_flat(
    memory: &GuestMemory,
    memory_size: u64,
    image: &[u8],
    layout: GuestLayout,
) -> Result<LoadedImage, LoadError> {
    let load = layout.load.unwrap_or(IMAGE_BASE);
    let room = memory_size.saturating_sub(load);
    let size = image.len() as u64;
    if size > room {
        return Err(LoadError::FlatTooLarge { size, load, room });
    }
    let entry = check_entry(layout.entry.unwrap_or(load), memory_size, layout.mode)?;
    write(memory, load, image);
    Ok(LoadedImage { entry, kind: ImageKind::Flat, span: load..load + size })
}

/// The entry, if the VM can start there.
fn check_entry(entry: u64, memory_size: u64, mode: CpuMode) -> Result<u64, LoadError> {
    if entry >= memory_size {
        return Err(LoadError::EntryOutside { entry, memory_end: memory_size });
    }
    if mode == CpuMode::Real && entry >= REAL_MODE_REACH {
        return Err(LoadError::RealModeEntry(entry));
    }
    Ok(entry)
}

/// One PT_LOAD segment, checked against the file and guest memory.
struct Segment<'a> {
    index: usize,
    start: u64,
    end: u64,
    bytes: &'a [u8],
    zeroed: u64,
}

fn load_elf(
    memory: &GuestMemory,
    memory_size: u64,
    image: &[u8],
    entry: Option<u64>,
) -> Result<LoadedImage, LoadError> {
    let header = read_struct::<Elf64_Ehdr>(image, 0).ok_or(LoadError::BadElf("the ELF header is cut short"))?;
    if header.e_ident[EI_CLASS] != ELFCLASS64 {
        return Err(LoadError::WrongElfKind("not 64-bit"));
    }
    if header.e_ident[EI_DATA] != ELFDATA2LSB {
        return Err(LoadError::WrongElfKind("not little-endian"));
    }
    if header.e_machine != EM_X86_64 {
        return Err(LoadError::WrongElfKind("not for x86-64"));
    }
    match header.e_type {
        ET_EXEC => {}
        ET_DYN => {
            return Err(LoadError::WrongElfKind("position-independent (PIE or shared object)"));
        }
        _ => return Err(LoadError::WrongElfKind("not an executable")),
    }
    if usize::from(header.e_phentsize) != size_of::<Elf64_Phdr>() {
        return Err(LoadError::BadElf("its program header size is not 56 bytes"));
    }

    let mut segments = Vec::new();
    for index in 0..usize::from(header.e_phnum) {
        let offset = (index * size_of::<Elf64_Phdr>()) as u64;
        let phdr = header
            .e_phoff
            .checked_add(offset)
            .and_then(|at| read_struct::<Elf64_Phdr>(image, at))
            .ok_or(LoadError::BadElf("a program header lies past the end of the file"))?;
        if phdr.p_type == PT_INTERP {
            return Err(LoadError::Interpreter);
        }
        if phdr.p_type != PT_LOAD || phdr.p_memsz == 0 {
            continue;
        }
        let segment = check_segment(index, &phdr, image, memory_size)?;
        let end = segment.start + phdr.p_memsz;
        if let Some(other) = segments.iter().find(|other: &&Segment| other.start < end && segment.start < other.end) {
            return Err(LoadError::SegmentsOverlap {
                first: other.index,
                second: index,
                start: segment.start.max(other.start),
                end: end.min(other.end),
            });
        }
        segments.push(segment);
    }
    if segments.is_empty() {
        return Err(LoadError::NoSegments);
    }
    let entry = match entry {
        Some(entry) => check_entry(entry, memory_size, CpuMode::Long)?,
        None if !(IMAGE_BASE..memory_size).contains(&header.e_entry) => {
            return Err(LoadError::EntryOutsideMemory { entry: header.e_entry, memory_end: memory_size });
        }
        None => header.e_entry,
    };

    for segment in &segments {
        write(memory, segment.start, segment.bytes);
        let zero_from = segment.start + segment.bytes.len() as u64;
        write(memory, zero_from, &vec![0; segment.zeroed as usize]);
    }
    let start = segments.iter().map(|segment| segment.start).min().unwrap_or(IMAGE_BASE);
    let end = segments.iter().map(|segment| segment.end).max().unwrap_or(IMAGE_BASE);
    Ok(LoadedImage { entry, kind: ImageKind::Elf, span: start..end })
}

fn check_segment<'a>(
    index: usize,
    phdr: &Elf64_Phdr,
    image: &'a [u8],
    memory_size: u64,
) -> Result<Segment<'a>, LoadError> {
    if phdr.p_filesz > phdr.p_memsz {
        return Err(LoadError::BadElf("a segment has more bytes in the file than in memory"));
    }
    let bytes = usize::try_from(phdr.p_offset)
        .ok()
        .zip(usize::try_from(phdr.p_filesz).ok())
        .and_then(|(offset, len)| image.get(offset..offset.checked_add(len)?))
        .ok_or(LoadError::BadElf("a segment's bytes lie past the end of the file"))?;
    let start = phdr.p_paddr;
    let end = start.checked_add(phdr.p_memsz);
    match end {
        Some(end) if start >= IMAGE_BASE && end <= memory_size => {
            Ok(Segment { index, start, end, bytes, zeroed: phdr.p_memsz - phdr.p_filesz })
        }
        _ => {
            Err(LoadError::SegmentOutsideMemory { index, start, end: end.unwrap_or(u64::MAX), memory_end: memory_size })
        }
    }
}

/// Copies a header out of the file (whose bytes have no particular alignment).
fn read_struct<T: ByteValued + Default>(image: &[u8], offset: u64) -> Option<T> {
    let offset = usize::try_from(offset).ok()?;
    let bytes = image.get(offset..offset.checked_add(size_of::<T>())?)?;
    let mut value = T::default();
    value.as_mut_slice().copy_from_slice(bytes);
    Some(value)
}

/// Writes bytes whose range was checked against memory just before.
fn write(memory: &GuestMemory, at: u64, bytes: &[u8]) {
    memory.write_slice(bytes, GuestAddress(at)).expect("range checked against guest memory before writing");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::memory;

    const MIB2: u64 = 2 << 20;

    /// A minimal static ELF64 with the given PT_LOAD segments (paddr, file bytes, memsz).
    pub(crate) fn elf(entry: u64, e_type: u16, segments: &[(u64, &[u8], u64)]) -> Vec<u8> {
        let ehdr_size = size_of::<Elf64_Ehdr>();
        let phdr_size = size_of::<Elf64_Phdr>();
        let mut data_offset = ehdr_size + phdr_size * segments.len();
        let mut header = Elf64_Ehdr::default();
        header.e_ident[..4].copy_from_slice(ELF_MAGIC);
        header.e_ident[EI_CLASS] = ELFCLASS64;
        header.e_ident[EI_DATA] = ELFDATA2LSB;
        header.e_type = e_type;
        header.e_machine = EM_X86_64;
        header.e_entry = entry;
        header.e_phoff = ehdr_size as u64;
        header.e_phentsize = phdr_size as u16;
        header.e_phnum = segments.len() as u16;
        let mut file = header.as_slice().to_vec();
        let mut payload = Vec::new();
        for (paddr, bytes, memsz) in segments {
            let phdr = Elf64_Phdr {
                p_type: PT_LOAD,
                p_offset: data_offset as u64,
                p_vaddr: *paddr,
                p_paddr: *paddr,
                p_filesz: bytes.len() as u64,
                p_memsz: *memsz,
                ..Default::default()
            };
            file.extend_from_slice(phdr.as_slice());
            payload.extend_from_slice(bytes);
            data_offset += bytes.len();
        }
        file.extend(payload);
        file
    }

    fn load(mem: &GuestMemory, size: u64, image: &[u8]) -> Result<LoadedImage, LoadError> {
        super::load(mem, size, image, GuestLayout::default())
    }

    fn read(mem: &GuestMemory, at: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        mem.read_slice(&mut buf, GuestAddress(at)).unwrap();
        buf
    }

    #[test]
    fn flat_images_load_at_the_base() {
        let mem = memory::allocate(MIB2).unwrap();
        let loaded = load(&mem, MIB2, &[0xf4, 0x90]).unwrap();
        assert_eq!(loaded, LoadedImage { entry: 0x10000, kind: ImageKind::Flat, span: 0x10000..0x10002 });
        assert_eq!(read(&mem, 0x10000, 3), [0xf4, 0x90, 0]);
    }

    #[test]
    fn flat_images_load_and_start_where_the_vm_says() {
        let mem = memory::allocate(MIB2).unwrap();
        let at_zero = GuestLayout { mode: CpuMode::Real, load: Some(0), entry: None };
        let loaded = super::load(&mem, MIB2, &[0xf4], at_zero).unwrap();
        assert_eq!((loaded.entry, loaded.span), (0, 0..1));
        assert_eq!(read(&mem, 0, 1), [0xf4]);
        let entered = GuestLayout { mode: CpuMode::Protected, load: Some(0x8000), entry: Some(0x8010) };
        assert_eq!(super::load(&mem, MIB2, &[0x90; 32], entered).unwrap().entry, 0x8010);
    }

    #[test]
    fn layouts_that_cannot_work_are_refused_before_a_write() {
        let mem = memory::allocate(MIB2).unwrap();
        let layout = |mode, load, entry| GuestLayout { mode, load, entry };
        let outside = super::load(&mem, MIB2, &[0xf4], layout(CpuMode::Long, Some(0), Some(MIB2))).unwrap_err();
        assert_eq!(outside, LoadError::EntryOutside { entry: MIB2, memory_end: MIB2 });
        let high = super::load(&mem, 4 * MIB2, &[0xf4], layout(CpuMode::Real, Some(0x10_0000), None));
        assert_eq!(high.unwrap_err(), LoadError::RealModeEntry(0x10_0000));
        let too_big = super::load(&mem, MIB2, &[0x90; 16], layout(CpuMode::Long, Some(MIB2 - 8), None));
        assert_eq!(too_big.unwrap_err(), LoadError::FlatTooLarge { size: 16, load: MIB2 - 8, room: 8 });
        let image = elf(0x10000, ET_EXEC, &[(0x10000, &[0xf4], 1)]);
        assert_eq!(
            super::load(&mem, MIB2, &image, layout(CpuMode::Long, Some(0), None)),
            Err(LoadError::LoadWithElf(0))
        );
        assert_eq!(
            super::load(&mem, MIB2, &image, layout(CpuMode::Protected, None, None)),
            Err(LoadError::ElfOutsideLongMode("protected"))
        );
        let mut elf32 = image.clone();
        elf32[EI_CLASS] = ELFCLASS32;
        let error = super::load(&mem, MIB2, &elf32, layout(CpuMode::Protected, None, None)).unwrap_err();
        assert!(error.to_string().contains("--oformat binary"), "{error}");
        assert_eq!(read(&mem, 0, 4), [0; 4], "nothing was written");
    }

    #[test]
    fn elf_segments_load_where_they_say_and_bss_is_zero() {
        let mem = memory::allocate(MIB2).unwrap();
        mem.write_slice(&[0xaa; 8], GuestAddress(0x20004)).unwrap();
        let image = elf(0x10010, ET_EXEC, &[(0x10000, &[1, 2, 3], 3), (0x20000, &[9; 4], 12)]);
        let loaded = load(&mem, MIB2, &image).unwrap();
        assert_eq!(loaded, LoadedImage { entry: 0x10010, kind: ImageKind::Elf, span: 0x10000..0x2000c });
        assert_eq!(read(&mem, 0x10000, 3), [1, 2, 3]);
        assert_eq!(read(&mem, 0x20000, 12), [9, 9, 9, 9, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn bad_images_are_refused_with_a_reason() {
        let mem = memory::allocate(MIB2).unwrap();
        assert_eq!(load(&mem, MIB2, &[]), Err(LoadError::Empty));
        assert_eq!(
            load(&mem, MIB2, &vec![0x90; MIB2 as usize]),
            Err(LoadError::FlatTooLarge { size: MIB2, load: 0x10000, room: MIB2 - 0x10000 })
        );
        assert!(matches!(load(&mem, MIB2, b"\x7fELF\x02\x01"), Err(LoadError::BadElf(_))));
        let pie = elf(0x10000, ET_DYN, &[(0x10000, &[0xf4], 1)]);
        assert!(matches!(load(&mem, MIB2, &pie), Err(LoadError::WrongElfKind(_))));
        let past_end = elf(0x10000, ET_EXEC, &[(0x10000, &[0xf4], 1), (MIB2 - 4, &[0; 8], 8)]);
        assert_eq!(
            load(&mem, MIB2, &past_end),
            Err(LoadError::SegmentOutsideMemory { index: 1, start: MIB2 - 4, end: MIB2 + 4, memory_end: MIB2 })
        );
        let over_tables = elf(0x10000, ET_EXEC, &[(0x2000, &[0; 8], 8)]);
        assert!(matches!(load(&mem, MIB2, &over_tables), Err(LoadError::SegmentOutsideMemory { .. })));
        let wrapping = elf(0x10000, ET_EXEC, &[(u64::MAX - 2, &[0; 8], 8)]);
        assert!(matches!(load(&mem, MIB2, &wrapping), Err(LoadError::SegmentOutsideMemory { end: u64::MAX, .. })));
        let bad_entry = elf(0x5000, ET_EXEC, &[(0x10000, &[0xf4], 1)]);
        assert!(matches!(load(&mem, MIB2, &bad_entry), Err(LoadError::EntryOutsideMemory { .. })));
        // Nothing was written by the refused images.
        assert_eq!(read(&mem, 0x10000, 2), [0, 0]);
    }

    #[test]
    fn empty_overlapping_and_dynamic_elf_files_are_refused() {
        let mem = memory::allocate(MIB2).unwrap();
        assert_eq!(load(&mem, MIB2, &elf(0x10000, ET_EXEC, &[])), Err(LoadError::NoSegments));
        let overlapping = elf(0x10000, ET_EXEC, &[(0x10000, &[0xf4; 16], 16), (0x10008, &[0x90; 16], 16)]);
        assert_eq!(
            load(&mem, MIB2, &overlapping),
            Err(LoadError::SegmentsOverlap { first: 0, second: 1, start: 0x10008, end: 0x10010 })
        );
        let mut dynamic = elf(0x10000, ET_EXEC, &[(0x10000, &[0xf4], 1)]);
        // The one program header becomes PT_INTERP.
        let at = size_of::<Elf64_Ehdr>();
        dynamic[at..at + 4].copy_from_slice(&PT_INTERP.to_le_bytes());
        assert_eq!(load(&mem, MIB2, &dynamic), Err(LoadError::Interpreter));
        assert_eq!(read(&mem, 0x10000, 1), [0], "nothing was written");
    }

    #[test]
    fn truncated_program_headers_are_refused() {
        let mem = memory::allocate(MIB2).unwrap();
        let mut image = elf(0x10000, ET_EXEC, &[(0x10000, &[0xf4], 1)]);
        image.truncate(size_of::<Elf64_Ehdr>() + 10);
        assert!(matches!(load(&mem, MIB2, &image), Err(LoadError::BadElf(_))));
    }
}
