//! Keys and their actions: one table, used both to handle keys and to draw the
//! help overlay and the footer.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::app::Action;

/// Every key binding: the keys as shown to people, what it does, its action.
pub const BINDINGS: &[(&str, &str, Action)] = &[
    ("Tab / →", "select the next VM", Action::SelectNext),
    ("Shift-Tab / ←", "select the previous VM", Action::SelectPrevious),
    ("+", "raise the selected VM's target share by 5 points", Action::MoreShare),
    ("-", "lower it by 5 points", Action::LessShare),
    ("p / o", "pause or resume the selected VM / pin it to a core", Action::TogglePause),
    ("r", "restart the selected VM (fresh memory, image reloaded)", Action::Restart),
    ("m", "next policy: io, rr, fair, gang", Action::CyclePolicy),
    ("[ / ]", "shorter / longer quantum (1-2-5)", Action::ShorterQuantum),
    ("space", "freeze the display (the VMs keep running)", Action::ToggleFreeze),
    ("c", "clear the selected console", Action::ClearConsole),
    ("PgUp / PgDn", "scroll the selected console (or the inspector)", Action::ScrollUp),
    ("e", "open or close the exit inspector on the selected VM", Action::ToggleInspector),
    ("f", "inspector filter: all, hypercalls, other exits", Action::CycleFilter),
    ("s / v", "step the selected VM (p resumes) / choose which vCPU", Action::Step),
    ("S", "save the selected VM to NAME-N.snap here (it runs on)", Action::Snapshot),
    ("M / A / X", "migrate to --migrate-to / auto-converge / cancel it", Action::Migrate),
    ("t", "show or hide the schedule timeline", Action::ToggleTimeline),
    ("< / >", "timeline window shorter / longer (2 ms to 10 s)", Action::ZoomIn),
    ("l", "show or hide the lesson panel (matrix-tui lesson NAME)", Action::ToggleLesson),
    ("?", "show or hide this help", Action::ToggleHelp),
    ("q / Ctrl-C", "quit", Action::Quit),
];

/// The action a key press asks for, if any.
pub fn action_for(key: KeyEvent) -> Option<Action> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    Some(match key.code {
        KeyCode::Char('c') if ctrl => Action::Quit,
        KeyCode::Char('q') | KeyCode::Esc if !ctrl => Action::Quit,
        KeyCode::Tab | KeyCode::Right | KeyCode::Down => Action::SelectNext,
        KeyCode::BackTab | KeyCode::Left | KeyCode::Up => Action::SelectPrevious,
        KeyCode::Char('+') | KeyCode::Char('=') => Action::MoreShare,
        KeyCode::Char('-') | KeyCode::Char('_') => Action::LessShare,
        KeyCode::Char('p') => Action::TogglePause,
        KeyCode::Char('o') => Action::CyclePin,
        KeyCode::Char('r') => Action::Restart,
        KeyCode::Char('m') => Action::CyclePolicy,
        KeyCode::Char('[') => Action::ShorterQuantum,
        KeyCode::Char(']') => Action::LongerQuantum,
        KeyCode::Char(' ') => Action::ToggleFreeze,
        KeyCode::Char('c') => Action::ClearConsole,
        KeyCode::Char('e') => Action::ToggleInspector,
        KeyCode::Char('f') => Action::CycleFilter,
        KeyCode::Char('s') => Action::Step,
        KeyCode::Char('v') => Action::ChooseStepVcpu,
        KeyCode::Char('S') => Action::Snapshot,
        KeyCode::Char('M') => Action::Migrate,
        KeyCode::Char('X') => Action::CancelMigration,
        KeyCode::Char('A') => Action::ToggleAutoConverge,
        KeyCode::Char('t') => Action::ToggleTimeline,
        KeyCode::Char('l') => Action::ToggleLesson,
        KeyCode::Char('<') | KeyCode::Char(',') => Action::ZoomIn,
        KeyCode::Char('>') | KeyCode::Char('.') => Action::ZoomOut,
        KeyCode::PageUp => Action::ScrollUp,
        KeyCode::PageDown => Action::ScrollDown,
        KeyCode::Char('?') | KeyCode::F(1) => Action::ToggleHelp,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(code: KeyCode) -> Option<Action> {
        action_for(KeyEvent::new(code, KeyModifiers::NONE))
    }

    #[test]
    fn every_key_of_the_help_does_what_it_says() {
        let cases = [
            (KeyCode::Tab, Action::SelectNext),
            (KeyCode::Right, Action::SelectNext),
            (KeyCode::BackTab, Action::SelectPrevious),
            (KeyCode::Left, Action::SelectPrevious),
            (KeyCode::Char('+'), Action::MoreShare),
            (KeyCode::Char('-'), Action::LessShare),
            (KeyCode::Char('p'), Action::TogglePause),
            (KeyCode::Char('o'), Action::CyclePin),
            (KeyCode::Char('r'), Action::Restart),
            (KeyCode::Char('m'), Action::CyclePolicy),
            (KeyCode::Char('['), Action::ShorterQuantum),
            (KeyCode::Char(']'), Action::LongerQuantum),
            (KeyCode::Char(' '), Action::ToggleFreeze),
            (KeyCode::Char('c'), Action::ClearConsole),
            (KeyCode::Char('e'), Action::ToggleInspector),
            (KeyCode::Char('f'), Action::CycleFilter),
            (KeyCode::Char('s'), Action::Step),
            (KeyCode::Char('v'), Action::ChooseStepVcpu),
            (KeyCode::Char('S'), Action::Snapshot),
            (KeyCode::Char('M'), Action::Migrate),
            (KeyCode::Char('X'), Action::CancelMigration),
            (KeyCode::Char('A'), Action::ToggleAutoConverge),
            (KeyCode::Char('t'), Action::ToggleTimeline),
            (KeyCode::Char('l'), Action::ToggleLesson),
            (KeyCode::Char('<'), Action::ZoomIn),
            (KeyCode::Char('>'), Action::ZoomOut),
            (KeyCode::PageUp, Action::ScrollUp),
            (KeyCode::PageDown, Action::ScrollDown),
            (KeyCode::Char('?'), Action::ToggleHelp),
            (KeyCode::Char('q'), Action::Quit),
        ];
        for (code, action) in cases {
            assert_eq!(press(code), Some(action), "{code:?}");
        }
        assert_eq!(action_for(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)), Some(Action::Quit));
        assert_eq!(press(KeyCode::Char('z')), None);
    }

    #[test]
    fn releases_are_ignored() {
        let mut key = KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE);
        key.kind = KeyEventKind::Release;
        assert_eq!(action_for(key), None);
    }
}
