//! Lock records: what a guest tells the hypervisor of its spinlocks without
//! an exit. With HC_lockWatch(address) the guest names a table of one
//! 32-byte record per vCPU, within one page; from then on it writes them as
//! it runs, and the hypervisor reads them when a vCPU's quantum ends (was it
//! holding the lock, or waiting for it?) and when it samples the VM
//! (critical sections done, loop iterations spun and worked). The guest is
//! not trusted: a record says only what the guest claims, and is shown as
//! such.
//!
//! A record, little-endian, at `address + 32 * vcpu`:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | state: 1 holds a lock, 2 waits for one, anything else neither |
//! | 4 | 4 | zero (reserved) |
//! | 8 | 8 | critical sections this vCPU has done |
//! | 16 | 8 | loop iterations it spent spinning for a lock |
//! | 24 | 8 | loop iterations it spent on anything else |

use vm_memory::{Bytes, GuestAddress};

use super::guest::{GuestView, PointerError, Translate, linear_pointer};
use crate::vm::{CpuMode, GuestMemory};

/// Bytes of one vCPU's record.
pub const RECORD_SIZE: u64 = 32;

/// The page the whole table must lie in.
const PAGE: u64 = 4096;

/// What one vCPU's record said when it was read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockRecord {
    /// Whether it holds a lock, waits for one, or neither.
    pub state: LockState,
    /// Critical sections it has done.
    pub sections: u64,
    /// Loop iterations it spent spinning.
    pub spins: u64,
    /// Loop iterations it spent on anything else.
    pub work: u64,
}

/// A vCPU's part in the guest's locking, as its record says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LockState {
    /// Neither holds nor waits.
    #[default]
    Neither,
    /// Holds a lock.
    Holds,
    /// Waits for one.
    Waits,
}

/// Why HC_lockWatch refused an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    /// The pointer does not lead into guest memory.
    #[error("{0}")]
    Pointer(PointerError),
    /// Records must start on a 32-byte boundary.
    #[error("0x{0:x} is not a multiple of 32")]
    Unaligned(u64),
    /// The table runs past its page.
    #[error("{vcpus} records of 32 bytes from 0x{gva:x} run past the end of its 4 KiB page; put the table in one page")]
    CrossesPage {
        /// The address the guest gave.
        gva: u64,
        /// The VM's vCPUs.
        vcpus: u32,
    },
}

/// Where the table of `vcpus` records the guest names with `value` lies in
/// guest physical memory; None for 0 (the guest stops sharing them).
pub fn place<T: Translate + ?Sized>(
    guest: &GuestView<'_, T>,
    mode: CpuMode,
    value: u32,
    vcpus: u32,
) -> Result<Option<u64>, PlaceError> {
    if value == 0 {
        return Ok(None);
    }
    let gva = linear_pointer(mode, value, guest.translator).map_err(PlaceError::Pointer)?.linear;
    if gva % RECORD_SIZE != 0 {
        return Err(PlaceError::Unaligned(gva));
    }
    if gva % PAGE + u64::from(vcpus) * RECORD_SIZE > PAGE {
        return Err(PlaceError::CrossesPage { gva, vcpus });
    }
    // One page: its physical place is where its first byte maps.
    let gpa = guest.physical(gva).map_err(PlaceError::Pointer)?;
    if gpa - gpa % PAGE + PAGE > guest.memory_size {
        return Err(PlaceError::Pointer(PointerError::OutsideMemory { gva, gpa }));
    }
    Ok(Some(gpa))
}

/// Reads vCPU `vcpu`'s record of the table at `table` (guest physical, as
/// [`place`] found it); None if it is not in guest memory.
pub fn read(memory: &GuestMemory, table: u64, vcpu: usize) -> Option<LockRecord> {
    let mut bytes = [0u8; RECORD_SIZE as usize];
    memory.read_slice(&mut bytes, GuestAddress(table + vcpu as u64 * RECORD_SIZE)).ok()?;
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let state = match u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) {
        1 => LockState::Holds,
        2 => LockState::Waits,
        _ => LockState::Neither,
    };
    Some(LockRecord { state, sections: word(8), spins: word(16), work: word(24) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypercall::guest::tests::FakeTables;
    use crate::vm::memory;

    const SIZE: u64 = 2 << 20;

    fn view<'a>(memory: &'a GuestMemory, tables: &'a FakeTables) -> GuestView<'a, FakeTables> {
        GuestView { memory, memory_size: SIZE, translator: tables }
    }

    #[test]
    fn a_table_in_one_page_of_memory_is_placed_and_anything_else_is_refused_with_why() {
        let memory = memory::allocate(SIZE).unwrap();
        let tables = FakeTables { mapped: SIZE, remap: vec![] };
        let guest = view(&memory, &tables);
        assert_eq!(place(&guest, CpuMode::Long, 0x8000, 4), Ok(Some(0x8000)));
        assert_eq!(place(&guest, CpuMode::Long, 0x8f80, 4), Ok(Some(0x8f80)));
        assert_eq!(place(&guest, CpuMode::Long, 0, 4), Ok(None));
        assert_eq!(place(&guest, CpuMode::Long, 0x8008, 4), Err(PlaceError::Unaligned(0x8008)));
        let crossing = place(&guest, CpuMode::Long, 0x8fa0, 4).unwrap_err();
        assert_eq!(crossing, PlaceError::CrossesPage { gva: 0x8fa0, vcpus: 4 });
        assert!(crossing.to_string().contains("put the table in one page"), "{crossing}");
        let outside = place(&guest, CpuMode::Long, SIZE as u32, 1).unwrap_err();
        assert!(matches!(outside, PlaceError::Pointer(_)), "{outside:?}");
    }

    #[test]
    fn records_read_as_the_guest_wrote_them_and_an_unknown_state_is_neither() {
        let memory = memory::allocate(SIZE).unwrap();
        let mut bytes = Vec::new();
        for (state, sections, spins, work) in [(1u32, 7u64, 30u64, 70u64), (2, 1, 2, 3), (9, 0, 0, 0)] {
            bytes.extend(state.to_le_bytes());
            bytes.extend(0u32.to_le_bytes());
            for value in [sections, spins, work] {
                bytes.extend(value.to_le_bytes());
            }
        }
        memory.write_slice(&bytes, GuestAddress(0x8000)).unwrap();
        let first = read(&memory, 0x8000, 0).unwrap();
        assert_eq!(first, LockRecord { state: LockState::Holds, sections: 7, spins: 30, work: 70 });
        assert_eq!(read(&memory, 0x8000, 1).unwrap().state, LockState::Waits);
        assert_eq!(read(&memory, 0x8000, 2).unwrap().state, LockState::Neither);
        assert_eq!(read(&memory, SIZE - 16, 0), None);
    }
}
