//! Lessons: a scenario with a title, a paragraph on what it shows, and steps,
//! each an instruction and a check on the live state that ticks it off.
//!
//! ```toml
//! title = "Preemption: the timer takes the CPU back"
//! text = "What it shows, in a paragraph."
//!
//! [scenario]              # the keys of a scenario file
//! policy = "io"
//! [[scenario.vm]]
//! name = "neo"
//! guest = "neo"
//!
//! [[step]]
//! do = "Press m: the header reads rr"
//! check = { policy = "rr" }
//! ```
//!
//! The checks (one kind per step; `vm` names a VM of the scenario):
//!
//! | check | holds when |
//! |---|---|
//! | `{ policy = "rr" }` | the policy is that one |
//! | `{ vm = "neo", preempted = 100 }` | the VM was preempted at least that many times |
//! | `{ vm = "neo", share_within = 2 }` | its share is within that many points of its target |
//! | `{ vm = "neo", target_at_least = 75 }` | its target is at least that many percent |
//! | `{ vm = "crash", state = "crashed" }` | it is `running`, `paused`, `sleeping`, `halted`, `crashed`, `moved` or `ended` (halted, crashed, killed or moved) |
//! | `{ exit = "hlt" }` (`vm` optional) | an exit of that kind was seen |
//! | `{ hypercall = "HC_printStr" }` (`vm` optional) | that hypercall was seen |
//! | `{ vm = "part1", steps = 3 }` | the VM was stepped at least that many times |
//! | `{ vm = "neo", lines = 5 }` | it printed at least that many lines |
//! | `{ vm = "sleeper", injected = 5 }` | at least that many timer ticks were injected into it |
//! | `{ file_guest_lines = 1 }` | a VM whose guest is loaded from a file printed that many lines |
//! | `{ vm = "neo", says = "snapshot" }` | a line of its pane (a `[matrix]` line too) has that text |
//! | `{ vm = "pair", vcpu = 1, vcpu_state = "waiting" }` | that vCPU is `runnable`, `sleeping`, `waiting` or `halted` |
//! | `{ vm = "a", core = 1 }` | the VM runs on that core (`cpus = N`) |
//! | `{ vm = "a", pinned = false }` | the VM is pinned to cores (`true`) or may run on any (`false`) |
//! | `{ view = "timeline" }` | the `inspector` or `timeline` is open |
//!
//! Mistakes are reported as `file:line: key: what is wrong`, like scenarios.

use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::config::Policy;
use crate::hypercall::Hypercall;
use crate::record::ExitKind;
use crate::scenario::{self, FileSpec, Scenario, ScenarioError};

/// The built-in lessons (`assets/lessons/`), embedded: name and text.
pub const BUILTIN: &[(&str, &str)] = &[
    ("setup", include_str!("../assets/lessons/setup.toml")),
    ("hypercalls", include_str!("../assets/lessons/hypercalls.toml")),
    ("one-at-a-time", include_str!("../assets/lessons/one-at-a-time.toml")),
    ("preemption", include_str!("../assets/lessons/preemption.toml")),
    ("fractions", include_str!("../assets/lessons/fractions.toml")),
    ("hostile", include_str!("../assets/lessons/hostile.toml")),
    ("your-guest", include_str!("../assets/lessons/your-guest.toml")),
    ("modes", include_str!("../assets/lessons/modes.toml")),
    ("interrupts", include_str!("../assets/lessons/interrupts.toml")),
    ("migration", include_str!("../assets/lessons/migration.toml")),
    ("smp", include_str!("../assets/lessons/smp.toml")),
    ("cores", include_str!("../assets/lessons/cores.toml")),
    ("locks", include_str!("../assets/lessons/locks.toml")),
    ("gang", include_str!("../assets/lessons/gang.toml")),
];

/// A VM state a check can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateCheck {
    /// Runnable.
    Running,
    /// Paused (by the user or a step).
    Paused,
    /// Waiting in `hlt` for its timer's tick.
    Sleeping,
    /// Halted.
    Halted,
    /// Crashed.
    Crashed,
    /// Stopped for gdb (`--gdb`, or `gdb = ...` in the scenario).
    Gdb,
    /// Ended: halted, crashed or killed from gdb (or moved away).
    Ended,
    /// Moved to another matrix-tui.
    Moved,
}

/// A view a check can ask to be open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The exit inspector (`e`).
    Inspector,
    /// The schedule timeline (`t`).
    Timeline,
}

/// What must hold for a step to tick. VMs are indices into the scenario's VMs.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// The policy is this one.
    Policy(Policy),
    /// The VM was preempted at least this many times.
    Preempted {
        /// The VM.
        vm: usize,
        /// How many times.
        at_least: u64,
    },
    /// The VM's share is within this many percentage points of its target.
    ShareWithin {
        /// The VM.
        vm: usize,
        /// Points.
        points: f64,
    },
    /// The VM's target is at least this many percent.
    TargetAtLeast {
        /// The VM.
        vm: usize,
        /// Percent.
        percent: f64,
    },
    /// The VM is in this state.
    State {
        /// The VM.
        vm: usize,
        /// The state.
        state: StateCheck,
    },
    /// An exit of this kind was seen (of this VM, or of any).
    ExitSeen {
        /// The VM, if one.
        vm: Option<usize>,
        /// The kind.
        kind: ExitKind,
    },
    /// This hypercall was seen (of this VM, or of any).
    HypercallSeen {
        /// The VM, if one.
        vm: Option<usize>,
        /// Its name (both halves of HC_gvaToHva count).
        name: &'static str,
    },
    /// The VM was stepped at least this many times.
    Stepped {
        /// The VM.
        vm: usize,
        /// How many steps.
        at_least: u64,
    },
    /// The VM printed at least this many lines.
    Lines {
        /// The VM.
        vm: usize,
        /// How many.
        at_least: u64,
    },
    /// At least this many timer ticks were injected into a VM.
    Injected {
        /// The VM.
        vm: usize,
        /// How many.
        at_least: u64,
    },
    /// A VM whose guest is loaded from a file printed at least this many lines.
    FileGuestLines {
        /// How many.
        at_least: u64,
    },
    /// The VM runs on this core.
    OnCore {
        /// The VM.
        vm: usize,
        /// The core.
        core: usize,
    },
    /// The VM is pinned to cores, or not.
    Pinned {
        /// The VM.
        vm: usize,
        /// Pinned (true) or free (false).
        pinned: bool,
    },
    /// A vCPU of a VM of several is in this state, as its pane's cell shows it.
    VcpuState {
        /// The VM.
        vm: usize,
        /// The vCPU's index.
        vcpu: usize,
        /// Its cell's word: `run`, `sleep`, `wait` or `halt`.
        state: &'static str,
    },
    /// The VM's pane has a line with this text (a `[matrix]` line too).
    Says {
        /// The VM.
        vm: usize,
        /// The text.
        text: String,
    },
    /// The VM is the selected one (its pane has the heavy border).
    Selected {
        /// The VM.
        vm: usize,
    },
    /// The timeline is shown with a window of at least this many ns.
    TimelineSpan {
        /// Nanoseconds.
        at_least_ns: u64,
    },
    /// Every one of these holds (a step's `checks = [...]`).
    All(Vec<Check>),
    /// The VM moved, and its migration's rounds show the claim.
    Migrated {
        /// The VM.
        vm: usize,
        /// What its rounds show.
        claim: MigrationClaim,
    },
    /// The view is open.
    ViewOpen(View),
    /// The part of the VM's loop iterations spent spinning for a lock (its
    /// lock records, over the rates' window) is at least this many percent.
    SpinAtLeast {
        /// The VM.
        vm: usize,
        /// Percent.
        percent: f64,
    },
    /// ... at most this many percent.
    SpinAtMost {
        /// The VM.
        vm: usize,
        /// Percent.
        percent: f64,
    },
    /// The VM does at least `times` the critical sections a second of VM
    /// `other` (both from their lock records, over the rates' window).
    SectionsOver {
        /// The VM.
        vm: usize,
        /// The VM it is compared with.
        other: usize,
        /// The ratio.
        times: f64,
    },
}

/// What a migration's rounds show (a `migrated` check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationClaim {
    /// The rest fit the downtime limit, and the VM moved.
    Converged,
    /// The rounds did not shrink (each after round 0 dirtied at least 90 %
    /// of round 1's), nothing throttled it, and the round cap ended them.
    AtRoundCap,
    /// Auto-converge throttled it in two or more rounds, the throttle never
    /// fell, the dirtied pages fell below half of round 1's, and the rest
    /// fit the limit.
    ThrottledToFit,
}

/// One step of a lesson.
#[derive(Debug, Clone, PartialEq)]
pub struct LessonStep {
    /// What to do (and what to watch).
    pub instruction: String,
    /// When it is done.
    pub check: Check,
}

/// A lesson, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Lesson {
    /// Its title.
    pub title: String,
    /// What it shows.
    pub text: String,
    /// The run it needs.
    pub scenario: Scenario,
    /// Its steps, in order.
    pub steps: Vec<LessonStep>,
    /// Where and how it migrates VMs (`[migration]`), if it does.
    pub migration: Option<LessonMigration>,
}

/// A lesson's migration settings: `[migration] to = "ADDR"`, `bandwidth = "2M"`, `max_rounds = 6`,
/// `downtime_limit = "10ms"`.
#[derive(Debug, Clone, PartialEq)]
pub struct LessonMigration {
    /// Where `M` moves a VM.
    pub to: crate::debug::ListenAddress,
    /// The rate cap (bytes a second).
    pub bandwidth: Option<u64>,
    /// The round cap.
    pub max_rounds: Option<u32>,
    /// The pause the last round may cost at most.
    pub downtime_limit: Option<std::time::Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrationSpec {
    to: Spanned<String>,
    bandwidth: Option<Spanned<String>>,
    max_rounds: Option<u32>,
    downtime_limit: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LessonSpec {
    title: Spanned<String>,
    text: Spanned<String>,
    scenario: FileSpec,
    #[serde(default)]
    step: Vec<StepSpec>,
    migration: Option<MigrationSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepSpec {
    #[serde(rename = "do")]
    instruction: Spanned<String>,
    /// One check, or
    check: Option<Spanned<CheckSpec>>,
    /// several that must all hold.
    checks: Option<Spanned<Vec<CheckSpec>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CheckSpec {
    vm: Option<Spanned<String>>,
    policy: Option<Policy>,
    preempted: Option<u64>,
    share_within: Option<f64>,
    target_at_least: Option<f64>,
    state: Option<String>,
    exit: Option<String>,
    hypercall: Option<String>,
    steps: Option<u64>,
    lines: Option<u64>,
    injected: Option<u64>,
    file_guest_lines: Option<u64>,
    says: Option<String>,
    view: Option<String>,
    migrated: Option<String>,
    selected: Option<bool>,
    timeline_span: Option<String>,
    vcpu: Option<usize>,
    vcpu_state: Option<String>,
    core: Option<usize>,
    pinned: Option<bool>,
    spin_at_least: Option<f64>,
    spin_at_most: Option<f64>,
    sections_over: Option<Spanned<String>>,
    times: Option<f64>,
}

/// The names of the built-in lessons with their titles, in course order.
pub fn builtin_titles() -> Vec<(&'static str, String)> {
    BUILTIN
        .iter()
        .map(|(name, text)| {
            let lesson = parse(text, &format!("{name}.toml"), Path::new("")).expect("built-in lessons are valid");
            (*name, lesson.title)
        })
        .collect()
}

/// A built-in lesson by name, or the lesson file at that path.
pub fn load(name_or_path: &str) -> Result<Lesson, ScenarioError> {
    if let Some((name, text)) = BUILTIN.iter().find(|(name, _)| *name == name_or_path) {
        return parse(text, &format!("{name}.toml"), Path::new(""));
    }
    let path = Path::new(name_or_path);
    if !path.exists() {
        let names: Vec<&str> = BUILTIN.iter().map(|(name, _)| *name).collect();
        return Err(ScenarioError {
            file: name_or_path.to_string(),
            line: 1,
            key: "lesson".into(),
            message: format!("no such lesson or file; the built-in lessons are {}", names.join(", ")),
        });
    }
    let text = scenario::read_limited(path)?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&text, &path.display().to_string(), &base)
}

/// Parses lesson `text` (named `file` in errors; guest paths relative to `base`).
pub fn parse(text: &str, file: &str, base: &Path) -> Result<Lesson, ScenarioError> {
    let spec: LessonSpec = scenario::from_toml(text, file)?;
    let at = |span: Range<usize>, key: &str, message: String| scenario::located(text, file, span, key, message);
    let scenario = scenario::from_spec(&spec.scenario, text, file, base)?;
    if scenario.vms.is_empty() {
        return Err(at(spec.title.span(), "scenario", "the lesson's scenario has no VMs; add [[scenario.vm]]".into()));
    }
    for (key, value) in [("title", &spec.title), ("text", &spec.text)] {
        if value.get_ref().trim().is_empty() {
            return Err(at(value.span(), key, "is empty".into()));
        }
    }
    let mut steps = Vec::with_capacity(spec.step.len());
    for step in &spec.step {
        if step.instruction.get_ref().trim().is_empty() {
            return Err(at(step.instruction.span(), "do", "is empty: say what to do".into()));
        }
        let check = match (&step.check, &step.checks) {
            (Some(check), None) => {
                check_of(check.get_ref(), &scenario, &|key, message| at(check.span(), key, message))?
            }
            (None, Some(checks)) if !checks.get_ref().is_empty() => Check::All(
                checks
                    .get_ref()
                    .iter()
                    .map(|check| check_of(check, &scenario, &|key, message| at(checks.span(), key, message)))
                    .collect::<Result<_, _>>()?,
            ),
            _ => {
                return Err(at(
                    step.instruction.span(),
                    "check",
                    "a step needs one `check = { ... }` or a non-empty `checks = [{ ... }, ...]`, not both".into(),
                ));
            }
        };
        steps.push(LessonStep { instruction: step.instruction.get_ref().trim().to_string(), check });
    }
    if steps.is_empty() {
        return Err(at(spec.title.span(), "step", "a lesson needs at least one [[step]]".into()));
    }
    let migration = match &spec.migration {
        Some(migration) => Some(LessonMigration {
            to: crate::debug::ListenAddress::parse(migration.to.get_ref())
                .map_err(|message| at(migration.to.span(), "to", message))?,
            bandwidth: match &migration.bandwidth {
                Some(text) => Some(
                    crate::units::parse_size(text.get_ref())
                        .map_err(|message| at(text.span(), "bandwidth", message))?,
                ),
                None => None,
            },
            max_rounds: migration.max_rounds,
            downtime_limit: match &migration.downtime_limit {
                Some(text) => Some(
                    crate::units::parse_duration(text.get_ref())
                        .map_err(|message| at(text.span(), "downtime_limit", message))?,
                ),
                None => None,
            },
        }),
        None => None,
    };
    Ok(Lesson {
        title: spec.title.get_ref().trim().to_string(),
        text: spec.text.get_ref().trim().to_string(),
        scenario,
        steps,
        migration,
    })
}

fn check_of(
    spec: &CheckSpec,
    scenario: &Scenario,
    error: &dyn Fn(&str, String) -> ScenarioError,
) -> Result<Check, ScenarioError> {
    let kinds = [
        spec.policy.is_some(),
        spec.preempted.is_some(),
        spec.share_within.is_some(),
        spec.target_at_least.is_some(),
        spec.state.is_some(),
        spec.exit.is_some(),
        spec.hypercall.is_some(),
        spec.steps.is_some(),
        spec.lines.is_some(),
        spec.injected.is_some(),
        spec.file_guest_lines.is_some(),
        spec.says.is_some(),
        spec.view.is_some(),
        spec.migrated.is_some(),
        spec.selected.is_some(),
        spec.timeline_span.is_some(),
        spec.vcpu_state.is_some(),
        spec.core.is_some(),
        spec.pinned.is_some(),
        spec.spin_at_least.is_some(),
        spec.spin_at_most.is_some(),
        spec.sections_over.is_some(),
    ];
    let vocabulary = "policy, preempted, share_within, target_at_least, state, exit, hypercall, steps, lines, \
                      injected, file_guest_lines, says, view, migrated, selected, timeline_span, vcpu_state, core, \
                      pinned, spin_at_least, spin_at_most or sections_over";
    if spec.sections_over.is_some() != spec.times.is_some() {
        return Err(error(
            "times",
            "`sections_over` and `times` go together: { vm = \"pv\", sections_over = \"ticket\", times = 1.5 }".into(),
        ));
    }
    if spec.vcpu.is_some() != spec.vcpu_state.is_some() {
        return Err(error(
            "vcpu",
            "`vcpu` and `vcpu_state` go together: { vm = ..., vcpu = 1, vcpu_state = \"waiting\" }".into(),
        ));
    }
    match kinds.iter().filter(|&&set| set).count() {
        1 => {}
        0 => return Err(error("check", format!("says nothing to check; give one of {vocabulary}"))),
        _ => return Err(error("check", format!("checks one thing; give only one of {vocabulary}"))),
    }
    // A VM named under `key`, by its index.
    let named = |key: &str, name: &Spanned<String>| {
        scenario.vms.iter().position(|vm| &vm.name == name.get_ref()).ok_or_else(|| {
            let names: Vec<&str> = scenario.vms.iter().map(|vm| vm.name.as_str()).collect();
            error(key, format!("no VM of the scenario is called '{}' (VMs: {})", name.get_ref(), names.join(", ")))
        })
    };
    let vm = spec.vm.as_ref().map(|name| named("vm", name)).transpose()?;
    let needs_vm = |what: &str| vm.ok_or_else(|| error("vm", format!("a `{what}` check needs the VM it is about")));
    let percentage = |key: &str, percent: f64| {
        if (0.0..=100.0).contains(&percent) {
            Ok(percent)
        } else {
            Err(error(key, format!("{percent} is not a percentage")))
        }
    };
    Ok(if let Some(policy) = spec.policy {
        Check::Policy(policy)
    } else if let Some(at_least) = spec.preempted {
        Check::Preempted { vm: needs_vm("preempted")?, at_least }
    } else if let Some(points) = spec.share_within {
        if !(points > 0.0 && points <= 100.0) {
            return Err(error("share_within", format!("{points} is not a number of points from 0 to 100")));
        }
        Check::ShareWithin { vm: needs_vm("share_within")?, points }
    } else if let Some(percent) = spec.target_at_least {
        if !(0.0..=100.0).contains(&percent) {
            return Err(error("target_at_least", format!("{percent} is not a percentage")));
        }
        Check::TargetAtLeast { vm: needs_vm("target_at_least")?, percent }
    } else if let Some(state) = &spec.state {
        let state = match state.as_str() {
            "running" => StateCheck::Running,
            "paused" => StateCheck::Paused,
            "sleeping" => StateCheck::Sleeping,
            "halted" => StateCheck::Halted,
            "crashed" => StateCheck::Crashed,
            "gdb" => StateCheck::Gdb,
            "ended" => StateCheck::Ended,
            "moved" => StateCheck::Moved,
            other => {
                return Err(error(
                    "state",
                    format!(
                        "'{other}' is not a state; use running, paused, sleeping, halted, crashed, gdb, ended or moved"
                    ),
                ));
            }
        };
        Check::State { vm: needs_vm("state")?, state }
    } else if let Some(selected) = spec.selected {
        if !selected {
            return Err(error("selected", "`selected = false` checks nothing; write `selected = true`".into()));
        }
        Check::Selected { vm: needs_vm("selected")? }
    } else if let Some(span) = &spec.timeline_span {
        let window = crate::units::parse_duration(span).map_err(|message| error("timeline_span", message))?;
        Check::TimelineSpan { at_least_ns: window.as_nanos() as u64 }
    } else if let Some(claim) = &spec.migrated {
        let claim = match claim.as_str() {
            "converged" => MigrationClaim::Converged,
            "at_round_cap" => MigrationClaim::AtRoundCap,
            "throttled_to_fit" => MigrationClaim::ThrottledToFit,
            other => {
                return Err(error(
                    "migrated",
                    format!("'{other}' is not a migration's outcome; use converged, at_round_cap or throttled_to_fit"),
                ));
            }
        };
        Check::Migrated { vm: needs_vm("migrated")?, claim }
    } else if let Some(kind) = &spec.exit {
        let kind = ExitKind::ALL.into_iter().find(|known| known.name() == kind).ok_or_else(|| {
            let names: Vec<&str> = ExitKind::ALL.iter().map(|kind| kind.name()).collect();
            error("exit", format!("'{kind}' is not an exit kind; use one of {}", names.join(", ")))
        })?;
        Check::ExitSeen { vm, kind }
    } else if let Some(name) = &spec.hypercall {
        let hypercall = Hypercall::ALL.into_iter().find(|call| call.name() == name).ok_or_else(|| {
            let mut names: Vec<&str> = Hypercall::ALL.iter().map(|call| call.name()).collect();
            names.dedup();
            error("hypercall", format!("'{name}' is not a hypercall; use one of {}", names.join(", ")))
        })?;
        Check::HypercallSeen { vm, name: hypercall.name() }
    } else if let Some(at_least) = spec.steps {
        Check::Stepped { vm: needs_vm("steps")?, at_least }
    } else if let Some(at_least) = spec.lines {
        Check::Lines { vm: needs_vm("lines")?, at_least }
    } else if let Some(at_least) = spec.injected {
        Check::Injected { vm: needs_vm("injected")?, at_least }
    } else if let Some(at_least) = spec.file_guest_lines {
        Check::FileGuestLines { at_least }
    } else if let Some(text) = &spec.says {
        Check::Says { vm: needs_vm("says")?, text: text.clone() }
    } else if let (Some(vcpu), Some(state)) = (spec.vcpu, &spec.vcpu_state) {
        let vm = needs_vm("vcpu_state")?;
        let most = scenario.vms[vm].vcpus as usize;
        if vcpu >= most {
            return Err(error("vcpu", format!("VM '{}' has {most} vCPUs (0 to {})", scenario.vms[vm].name, most - 1)));
        }
        let state = match state.as_str() {
            "runnable" => "run",
            "sleeping" => "sleep",
            "waiting" => "wait",
            "halted" => "halt",
            other => {
                return Err(error(
                    "vcpu_state",
                    format!("'{other}' is not a vCPU's state; use runnable, sleeping, waiting or halted"),
                ));
            }
        };
        Check::VcpuState { vm, vcpu, state }
    } else if let Some(core) = spec.core {
        let cores = scenario.cpus.unwrap_or(1) as usize;
        if core >= cores {
            return Err(error(
                "core",
                format!("the scenario has {cores} core(s) (cpus = {cores}); cores count from 0"),
            ));
        }
        Check::OnCore { vm: needs_vm("core")?, core }
    } else if let Some(pinned) = spec.pinned {
        Check::Pinned { vm: needs_vm("pinned")?, pinned }
    } else if let Some(percent) = spec.spin_at_least {
        Check::SpinAtLeast { vm: needs_vm("spin_at_least")?, percent: percentage("spin_at_least", percent)? }
    } else if let Some(percent) = spec.spin_at_most {
        Check::SpinAtMost { vm: needs_vm("spin_at_most")?, percent: percentage("spin_at_most", percent)? }
    } else if let (Some(other), Some(times)) = (&spec.sections_over, spec.times) {
        let other = named("sections_over", other)?;
        if !(times.is_finite() && times > 0.0) {
            return Err(error("times", format!("{times} is not a ratio above 0")));
        }
        Check::SectionsOver { vm: needs_vm("sections_over")?, other, times }
    } else {
        match spec.view.as_deref() {
            Some("inspector") => Check::ViewOpen(View::Inspector),
            Some("timeline") => Check::ViewOpen(View::Timeline),
            other => {
                return Err(error(
                    "view",
                    format!("'{}' is not a view; use inspector or timeline", other.unwrap_or("")),
                ));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Lesson, ScenarioError> {
        parse(text, "lesson.toml", Path::new("/lessons"))
    }

    const HEAD: &str = "title = \"T\"\ntext = \"What it shows.\"\n[scenario]\npolicy = \"io\"\n\
                        [[scenario.vm]]\nname = \"neo\"\nguest = \"neo\"\n";

    #[test]
    fn every_built_in_lesson_is_valid() {
        let titles = builtin_titles();
        let names: Vec<&str> = titles.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "setup",
                "hypercalls",
                "one-at-a-time",
                "preemption",
                "fractions",
                "hostile",
                "your-guest",
                "modes",
                "interrupts",
                "migration",
                "smp",
                "cores",
                "locks",
                "gang"
            ]
        );
        assert!(titles.iter().all(|(_, title)| !title.is_empty()));
        for (name, _) in BUILTIN {
            assert!(load(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn steps_and_checks_parse() {
        let lesson = parse_str(&format!(
            "{HEAD}[[step]]\ndo = \"Press m\"\ncheck = {{ policy = \"rr\" }}\n\
             [[step]]\ndo = \"Wait\"\ncheck = {{ vm = \"neo\", preempted = 50 }}\n\
             [[step]]\ndo = \"Open it\"\ncheck = {{ view = \"timeline\" }}\n\
             [[step]]\ndo = \"See\"\ncheck = {{ hypercall = \"HC_printStr\" }}\n\
             [[step]]\ndo = \"Both\"\nchecks = [{{ vm = \"neo\", selected = true }}, {{ timeline_span = \"500ms\" }}]\n\
             [[step]]\ndo = \"Move\"\ncheck = {{ vm = \"neo\", migrated = \"throttled_to_fit\" }}\n\
             [[step]]\ndo = \"Wait\"\ncheck = {{ vm = \"neo\", vcpu = 0, vcpu_state = \"sleeping\" }}\n"
        ))
        .unwrap();
        assert_eq!(lesson.title, "T");
        let checks: Vec<Check> = lesson.steps.iter().map(|step| step.check.clone()).collect();
        assert_eq!(
            checks,
            [
                Check::Policy(Policy::Rr),
                Check::Preempted { vm: 0, at_least: 50 },
                Check::ViewOpen(View::Timeline),
                Check::HypercallSeen { vm: None, name: "HC_printStr" },
                Check::All(vec![Check::Selected { vm: 0 }, Check::TimelineSpan { at_least_ns: 500_000_000 }]),
                Check::Migrated { vm: 0, claim: MigrationClaim::ThrottledToFit },
                Check::VcpuState { vm: 0, vcpu: 0, state: "sleep" },
            ]
        );
        assert_eq!(lesson.scenario.policy, Some(Policy::Io));
    }

    #[test]
    fn mistakes_are_located_by_file_line_and_key() {
        let cases = [
            (
                "[[step]]\ndo = \"x\"\ncheck = { vm = \"trinity\", preempted = 1 }\n",
                10,
                "vm",
                "no VM of the scenario is called 'trinity'",
            ),
            ("[[step]]\ndo = \"x\"\ncheck = { preempted = 1 }\n", 10, "vm", "needs the VM"),
            ("[[step]]\ndo = \"x\"\ncheck = { }\n", 10, "check", "says nothing to check"),
            ("[[step]]\ndo = \"x\"\ncheck = { policy = \"rr\", view = \"timeline\" }\n", 10, "check", "only one"),
            ("[[step]]\ndo = \"x\"\ncheck = { exit = \"vmcall\" }\n", 10, "exit", "not an exit kind"),
            ("[[step]]\ndo = \"x\"\ncheck = { state = \"asleep\" }\n", 10, "state", "not a state"),
            ("[[step]]\ndo = \"x\"\ncheck = { speed = 3 }\n", 10, "speed", "unknown field"),
            ("[[step]]\ndo = \"\"\ncheck = { view = \"timeline\" }\n", 9, "do", "is empty"),
            ("[[step]]\ndo = \"x\"\n", 9, "check", "needs one `check"),
            ("[[step]]\ndo = \"x\"\nchecks = []\n", 9, "check", "non-empty"),
            (
                "[[step]]\ndo = \"x\"\ncheck = { view = \"timeline\" }\nchecks = [{ policy = \"rr\" }]\n",
                9,
                "check",
                "not both",
            ),
            ("[[step]]\ndo = \"x\"\nchecks = [{ policy = \"rr\" }, { selected = true }]\n", 10, "vm", "needs the VM"),
            ("[[step]]\ndo = \"x\"\ncheck = { vm = \"neo\", selected = false }\n", 10, "selected", "checks nothing"),
            ("[[step]]\ndo = \"x\"\ncheck = { timeline_span = \"soon\" }\n", 10, "timeline_span", ""),
            ("[[step]]\ndo = \"x\"\ncheck = { vm = \"neo\", migrated = \"yes\" }\n", 10, "migrated", "not a migration"),
            ("[[step]]\ndo = \"x\"\ncheck = { vm = \"neo\", vcpu = 1 }\n", 10, "vcpu", "go together"),
            (
                "[[step]]\ndo = \"x\"\ncheck = { vm = \"neo\", vcpu = 1, vcpu_state = \"waiting\" }\n",
                10,
                "vcpu",
                "has 1 vCPUs",
            ),
            (
                "[[step]]\ndo = \"x\"\ncheck = { vm = \"neo\", vcpu = 0, vcpu_state = \"dozing\" }\n",
                10,
                "vcpu_state",
                "not a vCPU",
            ),
        ];
        for (steps, line, key, message) in cases {
            let error = parse_str(&format!("{HEAD}{steps}")).unwrap_err();
            assert_eq!((error.line, error.key.as_str()), (line, key), "{steps}: {error}");
            assert!(error.message.contains(message), "{steps}: {error}");
            assert!(error.to_string().starts_with(&format!("lesson.toml:{line}: {key}: ")), "{error}");
        }
        let no_steps = parse_str(HEAD).unwrap_err();
        assert_eq!(no_steps.key, "step");
        let bad_scenario = parse_str(&HEAD.replace("policy = \"io\"", "policy = \"lottery\"")).unwrap_err();
        assert_eq!((bad_scenario.line, bad_scenario.key.as_str()), (4, "\"lottery\""), "{bad_scenario}");
        assert!(load("no-such-lesson").unwrap_err().message.contains("setup, hypercalls"));
    }
}
