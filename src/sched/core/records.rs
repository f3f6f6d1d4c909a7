//! Exit and slice records for a front end that shows them live (the
//! inspector, the timeline): sent 20 times a second, superseded or dropped
//! and counted when the front end lags.

use super::*;

impl Core {
    /// Sends the exit and slice records kept for the front end; what finds
    /// no room waits for the next round (bounded: see `keep_exit`, `keep_slice`).
    pub(super) fn flush_records(&mut self) {
        let mut events = self.take_records().into_iter();
        while let Some(event) = events.next() {
            if let Err(TrySendError::Full(event)) = self.events.try_send(event) {
                for event in std::iter::once(event).chain(events) {
                    self.put_back_records(event);
                }
                return;
            }
        }
    }

    /// The records kept for the front end, as events: each VM's exits, then
    /// the slices.
    pub(super) fn take_records(&mut self) -> Vec<Event> {
        let mut events: Vec<Event> = (self.slots.enumerate_mut())
            .filter(|(_, slot)| !slot.live_exits.is_empty())
            .map(|(vm, slot)| Event::Exits { vm, records: Vec::from(std::mem::take(&mut slot.live_exits)) })
            .collect();
        if !self.live_slices.is_empty() || self.live_slices_dropped > 0 {
            let records = std::mem::take(&mut self.live_slices);
            events.push(Event::Slices { records, dropped: std::mem::take(&mut self.live_slices_dropped) });
        }
        events
    }

    /// Keeps records that could not be sent (nothing newer was kept since).
    pub(super) fn put_back_records(&mut self, event: Event) {
        match event {
            Event::Exits { vm, records } => self.slots[vm].live_exits = records.into(),
            Event::Slices { records, dropped } => (self.live_slices, self.live_slices_dropped) = (records, dropped),
            _ => unreachable!("only records are put back"),
        }
    }
}
