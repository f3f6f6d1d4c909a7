//! Which host CPUs this process may run on, and binding a thread to one:
//! each core of a `--cpus N` run stays on its own CPU.

/// The CPUs this process may run on (its affinity mask), in order; the
/// cores are bound to the first N of them.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain bits; all zeroes is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the size passed is the set's own, and the kernel writes at most that.
    let got = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if got != 0 {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET reads a bit of the set for any cpu below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect()
}

/// How many CPUs this process may run on (at least 1).
pub fn allowed_count() -> usize {
    allowed_cpus().len().max(1)
}

/// Binds the calling thread to host CPU `cpu`.
pub fn bind_current_thread(cpu: usize) -> std::io::Result<()> {
    bind_current_thread_to(&[cpu])
}

/// Lets the calling thread run on `cpus` only (each below `CPU_SETSIZE`,
/// as [`allowed_cpus`] gives them).
pub fn bind_current_thread_to(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: as in allowed_cpus.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: CPU_SET writes a bit of the set; `cpu` is below CPU_SETSIZE (see above).
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; the set is ours and sized as passed.
    let done = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if done == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_may_run_somewhere_and_a_thread_binds_to_one_of_them() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        let last = *cpus.last().unwrap();
        std::thread::spawn(move || {
            bind_current_thread(last).unwrap();
            // SAFETY: sched_getcpu has no preconditions.
            assert_eq!(unsafe { libc::sched_getcpu() }, last as i32);
        })
        .join()
        .unwrap();
    }
}
