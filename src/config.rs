//! A run's configuration: the VMs and how to schedule them, validated.

use std::sync::Arc;

use crate::vm::layout::DEFAULT_MEMORY;

/// How the core picks the next VM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// One at a time: switch to the next VM on every guest I/O exit (no timer).
    #[default]
    Io,
}

impl Policy {
    /// The name used in reports and scenarios.
    pub fn name(self) -> &'static str {
        match self {
            Self::Io => "io",
        }
    }
}

/// One VM of a run.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Its name (unique in the run).
    pub name: String,
    /// The GUEST it was given: a built-in name or a path.
    pub guest: String,
    /// The image bytes.
    pub image: Arc<[u8]>,
    /// Scheduling weight (> 0).
    pub weight: f64,
    /// Guest memory in bytes.
    pub memory_size: u64,
    /// Guest arguments.
    pub args: Vec<u64>,
}

impl VmConfig {
    /// A VM with default weight (1), memory (2 MiB) and no arguments.
    pub fn new(name: impl Into<String>, guest: impl Into<String>, image: Arc<[u8]>) -> Self {
        Self {
            name: name.into(),
            guest: guest.into(),
            image,
            weight: 1.0,
            memory_size: DEFAULT_MEMORY,
            args: Vec::new(),
        }
    }
}

/// Everything the core needs to start a run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The VMs, in order.
    pub vms: Vec<VmConfig>,
    /// The scheduling policy.
    pub policy: Policy,
}
