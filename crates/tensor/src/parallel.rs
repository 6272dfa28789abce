//! Running a burst of parallel operations on a pool that stays awake: [`warm`].
//!
//! A rayon worker with nothing to do yields a few dozen times and then sleeps on a futex.
//! Waking it is a cross-core interrupt: a few microseconds on bare metal, but tens of
//! microseconds on a virtual machine, and a model's forward at batch 1 is a chain of parallel
//! operations with short serial stretches between them, so a worker that falls asleep between
//! every two layers costs more than it helps (measured in `docs/benchmarks.md`). A caller
//! outside the pool pays twice per operation: the job is injected into the pool, and the
//! caller blocks until a worker wakes it.
//!
//! [`warm`] runs a closure on one of the pool's workers while every other worker runs a
//! spinner that executes whatever parallel work appears ([`rayon::yield_now`]) and otherwise
//! spins, the way OpenMP runtimes keep their threads between parallel regions. The closure's
//! own parallel operations then start at once. The spinners stop when the closure returns (or
//! panics), or after [`MAX_IDLE`] without work, so a spinner can never hold up the closure.
//!
//! Scheduling only: every kernel in the workspace computes the same bits on any number of
//! threads, so `warm` never changes a result.
//!
//! ```
//! let sums: Vec<f32> = convkit_tensor::parallel::warm(|| {
//!     (0..4).map(|i| convkit_tensor::Tensor::full(&[256, 256], i as f32).sum()).collect()
//! });
//! assert_eq!(sums[3], 3.0 * 65536.0);
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a spinner waits without finding work before it returns its thread to rayon
/// (which then sleeps as usual). Longer than the serial stretches inside a forward or a
/// training step, short enough that a spinner stacked above a job the closure waits for
/// cannot stall it noticeably.
pub const MAX_IDLE: Duration = Duration::from_millis(2);

/// Runs `f` with rayon's current pool kept awake (see the [module docs](self)) and returns
/// its result.
///
/// On a one-thread pool, or when called from a worker of the pool (a nested `warm`, or
/// inside the caller's own parallel iterator), `f` simply runs on the calling thread. Otherwise
/// `f` runs on a worker and the calling thread waits for it; `f` must therefore be `Send`.
/// The other workers spin while `f` runs: use it around work that is parallel for most of its
/// duration (a model's forward or a training step), not around a long serial computation.
pub fn warm<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let threads = rayon::current_num_threads();
    if threads < 2 || rayon::current_thread_index().is_some() {
        return f();
    }
    let done = AtomicBool::new(false);
    rayon::scope(|scope| {
        let home = rayon::current_thread_index();
        let done = &done;
        for _ in 1..threads {
            scope.spawn(move |_| spin(done, home));
        }
        let _stop = Stop(done);
        f()
    })
}

/// Sets the flag when dropped, so the spinners stop even when the closure panics.
struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Executes pool work until `done` or [`MAX_IDLE`] without any. Returns at once on `home`,
/// the thread running the closure: a spinner picked up there would block the closure.
fn spin(done: &AtomicBool, home: Option<usize>) {
    if rayon::current_thread_index() == home {
        return;
    }
    let mut idle_since = Instant::now();
    let mut polls = 0u32;
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            idle_since = Instant::now();
            continue;
        }
        std::hint::spin_loop();
        polls = polls.wrapping_add(1);
        if polls.is_multiple_of(64) && idle_since.elapsed() > MAX_IDLE {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rayon::prelude::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
    }

    /// A parallel sum with nested joins, the shape of a kernel's split.
    fn work(n: u64) -> u64 {
        (0..n as u32)
            .into_par_iter()
            .with_min_len(64)
            .map(|i| u64::from(i) * u64::from(i) % 7)
            .sum()
    }

    #[test]
    fn returns_the_closure_result_on_any_pool() {
        let want = work(100_000);
        for threads in [1, 2, 3, 4] {
            // `install` runs on a worker already: `warm` runs the closure in place.
            let got = pool(threads).install(|| warm(|| (0..8).map(|_| work(100_000)).sum::<u64>()));
            assert_eq!(got, 8 * want, "{threads} threads");
        }
        // From outside any pool: the closure moves to a worker of the global pool.
        assert_eq!(warm(|| work(100_000)), want);
    }

    #[test]
    fn nested_and_inside_parallel_iterators() {
        let want = work(50_000);
        let got = warm(|| {
            let a = work(50_000);
            let b = warm(|| work(50_000));
            let c: Vec<u64> = (0..8).into_par_iter().map(|_| warm(|| work(10_000))).collect();
            (a, b, c.len())
        });
        assert_eq!(got, (want, want, 8));
    }

    #[test]
    fn spinners_stop_after_a_panic() {
        let caught = std::panic::catch_unwind(|| warm(|| -> u64 { panic!("boom") }));
        assert!(caught.is_err());
        // The pool still runs work afterwards (the spinners returned).
        assert_eq!(warm(|| work(1000)), work(1000));
    }

    #[test]
    fn a_long_serial_closure_releases_the_spinners() {
        // The spinners give up after MAX_IDLE; the closure still finishes, and another
        // caller's parallel work still runs meanwhile.
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                warm(|| {
                    std::thread::sleep(MAX_IDLE * 3);
                    work(1000)
                })
            });
            assert_eq!(work(100_000), work(100_000));
            assert_eq!(h.join().unwrap(), work(1000));
        });
    }
}
