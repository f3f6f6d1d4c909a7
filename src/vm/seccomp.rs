//! The seccomp filter of the core thread: once its VMs and timer exist, the
//! thread that runs guests may make only the system calls it needs. Anything
//! else fails with EPERM, so a bug reachable from a guest (a hypercall handler
//! gone wrong) cannot open a file, start a process or talk to the network.
//!
//! Allowed: KVM ioctls only (the ioctl type byte must be KVMIO, 0xAE); memory
//! (guest memory and kvm_run mappings for restarts, the allocator, mincore
//! for snapshots); futex (the
//! channels); clocks, sleeps and the quantum timers; close and exit; signal
//! return and masks; and write to stderr (a panic message).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};

/// The filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the seccomp filter of the core thread: {0}; run with --no-seccomp to go without it")]
pub struct SeccompError(String);

/// The ioctl type byte of every KVM ioctl.
const KVMIO: u64 = 0xAE;

/// Installs the filter on the calling thread (and only on it).
pub fn confine_current_thread() -> Result<(), SeccompError> {
    let error = |e: &dyn std::fmt::Display| SeccompError(e.to_string());
    let kvm_ioctls_only = SeccompRule::new(vec![
        SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(0xFF00), KVMIO << 8)
            .map_err(|e| error(&e))?,
    ])
    .map_err(|e| error(&e))?;
    let stderr_only = SeccompRule::new(vec![
        SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, 2).map_err(|e| error(&e))?,
    ])
    .map_err(|e| error(&e))?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED.iter().map(|&call| (call, Vec::new())).collect();
    rules.insert(libc::SYS_ioctl, vec![kvm_ioctls_only]);
    rules.insert(libc::SYS_write, vec![stderr_only]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        std::env::consts::ARCH.try_into().map_err(|e: seccompiler::BackendError| error(&e))?,
    )
    .map_err(|e| error(&e))?;
    let program: BpfProgram = filter.try_into().map_err(|e: seccompiler::BackendError| error(&e))?;
    seccompiler::apply_filter(&program).map_err(|e| error(&e))
}

/// System calls allowed without conditions.
const ALLOWED: &[i64] = &[
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    // Which guest pages were ever backed (a snapshot skips the others).
    libc::SYS_mincore,
    libc::SYS_mprotect,
    libc::SYS_brk,
    libc::SYS_close,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_timer_settime,
    libc::SYS_timer_gettime,
    libc::SYS_timer_delete,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_gettid,
    // sched_getcpu, where the kernel offers no rseq area.
    libc::SYS_getcpu,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confined_thread_cannot_open_files_but_can_do_its_work() {
        std::thread::spawn(|| {
            confine_current_thread().unwrap();
            let refused = std::fs::File::open("/proc/self/status").unwrap_err();
            assert_eq!(refused.raw_os_error(), Some(libc::EPERM), "{refused}");
            let not_kvm = std::net::TcpListener::bind("127.0.0.1:0").unwrap_err();
            assert_eq!(not_kvm.raw_os_error(), Some(libc::EPERM));
            // Allocation, clocks and channels still work.
            let (tx, rx) = crossbeam_channel::bounded(1);
            tx.send(vec![0u8; 1 << 20]).unwrap();
            assert_eq!(rx.recv().unwrap().len(), 1 << 20);
            assert!(crate::vm::kick::thread_cpu_ns() > 0);
        })
        .join()
        .unwrap();
        // Other threads are not confined.
        assert!(std::fs::File::open("/proc/self/status").is_ok());
    }
}
