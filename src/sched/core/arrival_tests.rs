//! An incoming VM on real KVM, driven by the messages a migration's link
//! thread sends: it runs only once handed over, an orphan only once
//! adopted, a dropped copy never. (Crate-internal: no front end may send
//! these messages.)

use std::time::{Duration, Instant};

use super::*;
use crate::config::RunConfig;
use crate::event::{IncomingVm, Reply};

fn ticker(name: &str) -> VmConfig {
    VmConfig::new(name, "ticker", crate::guests::resolve("ticker").expect("built-in guest"))
}

/// Events until one matches (15 s at most), kept.
fn wait_for(core: &CoreHandle, events: &mut Vec<Event>, pick: impl Fn(&Event) -> bool) {
    let give_up = Instant::now() + Duration::from_secs(15);
    loop {
        let event = core.events().recv_deadline(give_up).expect("the awaited event came within 15 s");
        let found = pick(&event);
        events.push(event);
        if found {
            return;
        }
    }
}

#[test]
fn an_arriving_vm_runs_only_when_handed_over_and_an_orphan_only_when_adopted() {
    let kvm = crate::vm::open_kvm().expect("this test needs /dev/kvm");
    let core = spawn(kvm, RunConfig::new(vec![ticker("home")])).expect("VMs set up");
    let helper = core.commander();
    let mut events = Vec::new();
    let add = |name: &str| {
        let (reply, made) = crossbeam_channel::bounded(1);
        let vm = IncomingVm(Box::new(ticker(name)));
        helper.send(Internal::AddVm { vm, reply: Reply(reply), rounds: 1, pages: 0, from: "a test".into() });
        made.recv_timeout(Duration::from_secs(15)).expect("an answer").expect("made")
    };
    let state_is = |vm: usize, state: VmState| move |event: &Event| matches!(event, Event::State { vm: v, state: s } if *v == vm && *s == state);
    // Arriving: every command but quit refused; the Go runs it.
    let arriving = add("arriving");
    wait_for(&core, &mut events, state_is(arriving, VmState::Arriving));
    for command in [Command::Resume(arriving), Command::Step(arriving), Command::Restart(arriving)] {
        core.send(command);
    }
    let (reply, _downtime) = crossbeam_channel::bounded(1);
    helper.send(Internal::StartIncoming { vm: arriving, last_slice_ns: 0, paused: false, report: Reply(reply) });
    wait_for(&core, &mut events, state_is(arriving, VmState::Running));
    // The sender went silent: an orphan, held until adopted, then paused.
    let orphan = add("orphan");
    helper.send(Internal::IncomingOrphaned { vm: orphan, why: "the link broke".into(), dropped: false });
    wait_for(&core, &mut events, state_is(orphan, VmState::Orphaned));
    core.send(Command::Resume(orphan));
    core.send(Command::Adopt(orphan));
    wait_for(&core, &mut events, state_is(orphan, VmState::Paused));
    core.send(Command::Resume(orphan));
    wait_for(&core, &mut events, state_is(orphan, VmState::Running));
    // The sender called it off: dropped for good, adopt refused.
    let dropped = add("dropped");
    helper.send(Internal::IncomingOrphaned { vm: dropped, why: "cancelled there".into(), dropped: true });
    wait_for(&core, &mut events, state_is(dropped, VmState::Dropped));
    core.send(Command::Adopt(dropped));
    core.send(Command::Quit);
    let report = core.run_until(None, |event| events.push(event));
    let console = |vm: usize| -> String {
        let mut bytes = Vec::new();
        for event in &events {
            if let Event::Console(batch) = event {
                batch.pieces().filter(|piece| piece.vm == vm).for_each(|piece| bytes.extend_from_slice(piece.bytes));
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    };
    assert_eq!(console(arriving).matches("refused: it is arriving").count(), 3, "{}", console(arriving));
    let text = console(orphan);
    assert!(text.contains("resume refused: its sender went silent") && text.contains("adopted"), "{text}");
    assert!(console(dropped).contains("adopt refused"), "{}", console(dropped));
    assert_eq!(report.vms[dropped].state, "dropped");
    // Nothing ran it before it was handed over or adopted.
    let states: Vec<&VmState> = events
        .iter()
        .filter_map(|event| match event {
            Event::State { vm, state } if *vm == orphan => Some(state),
            _ => None,
        })
        .collect();
    assert_eq!(states, [&VmState::Arriving, &VmState::Orphaned, &VmState::Paused, &VmState::Running]);
}
