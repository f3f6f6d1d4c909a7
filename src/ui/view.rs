//! Drawing the UI: a header, a pane per VM (or a compact row each when there
//! are many), a footer of keys, and the help overlay.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, Wrap};

use super::app::{App, VmView};
use super::inspector::InspectorView;
use super::keys::BINDINGS;
use super::lesson_panel::LessonPanel;
use super::share_gauge::ShareGauge;
use super::timeline::{self, TimelineView};
use crate::config::Policy;
use crate::debug::DebuggerStatus;
use crate::event::VmState;

/// Smallest terminal the UI draws in.
pub const MIN_SIZE: (u16, u16) = (60, 16);
/// Pane height below which VMs are shown as compact rows.
const MIN_PANE_HEIGHT: u16 = 12;

/// Draws the whole screen; returns where each VM's pane (or row) is, for clicks.
pub fn draw(frame: &mut Frame<'_>, app: &App) -> Vec<Rect> {
    let area = frame.area();
    if area.width < MIN_SIZE.0 || area.height < MIN_SIZE.1 {
        let message = format!(
            "The terminal is {}x{}; matrix-tui needs at least {}x{}.\nEnlarge it, or press q to quit.",
            area.width, area.height, MIN_SIZE.0, MIN_SIZE.1
        );
        frame.render_widget(Paragraph::new(message).wrap(Wrap { trim: true }), area);
        return Vec::new();
    }
    let [header, body, footer] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(0), Constraint::Length(1)]).areas(area);
    frame.render_widget(header_line(app, header.width), header);
    frame.render_widget(footer_line(footer.width), footer);
    if app.vms.is_empty() {
        let waiting = "No VM yet: this run waits for VMs moved here (--incoming). q quits.";
        frame.render_widget(Paragraph::new(waiting).wrap(Wrap { trim: true }), body);
        return Vec::new();
    }
    let body = match app.lesson.as_ref().filter(|lesson| lesson.shown) {
        Some(progress) => {
            // Beside the panes where there is room, under them where not.
            let (rest, panel) = if body.width >= 140 {
                let [rest, panel] = Layout::horizontal([Constraint::Min(0), Constraint::Length(52)]).areas(body);
                (rest, panel)
            } else {
                let height = (body.height / 2).min(12);
                let [rest, panel] = Layout::vertical([Constraint::Min(0), Constraint::Length(height)]).areas(body);
                (rest, panel)
            };
            frame.render_widget(LessonPanel { progress }, panel);
            rest
        }
        None => body,
    };
    let body = if app.timeline.shown {
        let height = timeline::height_for(app.vms.len(), app.settings.cpus).min(body.height / 2);
        let [rest, strip] = Layout::vertical([Constraint::Min(0), Constraint::Length(height)]).areas(body);
        let names: Vec<String> = app.vms.iter().map(|view| view.name.clone()).collect();
        // The right edge is the end of the newest slice: what is known to have run.
        let now_ns = app.timeline.newest_ns();
        let cores = app.settings.cpus;
        frame.render_widget(TimelineView { timeline: &app.timeline, names: &names, now_ns, cores }, strip);
        rest
    } else {
        body
    };
    if let Some(inspector) = &app.inspector {
        let view = &app.vms[app.selected];
        // Wide terminals keep the selected VM's pane beside the inspector.
        let pane_width = if body.width >= 120 { 42 } else { 0 };
        let [pane, list] = Layout::horizontal([Constraint::Length(pane_width), Constraint::Min(0)]).areas(body);
        if pane_width > 0 {
            draw_pane(frame, app, app.selected, pane);
        }
        frame.render_widget(InspectorView { view, inspector }, list);
        if app.help {
            draw_help(frame, area);
        }
        return vec![Rect::default(); app.selected].into_iter().chain([pane]).collect();
    }
    let panes = pane_areas(body, app.vms.len());
    let areas = match panes {
        Some(panes) => {
            for (vm, pane) in panes.iter().enumerate() {
                draw_pane(frame, app, vm, *pane);
            }
            panes
        }
        None => draw_rows(frame, app, body),
    };
    if app.help {
        draw_help(frame, area);
    }
    areas
}

/// Pane rectangles for `count` VMs: side by side for two, a grid up to what
/// fits, None when panes would be too small (then compact rows).
pub fn pane_areas(area: Rect, count: usize) -> Option<Vec<Rect>> {
    if count == 0 {
        return Some(Vec::new());
    }
    let columns = if count <= 2 {
        count
    } else if area.width >= 150 {
        3
    } else {
        2
    };
    let columns = columns.min((area.width / 30).max(1) as usize);
    let rows = count.div_ceil(columns);
    if (area.height / rows as u16) < MIN_PANE_HEIGHT && rows > 1 {
        return None;
    }
    let row_areas = Layout::vertical(vec![Constraint::Ratio(1, rows as u32); rows]).split(area);
    let mut panes = Vec::with_capacity(count);
    for (row, row_area) in row_areas.iter().enumerate() {
        let in_row = (count - row * columns).min(columns);
        let cells = Layout::horizontal(vec![Constraint::Ratio(1, columns as u32); columns]).split(*row_area);
        panes.extend(cells.iter().take(in_row).copied());
    }
    Some(panes)
}

fn state_color(state: &VmState) -> Color {
    match state {
        VmState::Running => Color::Green,
        VmState::Paused => Color::Yellow,
        VmState::Sleeping { .. } => Color::Blue,
        VmState::Throttled { .. } => Color::LightRed,
        VmState::Halted { .. } => Color::Gray,
        VmState::Gdb { .. } => Color::Magenta,
        VmState::Killed | VmState::Crashed { .. } => Color::Red,
        VmState::Moved { .. } | VmState::Arriving => Color::Cyan,
        VmState::Orphaned | VmState::Dropped => Color::LightRed,
    }
}

/// With several cores: how busy each is (" · cores 98% 51%"), else nothing.
fn cores_in_use(app: &App) -> String {
    if app.settings.cpus < 2 {
        return String::new();
    }
    let busy: Vec<String> = (0..app.settings.cpus)
        .map(|core| format!("{:.0}%", 100.0 * app.core_use.get(core).copied().unwrap_or(0.0).min(1.0)))
        .collect();
    format!(" · cores {}", busy.join(" "))
}

fn header_line(app: &App, width: u16) -> Line<'static> {
    let settings = &app.settings;
    let seconds = app.elapsed_ns / 1_000_000_000;
    let mut spans = vec![
        Span::styled(" matrix-tui ", Style::default().bold().reversed()),
        Span::raw(format!(
            " {} · {} · {} timer{} · up {}:{:02} · {:.0} exits/s",
            settings.policy.name(),
            format_quantum(settings.quantum.as_micros() as u64),
            settings.timer.name(),
            cores_in_use(app),
            seconds / 60,
            seconds % 60,
            // No VMs: no -0.
            app.exits_per_s + 0.0,
        )),
    ];
    if app.frozen {
        spans.push(Span::styled("  FROZEN ", Style::default().fg(Color::Black).bg(Color::Cyan).bold()));
    }
    let paused = app.vms.iter().filter(|vm| vm.state == VmState::Paused).count();
    if paused > 0 {
        spans.push(Span::styled(format!("  {paused} paused"), Style::default().fg(Color::Yellow)));
    }
    // What the bars measure, where there is room to say it.
    let used: usize = spans.iter().map(|span| span.content.chars().count()).sum();
    let legend = "  bars: charged CPU";
    if used + legend.chars().count() <= usize::from(width) {
        spans.push(Span::styled(legend, Style::default().fg(Color::DarkGray)));
    }
    Line::from(spans)
}

fn format_quantum(micros: u64) -> String {
    if micros >= 1000 && micros % 1000 == 0 { format!("{}ms", micros / 1000) } else { format!("{micros}us") }
}

/// The keys the footer names, in their order on screen. The last
/// [`FOOTER_ALWAYS`] (how to quit, where the rest is listed) always show;
/// the others as the width allows.
const FOOTER_KEYS: [(&str, &str); 9] = [
    ("Tab", "select"),
    ("+/-", "share"),
    ("p", "pause"),
    ("s", "step"),
    ("e", "exits"),
    ("t", "timeline"),
    ("m", "policy"),
    ("?", "help"),
    ("q", "quit"),
];
const FOOTER_ALWAYS: usize = 2;

fn footer_line(width: u16) -> Line<'static> {
    let cost = |(key, what): &(&str, &str)| key.chars().count() + what.chars().count() + 3;
    let (optional, always) = FOOTER_KEYS.split_at(FOOTER_KEYS.len() - FOOTER_ALWAYS);
    let mut room = usize::from(width).saturating_sub(always.iter().map(cost).sum());
    let fitting = optional.iter().filter(|item| {
        let fits = cost(item) <= room;
        room -= if fits { cost(item) } else { 0 };
        fits
    });
    let mut spans = Vec::new();
    for (key, what) in fitting.chain(always) {
        spans.push(Span::styled(format!(" {key}"), Style::default().bold()));
        spans.push(Span::styled(format!(" {what} "), Style::default().fg(Color::DarkGray)));
    }
    Line::from(spans)
}

/// A pane's title, fitted to `width` columns: the longer wordings of the
/// weight and target first, then shorter ones, then none.
fn title(app: &App, vm: usize, width: u16) -> Line<'static> {
    let view = &app.vms[vm];
    let weight = trim_weight(app.settings.weights.get(vm).copied().unwrap_or(0.0));
    let mut spans = vec![
        Span::styled(format!(" {} ", view.name), Style::default().bold()),
        Span::styled(view.state.name(), Style::default().fg(state_color(&view.state))),
    ];
    if let Some(debugger) = &view.debugger {
        spans.push(Span::styled(debugger_mark(debugger), Style::default().fg(Color::Magenta)));
    }
    let mut wordings = match app.target(vm) {
        Some(target) => vec![format!(" · w{weight} → {:.0}% ", target * 100.0), format!(" → {:.0}% ", target * 100.0)],
        None if app.settings.policy == Policy::Io && view.state == VmState::Running => {
            vec![format!(" · w{weight} · io: no target "), format!(" · w{weight} · io "), " · io ".to_string()]
        }
        None => vec![format!(" · w{weight} ")],
    };
    if app.settings.cpus > 1 {
        // With several cores, which one runs it comes first, as room allows.
        let pinned = if view.pin.is_empty() { "" } else { " pinned" };
        // Under gang a VM of several vCPUs runs one on each of its lanes' cores.
        let cores = match app.cores_of(vm).as_slice() {
            [core] => format!("core{core}"),
            lanes => format!("cores {}", lanes.iter().map(usize::to_string).collect::<Vec<_>>().join(",")),
        };
        let on_core = wordings.iter().map(|wording| format!(" · {cores}{pinned}{wording}")).collect::<Vec<_>>();
        wordings.splice(0..0, on_core);
    }
    let used: usize = spans.iter().map(|span| span.content.chars().count()).sum();
    let room = usize::from(width).saturating_sub(2 + used);
    if let Some(wording) = wordings.into_iter().find(|wording| wording.chars().count() <= room) {
        spans.push(Span::raw(wording));
    } else {
        spans.push(Span::raw(" "));
    }
    Line::from(spans)
}

/// Whether a debugger is connected, in the pane's title.
fn debugger_mark(status: &DebuggerStatus) -> String {
    match status {
        DebuggerStatus::Connected { .. } => " · gdb ●".into(),
        DebuggerStatus::Listening { address, .. } => format!(" · gdb ○ {address}"),
        _ => " · gdb ○".into(),
    }
}

fn trim_weight(weight: f64) -> String {
    if weight.fract() == 0.0 { format!("{weight:.0}") } else { format!("{weight:.1}") }
}

fn draw_pane(frame: &mut Frame<'_>, app: &App, vm: usize, area: Rect) {
    let view = &app.vms[vm];
    let selected = vm == app.selected;
    let block = Block::default()
        .borders(Borders::ALL)
        .border_type(if selected { BorderType::Thick } else { BorderType::Rounded })
        .border_style(if selected { Style::default().fg(Color::Cyan) } else { Style::default().fg(Color::DarkGray) })
        .title(title(app, vm, area.width));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    // A short pane (a lesson panel or the timeline below it) drops the
    // sparkline and keeps the counters that matter most, so that some
    // console stays in view.
    let compact = inner.height < 3 + counter_table_height(inner.width) + 3;
    let (spark_height, table_height) = if compact { (0, 5) } else { (2, counter_table_height(inner.width)) };
    // A short pane gives its vCPUs fewer rows, and their exit rates go
    // first when the cells would not fit them.
    let most_rows = if compact {
        1
    } else if inner.height < 30 {
        2
    } else {
        MAX_VCPU_ROWS
    };
    // The fullest cells that fit: exit rates go first, then each vCPU's
    // spin (the lock row above has the VM's), rather than a vCPU.
    let (mut cells, mut per_row) = (Vec::new(), 1);
    for (rates, spin) in [(true, true), (false, true), (false, false)] {
        cells = vcpu_cells(view, rates, spin);
        per_row = cells_per_row(&cells, inner.width);
        if cells.len().div_ceil(per_row) <= usize::from(most_rows) {
            break;
        }
    }
    let vcpu_height = (cells.len().div_ceil(per_row) as u16).min(most_rows);
    let lock = lock_line(view, inner.width);
    let [gauge, spark, counters, lock_row, vcpus, console] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(spark_height),
        Constraint::Length(table_height),
        Constraint::Length(u16::from(lock.is_some())),
        Constraint::Length(vcpu_height),
        Constraint::Min(1),
    ])
    .areas(inner);
    if let Some(lock) = lock {
        frame.render_widget(lock, lock_row);
    }
    frame.render_widget(
        ShareGauge { share: view.share, target: app.target(vm), color: state_color(&view.state) },
        gauge,
    );
    let history: Vec<u64> = view.share_history.iter().copied().collect();
    let visible = &history[history.len().saturating_sub(usize::from(spark.width))..];
    frame.render_widget(Sparkline::default().data(visible).max(1000).style(Style::default().fg(Color::Blue)), spark);
    frame.render_widget(counter_table(view, counters.width, compact), counters);
    frame.render_widget(vcpu_rows(&cells, per_row), vcpus);
    frame.render_widget(console_paragraph(view, console.width, console.height), console);
}

/// For a guest that shares its lock records: its critical sections a
/// second and the part of its loop iterations spent spinning (over the
/// rates' window, from the guest's own counts), and how many quanta ended
/// on a lock's holder and on a waiter (the hypervisor's counts).
fn lock_line(view: &VmView, width: u16) -> Option<Paragraph<'static>> {
    let (total, rate) = (&view.counters.lock, &view.rates.lock);
    if *total == crate::stats::LockCounts::default() {
        return None;
    }
    let spin = |separator: &str| rate.spin_pct().map_or(String::new(), |pct| format!("{separator}spin {pct:.0}%"));
    let (holder, waiter) = (compact(total.holder_preempted), compact(total.waiter_preempted));
    let sections = compact(rate.sections);
    // The longest that fits; a count is left out whole, never cut to fewer digits.
    let forms = [
        format!("lock {sections}/s{} · preempted holding {holder}, waiting {waiter}", spin(" · ")),
        format!("lock {sections}/s{} holder {holder} waiter {waiter}", spin(" ")),
        format!("lock {sections}/s{}", spin(" ")),
    ];
    let fits = forms.iter().find(|form| form.chars().count() <= usize::from(width));
    let text = fits.unwrap_or(&forms[2]).clone();
    Some(Paragraph::new(Line::from(Span::styled(text, Style::default().fg(Color::Yellow)))))
}

/// Rows of vCPU cells a pane shows at most (its console keeps the rest).
const MAX_VCPU_ROWS: u16 = 4;

/// A VM's vCPUs, a cell each: `cpu1 run 48% 120/s` (its state, its share
/// of the CPU and its exit rate over the last sample), with its colour.
fn vcpu_cells(view: &VmView, with_rates: bool, with_spin: bool) -> Vec<(String, Color)> {
    view.vcpus
        .iter()
        .enumerate()
        .map(|(index, vcpu)| {
            let color = match vcpu.state {
                "run" => Color::Green,
                "sleep" | "wait" => Color::Blue,
                _ => Color::DarkGray,
            };
            // `>` marks the vCPU that `s` steps.
            let chosen = if view.step_vcpu == Some(index as u16) { ">" } else { "" };
            let mut cell = format!("{chosen}cpu{index} {} {:.0}%", vcpu.state, vcpu.share * 100.0);
            if with_rates {
                cell.push_str(&format!(" {}/s", compact(vcpu.exits_per_s.round() as u64)));
            }
            if let Some(spin) = vcpu.spin_pct.filter(|_| with_spin) {
                cell.push_str(&format!(" spin {spin:.0}%"));
            }
            (cell, color)
        })
        .collect()
}

/// How many cells fit a row of `width` columns, each as wide as the widest and a gap.
fn cells_per_row(cells: &[(String, Color)], width: u16) -> usize {
    let widest = cells.iter().map(|(text, _)| text.chars().count()).max().unwrap_or(1) + 2;
    (usize::from(width) / widest).max(1)
}

/// The cells, `per_row` a row, in aligned columns.
fn vcpu_rows(cells: &[(String, Color)], per_row: usize) -> Paragraph<'static> {
    let widest = cells.iter().map(|(text, _)| text.chars().count()).max().unwrap_or(0) + 2;
    let rows = cells.chunks(per_row).map(|row| {
        Line::from(
            row.iter()
                .map(|(text, color)| Span::styled(format!("{text:<widest$}"), Style::default().fg(*color)))
                .collect::<Vec<_>>(),
        )
    });
    Paragraph::new(rows.collect::<Vec<_>>())
}

/// The kvm_stat-like counters, total and per second: two columns in a wide
/// pane, one in a narrow one.
fn counter_table(view: &VmView, width: u16, short: bool) -> Table<'static> {
    let (c, r) = (&view.counters, &view.rates);
    let entries = [
        ("I/O in", c.exits.io_in, r.exits.io_in),
        ("I/O out", c.exits.io_out, r.exits.io_out),
        ("HLT", c.exits.hlt, r.exits.hlt),
        ("MMIO", c.exits.mmio, r.exits.mmio),
        ("unknown", c.exits.unknown_port, r.exits.unknown_port),
        ("faults", c.faults, r.faults),
        ("preempt", c.preemptions, r.preemptions),
        ("total", c.exits.total(), r.exits.total()),
    ];
    let cells = |(name, total, rate): (&str, u64, u64)| {
        [
            Cell::from(Span::styled(name.to_string(), Style::default().fg(Color::DarkGray))),
            Cell::from(compact(total)),
            Cell::from(Span::styled(format!("{}/s", compact(rate)), Style::default().fg(Color::DarkGray))),
        ]
    };
    let column = [Constraint::Length(7), Constraint::Length(6), Constraint::Length(8)];
    let underlined = Style::default().add_modifier(Modifier::UNDERLINED);
    if short && width < counter_table_width(true) {
        // I/O in, I/O out, preempt, total.
        let rows = [0, 1, 6, 7].map(|i| Row::new(cells(entries[i])));
        return Table::new(rows, column).header(Row::new(["exit", "total", "rate"]).style(underlined));
    }
    if width >= counter_table_width(true) {
        let rows = (0..4).map(|i| Row::new(cells(entries[i]).into_iter().chain(cells(entries[i + 4]))));
        Table::new(rows, [column, column].concat())
            .header(Row::new(["exit", "total", "rate", "exit", "total", "rate"]).style(underlined))
    } else {
        Table::new(entries.into_iter().map(|entry| Row::new(cells(entry))), column)
            .header(Row::new(["exit", "total", "rate"]).style(underlined))
    }
}

/// Columns the counter table needs (with the table's one-column gaps).
fn counter_table_width(two_columns: bool) -> u16 {
    if two_columns { 2 * 21 + 5 } else { 21 + 2 }
}

/// Rows the counter table takes in a pane of `width` columns, header included.
fn counter_table_height(width: u16) -> u16 {
    if width >= counter_table_width(true) { 5 } else { 9 }
}

/// 1234 -> "1234", 12345 -> "12.3k", 1234567 -> "1.2M".
fn compact(value: u64) -> String {
    match value {
        0..=9_999 => value.to_string(),
        10_000..=999_999 => format!("{:.1}k", value as f64 / 1e3),
        _ => format!("{:.1}M", value as f64 / 1e6),
    }
}

/// The hypervisor's `[matrix]` lines wrapped to `width` (their words kept
/// whole where they fit), so that a narrow pane shows them entire; the
/// guest's lines are its own and stay one row each.
fn console_rows(line: &str, width: u16) -> Vec<String> {
    if !line.starts_with(crate::console::NOTE_PREFIX) || line.chars().count() <= usize::from(width) || width < 8 {
        return vec![line.to_string()];
    }
    wrap_rows(line, width)
}

/// `text` in rows of `width`, the rows after the first indented, words
/// (paths too) kept whole where they fit.
fn wrap_rows(text: &str, width: u16) -> Vec<String> {
    let options = textwrap::Options::new(usize::from(width))
        .subsequent_indent("  ")
        .word_splitter(textwrap::WordSplitter::NoHyphenation);
    textwrap::wrap(text, options).into_iter().map(|row| row.into_owned()).collect()
}

fn console_paragraph(view: &VmView, width: u16, height: u16) -> Paragraph<'static> {
    let mut lines: Vec<Line<'static>> = Vec::new();
    if let VmState::Crashed { reason, registers } = &view.state {
        // The reason whole (it says what to do), at most half the pane.
        let wrapped = wrap_rows(&format!("crashed: {reason}"), width.max(8));
        let keep = wrapped.len().min(usize::from(height / 2).max(1));
        for row in wrapped.into_iter().take(keep) {
            lines.push(Line::styled(row, Style::default().fg(Color::Red).bold()));
        }
        lines.push(Line::styled(
            format!(
                "rip {:#x} rsp {:#x} cr2 {:#x} rflags {:#x}",
                registers.rip, registers.rsp, registers.cr2, registers.rflags
            ),
            Style::default().fg(Color::Red),
        ));
    }
    if let VmState::Halted { registers, .. } = &view.state {
        let text = registers.describe();
        let (accumulator, rest) = text.split_once(") ").unwrap_or((&text, ""));
        lines.push(Line::styled(format!("halted: {accumulator})"), Style::default().fg(Color::Gray).bold()));
        lines.push(Line::styled(rest.to_string(), Style::default().fg(Color::Gray)));
    }
    let (injected, coalesced) = (view.counters.injected, view.counters.coalesced);
    if injected + coalesced > 0 {
        let style = Style::default().fg(Color::Blue);
        lines.push(Line::styled(format!("timer: {injected} ticks injected, {coalesced} coalesced"), style));
        // On a line of its own: a narrow pane would cut it off the one above.
        if let VmState::Sleeping { until_ns } = view.state {
            lines.push(Line::styled(format!("asleep until {} s", crate::record::format_seconds(until_ns)), style));
        }
    }
    if let VmState::Gdb { stop } = &view.state {
        let connect = match (&view.debugger, &view.gdb_address) {
            (Some(DebuggerStatus::Connected { .. }), _) => " · gdb connected".to_string(),
            (_, Some(address)) => format!(" · target remote {address}"),
            (_, None) => String::new(),
        };
        lines.push(Line::styled(
            format!("stopped for gdb: {}{connect}", stop.describe()),
            Style::default().fg(Color::Magenta).bold(),
        ));
    }
    let room = usize::from(height).saturating_sub(lines.len());
    let with_pending =
        view.lines.iter().map(String::as_str).chain((!view.pending.is_empty()).then_some(view.pending.as_str()));
    let all: Vec<&str> = with_pending.collect();
    let end = all.len().saturating_sub(view.scroll);
    // The newest lines that fit, a wrapped note counting its rows.
    let mut rows: Vec<Line<'static>> = Vec::new();
    for line in all[..end].iter().rev() {
        let style = if line.starts_with(crate::console::NOTE_PREFIX) {
            Style::default().fg(Color::Magenta)
        } else {
            Style::default()
        };
        let mut wrapped = console_rows(line, width);
        if rows.len() + wrapped.len() > room {
            // The pane's top row or rows show the end of the note that does not fit.
            wrapped.drain(..wrapped.len() - (room - rows.len()));
            rows.extend(wrapped.into_iter().rev().map(|row| Line::styled(row, style)));
            break;
        }
        rows.extend(wrapped.into_iter().rev().map(|row| Line::styled(row, style)));
    }
    lines.extend(rows.into_iter().rev());
    if view.scroll > 0 {
        lines.push(Line::styled(format!("-- {} lines below (PgDn) --", view.scroll), Style::default().fg(Color::Cyan)));
    }
    Paragraph::new(lines)
}

/// Many VMs: one line each (name, state, share bar, exits per second, last line).
fn draw_rows(frame: &mut Frame<'_>, app: &App, area: Rect) -> Vec<Rect> {
    let visible = usize::from(area.height);
    let first = app.selected.saturating_sub(visible.saturating_sub(1));
    let mut rows = Vec::new();
    for (line, vm) in (first..app.vms.len()).take(visible).enumerate() {
        let row = Rect::new(area.x, area.y + line as u16, area.width, 1);
        let view = &app.vms[vm];
        let [name, gauge, rest] =
            Layout::horizontal([Constraint::Length(22), Constraint::Length(36), Constraint::Min(0)]).areas(row);
        let style = if vm == app.selected { Style::default().reversed() } else { Style::default() };
        frame.render_widget(
            Paragraph::new(Line::from(vec![
                Span::styled(format!("{:<12}", view.name), style.bold()),
                Span::styled(format!(" {:<8}", view.state.name()), Style::default().fg(state_color(&view.state))),
            ])),
            name,
        );
        frame.render_widget(
            ShareGauge { share: view.share, target: app.target(vm), color: state_color(&view.state) },
            gauge,
        );
        // A halted VM's row says what it halted with (a course checks eax),
        // in place of an exit rate that is 0; a note stays a while in
        // place of the guest's lines, which would hide it at once.
        let recent_note = view
            .last_note
            .as_ref()
            .filter(|(_, at_ns)| view.clock_ns.saturating_sub(*at_ns) < ROW_NOTE_NS)
            .map(|(note, _)| note.as_str());
        let text = match (&view.state, recent_note) {
            (VmState::Halted { registers, .. }, _) => format!("  {}", registers.describe()),
            (_, Some(note)) => format!(" {:>6}/s  {note}", view.rates.exits.total()),
            _ => {
                let last = view.lines.back().map(String::as_str).unwrap_or("");
                format!(" {:>6}/s  {last}", view.rates.exits.total())
            }
        };
        frame.render_widget(Paragraph::new(text), rest);
        rows.resize(vm, Rect::default());
        rows.push(row);
    }
    // Below the rows, the selected VM's latest lines, its notes whole.
    let used = rows.len().saturating_sub(first) as u16;
    if area.height >= used + 4 {
        let below = Rect::new(area.x, area.y + used, area.width, area.height - used);
        let view = &app.vms[app.selected];
        let block = Block::default()
            .borders(Borders::TOP)
            .border_style(Style::default().fg(Color::DarkGray))
            .title(format!(" {} (Tab selects another) ", view.name));
        let inner = block.inner(below);
        frame.render_widget(block, below);
        frame.render_widget(console_paragraph(view, inner.width, inner.height), inner);
    }
    rows
}

/// How long a compact row shows a VM's latest note.
const ROW_NOTE_NS: u64 = 5_000_000_000;

fn draw_help(frame: &mut Frame<'_>, area: Rect) {
    let width = area.width.min(72);
    let height = (BINDINGS.len() as u16 + 2).min(area.height);
    let popup = Rect::new(area.x + (area.width - width) / 2, area.y + (area.height - height) / 2, width, height);
    let rows = BINDINGS
        .iter()
        .map(|(keys, what, _)| Row::new([Cell::from(Span::styled(*keys, Style::default().bold())), Cell::from(*what)]));
    let table = Table::new(rows, [Constraint::Length(15), Constraint::Min(0)]).block(
        Block::default()
            .borders(Borders::ALL)
            .border_type(BorderType::Double)
            .title(" keys (? to close) ")
            .title_bottom(" mouse: click a pane to select it "),
    );
    frame.render_widget(Clear, popup);
    frame.render_widget(table, popup);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_vms_sit_side_by_side_and_six_in_a_grid() {
        let two = pane_areas(Rect::new(0, 1, 80, 22), 2).unwrap();
        assert_eq!(two, [Rect::new(0, 1, 40, 22), Rect::new(40, 1, 40, 22)]);
        let six = pane_areas(Rect::new(0, 1, 160, 46), 6).unwrap();
        assert_eq!(six.len(), 6);
        assert_eq!((six[0].width, six[0].height), (53, 23));
        assert!(pane_areas(Rect::new(0, 1, 80, 22), 6).is_none(), "too small for six panes: rows instead");
        assert_eq!(pane_areas(Rect::new(0, 0, 80, 22), 0), Some(vec![]));
    }

    #[test]
    fn the_footer_always_says_how_to_quit_and_where_help_is() {
        let text =
            |width: u16| -> String { footer_line(width).spans.iter().map(|span| span.content.as_ref()).collect() };
        for width in [24, 60, 80, 100, 200] {
            let footer = text(width);
            assert!(footer.contains(" q quit") && footer.contains(" ? help"), "{width}: {footer}");
            assert!(footer.chars().count() <= usize::from(width), "{width}: {footer}");
        }
        assert!(text(200).contains(" m policy"), "all keys where they fit");
        assert!(text(200).find(" Tab").unwrap() < text(200).find(" q quit").unwrap(), "in the screen's order");
    }

    #[test]
    fn a_note_wider_than_its_pane_wraps_and_a_guest_line_does_not() {
        let note = "[matrix] snapshot morpheus-1.snap written: 48 KiB for 2048 KiB of memory";
        let rows = console_rows(note, 30);
        assert!(rows.len() > 1 && rows.iter().all(|row| row.chars().count() <= 30), "{rows:#?}");
        assert_eq!(rows.concat().split_whitespace().collect::<Vec<_>>(), note.split_whitespace().collect::<Vec<_>>());
        let guest = "[0001] Neo: Wake up, Neo... (150 units) and a long tail";
        assert_eq!(console_rows(guest, 30), [guest]);
    }

    #[test]
    fn numbers_are_compact() {
        assert_eq!((compact(42), compact(12_345), compact(2_500_000)), ("42".into(), "12.3k".into(), "2.5M".into()));
    }
}
