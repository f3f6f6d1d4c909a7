//! Its vCPUs contend on one spinlock around a short critical section, and
//! vCPU 0 prints, once a second of its timer, the critical sections done in
//! that second and the part of the guest's loop iterations spent spinning.
//! Run it with several vCPUs (`vcpus = 4`). Argument 0 is the critical
//! section and argument 1 the work outside it, in loop iterations
//! (matrix-tui sizes them to 20 µs and 60 µs of guest CPU where it runs);
//! argument 2 picks the lock: 0 test-and-set, 1 ticket (the default), 2
//! paravirtual ticket (a waiter spins a little, then gives its slice to the
//! vCPU whose ticket is served, with HC_yieldTo, as Linux's paravirtual
//! spinlocks hand the CPU on).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use matrix_guest::{args, interrupts, println, smp, work};

matrix_guest::entry!(main);

/// Test-and-set: held while true.
static HELD: AtomicBool = AtomicBool::new(false);
/// Ticket lock: the next ticket to take, and the one served.
static NEXT: AtomicU32 = AtomicU32::new(0);
static SERVING: AtomicU32 = AtomicU32::new(0);
/// Which vCPU holds each ticket being served (for the paravirtual yield).
static HOLDER_OF: [AtomicU32; 64] = [const { AtomicU32::new(u32::MAX) }; 64];
/// Critical sections done, by all vCPUs.
static SECTIONS: AtomicU64 = AtomicU64::new(0);
/// Loop iterations spent spinning for the lock, and all loop iterations.
static SPUN: AtomicU64 = AtomicU64::new(0);
static ITERATIONS: AtomicU64 = AtomicU64::new(0);

/// Spins a paravirtual waiter does before it yields.
const PV_SPINS: u32 = 8;
/// Iterations when matrix-tui did not size them.
const DEFAULT_CRITICAL: u64 = 20;
const DEFAULT_OUTSIDE: u64 = 60;

fn main() {
    smp::init();
    interrupts::init();
    let me = smp::vcpu_id();
    let critical = args::get_or(0, DEFAULT_CRITICAL).max(1);
    let outside = args::get_or(1, DEFAULT_OUTSIDE);
    let kind = args::all().get(2).copied().unwrap_or(1);
    if me == 0 {
        println!("lock: {}", ["test-and-set", "ticket", "paravirtual ticket"][kind.min(2) as usize]);
        interrupts::timer_start(1_000_000);
        interrupts::interrupts_on();
    }
    let (mut seen_ticks, mut sections_before, mut spun_before, mut all_before) = (0, 0, 0, 0);
    loop {
        let spun = match kind {
            0 => lock_test_and_set(),
            2 => lock_ticket(me, true),
            _ => lock_ticket(me, false),
        };
        work::spin(critical);
        SECTIONS.fetch_add(1, Ordering::Relaxed);
        if kind == 0 {
            HELD.store(false, Ordering::Release);
        } else {
            SERVING.fetch_add(1, Ordering::Release);
        }
        work::spin(outside);
        SPUN.fetch_add(spun, Ordering::Relaxed);
        ITERATIONS.fetch_add(spun + critical + outside, Ordering::Relaxed);
        if me == 0 && interrupts::ticks() != seen_ticks {
            seen_ticks = interrupts::ticks();
            let (sections, spun, all) =
                (SECTIONS.load(Ordering::Relaxed), SPUN.load(Ordering::Relaxed), ITERATIONS.load(Ordering::Relaxed));
            let spinning = (spun - spun_before) * 100 / (all - all_before).max(1);
            println!("{} critical sections/s, {}% spinning", sections - sections_before, spinning);
            (sections_before, spun_before, all_before) = (sections, spun, all);
        }
    }
}

/// Spins until the flag is ours; returns the spins.
fn lock_test_and_set() -> u64 {
    let mut spins = 0;
    while HELD.swap(true, Ordering::Acquire) {
        while HELD.load(Ordering::Relaxed) {
            spins += 1;
            core::hint::spin_loop();
        }
    }
    spins
}

/// Takes a ticket and waits for it; the paravirtual waiter yields to the
/// vCPU being served after [`PV_SPINS`] spins, again and again. Returns the
/// spins.
fn lock_ticket(me: u32, paravirtual: bool) -> u64 {
    let ticket = NEXT.fetch_add(1, Ordering::Relaxed);
    HOLDER_OF[(ticket % 64) as usize].store(me, Ordering::Relaxed);
    let mut spins: u64 = 0;
    let mut since_yield = 0;
    loop {
        let serving = SERVING.load(Ordering::Acquire);
        if serving == ticket {
            return spins;
        }
        spins += 1;
        since_yield += 1;
        if paravirtual && since_yield >= PV_SPINS {
            since_yield = 0;
            let holder = HOLDER_OF[(serving % 64) as usize].load(Ordering::Relaxed);
            if holder != u32::MAX && holder != me {
                smp::yield_to(holder);
            }
        }
        core::hint::spin_loop();
    }
}
