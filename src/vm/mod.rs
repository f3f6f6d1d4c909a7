//! Everything that touches KVM: one module per concern. Its `unsafe` is
//! KVM's (mappings, the run structure, signals into KVM_RUN); the rest of
//! the host's is the operating system's (`os/`: signals, the terminal's
//! rescue, file flags) and a few libc calls, each with its `SAFETY:`.

/// The four CPU modes a VM can start in.
pub mod cpu_mode;
/// A vCPU's register file as a debugger sees it.
pub mod cpu_state;
/// What the host honours of KVM_SET_GUEST_DEBUG, probed.
pub mod debug_probe;
/// KVM's dirty page log, for live migration.
pub mod dirty_log;
pub mod guest_debug;
/// Signal + immediate_exit kicks out of KVM_RUN.
pub mod kick;
/// The guest physical memory map.
pub mod layout;
/// ELF and flat image loading.
pub mod loader;
/// Page tables and control registers for long mode.
pub mod longmode;
/// One VM: create, run, translate.
pub mod machine;
/// Guest memory allocation and size rules.
pub mod memory;
/// Timers that end slices by kicking the core thread.
pub mod quantum_timer;
/// Saving a machine and making it again.
pub mod restore;
/// A machine as saved.
pub mod saved;
/// The core thread's seccomp filter.
pub mod seccomp;
/// Flat segments and the GDT.
pub mod segments;
/// A vCPU's whole state, as a snapshot keeps it.
pub mod vcpu_state;

pub use cpu_mode::CpuMode;
pub use cpu_state::CpuState;
pub use kick::KickTarget;
pub use loader::GuestLayout;
pub use machine::{
    CrashKind, Exit, MAX_VCPUS, Machine, MachineSpec, PortAccess, RegisterDump, SetupError, SetupStep, Vcpu,
    cpuid_for_vcpu,
};
pub use memory::GuestMemory;
pub use quantum_timer::QuantumTimer;
pub use saved::{MachineState, SavedMachine};

/// Opens /dev/kvm, or says why it cannot and what to do.
pub fn open_kvm() -> Result<kvm_ioctls::Kvm, KvmUnavailable> {
    kvm_ioctls::Kvm::new().map_err(|error| match error.errno() {
        libc::ENOENT => KvmUnavailable::Missing,
        libc::EACCES | libc::EPERM => KvmUnavailable::NoPermission,
        _ => KvmUnavailable::Other(error.to_string()),
    })
}

/// /dev/kvm cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KvmUnavailable {
    /// No device node.
    #[error(
        "/dev/kvm does not exist: this machine has no KVM; load the kvm module (kvm_intel, kvm_amd) or run on a host with virtualization enabled"
    )]
    Missing,
    /// Not allowed to open it.
    #[error(
        "no permission to open /dev/kvm: add yourself to its group (sudo usermod -aG kvm $USER, then log in again) or run as root"
    )]
    NoPermission,
    /// Anything else.
    #[error("cannot open /dev/kvm: {0}")]
    Other(String),
}
