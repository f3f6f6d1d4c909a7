//! Scheduling many VMs on one thread.

/// The core thread and its loop.
pub mod core;
/// One VM: stepping it and handling its exits.
pub mod vm_runtime;

pub use self::core::{CoreHandle, VmSetupError, spawn};
pub use vm_runtime::{Step, VmRuntime};
