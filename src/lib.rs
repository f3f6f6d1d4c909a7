//! matrix-tui: a KVM hypervisor that runs many small VMs on one host thread with
//! a scheduler of its own, and front ends to watch and steer them.
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod bench;
pub mod calibration;
pub mod cli;
pub mod config;
pub mod console;
pub mod control;
pub mod debug;
pub mod event;
pub mod guests;
pub mod headless;
pub mod hypercall;
pub mod lesson;
pub mod migration;
pub mod os;
pub mod record;
pub mod report;
pub mod scenario;
pub mod sched;
pub mod snapshot;
pub mod stats;
pub mod trace;
pub mod ui;
pub mod units;
pub mod vm;
