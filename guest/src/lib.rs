//! The guest SDK of matrix-tui: safe wrappers for every hypercall of the guest
//! ABI (the README's hypercall table), guest arguments, a formatting console and
//! the entry point.
//!
//! A guest is a `#![no_std] #![no_main]` binary that says `matrix_guest::entry!(main);`
//! and gets a `fn main()` run in 64-bit long mode with a stack at the top of memory.
//! When `main` returns the guest halts, which ends the VM normally. A VM of
//! several vCPUs runs `main` on each, each on a stack of its own ([`smp`]).
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! use matrix_guest::{entry, hc};
//! entry!(main);
//! fn main() {
//!     hc::print_str(c"Hello from a guest\n");
//!     hc::print32(hc::num_exits());
//! }
//! ```
#![no_std]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod args;
pub mod console;
pub mod demo;
pub mod hc;
pub mod interrupts;
pub mod io;
pub mod lock_records;
mod mem;
pub mod smp;
pub mod work;

pub use console::Console;

/// Stops the vCPU. The hypervisor treats HLT as the end of the VM.
#[inline(always)]
pub fn hlt() {
    // SAFETY: HLT touches no memory; in this VM it exits to the hypervisor.
    unsafe { core::arch::asm!("hlt", options(nomem, nostack, preserves_flags)) }
}

/// Halts for good: what a guest does when it is done.
pub fn halt_forever() -> ! {
    loop {
        hlt();
    }
}

/// Declares the guest's entry point: `entry!(main)` runs `fn main()` and halts
/// when it returns.
///
/// `_start` realigns the stack to 16 bytes before the call, as the System V ABI
/// expects, whatever the hypervisor put in RSP.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        core::arch::global_asm!(
            ".section .text._start, \"ax\"",
            ".global _start",
            "_start:",
            "    and rsp, -16",
            "    call {main}",
            "2:  hlt",
            "    jmp 2b",
            main = sym __matrix_guest_main,
        );

        #[doc(hidden)]
        extern "C" fn __matrix_guest_main() {
            let main: fn() = $main;
            main();
        }
    };
}

/// A guest that panics prints where and halts.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::fmt::Write;
    let mut out = Console::new();
    let _ = writeln!(out, "guest panic: {}", info.message());
    if let Some(location) = info.location() {
        let _ = writeln!(out, "  at {}:{}", location.file(), location.line());
    }
    out.flush();
    halt_forever()
}
