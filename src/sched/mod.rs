//! Scheduling many VMs on one thread.

/// The core thread and its loop.
pub mod core;

pub use self::core::{CoreHandle, VmSetupError, spawn};
