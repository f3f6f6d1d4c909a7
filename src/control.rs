//! Text commands for steering a headless run from stdin (`run --control`), one
//! per line, so scripts and CI can do what the UI's keys do:
//!
//! ```text
//! weight NAME WEIGHT     set a VM's weight (1 to 10000)
//! pause NAME             stop scheduling a VM
//! resume NAME            schedule it again
//! restart NAME           start it afresh (new memory, image loaded again)
//! step NAME              run it to its next exit and pause it there
//! policy io|rr|fair      change the policy
//! quantum DURATION       change the quantum (100us..1s)
//! quit                   end the run
//! ```

use std::io::BufRead;

use crossbeam_channel::Sender;

use crate::config::{MAX_QUANTUM, MIN_QUANTUM, Policy, check_weight};
use crate::event::Command;
use crate::units::parse_duration;

/// The commands, for error messages.
pub const USAGE: &str = "weight NAME WEIGHT | pause NAME | resume NAME | restart NAME | step NAME | policy io|rr|fair \
                         | quantum DURATION | quit";

/// Parses one line; `Ok(None)` for a blank line or a `#` comment.
pub fn parse_line(line: &str, names: &[String]) -> Result<Option<Command>, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let vm = |name: &str| {
        names
            .iter()
            .position(|known| known == name)
            .ok_or_else(|| format!("no VM is called '{name}' (VMs: {})", names.join(", ")))
    };
    let command = match words.as_slice() {
        [] => return Ok(None),
        [first, ..] if first.starts_with('#') => return Ok(None),
        ["weight", name, weight] => {
            let weight: f64 = weight.parse().map_err(|_| format!("weight '{weight}' is not a number"))?;
            Command::SetWeight { vm: vm(name)?, weight: check_weight(weight)? }
        }
        ["pause", name] => Command::Pause(vm(name)?),
        ["resume", name] => Command::Resume(vm(name)?),
        ["restart", name] => Command::Restart(vm(name)?),
        ["step", name] => Command::Step(vm(name)?),
        ["policy", policy] => Command::SetPolicy(match *policy {
            "io" => Policy::Io,
            "rr" => Policy::Rr,
            "fair" => Policy::Fair,
            other => return Err(format!("unknown policy '{other}'; use io, rr or fair")),
        }),
        ["quantum", text] => {
            let quantum = parse_duration(text)?;
            if !(MIN_QUANTUM..=MAX_QUANTUM).contains(&quantum) {
                return Err(format!("the quantum must be between 100us and 1s, got {text}"));
            }
            Command::SetQuantum(quantum)
        }
        ["quit"] => Command::Quit,
        _ => return Err(format!("cannot read '{}'; commands: {USAGE}", line.trim())),
    };
    Ok(Some(command))
}

/// Reads commands from stdin on a thread of its own (`matrix-control`) and sends
/// them on; bad lines are reported on stderr and skipped. Ends at end of input.
pub fn spawn_stdin_reader(names: Vec<String>, commands: Sender<Command>) -> std::io::Result<()> {
    std::thread::Builder::new().name("matrix-control".into()).spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            match parse_line(&line, &names) {
                Ok(Some(command)) => {
                    if commands.send(command).is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(message) => eprintln!("matrix-tui: control: {message}"),
            }
        }
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
            ("step neo", Command::Step(0)),
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

    #[test]
    fn mistakes_are_explained() {
        assert!(parse_line("pause trinity", &names()).unwrap_err().contains("VMs: neo, morpheus"));
        assert!(parse_line("weight neo -1", &names()).unwrap_err().contains("from 1 to 10000"));
        assert!(parse_line("weight neo 1e308", &names()).unwrap_err().contains("from 1 to 10000"));
        assert!(parse_line("weight neo lots", &names()).unwrap_err().contains("not a number"));
        assert!(parse_line("policy lottery", &names()).unwrap_err().contains("io, rr or fair"));
        assert!(parse_line("quantum 5s", &names()).unwrap_err().contains("between 100us and 1s"));
        assert!(parse_line("dance", &names()).unwrap_err().contains("commands: weight"));
    }
}
