//! The VMs one core runs, by their run-wide ids: with `--cpus N` each core
//! holds only its own VMs, so a VM's id is the same on every core, in every
//! event and in the report, whichever core runs it.

use std::ops::{Index, IndexMut};

use super::Slot;
use crate::event::VmId;

/// A core's VMs, indexed by run-wide [`VmId`]; the ids of VMs another core
/// runs are holes here.
#[derive(Default)]
pub(super) struct Slots {
    slots: Vec<Option<Slot>>,
}

impl Slots {
    /// The run's VMs by id, this core's as `Some`.
    pub(super) fn of(slots: Vec<Option<Slot>>) -> Self {
        Self { slots }
    }

    /// How many VM ids the run has (this core's and the others').
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether VM `vm` runs on this core.
    pub(super) fn owns(&self, vm: VmId) -> bool {
        self.slots.get(vm).is_some_and(Option::is_some)
    }

    pub(super) fn get(&self, vm: VmId) -> Option<&Slot> {
        self.slots.get(vm).and_then(Option::as_ref)
    }

    pub(super) fn get_mut(&mut self, vm: VmId) -> Option<&mut Slot> {
        self.slots.get_mut(vm).and_then(Option::as_mut)
    }

    /// This core's VMs, in id order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().flatten()
    }

    /// This core's VMs, in id order.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.slots.iter_mut().flatten()
    }

    /// This core's VMs with their ids.
    pub(super) fn enumerate_mut(&mut self) -> impl Iterator<Item = (VmId, &mut Slot)> {
        self.slots.iter_mut().enumerate().filter_map(|(vm, slot)| slot.as_mut().map(|slot| (vm, slot)))
    }

    /// Every id, this core's VMs as `Some`.
    pub(super) fn each(&self) -> impl Iterator<Item = Option<&Slot>> {
        self.slots.iter().map(Option::as_ref)
    }

    /// Takes VM `vm` off this core (it moves to another).
    pub(super) fn take(&mut self, vm: VmId) -> Option<Slot> {
        self.slots.get_mut(vm).and_then(Option::take)
    }

    /// Puts VM `vm`, handed over by another core, on this one.
    pub(super) fn put(&mut self, vm: VmId, slot: Slot) {
        if vm >= self.slots.len() {
            self.slots.resize_with(vm + 1, || None);
        }
        self.slots[vm] = Some(slot);
    }

    /// Adds a VM on this core under the next id; returns the id.
    pub(super) fn push(&mut self, slot: Slot) -> VmId {
        self.slots.push(Some(slot));
        self.slots.len() - 1
    }
}

impl Index<VmId> for Slots {
    type Output = Slot;

    #[track_caller]
    fn index(&self, vm: VmId) -> &Slot {
        match self.get(vm) {
            Some(slot) => slot,
            None => panic!("VM {vm} does not run on this core"),
        }
    }
}

impl IndexMut<VmId> for Slots {
    #[track_caller]
    fn index_mut(&mut self, vm: VmId) -> &mut Slot {
        match self.get_mut(vm) {
            Some(slot) => slot,
            None => panic!("VM {vm} does not run on this core"),
        }
    }
}
