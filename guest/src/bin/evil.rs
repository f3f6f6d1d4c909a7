//! Breaks every rule of the guest ABI once, with a marker line before each
//! attempt, then halts. The hypervisor must answer each with a clear line (or an
//! escaped rendering) and keep the VM running.
#![no_std]
#![no_main]

use matrix_guest::{hc, io};

matrix_guest::entry!(main);

/// Page directory built by the hypervisor: 512 entries of 2 MiB pages.
const PAGE_DIRECTORY: u64 = 0x4000;
const PAGE_PRESENT_RW_HUGE: u64 = 0x83;
const TWO_MIB: u64 = 2 << 20;
/// A guest physical address past the end of any guest memory (at most 1 GiB).
const PAST_MEMORY_GPA: u64 = 1 << 30;
/// Not mapped: the hypervisor maps only the first GiB.
const UNMAPPED_GVA: u32 = 0x8000_0000;

fn marker(text: &core::ffi::CStr) {
    hc::print_str(text);
}

fn main() {
    marker(c"evil: 1 printStr of an unmapped address\n");
    hc::print_str_at(UNMAPPED_GVA);

    marker(c"evil: 2 printStr of an address mapped past the end of memory\n");
    let (past_memory_gva, memory_end) = map_page_past_memory();
    hc::print_str_at(past_memory_gva);

    marker(c"evil: 3 printStr of a string with no NUL in 4096 bytes\n");
    let no_nul = [b'A'; 5000];
    hc::print_str_at(no_nul.as_ptr() as u64 as u32);

    marker(c"evil: 4 printStr of a string running into the end of memory\n");
    let tail = (memory_end - 8) as *mut u8;
    // SAFETY: the last 8 bytes of memory hold only _start's return address,
    // which this guest never returns to (main ends in halt_forever).
    unsafe { core::ptr::write_bytes(tail, b'Z', 8) };
    hc::print_str_at(tail as u64 as u32);

    marker(c"evil: 5 out to an unknown port\n");
    io::outb(0x80, 0x42);

    marker(c"evil: 6 in from an unknown port, expect 4294967295\n");
    hc::print32(io::inl(0x1234));

    marker(c"evil: 7 print8bit with a 16-bit access\n");
    io::outw(hc::PORT_PRINT8, 0x4141);

    marker(c"evil: 8 numExits with an 8-bit access, expect 255\n");
    hc::print32(u32::from(io::inb(hc::PORT_NUM_EXITS)));

    marker(c"evil: 9 out to the in-only numExits port\n");
    io::outl(hc::PORT_NUM_EXITS, 7);

    marker(c"evil: 10 in from the out-only print32bit port, expect 4294967295\n");
    hc::print32(io::inl(hc::PORT_PRINT32));

    marker(c"evil: 11 escape sequences and control bytes\n");
    hc::print_str(c"\x1b[2J\x1b[31mred\x1b[0m bell\x07 back\x08space\r\n");

    marker(c"evil: 12 gvaToHva of an unmapped address, expect 0\n");
    hc::print32(hc::gva_to_hva(UNMAPPED_GVA));

    marker(c"evil: 13 gvaToHva of an address mapped past the end of memory, expect 0\n");
    hc::print32(hc::gva_to_hva(past_memory_gva));

    marker(c"evil: done, halting\n");
    // Never return: step 4 wrote over the return address in _start's frame.
    matrix_guest::halt_forever()
}

/// Points the first unused page-directory entry at guest physical memory that
/// does not exist. Returns that page's GVA and the end of real memory.
fn map_page_past_memory() -> (u32, u64) {
    let directory = PAGE_DIRECTORY as *mut u64;
    // SAFETY: the page directory is identity-mapped guest memory; the entry
    // written is the first one the hypervisor left empty (memory ends there).
    unsafe {
        let mut used = 0;
        while used < 512 && directory.add(used).read_volatile() & 1 != 0 {
            used += 1;
        }
        let memory_end = used as u64 * TWO_MIB;
        if used == 512 {
            // 1 GiB of memory: no free entry below 4 GiB to play with.
            return (UNMAPPED_GVA, memory_end);
        }
        directory.add(used).write_volatile(PAST_MEMORY_GPA | PAGE_PRESENT_RW_HUGE);
        core::arch::asm!("invlpg [{}]", in(reg) memory_end, options(nostack));
        (memory_end as u32, memory_end)
    }
}
