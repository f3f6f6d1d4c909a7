//! A tiny guest kernel: two tasks, A and B, each doing busy work, switched
//! by the guest's own timer interrupt every 50 ms (argument 0: the period in
//! µs). Each task prints a line when it gets the CPU back: which task runs,
//! the switch it came in on and the work it has done so far. The hypervisor
//! schedules the VM; inside it, this kernel splits the VM's share between
//! its tasks: two levels of scheduling.
#![no_std]
#![no_main]

use core::arch::naked_asm;
use core::cell::UnsafeCell;
use core::fmt::Write;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use matrix_guest::{Console, args, interrupts, work};

matrix_guest::entry!(main);

const STACK_SIZE: usize = 16 * 1024;

/// Task B's stack (task A runs on the stack the VM started with).
#[repr(C, align(16))]
struct Stack(UnsafeCell<[u8; STACK_SIZE]>);

// SAFETY: only task B runs on it, and `main` writes its first frame before
// interrupts are on.
unsafe impl Sync for Stack {}

static STACK_B: Stack = Stack(UnsafeCell::new([0; STACK_SIZE]));
/// Each task's saved stack pointer while the other runs.
static SAVED: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static SWITCHES: AtomicU64 = AtomicU64::new(0);
/// Loop iterations between checks for a switch.
const UNIT: u64 = 1000;

fn main() {
    let period_us = args::get_or(0, 50_000).clamp(1000, 1_000_000) as u32;
    // Task B's first frame, as the interrupt entry pops it: 15 registers,
    // then what `iretq` takes (rip, cs, rflags with IF, rsp, ss). Its rsp is
    // 8 below a 16-byte boundary, as after a call.
    let top = (STACK_B.0.get() as u64 + STACK_SIZE as u64) & !15;
    let frame: [u64; 20] = {
        let mut frame = [0; 20];
        frame[15..].copy_from_slice(&[task_b as *const () as u64, 0x8, 0x202, top - 8, 0x10]);
        frame
    };
    let start = top - 8 - 20 * 8;
    // SAFETY: the frame lies inside task B's stack, which nothing uses yet.
    unsafe { core::ptr::write(start as *mut [u64; 20], frame) };
    SAVED[1].store(start, Ordering::Relaxed);
    interrupts::set_entry(interrupts::TIMER_VECTOR, switch_entry);
    interrupts::timer_start(period_us);
    interrupts::interrupts_on();
    run('A');
}

extern "C" fn task_b() -> ! {
    run('B')
}

/// A task: busy work, and a line each time it has the CPU again.
fn run(name: char) -> ! {
    let (mut done, mut seen) = (0u64, u64::MAX);
    loop {
        work::spin(UNIT);
        done += 1;
        let switch = SWITCHES.load(Ordering::Relaxed);
        if switch != seen {
            seen = switch;
            let _ = writeln!(Console::new(), "task {name} runs (switch {switch}), {done} units done");
        }
    }
}

/// Saves the running task's stack pointer, returns the other's.
extern "C" fn switch(rsp: u64) -> u64 {
    let current = CURRENT.load(Ordering::Relaxed);
    SAVED[current].store(rsp, Ordering::Relaxed);
    let next = 1 - current;
    CURRENT.store(next, Ordering::Relaxed);
    SWITCHES.fetch_add(1, Ordering::Relaxed);
    SAVED[next].load(Ordering::Relaxed)
}

/// The timer's entry: pushes every general register on the running task's
/// stack, lets `switch` pick the other task's stack, pops its registers and
/// returns into it with `iretq`. Fifteen pushes after the CPU's five words
/// leave the stack 16-byte aligned for the call.
#[unsafe(naked)]
extern "C" fn switch_entry() {
    naked_asm!(
        "push rax", "push rbx", "push rcx", "push rdx", "push rsi", "push rdi", "push rbp",
        "push r8", "push r9", "push r10", "push r11", "push r12", "push r13", "push r14", "push r15",
        "cld",
        "mov rdi, rsp",
        "call {switch}",
        "mov rsp, rax",
        "pop r15", "pop r14", "pop r13", "pop r12", "pop r11", "pop r10", "pop r9", "pop r8",
        "pop rbp", "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rbx", "pop rax",
        "iretq",
        switch = sym switch,
    )
}
