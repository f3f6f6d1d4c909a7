//! One guest: a KVM VM with its vCPUs in its CPU mode, its memory and its image.
//! The VM's and vCPU's setup and KVM_RUN are here (the saved state, the
//! dirty log and the debug probe have modules of their own beside it);
//! [`Vcpu::run`] turns what KVM_RUN returns into our own [`Exit`], so
//! nothing outside `vm/` sees KVM types.

use std::ptr;
use std::sync::{Arc, OnceLock};

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, kvm_guest_debug, kvm_guest_debug_arch, kvm_run, kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, Kvm, SyncReg, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend as _};

use super::cpu_mode::CpuMode;
use super::cpu_state::CpuState;
use super::guest_debug::{DebugExit, GuestDebug};
use super::kick::KickTarget;
use super::layout::{self, MAX_GUEST_ARGS, PlacementError, Structure, SystemArea};
use super::loader::{self, GuestLayout, LoadError};
use super::memory::{self, GuestMemory, MemorySizeError};

/// Setting up a VM failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The memory size breaks the guest ABI.
    #[error(transparent)]
    MemorySize(#[from] MemorySizeError),
    /// The image cannot be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The image leaves the hypervisor's structures no room.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// A vCPU count out of range, or more stacks than the memory holds.
    #[error(
        "a VM has 1 to {MAX_VCPUS} vCPUs, each with a 16 KiB stack in the top half of its memory; {0} vCPUs do not \
         fit: give fewer, or more memory"
    )]
    Vcpus(u32),
    /// Too many guest arguments.
    #[error("a guest takes at most {MAX_GUEST_ARGS} arguments, got {0}")]
    TooManyArgs(usize),
    /// The host could not map guest memory.
    #[error("{0}")]
    Memory(std::io::Error),
    /// The process may open no more files (each VM holds a VM fd and one per vCPU).
    #[error(
        "KVM refused {what}: this process may open no more files (each VM holds one and one per vCPU); \
         raise the limit (`ulimit -n`, at most `ulimit -Hn`) or run fewer VMs or vCPUs"
    )]
    OutOfFiles {
        /// The step that failed.
        what: &'static str,
    },
    /// This host's KVM did not take the mode's control registers.
    #[error(
        "this host's KVM does not run {mode} mode: it kept CR0 = 0x{kept_cr0:x} when given 0x{asked_cr0:x} \
         (KVM emulators without legacy paging, such as kvm_pvm, refuse CR0.PG outside long mode); run the guest \
         in protected mode (mode = \"protected\"), or on a host with hardware KVM (VMX or SVM)"
    )]
    ModeUnsupported {
        /// The mode's name.
        mode: &'static str,
        /// The CR0 given.
        asked_cr0: u64,
        /// The CR0 KVM kept.
        kept_cr0: u64,
    },
    /// KVM would not take a snapshot's vCPU state.
    #[error("cannot restore the snapshot on this host: {0}")]
    Restore(#[from] super::vcpu_state::VcpuStateError),
    /// A KVM ioctl failed while creating the VM.
    #[error("KVM refused {what}: {source}")]
    Kvm {
        /// The step that failed.
        what: &'static str,
        /// The error KVM returned.
        source: kvm_ioctls::Error,
    },
}

/// Runs one setup ioctl. VMs are also created on the core thread (restarts),
/// where kick signals arrive and interrupt ioctls with EINTR: those are retried.
pub(super) fn setup_ioctl<T>(
    what: &'static str,
    mut call: impl FnMut() -> Result<T, kvm_ioctls::Error>,
) -> Result<T, SetupError> {
    loop {
        match call() {
            Err(error) if error.errno() == libc::EINTR => continue,
            Err(error) if error.errno() == libc::EMFILE => return Err(SetupError::OutOfFiles { what }),
            result => return result.map_err(|source| SetupError::Kvm { what, source }),
        }
    }
}

/// What a guest needs to start: its image, memory size and arguments.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    /// The guest image (ELF or flat).
    pub image: Arc<[u8]>,
    /// Guest memory in bytes.
    pub memory_size: u64,
    /// Guest arguments written at 0x500.
    pub args: Vec<u64>,
    /// CPU mode, load address and entry.
    pub layout: GuestLayout,
    /// A saved machine to bring back instead (the image, arguments and
    /// layout are then those it was made with, already in its memory).
    pub restore: Option<Arc<super::saved::SavedMachine>>,
    /// Its virtual CPUs, 1 to [`MAX_VCPUS`].
    pub vcpus: u32,
}

/// The most vCPUs a VM may have.
pub const MAX_VCPUS: u32 = 64;

/// Each vCPU after the first starts with its stack this much below the
/// previous one's (in real mode, below the previous one's in the segment,
/// [`REAL_MODE_STACK_BYTES`] apart): 64 vCPUs' stacks take the top MiB of
/// the smallest memory, leaving the image and a guest's data below.
pub const VCPU_STACK_BYTES: u64 = 16 * 1024;
/// Stacks of real-mode vCPUs share their 64 KiB segment.
pub const REAL_MODE_STACK_BYTES: u64 = 1024;

/// A port access width and count, as the vCPU made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortAccess {
    /// Bytes per access: 1, 2 or 4.
    pub size: u8,
    /// Repetitions (more than 1 for string I/O such as `rep outsb`).
    pub count: u32,
}

/// Why a VM crashed, as KVM reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrashKind {
    /// KVM_EXIT_SHUTDOWN: a triple fault.
    TripleFault,
    /// KVM_EXIT_FAIL_ENTRY with the hardware's reason.
    FailedEntry(u64),
    /// KVM_EXIT_INTERNAL_ERROR with its suberror (1 is an emulation failure).
    InternalError(u32),
    /// An exit this hypervisor has no use for.
    UnexpectedExit(String),
    /// KVM_RUN itself failed.
    RunFailed(String),
}

impl std::fmt::Display for CrashKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TripleFault => write!(f, "triple fault (KVM_EXIT_SHUTDOWN)"),
            Self::FailedEntry(reason) => {
                write!(f, "VM entry failed (hardware reason 0x{reason:x})")
            }
            Self::InternalError(1) => {
                write!(f, "KVM internal error: emulation failure (suberror 1)")
            }
            Self::InternalError(sub) => write!(f, "KVM internal error (suberror {sub})"),
            Self::UnexpectedExit(what) => write!(f, "unexpected exit: {what}"),
            Self::RunFailed(what) => write!(f, "KVM_RUN failed: {what}"),
        }
    }
}

/// What the vCPU did that needs the hypervisor.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit<'a> {
    /// `out` to `port`; `value` holds the first access's bytes (little-endian).
    Out {
        /// The port.
        port: u16,
        /// Width and count.
        access: PortAccess,
        /// The value written (the first one, for string I/O).
        value: u32,
    },
    /// `in` from `port`: fill `data` before the next run.
    In {
        /// The port.
        port: u16,
        /// Width and count.
        access: PortAccess,
        /// Where the value read goes.
        data: &'a mut [u8],
    },
    /// HLT; `interrupts_on` when RFLAGS.IF was set (the guest waits for an
    /// interrupt rather than ending).
    Hlt {
        /// RFLAGS.IF at the exit.
        interrupts_on: bool,
    },
    /// MMIO outside guest memory; reads get `data` filled (all ones by default).
    Mmio {
        /// Guest physical address.
        address: u64,
        /// Whether it was a write.
        write: bool,
        /// For reads, the bytes returned to the guest.
        data: Option<&'a mut [u8]>,
    },
    /// KVM_RUN returned EINTR: a kick, or a signal for another reason.
    Interrupted,
    /// A debug exit, with guest debugging on (a step, a debug register, int3).
    Debug(DebugExit),
    /// The VM cannot go on.
    Crash(CrashKind),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[allow(missing_docs)]
/// A VM's registers at its end (a halt or a crash).
pub struct RegisterDump {
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

impl RegisterDump {
    /// The general registers in the width the mode the vCPU is in uses
    /// (rax in long mode, eax in the others: a course checks eax = 42),
    /// the accumulator also in decimal.
    pub fn describe(&self) -> String {
        const LMA: u64 = 1 << 10;
        let (prefix, mask) = if self.efer & LMA != 0 { ('r', u64::MAX) } else { ('e', 0xffff_ffff) };
        let named = [
            ("ip", self.rip),
            ("sp", self.rsp),
            ("bx", self.rbx),
            ("cx", self.rcx),
            ("dx", self.rdx),
            ("si", self.rsi),
            ("di", self.rdi),
        ];
        let mut text = format!("{prefix}ax={} (0x{:x})", self.rax & mask, self.rax & mask);
        for (name, value) in named {
            text.push_str(&format!(" {prefix}{name}=0x{:x}", value & mask));
        }
        text
    }
}

/// A VM's vCPU: the half of a [`Machine`] that runs.
pub struct Vcpu {
    fd: VcpuFd,
    /// KVM copies the registers into kvm_run at each exit (KVM_CAP_SYNC_REGS).
    syncs_registers: bool,
    /// At the last exit the vCPU could take an interrupt: KVM was ready to
    /// inject one and RFLAGS.IF was set (KVM_INTERRUPT with IF clear is
    /// accepted and delivered anyway, so IF is checked here).
    can_take_interrupt: bool,
}

/// A guest ready to run: the VM, its vCPUs and its memory.
///
/// Fields drop in order: the vCPU and VM fds close before guest memory is unmapped.
pub struct Machine {
    /// Its vCPUs, by index (run each with [`Vcpu::run`]); the first is the
    /// bootstrap vCPU, the one a snapshot, a migration and gdb serve.
    pub vcpus: Vec<Vcpu>,
    pub(super) _vm: VmFd,
    /// Guest memory.
    pub memory: GuestMemory,
    pub(super) memory_size: u64,
    /// The CPU mode it started in.
    pub mode: CpuMode,
    /// Where the hypervisor's structures lie in its memory.
    pub area: SystemArea,
    /// Where the image lies and where it was entered.
    pub image: loader::LoadedImage,
    /// How the machine was set up, step by step, and how long each took.
    pub setup: Vec<SetupStep>,
    /// What a restored snapshot's vCPU could not get back as it was saved.
    pub restore_notes: crate::vm::vcpu_state::RestoreNotes,
}

/// One step of setting up a VM (the flowchart of docs/architecture.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupStep {
    /// What was done.
    pub what: &'static str,
    /// With which ioctls (or other calls).
    pub how: &'static str,
    /// How long it took.
    pub ns: u64,
}

/// Times the steps of [`Machine::new`] one after another.
pub(super) struct SetupTimer {
    last: std::time::Instant,
    pub(super) steps: Vec<SetupStep>,
}

impl Default for SetupTimer {
    fn default() -> Self {
        Self { last: std::time::Instant::now(), steps: Vec::with_capacity(8) }
    }
}

impl SetupTimer {
    pub(super) fn done(&mut self, what: &'static str, how: &'static str) {
        let now = std::time::Instant::now();
        self.steps.push(SetupStep { what, how, ns: (now - self.last).as_nanos() as u64 });
        self.last = now;
    }
}

impl Machine {
    /// Creates the VM, maps memory, loads the image, writes the arguments and
    /// puts the vCPU in its mode at the image's entry point.
    pub fn new(kvm: &Kvm, spec: &MachineSpec) -> Result<Self, SetupError> {
        if let Some(saved) = &spec.restore {
            return Self::restore(kvm, saved);
        }
        let mode = spec.layout.mode;
        let memory_size = memory::check_size(spec.memory_size)?;
        if spec.args.len() > MAX_GUEST_ARGS {
            return Err(SetupError::TooManyArgs(spec.args.len()));
        }
        let mut timer = SetupTimer::default();
        let memory = memory::allocate(memory_size).map_err(SetupError::Memory)?;
        timer.done("allocate guest memory", "mmap");
        let image = loader::load(&memory, memory_size, &spec.image, spec.layout)?;
        let area =
            layout::place(mode.structures(), image.span.clone(), mode.reach(memory_size), !spec.args.is_empty())?;
        mode.write_tables(&memory, memory_size, area).expect("placed inside guest memory");
        write_args(&memory, area.start(Structure::Args), &spec.args);
        timer.done(mode.tables_step(), "memory writes");

        let vcpus = check_vcpus(spec.vcpus, memory_size)?;
        let (vm, fds) = create_vm(kvm, &memory, memory_size, vcpus, &mut timer)?;
        for (index, fd) in fds.iter().enumerate() {
            let sregs = setup_ioctl("to read special registers (KVM_GET_SREGS)", || fd.get_sregs())?;
            let sregs = mode.special_registers(sregs, area, image.entry);
            setup_ioctl("to set the CPU mode (KVM_SET_SREGS)", || fd.set_sregs(&sregs))?;
            if mode == CpuMode::Paged32 {
                // Some KVMs drop CR0.PG outside long mode without an error; the
                // guest would triple-fault at its first instruction.
                let kept = setup_ioctl("to read special registers (KVM_GET_SREGS)", || fd.get_sregs())?;
                if kept.cr0 != sregs.cr0 {
                    return Err(SetupError::ModeUnsupported {
                        mode: mode.name(),
                        asked_cr0: sregs.cr0,
                        kept_cr0: kept.cr0,
                    });
                }
            }
            if index == 0 {
                timer.done(mode.setup_step(), "KVM_GET_SREGS, KVM_SET_SREGS");
            }
            let regs = stacked(mode.initial_registers(image.entry, memory_size), mode, index as u64);
            setup_ioctl("to set registers (KVM_SET_REGS)", || fd.set_regs(&regs))?;
        }
        timer.done(
            match (mode, vcpus) {
                (CpuMode::Real, 1) => "ip at the entry, sp 0 (top of the segment)",
                (_, 1) => "rip at the entry, rsp at the top",
                (CpuMode::Real, _) => "each vCPU: ip at the entry, sp 1 KiB below the previous one's",
                _ => "each vCPU: rip at the entry, rsp 16 KiB below the previous one's",
            },
            "KVM_SET_REGS",
        );
        Ok(Self {
            vcpus: fds.into_iter().map(|fd| Vcpu::new(kvm, fd)).collect(),
            _vm: vm,
            memory,
            memory_size,
            mode,
            area,
            image,
            setup: timer.steps,
            restore_notes: Default::default(),
        })
    }

    /// The bootstrap vCPU (index 0): the one a snapshot, a migration and
    /// gdb serve, which take VMs of one vCPU.
    pub fn boot_vcpu(&self) -> &Vcpu {
        &self.vcpus[0]
    }

    /// The bootstrap vCPU, to change.
    pub fn boot_vcpu_mut(&mut self) -> &mut Vcpu {
        &mut self.vcpus[0]
    }

    /// Its mode, where its image lies and where it starts, in a line:
    /// `real mode · image 0x0..0x42 · entered at 0:0 (CS:IP)`.
    pub fn summary(&self) -> String {
        let span = &self.image.span;
        let entry = self.image.entry;
        let entered = match self.mode {
            CpuMode::Real => {
                let segment = super::cpu_mode::real_mode_segment(entry);
                format!("entered at 0x{segment:x}:0x{:x} (CS:IP)", entry & 0xffff)
            }
            _ => format!("entered at 0x{entry:x}"),
        };
        let moved = match self.area.shift {
            0 => String::new(),
            shift => format!(" · its structures moved up 0x{shift:x}"),
        };
        format!("{} mode · image 0x{:x}..0x{:x} · {entered}{moved}", self.mode.name(), span.start, span.end)
    }

    /// Guest memory size in bytes.
    pub fn memory_size(&self) -> u64 {
        self.memory_size
    }

    /// The host virtual address backing guest physical address `gpa`, if it is
    /// inside guest memory.
    pub fn host_address(&self, gpa: u64) -> Option<u64> {
        self.memory.get_host_address(GuestAddress(gpa)).ok().map(|ptr| ptr as u64)
    }
}

/// Checks a VM's vCPU count against [`MAX_VCPUS`] and the stacks its
/// memory must hold (half of it at most).
fn check_vcpus(vcpus: u32, memory_size: u64) -> Result<u32, SetupError> {
    if !(1..=MAX_VCPUS).contains(&vcpus) || u64::from(vcpus) * VCPU_STACK_BYTES > memory_size / 2 {
        return Err(SetupError::Vcpus(vcpus));
    }
    Ok(vcpus)
}

/// `regs` (vCPU 0's) for vCPU `index`: its stack below its elders'.
fn stacked(mut regs: kvm_bindings::kvm_regs, mode: CpuMode, index: u64) -> kvm_bindings::kvm_regs {
    regs.rsp = match mode {
        // SP 0 is the top of the segment: the first push lands at 0xFFFE.
        CpuMode::Real => (0x1_0000 - index * REAL_MODE_STACK_BYTES) & 0xffff,
        _ => regs.rsp - index * VCPU_STACK_BYTES,
    };
    regs
}

/// What CPUID tells vCPU `index` of itself: `entries` with its initial
/// APIC id (leaf 1, EBX bits 31-24) and x2APIC id (leaves 0xB and 0x1F,
/// EDX) set to its index, the way hardware tells a CPU who it is.
pub fn cpuid_for_vcpu(entries: &[kvm_bindings::kvm_cpuid_entry2], index: u32) -> Vec<kvm_bindings::kvm_cpuid_entry2> {
    entries
        .iter()
        .map(|entry| {
            let mut entry = *entry;
            match entry.function {
                1 => entry.ebx = (entry.ebx & 0x00ff_ffff) | (index << 24),
                0xb | 0x1f => entry.edx = index,
                _ => {}
            }
            entry
        })
        .collect()
}

/// Creates the VM over `memory` and its `vcpus` vCPUs, each with the host's
/// CPUID telling it its index: the steps every machine shares, new or restored.
pub(super) fn create_vm(
    kvm: &Kvm,
    memory: &GuestMemory,
    memory_size: u64,
    vcpus: u32,
    timer: &mut SetupTimer,
) -> Result<(VmFd, Vec<VcpuFd>), SetupError> {
    let vm = setup_ioctl("to create a VM (KVM_CREATE_VM)", || kvm.create_vm())?;
    timer.done("create the VM", "KVM_CREATE_VM");
    let region = memory.iter().next().expect("one region");
    let slot = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size,
        userspace_addr: region.as_ptr() as u64,
        flags: 0,
    };
    setup_ioctl("to map guest memory (KVM_SET_USER_MEMORY_REGION)", || {
        // SAFETY: the region is a live mapping of `memory_size` bytes owned by
        // `memory`, which the Machine keeps until after the VM fd has closed
        // (see the field order of Machine).
        unsafe { vm.set_user_memory_region(slot) }
    })?;
    timer.done("register guest memory as slot 0", "KVM_SET_USER_MEMORY_REGION");
    let mut fds = Vec::with_capacity(vcpus as usize);
    for index in 0..vcpus {
        fds.push(setup_ioctl("to create a vCPU (KVM_CREATE_VCPU)", || vm.create_vcpu(u64::from(index)))?);
    }
    timer.done(
        if vcpus == 1 { "create the vCPU, map kvm_run" } else { "create the vCPUs, map each kvm_run" },
        "KVM_CREATE_VCPU",
    );
    let cpuid = supported_cpuid(kvm)?;
    for (index, fd) in fds.iter().enumerate() {
        // The host's list carries the APIC id of the host CPU that asked for
        // it (0 or 1 here, as the thread ran): every vCPU is told its own.
        let own = cpuid_for_vcpu(cpuid.as_slice(), index as u32);
        let own = CpuId::from_entries(&own).expect("no more entries than the host's list");
        setup_ioctl("to set CPUID (KVM_SET_CPUID2)", || fd.set_cpuid2(&own))?;
    }
    if GIVEN.get().is_none() {
        let given = setup_ioctl("to read CPUID (KVM_GET_CPUID2)", || fds[0].get_cpuid2(KVM_MAX_CPUID_ENTRIES))?;
        let _ = GIVEN.set(given.as_slice().to_vec());
    }
    timer.done(
        if vcpus == 1 { "give it the host's CPUID" } else { "give each the host's CPUID and its APIC id" },
        "KVM_SET_CPUID2",
    );
    Ok((vm, fds))
}

static SUPPORTED: OnceLock<CpuId> = OnceLock::new();

/// The CPUID a vCPU of this process holds once made (KVM_GET_CPUID2 of the
/// first): KVM fills in more than the supported list it was given.
static GIVEN: OnceLock<Vec<kvm_bindings::kvm_cpuid_entry2>> = OnceLock::new();

/// The CPUID every vCPU of this process holds once [`create_vm`] made it
/// (empty before the first).
pub(super) fn given_cpuid() -> &'static [kvm_bindings::kvm_cpuid_entry2] {
    GIVEN.get().map_or(&[], Vec::as_slice)
}

/// The host's supported CPUID, asked of KVM once per process: it cannot
/// change while we run, and asking costs about 0.6 ms here (every leaf is a
/// trapped CPUID on this nested host), a third of setting up a small VM.
fn supported_cpuid(kvm: &Kvm) -> Result<&'static CpuId, SetupError> {
    if let Some(cpuid) = SUPPORTED.get() {
        return Ok(cpuid);
    }
    let cpuid =
        setup_ioctl("to report CPUID (KVM_GET_SUPPORTED_CPUID)", || kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES))?;
    Ok(SUPPORTED.get_or_init(|| cpuid))
}

fn write_args(memory: &GuestMemory, at: u64, args: &[u64]) {
    memory.write_obj(args.len() as u64, GuestAddress(at)).expect("the argument block is in memory");
    for (index, value) in args.iter().enumerate() {
        memory.write_obj(*value, GuestAddress(at + 8 + index as u64 * 8)).expect("the argument block is in memory");
    }
}

impl Vcpu {
    /// Wraps a set-up vCPU. With KVM_CAP_SYNC_REGS, KVM copies the general
    /// registers into kvm_run on every exit, so each exit's rip costs no
    /// extra ioctl.
    pub(super) fn new(kvm: &Kvm, mut fd: VcpuFd) -> Self {
        let syncs_registers = kvm.check_extension(Cap::SyncRegs);
        if syncs_registers {
            fd.set_sync_valid_reg(SyncReg::Register);
        }
        Self { fd, syncs_registers, can_take_interrupt: false }
    }

    /// A vCPU of the same VM made later (`fd`), set up as this one was.
    pub(super) fn sibling(&self, mut fd: VcpuFd) -> Self {
        if self.syncs_registers {
            fd.set_sync_valid_reg(SyncReg::Register);
        }
        Self { fd, syncs_registers: self.syncs_registers, can_take_interrupt: false }
    }

    /// Its fd, for saving and restoring its state.
    pub(super) fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Runs the vCPU until it exits, unless a kick is already due (then
    /// [`Exit::Interrupted`] at once); also returns the guest's rip at the
    /// exit (0 where the host does not sync registers into kvm_run). The core
    /// thread must be attached to `kick`.
    pub fn run(&mut self, kick: &KickTarget) -> (Exit<'_>, u64) {
        let run: *mut kvm_run = self.fd.get_kvm_run();
        // SAFETY: `run` is this vCPU's kvm_run mapping, alive as long as `self`;
        // the caller runs on the thread attached to `kick`, and both ways out
        // of this function disarm before the mapping could go away.
        if unsafe { kick.arm(run) } {
            kick.disarm();
            return (Exit::Interrupted, 0);
        }
        let result = self.fd.run();
        // From here on the handler must not touch this mapping: the VM may be
        // dropped (a restart, the end of the run) before the next arm. A kick
        // that lands after this point is caught by `arm`'s check of the flags.
        kick.disarm();
        // SAFETY: KVM_RUN has returned, so the kernel is done writing kvm_run;
        // the union members read are plain integers, meaningful for the exits
        // that use them (IO, INTERNAL_ERROR) and ignored for the others.
        let details = unsafe { ExitDetails::read(run) };
        let rip = if self.syncs_registers { details.rip } else { 0 };
        // Valid after every KVM_RUN, an interrupted one included.
        self.can_take_interrupt = details.ready_for_interrupt && details.if_flag;
        let exit = match result {
            Ok(exit) => translate_exit(exit, details),
            Err(error) if error.errno() == libc::EINTR || error.errno() == libc::EAGAIN => Exit::Interrupted,
            Err(error) => Exit::Crash(CrashKind::RunFailed(error.to_string())),
        };
        (exit, rip)
    }

    /// Whether the vCPU could take an interrupt at its last exit.
    pub fn can_take_interrupt(&self) -> bool {
        self.can_take_interrupt
    }

    /// KVM_INTERRUPT: queues external interrupt `vector` for the next entry
    /// (userspace irqchip). Call it only when [`Self::can_take_interrupt`]:
    /// KVM delivers it even with interrupts off, and a second one before the
    /// next KVM_RUN replaces the first.
    pub fn inject(&mut self, vector: u8) -> std::io::Result<()> {
        /// _IOW(KVMIO, 0x86, struct kvm_interrupt)
        const KVM_INTERRUPT: libc::c_ulong = 0x4004_ae86;
        let interrupt = kvm_bindings::kvm_interrupt { irq: u32::from(vector) };
        // SAFETY: the fd is this vCPU's; KVM_INTERRUPT reads one
        // `struct kvm_interrupt`, which `interrupt` is, alive for the call.
        let result =
            unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&self.fd), KVM_INTERRUPT, &interrupt as *const _) };
        if result == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
    }

    /// Asks KVM to exit as soon as the guest can take an interrupt
    /// (KVM_EXIT_IRQ_WINDOW_OPEN), or not to.
    pub fn request_interrupt_window(&mut self, on: bool) {
        self.fd.get_kvm_run().request_interrupt_window = u8::from(on);
    }

    /// The vCPU's fd, for the guest-debug probe (`guest_debug`), which runs
    /// its own VMs on the calling thread before any core starts.
    pub(super) fn fd_mut(&mut self) -> &mut VcpuFd {
        &mut self.fd
    }

    /// Completes what the last exit left pending (the value of an `in`
    /// reaches the guest's rax only when KVM_RUN is entered again) without
    /// running guest code: KVM_RUN with `immediate_exit` set, as the KVM API
    /// says to do before saving a vCPU's state. Registers read afterwards are
    /// as they are after the exit.
    pub fn complete_pending_exit(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        // EINTR is the expected answer; any other error shows in the next run.
        let _ = self.fd.run();
        self.fd.set_kvm_immediate_exit(0);
    }

    /// KVM_TRANSLATE: the guest physical address that `gva` maps to, or None
    /// when the guest's page tables do not map it.
    pub fn translate(&self, gva: u64) -> Option<u64> {
        match self.fd.translate_gva(gva) {
            Ok(translation) if translation.valid != 0 => Some(translation.physical_address),
            _ => None,
        }
    }

    /// The data segment's base (0 where it cannot be read): real-mode
    /// pointers are offsets in it.
    pub fn data_segment_base(&self) -> u64 {
        self.fd.get_sregs().map_or(0, |sregs| sregs.ds.base)
    }

    /// KVM_SET_GUEST_DEBUG: steps, debug registers and int3 interception as
    /// `debug` says (all off when it is the default).
    pub fn set_guest_debug(&mut self, debug: &GuestDebug) -> Result<(), kvm_ioctls::Error> {
        let settings = kvm_guest_debug {
            control: debug.control(),
            arch: kvm_guest_debug_arch { debugreg: debug.debugreg() },
            ..Default::default()
        };
        self.fd.set_guest_debug(&settings)
    }

    /// Every register a debugger shows (KVM_GET_REGS, KVM_GET_SREGS, KVM_GET_FPU).
    pub fn cpu_state(&self) -> Result<CpuState, kvm_ioctls::Error> {
        Ok(CpuState::from_kvm(&self.fd.get_regs()?, &self.fd.get_sregs()?, &self.fd.get_fpu()?))
    }

    /// Writes what a debugger changed (see [`CpuState`] for which registers).
    pub fn set_cpu_state(&mut self, state: &CpuState) -> Result<(), kvm_ioctls::Error> {
        let (mut regs, mut sregs, mut fpu) = (self.fd.get_regs()?, self.fd.get_sregs()?, self.fd.get_fpu()?);
        state.apply(&mut regs, &mut sregs, &mut fpu);
        self.fd.set_regs(&regs)?;
        self.fd.set_sregs(&sregs)?;
        self.fd.set_fpu(&fpu)
    }

    /// The registers to show for a crash (zeros for what cannot be read).
    pub fn registers(&self) -> RegisterDump {
        let regs = self.fd.get_regs().unwrap_or_default();
        let sregs = self.fd.get_sregs().unwrap_or_default();
        RegisterDump {
            rip: regs.rip,
            rsp: regs.rsp,
            rflags: regs.rflags,
            rax: regs.rax,
            rbx: regs.rbx,
            rcx: regs.rcx,
            rdx: regs.rdx,
            rsi: regs.rsi,
            rdi: regs.rdi,
            cr0: sregs.cr0,
            cr2: sregs.cr2,
            cr3: sregs.cr3,
            cr4: sregs.cr4,
            efer: sregs.efer,
        }
    }
}

/// The parts of kvm_run that kvm-ioctls does not pass on.
#[derive(Debug, Clone, Copy, Default)]
struct ExitDetails {
    io_size: u8,
    io_count: u32,
    internal_suberror: u32,
    /// From the synced registers (meaningful only with KVM_SYNC_X86_REGS).
    rip: u64,
    /// KVM could inject an interrupt now.
    ready_for_interrupt: bool,
    /// RFLAGS.IF.
    if_flag: bool,
}

impl ExitDetails {
    /// # Safety
    /// `run` must point at a live kvm_run that the kernel is not writing.
    unsafe fn read(run: *const kvm_run) -> Self {
        // SAFETY: per the contract; every member read is a plain integer.
        unsafe {
            let exit = ptr::addr_of!((*run).__bindgen_anon_1);
            let rip = ptr::addr_of!((*run).s.regs.regs.rip).read_unaligned();
            Self {
                io_size: (*exit).io.size,
                io_count: (*exit).io.count,
                internal_suberror: (*exit).internal.suberror,
                rip,
                ready_for_interrupt: ptr::addr_of!((*run).ready_for_interrupt_injection).read() != 0,
                if_flag: ptr::addr_of!((*run).if_flag).read() != 0,
            }
        }
    }
}

/// Turns KVM's exit into ours.
fn translate_exit(exit: VcpuExit<'_>, details: ExitDetails) -> Exit<'_> {
    match exit {
        VcpuExit::IoOut(port, data) => {
            let access = PortAccess { size: details.io_size, count: details.io_count };
            let mut value = [0u8; 4];
            let first = usize::from(access.size).min(data.len()).min(4);
            value[..first].copy_from_slice(&data[..first]);
            Exit::Out { port, access, value: u32::from_le_bytes(value) }
        }
        VcpuExit::IoIn(port, data) => {
            Exit::In { port, access: PortAccess { size: details.io_size, count: details.io_count }, data }
        }
        VcpuExit::Hlt => Exit::Hlt { interrupts_on: details.if_flag },
        // Asked for with a tick pending: the tick goes in at the next entry.
        VcpuExit::IrqWindowOpen => Exit::Interrupted,
        VcpuExit::MmioWrite(address, _) => Exit::Mmio { address, write: true, data: None },
        VcpuExit::MmioRead(address, data) => Exit::Mmio { address, write: false, data: Some(data) },
        VcpuExit::Intr => Exit::Interrupted,
        VcpuExit::Debug(arch) => Exit::Debug(DebugExit { exception: arch.exception, pc: arch.pc, dr6: arch.dr6 }),
        VcpuExit::Shutdown => Exit::Crash(CrashKind::TripleFault),
        VcpuExit::FailEntry(reason, _) => Exit::Crash(CrashKind::FailedEntry(reason)),
        VcpuExit::InternalError => Exit::Crash(CrashKind::InternalError(details.internal_suberror)),
        other => Exit::Crash(CrashKind::UnexpectedExit(format!("{other:?}"))),
    }
}
