//! Running a few independent jobs side by side on long-lived threads.
//!
//! The classifiers of a frame (and their gradient graphs) are independent
//! ONNX Runtime runs of 1 to 8 ms each. Running them at the same time, one
//! per core, beats giving each all the cores in turn. The threads they run on
//! are kept for the life of the process: a thread made for every frame costs
//! its start-up and, more, ONNX Runtime's per-thread scratch buffers, which a
//! new thread allocates and faults in again on its first run.

use std::sync::OnceLock;

/// The process-wide pool the jobs beyond the first run on, created on first
/// use with one thread less than the machine has cores (at least one).
fn workers() -> &'static rayon_core::ThreadPool {
    static WORKERS: OnceLock<rayon_core::ThreadPool> = OnceLock::new();
    WORKERS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        rayon_core::ThreadPoolBuilder::new()
            .num_threads(cores.saturating_sub(1).max(1))
            .thread_name(|i| format!("face_perception-worker-{i}"))
            .build()
            .expect("the worker pool's threads could not be started")
    })
}

/// Runs every job and returns their results in the jobs' order: the first on
/// the calling thread, the others at the same time on the worker pool. A job
/// that panics makes this panic with the same payload once all have ended.
pub fn side_by_side<T, F>(jobs: Vec<F>) -> Vec<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let mut jobs = jobs.into_iter();
    let Some(first) = jobs.next() else {
        return Vec::new();
    };
    let rest: Vec<F> = jobs.collect();
    if rest.is_empty() {
        return vec![first()];
    }
    let mut slots: Vec<Option<T>> = (0..rest.len()).map(|_| None).collect();
    let first_result = workers().in_place_scope(|scope| {
        for (job, slot) in rest.into_iter().zip(slots.iter_mut()) {
            scope.spawn(move |_| *slot = Some(job()));
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
        assert_eq!(side_by_side(jobs), vec![0, 1, 4, 9, 16]);
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
        assert_eq!(side_by_side(jobs), vec![true, true]);
    }

    #[test]
    fn no_jobs_and_one_job() {
        assert!(side_by_side(Vec::<fn() -> u8>::new()).is_empty());
        assert_eq!(side_by_side(vec![|| 7]), vec![7]);
    }
}
