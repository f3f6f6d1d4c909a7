//! Interrupts: an IDT with the virtual timer's handler, the timer's
//! hypercalls, and sleeping until the next tick.
//!
//! The hypervisor injects vector [`TIMER_VECTOR`] every period once the
//! guest starts its timer ([`timer_start`]) and has interrupts on. A guest
//! that waits with `sti; hlt` is not run (and charged nothing) until then:
//! [`sleep_us`] does exactly that.
//!
//! ```ignore
//! interrupts::on_timer(|| { /* every tick, with interrupts off */ });
//! interrupts::sleep_us(200_000);
//! ```

use core::arch::{asm, naked_asm};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

/// The vector the virtual timer interrupts on.
pub const TIMER_VECTOR: u8 = 0x20;
/// Port of HC_timerStart: `out dx, eax`, the period in µs.
pub const PORT_TIMER_START: u16 = 0xF0;
/// Port of HC_timerStop: `out dx, al`.
pub const PORT_TIMER_STOP: u16 = 0xF1;

/// One 64-bit interrupt gate.
#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attributes: u8,
    offset_middle: u16,
    offset_high: u32,
    reserved: u32,
}

const MISSING: Gate =
    Gate { offset_low: 0, selector: 0, ist: 0, type_attributes: 0, offset_middle: 0, offset_high: 0, reserved: 0 };

/// The IDT: 256 gates, the timer's filled in by [`init`].
#[repr(C, align(16))]
struct Idt(UnsafeCell<[Gate; 256]>);

// SAFETY: the table is written only by `set_entry`, with interrupts off,
// and each gate before any vCPU is told to take its vector (a guest of
// several vCPUs sets its gates on one of them before it starts the others'
// work, see `crate::smp`).
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new([MISSING; 256]));
/// The timer's gate: 0 not written, 1 being written, 2 written.
static INSTALLED: AtomicU8 = AtomicU8::new(0);
static TICKS: AtomicU64 = AtomicU64::new(0);
static HANDLER: AtomicUsize = AtomicUsize::new(0);

/// Ticks taken so far.
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

/// Loads the IDT with the timer's gate (the code selector is the
/// hypervisor's 0x8) on this vCPU: the first vCPU to call it writes the
/// gate, every vCPU loads the table (each CPU has its own IDT register).
/// Every other vector stays empty: an exception still ends the VM as a
/// triple fault.
pub fn init() {
    match INSTALLED.compare_exchange(0, 1, Ordering::Acquire, Ordering::Acquire) {
        Ok(_) => set_entry(TIMER_VECTOR, timer_stub),
        Err(_) => {
            // A sibling writes the gate: wait until it is whole.
            while INSTALLED.load(Ordering::Acquire) != 2 {
                core::hint::spin_loop();
            }
            load();
        }
    }
}

/// Loads the IDT register of this vCPU with the table.
pub fn load() {
    let pointer = IdtPointer { limit: (256 * 16 - 1) as u16, base: IDT.0.get() as u64 };
    // SAFETY: the pointer describes the static table above, which lives forever.
    unsafe { asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags)) };
}

/// Points `vector` at `entry`, an interrupt entry of the guest's own: a
/// naked function that saves what it uses and ends in `iretq` (a guest
/// kernel's task switch, say). It replaces the SDK's timer entry if
/// `vector` is [`TIMER_VECTOR`].
pub fn set_entry(vector: u8, entry: extern "C" fn()) {
    let address = entry as *const () as u64;
    let gate = Gate {
        offset_low: address as u16,
        selector: 0x8,
        ist: 0,
        // Present, DPL 0, 64-bit interrupt gate (interrupts off in the handler).
        type_attributes: 0x8e,
        offset_middle: (address >> 16) as u16,
        offset_high: (address >> 32) as u32,
        reserved: 0,
    };
    interrupts_off();
    // SAFETY: interrupts are off while the gate is written, and no vCPU
    // takes this vector before it is written (see `Idt`).
    unsafe { (*IDT.0.get())[usize::from(vector)] = gate };
    load();
    if vector == TIMER_VECTOR {
        // The guest's own timer entry: `init` leaves it as it is.
        INSTALLED.store(2, Ordering::Release);
    }
}

#[repr(C, packed)]
struct IdtPointer {
    limit: u16,
    base: u64,
}

/// Runs `handler` on every tick (after counting it), with interrupts off.
pub fn on_timer(handler: fn()) {
    init();
    HANDLER.store(handler as *const () as usize, Ordering::Relaxed);
}

/// HC_timerStart: the hypervisor injects [`TIMER_VECTOR`] every `period_us`
/// (at least 1000: shorter periods are raised to it).
pub fn timer_start(period_us: u32) {
    crate::io::outl(PORT_TIMER_START, period_us);
}

/// HC_timerStop.
pub fn timer_stop() {
    crate::io::outb(PORT_TIMER_STOP, 0);
}

/// `sti`: the guest takes interrupts (install the IDT first: [`init`]).
pub fn interrupts_on() {
    // SAFETY: changes only RFLAGS.IF; the IDT is the guest's business.
    unsafe { asm!("sti", options(nomem, nostack)) }
}

/// `cli`.
pub fn interrupts_off() {
    // SAFETY: changes only RFLAGS.IF.
    unsafe { asm!("cli", options(nomem, nostack)) }
}

/// Waits for the next tick with interrupts on: `sti; hlt` (the pair cannot
/// lose a tick in between), then `cli`.
pub fn wait_for_tick() {
    // SAFETY: `sti; hlt` waits for an interrupt, which the IDT handles.
    unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) }
}

/// Sleeps `us` microseconds of host time: starts the timer with that
/// period, waits in `hlt` for one tick, stops it. The VM is not run
/// meanwhile.
pub fn sleep_us(us: u32) {
    init();
    let start = ticks();
    timer_start(us);
    while ticks() == start {
        wait_for_tick();
    }
    timer_stop();
}

/// Counts the tick and runs the handler, if any.
extern "C" fn timer_tick() {
    TICKS.fetch_add(1, Ordering::Relaxed);
    let handler = HANDLER.load(Ordering::Relaxed);
    if handler != 0 {
        // SAFETY: only `on_timer` stores here, and it stores a `fn()`.
        let handler: fn() = unsafe { core::mem::transmute::<usize, fn()>(handler) };
        handler();
    }
}

/// The timer's entry: saves the registers a C call may change, calls
/// [`timer_tick`], restores them and returns with `iretq`. The CPU pushed
/// five words on a 16-byte boundary, so after nine pushes the stack is
/// aligned for the call again. (Guests have no SSE state to save.)
#[unsafe(naked)]
extern "C" fn timer_stub() {
    naked_asm!(
        "push rax",
        "push rcx",
        "push rdx",
        "push rsi",
        "push rdi",
        "push r8",
        "push r9",
        "push r10",
        "push r11",
        "cld",
        "call {tick}",
        "pop r11",
        "pop r10",
        "pop r9",
        "pop r8",
        "pop rdi",
        "pop rsi",
        "pop rdx",
        "pop rcx",
        "pop rax",
        "iretq",
        tick = sym timer_tick,
    )
}
