//! With `--cpus N`, the cores' events become one run's: each core sends
//! every VM's sample and weight, stand-ins for those another core runs, and
//! its own VMs' report; the merger keeps each VM's from the core that runs
//! it and passes every other event on as it comes. The front ends cannot
//! tell one core from N. It is also where the balancer runs: every merged
//! sample it sees each VM's core, target and lag, and asks a core to hand
//! a VM over when [`balance::plan`] says so.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Select, Sender};

use crate::config::Policy;
use crate::event::{Event, Internal, Message, Settings, VmId, VmSample, VmState};
use crate::report::{CoreReport, RunReport, VmReport, VmTimings};
use crate::sched::balance::{self, VmLoad};
use crate::sched::shares::{machine_shares, pinned_machine_shares};
use crate::vm::KickTarget;

/// The most a VM's lag (ahead or behind) counts, as EEVDF bounds lag: a VM
/// held back long ago does not claim a core for ever after.
const LAG_BOUND_NS: f64 = 100_000_000.0;

/// Puts the cores' events together, and balances.
pub(super) struct Merger {
    cores: usize,
    /// Each VM's latest sample, from the core that runs it.
    latest: Vec<Option<VmSample>>,
    /// Each core has sent a sample since the last merged one.
    sampled: Vec<bool>,
    /// Each core has sent its settings.
    settings: Vec<Option<Settings>>,
    /// Each VM's weight.
    weights: Vec<f64>,
    /// Which VMs can run.
    running: Vec<bool>,
    /// Each core's report, as they finish.
    reports: Vec<Option<RunReport>>,
    /// How far behind its target each VM is (ns of CPU).
    lag_ns: Vec<f64>,
    /// The last merged sample's time and charges.
    last: Option<(u64, Vec<u64>)>,
    policy: Policy,
    /// The cores, to ask for moves.
    to_cores: Vec<(Sender<Message>, Arc<KickTarget>)>,
    /// Gang windows, replanned as weights and states change.
    gang: Option<Arc<super::gang::GangBoard>>,
    /// The quantum the cores run with.
    quantum_ns: u64,
}

impl Merger {
    pub(super) fn new(vms: usize, to_cores: Vec<(Sender<Message>, Arc<KickTarget>)>, policy: Policy) -> Self {
        let cores = to_cores.len();
        Self {
            cores,
            latest: vec![None; vms],
            sampled: vec![false; cores],
            settings: vec![None; cores],
            weights: vec![1.0; vms],
            running: vec![true; vms],
            reports: vec![None; cores],
            lag_ns: vec![0.0; vms],
            last: None,
            policy,
            to_cores,
            gang: None,
            quantum_ns: crate::config::DEFAULT_QUANTUM.as_nanos() as u64,
        }
    }

    /// Replans `gang`'s windows from what it sees.
    pub(super) fn with_gang(self, gang: Arc<super::gang::GangBoard>) -> Self {
        Self { gang: Some(gang), ..self }
    }

    /// Plans the gang windows for the VMs that can run now, by weight.
    fn replan_gang(&self) {
        let Some(gang) = self.gang.as_ref().filter(|_| self.policy == Policy::Gang) else { return };
        let weights: Vec<f64> =
            (0..self.weights.len()).map(|vm| if self.running[vm] { self.weights[vm] } else { 0.0 }).collect();
        gang.replan(&weights, self.cores, self.quantum_ns);
    }

    /// Passes the events of `inputs` (one channel per core) on to `out`
    /// until every core has finished and the merged report has gone out.
    pub(super) fn run(mut self, inputs: Vec<Receiver<Event>>, out: Sender<Event>) {
        let mut open = inputs.len();
        let mut select = Select::new();
        for input in &inputs {
            select.recv(input);
        }
        while open > 0 {
            let ready = select.select();
            let core = ready.index();
            let Ok(event) = ready.recv(&inputs[core]) else {
                select.remove(core);
                open -= 1;
                continue;
            };
            for merged in self.take(core, event) {
                if let Event::Sample { elapsed_ns, vms } = &merged {
                    self.balance(*elapsed_ns, vms);
                }
                // The front end went away: the cores finish on their own.
                let _ = out.send(merged);
            }
        }
    }

    /// What core `core`'s `event` becomes: nothing yet (a part of a whole),
    /// or events for the front end.
    pub(super) fn take(&mut self, core: usize, event: Event) -> Vec<Event> {
        match event {
            Event::Sample { elapsed_ns, vms } => {
                for (vm, sample) in vms.into_iter().enumerate() {
                    if sample.core == core && vm < self.latest.len() {
                        self.latest[vm] = Some(sample);
                    }
                }
                self.sampled[core] = true;
                // One merged sample per round of core 0's (each core samples
                // at the same rate), once every core and VM has been heard.
                if core != 0 || self.sampled.contains(&false) || self.latest.iter().any(Option::is_none) {
                    return Vec::new();
                }
                self.sampled.iter_mut().for_each(|sampled| *sampled = false);
                self.replan_gang();
                let vms = self.latest.iter().flatten().cloned().collect();
                vec![Event::Sample { elapsed_ns, vms }]
            }
            Event::Settings(settings) => {
                self.policy = settings.policy;
                self.quantum_ns = settings.quantum.as_nanos() as u64;
                for (vm, &weight) in settings.weights.iter().enumerate() {
                    if !weight.is_nan() && vm < self.weights.len() {
                        self.weights[vm] = weight;
                    }
                }
                self.settings[core] = Some(settings.clone());
                if self.settings.iter().any(Option::is_none) {
                    return Vec::new();
                }
                self.replan_gang();
                vec![Event::Settings(Settings { weights: self.weights.clone(), ..settings })]
            }
            Event::State { vm, state } => {
                if let Some(running) = self.running.get_mut(vm) {
                    *running = state == VmState::Running;
                }
                vec![Event::State { vm, state }]
            }
            Event::Finished(report) => {
                self.reports[core] = Some(*report);
                if self.reports.iter().any(Option::is_none) {
                    return Vec::new();
                }
                let reports: Vec<RunReport> = self.reports.iter_mut().filter_map(Option::take).collect();
                vec![Event::Finished(Box::new(self.merge_reports(reports)))]
            }
            event => vec![event],
        }
    }

    /// Each VM's target in cores now: its machine share (weights under
    /// `fair`, equal under `rr`; none under `io`, which pursues none).
    fn targets(&self, vms: &[VmSample]) -> Vec<f64> {
        let weights: Vec<f64> = (0..vms.len())
            .map(|vm| match (self.running[vm], self.policy) {
                (false, _) | (_, Policy::Io) => 0.0,
                (true, Policy::Rr) => 1.0,
                (true, Policy::Fair | Policy::Gang) => self.weights[vm],
            })
            .collect();
        if self.policy == Policy::Gang {
            let vcpus: Vec<usize> = vms.iter().map(|vm| vm.vcpus.len().max(1)).collect();
            return crate::sched::gang::gang_cores(&weights, &vcpus, self.cores);
        }
        let pins: Vec<Vec<usize>> = vms.iter().map(|vm| vm.pin.clone()).collect();
        pinned_machine_shares(&weights, self.cores, &pins).into_iter().map(|share| share * self.cores as f64).collect()
    }

    /// Updates each VM's lag from a merged sample, and asks for the moves
    /// the balancer wants.
    fn balance(&mut self, elapsed_ns: u64, vms: &[VmSample]) {
        let charged: Vec<u64> = vms.iter().map(|vm| vm.charged_ns).collect();
        let targets = self.targets(vms);
        if let Some((before_ns, before)) = &self.last {
            let span = elapsed_ns.saturating_sub(*before_ns) as f64;
            for vm in 0..vms.len() {
                let got = charged[vm].saturating_sub(before.get(vm).copied().unwrap_or(0)) as f64;
                let lag = self.lag_ns[vm] + targets[vm] * span - got;
                self.lag_ns[vm] = if targets[vm] > 0.0 { lag.clamp(-LAG_BOUND_NS, LAG_BOUND_NS) } else { 0.0 };
            }
        }
        self.last = Some((elapsed_ns, charged));
        let loads: Vec<VmLoad> = (0..vms.len())
            .map(|vm| VmLoad {
                core: vms[vm].core,
                target: targets[vm],
                lag_ns: self.lag_ns[vm] as i64,
                // A gang VM spans its home core and the next ones: it stays home.
                allowed: if self.policy == Policy::Gang && vms[vm].vcpus.len() > 1 {
                    vec![vms[vm].core]
                } else {
                    vms[vm].pin.clone()
                },
            })
            .collect();
        for (vm, to) in balance::plan(&loads, self.cores) {
            self.ask_move(vm, vms[vm].core, to);
        }
    }

    fn ask_move(&self, vm: VmId, from: usize, to: usize) {
        let Some((commands, kick)) = self.to_cores.get(from) else { return };
        let _ = commands.send(Message::Internal(Internal::MoveVm { vm, to }));
        kick.request();
    }

    /// The cores' parts (each its VMs', with their ids) as one list in VM order.
    fn interleave<T>(parts: Vec<(Vec<VmId>, Vec<T>)>) -> Vec<T> {
        let mut placed: Vec<(VmId, T)> =
            parts.into_iter().flat_map(|(ids, items)| ids.into_iter().zip(items)).collect();
        placed.sort_by_key(|(vm, _)| *vm);
        placed.into_iter().map(|(_, item)| item).collect()
    }

    /// One run's report from the cores': every VM's from the core that ran
    /// it last, shares of the whole machine, a row per core.
    fn merge_reports(&self, reports: Vec<RunReport>) -> RunReport {
        let wall_ns = reports.iter().map(|report| report.wall_ns).max().unwrap_or(0);
        let cores: Vec<CoreReport> =
            reports.iter().enumerate().map(|(index, report)| CoreReport { index, ..report.cores[0].clone() }).collect();
        // The worst core's preemption figures: what a slice can suffer.
        let worst = |pick: fn(&RunReport) -> Option<crate::stats::Percentiles>| {
            reports.iter().filter_map(pick).max_by(|a, b| a.p99.total_cmp(&b.p99))
        };
        let preempt_overrun_us = worst(|report| report.preempt_overrun_us);
        let preempt_early_us = worst(|report| report.preempt_early_us);
        let ids = |report: &RunReport| report.cores[0].ids.clone();
        let vm_parts: Vec<(Vec<VmId>, Vec<VmReport>)> =
            reports.iter().map(|report| (ids(report), report.vms.clone())).collect();
        let timing_parts: Vec<(Vec<VmId>, Vec<VmTimings>)> =
            reports.iter().map(|report| (ids(report), report.timings.clone())).collect();
        let mut vms = Self::interleave(vm_parts);
        let timings = Self::interleave(timing_parts);
        share_the_machine(&mut vms, self.cores);
        let total_cpu: u64 = vms.iter().map(|vm| vm.cpu_ns).sum();
        // One trace, written by every core: its counts are theirs together.
        let trace = reports.iter().filter_map(|report| report.trace.clone()).reduce(|mut all, core| {
            all.records += core.records;
            all.dropped += core.dropped;
            all
        });
        let mut first = reports.into_iter().next().expect("at least one core");
        first.trace = trace;
        first.wall_ns = wall_ns;
        first.outside_kvm_run_pct =
            100.0 * (1.0 - total_cpu as f64 / (wall_ns as f64 * self.cores as f64).max(1.0)).max(0.0);
        first.preempt_overrun_us = preempt_overrun_us;
        first.preempt_early_us = preempt_early_us;
        first.vms = vms;
        first.timings = timings;
        first.cores = cores;
        first
    }
}

/// Each VM's shares of the whole machine: of all the VMs' time (`share`,
/// `charged_share`, each vCPU's `share`) and what its weight gives it
/// whatever the policy (`target_share`, capped at a core).
fn share_the_machine(vms: &mut [VmReport], cores: usize) {
    let total_cpu: u64 = vms.iter().map(|vm| vm.cpu_ns).sum();
    let total_charged: u64 = vms.iter().map(|vm| vm.charged_ns).sum();
    let weights: Vec<f64> = vms.iter().map(|vm| vm.weight).collect();
    let targets = machine_shares(&weights, cores);
    let ratio = |part: u64, whole: u64| if whole > 0 { part as f64 / whole as f64 } else { 0.0 };
    for (vm, target) in vms.iter_mut().zip(targets) {
        vm.share = ratio(vm.cpu_ns, total_cpu);
        vm.charged_share = ratio(vm.charged_ns, total_charged);
        vm.target_share = target;
        for vcpu in &mut vm.vcpus {
            vcpu.share = ratio(vcpu.cpu_ns, total_cpu);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::VmCounters;

    fn sample(core: usize, cpu_ns: u64) -> VmSample {
        VmSample {
            counters: VmCounters::default(),
            cpu_ns,
            charged_ns: cpu_ns,
            vcpus: Vec::new(),
            core,
            pin: Vec::new(),
        }
    }

    fn merger(vms: usize) -> Merger {
        let cores = (0..2).map(|_| (crossbeam_channel::unbounded().0, KickTarget::new())).collect();
        Merger::new(vms, cores, Policy::Fair)
    }

    #[test]
    fn samples_go_out_whole_in_vm_order_once_every_core_has_sent_one() {
        // VMs 0 and 2 on core 1, VM 1 on core 0.
        let mut merger = merger(3);
        let elsewhere = VmSample::elsewhere;
        let from_0 = |cpu| vec![elsewhere(), sample(0, cpu), elsewhere()];
        assert!(merger.take(0, Event::Sample { elapsed_ns: 1, vms: from_0(10) }).is_empty());
        // Core 1's goes out with core 0's next.
        let from_1 = vec![sample(1, 0), elsewhere(), sample(1, 2)];
        assert!(merger.take(1, Event::Sample { elapsed_ns: 1, vms: from_1 }).is_empty());
        let out = merger.take(0, Event::Sample { elapsed_ns: 2, vms: from_0(11) });
        let [Event::Sample { elapsed_ns: 2, vms }] = out.as_slice() else { panic!("{out:?}") };
        assert_eq!(vms.iter().map(|vm| (vm.core, vm.cpu_ns)).collect::<Vec<_>>(), [(1, 0), (0, 11), (1, 2)]);
    }

    #[test]
    fn weights_are_put_together_and_other_events_pass_at_once() {
        let mut merger = merger(2);
        let settings = |weights: Vec<f64>| Settings {
            policy: Policy::Fair,
            quantum: std::time::Duration::from_millis(1),
            timer: crate::config::TimerKind::Posix,
            weights,
            cpus: 2,
        };
        assert!(merger.take(0, Event::Settings(settings(vec![f64::NAN, 30.0]))).is_empty());
        let out = merger.take(1, Event::Settings(settings(vec![70.0, f64::NAN])));
        assert_eq!(out, [Event::Settings(settings(vec![70.0, 30.0]))]);
        let notice = Event::Notice { t_ns: 5, text: "hello".into() };
        assert_eq!(merger.take(1, notice.clone()), [notice]);
    }

    #[test]
    fn lag_builds_for_a_vm_short_of_its_target_and_a_move_is_asked_of_its_core() {
        let (to_0, asked) = crossbeam_channel::unbounded();
        let cores = vec![(to_0, KickTarget::new()), (crossbeam_channel::unbounded().0, KickTarget::new())];
        let mut merger = Merger::new(2, cores, Policy::Fair);
        // Two spinners on core 0: each gets half a core, each is owed one.
        merger.balance(0, &[sample(0, 0), sample(0, 0)]);
        merger.balance(200_000_000, &[sample(0, 100_000_000), sample(0, 100_000_000)]);
        assert!(merger.lag_ns.iter().all(|&lag| (lag - 100_000_000.0).abs() < 1.0), "{:?}", merger.lag_ns);
        // Each sample asks again while the core has not moved it.
        let moves: Vec<Message> = asked.try_iter().collect();
        assert_eq!(moves, vec![Message::Internal(Internal::MoveVm { vm: 0, to: 1 }); 2]);
    }

    #[test]
    fn a_machines_shares_cap_each_vm_at_a_core() {
        let vm = |weight: f64, cpu_ns: u64| VmReport { weight, cpu_ns, charged_ns: cpu_ns, ..VmReport::default() };
        let mut vms = vec![vm(3.0, 100), vm(1.0, 100)];
        share_the_machine(&mut vms, 2);
        assert_eq!(vms.iter().map(|vm| vm.target_share).collect::<Vec<_>>(), [0.5, 0.5]);
        assert_eq!(vms.iter().map(|vm| vm.share).collect::<Vec<_>>(), [0.5, 0.5]);
    }
}
