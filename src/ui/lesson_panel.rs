//! The lesson panel (`matrix-tui lesson NAME`; `l` hides and shows it): the
//! title, the steps with a ✓ as each passes and an arrow at the one to do,
//! and what the lesson shows. Steps tick in order: only the current one is
//! checked, against the state the UI already holds.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Borders, Paragraph, Widget};

use super::rates::RATE_WINDOW_NS;
use super::vm_view::VmView;
use crate::config::Policy;
use crate::event::VmState;
use crate::lesson::{Check, Lesson, StateCheck, View};

/// A lesson and how far the user got.
#[derive(Debug, Clone)]
pub struct LessonProgress {
    /// The lesson.
    pub lesson: Lesson,
    /// Steps ticked (the next to do is this index).
    pub done: usize,
    /// The panel is on screen.
    pub shown: bool,
    /// VMs whose guest is loaded from a file (for `file_guest_lines`).
    pub file_vms: Vec<usize>,
}

impl LessonProgress {
    /// A lesson not yet begun, its panel shown.
    pub fn new(lesson: Lesson, file_vms: Vec<usize>) -> Self {
        Self { lesson, done: 0, shown: true, file_vms }
    }

    /// Ticks the current step, and the ones after it, while they hold;
    /// true if any was ticked.
    pub fn advance(&mut self, state: &LessonState<'_>) -> bool {
        let before = self.done;
        while self.lesson.steps.get(self.done).is_some_and(|step| holds(&step.check, state, &self.file_vms)) {
            self.done += 1;
        }
        self.done > before
    }

    /// Whether every step is ticked.
    pub fn finished(&self) -> bool {
        self.done == self.lesson.steps.len()
    }
}

/// What a lesson's checks look at: the state the UI shows now, handed in
/// by the app (a component gets what it judges, not the app itself).
pub struct LessonState<'a> {
    /// Every VM as the UI shows it.
    pub vms: &'a [VmView],
    /// The policy in force.
    pub policy: Policy,
    /// Each VM's target share now (None where the policy has none for it).
    pub targets: Vec<Option<f64>>,
    /// Whether the exit inspector is open.
    pub inspector_open: bool,
    /// Whether the timeline is shown.
    pub timeline_shown: bool,
    /// The timeline's window, in ns.
    pub timeline_window_ns: u64,
    /// The selected VM.
    pub selected: usize,
    /// The time the VMs' rates and shares span.
    pub rates_span_ns: u64,
}

impl LessonState<'_> {
    fn target(&self, vm: usize) -> Option<f64> {
        self.targets.get(vm).copied().flatten()
    }
}

/// Whether `check` holds in the state `app` shows now.
pub fn holds(check: &Check, app: &LessonState<'_>, file_vms: &[usize]) -> bool {
    let vm = |index: usize| app.vms.get(index);
    match *check {
        Check::All(ref checks) => checks.iter().all(|check| holds(check, app, file_vms)),
        Check::Selected { vm: index } => app.selected == index,
        Check::TimelineSpan { at_least_ns } => app.timeline_shown && app.timeline_window_ns >= at_least_ns,
        Check::Policy(policy) => app.policy == policy,
        Check::Preempted { vm: index, at_least } => vm(index).is_some_and(|v| v.counters.preemptions >= at_least),
        // A check on rates or shares waits for a full window of them.
        Check::ShareWithin { .. }
        | Check::SpinAtLeast { .. }
        | Check::SpinAtMost { .. }
        | Check::SectionsOver { .. }
            if app.rates_span_ns < RATE_WINDOW_NS =>
        {
            false
        }
        Check::ShareWithin { vm: index, points } => match (vm(index), app.target(index)) {
            (Some(view), Some(target)) => (view.share - target).abs() * 100.0 <= points,
            _ => false,
        },
        Check::TargetAtLeast { vm: index, percent } => {
            app.target(index).is_some_and(|target| target * 100.0 >= percent - 1e-6)
        }
        Check::State { vm: index, state } => vm(index).is_some_and(|view| match state {
            StateCheck::Running => view.state == VmState::Running,
            StateCheck::Paused => view.state == VmState::Paused,
            StateCheck::Sleeping => matches!(view.state, VmState::Sleeping { .. }),
            StateCheck::Halted => matches!(view.state, VmState::Halted { .. }),
            StateCheck::Crashed => matches!(view.state, VmState::Crashed { .. }),
            StateCheck::Gdb => matches!(view.state, VmState::Gdb { .. }),
            StateCheck::Ended => view.state.is_finished(),
            StateCheck::Moved => matches!(view.state, VmState::Moved { .. }),
        }),
        Check::ExitSeen { vm: index, kind } => match index {
            Some(index) => vm(index).is_some_and(|view| view.seen_kinds.contains(&kind)),
            None => app.vms.iter().any(|view| view.seen_kinds.contains(&kind)),
        },
        Check::HypercallSeen { vm: index, name } => match index {
            Some(index) => vm(index).is_some_and(|view| view.seen_hypercalls.contains(&name)),
            None => app.vms.iter().any(|view| view.seen_hypercalls.contains(&name)),
        },
        Check::Stepped { vm: index, at_least } => vm(index).is_some_and(|view| view.steps >= at_least),
        Check::Lines { vm: index, at_least } => vm(index).is_some_and(|view| view.lines_printed >= at_least),
        Check::Injected { vm: index, at_least } => vm(index).is_some_and(|view| view.counters.injected >= at_least),
        Check::FileGuestLines { at_least } => {
            file_vms.iter().any(|&index| vm(index).is_some_and(|view| view.lines_printed >= at_least))
        }
        Check::VcpuState { vm: index, vcpu, state } => {
            vm(index).is_some_and(|view| view.vcpus.get(vcpu).is_some_and(|line| line.state == state))
        }
        Check::OnCore { vm: index, core } => vm(index).is_some_and(|view| view.core == core),
        Check::Pinned { vm: index, pinned } => vm(index).is_some_and(|view| view.pin.is_empty() != pinned),
        Check::Says { vm: index, ref text } => {
            vm(index).is_some_and(|view| view.lines.iter().any(|line| line.contains(text.as_str())))
        }
        Check::Migrated { vm: index, claim } => {
            vm(index).is_some_and(|view| matches!(view.state, VmState::Moved { .. }) && view.move_rounds.shows(claim))
        }
        Check::SpinAtLeast { vm: index, percent } => {
            vm(index).and_then(|view| view.rates.lock.spin_pct()).is_some_and(|spin| spin >= percent)
        }
        Check::SpinAtMost { vm: index, percent } => {
            vm(index).and_then(|view| view.rates.lock.spin_pct()).is_some_and(|spin| spin <= percent)
        }
        Check::SectionsOver { vm: index, other, times } => match (vm(index), vm(other)) {
            (Some(view), Some(other)) => {
                let (mine, theirs) = (view.rates.lock.sections, other.rates.lock.sections);
                mine > 0 && mine as f64 >= times * theirs as f64
            }
            _ => false,
        },
        Check::ViewOpen(View::Inspector) => app.inspector_open,
        Check::ViewOpen(View::Timeline) => app.timeline_shown,
    }
}

/// The panel for a lesson's progress.
pub struct LessonPanel<'a> {
    /// The progress to show.
    pub progress: &'a LessonProgress,
}

impl Widget for LessonPanel<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let progress = self.progress;
        let lesson = &progress.lesson;
        let block = Block::default()
            .borders(Borders::ALL)
            .border_type(BorderType::Rounded)
            .border_style(Style::default().fg(Color::Yellow))
            .title(Span::styled(format!(" lesson: {} ", lesson.title), Style::default().bold()))
            .title_bottom(if progress.finished() {
                // Said where a short panel still shows it, not only below the steps.
                format!(" all {} steps done · l hides ", lesson.steps.len())
            } else {
                format!(" step {} of {} · l hides ", progress.done + 1, lesson.steps.len())
            });
        // Every step in full where they fit; where not (80x24), the step to
        // do in full and the others a row each, cut at the edge, scrolled
        // so that every word of what to do now shows.
        let width = usize::from(block.inner(area).width).max(1);
        let height = usize::from(block.inner(area).height);
        let full = step_rows(progress, width, true);
        let (mut rows, current_at, current_rows) =
            if full.0.len() <= height { full } else { step_rows(progress, width, false) };
        rows.push(Line::raw(""));
        let text = lesson.text.replace('\n', " ");
        let gray = Style::default().fg(Color::Gray);
        rows.extend(
            textwrap::wrap(&text, textwrap::Options::new(width))
                .into_iter()
                .map(|row| Line::styled(row.into_owned(), gray)),
        );
        // Scroll no further than the step to do, and only as far as needed
        // to show it whole.
        let scroll = (current_at + current_rows.min(height)).saturating_sub(height).min(current_at);
        Paragraph::new(rows).scroll((scroll as u16, 0)).block(block).render(area, buf);
    }
}

/// The steps' rows at `width` (each in full, or only the one to do), with
/// where the one to do (or "All done") begins and how many rows it takes.
fn step_rows(progress: &LessonProgress, width: usize, all_in_full: bool) -> (Vec<Line<'static>>, usize, usize) {
    let mut rows: Vec<Line<'static>> = Vec::new();
    let (mut current_at, mut current_rows) = (0, 1);
    for (index, step) in progress.lesson.steps.iter().enumerate() {
        let (mark, style) = match index.cmp(&progress.done) {
            std::cmp::Ordering::Less => ("✓ ", Style::default().fg(Color::Green)),
            std::cmp::Ordering::Equal => ("→ ", Style::default().fg(Color::Yellow).bold()),
            std::cmp::Ordering::Greater => ("· ", Style::default().fg(Color::DarkGray)),
        };
        let text = format!("{mark}{}", step.instruction);
        if all_in_full || index == progress.done {
            let wrapped = textwrap::wrap(&text, textwrap::Options::new(width).subsequent_indent("  "));
            if index == progress.done {
                (current_at, current_rows) = (rows.len(), wrapped.len());
            }
            rows.extend(wrapped.into_iter().map(|row| Line::styled(row.into_owned(), style)));
        } else if text.chars().count() > width {
            let cut: String = text.chars().take(width.saturating_sub(1)).collect();
            rows.push(Line::styled(format!("{cut}…"), style));
        } else {
            rows.push(Line::styled(text, style));
        }
    }
    if progress.finished() {
        (current_at, current_rows) = (rows.len(), 1);
        rows.push(Line::styled("All done. Try it your own way, or q to quit.", Style::default().fg(Color::Green)));
    }
    (rows, current_at, current_rows)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use super::*;

    /// A lesson of three steps: open the timeline, raise neo to 75 %, rr.
    pub(crate) fn fractions() -> LessonProgress {
        let lesson = crate::lesson::parse(
            "title = \"T\"\ntext = \"x\"\n[scenario]\n[[scenario.vm]]\nname = \"neo\"\nguest = \"neo\"\nweight = 70\n\
             [[scenario.vm]]\nname = \"morpheus\"\nguest = \"morpheus\"\nweight = 30\n\
             [[step]]\ndo = \"t\"\ncheck = { view = \"timeline\" }\n\
             [[step]]\ndo = \"+\"\ncheck = { vm = \"neo\", target_at_least = 75 }\n\
             [[step]]\ndo = \"rr\"\ncheck = { policy = \"rr\" }\n",
            "t.toml",
            Path::new(""),
        )
        .unwrap();
        LessonProgress::new(lesson, vec![])
    }

    #[test]
    fn checks_on_rates_hold_only_once_the_rates_span_a_full_window() {
        let mut ticket = VmView::new("ticket".into());
        let mut pv = VmView::new("pv".into());
        ticket.rates.lock = crate::stats::LockCounts { sections: 100, spins: 800, work: 200, ..Default::default() };
        pv.rates.lock = crate::stats::LockCounts { sections: 700, spins: 100, work: 900, ..Default::default() };
        let vms = [ticket, pv];
        let state = |rates_span_ns: u64| LessonState {
            vms: &vms,
            policy: Policy::Fair,
            targets: vec![Some(0.5), Some(0.5)],
            inspector_open: false,
            timeline_shown: false,
            timeline_window_ns: 0,
            selected: 0,
            rates_span_ns,
        };
        let checks = [
            Check::SpinAtLeast { vm: 0, percent: 75.0 },
            Check::SpinAtMost { vm: 1, percent: 15.0 },
            Check::SectionsOver { vm: 1, other: 0, times: 7.0 },
        ];
        for check in &checks {
            assert!(!holds(check, &state(RATE_WINDOW_NS / 5), &[]), "{check:?} over 200 ms");
            assert!(holds(check, &state(RATE_WINDOW_NS), &[]), "{check:?} over a second");
        }
        assert!(!holds(&Check::SectionsOver { vm: 1, other: 0, times: 7.5 }, &state(RATE_WINDOW_NS), &[]));
        assert!(!holds(&Check::SpinAtLeast { vm: 1, percent: 11.0 }, &state(RATE_WINDOW_NS), &[]));
    }

    #[test]
    fn the_panel_marks_done_current_and_later_steps() {
        let mut progress = fractions();
        progress.done = 1;
        let area = Rect::new(0, 0, 40, 8);
        let mut buf = Buffer::empty(area);
        LessonPanel { progress: &progress }.render(area, &mut buf);
        let rows: Vec<String> = (0..8).map(|y| (0..40).map(|x| buf[(x, y)].symbol().to_string()).collect()).collect();
        assert!(rows[1].contains("✓ t") && rows[2].contains("→ +") && rows[3].contains("· rr"), "{rows:#?}");
        assert!(rows[7].contains("step 2 of 3"), "{rows:#?}");
        let mut tiny = Buffer::empty(Rect::new(0, 0, 1, 1));
        LessonPanel { progress: &progress }.render(Rect::new(0, 0, 1, 1), &mut tiny);
    }
}
