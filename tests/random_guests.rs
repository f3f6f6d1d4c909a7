//! Random code as guests, one at a time beside `part1`: whatever the random
//! bytes do (fault, loop, write over their page tables, hammer ports, MMIO),
//! the host does not panic or hang and `part1`'s output is exact every time.
//!
//! Seeded and reproducible. 200 guests by default; more on demand:
//! `MATRIX_RANDOM_GUESTS=10000 MATRIX_RANDOM_SEED=7 cargo test --release --test random_guests`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use matrix_tui::config::{Policy, RunConfig, VmConfig};
use matrix_tui::event::{Event, VmState};

/// Random bytes, with a bias towards the instructions that reach the host.
fn random_image(rng: &mut common::Rng) -> Vec<u8> {
    let len = 16 + (rng.next() % 512) as usize;
    let mut image = Vec::with_capacity(len);
    while image.len() < len {
        match rng.next() % 8 {
            // out/in on a hypercall port or any port, every width.
            0 => image.extend_from_slice(&[
                0xb0 | (rng.next() % 8) as u8,
                rng.next() as u8,
                0xe6,
                0xe9 + (rng.next() % 8) as u8,
            ]),
            1 => image.extend_from_slice(&[
                0x66,
                0xba,
                rng.next() as u8,
                rng.next() as u8,
                [0xec, 0xed, 0xee, 0xef][(rng.next() % 4) as usize],
            ]),
            // mov eax, imm32; out 0xec, eax: printStr of a random pointer.
            2 => {
                image.push(0xb8);
                image.extend_from_slice(&(rng.next() as u32).to_le_bytes());
                image.extend_from_slice(&[0xe7, 0xec]);
            }
            // A store to a random address (page tables, mailbox, MMIO, beyond).
            3 => {
                image.extend_from_slice(&[0x48, 0xb8]);
                image.extend_from_slice(&(rng.next() % (1 << 32)).to_le_bytes());
                image.extend_from_slice(&[0x48, 0x89, 0x00]);
            }
            _ => image.extend_from_slice(&rng.next().to_le_bytes()[..(1 + rng.next() % 8) as usize]),
        }
    }
    image
}

#[test]
fn random_code_never_disturbs_the_host_or_part1() {
    let count: usize = std::env::var("MATRIX_RANDOM_GUESTS").ok().and_then(|n| n.parse().ok()).unwrap_or(200);
    let seed: u64 = std::env::var("MATRIX_RANDOM_SEED").ok().and_then(|n| n.parse().ok()).unwrap_or(0x6d61_7472_6978);
    let mut rng = common::Rng(seed | 1);
    let mut endings = std::collections::BTreeMap::<String, usize>::new();
    for case in 0..count {
        let image = random_image(&mut rng);
        let vms = vec![
            VmConfig::new("random", format!("random #{case}"), Arc::from(image.clone())),
            common::builtin("part1", "part1"),
        ];
        let core =
            matrix_tui::sched::spawn(common::kvm(), RunConfig::new(vms).with_policy(Policy::Fair)).expect("set up");
        let mut events = Vec::new();
        // part1 needs well under a second even beside a guest that spins.
        let give_up = Instant::now() + Duration::from_secs(20);
        loop {
            let event = core
                .events()
                .recv_deadline(give_up)
                .unwrap_or_else(|_| panic!("case {case} (seed {seed}): part1 did not halt; image {image:02x?}"));
            let halted = matches!(event, Event::State { vm: 1, state: VmState::Halted { .. } });
            let finished = matches!(event, Event::Finished(_));
            events.push(event);
            if halted || finished {
                break;
            }
        }
        let outcome = common::quit(core, events);
        let console = outcome.console(1);
        let hva_line = console.lines().nth(6).unwrap_or_default().to_string();
        assert_eq!(console, common::part1_expected(hva_line.parse().unwrap_or(0)), "case {case} (seed {seed})");
        assert_eq!(outcome.report.vms[1].state, "halted", "case {case}");
        let random = &outcome.report.vms[0];
        let ending = random.crash_reason.clone().unwrap_or_else(|| random.state.clone());
        *endings.entry(ending).or_default() += 1;
    }
    println!("{count} random guests (seed {seed}): {endings:#?}");
}
