//! Running a few independent jobs side by side on long-lived threads.
//!
//! The classifiers of a frame (and their gradient graphs) are independent
//! ONNX Runtime runs of 1 to 8 ms each. Running them at the same time, one
//! per core, beats giving each all the cores in turn. The threads they run on
//! are kept for the life of the process: with a thread made for every frame,
//! int8 gender and fp32 emotion for 5 faces took 3.0 ms instead of 1.9 ms,
//! more than a thread's start-up explains (probably ONNX Runtime setting up
//! its per-thread buffers again on each new thread).
//!
//! [`Cores`] pins the threads of a run to cores of their own. Between camera
//! frames the cores go idle; on the next frame Linux tends to wake ONNX
//! Runtime's worker on the core of the thread that woke it, so both share one
//! core for the whole run. Measured here (CenterFace, 2 threads, a frame
//! every 100 ms): 11 to 19 ms a frame unpinned, 7.6 ms pinned, against
//! 6.8 ms back to back.

use std::cell::Cell;
use std::sync::OnceLock;

/// The CPUs this process may run on (its main thread's affinity mask, read
/// once), in increasing order; empty if it cannot be read.
fn allowed_cpus() -> &'static [usize] {
    static ALLOWED: OnceLock<Vec<usize>> = OnceLock::new();
    // SAFETY: getpid has no preconditions.
    ALLOWED.get_or_init(|| affinity_of(unsafe { libc::getpid() }))
}

/// The CPUs thread or process `pid` may run on (0: the calling thread), in
/// increasing order; empty if the mask cannot be read.
fn affinity_of(pid: libc::pid_t) -> Vec<usize> {
    // SAFETY: `set` is a plain bit set that sched_getaffinity fills in; the
    // size passed is its own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Restricts the calling thread to `cpus`; false if the system refused.
fn set_thread_affinity(cpus: &[usize]) -> bool {
    // SAFETY: as in `affinity_of`; pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

thread_local! {
    /// The core this thread was pinned to by [`Cores`], if any.
    static PINNED_TO: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Pins the calling thread to `cpu`, or with `None` gives it back every
/// allowed CPU if it was pinned here before. Remembers the last request per
/// thread, so that repeating it costs no system call.
fn pin_current_thread(cpu: Option<usize>) {
    PINNED_TO.with(|pinned| {
        if pinned.get() == cpu {
            return;
        }
        let ok = match cpu {
            Some(cpu) => set_thread_affinity(&[cpu]),
            None => set_thread_affinity(allowed_cpus()),
        };
        if ok {
            pinned.set(cpu);
        } else {
            log::warn!("could not set the CPU affinity of a thread to {cpu:?}; it stays as it was");
        }
    });
}

/// The cores a run's threads are pinned to: the calling thread to the first,
/// ONNX Runtime's workers of a session of `t` threads to the next `t - 1`,
/// and the side-by-side jobs after the first ([`side_by_side`]) to the cores
/// after the first, in turn. Empty: no pinning (threads go where the system puts them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cores(Vec<usize>);

impl Cores {
    /// No pinning.
    pub fn unpinned() -> Self {
        Self::default()
    }

    /// With `pin`, the first `threads` CPUs the process may run on, when it
    /// may run on at least that many and `threads` is 2 or more; otherwise
    /// no pinning.
    pub fn plan(pin: bool, threads: usize) -> Self {
        let allowed = allowed_cpus();
        if pin && threads >= 2 && allowed.len() >= threads {
            Self(allowed[..threads].to_vec())
        } else {
            Self::unpinned()
        }
    }

    /// The cores of sessions run with `threads` threads each, under this
    /// plan made for `total` threads: the plan itself when a run has all the
    /// threads or one thread (side by side, one job per core); unpinned when
    /// runs side by side have several threads each (one worker per core
    /// would need a plan per run, and a pinned caller with free workers is
    /// slower than both pinned or both free).
    pub fn for_runs_of(&self, threads: usize, total: usize) -> Cores {
        if threads == total || threads == 1 {
            self.clone()
        } else {
            Self::unpinned()
        }
    }

    /// Whether this pins anything.
    pub fn is_pinned(&self) -> bool {
        !self.0.is_empty()
    }

    /// Pins the calling thread to the first core (or, unpinned, gives a
    /// thread pinned here before its freedom back).
    pub fn pin_caller(&self) {
        pin_current_thread(self.0.first().copied());
    }

    /// ONNX Runtime's `session.intra_op_thread_affinities` for a session of
    /// `threads` threads whose run is called from the pinned caller: its
    /// `threads - 1` workers on the cores after the first, one each
    /// (1-based CPU numbers, `;` between workers). `None` when unpinned or
    /// when there are not enough cores.
    pub fn worker_affinities(&self, threads: usize) -> Option<String> {
        if threads < 2 || self.0.len() < threads {
            return None;
        }
        Some(
            self.0[1..threads]
                .iter()
                .map(|cpu| (cpu + 1).to_string())
                .collect::<Vec<_>>()
                .join(";"),
        )
    }
}

/// The process-wide pool the jobs beyond the first run on, created on first
/// use with one thread less than the machine has cores (at least one);
/// `None` if its threads could not be started (then jobs run one after the
/// other on the caller).
fn workers() -> Option<&'static rayon_core::ThreadPool> {
    static WORKERS: OnceLock<Option<rayon_core::ThreadPool>> = OnceLock::new();
    WORKERS
        .get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(2, usize::from);
            rayon_core::ThreadPoolBuilder::new()
                .num_threads(cores.saturating_sub(1).max(1))
                .thread_name(|i| format!("face_perception-worker-{i}"))
                .build()
                .map_err(|e| {
                    log::warn!("no worker threads ({e}): side-by-side jobs run one after the other")
                })
                .ok()
        })
        .as_ref()
}

/// Runs every job and returns their results in the jobs' order: the first on
/// the calling thread, the others at the same time on the worker pool. The
/// caller is pinned to the first of `cores` and the other jobs to the other
/// cores in turn; unpinned `cores` free the caller and the pool's threads
/// (a pinned caller whose ONNX Runtime workers are free was measured slower
/// than both pinned or both free: 16 ms instead of 6 for the emotion
/// gradient graph at 2 threads). A job that panics makes this panic with the same payload
/// once all have ended.
pub fn side_by_side<T, F>(jobs: Vec<F>, cores: &Cores) -> Vec<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let mut jobs = jobs.into_iter();
    let Some(first) = jobs.next() else {
        return Vec::new();
    };
    let rest: Vec<F> = jobs.collect();
    cores.pin_caller();
    if rest.is_empty() {
        return vec![first()];
    }
    // Job k >= 1 on the cores after the caller's, round robin: a job put on
    // the caller's core would share it with the first job.
    let core_of = |k: usize| match cores.0.len() {
        0 => None,
        1 => Some(cores.0[0]),
        n => Some(cores.0[1 + (k - 1) % (n - 1)]),
    };
    let Some(pool) = workers() else {
        return std::iter::once(first())
            .chain(rest.into_iter().map(|job| job()))
            .collect();
    };
    let mut slots: Vec<Option<T>> = (0..rest.len()).map(|_| None).collect();
    let first_result = pool.in_place_scope(|scope| {
        for (k, (job, slot)) in rest.into_iter().zip(slots.iter_mut()).enumerate() {
            let core = core_of(k + 1);
            scope.spawn(move |_| {
                pin_current_thread(core);
                *slot = Some(job());
            });
        }
        first()
    });
    std::iter::once(first_result)
        .chain(slots.into_iter().map(|slot| {
            slot.expect("a scope returns only after each of its jobs has stored its result")
        }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_the_jobs_order() {
        let jobs: Vec<_> = (0..5u64)
            .map(|i| {
                move || {
                    std::thread::sleep(std::time::Duration::from_millis(10 * (5 - i)));
                    i * i
                }
            })
            .collect();
        assert_eq!(side_by_side(jobs, &Cores::unpinned()), vec![0, 1, 4, 9, 16]);
    }

    #[test]
    fn jobs_run_at_the_same_time() {
        // Each job tells the other it has started and waits to hear the
        // same: one after the other, the first would wait in vain.
        let (to_second, second_hears) = std::sync::mpsc::channel();
        let (to_first, first_hears) = std::sync::mpsc::channel();
        let wait = std::time::Duration::from_secs(5);
        let first = move || {
            to_second.send(()).unwrap();
            first_hears.recv_timeout(wait).is_ok()
        };
        let second = move || {
            to_first.send(()).unwrap();
            second_hears.recv_timeout(wait).is_ok()
        };
        let jobs: Vec<Box<dyn FnOnce() -> bool + Send>> = vec![Box::new(first), Box::new(second)];
        assert_eq!(side_by_side(jobs, &Cores::unpinned()), vec![true, true]);
    }

    #[test]
    fn no_jobs_and_one_job() {
        assert!(side_by_side(Vec::<fn() -> u8>::new(), &Cores::unpinned()).is_empty());
        assert_eq!(side_by_side(vec![|| 7], &Cores::unpinned()), vec![7]);
    }

    /// The CPU the calling thread runs on right now.
    fn current_cpu() -> usize {
        // SAFETY: no arguments; returns -1 on failure.
        let cpu = unsafe { libc::sched_getcpu() };
        usize::try_from(cpu).expect("sched_getcpu")
    }

    #[test]
    fn pinned_jobs_run_on_their_cores_and_the_caller_is_freed_again() {
        let cores = Cores::plan(true, 2);
        if !cores.is_pinned() {
            eprintln!("fewer than 2 CPUs allowed: nothing to pin");
            return;
        }
        let jobs: Vec<fn() -> usize> = vec![current_cpu, current_cpu, current_cpu];
        let ran_on = side_by_side(jobs, &cores);
        assert_eq!(ran_on, vec![cores.0[0], cores.0[1], cores.0[1]]);
        assert_eq!(
            cores.worker_affinities(2),
            Some((cores.0[1] + 1).to_string())
        );
        Cores::unpinned().pin_caller();
        assert_eq!(affinity_of(0), allowed_cpus());
    }

    #[test]
    fn runs_with_all_threads_or_one_keep_the_plan_others_are_unpinned() {
        let plan = Cores(vec![0, 1, 2, 3]);
        assert_eq!(plan.for_runs_of(4, 4), plan);
        assert_eq!(plan.for_runs_of(1, 4), plan);
        assert_eq!(plan.for_runs_of(2, 4), Cores::unpinned());
    }

    #[test]
    fn no_plan_without_pinning_or_with_one_thread() {
        assert!(!Cores::plan(false, 2).is_pinned());
        assert!(!Cores::plan(true, 1).is_pinned());
        assert!(!Cores::plan(true, allowed_cpus().len() + 1).is_pinned());
        assert_eq!(Cores::unpinned().worker_affinities(2), None);
    }
}
