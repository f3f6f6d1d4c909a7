//! The lesson panel (`matrix-tui lesson NAME`; `l` hides and shows it): the
//! title, the steps with a ✓ as each passes and an arrow at the one to do,
//! and what the lesson shows. Steps tick in order: only the current one is
//! checked, against the state the UI already holds.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Borders, Paragraph, Widget, Wrap};

use super::app::App;
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
    pub fn advance(&mut self, app: &App) -> bool {
        let before = self.done;
        while self.lesson.steps.get(self.done).is_some_and(|step| holds(&step.check, app, &self.file_vms)) {
            self.done += 1;
        }
        self.done > before
    }

    /// Whether every step is ticked.
    pub fn finished(&self) -> bool {
        self.done == self.lesson.steps.len()
    }
}

/// Whether `check` holds in the state `app` shows now.
pub fn holds(check: &Check, app: &App, file_vms: &[usize]) -> bool {
    let vm = |index: usize| app.vms.get(index);
    match *check {
        Check::Policy(policy) => app.settings.policy == policy,
        Check::Preempted { vm: index, at_least } => vm(index).is_some_and(|v| v.counters.preemptions >= at_least),
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
            StateCheck::Halted => view.state == VmState::Halted,
            StateCheck::Crashed => matches!(view.state, VmState::Crashed { .. }),
            StateCheck::Gdb => matches!(view.state, VmState::Gdb { .. }),
            StateCheck::Ended => view.state.is_finished(),
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
        Check::FileGuestLines { at_least } => {
            file_vms.iter().any(|&index| vm(index).is_some_and(|view| view.lines_printed >= at_least))
        }
        Check::ViewOpen(View::Inspector) => app.inspector.is_some(),
        Check::ViewOpen(View::Timeline) => app.timeline.shown,
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
            .title_bottom(format!(
                " step {} of {} · l hides ",
                (progress.done + 1).min(lesson.steps.len()),
                lesson.steps.len()
            ));
        let mut lines = Vec::new();
        for (index, step) in lesson.steps.iter().enumerate() {
            let (mark, style) = match index.cmp(&progress.done) {
                std::cmp::Ordering::Less => ("✓ ", Style::default().fg(Color::Green)),
                std::cmp::Ordering::Equal => ("→ ", Style::default().fg(Color::Yellow).bold()),
                std::cmp::Ordering::Greater => ("· ", Style::default().fg(Color::DarkGray)),
            };
            lines.push(Line::from(vec![Span::styled(mark, style), Span::styled(step.instruction.clone(), style)]));
        }
        if progress.finished() {
            lines.push(Line::styled("All done. Try it your own way, or q to quit.", Style::default().fg(Color::Green)));
        }
        lines.push(Line::raw(""));
        lines.push(Line::styled(lesson.text.replace('\n', " "), Style::default().fg(Color::Gray)));
        Paragraph::new(lines).wrap(Wrap { trim: true }).block(block).render(area, buf);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::event::Event;
    use crate::ui::app::{Action, initial_settings};

    fn fractions() -> (App, LessonProgress) {
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
        let settings = initial_settings(
            crate::config::Policy::Fair,
            std::time::Duration::from_millis(1),
            crate::vm::TimerKind::Posix,
            vec![70.0, 30.0],
        );
        (App::new(vec!["neo".into(), "morpheus".into()], settings), LessonProgress::new(lesson, vec![]))
    }

    #[test]
    fn steps_tick_in_order_as_their_checks_hold() {
        let (mut app, progress) = fractions();
        app.lesson = Some(progress);
        // Switching to rr first does not tick step 3: step 1 comes first.
        app.apply(Event::Settings(crate::event::Settings {
            policy: crate::config::Policy::Rr,
            ..app.settings.clone()
        }));
        assert_eq!(app.lesson.as_ref().unwrap().done, 0);
        app.act(Action::ToggleTimeline);
        assert_eq!(app.lesson.as_ref().unwrap().done, 1);
        app.apply(Event::Settings(crate::event::Settings {
            policy: crate::config::Policy::Fair,
            ..app.settings.clone()
        }));
        app.act(Action::MoreShare);
        // Step 2 ticks; step 3 (rr) does not hold any more.
        assert_eq!(app.lesson.as_ref().unwrap().done, 2);
        app.apply(Event::Settings(crate::event::Settings {
            policy: crate::config::Policy::Rr,
            ..app.settings.clone()
        }));
        assert!(app.lesson.as_ref().unwrap().finished());
        app.act(Action::ToggleLesson);
        assert!(!app.lesson.as_ref().unwrap().shown);
    }

    #[test]
    fn the_panel_marks_done_current_and_later_steps() {
        let (_, mut progress) = fractions();
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
