//! The terminal UI (ratatui + crossterm), run on its own thread `matrix-ui`: a
//! pane per VM with its console, counters and share, and keys that steer the
//! core. One select loop over the core's events, the keyboard and mouse, a
//! tick and stop signals; the screen is drawn only when something changed, at
//! most 30 times a second, inside a synchronized update.

pub mod app;
pub mod cast;
pub mod inspector;
pub mod keys;
pub mod lesson_panel;
pub mod move_rounds;
pub mod rates;
pub mod share_gauge;
pub mod terminal;
pub mod timeline;
pub mod view;
pub mod vm_view;

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, select};
use crossterm::event::{self as term_event, MouseButton, MouseEventKind};
use crossterm::terminal::{BeginSynchronizedUpdate, EndSynchronizedUpdate};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::layout::{Position, Rect};

use self::app::{Action, App};
use self::cast::{CastEnd, CastWriter, SharedCast, TerminalOut};
use crate::event::{Event, Settings};
use crate::report::RunReport;
use crate::sched::CoreHandle;

/// Frames are at least this far apart (30 a second at most).
const FRAME: Duration = Duration::from_millis(33);
/// The clock in the header moves this often.
const TICK: Duration = Duration::from_millis(500);

/// How the UI runs.
#[derive(Default)]
pub struct UiOptions {
    /// The recording to write the session into (asciicast v2).
    pub cast: Option<CastWriter>,
    /// End the run after this long.
    pub duration: Option<Duration>,
    /// The lesson to follow, with its panel.
    pub lesson: Option<lesson_panel::LessonProgress>,
    /// Where `M` moves the selected VM.
    pub migrate_to: Option<crate::debug::ListenAddress>,
    /// Whether auto-converge starts on.
    pub auto_converge: bool,
}

/// What a UI run produced.
pub struct UiEnd {
    /// The core's final report.
    pub report: RunReport,
    /// How the recording went, with `--record`.
    pub cast: Option<CastEnd>,
    /// Snapshots asked for (`S`) that were not written, and why.
    pub failed_snapshots: Vec<String>,
}

/// Runs the UI until the user quits (or `stop` fires, or the duration ends);
/// returns the core's final report. The terminal is restored in every case.
pub fn run(
    core: CoreHandle,
    names: Vec<String>,
    settings: Settings,
    options: UiOptions,
    stop: &Receiver<libc::c_int>,
) -> io::Result<UiEnd> {
    let cast: SharedCast = Rc::new(RefCell::new(options.cast));
    // The recording ends with the terminal's leave sequence, then says how it went.
    let cast_end = || {
        let mut cast = cast.borrow_mut();
        let writer = cast.as_mut()?;
        let _ = writer.close();
        Some(writer.end())
    };
    let mark = |label: &str| {
        if let Some(writer) = cast.borrow_mut().as_mut() {
            let _ = writer.marker(label);
        }
    };
    let mut out = TerminalOut::new(io::stdout(), Rc::clone(&cast));
    let _guard = terminal::TerminalGuard::enter(&mut out)?;
    let mut terminal = Terminal::new(CrosstermBackend::new(out))?;
    terminal.clear()?;
    let input = spawn_input_reader();
    let mut app = App::new(names, settings);
    app.migrate_to = options.migrate_to.clone();
    app.auto_converge = options.auto_converge;
    app.lesson = options.lesson.clone();
    let ticks = crossbeam_channel::tick(TICK);
    let deadline = options.duration.map(|duration| crossbeam_channel::at(core.started() + duration));
    let never_events = crossbeam_channel::never();
    let mut panes: Vec<Rect> = Vec::new();
    let mut dirty = true;
    let mut last_frame = Instant::now() - FRAME;
    let mut lesson_done = app.lesson.as_ref().map_or(0, |lesson| lesson.done);
    loop {
        if let Some(lesson) = &app.lesson {
            for (index, step) in lesson.lesson.steps.iter().enumerate().take(lesson.done).skip(lesson_done) {
                let instruction: String = step.instruction.chars().take(48).collect();
                mark(&format!("step {} done: {instruction}", index + 1));
            }
            lesson_done = lesson.done;
        }
        if dirty && last_frame.elapsed() >= FRAME {
            panes = draw(&mut terminal, &app)?;
            last_frame = Instant::now();
            dirty = false;
        }
        let next_frame = if dirty { crossbeam_channel::at(last_frame + FRAME) } else { crossbeam_channel::never() };
        // A frozen display stops reading the core, which coalesces meanwhile.
        let events = if app.frozen && !app.quitting { &never_events } else { core.events() };
        let deadline = deadline.clone().unwrap_or_else(crossbeam_channel::never);
        select! {
            recv(events) -> event => match event {
                Ok(Event::Finished(mut report)) => {
                    core.finish(&mut report);
                    let failed_snapshots = std::mem::take(&mut app.failed_snapshots);
                    return Ok(UiEnd { report: *report, cast: cast_end(), failed_snapshots });
                }
                Ok(event) => dirty |= app.apply(event),
                Err(_) => return Err(io::Error::other(crate::headless::CoreLost)),
            },
            recv(input) -> event => {
                let Ok(event) = event else { continue };
                if let term_event::Event::Resize(width, height) = event {
                    if let Some(cast) = cast.borrow_mut().as_mut() {
                        let _ = cast.resize(width, height);
                    }
                }
                if let Some(action) = action_of(&event, &panes) {
                    if let term_event::Event::Key(key) = event {
                        mark(&format!("key {}", key.code));
                    }
                    for command in app.act(action) {
                        core.send(command);
                    }
                }
                dirty = true;
            },
            recv(ticks) -> _ => dirty |= !app.frozen,
            recv(next_frame) -> _ => {},
            recv(stop) -> _ => quit(&mut app, &core),
            recv(deadline) -> _ => quit(&mut app, &core),
        }
    }
}

fn quit(app: &mut App, core: &CoreHandle) {
    if !app.quitting {
        for command in app.act(Action::Quit) {
            core.send(command);
        }
    }
}

fn draw(terminal: &mut Terminal<CrosstermBackend<TerminalOut<io::Stdout>>>, app: &App) -> io::Result<Vec<Rect>> {
    crossterm::queue!(terminal.backend_mut(), BeginSynchronizedUpdate)?;
    let mut panes = Vec::new();
    terminal.draw(|frame| panes = view::draw(frame, app))?;
    crossterm::execute!(terminal.backend_mut(), EndSynchronizedUpdate)?;
    Ok(panes)
}

/// A key or click turned into an action (a click selects the pane under it).
fn action_of(event: &term_event::Event, panes: &[Rect]) -> Option<Action> {
    match event {
        term_event::Event::Key(key) => keys::action_for(*key),
        term_event::Event::Mouse(mouse) if mouse.kind == MouseEventKind::Down(MouseButton::Left) => {
            let at = Position::new(mouse.column, mouse.row);
            panes.iter().position(|pane| pane.contains(at)).map(Action::Select)
        }
        _ => None,
    }
}

/// Reads terminal input on a thread of its own (`matrix-input`).
fn spawn_input_reader() -> Receiver<term_event::Event> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let spawned = std::thread::Builder::new().name("matrix-input".into()).spawn(move || {
        while let Ok(event) = term_event::read() {
            if tx.send(event).is_err() {
                return;
            }
        }
    });
    if spawned.is_err() {
        // Without input the UI still shows the run; q is then Ctrl-C / SIGTERM.
        return crossbeam_channel::never();
    }
    rx
}
