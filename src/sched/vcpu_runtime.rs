//! One vCPU of a VM at run time, as the scheduler keeps it: whether it can
//! run, its virtual timer, the interrupts other vCPUs raised on it, and its
//! time. Its KVM side is the machine's [`crate::vm::Vcpu`] of the same index.
//!
//! A VM's vCPUs share its weight (as CFS group scheduling and Xen's credit
//! scheduler share a group's or a domain's): the planner picks the VM, and
//! the VM gives its slice to the runnable vCPU that has had the least
//! ([`VcpuRuntime::charged_ns`]), so that they share it evenly over time.

use super::virtual_timer::VirtualTimer;

/// Whether a vCPU can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VcpuState {
    /// It runs when its VM gets the CPU.
    #[default]
    Runnable,
    /// In `hlt` with interrupts on: its timer's next tick (`until_ns`,
    /// monotonic) or an interrupt from a sibling wakes it.
    Sleeping {
        /// When its timer ticks next, if it runs.
        until_ns: Option<u64>,
    },
    /// In `hlt` with interrupts off, or asleep with nothing left that could
    /// wake it: done for good.
    Halted,
}

impl VcpuState {
    /// Its name in the report: `runnable`, `sleeping` (until its timer's
    /// tick), `waiting` (in hlt for a sibling's interrupt) or `halted`.
    pub fn name(self) -> &'static str {
        self.words().0
    }

    /// Its word in a pane's vCPU cell: `run`, `sleep`, `wait` or `halt`.
    pub fn cell_word(self) -> &'static str {
        self.words().1
    }

    fn words(self) -> (&'static str, &'static str) {
        match self {
            Self::Runnable => ("runnable", "run"),
            Self::Sleeping { until_ns: Some(_) } => ("sleeping", "sleep"),
            Self::Sleeping { until_ns: None } => ("waiting", "wait"),
            Self::Halted => ("halted", "halt"),
        }
    }
}

/// The vectors raised on a vCPU and not yet injected, a bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Vectors([u64; 4]);

impl Vectors {
    /// Adds `vector`; false when it was already waiting (the two fold into one).
    pub fn raise(&mut self, vector: u8) -> bool {
        let (word, bit) = (usize::from(vector / 64), 1u64 << (vector % 64));
        let fresh = self.0[word] & bit == 0;
        self.0[word] |= bit;
        fresh
    }

    /// The highest vector waiting (x86 delivers the highest first), taken out.
    pub fn take_highest(&mut self) -> Option<u8> {
        let word = (0..4).rev().find(|&word| self.0[word] != 0)?;
        let bit = 63 - self.0[word].leading_zeros();
        self.0[word] &= !(1u64 << bit);
        Some((word * 64) as u8 + bit as u8)
    }

    /// Whether any vector waits.
    pub fn any(&self) -> bool {
        self.0.iter().any(|&word| word != 0)
    }
}

/// One vCPU as the scheduler keeps it.
#[derive(Debug, Default)]
pub struct VcpuRuntime {
    /// Whether it can run.
    pub state: VcpuState,
    /// The virtual timer it programs (HC_timerStart).
    pub timer: VirtualTimer,
    /// Interrupts its siblings raised on it (HC_ipi), waiting to go in.
    pub pending: Vectors,
    /// Nanoseconds inside KVM_RUN.
    pub cpu_ns: u64,
    /// Its part of what its VM was charged (the VM's charge of each slice,
    /// split by the time each vCPU ran in it).
    pub charged_ns: u64,
    /// Its time in KVM_RUN in the slice under way, up to the deadline.
    pub slice_ns: u64,
    /// Guest exits it made.
    pub exits: u64,
    /// Interrupts raised on it by its siblings (HC_ipi), folded ones included.
    pub ipis: u64,
    /// Of those, raised while the same vector still waited.
    pub ipis_coalesced: u64,
    /// Its HC_gvaToHva result waiting for the `in`.
    pub gva_result: Option<u32>,
}

impl VcpuRuntime {
    /// Whether it can run now.
    pub fn runnable(&self) -> bool {
        self.state == VcpuState::Runnable
    }

    /// Wakes it if it sleeps and its timer's tick is due at `now_ns`.
    pub fn wake_if_due(&mut self, now_ns: u64) {
        if let VcpuState::Sleeping { until_ns: Some(until_ns) } = self.state {
            if until_ns <= now_ns {
                self.state = VcpuState::Runnable;
            }
        }
    }

    /// Its name in console lines and notes: `cpu2`.
    pub fn label(index: usize) -> String {
        format!("cpu{index}")
    }
}

/// Which of `vcpus` runs next: the runnable one that has had the least of
/// its VM's time, the lowest index among equals.
pub fn pick(vcpus: &[VcpuRuntime]) -> Option<usize> {
    vcpus.iter().enumerate().filter(|(_, vcpu)| vcpu.runnable()).min_by_key(|(_, vcpu)| vcpu.charged_ns).map(|(i, _)| i)
}

/// Splits a slice's `charged_ns` over the vCPUs that ran in it, by the time
/// each ran (`slice_ns`), and starts the next slice's count.
pub fn settle_slice(vcpus: &mut [VcpuRuntime], charged_ns: u64) {
    let ran: u64 = vcpus.iter().map(|vcpu| vcpu.slice_ns).sum();
    if ran == 0 {
        return;
    }
    let mut left = charged_ns;
    let last = vcpus.iter().rposition(|vcpu| vcpu.slice_ns > 0).expect("one ran");
    for (index, vcpu) in vcpus.iter_mut().enumerate() {
        if vcpu.slice_ns == 0 {
            continue;
        }
        // The last takes the rounding, so that the parts add up to the whole.
        let part = if index == last {
            left
        } else {
            (u128::from(charged_ns) * u128::from(vcpu.slice_ns) / u128::from(ran)) as u64
        };
        vcpu.charged_ns += part;
        left -= part;
        vcpu.slice_ns = 0;
    }
}

/// Whether a VM whose vCPUs are as `vcpus` says can still run: one is
/// runnable, or one sleeps with a timer that will wake it. Sleepers without
/// a timer wait for a sibling's interrupt, which only a running sibling can
/// send.
pub fn can_wake(vcpus: &[VcpuRuntime]) -> bool {
    vcpus.iter().any(|vcpu| match vcpu.state {
        VcpuState::Runnable => true,
        VcpuState::Sleeping { until_ns } => until_ns.is_some(),
        VcpuState::Halted => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vcpus(states: &[(VcpuState, u64)]) -> Vec<VcpuRuntime> {
        states.iter().map(|&(state, charged_ns)| VcpuRuntime { state, charged_ns, ..Default::default() }).collect()
    }

    #[test]
    fn vectors_fold_and_come_out_highest_first() {
        let mut vectors = Vectors::default();
        assert!(vectors.raise(0x20));
        assert!(vectors.raise(0xff));
        assert!(vectors.raise(0x41));
        assert!(!vectors.raise(0x41), "a second raise of a waiting vector folds into it");
        assert_eq!(vectors.take_highest(), Some(0xff));
        assert_eq!(vectors.take_highest(), Some(0x41));
        assert!(vectors.any());
        assert_eq!(vectors.take_highest(), Some(0x20));
        assert_eq!(vectors.take_highest(), None);
        assert!(!vectors.any());
    }

    #[test]
    fn the_vcpu_that_had_least_runs_next() {
        let asleep = VcpuState::Sleeping { until_ns: None };
        let list = vcpus(&[(VcpuState::Runnable, 30), (asleep, 0), (VcpuState::Runnable, 10), (VcpuState::Halted, 0)]);
        assert_eq!(pick(&list), Some(2));
        let list = vcpus(&[(VcpuState::Runnable, 5), (VcpuState::Runnable, 5)]);
        assert_eq!(pick(&list), Some(0), "the lowest index among equals");
        assert_eq!(pick(&vcpus(&[(asleep, 0), (VcpuState::Halted, 0)])), None);
    }

    #[test]
    fn a_slice_is_split_by_the_time_each_ran_and_adds_up() {
        let mut list = vcpus(&[(VcpuState::Runnable, 0), (VcpuState::Runnable, 0), (VcpuState::Runnable, 0)]);
        (list[0].slice_ns, list[2].slice_ns) = (300, 700);
        settle_slice(&mut list, 999);
        assert_eq!(list.iter().map(|vcpu| vcpu.charged_ns).collect::<Vec<_>>(), [299, 0, 700]);
        assert!(list.iter().all(|vcpu| vcpu.slice_ns == 0));
        settle_slice(&mut list, 50);
        assert_eq!(list.iter().map(|vcpu| vcpu.charged_ns).sum::<u64>(), 999, "nothing ran: nothing split");
    }

    #[test]
    fn sleepers_without_a_timer_need_a_sibling_that_can_run() {
        let waits = VcpuState::Sleeping { until_ns: None };
        let timed = VcpuState::Sleeping { until_ns: Some(5) };
        assert!(!can_wake(&vcpus(&[(waits, 0), (waits, 0), (VcpuState::Halted, 0)])));
        assert!(can_wake(&vcpus(&[(waits, 0), (timed, 0)])));
        assert!(can_wake(&vcpus(&[(waits, 0), (VcpuState::Runnable, 0)])));
        let mut woken = vcpus(&[(timed, 0)]);
        woken[0].wake_if_due(4);
        assert_eq!(woken[0].state, timed);
        woken[0].wake_if_due(5);
        assert!(woken[0].runnable());
    }
}
