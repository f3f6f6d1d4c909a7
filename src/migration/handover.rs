//! The hand-over of a moving VM as two pure state machines, one a side:
//! events in, what to do out. No KVM, no sockets: the core (the sender's
//! phases) and the receiver's link thread carry out what these say, and the
//! tests below run both against each other over every interleaving of the
//! link's frames, its cut at any moment, and the local commands, checking
//! that the VM never runs on both sides and is never lost.
//!
//! What makes it safe: the receiver runs the VM only on the Go, which the
//! sender queues only after the receiver's Ready; from the moment the Go is
//! queued the sender never runs the VM again unless its own writer says the
//! Go did not go out whole. Its reader losing the link says nothing about
//! the Go (the two run on separate threads, in either order), so it is not
//! taken for a failure then. A receiver that said Ready and then loses the
//! link cannot know whether a Go was sent: it holds the VM (orphaned) until
//! a person adopts it.

/// Where a VM moving out is (the sender's side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leaving {
    /// Hello sent; waiting for Accept.
    Hello,
    /// Pre-copy rounds while the VM runs.
    Rounds,
    /// The VM paused: the last pages, then its state.
    Last,
    /// State sent; waiting for Ready.
    Ready,
    /// Go queued; waiting for the link's writer to say it went out.
    Go,
    /// The receiver owns it; waiting for its Started.
    Moved,
}

/// What the sender's side of a move hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SenderEvent {
    /// The receiver's Accept.
    Accepted,
    /// The rest fits the pause (or a cap was reached): the final pause.
    RoundsDone,
    /// The last pages and the state are queued behind each other.
    StateQueued,
    /// The receiver's Ready.
    Ready,
    /// The writer wrote the Go whole.
    GoWritten,
    /// The receiver's Started: it ran the VM.
    Started,
    /// The receiver's Refuse or Abandon: it will not run the VM.
    ReceiverGaveUp,
    /// The writer could not write a frame: nothing from it on went out whole.
    SendFailed,
    /// The reader lost the link: frames already written may have arrived.
    ReceiveFailed,
    /// A person called the move off (`migrate cancel`).
    Cancelled,
    /// The final pause outlived its deadline.
    Overdue,
    /// A frame the receiver should not send now.
    Unexpected,
}

/// What the sender does about an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SenderOutcome {
    /// Nothing changes.
    Stay,
    /// The move goes on in this phase.
    To(Leaving),
    /// The move is off: the VM runs on here, as it did.
    RunAtHome,
    /// The receiver owns the VM from now on ([`Leaving::Moved`]).
    HandedOver,
    /// The move is over (Started came, or will not).
    Finished,
}

/// The sender's next step from `phase` on `event`.
pub fn sender_on(phase: Leaving, event: SenderEvent) -> SenderOutcome {
    use Leaving::*;
    use SenderEvent::*;
    use SenderOutcome::*;
    match (phase, event) {
        (Hello, Accepted) => To(Rounds),
        (Rounds, RoundsDone) => To(Last),
        (Last, StateQueued) => To(Leaving::Ready),
        (Leaving::Ready, SenderEvent::Ready) => To(Go),
        // The pause is bounded until the Go is queued, and only then.
        (Last | Leaving::Ready, Overdue) => RunAtHome,
        (Hello | Rounds | Moved | Go, Overdue) => Stay,
        (Go, GoWritten | Started) => HandedOver,
        // From the Go on, only the writer knows whether it went out.
        (Go, SendFailed | ReceiverGaveUp) => RunAtHome,
        (Go, ReceiveFailed | Unexpected | Cancelled | Accepted | RoundsDone | StateQueued | SenderEvent::Ready) => Stay,
        (Moved, Started) => Finished,
        (Moved, _) => Stay,
        // Before the Go the receiver cannot run it: any failure, a refusal,
        // a cancel or a frame out of place ends the move and it runs on here.
        (Hello | Rounds | Last | Leaving::Ready, _) => RunAtHome,
    }
}

/// Whether the sender may run the VM in `phase` (before the final pause).
pub fn sender_may_run(phase: Leaving) -> bool {
    matches!(phase, Leaving::Hello | Leaving::Rounds)
}

/// Where a VM coming in is (the receiver's side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arriving {
    /// Made blank at the Hello; its pages come.
    Blank,
    /// It has its state; Ready not written yet.
    Stated,
    /// Ready written: the sender may send the Go.
    ReadySent,
    /// The Go came: it runs here.
    HandedOver,
    /// The sender kept it: this copy is gone for good.
    Dropped,
    /// The link was lost after Ready: the sender may or may not run it.
    /// Held until a person adopts it.
    Orphaned,
}

/// What the receiver's side of a move hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceiverEvent {
    /// The state came and the VM took it.
    StateTaken,
    /// Ready was written.
    ReadyWritten,
    /// The sender's Go.
    Go,
    /// The sender's Abandon: it runs the VM on.
    SenderGaveUp,
    /// The link failed, a frame was bad, a deadline passed, or the VM could
    /// not take its state.
    Failed,
}

/// The receiver's next state from `phase` on `event`.
pub fn receiver_on(phase: Arriving, event: ReceiverEvent) -> Arriving {
    use Arriving::*;
    use ReceiverEvent::*;
    match (phase, event) {
        (Blank, StateTaken) => Stated,
        (Stated, ReadyWritten) => ReadySent,
        (ReadySent, Go) => HandedOver,
        // Before Ready the sender has no Go to send: it keeps the VM.
        (Blank | Stated, SenderGaveUp | Failed) => Dropped,
        (ReadySent, SenderGaveUp) => Dropped,
        (ReadySent, Failed) => Orphaned,
        // Out of order: before Ready nothing is the receiver's; after, it holds.
        (Blank | Stated, _) => Dropped,
        (ReadySent, _) => Orphaned,
        (HandedOver | Dropped | Orphaned, _) => phase,
    }
}

/// Whether the receiver may run the VM in `phase` (an orphan only once
/// adopted, which a person decides knowing the risk).
pub fn receiver_may_run(phase: Arriving) -> bool {
    phase == Arriving::HandedOver
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashSet, VecDeque};

    /// Frames on the link.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    enum Wire {
        Hello,
        Accept,
        State,
        Ready,
        Go,
        Started,
        Abandon,
    }

    /// The sender's VM: at home (running or in the move), or handed over.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    enum Home {
        /// Not moving: it runs here.
        Free,
        Moving(Leaving),
        /// Handed over; the move is over.
        Gone,
    }

    /// Both sides, the link between them and the words the sender's link
    /// threads have not yet given its core.
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    struct World {
        home: Home,
        away: Option<Arriving>,
        /// Frames written, not yet read (in order).
        to_receiver: VecDeque<Wire>,
        to_sender: VecDeque<Wire>,
        /// Frames the sender's core queued, not yet written by its writer.
        queued: VecDeque<Wire>,
        /// What the sender's link threads will tell its core (any order
        /// between the writer's and the reader's).
        writer_says: VecDeque<SenderEvent>,
        reader_says: VecDeque<SenderEvent>,
        cut: bool,
        /// The sender's reader found the link cut (it reads no more).
        reader_done: bool,
        /// The receiver's session ended (it reads no more).
        receiver_done: bool,
        /// A final pause began (a deadline can pass).
        paused_once: bool,
        /// The sender's table (the real one, or one the tests break on purpose).
        table: Table,
    }

    /// A sender's table: one per exploration, so every world's is the same
    /// (and worlds compare by what they hold).
    #[derive(Clone, Copy)]
    struct Table(fn(Leaving, SenderEvent) -> SenderOutcome);

    impl PartialEq for Table {
        fn eq(&self, _: &Self) -> bool {
            true
        }
    }

    impl Eq for Table {}

    impl std::hash::Hash for Table {
        fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
    }

    impl std::fmt::Debug for Table {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Table")
        }
    }

    impl World {
        fn start(table: fn(Leaving, SenderEvent) -> SenderOutcome) -> Self {
            Self {
                home: Home::Moving(Leaving::Hello),
                away: None,
                to_receiver: VecDeque::new(),
                to_sender: VecDeque::new(),
                queued: VecDeque::from([Wire::Hello]),
                writer_says: VecDeque::new(),
                reader_says: VecDeque::new(),
                cut: false,
                reader_done: false,
                receiver_done: false,
                paused_once: false,
                table: Table(table),
            }
        }

        fn sender(&mut self, event: SenderEvent) {
            let Home::Moving(phase) = self.home else { return };
            match (self.table.0)(phase, event) {
                SenderOutcome::Stay => {}
                SenderOutcome::To(next) => {
                    self.home = Home::Moving(next);
                    match next {
                        Leaving::Last => self.paused_once = true,
                        Leaving::Go => self.queued.push_back(Wire::Go),
                        _ => {}
                    }
                }
                SenderOutcome::RunAtHome => {
                    self.home = Home::Free;
                    self.queued.push_back(Wire::Abandon);
                }
                SenderOutcome::HandedOver => {
                    self.home = Home::Moving(Leaving::Moved);
                    if event == SenderEvent::Started {
                        self.home = Home::Gone;
                    }
                }
                SenderOutcome::Finished => self.home = Home::Gone,
            }
        }

        fn receiver(&mut self, event: ReceiverEvent) {
            let Some(phase) = self.away else { return };
            let next = receiver_on(phase, event);
            if next != phase && matches!(next, Arriving::Dropped | Arriving::Orphaned | Arriving::HandedOver) {
                self.receiver_done = true;
            }
            self.away = Some(next);
        }

        /// Every world one step from this one.
        fn next(&self) -> Vec<World> {
            let mut next = Vec::new();
            // The writer writes the next queued frame, or fails once cut.
            if let Some(&frame) = self.queued.front() {
                let mut world = self.clone();
                world.queued.pop_front();
                if world.cut {
                    world.writer_says.push_back(SenderEvent::SendFailed);
                    world.queued.clear();
                } else {
                    world.to_receiver.push_back(frame);
                    if frame == Wire::Go {
                        world.writer_says.push_back(SenderEvent::GoWritten);
                    }
                }
                next.push(world);
            }
            // The receiver reads the next frame.
            if !self.receiver_done {
                if let Some(&frame) = self.to_receiver.front() {
                    let mut world = self.clone();
                    world.to_receiver.pop_front();
                    world.receive(frame);
                    next.push(world);
                } else if self.cut {
                    let mut world = self.clone();
                    world.receiver(ReceiverEvent::Failed);
                    world.receiver_done = true;
                    next.push(world);
                }
            }
            // The sender's reader reads the next frame, or finds the link cut.
            if let Some(&frame) = self.to_sender.front() {
                let mut world = self.clone();
                world.to_sender.pop_front();
                let event = match frame {
                    Wire::Accept => SenderEvent::Accepted,
                    Wire::Ready => SenderEvent::Ready,
                    Wire::Started => SenderEvent::Started,
                    Wire::Abandon => SenderEvent::ReceiverGaveUp,
                    _ => SenderEvent::Unexpected,
                };
                world.reader_says.push_back(event);
                next.push(world);
            } else if self.cut && !self.reader_done {
                let mut world = self.clone();
                world.reader_done = true;
                world.reader_says.push_back(SenderEvent::ReceiveFailed);
                next.push(world);
            }
            // The sender's core hears its writer or its reader, whichever first.
            for from_writer in [true, false] {
                let mut world = self.clone();
                let says = if from_writer { &mut world.writer_says } else { &mut world.reader_says };
                if let Some(event) = says.pop_front() {
                    world.sender(event);
                    next.push(world);
                }
            }
            // The sender's core moves its own phases on.
            for event in [SenderEvent::RoundsDone, SenderEvent::StateQueued] {
                let mut world = self.clone();
                world.sender(event);
                if world.home != self.home {
                    if event == SenderEvent::StateQueued {
                        world.queued.push_back(Wire::State);
                    }
                    next.push(world);
                }
            }
            // A person, a deadline, a cut: at any moment.
            let mut local = vec![SenderEvent::Cancelled];
            if self.paused_once {
                local.push(SenderEvent::Overdue);
            }
            for event in local {
                let mut world = self.clone();
                world.sender(event);
                if world != *self {
                    next.push(world);
                }
            }
            if !self.cut {
                let mut world = self.clone();
                world.cut = true;
                // What was written but not read is lost with the link.
                world.to_receiver.clear();
                world.to_sender.clear();
                next.push(world);
            }
            next
        }

        fn receive(&mut self, frame: Wire) {
            let reply = |world: &mut World, frame: Wire| {
                if !world.cut {
                    world.to_sender.push_back(frame);
                }
            };
            match (frame, self.away) {
                (Wire::Hello, None) => {
                    self.away = Some(Arriving::Blank);
                    reply(self, Wire::Accept);
                }
                (Wire::State, Some(Arriving::Blank)) => {
                    self.receiver(ReceiverEvent::StateTaken);
                    if self.cut {
                        self.receiver(ReceiverEvent::Failed);
                    } else {
                        reply(self, Wire::Ready);
                        self.receiver(ReceiverEvent::ReadyWritten);
                    }
                }
                (Wire::Go, Some(Arriving::ReadySent)) => {
                    self.receiver(ReceiverEvent::Go);
                    reply(self, Wire::Started);
                }
                (Wire::Abandon, _) => self.receiver(ReceiverEvent::SenderGaveUp),
                (_, None) => self.receiver_done = true,
                (_, Some(_)) => {
                    self.receiver(ReceiverEvent::Failed);
                    reply(self, Wire::Abandon);
                }
            }
        }

        fn runs_home(&self) -> bool {
            match self.home {
                Home::Free => true,
                Home::Moving(phase) => sender_may_run(phase),
                Home::Gone => false,
            }
        }

        fn runs_away(&self) -> bool {
            self.away.is_some_and(receiver_may_run)
        }

        /// Nobody more to hear from: every word given, every frame read or lost.
        fn settled(&self) -> bool {
            self.next().is_empty()
        }
    }

    /// Every world the sender's `table` can reach against the receiver's:
    /// the ends (who holds the VM once all is said), or the first world in
    /// which both run it or neither has it.
    fn explore(table: fn(Leaving, SenderEvent) -> SenderOutcome) -> Result<HashSet<(Home, Option<Arriving>)>, String> {
        let mut seen = HashSet::new();
        let mut todo = vec![World::start(table)];
        let mut ends = HashSet::new();
        while let Some(world) = todo.pop() {
            if !seen.insert(world.clone()) {
                continue;
            }
            if world.runs_home() && world.runs_away() {
                return Err(format!("both run it: {world:?}"));
            }
            if world.settled() {
                // Once everything is said: one side runs it, or the receiver
                // holds it for a person to adopt, never neither.
                let held = world.away == Some(Arriving::Orphaned);
                if !(world.runs_home() || world.runs_away() || held) {
                    return Err(format!("lost: {world:?}"));
                }
                ends.insert((world.home, world.away));
            }
            todo.extend(world.next());
        }
        Ok(ends)
    }

    #[test]
    fn over_every_interleaving_and_cut_the_vm_runs_on_one_side_at_most_and_is_never_lost() {
        let ends = explore(sender_on).unwrap();
        // How a move can end, and no other way: handed over (Started heard
        // or not), called off before the receiver had it (with or without
        // its copy), or the Go sent into a cut link (the receiver holds it;
        // the sender, which wrote the Go, does not run it either).
        let expected = HashSet::from([
            (Home::Gone, Some(Arriving::HandedOver)),
            (Home::Moving(Leaving::Moved), Some(Arriving::HandedOver)),
            (Home::Free, None),
            (Home::Free, Some(Arriving::Dropped)),
            (Home::Free, Some(Arriving::Orphaned)),
            (Home::Moving(Leaving::Moved), Some(Arriving::Orphaned)),
        ]);
        assert_eq!(ends, expected);
    }

    #[test]
    fn the_readers_loss_of_the_link_never_runs_a_vm_whose_go_may_be_out() {
        assert_eq!(sender_on(Leaving::Go, SenderEvent::ReceiveFailed), SenderOutcome::Stay);
        assert_eq!(sender_on(Leaving::Go, SenderEvent::SendFailed), SenderOutcome::RunAtHome);
        assert_eq!(sender_on(Leaving::Ready, SenderEvent::ReceiveFailed), SenderOutcome::RunAtHome);
        assert_eq!(sender_on(Leaving::Go, SenderEvent::Cancelled), SenderOutcome::Stay);
        assert_eq!(sender_on(Leaving::Go, SenderEvent::Overdue), SenderOutcome::Stay);
        assert_eq!(receiver_on(Arriving::ReadySent, ReceiverEvent::Failed), Arriving::Orphaned);
        assert_eq!(receiver_on(Arriving::Stated, ReceiverEvent::Failed), Arriving::Dropped);
    }

    #[test]
    fn the_model_finds_the_races_it_guards_against() {
        // Were the reader's loss of the link taken as a failure after the Go
        // (it may come before the writer's word that the Go went out), or a
        // cancel allowed then, the VM would run on both sides.
        fn careless_reader(phase: Leaving, event: SenderEvent) -> SenderOutcome {
            match (phase, event) {
                (Leaving::Go, SenderEvent::ReceiveFailed) => SenderOutcome::RunAtHome,
                _ => sender_on(phase, event),
            }
        }
        fn late_cancel(phase: Leaving, event: SenderEvent) -> SenderOutcome {
            match (phase, event) {
                (Leaving::Go, SenderEvent::Cancelled) => SenderOutcome::RunAtHome,
                _ => sender_on(phase, event),
            }
        }
        for table in [careless_reader as fn(Leaving, SenderEvent) -> SenderOutcome, late_cancel] {
            assert!(explore(table).unwrap_err().starts_with("both run it"));
        }
        assert!(!sender_may_run(Leaving::Last) && !sender_may_run(Leaving::Ready) && !sender_may_run(Leaving::Go));
    }
}
