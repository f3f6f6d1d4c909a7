//! Its vCPUs contend on one spinlock around a short critical section, and
//! vCPU 0 prints, once a second of its timer, the critical sections done in
//! that second and the part of the guest's loop iterations spent spinning.
//! Run it with several vCPUs (`vcpus = 4`). Argument 0 is the critical
//! section and argument 1 the work outside it, in loop iterations
//! (matrix-tui sizes them to 20 µs and 60 µs of guest CPU where it runs);
//! argument 2 picks the lock: 0 test-and-set, 1 ticket (the default), 2
//! paravirtual ticket that yields (a waiter spins a little, then gives its
//! slice to the vCPU whose ticket is served, with HC_yieldTo), 3
//! paravirtual ticket that halts (a waiter spins a little, then sleeps in
//! `hlt` until the unlocker wakes it with HC_ipi, as Linux's paravirtual
//! spinlocks do on KVM).
//!
//! Each vCPU keeps its counts in its lock record, and says there when it
//! holds the lock and when it waits ([`matrix_guest::lock_records`]): the
//! hypervisor reads them without an exit.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use matrix_guest::lock_records::{self, HOLDS, LockTable, NEITHER, WAITS};
use matrix_guest::{args, interrupts, println, smp, work};

matrix_guest::entry!(main);

/// Test-and-set: held while true.
static HELD: AtomicBool = AtomicBool::new(false);
/// Ticket lock: the next ticket to take, and the one served.
static NEXT: AtomicU32 = AtomicU32::new(0);
static SERVING: AtomicU32 = AtomicU32::new(0);
/// Which vCPU holds each ticket being served (for the paravirtual waiters).
static HOLDER_OF: [AtomicU32; 64] = [const { AtomicU32::new(u32::MAX) }; 64];
/// The ticket each vCPU sleeps in `hlt` for (u32::MAX: it does not sleep).
static SLEEPING_ON: [AtomicU32; 64] = [const { AtomicU32::new(u32::MAX) }; 64];
/// Every vCPU's lock record, shared with the hypervisor.
static RECORDS: LockTable = LockTable::new();

/// Spins a paravirtual waiter does before it yields or sleeps.
const PV_SPINS: u32 = 8;
/// Iterations when matrix-tui did not size them.
const DEFAULT_CRITICAL: u64 = 20;
const DEFAULT_OUTSIDE: u64 = 60;

/// The lock a run contends on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    TestAndSet,
    Ticket,
    Yielding,
    Halting,
}

fn main() {
    smp::init();
    let me = smp::vcpu_id();
    let critical = args::get_or(0, DEFAULT_CRITICAL).max(1);
    let outside = args::get_or(1, DEFAULT_OUTSIDE);
    let kind = match args::all().get(2).copied().unwrap_or(1) {
        0 => Kind::TestAndSet,
        2 => Kind::Yielding,
        3 => Kind::Halting,
        _ => Kind::Ticket,
    };
    if me == 0 {
        let name = match kind {
            Kind::TestAndSet => "test-and-set",
            Kind::Ticket => "ticket",
            Kind::Yielding => "paravirtual ticket, yielding",
            Kind::Halting => "paravirtual ticket, halting",
        };
        println!("lock: {name}");
        lock_records::watch(&RECORDS);
        interrupts::timer_start(1_000_000);
        interrupts::interrupts_on();
    }
    let mine = RECORDS.record(me);
    let (mut seen_ticks, mut before) = (0, (0, 0, 0));
    loop {
        mine.set_state(WAITS);
        let spun = match kind {
            Kind::TestAndSet => lock_test_and_set(),
            _ => lock_ticket(me, kind),
        };
        mine.set_state(HOLDS);
        work::spin(critical);
        mine.set_state(NEITHER);
        match kind {
            Kind::TestAndSet => HELD.store(false, Ordering::Release),
            _ => unlock_ticket(kind),
        }
        work::spin(outside);
        mine.count(1, spun, critical + outside);
        if me == 0 && interrupts::ticks() != seen_ticks {
            seen_ticks = interrupts::ticks();
            let now = RECORDS.sums();
            let (spun, worked) = (now.1 - before.1, now.2 - before.2);
            let spinning = spun * 100 / (spun + worked).max(1);
            println!("{} critical sections/s, {}% spinning", now.0 - before.0, spinning);
            before = now;
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

/// Takes a ticket and waits for it. A paravirtual waiter, after
/// [`PV_SPINS`] spins, yields to the vCPU being served or sleeps until the
/// unlocker wakes it, again and again. Returns the spins.
fn lock_ticket(me: u32, kind: Kind) -> u64 {
    let ticket = NEXT.fetch_add(1, Ordering::Relaxed);
    HOLDER_OF[(ticket % 64) as usize].store(me, Ordering::Relaxed);
    let mut spins: u64 = 0;
    let mut since_pause = 0;
    loop {
        let serving = SERVING.load(Ordering::Acquire);
        if serving == ticket {
            return spins;
        }
        spins += 1;
        since_pause += 1;
        if since_pause >= PV_SPINS {
            match kind {
                Kind::Yielding => {
                    since_pause = 0;
                    let holder = HOLDER_OF[(serving % 64) as usize].load(Ordering::Relaxed);
                    if holder != u32::MAX && holder != me {
                        smp::yield_to(holder);
                    }
                }
                Kind::Halting => {
                    since_pause = 0;
                    sleep_until_served(me, ticket);
                }
                Kind::TestAndSet | Kind::Ticket => {}
            }
        }
        core::hint::spin_loop();
    }
}

/// Sleeps in `hlt` until the unlocker serves `ticket` and wakes this vCPU.
/// Interrupts stay off from saying it sleeps to `sti; hlt`, and the unlocker
/// looks after serving: one of the two sees the other, no wake-up is lost.
fn sleep_until_served(me: u32, ticket: u32) {
    interrupts::interrupts_off();
    SLEEPING_ON[me as usize].store(ticket, Ordering::SeqCst);
    if SERVING.load(Ordering::SeqCst) != ticket {
        smp::wait_for_ipi();
    }
    SLEEPING_ON[me as usize].store(u32::MAX, Ordering::Relaxed);
    if me == 0 {
        // vCPU 0 takes its timer's ticks.
        interrupts::interrupts_on();
    }
}

/// Serves the next ticket; a halting lock wakes its holder if it sleeps.
fn unlock_ticket(kind: Kind) {
    let next = SERVING.fetch_add(1, Ordering::SeqCst).wrapping_add(1);
    if kind == Kind::Halting {
        let waiter = HOLDER_OF[(next % 64) as usize].load(Ordering::Relaxed);
        if waiter != u32::MAX && SLEEPING_ON[waiter as usize % 64].load(Ordering::SeqCst) == next {
            smp::ipi(waiter, smp::IPI_VECTOR);
        }
    }
}
