//! The one checked path from guest-supplied addresses to guest memory: every
//! pointer a guest hands the hypervisor is first made linear as its CPU mode
//! says ([`linear_pointer`]: DS:offset in real mode), then translated by the
//! guest's own page tables (KVM_TRANSLATE, the identity without paging) and
//! bounds-checked against guest memory here.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend as _};

use crate::vm::{CpuMode, GuestMemory, Vcpu};

/// Translates guest virtual addresses the way the vCPU would.
pub trait Translate {
    /// The guest physical address `gva` maps to, or None if it is not mapped.
    fn translate(&self, gva: u64) -> Option<u64>;
    /// The base of the data segment (DS), which real-mode pointers are offsets in.
    fn data_segment_base(&self) -> u64;
}

impl Translate for Vcpu {
    fn translate(&self, gva: u64) -> Option<u64> {
        Vcpu::translate(self, gva)
    }

    fn data_segment_base(&self) -> u64 {
        Vcpu::data_segment_base(self)
    }
}

/// A pointer a hypercall was given, made linear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearPointer {
    /// The linear address (what the page tables translate).
    pub linear: u64,
    /// In real mode, the bytes from it to the end of its 64 KiB segment.
    pub segment_left: Option<u64>,
}

/// The linear address of pointer `value` as code in `mode` sees it: DS base
/// plus a 16-bit offset in real mode, the value itself in the other modes.
pub fn linear_pointer<T: Translate + ?Sized>(
    mode: CpuMode,
    value: u32,
    translator: &T,
) -> Result<LinearPointer, PointerError> {
    if mode != CpuMode::Real {
        return Ok(LinearPointer { linear: u64::from(value), segment_left: None });
    }
    if value > 0xffff {
        return Err(PointerError::NotAnOffset(value));
    }
    let linear = translator.data_segment_base() + u64::from(value);
    Ok(LinearPointer { linear, segment_left: Some(0x1_0000 - u64::from(value)) })
}

/// Guest memory seen through the guest's page tables.
pub struct GuestView<'a, T: Translate + ?Sized> {
    /// Guest memory.
    pub memory: &'a GuestMemory,
    /// Its size in bytes.
    pub memory_size: u64,
    /// The vCPU's translation.
    pub translator: &'a T,
}

/// Why a guest pointer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointerError {
    /// The guest's page tables do not map this address.
    NotMapped(u64),
    /// It maps to guest physical memory that does not exist.
    OutsideMemory {
        /// The address the guest gave.
        gva: u64,
        /// Where it maps to.
        gpa: u64,
    },
    /// No NUL within the longest string allowed.
    NoNulWithin(usize),
    /// The string runs into the end of guest memory before its NUL.
    NoNulBeforeEndOfMemory,
    /// A real-mode pointer wider than 16 bits.
    NotAnOffset(u32),
    /// A real-mode string runs to the end of its 64 KiB segment before its NUL.
    NoNulInSegment(u32),
}

impl std::fmt::Display for PointerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotMapped(gva) => write!(f, "0x{gva:x} is not mapped by the guest's page tables"),
            Self::OutsideMemory { gva, gpa } => {
                write!(f, "0x{gva:x} maps to 0x{gpa:x}, past the end of guest memory")
            }
            Self::NoNulWithin(limit) => write!(f, "no NUL within {limit} bytes"),
            Self::NoNulBeforeEndOfMemory => write!(f, "no NUL before the end of guest memory"),
            Self::NotAnOffset(value) => {
                write!(f, "0x{value:x} is not a 16-bit offset (a real-mode pointer is DS:offset)")
            }
            Self::NoNulInSegment(offset) => {
                write!(f, "DS:0x{offset:x} runs to the end of its 64 KiB segment before a NUL")
            }
        }
    }
}

const PAGE_4K: u64 = 4096;

impl<T: Translate + ?Sized> GuestView<'_, T> {
    /// Translates `gva` to a guest physical address inside guest memory.
    pub fn physical(&self, gva: u64) -> Result<u64, PointerError> {
        let gpa = self.translator.translate(gva).ok_or(PointerError::NotMapped(gva))?;
        if gpa >= self.memory_size {
            return Err(PointerError::OutsideMemory { gva, gpa });
        }
        Ok(gpa)
    }

    /// The host virtual address backing `gva`.
    pub fn host_address(&self, gva: u64) -> Result<u64, PointerError> {
        let gpa = self.physical(gva)?;
        let host = self.memory.get_host_address(GuestAddress(gpa));
        host.map(|ptr| ptr as u64).map_err(|_| PointerError::OutsideMemory { gva, gpa })
    }

    /// Reads guest memory at `gva` into `buf`, page by page through the
    /// guest's page tables; returns how many bytes were read before the first
    /// address that does not map to guest memory (0 if `gva` does not).
    pub fn read(&self, gva: u64, buf: &mut [u8]) -> usize {
        self.pages(gva, buf.len(), |gpa, range| self.memory.read_slice(&mut buf[range], GuestAddress(gpa)).is_ok())
    }

    /// Writes `bytes` at `gva`, page by page; all or nothing: nothing is
    /// written unless every byte maps to guest memory.
    pub fn write(&self, gva: u64, bytes: &[u8]) -> Result<(), PointerError> {
        let mapped = self.pages(gva, bytes.len(), |_, _| true);
        if mapped < bytes.len() {
            let at = gva.wrapping_add(mapped as u64);
            return Err(self.physical(at).err().unwrap_or(PointerError::NotMapped(at)));
        }
        self.pages(gva, bytes.len(), |gpa, range| self.memory.write_slice(&bytes[range], GuestAddress(gpa)).is_ok());
        Ok(())
    }

    /// Walks `length` bytes from `gva` a page at a time, calling `visit` with
    /// each piece's guest physical address and its range in the buffer;
    /// returns how many bytes were visited before one did not map (or
    /// `visit` refused).
    fn pages(&self, gva: u64, length: usize, mut visit: impl FnMut(u64, std::ops::Range<usize>) -> bool) -> usize {
        let mut done = 0;
        while done < length {
            let Some(address) = gva.checked_add(done as u64) else { break };
            let Ok(gpa) = self.physical(address) else { break };
            let page_left = PAGE_4K - (address % PAGE_4K);
            let piece = page_left.min((length - done) as u64).min(self.memory_size - gpa) as usize;
            if !visit(gpa, done..done + piece) {
                break;
            }
            done += piece;
        }
        done
    }

    /// Reads the NUL-terminated string at `gva` (without its NUL), reading at
    /// most `limit` bytes, the NUL included. Each 4 KiB page is translated on its
    /// own, since contiguous virtual pages need not be contiguous in memory.
    pub fn c_string(&self, gva: u64, limit: usize) -> Result<Vec<u8>, PointerError> {
        let mut text = Vec::new();
        let mut address = gva;
        while text.len() < limit {
            let page_left = PAGE_4K - (address % PAGE_4K);
            let want = page_left.min((limit - text.len()) as u64);
            let gpa = match self.physical(address) {
                Ok(gpa) => gpa,
                // The page after the last one of memory is never usable.
                Err(_) if !text.is_empty() && self.physical(address - 1) == Ok(self.memory_size - 1) => {
                    return Err(PointerError::NoNulBeforeEndOfMemory);
                }
                Err(error) => return Err(error),
            };
            let available = want.min(self.memory_size - gpa);
            let mut chunk = vec![0u8; available as usize];
            self.memory
                .read_slice(&mut chunk, GuestAddress(gpa))
                .map_err(|_| PointerError::OutsideMemory { gva: address, gpa })?;
            if let Some(nul) = chunk.iter().position(|&b| b == 0) {
                text.extend_from_slice(&chunk[..nul]);
                return Ok(text);
            }
            text.extend_from_slice(&chunk);
            if available < want {
                return Err(PointerError::NoNulBeforeEndOfMemory);
            }
            address = address.checked_add(want).ok_or(PointerError::NotMapped(u64::MAX))?;
        }
        Err(PointerError::NoNulWithin(limit))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::vm::memory;

    /// Identity mapping of the low `mapped` bytes, like the hypervisor's tables;
    /// pages listed in `remap` map elsewhere.
    #[derive(Clone)]
    pub(crate) struct FakeTables {
        pub mapped: u64,
        pub remap: Vec<(u64, u64)>,
    }

    impl Translate for FakeTables {
        fn translate(&self, gva: u64) -> Option<u64> {
            let page = gva & !0xfff;
            if let Some(&(_, to)) = self.remap.iter().find(|(from, _)| *from == page) {
                return Some(to + (gva & 0xfff));
            }
            (gva < self.mapped).then_some(gva)
        }

        /// Real-mode tests run with DS = 0x1000, as the Matrix starter does.
        fn data_segment_base(&self) -> u64 {
            0x10000
        }
    }

    #[test]
    fn real_mode_pointers_are_offsets_in_ds_and_the_others_are_linear() {
        let tables = FakeTables { mapped: SIZE, remap: vec![] };
        let real = linear_pointer(CpuMode::Real, 0x20, &tables).unwrap();
        assert_eq!(real, LinearPointer { linear: 0x10020, segment_left: Some(0xffe0) });
        assert_eq!(linear_pointer(CpuMode::Real, 0x1_0000, &tables), Err(PointerError::NotAnOffset(0x1_0000)));
        for mode in [CpuMode::Protected, CpuMode::Paged32, CpuMode::Long] {
            assert_eq!(linear_pointer(mode, 0x20, &tables).unwrap().linear, 0x20);
        }
    }

    const SIZE: u64 = 2 << 20;

    fn view<'a>(mem: &'a GuestMemory, tables: &'a FakeTables) -> GuestView<'a, FakeTables> {
        GuestView { memory: mem, memory_size: SIZE, translator: tables }
    }

    #[test]
    fn strings_are_read_up_to_their_nul() {
        let mem = memory::allocate(SIZE).unwrap();
        let tables = FakeTables { mapped: SIZE, remap: vec![] };
        mem.write_slice(b"hello\0world", GuestAddress(0x8000)).unwrap();
        assert_eq!(view(&mem, &tables).c_string(0x8000, 4096), Ok(b"hello".to_vec()));
    }

    #[test]
    fn the_limit_counts_the_nul() {
        let mem = memory::allocate(SIZE).unwrap();
        let tables = FakeTables { mapped: SIZE, remap: vec![] };
        mem.write_slice(&[b'a'; 4095], GuestAddress(0x8000)).unwrap();
        assert_eq!(view(&mem, &tables).c_string(0x8000, 4096).unwrap().len(), 4095);
        mem.write_slice(&[b'a'; 4096], GuestAddress(0x8000)).unwrap();
        assert_eq!(view(&mem, &tables).c_string(0x8000, 4096), Err(PointerError::NoNulWithin(4096)));
    }

    #[test]
    fn strings_follow_the_page_tables_across_pages() {
        let mem = memory::allocate(SIZE).unwrap();
        let tables = FakeTables { mapped: SIZE, remap: vec![(0x9000, 0x20000)] };
        mem.write_slice(b"ab", GuestAddress(0x8ffe)).unwrap();
        mem.write_slice(b"cd\0", GuestAddress(0x20000)).unwrap();
        assert_eq!(view(&mem, &tables).c_string(0x8ffe, 4096), Ok(b"abcd".to_vec()));
    }

    #[test]
    fn bad_pointers_are_refused() {
        let mem = memory::allocate(SIZE).unwrap();
        let tables = FakeTables { mapped: SIZE, remap: vec![(0x30_0000, 1 << 30)] };
        let v = view(&mem, &tables);
        assert_eq!(v.c_string(0x8000_0000, 4096), Err(PointerError::NotMapped(0x8000_0000)));
        assert_eq!(v.c_string(0x30_0000, 4096), Err(PointerError::OutsideMemory { gva: 0x30_0000, gpa: 1 << 30 }));
        mem.write_slice(&[b'z'; 8], GuestAddress(SIZE - 8)).unwrap();
        assert_eq!(v.c_string(SIZE - 8, 4096), Err(PointerError::NoNulBeforeEndOfMemory));
        // A string whose second page is unmapped.
        mem.write_slice(&[b'y'; 16], GuestAddress(SIZE - 4096 - 16)).unwrap();
        let short = FakeTables { mapped: SIZE - 4096, remap: vec![] };
        let v = view(&mem, &short);
        assert_eq!(v.c_string(SIZE - 4096 - 16, 4096), Err(PointerError::NotMapped(SIZE - 4096)));
    }

    #[test]
    fn memory_is_read_and_written_through_the_page_tables_up_to_the_first_hole() {
        let mem = memory::allocate(SIZE).unwrap();
        let tables = FakeTables { mapped: 0x10000, remap: vec![(0x3000, 0x20000)] };
        let v = view(&mem, &tables);
        v.write(0x2ffe, b"abcd").unwrap();
        assert_eq!(mem.read_obj::<[u8; 2]>(GuestAddress(0x2ffe)).unwrap(), *b"ab");
        assert_eq!(mem.read_obj::<[u8; 2]>(GuestAddress(0x20000)).unwrap(), *b"cd");
        let mut buf = [0u8; 4];
        assert_eq!(v.read(0x2ffe, &mut buf), 4);
        assert_eq!(&buf, b"abcd");
        // The first unmapped byte ends a read; a write is all or nothing.
        let mut buf = [0u8; 8];
        assert_eq!(v.read(0xfffc, &mut buf), 4);
        assert_eq!(v.read(0x8000_0000, &mut buf), 0);
        assert_eq!(v.write(0xfffc, &[1; 8]), Err(PointerError::NotMapped(0x10000)));
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0xfffc)).unwrap(), 0);
    }

    #[test]
    fn addresses_at_the_u32_and_u64_limits_do_not_overflow() {
        let mem = memory::allocate(SIZE).unwrap();
        let everything = FakeTables { mapped: u64::MAX, remap: vec![] };
        let v = view(&mem, &everything);
        assert!(v.c_string(u64::from(u32::MAX), 4096).is_err());
        assert!(v.c_string(u64::MAX, 4096).is_err());
        assert!(v.host_address(u64::MAX).is_err());
    }
}
