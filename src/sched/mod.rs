//! Scheduling many VMs on one thread.

/// Moving VMs between cores to even their load and lag.
pub mod balance;
/// Kicks armed early by their measured latency.
pub mod compensation;
/// The core thread and its loop.
pub mod core;
/// Slice deadlines on one periodic timer.
pub mod deadlines;
/// Strict gang scheduling: the windows in which a VM's vCPUs run together.
pub mod gang;
/// Which VM runs next, and for how long.
pub mod policy;
/// The machine's shares over several cores, and where VMs start.
pub mod shares;
/// Time the host took the CPU away from the core thread.
pub mod stolen;
/// One vCPU of a VM as the scheduler keeps it.
pub mod vcpu_runtime;
/// A VM's virtual timer and its ticks.
pub mod virtual_timer;
/// One VM: stepping it and handling its exits.
pub mod vm_runtime;

pub(crate) use self::core::Commander;
pub use self::core::{CoreHandle, SpawnError, VmSetupError, spawn};
pub use vm_runtime::{RunSpan, Step, VmRuntime};
