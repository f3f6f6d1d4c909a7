//! An incoming VM on real KVM, driven by the messages a migration's link
//! thread sends: it runs only once handed over, an orphan only once
//! adopted, a dropped copy never. (Crate-internal: no front end may send
//! these messages.)

use std::time::{Duration, Instant};

use super::*;
use crate::config::RunConfig;
use crate::event::Reply;
use crate::snapshot::{SnapshotState, VmIdentity};
use vm_memory::{Bytes as _, GuestAddress};

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
    // As a link thread does: the blank VM at Hello, its pages written
    // into its memory, then its state (a ticker's, saved here).
    let prepare = |name: &str| {
        let (reply, made) = crossbeam_channel::bounded(1);
        let (name, from) = (name.to_string(), "a test".to_string());
        helper.send(Internal::PrepareArrival { name, memory_size: 2 << 20, from, reply: Reply(reply) });
        made.recv_timeout(Duration::from_secs(15)).expect("an answer").expect("made")
    };
    let kvm = crate::vm::open_kvm().expect("this test needs /dev/kvm");
    let give_state = |vm: usize, memory: &crate::event::ArrivalMemory| {
        let config = ticker("source");
        let mut source = VmRuntime::new(&kvm, &machine_spec(&config), Default::default()).expect("a ticker");
        let (machine, runtime, pages) = source.save(&kvm, monotonic_ns(), false).expect("saved");
        for (index, page) in pages.iter() {
            memory.0.write_slice(page, GuestAddress(index * 4096)).expect("inside its memory");
        }
        let identity =
            VmIdentity { name: "source".into(), guest: "ticker".into(), weight: 1.0, ports: vec![], show_ports: false };
        let state = Box::new(SnapshotState { vm: identity, machine, runtime });
        let (reply, taken) = crossbeam_channel::bounded(1);
        helper.send(Internal::ArrivalState { vm, state, rounds: 1, pages: pages.len() as u64, reply: Reply(reply) });
        taken.recv_timeout(Duration::from_secs(15)).expect("an answer").expect("taken");
    };
    let add = |name: &str| {
        let (vm, memory) = prepare(name);
        give_state(vm, &memory);
        vm
    };
    let state_is = |vm: usize, state: VmState| move |event: &Event| matches!(event, Event::State { vm: v, state: s } if *v == vm && *s == state);
    let go = |vm: usize| {
        let (reply, _downtime) = crossbeam_channel::bounded(1);
        helper.send(Internal::StartIncoming { vm, last_slice_ns: 0, paused: false, report: Reply(reply) });
    };
    // Arriving: every command but quit refused; a Go before its state does
    // nothing (a blank machine never runs); the Go after it runs it.
    let (arriving, memory) = prepare("arriving");
    wait_for(&core, &mut events, state_is(arriving, VmState::Arriving));
    for command in [Command::Resume(arriving), Command::Step { vm: arriving, vcpu: None }, Command::Restart(arriving)] {
        core.send(command);
    }
    go(arriving);
    give_state(arriving, &memory);
    go(arriving);
    wait_for(&core, &mut events, state_is(arriving, VmState::Running));
    // It runs the ticker it was given (its count goes on from the saved one).
    wait_for(
        &core,
        &mut events,
        |event| matches!(event, Event::Console(batch) if batch.pieces().any(|piece| piece.vm == arriving && piece.bytes.starts_with(b"1"))),
    );
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
    let states_of = |of: usize| -> Vec<&VmState> {
        let states = events.iter().filter_map(|event| match event {
            Event::State { vm, state } if *vm == of => Some(state),
            _ => None,
        });
        states.collect()
    };
    assert_eq!(states_of(arriving)[..2], [&VmState::Arriving, &VmState::Running], "the early Go did not run it");
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
    assert_eq!(states_of(orphan), [&VmState::Arriving, &VmState::Orphaned, &VmState::Paused, &VmState::Running]);
}
