//! Text commands for steering a headless run from stdin (`run --control`), one
//! per line, so scripts and CI can do what the UI's keys do:
//!
//! ```text
//! weight NAME WEIGHT     set a VM's weight (1 to 10000)
//! pause NAME             stop scheduling a VM
//! resume NAME            schedule it again
//! restart NAME           start it afresh (new memory, image loaded again)
//! step NAME              run it to its next exit and pause it there
//! snapshot NAME FILE     save it to FILE (restore: run --vm NAME=snapshot:FILE)
//! migrate NAME ADDR      move it to the matrix-tui run with --incoming ADDR
//! migrate cancel NAME    call its move off before the hand-over (it runs on here)
//! adopt NAME             take an incoming VM whose sender went silent (it may
//!                        still run there: only if it does not), paused
//! auto-converge on|off   throttle migrating VMs that dirty faster than they are sent
//! policy io|rr|fair|gang change the policy
//! quantum DURATION       change the quantum (100us..1s)
//! quit                   end the run
//! ```

use std::io::BufRead;

use crossbeam_channel::Sender;

use crate::config::{MAX_QUANTUM, MIN_QUANTUM, Policy, check_weight};
use crate::console::escape_input;
use crate::event::Command;
use crate::units::parse_duration;

/// The commands, for error messages.
pub const USAGE: &str = "weight NAME WEIGHT | pause NAME | resume NAME | restart NAME | step NAME | snapshot NAME FILE \
                         | migrate NAME ADDR | migrate cancel NAME | adopt NAME | auto-converge on|off \
                         | policy io|rr|fair|gang \
                         | quantum DURATION | quit";

/// Parses one line; `Ok(None)` for a blank line or a `#` comment.
pub fn parse_line(line: &str, names: &[String]) -> Result<Option<Command>, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    // The newest VM of a name: one that moved away and came back is the
    // one here now.
    let vm = |name: &str| {
        names.iter().rposition(|known| known == name).ok_or_else(|| {
            let known: Vec<String> = names.iter().map(escape_input).collect();
            format!("no VM is called '{}' (VMs: {})", escape_input(name), known.join(", "))
        })
    };
    let command = match words.as_slice() {
        [] => return Ok(None),
        [first, ..] if first.starts_with('#') => return Ok(None),
        ["weight", name, weight] => {
            let weight: f64 =
                weight.parse().map_err(|_| format!("weight '{}' is not a number", escape_input(weight)))?;
            Command::SetWeight { vm: vm(name)?, weight: check_weight(weight)? }
        }
        ["pause", name] => Command::Pause(vm(name)?),
        ["resume", name] => Command::Resume(vm(name)?),
        ["restart", name] => Command::Restart(vm(name)?),
        ["step", name] => Command::Step { vm: vm(name)?, vcpu: None },
        ["pin", name, cores] => Command::Pin { vm: vm(name)?, cores: crate::scenario::parse_pin(cores)? },
        ["unpin", name] => Command::Pin { vm: vm(name)?, cores: Vec::new() },
        ["step", name, vcpu] => {
            let vcpu = vcpu.parse().map_err(|_| format!("vCPU '{}' is not a number", escape_input(vcpu)))?;
            Command::Step { vm: vm(name)?, vcpu: Some(vcpu) }
        }
        ["auto-converge", "on"] => Command::SetAutoConverge(true),
        ["auto-converge", "off"] => Command::SetAutoConverge(false),
        // A VM called "cancel" can still be moved: `migrate cancel ADDR` has an address.
        ["migrate", "cancel", name]
            if crate::debug::ListenAddress::parse(name).is_err() || names.contains(&name.to_string()) =>
        {
            Command::CancelMigration(vm(name)?)
        }
        ["adopt", name] => Command::Adopt(vm(name)?),
        ["migrate", name, address] => Command::MigrateTo {
            vm: vm(name)?,
            address: crate::debug::ListenAddress::parse(address).map_err(|message| escape_input(&message))?,
        },
        ["snapshot", name, file] => Command::Snapshot { vm: vm(name)?, path: std::path::PathBuf::from(file) },
        ["policy", policy] => Command::SetPolicy(match *policy {
            "io" => Policy::Io,
            "rr" => Policy::Rr,
            "fair" => Policy::Fair,
            "gang" => Policy::Gang,
            other => return Err(format!("unknown policy '{}'; use io, rr, fair or gang", escape_input(other))),
        }),
        ["quantum", text] => {
            let quantum = parse_duration(text).map_err(|_| {
                format!("cannot read the quantum '{}'; give a duration such as 2ms", escape_input(text))
            })?;
            if !(MIN_QUANTUM..=MAX_QUANTUM).contains(&quantum) {
                return Err(format!("the quantum must be between 100us and 1s, got {}", escape_input(text)));
            }
            Command::SetQuantum(quantum)
        }
        ["quit"] => Command::Quit,
        _ => return Err(format!("cannot read '{}'; commands: {USAGE}", escape_input(line.trim()))),
    };
    Ok(Some(command))
}

/// The longest control line in bytes; a longer one is refused (and read
/// to its end without being kept).
pub const MAX_LINE: usize = 1024;

/// Reads lines from `input`, each at most [`MAX_LINE`] bytes, and calls
/// `on_line` with each (or with why it cannot be used: too long, not
/// UTF-8), until the input ends, fails, or `on_line` returns false. Memory
/// stays bounded whatever the input holds.
pub fn read_lines(mut input: impl BufRead, mut on_line: impl FnMut(Result<&str, String>) -> bool) {
    let mut line = Vec::with_capacity(128);
    let mut length = 0usize;
    loop {
        let (consumed, ended) = match input.fill_buf() {
            Ok([]) => (0, true),
            Ok(available) => {
                let end = available.iter().position(|&byte| byte == b'\n');
                let part = &available[..end.unwrap_or(available.len())];
                let room = MAX_LINE.saturating_sub(line.len()).min(part.len());
                line.extend_from_slice(&part[..room]);
                length += part.len();
                (end.map_or(available.len(), |at| at + 1), end.is_some())
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let at_eof = consumed == 0;
        input.consume(consumed);
        if !ended || (at_eof && line.is_empty() && length == 0) {
            if at_eof {
                return;
            }
            continue;
        }
        let result = if length > MAX_LINE {
            Err(format!("a line of {length} bytes is too long (at most {MAX_LINE}): '{}'", escape_input(&line)))
        } else {
            std::str::from_utf8(&line).map_err(|_| format!("the line '{}' is not UTF-8", escape_input(&line)))
        };
        if !on_line(result) || at_eof {
            return;
        }
        line.clear();
        length = 0;
    }
}

/// Reads commands from stdin on a thread of its own (`matrix-control`) and sends
/// them on; bad lines are reported on stderr and skipped. Ends at end of input.
pub fn spawn_stdin_reader(
    names: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    commands: Sender<Command>,
) -> std::io::Result<()> {
    std::thread::Builder::new().name("matrix-control".into()).spawn(move || {
        read_lines(std::io::stdin().lock(), |line| {
            let names = names.lock().expect("names lock").clone();
            match line.and_then(|line| parse_line(line, &names)) {
                Ok(Some(command)) => return commands.send(command).is_ok(),
                Ok(None) => {}
                Err(message) => eprintln!("matrix-tui: control: {message}"),
            }
            true
        });
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn names() -> Vec<String> {
        vec!["neo".into(), "morpheus".into()]
    }

    #[test]
    fn every_command_parses() {
        let cases = [
            ("weight morpheus 45", Command::SetWeight { vm: 1, weight: 45.0 }),
            ("pause neo", Command::Pause(0)),
            ("resume neo", Command::Resume(0)),
            ("  restart   morpheus ", Command::Restart(1)),
            ("step neo", Command::Step { vm: 0, vcpu: None }),
            ("step neo 1", Command::Step { vm: 0, vcpu: Some(1) }),
            ("pin neo 1,0", Command::Pin { vm: 0, cores: vec![0, 1] }),
            ("unpin neo", Command::Pin { vm: 0, cores: Vec::new() }),
            (
                "migrate neo 127.0.0.1:7000",
                Command::MigrateTo { vm: 0, address: crate::debug::ListenAddress::Tcp("127.0.0.1:7000".into()) },
            ),
            ("migrate cancel neo", Command::CancelMigration(0)),
            ("adopt morpheus", Command::Adopt(1)),
            ("policy rr", Command::SetPolicy(Policy::Rr)),
            ("quantum 250us", Command::SetQuantum(Duration::from_micros(250))),
            ("quit", Command::Quit),
        ];
        for (line, command) in cases {
            assert_eq!(parse_line(line, &names()), Ok(Some(command)), "{line}");
        }
        assert_eq!(parse_line("", &names()), Ok(None));
        assert_eq!(parse_line("# a comment", &names()), Ok(None));
    }

    fn lines_of(input: &[u8]) -> Vec<Result<String, String>> {
        let mut lines = Vec::new();
        read_lines(input, |line| {
            lines.push(line.map(str::to_string));
            true
        });
        lines
    }

    #[test]
    fn each_bad_line_gets_its_own_error_and_the_rest_go_on() {
        let mut input = b"pause neo\n\xff\xfe bad\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 10 * MAX_LINE));
        input.extend_from_slice(b"\nquit");
        let lines = lines_of(&input);
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(lines[0], Ok("pause neo".into()));
        assert_eq!(lines[1], Err("the line '\\xff\\xfe bad' is not UTF-8".into()));
        let long = lines[2].as_ref().unwrap_err();
        assert!(long.starts_with(&format!("a line of {} bytes is too long", 10 * MAX_LINE)), "{long}");
        assert!(long.len() < 200, "the echo is bounded: {long}");
        assert_eq!(lines[3], Ok("quit".into()), "a last line without a newline counts");
    }

    #[test]
    fn a_line_at_the_limit_is_read_and_blank_input_gives_blank_lines() {
        let mut input = vec![b'#'; MAX_LINE];
        input.push(b'\n');
        assert_eq!(lines_of(&input), [Ok("#".repeat(MAX_LINE))]);
        assert_eq!(lines_of(b""), Vec::<Result<String, String>>::new());
        assert_eq!(lines_of(b"\n\n"), [Ok(String::new()), Ok(String::new())]);
    }

    #[test]
    fn echoed_input_cannot_reach_the_terminal_as_escapes() {
        let error = parse_line("pause \x1b]0;owned\x07", &names()).unwrap_err();
        assert!(!error.contains('\x1b') && !error.contains('\x07'), "{error}");
        assert!(error.contains("\\x1b]0;owned\\x07"), "{error}");
        let error = parse_line(&format!("weight neo {}", "9".repeat(5000)), &names()).unwrap_err();
        assert!(error.len() < 200, "{error}");
    }

    #[test]
    fn mistakes_are_explained() {
        assert!(parse_line("pause trinity", &names()).unwrap_err().contains("VMs: neo, morpheus"));
        assert!(parse_line("weight neo -1", &names()).unwrap_err().contains("from 1 to 10000"));
        assert!(parse_line("weight neo 1e308", &names()).unwrap_err().contains("from 1 to 10000"));
        assert!(parse_line("weight neo lots", &names()).unwrap_err().contains("not a number"));
        assert!(parse_line("policy lottery", &names()).unwrap_err().contains("io, rr, fair or gang"));
        assert!(parse_line("quantum 5s", &names()).unwrap_err().contains("between 100us and 1s"));
        assert!(parse_line("dance", &names()).unwrap_err().contains("commands: weight"));
    }
}
