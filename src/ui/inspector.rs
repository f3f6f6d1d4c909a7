//! The exit inspector (`e`): the selected VM's newest exits, newest first,
//! decoded, with a filter, counts by kind and, after a step, the registers.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Borders, Paragraph, Widget};

use super::vm_view::VmView;
use crate::event::{StepResult, VmState};
use crate::record::{ExitKind, ExitRecord, format_seconds};

/// Which exits the inspector lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExitFilter {
    /// Every exit.
    #[default]
    All,
    /// Port accesses that made a hypercall.
    Hypercalls,
    /// Everything else (misused ports, HLT, MMIO, crashes).
    Other,
}

impl ExitFilter {
    /// The next filter, for the `f` key.
    pub fn next(self) -> Self {
        match self {
            Self::All => Self::Hypercalls,
            Self::Hypercalls => Self::Other,
            Self::Other => Self::All,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Hypercalls => "hypercalls",
            Self::Other => "other exits",
        }
    }

    fn admits(self, exit: &ExitRecord) -> bool {
        match self {
            Self::All => true,
            Self::Hypercalls => exit.is_hypercall(),
            Self::Other => !exit.is_hypercall(),
        }
    }
}

/// The inspector's own state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Inspector {
    /// Which exits it lists.
    pub filter: ExitFilter,
    /// Exits scrolled back from the newest.
    pub scroll: usize,
}

/// The inspector drawn for one VM.
pub struct InspectorView<'a> {
    /// The VM.
    pub view: &'a VmView,
    /// The inspector's state.
    pub inspector: &'a Inspector,
}

impl Widget for InspectorView<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let view = self.view;
        let inspector = self.inspector;
        let title = format!(
            " exits of {} · newest first · filter: {} (f) · {} kept ",
            view.name,
            inspector.filter.name(),
            view.exits.len()
        );
        let block = Block::default()
            .borders(Borders::ALL)
            .border_type(BorderType::Double)
            .border_style(Style::default().fg(Color::Cyan))
            .title(title)
            .title_bottom(" e close · s step · p resume · PgUp/PgDn scroll ");
        let inner = block.inner(area);
        block.render(area, buf);
        let mut lines = vec![counts_line(view)];
        // The registers where the VM ended, else after its last step.
        let shown = match (&view.state, &view.last_step) {
            (VmState::Halted { registers, t_ns }, _) => {
                Some((format!("halted at {} s: the registers at its hlt", format_seconds(*t_ns)), registers))
            }
            (VmState::Crashed { registers, .. }, _) => Some(("crashed: the registers at the crash".into(), registers)),
            (state, Some((result, registers))) => {
                let head = if matches!(state, VmState::Paused) { "paused after " } else { "last " };
                Some((format!("{head}{}", result.describe()), registers))
            }
            (_, None) => None,
        };
        if let Some((head, registers)) = shown {
            lines.push(Line::styled(head, Style::default().fg(Color::Yellow)));
            let r = registers;
            let dim = Style::default().fg(Color::DarkGray);
            let rows: [&[(&str, u64)]; 4] = [
                &[("rip", r.rip), ("rsp", r.rsp), ("rflags", r.rflags)],
                &[("rax", r.rax), ("rbx", r.rbx), ("rcx", r.rcx), ("rdx", r.rdx)],
                &[("rsi", r.rsi), ("rdi", r.rdi)],
                &[("cr0", r.cr0), ("cr3", r.cr3), ("cr4", r.cr4), ("efer", r.efer)],
            ];
            for row in rows {
                let mut spans = Vec::new();
                for (name, value) in row {
                    spans.push(Span::styled(format!("{name:>6} "), dim));
                    spans.push(Span::raw(format!("{value:<#12x}")));
                }
                lines.push(Line::from(spans));
            }
        }
        if view.exits.is_empty() {
            lines.extend(setup_lines(view));
        }
        // time, number, rip and host time take 39 columns; the rest is the exit.
        let decoded = usize::from(inner.width).saturating_sub(39).max(16);
        lines.push(Line::styled(
            format!("{:>10} {:>7}  {:<decoded$} {:>9} {:>8}", "time (s)", "exit", "decoded", "rip", "host"),
            Style::default().fg(Color::DarkGray).underlined(),
        ));
        let stepped = match &view.last_step {
            Some((StepResult::Exit(exit), _)) => Some(exit.number),
            _ => None,
        };
        let room = usize::from(inner.height).saturating_sub(lines.len());
        let shown = view.exits.iter().rev().filter(|exit| inspector.filter.admits(exit)).skip(inspector.scroll);
        for exit in shown.take(room) {
            let style = if Some(exit.number) == stepped {
                Style::default().fg(Color::Black).bg(Color::Yellow)
            } else if exit.call.refused || !matches!(exit.kind, ExitKind::IoIn | ExitKind::IoOut | ExitKind::Hlt) {
                Style::default().fg(Color::Magenta)
            } else {
                Style::default()
            };
            lines.push(Line::styled(
                format!(
                    "{:>10} {:>7}  {:<decoded$.decoded$} {:>9} {:>6.1}us",
                    format_seconds(exit.t_ns),
                    exit.number,
                    if view.vcpus.is_empty() {
                        exit.describe()
                    } else {
                        format!("cpu{} {}", exit.vcpu, exit.describe())
                    },
                    format!("{:#x}", exit.rip),
                    f64::from(exit.handling_ns) / 1000.0
                ),
                style,
            ));
        }
        if view.exits.is_empty() {
            lines.push(Line::styled("no exits yet", Style::default().fg(Color::DarkGray)));
        }
        Paragraph::new(lines).render(inner, buf);
    }
}

/// How the VM was set up before its first instruction: each step, its
/// ioctls and its time.
fn setup_lines(view: &VmView) -> Vec<Line<'static>> {
    if view.setup.is_empty() {
        return Vec::new();
    }
    let dim = Style::default().fg(Color::DarkGray);
    let total: u64 = view.setup.iter().map(|step| step.ns).sum();
    let mut lines = vec![
        Line::styled(
            format!("set up in {:.2} ms, before its first instruction:", total as f64 / 1e6),
            Style::default().fg(Color::Cyan),
        ),
        Line::styled(view.setup_summary.clone(), Style::default().fg(Color::Cyan)),
    ];
    for step in &view.setup {
        lines.push(Line::from(vec![
            Span::raw(format!("{:>9.1} us  ", step.ns as f64 / 1000.0)),
            Span::raw(format!("{:<36} ", step.what)),
            Span::styled(step.how.to_string(), dim),
        ]));
    }
    lines
}

/// `io_out 22  io_in 6  hlt 1` over the exits kept.
fn counts_line(view: &VmView) -> Line<'static> {
    let mut spans = vec![Span::styled("by kind: ", Style::default().fg(Color::DarkGray))];
    for kind in ExitKind::ALL {
        let count = view.exits.iter().filter(|exit| exit.kind == kind).count();
        if count > 0 {
            spans.push(Span::raw(format!("{} {count}  ", kind.name())));
        }
    }
    let hypercalls = view.exits.iter().filter(|exit| exit.is_hypercall()).count();
    spans.push(Span::styled(format!("(hypercalls {hypercalls})"), Style::default().fg(Color::DarkGray)));
    Line::from(spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_cycles_through_all_three() {
        let filter = ExitFilter::default();
        assert_eq!(filter, ExitFilter::All);
        assert_eq!(filter.next().next().next(), ExitFilter::All);
        assert_eq!(filter.next(), ExitFilter::Hypercalls);
    }

    #[test]
    fn after_a_halt_the_registers_are_the_halts_not_the_last_steps() {
        let mut view = VmView::new("hello".into());
        let stepped = crate::vm::RegisterDump { rax: 0x48, ..Default::default() };
        view.last_step = Some((StepResult::Finished, stepped));
        view.state = VmState::Halted { registers: crate::vm::RegisterDump { rax: 42, ..Default::default() }, t_ns: 0 };
        let area = Rect::new(0, 0, 90, 12);
        let mut buf = Buffer::empty(area);
        InspectorView { view: &view, inspector: &Inspector::default() }.render(area, &mut buf);
        let text: String = (0..12).map(|y| (0..90).map(|x| buf[(x, y)].symbol()).collect::<String>() + "\n").collect();
        assert!(text.contains("halted at 0.000000 s") && text.contains("rax 0x2a"), "{text}");
        assert!(!text.contains("0x48"), "{text}");
    }
}
