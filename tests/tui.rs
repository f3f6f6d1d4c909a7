//! The real binary in a real terminal (tmux): it starts, shows Neo and
//! Morpheus with consoles and share bars, `+` moves Neo's target from 70 % to
//! 75 %, `p` pauses, `q` quits, and the terminal is back in cooked mode;
//! `s` steps a paused VM exit by exit in the inspector (`e`), `t` shows the
//! timeline. And `--record` leaves a valid asciicast v2 file of what the
//! terminal showed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::tmux::{PATIENCE, Tmux, unique_name};

/// Waits for `path` to exist and hold a line ([`PATIENCE`] at most).
fn wait_for_file(path: &Path) -> String {
    let give_up = Instant::now() + PATIENCE;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text;
            }
        }
        assert!(Instant::now() < give_up, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_matrix-tui"))
}

#[test]
fn the_ui_shows_neo_and_morpheus_steers_them_and_restores_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let after = dir.path().join("after");
    // After the UI exits, the shell records its status and the terminal mode.
    let command = format!(
        "{}; echo \"status=$? $(stty -a | tr ' ' '\\n' | grep -x -- '-\\?icanon') $(stty -a | tr ' ' '\\n' | grep -x -- '-\\?echo')\" > {}; sleep 60",
        binary().display(),
        after.display()
    );
    let tmux = Tmux::start(&command, 80, 24);
    // Shares are drawn once the first samples are in: wait for the bars too.
    tmux.wait_for(&["neo running", "morpheus running", "→ 70%", "→ 30%", "[0001] Neo:", "[0001] Morpheus:", "█"]);
    let screen = tmux.screen();
    assert!(screen.contains("fair · 1ms · posix timer"), "the header shows the settings:\n{screen}");

    tmux.keys("+");
    tmux.wait_for(&["w75 → 75%", "w25 → 25%"]);
    // The bar shows charged CPU (the header says so): it settles on the
    // new target within a window of samples.
    assert!(screen.contains("bars: charged CPU"), "{screen}");
    let bar_settles = |target: &str| {
        let give_up = Instant::now() + PATIENCE;
        loop {
            let screen = tmux.screen();
            let shown = screen
                .split(&format!("% → {target}%"))
                .next()
                .and_then(|before| before.rsplit(' ').next())
                .and_then(|share| share.parse::<f64>().ok());
            let target: f64 = target.parse().unwrap();
            if shown.is_some_and(|share| (share - target).abs() <= 1.0) {
                return;
            }
            assert!(Instant::now() < give_up, "the bar never settled on {target}%:\n{screen}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    bar_settles("75");
    tmux.keys("+");
    bar_settles("80");
    tmux.keys("p");
    tmux.wait_for(&["neo paused · w80", "1 paused"]);
    tmux.keys("q");

    let after = wait_for_file(&after);
    assert_eq!(after.trim(), "status=0 icanon echo", "the terminal is back in cooked mode with echo");
    let screen = tmux.screen();
    assert!(!screen.contains("morpheus running"), "the alternate screen is gone:\n{screen}");
}

#[test]
fn step_inspect_and_watch_the_timeline_in_the_real_binary() {
    let dir = tempfile::tempdir().unwrap();
    let after = dir.path().join("after");
    let command = format!(
        "{} run --vm part1 --vm neo --paused part1; echo status=$? > {}; sleep 60",
        binary().display(),
        after.display()
    );
    let tmux = Tmux::start(&command, 80, 24);
    tmux.wait_for(&["part1 paused", "neo running"]);
    // Each `s` runs part1 to its next exit; the inspector opens on it.
    tmux.keys("s");
    tmux.wait_for(&["paused after [step] exit 1: io_out 0xe9 HC_print8bit('H')"]);
    tmux.keys("s");
    tmux.wait_for(&["paused after [step] exit 2: io_out 0xe9 HC_print8bit('e')"]);
    tmux.keys("s");
    let screen = tmux.wait_for(&["paused after [step] exit 3: io_out 0xe9 HC_print8bit('l')", "rax 0x6c"]);
    assert!(screen.contains("exits of part1") && screen.contains("3 kept"), "{screen}");
    // `t` adds the timeline: neo holds the CPU, part1 does not.
    tmux.keys("t");
    tmux.wait_for(&["timeline · last 10ms", "neo      ", "ends"]);
    tmux.keys(">");
    tmux.wait_for(&["timeline · last 20ms"]);
    // `e` closes the inspector: the panes are back, part1's console reads "Hel".
    tmux.keys("e");
    let screen = tmux.wait_for(&["part1 paused", "Hel"]);
    assert!(!screen.contains("exits of part1"), "{screen}");
    tmux.keys("q");
    assert_eq!(wait_for_file(&after).trim(), "status=0");
}

#[test]
fn the_preemption_lesson_ticks_every_step_as_its_panel_asks() {
    let command = format!("{} lesson preemption; sleep 60", binary().display());
    let tmux = Tmux::start(&command, 80, 24);
    tmux.wait_for(&["lesson: Preemption", "→ Press t", "step 1 of 4", "io · 1ms"]);
    tmux.keys("t");
    tmux.wait_for(&["✓ Press t", "→ Press m", "step 2 of 4"]);
    tmux.keys("m");
    // rr: the timer kicks spin, then neo; both counters pass 100 on their own.
    let screen = tmux.wait_for(&["✓ Press m", "All done", "rr · 1ms"]);
    assert_eq!(screen.matches('✓').count(), 4, "{screen}");
    tmux.keys("l");
    tmux.wait_without("lesson: Preemption");
    tmux.keys("q");
}

#[test]
fn the_fractions_lesson_ticks_every_step_as_its_panel_asks() {
    let command = format!("{} lesson fractions; sleep 60", binary().display());
    let tmux = Tmux::start(&command, 80, 24);
    tmux.wait_for(&["lesson: Fractions", "step 1 of 5"]);
    tmux.keys("t");
    // The share settles within 2 points of 70 % by itself.
    tmux.wait_for(&["step 3 of 5", "→ With Neo selected"]);
    tmux.keys("+");
    tmux.wait_for(&["w75 → 75%", "✓ With Neo selected"]);
    // The bar follows by itself.
    tmux.wait_for(&["✓ The bar follows", "→ Select Morpheus", "step 5 of 5"]);
    tmux.keys("Tab");
    tmux.keys("-");
    let screen = tmux.wait_for(&["All done", "w80 → 80%", "w20 → 20%"]);
    assert_eq!(screen.matches('✓').count(), 5, "{screen}");
    tmux.keys("q");
}

#[test]
fn the_modes_lesson_walks_one_guest_through_the_four_modes() {
    let command = format!("{} lesson modes; sleep 60", binary().display());
    let tmux = Tmux::start(&command, 80, 24);
    tmux.wait_for(&["lesson: CPU modes", "step 1 of 5"]);
    tmux.keys("e");
    tmux.wait_for(&["real mode · image 0x0..0x42 · entered at 0x0:0x0 (CS:IP)", "step 2 of 5"]);
    tmux.keys("s");
    tmux.wait_for(&["0x60000010", "step 3 of 5"]);
    tmux.keys("Tab");
    tmux.keys("Tab");
    tmux.keys("Tab");
    tmux.wait_for(&["long mode · image 0x0..0x42 · entered at 0x0"]);
    tmux.keys("s");
    tmux.wait_for(&["0x80050033", "step 4 of 5"]);
    tmux.keys("Tab");
    tmux.keys("p");
    tmux.wait_for(&["exits of real", "hlt", "step 5 of 5"]);
    // long alone halting is not the step: it asks for protected and paged32 too.
    for key in ["Tab", "Tab", "Tab", "p"] {
        tmux.keys(key);
    }
    let screen = tmux.wait_for(&["exits of long", "hlt"]);
    assert!(screen.contains("step 5 of 5"), "{screen}");
    // Back to paged32 (crashed where the host refuses it: p does nothing), then protected.
    for key in ["BTab", "p", "BTab", "p"] {
        tmux.keys(key);
    }
    tmux.wait_for(&["all 5 steps done"]);
    tmux.keys("e");
    tmux.keys("l");
    // 80 columns: a row each, a halted VM's ending with its registers.
    let screen = tmux.wait_for(&["eax=42 (0x2a)", "rax=42 (0x2a)"]);
    assert_eq!(screen.matches("–  eax=42 (0x2a)").count(), 2, "real and protected: {screen}");
    tmux.keys("q");
}

#[test]
fn the_interrupts_lesson_shows_a_sleeper_its_ticks_and_a_kernels_tasks() {
    let command = format!("{} lesson interrupts; sleep 60", binary().display());
    let tmux = Tmux::start(&command, 80, 24);
    tmux.wait_for(&["lesson: Interrupts"]);
    // The sleeper sleeps, then five ticks come in on their own.
    tmux.wait_for(&["step 3 of 5", "sleeping"]);
    tmux.keys("Tab");
    tmux.keys("e");
    // Its inspector lists the injections.
    tmux.wait_for(&["exits of sleeper", "interrupt 0x20 injected (timer tick)", "step 4 of 5"]);
    // Tab to tasks, as step 4 asks (its lines alone do not tick it).
    tmux.keys("Tab");
    tmux.wait_for(&["step 5 of 5"]);
    tmux.keys("e");
    tmux.keys("t");
    // The step ticks only once the window is wide enough for the sleeper's z.
    for _ in 0..5 {
        tmux.keys(">");
    }
    tmux.wait_for(&["timeline · last 500ms", "step 5 of 5"]);
    tmux.keys(">");
    let screen = tmux.wait_for(&["all 5 steps done", "timeline · last 1s"]);
    let ends = screen.lines().find(|line| line.starts_with("│end")).expect("the timeline's row of ends");
    assert!(ends.contains('z'), "the sleeper's sleeps show: {screen}");
    tmux.keys("q");
}

#[test]
fn the_smp_lesson_shows_vcpus_taking_turns_their_ipis_and_a_shared_weight() {
    let command = format!("{} lesson smp; sleep 60", binary().display());
    let tmux = Tmux::start(&command, 80, 24);
    tmux.wait_for(&["lesson: Several vCPUs"]);
    // pair's lines name their vCPUs, and vCPU 1 waits for its IPI between turns.
    tmux.wait_for(&["step 2 of 4", "cpu1: "]);
    // pair is selected: its inspector lists the IPIs and their injections.
    tmux.keys("e");
    tmux.wait_for(&["exits of pair", "HC_ipi(vCPU", "injected (IPI)"]);
    tmux.keys("e");
    // The step ticked while the inspector was open; then equal weights:
    // four (four vCPUs) and one (one) each at a third.
    tmux.wait_for(&["step 4 of 4"]);
    tmux.keys("Tab");
    for _ in 0..4 {
        tmux.keys("+");
    }
    tmux.wait_for(&["all 4 steps done"]);
    tmux.keys("q");
}

#[test]
fn the_cores_lesson_pins_two_vms_to_one_core_and_lets_them_spread() {
    let command = format!("{} lesson cores; sleep 60", binary().display());
    // Its two cores spin two CPUs: no other terminal runs beside it.
    let tmux = Tmux::start_alone(&command, 80, 24);
    tmux.wait_for(&["lesson: Several cores"]);
    // Both pinned to core 0, then b pinned to core 1: it moves at once.
    tmux.wait_for(&["step 2 of 4"]);
    tmux.keys("Tab");
    tmux.keys("o");
    tmux.wait_for(&["b running · core1 pinned"]);
    tmux.wait_for(&["step 3 of 4"]);
    // b unpinned stays where the load is even.
    tmux.keys("o");
    tmux.wait_for(&["step 4 of 4"]);
    // a: pinned to core 1 (sharing it with b), then unpinned: they spread again.
    tmux.keys("Tab");
    tmux.keys("o");
    tmux.wait_for(&["a running · core1 pinned"]);
    tmux.keys("o");
    tmux.wait_for(&["all 4 steps done"]);
    tmux.keys("q");
}

#[test]
fn the_locks_lesson_shows_a_ticket_lock_spin_and_a_paravirtual_one_win_its_time_back() {
    let command = format!("{} lesson locks; sleep 60", binary().display());
    let tmux = Tmux::start(&command, 100, 30);
    tmux.wait_for(&["lesson: Lock-holder preemption"]);
    // Each step ticks on its own measure: ticket's spin, pv's critical sections over ticket's.
    tmux.wait_for(&["step 3 of 3"]);
    let screen = tmux.wait_for(&["lock ", "spin "]);
    assert!(screen.contains("waiter"), "{screen}");
    tmux.keys("t");
    tmux.wait_for(&["all 3 steps done"]);
    tmux.keys("q");
}

#[test]
fn the_gang_lesson_shows_a_ticket_lock_spin_under_fair_and_stop_under_gang() {
    let command = format!("{} lesson gang; sleep 60", binary().display());
    // Its two cores spin: no other terminal of the binary beside it.
    let tmux = Tmux::start_alone(&command, 100, 30);
    tmux.wait_for(&["lesson: Co-scheduling"]);
    tmux.wait_for(&["step 2 of 3"]);
    // m cycles io, rr, fair, gang: from fair, once.
    tmux.keys("m");
    tmux.wait_for(&["step 3 of 3"]);
    tmux.keys("t");
    tmux.wait_for(&["all 3 steps done"]);
    tmux.keys("q");
}

#[test]
fn a_recording_is_asciicast_v2_replays_the_panes_marks_keys_and_ends_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let cast = dir.path().join("session.cast");
    let done = dir.path().join("done");
    let command = format!(
        "{} run --record {}; echo status=$? > {}; sleep 60",
        binary().display(),
        cast.display(),
        done.display()
    );
    let tmux = Tmux::start(&command, 80, 24);
    tmux.wait_for(&["→ 70%", "neo running"]);
    tmux.keys("+");
    tmux.wait_for(&["w75 → 75%"]);
    tmux.keys("q");
    assert_eq!(wait_for_file(&done).trim(), "status=0");

    let recording = common::cast::Cast::read(&cast);
    assert_eq!(recording.size, (80, 24));
    let replay: String =
        recording.events.iter().filter(|(_, kind, _)| kind == "o").map(|(_, _, data)| data.as_str()).collect();
    for text in ["neo", "morpheus", "running", "→ 70%", "\u{1b}[?1049h"] {
        assert!(replay.contains(text), "the replay lacks {text:?}");
    }
    assert_eq!(recording.markers(), ["key +", "key q"]);
    recording.assert_ends_cleanly("a recording ended by q");
    // The user's last screen is the last frame before the leave sequence.
    let (_, kind, last) = recording.events.last().unwrap();
    assert!(kind == "o" && last.contains("\u{1b}[?1049l"), "the recording ends by leaving: {last:?}");
}

#[test]
fn a_recording_ended_by_a_stop_signal_ends_cleanly() {
    for signal in ["TERM", "HUP", "INT"] {
        let dir = tempfile::tempdir().unwrap();
        let cast = dir.path().join("session.cast");
        let done = dir.path().join("done");
        let command = format!(
            "sh -c 'echo $$ > {pid}; exec {} run --vm t=ticker --record {}'; echo ended > {}; sleep 60",
            binary().display(),
            cast.display(),
            done.display(),
            pid = dir.path().join("pid").display(),
        );
        let tmux = Tmux::start(&command, 80, 24);
        tmux.wait_for(&["t running"]);
        let pid = wait_for_file(&dir.path().join("pid"));
        let status = Command::new("kill").args([&format!("-{signal}"), pid.trim()]).status().unwrap();
        assert!(status.success());
        wait_for_file(&done);
        common::cast::Cast::read(&cast).assert_ends_cleanly(&format!("a recording ended by SIG{signal}"));
    }
}

#[test]
fn shift_s_saves_the_selected_vm_beside_the_run_and_it_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let after = dir.path().join("after");
    let command = format!(
        "cd {} && {} run --vm t=sleeper --args t=500,1 --vm s=spin; echo status=$? > {}; sleep 60",
        dir.path().display(),
        binary().display(),
        after.display()
    );
    let tmux = Tmux::start(&command, 80, 24);
    tmux.wait_for(&["s running"]);
    tmux.keys("S");
    tmux.wait_for(&["[matrix] snapshot t-1.snap written"]);
    tmux.keys("S");
    tmux.wait_for(&["[matrix] snapshot t-2.snap written"]);
    tmux.keys("q");
    assert_eq!(wait_for_file(&after).trim(), "status=0");
    let show = Command::new(binary()).args(["snapshot", "show"]).arg(dir.path().join("t-1.snap")).output().unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success() && text.contains("VM 't' (guest sleeper, weight 1) in long mode"), "{text}");
    assert!(dir.path().join("t-2.snap").exists());
}

#[test]
fn the_migration_lesson_saves_neo_and_moves_it_to_a_receiver_round_by_round() {
    let dir = tempfile::tempdir().unwrap();
    // The receiver the lesson's text asks a teacher to start, at an address
    // of this test's own (the lesson's would answer another run's test).
    let socket = std::env::temp_dir().join(unique_name("matrix-tui-lesson-test")).with_extension("sock");
    let receiver = Command::new(binary())
        .args(["run", "--headless", "--duration", "60s", "--incoming"])
        .arg(&socket)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed however the test ends, its socket removed, so that no receiver outlives it.
    struct Receiver(Option<std::process::Child>, PathBuf);
    impl Drop for Receiver {
        fn drop(&mut self) {
            if let Some(child) = &mut self.0 {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = std::fs::remove_file(&self.1);
        }
    }
    let mut receiver = Receiver(Some(receiver), socket.clone());
    let give_up = Instant::now() + PATIENCE;
    while !socket.exists() {
        assert!(Instant::now() < give_up, "the receiver never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let command = format!(
        "cd {} && {} lesson migration --migrate-to {}; sleep 60",
        dir.path().display(),
        binary().display(),
        socket.display()
    );
    // Its dirtiers' rounds are judged by the pages they dirty, which follow
    // the CPU they get: no other terminal runs beside it.
    let tmux = Tmux::start_alone(&command, 160, 48);
    tmux.wait_for(&["neo running", "dirtier paused", "→ First, in another terminal, start the receiver"]);
    tmux.keys("S");
    tmux.wait_for(&["[matrix] snapshot neo-1.snap written", "✓ First, in another terminal"]);
    assert!(dir.path().join("neo-1.snap").exists());
    tmux.keys("M");
    // Its rounds in its pane (on a busy host neo's few pages can take all
    // 12 rounds: the link's measured rate is then mostly round trips).
    let screen = tmux.wait_for(&["neo moved", "[matrix] migrated to", "✓ Press M"]);
    assert!(screen.contains(", throttle 0%") && screen.contains("→ Tab to dirtier"), "{screen}");
    assert!(screen.contains(" sent, ") && screen.contains(" dirtied ("), "{screen}");
    // dirtier: rounds that do not shrink, to a cap (about 14 s at 4 MB/s),
    // once it has written its working set (its first line, as the panel says).
    tmux.keys("Tab");
    tmux.keys("p");
    tmux.wait_for(&["┃1000 "]);
    tmux.keys("M");
    tmux.wait_for_within(&["dirtier moved", "✓ Tab to dirtier", "→ Press A"], Duration::from_secs(90));
    // dirtier2 with auto-converge: throttled until the rest fits (about 6 s).
    for key in ["A", "Tab", "p"] {
        tmux.keys(key);
    }
    tmux.wait_for(&["dirtier2 running", "┃1000 "]);
    tmux.keys("M");
    let screen = tmux.wait_for_within(&["dirtier2 moved", "All done"], Duration::from_secs(90));
    assert!(screen.contains("the rest fits"), "{screen}");
    tmux.keys("q");
    let mut child = receiver.0.take().expect("running");
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let received = String::from_utf8_lossy(&output.stdout);
    assert!(received.contains("neo| [matrix] came in by migration"), "{received}");
}

#[test]
fn a_resize_then_q_leaves_nothing_of_the_ui_on_the_screen() {
    for (width, height) in [(100, 30), (64, 18)] {
        let command = format!("{}; echo ended with $?; sleep 60", binary().display());
        let tmux = Tmux::start(&command, 80, 24);
        tmux.wait_for(&["neo running", "morpheus running"]);
        tmux.resize(width, height);
        // Drawn again at the new size: the footer is as wide as it allows.
        tmux.wait_for(&["q quit"]);
        tmux.keys("q");
        let screen = tmux.wait_for(&["ended with 0"]);
        for ui in ["neo", "morpheus", "q quit", "━", "─", "█"] {
            assert!(!screen.contains(ui), "{width}x{height}: {ui:?} is left on the screen:\n{screen}");
        }
    }
}
