//! Kicking the core thread out of KVM_RUN, race-free.
//!
//! The KVM API: "immediate_exit: polled once when KVM_RUN starts; if non-zero,
//! KVM_RUN exits immediately, returning -EINTR. In the common scenario where a
//! signal is used to 'kick' a VCPU out of KVM_RUN, this field can be used to
//! avoid usage of KVM_SET_SIGNAL_MASK, which has worse scalability. Rather than
//! blocking the signal outside KVM_RUN, userspace can set up a signal handler
//! that sets run->immediate_exit to a non-zero value."
//!
//! So a kick is: raise a flag ([`KickTarget::request`] or a passed slice
//! deadline), then send [`kick_signal`] to the core thread. The handler runs *on
//! the core thread*, so it writes `immediate_exit` of whichever vCPU that thread is
//! about to run without racing it. Before each KVM_RUN the core thread
//! ([`KickTarget::arm`]) publishes the vCPU's `kvm_run`, clears `immediate_exit`,
//! and only then checks the flags, so a kick landing at any point before the
//! ioctl still stops it. A timer signal that belongs to an earlier slice finds
//! the new slice's deadline still ahead and sets nothing: it can cost one
//! re-entry (an `EINTR`), never a slice.
//!
//! The handler finds its target through a thread-local (set by
//! [`KickTarget::attach`]), as Firecracker's vCPU threads do, so several core
//! threads can live in one process (the test suite runs many at once).

use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Once};

use kvm_bindings::kvm_run;

/// The real-time signal used for kicks (SIGRTMIN, as Firecracker uses).
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

thread_local! {
    /// The kick target of the core thread this is, or null.
    static ATTACHED: Cell<*const KickTarget> = const { Cell::new(ptr::null()) };
}

/// Monotonic nanoseconds since boot: the clock slice deadlines are in.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own; it is async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// CPU time of the calling thread, in ns: what it really ran, without the time
/// the host scheduler gave its CPU to someone else.
pub fn thread_cpu_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Shared between the core thread (which runs vCPUs) and anything that kicks it.
#[derive(Debug)]
pub struct KickTarget {
    /// The `kvm_run` of the vCPU the core thread runs next (or is running).
    run: AtomicPtr<kvm_run>,
    /// Set by [`KickTarget::request`]: the core thread has work outside KVM_RUN.
    requested: AtomicBool,
    /// Monotonic ns at which the current slice ends (`u64::MAX`: no deadline).
    deadline_ns: AtomicU64,
    /// Kernel thread id of the core thread (0 until attached).
    tid: AtomicI32,
    /// The CPU the core thread last ran a slice on (-1: not known yet).
    cpu: AtomicI32,
}

impl KickTarget {
    /// A target not yet attached to any thread.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            run: AtomicPtr::new(ptr::null_mut()),
            requested: AtomicBool::new(false),
            deadline_ns: AtomicU64::new(u64::MAX),
            tid: AtomicI32::new(0),
            cpu: AtomicI32::new(-1),
        })
    }

    /// Makes the calling thread the one this target kicks, installing the
    /// process's signal handler on first use. Kicks stop reaching the thread when
    /// the returned guard drops.
    pub fn attach(self: &Arc<Self>) -> Attachment {
        install_handler();
        ATTACHED.with(|slot| slot.set(Arc::as_ptr(self)));
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        self.tid.store(tid, Ordering::SeqCst);
        Attachment { target: Arc::clone(self) }
    }

    /// Kernel thread id of the attached thread, or 0.
    pub fn tid(&self) -> libc::pid_t {
        self.tid.load(Ordering::SeqCst)
    }

    /// Records the CPU the calling (core) thread is on, for kickers that
    /// follow it there: `sched_getcpu` reads it from memory the kernel keeps
    /// up to date (rseq), no system call.
    pub fn note_cpu(&self) {
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = unsafe { libc::sched_getcpu() };
        self.cpu.store(cpu, Ordering::Relaxed);
    }

    /// The CPU the core thread last noted, if any.
    pub fn cpu(&self) -> Option<usize> {
        usize::try_from(self.cpu.load(Ordering::Relaxed)).ok()
    }

    /// Asks the core thread to come out of KVM_RUN and look at its commands.
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        self.signal();
    }

    /// Sends the kick signal to the attached thread (a no-op before attach or
    /// after it ended: tgkill of a finished thread fails with ESRCH).
    pub fn signal(&self) {
        let tid = self.tid();
        if tid == 0 {
            return;
        }
        // SAFETY: tgkill only sends a signal; a stale tid fails harmlessly
        // because the thread group id is checked too.
        unsafe {
            libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, kick_signal());
        }
    }

    /// Whether a [`request`](Self::request) is pending (without taking it).
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Takes a pending [`request`](Self::request), clearing it.
    pub fn take_request(&self) -> bool {
        self.requested.swap(false, Ordering::SeqCst)
    }

    /// Sets the end of the current slice (monotonic ns; `u64::MAX` for none).
    pub fn set_deadline(&self, deadline_ns: u64) {
        self.deadline_ns.store(deadline_ns, Ordering::SeqCst);
    }

    /// Whether the core thread should not (or no longer) be in KVM_RUN. The
    /// clock is read only when a deadline is set: every exit passes here.
    fn should_stop(&self) -> bool {
        if self.requested.load(Ordering::SeqCst) {
            return true;
        }
        let deadline = self.deadline_ns.load(Ordering::SeqCst);
        deadline != u64::MAX && monotonic_ns() >= deadline
    }

    /// Called on the core thread right before KVM_RUN of the vCPU owning `run`:
    /// publishes it, clears its `immediate_exit`, and then says whether a kick is
    /// already due (the caller must then not enter KVM_RUN).
    ///
    /// # Safety
    /// `run` must be the live `kvm_run` mapping of a vCPU that the calling
    /// (attached) thread is about to run, and stay mapped until [`disarm`]
    /// (which the caller must call as soon as KVM_RUN returns).
    ///
    /// [`disarm`]: Self::disarm
    pub(crate) unsafe fn arm(&self, run: *mut kvm_run) -> bool {
        self.run.store(run, Ordering::SeqCst);
        // SAFETY: per this function's contract, `run` is a live mapping; only
        // this thread (here and in its signal handler) writes immediate_exit.
        unsafe { ptr::addr_of_mut!((*run).immediate_exit).write_volatile(0) };
        self.should_stop()
    }

    /// Forgets the published vCPU: from now on the handler writes nowhere.
    /// Called as soon as KVM_RUN returns, before the mapping could go away.
    pub(crate) fn disarm(&self) {
        self.run.store(ptr::null_mut(), Ordering::SeqCst);
    }
}

/// While alive, the thread that attached receives this target's kicks.
#[derive(Debug)]
pub struct Attachment {
    target: Arc<KickTarget>,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.target.disarm();
        self.target.tid.store(0, Ordering::SeqCst);
        ATTACHED.with(|slot| slot.set(ptr::null()));
    }
}

extern "C" fn on_kick_signal(_signal: libc::c_int) {
    let target = ATTACHED.with(Cell::get);
    if target.is_null() {
        return;
    }
    // SAFETY: ATTACHED points at a KickTarget kept alive by this thread's
    // Attachment, which resets ATTACHED before releasing its Arc.
    let target = unsafe { &*target };
    if !target.should_stop() {
        // A stale timer signal: the current slice is not over.
        return;
    }
    let run = target.run.load(Ordering::SeqCst);
    if !run.is_null() {
        // SAFETY: `run` was published by `arm` on this very thread and stays
        // mapped until `disarm`; a volatile byte store is async-signal-safe.
        unsafe { ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

fn install_handler() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid starting point; the handler only
        // touches atomics, a thread-local Cell and the kvm_run mapping. No
        // SA_RESTART: KVM_RUN must return EINTR to the core loop.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_kick_signal as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = 0;
            let result = libc::sigaction(kick_signal(), &action, ptr::null_mut());
            assert_eq!(result, 0, "installing the kick signal handler failed");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the signal handler left in `immediate_exit`.
    fn immediate_exit(run: &kvm_run) -> u8 {
        // SAFETY: a plain read of a byte in a live struct; volatile because the
        // signal handler writes it behind the compiler's back.
        unsafe { ptr::addr_of!(run.immediate_exit).read_volatile() }
    }

    #[test]
    fn a_due_kick_is_reported_by_arm_and_sets_immediate_exit_in_the_handler() {
        let target = KickTarget::new();
        let _attached = target.attach();
        let mut run = kvm_run { immediate_exit: 1, ..Default::default() };
        // SAFETY: `run` lives on this stack frame for the whole test.
        let due = unsafe { target.arm(&mut run) };
        assert!(!due);
        assert_eq!(run.immediate_exit, 0, "arm clears a left-over immediate_exit");

        target.request();
        // The signal was delivered to this thread synchronously (tgkill to self).
        assert_eq!(immediate_exit(&run), 1);
        // SAFETY: as above.
        assert!(unsafe { target.arm(&mut run) }, "arm reports the request");
        assert!(target.take_request());
        // SAFETY: as above.
        assert!(!unsafe { target.arm(&mut run) });
        target.disarm();
    }

    #[test]
    fn a_stale_timer_signal_does_not_cut_the_next_slice() {
        let target = KickTarget::new();
        let _attached = target.attach();
        let mut run = kvm_run::default();
        target.set_deadline(monotonic_ns() + 60_000_000_000);
        // SAFETY: `run` outlives its use here.
        assert!(!unsafe { target.arm(&mut run) });
        target.signal();
        assert_eq!(immediate_exit(&run), 0);

        target.set_deadline(monotonic_ns());
        target.signal();
        assert_eq!(immediate_exit(&run), 1);
        target.disarm();
    }
}
