//! The schedule timeline (`t`): who held the CPU over the last W of wall
//! time, a row per VM (one shared row when they do not fit; a VM of several
//! vCPUs drawn with the digit of the vCPU that held each cell), with a row
//! of marks for how slices ended. Fed by the core's slice records; `<` and `>`
//! zoom W from 2 ms to 10 s.

use std::collections::VecDeque;

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::widgets::{Block, BorderType, Borders, Widget};

use crate::record::{SliceEnd, SliceRecord};

/// The windows `<` and `>` step through, in ns.
pub const ZOOMS_NS: [u64; 12] = [
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    500_000_000,
    1_000_000_000,
    2_000_000_000,
    5_000_000_000,
    10_000_000_000,
];
/// Slices kept at most (the widest window holds the rest).
const KEPT: usize = 200_000;
/// The colours VMs are drawn in, by VM index.
pub const COLORS: [Color; 6] = [Color::Green, Color::Magenta, Color::Cyan, Color::Yellow, Color::Blue, Color::Red];

/// The slices the timeline knows of, and how it is shown.
#[derive(Debug, Clone)]
pub struct Timeline {
    slices: VecDeque<SliceRecord>,
    /// Slices the core dropped because the UI lagged.
    pub dropped: u64,
    zoom: usize,
    /// Whether it is on screen.
    pub shown: bool,
    /// The end of each core's newest slice: cores send theirs apart, each
    /// up to a flush behind the others.
    newest_by_core: Vec<u64>,
}

impl Default for Timeline {
    fn default() -> Self {
        // 10 ms: the fair 70/30 pattern of 0.2 ms units at a glance.
        Self { slices: VecDeque::new(), dropped: 0, zoom: 2, shown: false, newest_by_core: Vec::new() }
    }
}

impl Timeline {
    /// Takes in slices (oldest first), forgetting what lies beyond the widest window.
    pub fn push(&mut self, slices: Vec<SliceRecord>, dropped: u64) {
        self.dropped += dropped;
        for slice in &slices {
            let core = usize::from(slice.core);
            if core >= self.newest_by_core.len() {
                self.newest_by_core.resize(core + 1, 0);
            }
            self.newest_by_core[core] = self.newest_by_core[core].max(slice.end_ns);
        }
        self.slices.extend(slices);
        let newest = self.newest_by_core.iter().copied().max().unwrap_or(0);
        let horizon = newest.saturating_sub(ZOOMS_NS[ZOOMS_NS.len() - 1]);
        while self.slices.front().is_some_and(|slice| slice.end_ns < horizon) || self.slices.len() > KEPT {
            self.slices.pop_front();
        }
    }

    /// The window shown, in ns.
    pub fn window_ns(&self) -> u64 {
        ZOOMS_NS[self.zoom]
    }

    /// Steps the window one zoom shorter (-1) or longer (+1), within 2 ms..=10 s.
    pub fn zoom(&mut self, by: isize) {
        self.zoom = self.zoom.saturating_add_signed(by).min(ZOOMS_NS.len() - 1);
    }

    /// Up to when every core's slices are known (0 before any): the
    /// newest slice's end with one core; with several, the earliest of the
    /// cores' newest, leaving out a core that has run nothing for a second
    /// (it has no VM to run) so that it does not hold the others back.
    pub fn newest_ns(&self) -> u64 {
        let newest = self.newest_by_core.iter().copied().max().unwrap_or(0);
        let live = newest.saturating_sub(1_000_000_000);
        self.newest_by_core.iter().copied().filter(|&end| end >= live).min().unwrap_or(0)
    }
}

/// The timeline drawn for VMs called `names`, ending at `now_ns`.
pub struct TimelineView<'a> {
    /// The data.
    pub timeline: &'a Timeline,
    /// VM names, by index.
    pub names: &'a [String],
    /// The right edge (core time, ns).
    pub now_ns: u64,
    /// The run's cores: with several, a row per core shows which VM held it.
    pub cores: usize,
}

/// The weight of the mark for a slice that had a timer tick injected.
const TICK_WEIGHT: u8 = 3;

/// The mark for a slice that ended so, and its weight when several share a
/// cell. A sleep outweighs a tick: a sleeper's slice (woken by a tick, back
/// to hlt) mostly fits in one cell, and its `z` is what shows it slept.
fn mark(end: SliceEnd) -> (char, u8) {
    match end {
        SliceEnd::Crash => ('X', 7),
        SliceEnd::Halt => ('H', 6),
        SliceEnd::Step | SliceEnd::Debugger => ('s', 5),
        SliceEnd::Sleep => ('z', 4),
        SliceEnd::Yield => ('y', 3),
        SliceEnd::IoSwitch => ('i', 2),
        SliceEnd::Deadline | SliceEnd::ExitAfterDeadline => ('k', 1),
        SliceEnd::Command => ('c', 0),
    }
}

/// A slice whose guest spent at least this part of its loop iterations
/// spinning for a lock (its lock records say) is drawn in [`SPIN_COLOR`].
const SPINNING_PCT: u8 = 50;

/// The colour of a spinning slice's cells.
const SPIN_COLOR: Color = Color::LightRed;

/// A cell `vm` held in a shared row or a core's row: its tag on its colour,
/// or on [`SPIN_COLOR`] when it spun there.
fn held_style(vm: usize, spinning: bool) -> Style {
    let background = if spinning { SPIN_COLOR } else { COLORS[vm % COLORS.len()] };
    Style::default().fg(Color::Black).bg(background)
}

/// Rows the timeline needs for `vms` VMs drawn a row each, or for a row
/// per core when `cores` is more than one (border, marks, axis).
pub fn height_for(vms: usize, cores: usize) -> u16 {
    let rows = if cores > 1 { cores } else { vms };
    rows.min(8) as u16 + 4
}

/// How to draw a VM's name in the shared row.
fn tag(vm: usize) -> char {
    char::from_digit((vm % 36) as u32, 36).unwrap_or('?')
}

impl Widget for TimelineView<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let window = self.timeline.window_ns();
        // The spin colour's key comes early, where a narrow title still shows it.
        let spin_key = if self.timeline.slices.iter().any(|slice| slice.spin_pct.is_some()) {
            "light red: spinning · "
        } else {
            ""
        };
        let title = format!(
            " timeline · last {} · {spin_key}</> zoom · k kick i I/O switch y yield z sleep ^ tick H halt X crash s step ",
            format_span(window)
        );
        let block = Block::default().borders(Borders::ALL).border_type(BorderType::Rounded).title(title);
        let inner = block.inner(area);
        block.render(area, buf);
        if inner.height < 3 || inner.width < 20 {
            return;
        }
        let vms = self.names.len();
        let per_core = self.cores > 1;
        let per_vm = !per_core && usize::from(inner.height) >= vms + 2;
        let label_width: u16 = if per_vm || per_core { 10 } else { 3 };
        let cells = usize::from(inner.width - label_width);
        let cell_ns = (window / cells as u64).max(1);
        let start = self.now_ns.saturating_sub(cell_ns * cells as u64);
        // held[vm][cell]: ns of the cell the VM held; marks[cell]: strongest end;
        // vcpus[vm][cell]: the vCPU whose slice held most of it, and how long.
        let mut held = vec![vec![0u64; cells]; vms];
        // on_core[core][cell]: ns each VM held of it there.
        let mut on_core = vec![vec![Vec::<(usize, u64)>::new(); cells]; if per_core { self.cores } else { 0 }];
        let mut vcpus = vec![vec![(0u16, 0u64, false); cells]; vms];
        let mut several = vec![false; vms];
        let mut marks: Vec<Option<(char, u8, usize)>> = vec![None; cells];
        for slice in self.timeline.slices.iter().filter(|slice| slice.end_ns > start && slice.start_ns < self.now_ns) {
            let (from, to) = (slice.start_ns.max(start), slice.end_ns.min(self.now_ns));
            let (first, last) = ((from - start) / cell_ns, (to.saturating_sub(1).max(from) - start) / cell_ns);
            for cell in first..=last.min(cells as u64 - 1) {
                let cell_start = start + cell * cell_ns;
                let overlap = to.min(cell_start + cell_ns).saturating_sub(from.max(cell_start));
                if let Some(cell) = on_core.get_mut(usize::from(slice.core)).map(|row| &mut row[cell as usize]) {
                    match cell.iter_mut().find(|(vm, _)| *vm == slice.vm) {
                        Some((_, ns)) => *ns += overlap,
                        None => cell.push((slice.vm, overlap)),
                    }
                }
                if let Some(row) = held.get_mut(slice.vm) {
                    row[cell as usize] += overlap;
                    let top = &mut vcpus[slice.vm][cell as usize];
                    if overlap > top.1 {
                        *top = (slice.vcpu, overlap, slice.spin_pct.is_some_and(|pct| pct >= SPINNING_PCT));
                    }
                }
            }
            if slice.vcpu > 0 {
                if let Some(flag) = several.get_mut(slice.vm) {
                    *flag = true;
                }
            }
            if slice.injected > 0 && slice.start_ns >= start {
                // A tick went in at the slice's start (a sleeper's wake-up) or during it.
                let cell = (((slice.start_ns - start) / cell_ns) as usize).min(cells - 1);
                if marks[cell].is_none_or(|(_, strongest, _)| TICK_WEIGHT > strongest) {
                    marks[cell] = Some(('^', TICK_WEIGHT, slice.vm));
                }
            }
            if slice.end_ns <= self.now_ns {
                // The last cell the slice held (an end on a boundary is in the cell before).
                let cell = ((slice.end_ns.saturating_sub(start + 1) / cell_ns) as usize).min(cells - 1);
                let (symbol, weight) = mark(slice.end);
                if marks[cell].is_none_or(|(_, strongest, _)| weight > strongest) {
                    marks[cell] = Some((symbol, weight, slice.vm));
                }
            }
        }
        let dim = Style::default().fg(Color::DarkGray);
        let (x0, mut y) = (inner.x, inner.y);
        let color = |vm: usize| COLORS[vm % COLORS.len()];
        if per_core {
            for (core, row) in on_core.iter().enumerate().take(usize::from(inner.height) - 2) {
                buf.set_stringn(x0, y, format!("core{core}"), 9, dim);
                for (cell, held) in row.iter().enumerate() {
                    let holder = held.iter().max_by_key(|(_, ns)| *ns).map(|(vm, _)| *vm);
                    let (symbol, style) = match holder {
                        Some(vm) => (tag(vm).to_string(), held_style(vm, vcpus[vm][cell].2)),
                        None => ("·".to_string(), dim),
                    };
                    buf[(x0 + label_width + cell as u16, y)].set_symbol(&symbol).set_style(style);
                }
                y += 1;
            }
        } else if per_vm {
            for (vm, name) in self.names.iter().enumerate().take(usize::from(inner.height) - 2) {
                buf.set_stringn(x0, y, format!("{name:<9}"), 9, Style::default().fg(color(vm)));
                for (cell, &ns) in held[vm].iter().enumerate() {
                    let digit;
                    let symbol = if ns > 0 && several[vm] {
                        digit = tag(usize::from(vcpus[vm][cell].0)).to_string();
                        digit.as_str()
                    } else if ns * 2 >= cell_ns {
                        "█"
                    } else if ns > 0 {
                        "▌"
                    } else {
                        "·"
                    };
                    let style = match ns {
                        0 => dim,
                        _ if vcpus[vm][cell].2 => Style::default().fg(Color::Black).bg(SPIN_COLOR),
                        _ => Style::default().fg(color(vm)),
                    };
                    buf[(x0 + label_width + cell as u16, y)].set_symbol(symbol).set_style(style);
                }
                y += 1;
            }
        } else {
            buf.set_stringn(x0, y, "cpu", 3, dim);
            for cell in 0..cells {
                let holder = (0..vms).filter(|&vm| held[vm][cell] > 0).max_by_key(|&vm| held[vm][cell]);
                let (symbol, style) = match holder {
                    Some(vm) => (tag(vm).to_string(), held_style(vm, vcpus[vm][cell].2)),
                    None => ("·".to_string(), dim),
                };
                buf[(x0 + label_width + cell as u16, y)].set_symbol(&symbol).set_style(style);
            }
            y += 1;
        }
        buf.set_stringn(x0, y, "ends", usize::from(label_width), dim);
        for (cell, mark) in marks.iter().enumerate() {
            if let Some((symbol, _, vm)) = mark {
                buf[(x0 + label_width + cell as u16, y)]
                    .set_symbol(&symbol.to_string())
                    .set_style(Style::default().fg(color(*vm)));
            }
        }
        y += 1;
        let left = format!("-{}", format_span(window));
        buf.set_stringn(x0 + label_width, y, &left, cells, dim);
        let right =
            if self.timeline.dropped > 0 { format!("{} dropped · now", self.timeline.dropped) } else { "now".into() };
        let right_x = (inner.x + inner.width).saturating_sub(right.len() as u16);
        buf.set_stringn(right_x, y, &right, right.len(), dim);
        if !per_vm {
            // A shared row or a row per core: tags stand for names.
            let legend: String =
                self.names.iter().enumerate().map(|(vm, name)| format!("{}={name} ", tag(vm))).collect();
            let legend_x = x0 + label_width + left.len() as u16 + 2;
            let room = usize::from(right_x.saturating_sub(legend_x + 1));
            buf.set_stringn(legend_x, y, &legend, room, dim);
        }
    }
}

/// 2_000_000 -> "2ms", 10_000_000_000 -> "10s".
pub fn format_span(ns: u64) -> String {
    if ns >= 1_000_000_000 { format!("{}s", ns / 1_000_000_000) } else { format!("{}ms", ns / 1_000_000) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(vm: usize, start_us: u64, end_us: u64, end: SliceEnd) -> SliceRecord {
        SliceRecord {
            vm,
            vcpu: 0,
            start_ns: start_us * 1000,
            end_ns: end_us * 1000,
            charged_ns: 0,
            end,
            exits: 0,
            injected: 0,
            core: 0,
            spin_pct: None,
        }
    }

    fn render(timeline: &Timeline, names: &[&str], now_us: u64, width: u16, height: u16) -> Vec<String> {
        render_on(timeline, names, now_us, width, height, 1)
    }

    fn render_on(
        timeline: &Timeline,
        names: &[&str],
        now_us: u64,
        width: u16,
        height: u16,
        cores: usize,
    ) -> Vec<String> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let area = Rect::new(0, 0, width, height);
        let mut buf = Buffer::empty(area);
        TimelineView { timeline, names: &names, now_ns: now_us * 1000, cores }.render(area, &mut buf);
        (0..height).map(|y| (0..width).map(|x| buf[(x, y)].symbol().to_string()).collect()).collect()
    }

    #[test]
    fn each_vm_row_shows_when_it_held_the_cpu_and_how_its_slices_ended() {
        // 2 ms over 20 cells: 100 us a cell. Neo 0-400 us, Morpheus 400-600,
        // Neo 600-1000 (kicked at each end), Morpheus halts at 1500.
        let mut timeline = Timeline::default();
        timeline.zoom(-5);
        assert_eq!(timeline.window_ns(), 2_000_000);
        timeline.push(
            vec![
                slice(0, 0, 400, SliceEnd::Deadline),
                slice(1, 400, 600, SliceEnd::Deadline),
                slice(0, 600, 1000, SliceEnd::Deadline),
                slice(1, 1000, 1450, SliceEnd::Halt),
            ],
            0,
        );
        let rows = render(&timeline, &["neo", "morpheus"], 2000, 32, 6);
        assert_eq!(rows[1], "│neo       ████··████··········│");
        assert_eq!(rows[2], "│morpheus  ····██····█████·····│");
        assert_eq!(rows[3], "│ends         k k   k    H     │");
        assert!(rows[4].contains("-2ms") && rows[4].contains("now"), "{}", rows[4]);
    }

    #[test]
    fn a_sleepers_slices_end_in_z_and_its_wake_ups_are_marked_where_the_tick_went_in() {
        // The sleeper (vm 1) runs 200-300 us and sleeps; woken by a tick, it
        // runs 1200-1300 us and sleeps again (one cell: its z shows, as at
        // any zoom where a wake-up is shorter than a cell); woken again, it
        // runs 1500-1800 us: the tick where it began, the z where it ended.
        let mut timeline = Timeline::default();
        timeline.zoom(-5);
        let mut woken = slice(1, 1200, 1300, SliceEnd::Sleep);
        woken.injected = 1;
        let mut woken_longer = slice(1, 1500, 1800, SliceEnd::Sleep);
        woken_longer.injected = 1;
        let slices =
            vec![slice(0, 0, 200, SliceEnd::Deadline), slice(1, 200, 300, SliceEnd::Sleep), woken, woken_longer];
        timeline.push(slices, 0);
        let rows = render(&timeline, &["spin", "sleeper"], 2000, 32, 6);
        assert_eq!(rows[2], "│sleeper   ··█·········█··███··│");
        assert_eq!(rows[3], "│ends       kz         z  ^ z  │");
    }

    #[test]
    fn slices_that_mostly_spun_for_a_lock_are_drawn_in_the_spin_colour_and_the_title_says_so() {
        let mut timeline = Timeline::default();
        timeline.zoom(-5);
        let spun =
            |pct: u8, from: u64, to: u64| SliceRecord { spin_pct: Some(pct), ..slice(0, from, to, SliceEnd::Deadline) };
        timeline.push(vec![spun(80, 0, 300), spun(10, 300, 600), slice(1, 600, 900, SliceEnd::Deadline)], 0);
        let names = ["ticket".to_string(), "one".to_string()];
        let area = Rect::new(0, 0, 120, 6);
        let mut buf = Buffer::empty(area);
        TimelineView { timeline: &timeline, names: &names, now_ns: 2_000_000, cores: 1 }.render(area, &mut buf);
        // 2 ms over 110 cells: the first cells spun, the next did not, `one` never reports.
        assert_eq!(buf[(11, 1)].bg, SPIN_COLOR);
        assert_ne!(buf[(30, 1)].bg, SPIN_COLOR);
        assert_ne!(buf[(45, 2)].bg, SPIN_COLOR);
        let title: String = (0..120).map(|x| buf[(x, 0)].symbol().to_string()).collect();
        assert!(title.contains("light red: spinning"), "{title}");
    }

    #[test]
    fn a_vm_of_several_vcpus_shows_which_vcpu_held_each_cell() {
        // pair's vCPU 0 holds 0-300 us, its vCPU 1 300-700, vCPU 0 again to 1000.
        let mut timeline = Timeline::default();
        timeline.zoom(-5);
        let on = |vcpu: u16, from: u64, to: u64| SliceRecord { vcpu, ..slice(0, from, to, SliceEnd::Deadline) };
        timeline.push(vec![on(0, 0, 300), on(1, 300, 700), on(0, 700, 1000), slice(1, 1000, 1200, SliceEnd::Yield)], 0);
        let rows = render(&timeline, &["pair", "one"], 2000, 32, 6);
        assert_eq!(rows[1], "│pair      0001111000··········│");
        assert_eq!(rows[2], "│one       ··········██········│", "a VM of one vCPU keeps its bars");
    }

    #[test]
    fn many_vms_share_one_row() {
        let mut timeline = Timeline::default();
        timeline.zoom(-5);
        timeline
            .push((0..20).map(|i| slice(i % 3, i as u64 * 100, i as u64 * 100 + 100, SliceEnd::IoSwitch)).collect(), 0);
        let rows = render(&timeline, &["a", "b", "c"], 2000, 25, 5);
        assert_eq!(rows[1], "│cpu01201201201201201201│");
        assert_eq!(rows[2], "│endiiiiiiiiiiiiiiiiiiii│");
    }

    #[test]
    fn with_several_cores_each_core_has_a_row_of_the_vms_it_ran() {
        let mut timeline = Timeline::default();
        timeline.zoom(-5);
        // a on core 0 throughout; b and c take turns on core 1, then a moves there.
        let on =
            |vm: usize, core: u16, from: u64| SliceRecord { core, ..slice(vm, from, from + 100, SliceEnd::Deadline) };
        let mut slices: Vec<SliceRecord> = (0..20).map(|i| on(0, 0, i * 100)).collect();
        slices.extend((0..20).map(|i| on(1 + (i as usize % 2), 1, i * 100)));
        slices.sort_by_key(|slice| slice.start_ns);
        timeline.push(slices, 0);
        let rows = render_on(&timeline, &["a", "b", "c"], 2000, 32, 6, 2);
        assert_eq!(rows[1], "│core0     00000000000000000000│");
        assert_eq!(rows[2], "│core1     12121212121212121212│", "{rows:#?}");
        assert!(rows[4].contains("0=a 1=b"), "{}", rows[4]);
        // Core 1's newest slice is older: the edge waits for it.
        let mut late = Timeline::default();
        late.push(vec![on(0, 0, 900)], 0);
        late.push(vec![on(1, 1, 500)], 0);
        assert_eq!(late.newest_ns(), 600_000);
        assert_eq!(height_for(3, 2), 6);
    }

    #[test]
    fn zoom_stays_within_2ms_and_10s_and_old_slices_are_forgotten() {
        let mut timeline = Timeline::default();
        for _ in 0..20 {
            timeline.zoom(1);
        }
        assert_eq!(timeline.window_ns(), 10_000_000_000);
        for _ in 0..20 {
            timeline.zoom(-1);
        }
        assert_eq!(timeline.window_ns(), 2_000_000);
        timeline
            .push(vec![slice(0, 0, 10, SliceEnd::Deadline), slice(0, 20_000_000, 20_000_010, SliceEnd::Deadline)], 0);
        assert_eq!(timeline.slices.len(), 1, "the first slice is more than 10 s older than the newest");
    }

    #[test]
    fn tiny_areas_do_not_panic() {
        let timeline = Timeline::default();
        render(&timeline, &["a"], 0, 1, 1);
        render(&timeline, &["a"], 0, 0, 0);
        render(&timeline, &["a", "b"], 5, 22, 4);
    }
}
