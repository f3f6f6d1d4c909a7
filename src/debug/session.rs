//! The core's side of a VM under gdb: its breakpoints and watchpoints, how
//! they map onto what this host's KVM honours ([`Strategy`]), and what a
//! debug exit means for them. Pure bookkeeping over guest memory; the core
//! does the KVM calls.

use crossbeam_channel::Sender;

use super::{BreakKind, DebugReply, DebugStop, WatchKind};
use crate::hypercall::{GuestView, Translate};
use crate::vm::guest_debug::{
    BreakpointMethod, DebugEvent, DebugExit, DebugSlot, GuestDebug, Strategy, WatchpointMethod,
};

/// The debug registers: four slots, shared by breakpoints and watchpoints.
const DEBUG_REGISTERS: usize = 4;
/// The int3 opcode.
const INT3: u8 = 0xCC;
/// The most bytes one stepping watchpoint compares after each instruction.
const MAX_STEPPED_WATCH: u64 = 4096;

/// What a gdb resume asked for, until it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// `continue`.
    Continue,
    /// `stepi`.
    Step,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Breakpoint {
    kind: BreakKind,
    address: u64,
    /// Under int3: the byte the int3 replaced.
    original: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Watchpoint {
    kind: WatchKind,
    address: u64,
    length: u64,
    /// Under stepping: the bytes as they were after the last instruction.
    last: Vec<u8>,
}

/// Who holds a debug register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    Breakpoint(usize),
    Watchpoint(usize),
}

/// A VM that has a gdb server: what the core keeps for it.
pub struct Debugged {
    /// Where its server listens.
    pub address: String,
    replies: Sender<DebugReply>,
    strategy: Strategy,
    /// The connected debugger, if one is.
    pub peer: Option<String>,
    /// The resume gdb waits to hear the end of.
    pub resumed: Option<Resume>,
    breakpoints: Vec<Breakpoint>,
    watchpoints: Vec<Watchpoint>,
    /// What the vCPU was last given (to decode its debug exits by).
    pub applied: GuestDebug,
}

impl Debugged {
    /// A VM served at `address`, answering on `replies`, by `strategy`.
    pub fn new(address: String, replies: Sender<DebugReply>, strategy: Strategy) -> Self {
        Self {
            address,
            replies,
            strategy,
            peer: None,
            resumed: None,
            breakpoints: Vec::new(),
            watchpoints: Vec::new(),
            applied: GuestDebug::default(),
        }
    }

    /// How breakpoints and watchpoints are served, in words.
    pub fn serving(&self) -> String {
        self.strategy.describe()
    }

    /// Answers the server (which may have gone: then nobody is waiting).
    pub fn reply(&self, reply: DebugReply) {
        let _ = self.replies.send(reply);
    }

    /// Answers the resume gdb waits on, if it waits.
    pub fn answer_resume(&mut self, reply: DebugReply) {
        if self.resumed.take().is_some() {
            self.reply(reply);
        }
    }

    fn breakpoint_uses_register(&self, kind: BreakKind) -> bool {
        kind == BreakKind::Hardware || self.strategy.breakpoints == BreakpointMethod::DebugRegisters
    }

    fn watchpoint_uses_register(&self) -> bool {
        self.strategy.watchpoints == WatchpointMethod::DebugRegisters
    }

    /// Who holds DR0-DR3, in slot order.
    fn holders(&self) -> Vec<Holder> {
        let breakpoints = (self.breakpoints.iter().enumerate())
            .filter(|(_, b)| self.breakpoint_uses_register(b.kind))
            .map(|(index, _)| Holder::Breakpoint(index));
        let watchpoints =
            (0..self.watchpoints.len()).filter(|_| self.watchpoint_uses_register()).map(Holder::Watchpoint);
        breakpoints.chain(watchpoints).collect()
    }

    /// Whether the VM must be single-stepped to serve what is set (a
    /// breakpoint or watchpoint served by stepping).
    fn needs_stepping(&self) -> bool {
        let breakpoints = self.strategy.breakpoints == BreakpointMethod::Stepping
            && self.breakpoints.iter().any(|b| b.kind == BreakKind::Software);
        let watchpoints = self.strategy.watchpoints == WatchpointMethod::Stepping && !self.watchpoints.is_empty();
        breakpoints || watchpoints
    }

    /// What KVM_SET_GUEST_DEBUG should be given for the resume `resume`
    /// (None: the VM goes on without a debugger).
    pub fn guest_debug(&self, resume: Option<Resume>) -> GuestDebug {
        let Some(resume) = resume else { return GuestDebug::default() };
        let mut debug = GuestDebug {
            single_step: resume == Resume::Step || self.needs_stepping(),
            intercept_int3: self.breakpoints.iter().any(|b| b.original.is_some()),
            slots: [None; 4],
        };
        for (slot, holder) in debug.slots.iter_mut().zip(self.holders()) {
            *slot = Some(match holder {
                Holder::Breakpoint(index) => DebugSlot::Execute(self.breakpoints[index].address),
                Holder::Watchpoint(index) => {
                    let Watchpoint { kind, address, length, .. } = self.watchpoints[index];
                    match kind {
                        WatchKind::Write => DebugSlot::Write { address, length },
                        // x86 has no read-only watch: gdb tells reads apart by the value.
                        WatchKind::Read | WatchKind::Access => DebugSlot::Access { address, length },
                    }
                }
            });
        }
        debug
    }

    /// Inserts or removes a breakpoint; Ok(false) when it cannot be had.
    pub fn breakpoint<T: Translate>(
        &mut self,
        kind: BreakKind,
        address: u64,
        insert: bool,
        memory: &GuestView<'_, T>,
    ) -> Result<bool, String> {
        let found = self.breakpoints.iter().position(|b| b.kind == kind && b.address == address);
        if !insert {
            let Some(index) = found else { return Ok(false) };
            let removed = self.breakpoints.remove(index);
            if let Some(original) = removed.original {
                memory.write(address, &[original]).map_err(|error| error.to_string())?;
            }
            return Ok(true);
        }
        if found.is_some() {
            return Ok(true);
        }
        let uses_register = self.breakpoint_uses_register(kind);
        let original = match (kind, self.strategy.breakpoints) {
            (BreakKind::Hardware, _) if !self.strategy.hw_breakpoints => return Ok(false),
            (BreakKind::Software, BreakpointMethod::Unsupported) => return Ok(false),
            (BreakKind::Software, BreakpointMethod::Int3) => {
                let mut byte = [0];
                if memory.read(address, &mut byte) == 0 {
                    return Err(format!("0x{address:x} is not mapped by the guest's page tables"));
                }
                memory.write(address, &[INT3]).map_err(|error| error.to_string())?;
                Some(byte[0])
            }
            _ => None,
        };
        if uses_register && self.holders().len() == DEBUG_REGISTERS {
            return Ok(false);
        }
        self.breakpoints.push(Breakpoint { kind, address, original });
        Ok(true)
    }

    /// Inserts or removes a watchpoint; Ok(false) when it cannot be had.
    pub fn watchpoint<T: Translate>(
        &mut self,
        kind: WatchKind,
        address: u64,
        length: u64,
        insert: bool,
        memory: &GuestView<'_, T>,
    ) -> Result<bool, String> {
        let found =
            (self.watchpoints.iter()).position(|w| w.kind == kind && w.address == address && w.length == length);
        if !insert {
            return Ok(found.map(|index| self.watchpoints.remove(index)).is_some());
        }
        if found.is_some() {
            return Ok(true);
        }
        let possible = match self.strategy.watchpoints {
            WatchpointMethod::DebugRegisters => {
                DebugSlot::fits(address, length) && self.holders().len() < DEBUG_REGISTERS
            }
            // Stepping sees a write by the change it makes, and nothing of a read.
            WatchpointMethod::Stepping => kind == WatchKind::Write && length <= MAX_STEPPED_WATCH,
            WatchpointMethod::Unsupported => false,
        };
        if !possible {
            return Ok(false);
        }
        let mut last = vec![0; length as usize];
        memory.read(address, &mut last);
        self.watchpoints.push(Watchpoint { kind, address, length, last });
        Ok(true)
    }

    /// Puts the guest's own bytes back under every int3 (`lifted`) or the
    /// int3s back over them (not `lifted`): around a save, so that a
    /// breakpoint's byte never leaves the host in a snapshot.
    pub fn lift_breakpoints<T: Translate>(&self, lifted: bool, memory: &GuestView<'_, T>) {
        for breakpoint in &self.breakpoints {
            if let Some(original) = breakpoint.original {
                let _ = memory.write(breakpoint.address, &[if lifted { original } else { INT3 }]);
            }
        }
    }

    /// Puts the guest's own bytes back under the int3s in `pages`, copies
    /// of guest pages (index, bytes): a migration's rounds send them, and a
    /// breakpoint's byte never leaves the host.
    pub fn hide_in_pages<'p, T: Translate>(
        &self,
        memory: &GuestView<'_, T>,
        pages: impl Iterator<Item = (u64, &'p mut [u8])>,
    ) {
        let hidden: Vec<(u64, u8)> = (self.breakpoints.iter())
            .filter_map(|breakpoint| Some((memory.physical(breakpoint.address).ok()?, breakpoint.original?)))
            .collect();
        if hidden.is_empty() {
            return;
        }
        for (index, page) in pages {
            for &(physical, original) in &hidden {
                if physical / page.len() as u64 == index {
                    page[(physical % page.len() as u64) as usize] = original;
                }
            }
        }
    }

    /// Hides the int3 bytes in memory gdb reads at `address`.
    pub fn unpatch(&self, address: u64, bytes: &mut [u8]) {
        for breakpoint in &self.breakpoints {
            let Some(original) = breakpoint.original else { continue };
            if let Some(offset) = breakpoint.address.checked_sub(address).filter(|&o| o < bytes.len() as u64) {
                bytes[offset as usize] = original;
            }
        }
    }

    /// Writes what gdb asked at `address`. Bytes under an int3 are kept for
    /// when it is removed; the int3 stays in memory.
    pub fn write_memory<T: Translate>(
        &mut self,
        address: u64,
        bytes: &[u8],
        memory: &GuestView<'_, T>,
    ) -> Result<(), String> {
        memory.write(address, bytes).map_err(|error| error.to_string())?;
        for breakpoint in &mut self.breakpoints {
            let Some(original) = &mut breakpoint.original else { continue };
            if let Some(offset) = breakpoint.address.checked_sub(address).filter(|&o| o < bytes.len() as u64) {
                *original = bytes[offset as usize];
                memory.write(breakpoint.address, &[INT3]).map_err(|error| error.to_string())?;
            }
        }
        Ok(())
    }

    /// What a debug exit means: a stop to report, or nothing (a step of a
    /// VM being stepped to serve a breakpoint or watchpoint that did not hit).
    pub fn on_debug_exit<T: Translate>(&mut self, exit: DebugExit, memory: &GuestView<'_, T>) -> Option<DebugStop> {
        match exit.event(&self.applied) {
            DebugEvent::Int3 => Some(DebugStop::Breakpoint { address: exit.pc }),
            DebugEvent::Slot(index) => match self.holders().get(index) {
                Some(Holder::Watchpoint(index)) => {
                    let watchpoint = &mut self.watchpoints[*index];
                    memory.read(watchpoint.address, &mut watchpoint.last);
                    Some(DebugStop::Watchpoint { address: watchpoint.address, kind: watchpoint.kind })
                }
                _ => Some(DebugStop::Breakpoint { address: exit.pc }),
            },
            DebugEvent::Step => {
                let hit = self.stepped_to(exit.pc, memory);
                hit.or((self.resumed == Some(Resume::Step)).then_some(DebugStop::Step))
            }
        }
    }

    /// Where the VM is stepped to serve breakpoints or watchpoints: whether
    /// it has reached one at `pc` (before running it) or changed a watched
    /// byte. Also called after an I/O exit, whose next instruction some hosts
    /// run without reporting a step.
    pub fn stepped_to<T: Translate>(&mut self, pc: u64, memory: &GuestView<'_, T>) -> Option<DebugStop> {
        if !self.needs_stepping() || self.resumed != Some(Resume::Continue) {
            return None;
        }
        if self.strategy.breakpoints == BreakpointMethod::Stepping
            && self.breakpoints.iter().any(|b| b.kind == BreakKind::Software && b.address == pc)
        {
            return Some(DebugStop::Breakpoint { address: pc });
        }
        if self.strategy.watchpoints != WatchpointMethod::Stepping {
            return None;
        }
        let mut now = Vec::new();
        for watchpoint in &mut self.watchpoints {
            now.resize(watchpoint.last.len(), 0);
            memory.read(watchpoint.address, &mut now);
            if now != watchpoint.last {
                watchpoint.last.copy_from_slice(&now);
                return Some(DebugStop::Watchpoint { address: watchpoint.address, kind: watchpoint.kind });
            }
        }
        None
    }

    /// Forgets every breakpoint and watchpoint, putting back the bytes under
    /// int3s (a detach, a lost connection).
    pub fn clear<T: Translate>(&mut self, memory: &GuestView<'_, T>) {
        for breakpoint in self.breakpoints.drain(..) {
            if let Some(original) = breakpoint.original {
                let _ = memory.write(breakpoint.address, &[original]);
            }
        }
        self.watchpoints.clear();
    }

    /// Forgets every breakpoint and watchpoint without touching memory (the
    /// VM's memory is new: a restart).
    pub fn forget(&mut self) {
        self.breakpoints.clear();
        self.watchpoints.clear();
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::hypercall::guest::tests::FakeTables;
    use crate::vm::guest_debug::DebugCaps;
    use crate::vm::{GuestMemory, memory};

    const SIZE: u64 = 2 << 20;
    static TABLES: FakeTables = FakeTables { mapped: SIZE, remap: Vec::new() };

    fn view<'a>(memory: &'a GuestMemory) -> GuestView<'a, FakeTables> {
        GuestView { memory, memory_size: SIZE, translator: &TABLES }
    }

    fn debugged(caps: DebugCaps) -> Debugged {
        Debugged::new("test".into(), crossbeam_channel::unbounded().0, caps.strategy())
    }

    const KVM_PVM: DebugCaps =
        DebugCaps { single_step: true, hw_breakpoints: true, hw_watchpoints: false, sw_breakpoints: false };
    const HARDWARE: DebugCaps =
        DebugCaps { single_step: true, hw_breakpoints: true, hw_watchpoints: true, sw_breakpoints: true };

    #[test]
    fn breakpoints_take_the_debug_registers_where_int3_is_not_intercepted() {
        let mem = memory::allocate(SIZE).unwrap();
        let mut debug = debugged(KVM_PVM);
        for address in [0x10000, 0x10010, 0x10020, 0x10030] {
            assert_eq!(debug.breakpoint(BreakKind::Software, address, true, &view(&mem)), Ok(true));
        }
        assert_eq!(debug.breakpoint(BreakKind::Software, 0x10040, true, &view(&mem)), Ok(false), "four at most");
        let settings = debug.guest_debug(Some(Resume::Continue));
        assert_eq!(settings.slots[3], Some(DebugSlot::Execute(0x10030)));
        assert!(!settings.single_step && !settings.intercept_int3);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10000)).unwrap(), 0, "memory is untouched");
        assert_eq!(debug.breakpoint(BreakKind::Software, 0x10010, false, &view(&mem)), Ok(true));
        assert_eq!(debug.guest_debug(Some(Resume::Continue)).slots[1], Some(DebugSlot::Execute(0x10020)));
        assert_eq!(debug.guest_debug(None), GuestDebug::default());
    }

    #[test]
    fn int3_breakpoints_patch_memory_and_hide_it_from_reads() {
        let mem = memory::allocate(SIZE).unwrap();
        mem.write_slice(&[0x90, 0x55, 0xc3], GuestAddress(0x10000)).unwrap();
        let mut debug = debugged(HARDWARE);
        assert_eq!(debug.breakpoint(BreakKind::Software, 0x10001, true, &view(&mem)), Ok(true));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10001)).unwrap(), INT3);
        assert!(debug.guest_debug(Some(Resume::Continue)).intercept_int3);
        let mut read = [0x90, INT3, 0xc3];
        debug.unpatch(0x10000, &mut read);
        assert_eq!(read, [0x90, 0x55, 0xc3]);
        // A copy of its page for a migration's round shows the guest's byte.
        let mut copy = [[0u8; 4096]; 2];
        mem.read_slice(&mut copy[1], GuestAddress(0x10000)).unwrap();
        let pages = copy.iter_mut().zip([0x0f, 0x10]).map(|(page, index)| (index, page.as_mut_slice()));
        debug.hide_in_pages(&view(&mem), pages);
        assert_eq!((copy[1][..3].to_vec(), copy[0][1]), (vec![0x90, 0x55, 0xc3], 0));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10001)).unwrap(), INT3, "memory keeps the int3");
        // Around a save the guest's byte is back, then the int3 again.
        debug.lift_breakpoints(true, &view(&mem));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10001)).unwrap(), 0x55);
        debug.lift_breakpoints(false, &view(&mem));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10001)).unwrap(), INT3);
        assert_eq!(debug.write_memory(0x10000, &[0x91, 0x56], &view(&mem)), Ok(()));
        assert_eq!(mem.read_obj::<[u8; 2]>(GuestAddress(0x10000)).unwrap(), [0x91, INT3], "the int3 stays");
        assert_eq!(debug.breakpoint(BreakKind::Software, 0x10001, false, &view(&mem)), Ok(true));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10001)).unwrap(), 0x56, "what gdb wrote under it");
        assert_eq!(debug.breakpoint(BreakKind::Software, 0x8000_0000, true, &view(&mem)).map_err(|_| ()), Err(()));
    }

    #[test]
    fn watchpoints_by_stepping_stop_when_the_bytes_change() {
        let mem = memory::allocate(SIZE).unwrap();
        let mut debug = debugged(KVM_PVM);
        assert_eq!(debug.watchpoint(WatchKind::Read, 0x400, 4, true, &view(&mem)), Ok(false), "reads are not seen");
        assert_eq!(debug.watchpoint(WatchKind::Write, 0x400, 4, true, &view(&mem)), Ok(true));
        debug.resumed = Some(Resume::Continue);
        assert!(debug.guest_debug(debug.resumed).single_step);
        let step = DebugExit { exception: 1, pc: 0x10004, dr6: 1 << 14 };
        assert_eq!(debug.on_debug_exit(step, &view(&mem)), None);
        mem.write_obj(42u32, GuestAddress(0x400)).unwrap();
        let hit = debug.on_debug_exit(step, &view(&mem));
        assert_eq!(hit, Some(DebugStop::Watchpoint { address: 0x400, kind: WatchKind::Write }));
        assert_eq!(debug.on_debug_exit(step, &view(&mem)), None, "the new value is the one compared next");
        debug.resumed = Some(Resume::Step);
        assert_eq!(debug.on_debug_exit(step, &view(&mem)), Some(DebugStop::Step));
    }

    #[test]
    fn watchpoints_take_debug_registers_where_they_fire() {
        let mem = memory::allocate(SIZE).unwrap();
        let mut debug = debugged(HARDWARE);
        assert_eq!(debug.watchpoint(WatchKind::Write, 0x401, 4, true, &view(&mem)), Ok(false), "misaligned");
        assert_eq!(debug.watchpoint(WatchKind::Write, 0x400, 4, true, &view(&mem)), Ok(true));
        assert_eq!(debug.breakpoint(BreakKind::Hardware, 0x10000, true, &view(&mem)), Ok(true));
        debug.applied = debug.guest_debug(Some(Resume::Continue));
        assert!(!debug.applied.single_step);
        // Breakpoints come first in the slots, then watchpoints.
        assert_eq!(debug.applied.slots[1], Some(DebugSlot::Write { address: 0x400, length: 4 }));
        let fired = DebugExit { exception: 1, pc: 0x10008, dr6: 0b10 };
        let stop = debug.on_debug_exit(fired, &view(&mem));
        assert_eq!(stop, Some(DebugStop::Watchpoint { address: 0x400, kind: WatchKind::Write }));
        let fired = DebugExit { exception: 1, pc: 0x10000, dr6: 0b1 };
        assert_eq!(debug.on_debug_exit(fired, &view(&mem)), Some(DebugStop::Breakpoint { address: 0x10000 }));
    }

    #[test]
    fn breakpoints_by_stepping_stop_before_the_instruction() {
        let mem = memory::allocate(SIZE).unwrap();
        let caps = DebugCaps { single_step: true, ..Default::default() };
        let mut debug = debugged(caps);
        assert_eq!(debug.breakpoint(BreakKind::Hardware, 0x10000, true, &view(&mem)), Ok(false));
        assert_eq!(debug.breakpoint(BreakKind::Software, 0x10010, true, &view(&mem)), Ok(true));
        debug.resumed = Some(Resume::Continue);
        assert!(debug.guest_debug(debug.resumed).single_step);
        assert_eq!(debug.stepped_to(0x1000c, &view(&mem)), None);
        assert_eq!(debug.stepped_to(0x10010, &view(&mem)), Some(DebugStop::Breakpoint { address: 0x10010 }));
        debug.clear(&view(&mem));
        assert!(!debug.guest_debug(debug.resumed).single_step);
    }
}
