//! Where a console byte goes: each VM's pending output taken into one batch
//! a round, sent without waiting, put back (bounded) when the front end is
//! behind; and the outbox of events that must be delivered.

use super::*;

impl Core {
    /// Takes `vm`'s pending console bytes (and drop count) into `batch`.
    pub(super) fn take_console(&mut self, vm: VmId, batch: &mut ConsoleBatch) {
        let slot = &mut self.slots[vm];
        if slot.runtime.console.pending_len() == 0 && slot.console_dropped == 0 {
            return;
        }
        let dropped = std::mem::take(&mut slot.console_dropped);
        slot.runtime.console.take_into(vm, dropped, batch);
    }

    /// Every VM's pending console bytes.
    pub(super) fn take_consoles(&mut self) -> ConsoleBatch {
        let mut batch = ConsoleBatch::default();
        for vm in 0..self.slots.len() {
            if self.slots.owns(vm) {
                self.take_console(vm, &mut batch);
            }
        }
        batch
    }

    /// `vm`'s pending console bytes alone.
    pub(super) fn take_one_console(&mut self, vm: VmId) -> ConsoleBatch {
        let mut batch = ConsoleBatch::default();
        self.take_console(vm, &mut batch);
        batch
    }

    /// Queues `vm`'s pending console bytes in the outbox, so that they go out
    /// before the events queued after them.
    pub(super) fn queue_console(&mut self, vm: VmId) {
        self.slots[vm].runtime.console.release_held_notes();
        let batch = self.take_one_console(vm);
        if !batch.is_empty() {
            self.outbox.push_back(Event::Console(batch));
        }
    }

    /// Sends console output in one event, or gives it back to its VMs
    /// (bounded, oldest dropped first and counted) while the front end is
    /// behind.
    pub(super) fn send_console(&mut self, batch: ConsoleBatch) {
        if batch.is_empty() {
            return;
        }
        let Err(TrySendError::Full(Event::Console(batch))) = self.events.try_send(Event::Console(batch)) else {
            return;
        };
        for piece in batch.pieces() {
            let slot = &mut self.slots[piece.vm];
            let excess = piece.bytes.len().saturating_sub(CONSOLE_BACKLOG_CAP);
            slot.console_dropped += piece.dropped + excess as u64;
            slot.runtime.console.put_back(piece.without_front(excess));
        }
    }

    pub(super) fn deliver_outbox(&mut self) {
        while let Some(event) = self.outbox.pop_front() {
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(event)) => {
                    self.outbox.push_front(event);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }

    /// A round of console flushes (and records, and the trace's buffer)
    /// when one is due at `now_ns` (monotonic).
    pub(super) fn flush_consoles_if_due(&mut self, now_ns: u64) {
        let every = CONSOLE_FLUSH_EVERY.max(CONSOLE_FLUSH_PER_VM * self.slots.len() as u32);
        if !passed(every, self.last_console_flush_ns, now_ns) {
            return;
        }
        self.last_console_flush_ns = now_ns;
        let batch = self.take_consoles();
        self.send_console(batch);
        if self.live_records && passed(RECORDS_FLUSH_EVERY, self.last_records_flush_ns, now_ns) {
            self.last_records_flush_ns = now_ns;
            self.flush_records();
        }
        if let Some((trace, _)) = &mut self.trace {
            trace.flush();
        }
    }
}
