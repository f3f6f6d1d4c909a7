//! Its vCPUs take turns: each sleeps in `hlt` until the one before it hands
//! it the turn with an IPI, does a unit of work, prints how many turns it
//! has had, and hands the turn on. Run it with 2 vCPUs or more (`vcpus = 2`,
//! `--vcpus NAME=2`); alone, a vCPU hands the turn to itself. Argument 0:
//! iterations of work a turn (default: about 50 ms here); argument 1: turns
//! each vCPU takes before it halts (0 or none: forever).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use matrix_guest::{args, hc, smp, work};

matrix_guest::entry!(main);

/// Whose turn it is.
static TURN: AtomicU32 = AtomicU32::new(0);

/// Iterations a turn when argument 0 is missing and the host did not size
/// it (matrix-tui sizes it to 50 ms of guest CPU where it runs).
const DEFAULT_UNIT: u64 = 50_000;

fn main() {
    smp::init();
    let (me, count) = (smp::vcpu_id(), smp::vcpu_count().max(1));
    let unit = args::get_or(0, DEFAULT_UNIT);
    let turns = args::get_or(1, 0);
    let mut taken: u64 = 0;
    loop {
        while TURN.load(Ordering::Acquire) != me {
            smp::wait_for_ipi();
        }
        work::spin(unit);
        taken += 1;
        hc::print32(taken as u32);
        let last = turns != 0 && taken >= turns;
        let next = (me + 1) % count;
        // The last vCPU's last turn has nobody left to hand on to.
        if last && me + 1 == count {
            return;
        }
        TURN.store(next, Ordering::Release);
        if next != me {
            smp::ipi(next, smp::IPI_VECTOR);
        }
        if last {
            return;
        }
    }
}
