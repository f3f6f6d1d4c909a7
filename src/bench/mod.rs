//! `matrix-tui bench`: measures, in one run on this machine, what the project
//! claims about speed and fairness, as percentiles and ratios with the
//! parameters of each figure, and checks them against the targets.

pub mod cores;
pub mod locks;
pub mod measure;
pub mod migration;
pub mod settle;
pub mod snapshots;
pub mod vcpus;
pub mod windows;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::config::TimerKind;
pub use measure::BenchError;

/// The measurements, by the names `--only` takes.
pub const MEASUREMENTS: &[&str] = &[
    "exit",
    "hypercalls",
    "modes",
    "interrupts",
    "snapshots",
    "large-save",
    "migration",
    "vcpus",
    "cores",
    "locks",
    "preempt",
    "baseline",
    "share",
    "overhead",
    "trace",
    "scale",
    "flood",
    "ui",
];

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct BenchOptions {
    /// Shorter runs (about 1 minute in all instead of about 3).
    pub quick: bool,
    /// Only these measurements (all when empty).
    pub only: Vec<String>,
}

impl BenchOptions {
    fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|only| only == name)
    }

    fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick { quick } else { full }
    }
}

/// Runs the measurements, telling `progress` what it is doing, and returns
/// the report (a JSON object).
pub fn run(options: &BenchOptions, mut progress: impl FnMut(&str)) -> Result<Value, BenchError> {
    let started = Instant::now();
    let mut report = json!({ "machine": machine(), "quick": options.quick });
    // The bench sizes its guests' units in iterations, fixed (each figure's
    // params say which); this says what they are in time here.
    let calibration = crate::calibration::measure(&crate::vm::open_kvm()?)?;
    report["calibration"] = json!(calibration);
    let quantum = Duration::from_millis(1);

    if options.wants("exit") {
        progress("exit round trip (HC_print8bit)");
        let calls = options.pick(20_000, 100_000);
        let figure = measure::hypercall_round_trip(0, 1, calls)?;
        report["exit_roundtrip_ns"] =
            with_params(json!(figure), json!({ "guest": "hammer print8bit", "calls": calls }));
    }
    if options.wants("modes") {
        progress("setup time per CPU mode, real-mode against long-mode exits");
        let vms = options.pick(20, 100);
        report["setup_by_mode_us"] = with_params(json!(measure::setup_by_mode(vms)?), json!({ "vms_each": vms }));
        let (calls, rounds) = options.pick((5_000, 3), (20_000, 5));
        let (real, long) = measure::real_vs_long_round_trip(calls, rounds)?;
        report["real_vs_long_exit_ns"] = with_params(
            json!({ "real": real, "long": long, "ratio_p50": real.p50 / long.p50 }),
            json!({ "real": "counter, port 0x10 mapped to print32bit (2-byte out)", "long": "hammer print32bit",
                    "calls": calls, "rounds_alternated": rounds, "figure": "the round with the median p50 of each" }),
        );
    }
    if options.wants("interrupts") {
        progress("timer ticks: injection latency against KVM's LAPIC timer, a sleeper beside spinners, 256 sleepers");
        let (period_us, ticks) = (10_000, options.pick(100, 300));
        let (_, handled) = measure::timer_delivery(period_us, ticks, 0)?;
        let lapic = measure::c_lapic_delivery(period_us, ticks)?;
        let (late, _) = measure::timer_delivery(period_us, ticks, 2)?;
        let (late_preempting, _) = measure::timer_delivery_with(period_us, ticks, 2, true)?;
        let (cpu_pct, outside_pct) =
            measure::sleepers_cost(256, options.pick(Duration::from_secs(2), Duration::from_secs(5)))?;
        report["interrupts"] = with_params(
            json!({
                "injection_to_handler_us": handled,
                "c_lapic_to_handler_us": lapic.map(|(p50, p99)| json!({ "p50": p50, "p99": p99 })),
                "ratio_p99": lapic.map(|(_, p99)| handled.p99 / p99),
                "wake_lateness_beside_2_spinners_us": late,
                "wake_lateness_beside_2_spinners_preempting_us": late_preempting,
                "sleepers_256_cpu_pct": cpu_pct,
                "sleepers_256_outside_kvm_run_pct": outside_pct,
            }),
            json!({ "period_us": period_us, "ticks": ticks, "guest": "a long-mode probe whose handler exits first (out 0xe9)",
                    "c": "benches/c/lapic.c: in-kernel LAPIC, periodic, halted long-mode guest",
                    "due": "the arming exit's time + k periods, for both",
                    "sleepers": "256 sleepers on 10 ms timers, printing every 1000th tick" }),
        );
    }
    if options.wants("snapshots") {
        progress("snapshot save, write, read and restore, 2 MiB and 64 MiB");
        let rounds = options.pick(10, 30);
        let small = snapshots::snapshot_costs(2 << 20, rounds)?;
        let large = snapshots::snapshot_costs(64 << 20, rounds)?;
        report["snapshots"] = with_params(
            json!({ "mib_2": small, "mib_64": large }),
            json!({ "guest": "ticker (unit 50 iterations) after 200 exits", "rounds": rounds,
                    "restore": "Machine::new from the decoded file: mmap, stored pages copied, VM, vCPU, state set",
                    "goals_us": { "restore_2_mib": 1000, "restore_64_mib": 10000 } }),
        );
    }
    if options.wants("large-save") {
        let written = options.pick(256 << 20, 800 << 20);
        progress(&format!("saving a 1 GiB VM that wrote {} MiB, a ticker beside it", written >> 20));
        let costs = snapshots::large_save_costs(1 << 30, written)?;
        report["large_save"] = with_params(
            json!(costs),
            json!({ "guest": "dirtier (4,096 pages a unit over the pages written) beside ticker (unit 50)",
                    "gaps": "the ticker's longest wait between two of its slices, during the save and in the second before",
                    "rss": "VmHWM reset before the command (clear_refs 5), read at the answer: the copy the front end writes",
                    "goals": { "neighbour_gap_during_ms": 10, "rss_growth_over_written": 1.2 } }),
        );
    }
    if options.wants("migration") {
        progress("live migration over loopback: an idle guest, a ticker, a dirtier");
        let runs = options.pick(3, 10);
        let warm = Duration::from_millis(300);
        let idle = migration::migration_costs("sleeper", &[], 2 << 20, runs, warm)?;
        let ticker = migration::migration_costs("ticker", &[], 2 << 20, runs, warm)?;
        let neo = migration::migration_costs("neo", &[], 2 << 20, runs, warm)?;
        let dirtier = migration::migration_costs("dirtier", &[8, 64], 2 << 20, runs, warm)?;
        report["migration"] = with_params(
            json!({ "idle": idle, "ticker": ticker, "neo": neo, "dirtier": dirtier }),
            json!({ "link": "a Unix socket, no bandwidth cap", "downtime_limit_ms": 5, "warm_ms": 300, "runs": runs,
                    "downtime": "the receiver's first slice minus the sender's last, one monotonic clock",
                    "goal_downtime_us": { "neo": 1000 } }),
        );
    }
    if options.wants("vcpus") {
        progress("several vCPUs: an IPI against a timer tick, 4 vCPUs' exit round trip against 1's, 256 VMs of 4");
        let ipi = vcpus::ipi_to_first_exit(options.pick(Duration::from_secs(1), Duration::from_secs(3)))?;
        let (_, tick) = measure::timer_delivery(10_000, options.pick(100, 300), 0)?;
        let (calls, rounds) = options.pick((10_000, 2), (30_000, 5));
        let (one, four, ratio) = vcpus::round_trips(calls, rounds)?;
        let scale = vcpus::scale(256, 4, 50, options.pick(Duration::from_secs(2), Duration::from_secs(5)))?;
        report["vcpus"] = with_params(
            json!({
                "ipi_to_first_exit_us": ipi,
                "tick_due_to_handler_exit_us": tick,
                "ipi_over_tick_p50": ipi.p50 / tick.p50,
                "exit_roundtrip_1_vcpu_ns": one,
                "exit_roundtrip_4_vcpus_ns": four,
                "roundtrip_ratio_p50": ratio,
                "scale": scale,
            }),
            json!({ "ipi": "pair with 2 vCPUs and a turn of 1 iteration: each HC_ipi exit to its target's next exit \
                             (on one core: the sender's hlt exit, the switch, the injection, the handler, the target's print)",
                    "tick": "the tick probe's due time to its handler's first exit, 10 ms period, in the same run",
                    "roundtrip": "hammer print8bit, the VM's turn passed to its next vCPU every 64 exits; medians of \
                                  alternating rounds", "calls": calls, "rounds": rounds,
                    "scale": "256 VMs of ticker (unit 50 iterations) with 4 vCPUs each",
                    "goals": { "roundtrip_ratio_p50": 1.05, "scale_outside_kvm_run_pct": 3, "scale_startup_ms": 4000 } }),
        );
    }
    if options.wants("cores") {
        let host = crate::os::affinity::allowed_count();
        if host < 2 {
            report["cores"] = json!({ "skipped": format!("this process may run on {host} CPU; two are needed") });
        } else {
            progress("two cores: two tickers' work against one core's; 70/30 and 2:1:1 against Linux CFS");
            let seconds = Duration::from_secs(options.pick(2, 5));
            let work = cores::work_ratio(50, seconds)?;
            let seventy = cores::share_comparison(&[70.0, 30.0], 50, seconds)?;
            let two_one_one = cores::share_comparison(&[2.0, 1.0, 1.0], 50, seconds)?;
            let unpin = cores::unpin_to_spread(options.pick(5, 10))?;
            let scale = cores::scale(1024, 50, seconds)?;
            report["cores"] = with_params(
                json!({ "work": work, "share_70_30": seventy, "share_2_1_1": two_one_one,
                        "unpin": unpin, "scale": scale }),
                json!({ "guests": "ticker, unit 50 iterations, --cpus 2; CFS: one thread per VM in a plain KVM_RUN \
                                   loop at nice levels whose CFS weights (1.25x a step) give the same ratios, bound to \
                                   the same two CPUs, run after ours", "seconds": seconds.as_secs(),
                        "error": "per window, the largest |work share - machine target| over the VMs, from 300 ms \
                                  after the first unit",
                        "unpin": "two spinners pinned to core 0, one unpinned: to its first slice on core 1, and to the end of \
                                  the first 100 ms window (every 10 ms) from which both shares of the machine stay \
                                  within 1 point of their mean over the last 500 ms of the 1.5 s followed",
                        "scale": "1,024 tickers (unit 50 iterations), fair, two cores",
                        "goals": { "work_ratio": 1.9, "mean_error_over_cfs": 1.2, "scale_outside_kvm_run_pct": 3 } }),
            );
        }
    }
    if options.wants("locks") {
        progress("locks: critical sections a second of four spinlocks, 2 and 4 vCPUs on one core, 2 beside a spinner");
        let duration = Duration::from_secs(options.pick(2, 4));
        let quantum = Duration::from_millis(5);
        let one_core = locks::one_core(&calibration, quantum, duration)?;
        let over_ticket: BTreeMap<String, BTreeMap<String, f64>> =
            one_core.iter().map(|(vcpus, row)| (vcpus.clone(), locks::over_ticket(row))).collect();
        let two_cores = locks::two_cores(&calibration, quantum, duration)?;
        let over_dedicated: BTreeMap<&str, BTreeMap<String, f64>> = ["fair_beside_spinner", "gang_beside_spinner"]
            .into_iter()
            .map(|setting| (setting, locks::over_dedicated(&two_cores, setting)))
            .collect();
        report["locks"] = with_params(
            json!({ "one_core": one_core, "over_ticket": over_ticket, "two_cores": two_cores,
                    "two_cores_over_dedicated": over_dedicated }),
            json!({ "guest": "locks (critical section 20 us, outside 60 us of guest CPU here), one VM",
                    "quantum_ms": 5, "seconds": duration.as_secs(),
                    "sections": "the guest's own count (its lock records) over the run's wall time",
                    "one_core": "fair, --cpus 1",
                    "two_cores": "a VM of 2 vCPUs, --cpus 2: beside a spin VM under fair (the VM runs on one core at a \
                                  time) and under gang (its two vCPUs at once in windows), and alone under gang \
                                  (dedicated: each vCPU on a core of its own)",
                    "over_dedicated": "critical sections per second of the VM's own CPU, over the dedicated run's",
                    "goals": { "pv_over_ticket_4_vcpus": 3, "gang_over_dedicated": 0.9 } }),
        );
    }
    if options.wants("hypercalls") {
        progress("each hypercall's round trip");
        let calls = options.pick(5_000, 20_000);
        let figures = measure::hypercall_round_trips(calls)?;
        report["hypercall_ns"] = with_params(json!(figures), json!({ "guest": "hammer", "calls_each": calls }));
    }
    if options.wants("preempt") {
        let seconds = options.pick(1, 4);
        let mut figure = json!({});
        for timer in [TimerKind::Posix, TimerKind::Timerfd] {
            for compensate in [true, false] {
                let name =
                    if compensate { timer.name().to_string() } else { format!("{}_uncompensated", timer.name()) };
                progress(&format!("preemption overrun, {}", name.replace('_', " ")));
                let overrun = measure::preempt_overrun(timer, compensate, quantum, Duration::from_secs(seconds))?;
                figure[name] = json!(overrun);
            }
        }
        report["preempt_overrun_us"] = with_params(
            figure,
            json!({ "policy": "rr", "guests": "2 x spin", "quantum_us": 1000, "duration_s": seconds,
                    "uncompensated": "--no-compensation: each slice's timer armed at its deadline" }),
        );
    }
    if options.wants("baseline") {
        progress("matrix-tui against the C baseline (gcc), interleaved");
        report["c_baseline"] = match measure::CBaseline::build()? {
            Some(c) => {
                // This machine's speed drifts by more than the 5 % in question
                // over a minute, so the two are measured in alternating rounds
                // and their medians compared.
                let rounds = options.pick(2, 5);
                let (exits, preempt_ms) = options.pick((10_000, 500), (30_000, 2000));
                let (mut ours, mut theirs, mut ours_p99, mut theirs_p99) = (vec![], vec![], vec![], vec![]);
                let mut timerfd_p99 = vec![];
                let mut last = None;
                for round in 0..rounds {
                    progress(&format!("  round {} of {rounds}", round + 1));
                    ours.push(measure::hypercall_round_trip(0, 1, exits)?.p50);
                    let c_exit = c.exit_round_trip(exits)?;
                    theirs.push(c_exit.p50);
                    let preempting = Duration::from_millis(preempt_ms);
                    let overrun = measure::preempt_overrun(TimerKind::Posix, true, quantum, preempting)?;
                    ours_p99.push(overrun.map_or(f64::NAN, |p| p.p99));
                    let overrun = measure::preempt_overrun(TimerKind::Timerfd, true, quantum, preempting)?;
                    timerfd_p99.push(overrun.map_or(f64::NAN, |p| p.p99));
                    let c_preempt = c.preempt_overrun(preempt_ms as usize)?;
                    theirs_p99.push(c_preempt.p99);
                    last = Some((c_exit, c_preempt));
                }
                let (c_exit, c_preempt) = last.expect("at least one round");
                with_params(
                    json!({
                        "exit_roundtrip_ns": c_exit,
                        "preempt_overrun_us": c_preempt,
                        "exit_roundtrip_ratio_p50": measure::median(ours.clone()) / measure::median(theirs.clone()),
                        "preempt_overrun_ratio_p99": measure::median(ours_p99.clone()) / measure::median(theirs_p99.clone()),
                        "timerfd_overrun_ratio_p99": measure::median(timerfd_p99.clone()) / measure::median(theirs_p99.clone()),
                        "rounds": { "ours_exit_p50_ns": ours, "c_exit_p50_ns": theirs,
                                    "ours_overrun_p99_us": ours_p99, "ours_timerfd_overrun_p99_us": timerfd_p99,
                                    "c_overrun_p99_us": theirs_p99 },
                    }),
                    json!({ "source": "benches/c/baseline.c", "guest": "long mode, set up as matrix-tui sets up its guests",
                            "rounds": rounds, "exits_per_round": exits, "preemption_ms_per_round": preempt_ms }),
                )
            }
            None => json!({ "params": { "skipped": "gcc is not installed" } }),
        };
    }
    if options.wants("share") {
        progress("share error, two tickers at 70/30");
        let seconds = options.pick(3, 10);
        let unit = 50;
        let errors = measure::share_errors([70.0, 30.0], unit, quantum, Duration::from_secs(seconds))?;
        let params = json!({ "policy": "fair", "weights": [70, 30], "quantum_us": 1000, "duration_s": seconds,
                             "ticker_unit_iterations": unit, "overall_work_share": errors.overall_work_share });
        report["share_error_pp"] = with_params(json!(errors.work), params.clone());
        report["share_error_pp_accounting"] = with_params(json!(errors.accounting), params);
    }
    if options.wants("overhead") {
        let seconds = options.pick(1, 3);
        let mut figure = json!({});
        for (name, quantum) in [("q100us", 100), ("q1ms", 1000), ("q10ms", 10_000)] {
            progress(&format!("time outside KVM_RUN, quantum {name}"));
            figure[name] = json!(measure::overhead_pct(Duration::from_micros(quantum), Duration::from_secs(seconds))?);
        }
        report["overhead_pct"] =
            with_params(figure, json!({ "policy": "fair", "guests": "2 x spin", "duration_s": seconds }));
    }
    if options.wants("trace") {
        progress("the exit trace's cost, two tickers at 70/30, without and with --trace");
        let (rounds, seconds) = options.pick((2, 1), (4, 2));
        let unit = 50;
        let figure = measure::trace_cost(unit, rounds, Duration::from_secs(seconds))?;
        report["trace_cost"] = with_params(
            json!(figure),
            json!({ "policy": "fair", "weights": [70, 30], "quantum_us": 1000, "guests": "2 x ticker",
                    "ticker_unit_iterations": unit, "rounds": rounds, "duration_s": seconds }),
        );
    }
    if options.wants("scale") {
        progress("256 tickers on one thread");
        let unit = 20;
        let params = |seconds| json!({ "policy": "fair", "quantum_us": 1000, "duration_s": seconds, "ticker_unit_iterations": unit });
        let seconds = options.pick(2, 5);
        let untimed = Duration::from_secs(options.pick(2, 3));
        let figure = measure::scale(256, unit, Duration::from_secs(seconds), Duration::from_secs(1), untimed)?;
        report["scale"] = with_params(json!(figure), params(seconds));
        // Four times the VMs get a slice each a quarter as often: judged in
        // windows four times as long, each holds as many of their slices.
        progress("1,024 tickers on one thread");
        let seconds = options.pick(9, 13);
        let figure = measure::scale(1024, unit, Duration::from_secs(seconds), Duration::from_secs(4), untimed)?;
        report["scale_1024"] = with_params(json!(figure), params(seconds));
    }
    if options.wants("flood") {
        progress("console flood (chatty)");
        let seconds = options.pick(2, 5);
        let figure = measure::console_flood(Duration::from_secs(seconds))?;
        report["console_flood"] = with_params(json!(figure), json!({ "guest": "chatty", "duration_s": seconds }));
    }
    if options.wants("ui") {
        progress("the terminal UI's CPU use");
        let seconds = options.pick(2, 5);
        report["ui_cpu_pct"] = match measure::ui_cpu(Duration::from_secs(seconds))? {
            Some(figure) => with_params(
                json!(figure),
                json!({ "terminal": "tmux 160x48", "scenario": "neo 70 / morpheus 30", "duration_s": seconds }),
            ),
            None => json!({ "pct": null, "params": { "skipped": "tmux is not installed" } }),
        };
    }
    report["targets"] = targets(&report);
    report["bench_seconds"] = json!(started.elapsed().as_secs_f64());
    Ok(report)
}

fn with_params(mut figure: Value, params: Value) -> Value {
    figure["params"] = params;
    figure
}

/// Each target the report has a figure for: the value, the target, met or not.
fn targets(report: &Value) -> Value {
    let checks: &[(&str, &[&str], f64)] = &[
        ("exit_roundtrip_vs_c_ratio", &["c_baseline", "exit_roundtrip_ratio_p50"], 1.05),
        ("preempt_overrun_p99_vs_c_ratio", &["c_baseline", "preempt_overrun_ratio_p99"], 0.5),
        ("timerfd_overrun_p99_vs_c_ratio", &["c_baseline", "timerfd_overrun_ratio_p99"], 1.0),
        ("posix_overrun_p50_us", &["preempt_overrun_us", "posix", "p50"], 5.0),
        ("share_error_w20ms_max_pp", &["share_error_pp", "w20ms", "max"], 2.0),
        ("share_error_w100ms_max_pp", &["share_error_pp", "w100ms", "max"], 0.5),
        ("share_error_w1s_max_pp", &["share_error_pp", "w1s", "max"], 0.25),
        ("overhead_q1ms_pct", &["overhead_pct", "q1ms"], 2.0),
        ("trace_cost_pp", &["trace_cost", "cost_pp"], 1.0),
        ("scale_startup_ms", &["scale", "startup_ms"], 1000.0),
        ("scale_share_error_rel_pct", &["scale", "share_error_rel_pct"], 5.0),
        ("scale_share_error_rel_pct_charged", &["scale", "share_error_rel_pct_charged"], 5.0),
        ("scale_outside_kvm_run_pct", &["scale", "outside_kvm_run_pct"], 3.0),
        ("scale_1024_startup_ms", &["scale_1024", "startup_ms"], 4000.0),
        ("scale_1024_share_error_rel_pct_charged", &["scale_1024", "share_error_rel_pct_charged"], 5.0),
        ("scale_1024_outside_kvm_run_pct", &["scale_1024", "outside_kvm_run_pct"], 3.0),
        ("large_save_neighbour_gap_ms", &["large_save", "neighbour_gap_during_ms"], 10.0),
        ("large_save_rss_growth_over_written", &["large_save", "rss_growth_over_written"], 1.2),
        ("vcpus_roundtrip_ratio_p50", &["vcpus", "roundtrip_ratio_p50"], 1.05),
        ("vcpus_1024_outside_kvm_run_pct", &["vcpus", "scale", "outside_kvm_run_pct"], 3.0),
        ("vcpus_1024_startup_ms", &["vcpus", "scale", "startup_ms"], 4000.0),
        ("flood_rss_growth_mib", &["console_flood", "rss_growth_mib"], 5.0),
        ("ui_cpu_pct", &["ui_cpu_pct", "pct"], 2.0),
    ];
    let mut out = json!({});
    for (name, path, limit) in checks {
        let value = path.iter().try_fold(report, |value, key| value.get(key)).and_then(Value::as_f64);
        if let Some(value) = value {
            out[*name] = json!({ "value": value, "at_most": limit, "met": value <= *limit });
        }
    }
    out
}

/// The C baseline's rounds differ by more than this factor in p99 when the
/// host, not the kick path, sets the tail: within single benches on a host
/// that stalled for milliseconds (2026-12-02) they differed 3.8-23x, while a
/// quieter day's p99s stayed within 7-29 µs over all its runs.
const UNSTEADY_P99_SPREAD: f64 = 3.0;

/// The C baseline's preemption p99 over its rounds, and a warning when they
/// differ so much that the p99 ratios say where the host's stalls fell.
fn c_round_spread(p99s: &Value) -> Option<String> {
    let p99s: Vec<f64> = p99s.as_array()?.iter().filter_map(Value::as_f64).collect();
    let low = p99s.iter().copied().fold(f64::INFINITY, f64::min);
    let high = p99s.iter().copied().fold(0.0, f64::max);
    if p99s.len() < 2 || low <= 0.0 {
        return None;
    }
    let mut text = format!("{low:.1}-{high:.1} us in {} rounds", p99s.len());
    if high > UNSTEADY_P99_SPREAD * low {
        text.push_str(": the host stalls, and the p99 ratios say more about where than about the kick path");
    }
    Some(text)
}

/// What machine this is: CPU, kernel, which KVM, whether it is nested.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']));
    let flags = cpuinfo.lines().find_map(|line| line.strip_prefix("flags")).unwrap_or("");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let kvm = ["kvm_pvm", "kvm_intel", "kvm_amd"]
        .into_iter()
        .find(|module| std::path::Path::new(&format!("/sys/module/{module}")).exists());
    json!({
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "kernel": kernel.trim(),
        "kvm_module": kvm,
        "nested": flags.split_whitespace().any(|flag| flag == "hypervisor"),
        "hardware_virtualization": flags.split_whitespace().any(|flag| flag == "vmx" || flag == "svm"),
    })
}

/// The report as a table for people.
pub fn table(report: &Value) -> String {
    let mut out = String::new();
    let machine = &report["machine"];
    out.push_str(&format!(
        "machine: {} ({} CPUs), kernel {}, KVM {} {}\n\n",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cpus"],
        machine["kernel"].as_str().unwrap_or("?"),
        machine["kvm_module"].as_str().unwrap_or("?"),
        if machine["nested"] == true { "(nested)" } else { "" },
    ));
    if let Some(per_ms) = report["calibration"]["loop_iterations_per_ms"].as_u64() {
        out.push_str(&format!(
            "busy loop: {per_ms} iterations per ms of guest CPU (a ticker unit of 50 iterations is {:.0} us here)\n\n",
            50_000.0 / per_ms as f64
        ));
    }
    let row = |out: &mut String, name: &str, value: String| out.push_str(&format!("{name:<38} {value}\n"));
    let p = |v: &Value, unit: &str| {
        format!("p50 {:.1} {unit}, p99 {:.1} {unit} ({} samples)", num(&v["p50"]), num(&v["p99"]), v["samples"])
    };
    if report["exit_roundtrip_ns"].is_object() {
        row(&mut out, "exit round trip (print8bit)", p(&report["exit_roundtrip_ns"], "ns"));
    }
    if let Some(calls) = report["hypercall_ns"].as_object() {
        for (name, figure) in calls.iter().filter(|(name, _)| *name != "params") {
            row(&mut out, &format!("  {name}, per exit"), p(figure, "ns"));
        }
    }
    if let Some(modes) = report["setup_by_mode_us"].as_object() {
        for (mode, figure) in modes.iter().filter(|(name, _)| *name != "params") {
            let value = match figure["refused"].as_str() {
                Some(why) => format!("refused: {why}"),
                None => p(figure, "us"),
            };
            row(&mut out, &format!("setup of one VM, {mode} mode"), value);
        }
    }
    if report["snapshots"].is_object() {
        for size in ["mib_2", "mib_64"] {
            let figure = &report["snapshots"][size];
            let name = format!("snapshot, {} MiB", figure["memory_mib"]);
            row(&mut out, &format!("{name}: save (the core's pause)"), p(&figure["save_us"], "us"));
            row(&mut out, "  encode and write", p(&figure["write_us"], "us"));
            row(&mut out, "  read and check", p(&figure["read_us"], "us"));
            row(&mut out, "  restore", p(&figure["restore_us"], "us"));
        }
    }
    if report["large_save"].is_object() {
        let figure = &report["large_save"];
        row(
            &mut out,
            &format!("save of {} MiB written", num(&figure["written_mib"]).round()),
            format!(
                "{:.0} ms; neighbour's longest wait {:.1} ms (before: {:.1} ms); RSS +{:.2}x the written",
                num(&figure["save_ms"]),
                num(&figure["neighbour_gap_during_ms"]),
                num(&figure["neighbour_gap_before_ms"]),
                num(&figure["rss_growth_over_written"])
            ),
        );
    }
    if report["migration"].is_object() {
        for name in ["idle", "ticker", "neo", "dirtier"] {
            let figure = &report["migration"][name];
            row(
                &mut out,
                &format!("migration, {name}"),
                format!(
                    "downtime p50 {:.0} us, p99 {:.0} us; total p50 {:.1} ms; {} rounds; sent {:.2}x memory",
                    num(&figure["downtime_us"]["p50"]),
                    num(&figure["downtime_us"]["p99"]),
                    num(&figure["total_ms"]["p50"]),
                    num(&figure["rounds_p50"]),
                    num(&figure["sent_over_memory_p50"])
                ),
            );
        }
    }
    if report["vcpus"].is_object() {
        let figure = &report["vcpus"];
        row(&mut out, "IPI to its target's first exit", p(&figure["ipi_to_first_exit_us"], "us"));
        row(&mut out, "  a timer tick to its handler's exit", p(&figure["tick_due_to_handler_exit_us"], "us"));
        row(&mut out, "exit round trip, 4 vCPUs / 1 (p50)", format!("{:.3}", num(&figure["roundtrip_ratio_p50"])));
        row(
            &mut out,
            "256 VMs of 4 vCPUs",
            format!(
                "start-up {:.0} ms; {:.2} % outside KVM_RUN",
                num(&figure["scale"]["startup_ms"]),
                num(&figure["scale"]["outside_kvm_run_pct"])
            ),
        );
    }
    if report["cores"]["work"].is_object() {
        let figure = &report["cores"];
        row(&mut out, "two cores' work over one's", format!("{:.2}", num(&figure["work"]["ratio"])));
        let unpin = &figure["unpin"]["to_other_core_us"];
        row(
            &mut out,
            "  an unpin to the other core",
            format!("p50 {:.0} ms, max {:.0} ms", num(&unpin["p50"]) / 1000.0, num(&unpin["max"]) / 1000.0),
        );
        let settle = &figure["unpin"]["shares_settle_us"];
        row(
            &mut out,
            "  an unpin to shares within 1 point",
            format!(
                "p50 {:.0} ms, max {:.0} ms ({} never)",
                num(&settle["p50"]) / 1000.0,
                num(&settle["max"]) / 1000.0,
                num(&figure["unpin"]["unsettled"])
            ),
        );
        let outside: Vec<String> = (figure["scale"]["outside_kvm_run_pct"].as_array().into_iter().flatten())
            .map(|pct| format!("{:.2} %", num(pct)))
            .collect();
        row(&mut out, "  1,024 tickers on 2 cores, outside KVM_RUN", outside.join(" / "));
        for (label, key) in
            [("  70/30 on 2 cores, mean error", "share_70_30"), ("  2:1:1 on 2 cores, mean error", "share_2_1_1")]
        {
            let share = &figure[key];
            row(
                &mut out,
                label,
                format!(
                    "100 ms {:.1} pp (CFS {:.1}); 1 s {:.1} pp (CFS {:.1})",
                    num(&share["ours_pp"]["w100ms"]["mean"]),
                    num(&share["cfs_pp"]["w100ms"]["mean"]),
                    num(&share["ours_pp"]["w1s"]["mean"]),
                    num(&share["cfs_pp"]["w1s"]["mean"])
                ),
            );
        }
    }
    if report["locks"]["one_core"].is_object() {
        let figure = &report["locks"];
        for vcpus in [2, 4] {
            let runs = &figure["one_core"][format!("vcpus_{vcpus}")];
            let ratios = &figure["over_ticket"][format!("vcpus_{vcpus}")];
            row(
                &mut out,
                &format!("locks, {vcpus} vCPUs on one core"),
                format!(
                    "ticket {:.0}/s; over it: test-and-set {:.1}x, pv yield {:.1}x, pv halt {:.1}x",
                    num(&runs["ticket"]["sections_per_s"]),
                    num(&ratios["test_and_set"]),
                    num(&ratios["pv_yield"]),
                    num(&ratios["pv_halt"])
                ),
            );
        }
        let over = &figure["two_cores_over_dedicated"];
        for setting in ["fair", "gang"] {
            let ratios = &over[format!("{setting}_beside_spinner")];
            row(
                &mut out,
                &format!("  2 vCPUs beside a spinner, 2 cores, {setting}"),
                format!(
                    "of a dedicated run's sections per CPU second: ticket {:.2}x, test-and-set {:.2}x, pv yield \
                     {:.2}x, pv halt {:.2}x",
                    num(&ratios["ticket"]),
                    num(&ratios["test_and_set"]),
                    num(&ratios["pv_yield"]),
                    num(&ratios["pv_halt"])
                ),
            );
        }
    }
    if report["interrupts"].is_object() {
        let figure = &report["interrupts"];
        row(&mut out, "tick due to handler's exit, ours", p(&figure["injection_to_handler_us"], "us"));
        if figure["c_lapic_to_handler_us"].is_object() {
            let c = &figure["c_lapic_to_handler_us"];
            row(
                &mut out,
                "  C, KVM's LAPIC timer",
                format!("p50 {:.1} us, p99 {:.1} us", num(&c["p50"]), num(&c["p99"])),
            );
            row(&mut out, "  ours / C (p99)", format!("{:.2}", num(&figure["ratio_p99"])));
        }
        row(&mut out, "tick due to injection, 2 spinners", p(&figure["wake_lateness_beside_2_spinners_us"], "us"));
        row(&mut out, "  the same, --wake-preempt", p(&figure["wake_lateness_beside_2_spinners_preempting_us"], "us"));
        row(
            &mut out,
            "256 sleepers (10 ms timers)",
            format!(
                "{:.2} % of a core, {:.1} % of wall time outside KVM_RUN",
                num(&figure["sleepers_256_cpu_pct"]),
                num(&figure["sleepers_256_outside_kvm_run_pct"])
            ),
        );
    }
    if report["real_vs_long_exit_ns"].is_object() {
        let figure = &report["real_vs_long_exit_ns"];
        row(&mut out, "exit round trip, real mode", p(&figure["real"], "ns"));
        row(&mut out, "exit round trip, long mode", p(&figure["long"], "ns"));
        row(&mut out, "  real / long (p50)", format!("{:.2}", num(&figure["ratio_p50"])));
    }
    if report["preempt_overrun_us"].is_object() {
        for timer in ["posix", "posix_uncompensated", "timerfd", "timerfd_uncompensated"] {
            let figure = &report["preempt_overrun_us"][timer];
            row(
                &mut out,
                &format!("preemption overrun, {}", timer.replace('_', " ")),
                format!("{}, max {:.1} us", p(figure, "us"), num(&figure["max"])),
            );
        }
    }
    if report["c_baseline"]["exit_roundtrip_ns"].is_object() {
        let c = &report["c_baseline"];
        row(&mut out, "C baseline: exit round trip", p(&c["exit_roundtrip_ns"], "ns"));
        row(&mut out, "C baseline: preemption overrun", p(&c["preempt_overrun_us"], "us"));
        if let Some(spread) = c_round_spread(&c["rounds"]["c_overrun_p99_us"]) {
            row(&mut out, "  p99 over the rounds", spread);
        }
    }
    for (key, label) in
        [("share_error_pp", "share error (work)"), ("share_error_pp_accounting", "share error (charged time)")]
    {
        if report[key].is_object() {
            let f = &report[key];
            row(
                &mut out,
                &format!("{label}, 70/30"),
                format!(
                    "20 ms max {:.2} / p99 {:.2} / mean {:.2} pp; 100 ms {:.2} / {:.2} / {:.2}; 1 s {:.2} / {:.2}",
                    num(&f["w20ms"]["max"]),
                    num(&f["w20ms"]["p99"]),
                    num(&f["w20ms"]["mean"]),
                    num(&f["w100ms"]["max"]),
                    num(&f["w100ms"]["p99"]),
                    num(&f["w100ms"]["mean"]),
                    num(&f["w1s"]["max"]),
                    num(&f["w1s"]["mean"])
                ) + &stalled_note(f),
            );
        }
    }
    if report["overhead_pct"].is_object() {
        let f = &report["overhead_pct"];
        row(
            &mut out,
            "outside KVM_RUN (2 spinners)",
            format!(
                "{:.2} % at 100 us, {:.2} % at 1 ms, {:.2} % at 10 ms",
                num(&f["q100us"]),
                num(&f["q1ms"]),
                num(&f["q10ms"])
            ),
        );
    }
    if report["trace_cost"].is_object() {
        let f = &report["trace_cost"];
        let median_of =
            |key: &str| measure::median(f[key].as_array().map(|v| v.iter().map(num).collect()).unwrap_or_default());
        row(
            &mut out,
            "exit trace (2 tickers, 1 ms)",
            format!(
                "outside KVM_RUN {:.2} % without, {:.2} % with: +{:.2} pp; {} records, {} dropped",
                median_of("outside_kvm_run_pct_off"),
                median_of("outside_kvm_run_pct_on"),
                num(&f["cost_pp"]),
                f["records"],
                f["dropped"]
            ),
        );
    }
    for (key, name) in [("scale", "256 tickers"), ("scale_1024", "1,024 tickers")] {
        let f = &report[key];
        if !f.is_object() {
            continue;
        }
        row(
            &mut out,
            name,
            format!(
                "start-up {:.0} ms; {:.1} % outside KVM_RUN; worst VM in a {} s window {:.2} % off target \
                 by work, {:.2} % by charged time; speeds differ by up to {:.2} %; RSS {:.1} MiB",
                num(&f["startup_ms"]),
                num(&f["outside_kvm_run_pct"]),
                f["window_s"],
                num(&f["share_error_rel_pct"]),
                num(&f["share_error_rel_pct_charged"]),
                num(&f["speed_spread_pct"]),
                num(&f["rss_mib"])
            ),
        );
    }
    if let Some(pct) = report["ui_cpu_pct"]["pct"].as_f64() {
        row(&mut out, "terminal UI thread (tmux 160x48)", format!("{pct:.2} % of a core"));
    }
    if report["console_flood"].is_object() {
        let f = &report["console_flood"];
        row(
            &mut out,
            "console flood (chatty)",
            format!("{:.2} MB/s, RSS growth {:.2} MiB", num(&f["bytes_per_s"]) / 1e6, num(&f["rss_growth_mib"])),
        );
    }
    if let Some(targets) = report["targets"].as_object() {
        out.push_str("\ntargets:\n");
        for (name, check) in targets {
            let verdict = if check["met"] == true { "met" } else { "MISSED" };
            out.push_str(&format!("  {name:<36} {:>9.3} <= {:<7} {verdict}\n", num(&check["value"]), check["at_most"]));
        }
    }
    out
}

fn num(value: &Value) -> f64 {
    value.as_f64().unwrap_or(f64::NAN)
}

/// "; N stalled windows left out" when the host stalled some windows.
fn stalled_note(figure: &Value) -> String {
    let stalled: u64 = ["w20ms", "w100ms", "w1s"].iter().filter_map(|w| figure[w]["stalled_windows"].as_u64()).sum();
    if stalled == 0 { String::new() } else { format!("; {stalled} stalled windows left out") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_c_rounds_spread_warns_when_the_host_sets_the_tail() {
        assert_eq!(c_round_spread(&json!([20.0, 25.5, 31.0])).as_deref(), Some("20.0-31.0 us in 3 rounds"));
        let stalling = c_round_spread(&json!([40.0, 916.6, 60.0])).unwrap();
        assert!(!c_round_spread(&json!([20.0, 59.0])).unwrap().contains("stalls"));
        assert!(stalling.starts_with("40.0-916.6 us in 3 rounds: the host stalls"), "{stalling}");
        assert_eq!(c_round_spread(&json!([20.0])), None, "one round has no spread");
        assert_eq!(c_round_spread(&json!(null)), None);
    }
}
