//! With `--cpus N`, the cores' events become one run's: each core sends its
//! own VMs' samples, weights and report, in VM order; the merger puts them
//! together by the placement (which core runs which VM) and passes every
//! other event on as it comes. The front ends cannot tell one core from N.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Select, Sender};

use crate::event::{Event, Settings, VmSample};
use crate::report::{CoreReport, RunReport, VmReport, VmTimings};
use crate::sched::shares::machine_shares;

/// Puts the cores' events together.
pub(super) struct Merger {
    placement: Arc<Vec<usize>>,
    cores: usize,
    /// Each core's latest sample (its VMs' only), until core 0's sends them.
    samples: Vec<Option<Vec<VmSample>>>,
    /// Each core's latest settings.
    settings: Vec<Option<Settings>>,
    /// Each core's report, as they finish.
    reports: Vec<Option<RunReport>>,
}

impl Merger {
    pub(super) fn new(placement: Arc<Vec<usize>>, cores: usize) -> Self {
        Self { placement, cores, samples: vec![None; cores], settings: vec![None; cores], reports: vec![None; cores] }
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
                self.samples[core] = Some(vms);
                // One merged sample per round of core 0's (each core samples
                // at the same rate).
                if core != 0 || self.samples.iter().any(Option::is_none) {
                    return Vec::new();
                }
                let parts: Vec<Vec<VmSample>> =
                    self.samples.iter().map(|part| part.clone().unwrap_or_default()).collect();
                vec![Event::Sample { elapsed_ns, vms: self.interleave(parts) }]
            }
            Event::Settings(settings) => {
                self.settings[core] = Some(settings);
                if self.settings.iter().any(Option::is_none) {
                    return Vec::new();
                }
                let parts: Vec<Vec<f64>> = self
                    .settings
                    .iter()
                    .map(|part| part.as_ref().map(|s| s.weights.clone()).unwrap_or_default())
                    .collect();
                let newest = self.settings[core].clone().expect("set above");
                vec![Event::Settings(Settings { weights: self.interleave(parts), ..newest })]
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

    /// The cores' parts (each its VMs', in VM order) as one list in VM order.
    fn interleave<T>(&self, parts: Vec<Vec<T>>) -> Vec<T> {
        let mut parts: Vec<std::vec::IntoIter<T>> = parts.into_iter().map(Vec::into_iter).collect();
        self.placement.iter().filter_map(|&core| parts.get_mut(core).and_then(Iterator::next)).collect()
    }

    /// One run's report from the cores': every VM's from the core that ran
    /// it, shares of the whole machine, a row per core.
    fn merge_reports(&self, reports: Vec<RunReport>) -> RunReport {
        let wall_ns = reports.iter().map(|report| report.wall_ns).max().unwrap_or(0);
        let cores: Vec<CoreReport> = reports
            .iter()
            .enumerate()
            .map(|(index, report)| CoreReport {
                index,
                vms: report.vms.iter().map(|vm| vm.name.clone()).collect(),
                ..report.cores.first().cloned().unwrap_or_default()
            })
            .collect();
        // The worst core's preemption figures: what a slice can suffer.
        let worst = |pick: fn(&RunReport) -> Option<crate::stats::Percentiles>| {
            reports.iter().filter_map(pick).max_by(|a, b| a.p99.total_cmp(&b.p99))
        };
        let preempt_overrun_us = worst(|report| report.preempt_overrun_us);
        let preempt_early_us = worst(|report| report.preempt_early_us);
        let vm_parts: Vec<Vec<VmReport>> = reports.iter().map(|report| report.vms.clone()).collect();
        let timing_parts: Vec<Vec<VmTimings>> = reports.iter().map(|report| report.timings.clone()).collect();
        let mut vms = self.interleave(vm_parts);
        let timings = self.interleave(timing_parts);
        share_the_machine(&mut vms, self.cores);
        let total_cpu: u64 = vms.iter().map(|vm| vm.cpu_ns).sum();
        let mut first = reports.into_iter().next().expect("at least one core");
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
/// whatever the policy (`target_share`, capped at a core per vCPU).
fn share_the_machine(vms: &mut [VmReport], cores: usize) {
    let total_cpu: u64 = vms.iter().map(|vm| vm.cpu_ns).sum();
    let total_charged: u64 = vms.iter().map(|vm| vm.charged_ns).sum();
    let weights: Vec<f64> = vms.iter().map(|vm| vm.weight).collect();
    let vcpus: Vec<u32> = vms.iter().map(|vm| vm.vcpus.len().max(1) as u32).collect();
    let targets = machine_shares(&weights, &vcpus, cores);
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
    use crate::config::Policy;
    use crate::stats::VmCounters;

    fn sample(cpu_ns: u64) -> VmSample {
        VmSample { counters: VmCounters::default(), cpu_ns, charged_ns: cpu_ns, vcpus: Vec::new(), core: 0 }
    }

    #[test]
    fn samples_go_out_whole_in_vm_order_once_every_core_has_sent_one() {
        // VMs 0 and 2 on core 1, VM 1 on core 0.
        let mut merger = Merger::new(Arc::new(vec![1, 0, 1]), 2);
        assert!(merger.take(0, Event::Sample { elapsed_ns: 1, vms: vec![sample(10)] }).is_empty());
        // Core 1's alone goes out with core 0's next.
        assert!(merger.take(1, Event::Sample { elapsed_ns: 1, vms: vec![sample(0), sample(2)] }).is_empty());
        let out = merger.take(0, Event::Sample { elapsed_ns: 2, vms: vec![sample(11)] });
        let [Event::Sample { elapsed_ns: 2, vms }] = out.as_slice() else { panic!("{out:?}") };
        assert_eq!(vms.iter().map(|vm| vm.cpu_ns).collect::<Vec<_>>(), [0, 11, 2]);
    }

    #[test]
    fn weights_are_put_together_and_other_events_pass_at_once() {
        let mut merger = Merger::new(Arc::new(vec![1, 0]), 2);
        let settings = |weights: Vec<f64>| Settings {
            policy: Policy::Fair,
            quantum: std::time::Duration::from_millis(1),
            timer: crate::config::TimerKind::Posix,
            weights,
            cpus: 2,
        };
        assert!(merger.take(0, Event::Settings(settings(vec![30.0]))).is_empty());
        let out = merger.take(1, Event::Settings(settings(vec![70.0])));
        assert_eq!(out, [Event::Settings(settings(vec![70.0, 30.0]))]);
        let notice = Event::Notice { t_ns: 5, text: "hello".into() };
        assert_eq!(merger.take(1, notice.clone()), [notice]);
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
