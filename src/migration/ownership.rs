//! Who may run a VM while it moves: a pure table of what a VM's place in a
//! migration allows, asked by every path that could run, change or move it
//! (resume, step, restart, gdb, a second migration, a snapshot). No KVM and
//! no sockets here: the core and the link threads carry out what it allows.
//!
//! The promise it keeps: a VM never runs on both sides. The sender holds
//! its VM still from the final pause until the receiver has it (or the
//! attempt is abandoned and it runs on at home); the receiver holds an
//! arriving VM still until the sender's Go, and one whose sender went
//! silent after Ready until a person adopts it, knowing the risk.

/// Where a VM stands, as far as running it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// Not moving: every command applies as usual.
    Free,
    /// Moving out, still running: its pages go over in rounds.
    LeavingInRounds,
    /// Moving out, paused for the last pages, its state and the hand-over:
    /// the receiver may be about to run it.
    LeavingPaused,
    /// Moving out, its Go queued or written: the receiver may run it now,
    /// and says so with Started.
    HandingOver,
    /// Moved out: the receiver owns it.
    Gone,
    /// Being saved: held still while its memory is copied in steps.
    Saving,
    /// Received, waiting for the sender's Go.
    Arriving,
    /// Received, but the sender went silent after Ready: it may still run
    /// there. Held until a person adopts it.
    Orphaned,
}

/// What a person (or gdb) asks of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Let it run (`resume`, `p` on a paused VM).
    Resume,
    /// Hold it (`pause`).
    Pause,
    /// Run it to its next exit (`step`, `s`).
    Step,
    /// Start it again from its image (`restart`).
    Restart,
    /// Save it to a file (`snapshot`, `S`).
    Snapshot,
    /// Move it to another matrix-tui (`migrate`, `M`).
    Migrate,
    /// Give up its move before the Go (`migrate cancel`).
    CancelMigration,
    /// gdb lets it run or steps it (`continue`, `stepi`).
    GdbRun,
    /// Take a VM the sender went silent about (`adopt`).
    Adopt,
}

/// Every request, for tables.
pub const REQUESTS: [Request; 9] = [
    Request::Resume,
    Request::Pause,
    Request::Step,
    Request::Restart,
    Request::Snapshot,
    Request::Migrate,
    Request::CancelMigration,
    Request::GdbRun,
    Request::Adopt,
];

/// Every holding, for tables.
pub const HOLDINGS: [Holding; 8] = [
    Holding::Saving,
    Holding::Free,
    Holding::LeavingInRounds,
    Holding::LeavingPaused,
    Holding::HandingOver,
    Holding::Gone,
    Holding::Arriving,
    Holding::Orphaned,
];

/// Whether `request` may be carried out for a VM in `holding`, or why not
/// (a reason for the VM's console).
pub fn decide(holding: Holding, request: Request) -> Result<(), &'static str> {
    use Holding::*;
    use Request::*;
    match (holding, request) {
        (Free, CancelMigration) => Err("it is not moving"),
        (Free, Adopt) => Err("it came by no migration that needs adopting"),
        (Free, _) => Ok(()),
        // In rounds it runs as usual; a pause or a restart ends the move
        // (the core abandons it first), a second move waits for this one.
        (LeavingInRounds, Resume | Pause | Step | CancelMigration | GdbRun | Restart) => Ok(()),
        (LeavingInRounds, Snapshot) => Err("it is moving; save it before its move or after one that was called off"),
        (LeavingInRounds, Migrate) => Err("it is already moving; cancel that move first (migrate cancel NAME)"),
        (LeavingInRounds, Adopt) => Err("it is moving out, not in"),
        (LeavingPaused, CancelMigration) => Ok(()),
        (LeavingPaused, Pause | Snapshot) => Err("it is paused for its move: its last pages and state are going over"),
        (LeavingPaused, _) => Err("it is paused for its move to another matrix-tui, which may be about to run it; \
             cancel the move first (migrate cancel NAME), or wait for it to end"),
        (Saving, _) => Err("it is being saved: its memory is copied in steps while it is held; a moment"),
        (HandingOver, _) => Err("it is being handed over to another matrix-tui, which runs it from now on"),
        (Gone, _) => Err("it moved to another matrix-tui, which runs it now"),
        (Arriving, _) => Err("it is arriving: it runs here once the sender hands it over"),
        (Orphaned, Adopt) => Ok(()),
        (Orphaned, _) => Err("its sender went silent before handing it over and may still run it; if it does not, \
             adopt it (adopt NAME) and resume it"),
    }
}

/// Whether a VM in `holding` may run at all (be scheduled).
///
/// A VM being saved is held still (its memory must not change while it is
/// copied), so it may not.
pub fn may_run(holding: Holding) -> bool {
    matches!(holding, Holding::Free | Holding::LeavingInRounds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_runs_a_vm_the_other_side_may_run() {
        for holding in HOLDINGS {
            for request in [Request::Resume, Request::Step, Request::GdbRun, Request::Restart] {
                let allowed = decide(holding, request).is_ok();
                assert_eq!(allowed, may_run(holding), "{request:?} of a VM {holding:?}");
            }
        }
    }

    #[test]
    fn every_request_gets_an_answer_in_every_holding_and_refusals_say_why() {
        let mut table = Vec::new();
        for holding in HOLDINGS {
            for request in REQUESTS {
                let answer = decide(holding, request);
                if let Err(why) = answer {
                    assert!(why.len() > 10, "{holding:?} {request:?}: {why}");
                }
                table.push((holding, request, answer.is_ok()));
            }
        }
        let allowed = |holding, request| table.iter().any(|&(h, r, ok)| h == holding && r == request && ok);
        // A second move never touches the first.
        assert!(!allowed(Holding::LeavingInRounds, Request::Migrate));
        assert!(!allowed(Holding::LeavingPaused, Request::Migrate));
        // Before the Go a move can be called off, and then only.
        assert!(allowed(Holding::LeavingInRounds, Request::CancelMigration));
        assert!(allowed(Holding::LeavingPaused, Request::CancelMigration));
        assert!(!allowed(Holding::Gone, Request::CancelMigration));
        assert!(!allowed(Holding::HandingOver, Request::CancelMigration), "after the Go it is the receiver's");
        // Only an orphan can be adopted; an arriving VM refuses all.
        assert!(allowed(Holding::Orphaned, Request::Adopt));
        assert!(REQUESTS.iter().all(|&request| !allowed(Holding::Arriving, request)));
        assert!(REQUESTS.iter().all(|&request| !allowed(Holding::Gone, request)));
        assert_eq!(table.len(), HOLDINGS.len() * REQUESTS.len());
    }
}
