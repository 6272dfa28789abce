//! Thread pools for the kernels: a pool that stays awake through a burst of parallel
//! operations ([`warm`]), and pools whose workers each keep a CPU of their own
//! (`pinned_pool`, `pin_global_pool`; feature `pin`).
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
//!
//! ## Pinned workers
//!
//! When a sleeping worker is woken, Linux may queue it on the CPU of the thread that woke it,
//! and only moves it when its load balancer next looks. On a 2-vCPU virtual machine (Linux
//! 6.18), a two-worker pool running back-to-back convolutions (`pointwise` of the suite) had
//! both workers on one CPU for stretches of 10–30 calls: each call took as long as on one
//! thread (1.45 ms against 0.75 ms), while the other CPU stood idle. Pinned, every call took
//! 0.7–0.9 ms. OpenMP runtimes escape it by spinning between parallel regions, and by binding
//! threads when `OMP_PROC_BIND` asks. With the `pin` feature (which adds the `core_affinity`
//! crate), `pinned_pool` builds a pool whose worker `i` may run only on the `i`-th CPU the
//! process is allowed (its affinity mask, so `taskset` and cgroup limits are respected), and
//! `pin_global_pool` makes such a pool rayon's global one. Pinning is skipped, and the pool
//! is an ordinary one, when there are more workers than allowed CPUs or the platform cannot
//! report them. Pin when the process has the machine's cores to itself (a training run, a
//! benchmark, a server); an ordinary pool lets the operating system move the workers away
//! from a core that other processes are using.

use std::cell::Cell;
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
/// Called from outside the pool, `f` runs on a worker and the calling thread waits for it;
/// called on a worker (inside `ThreadPool::install`), `f` runs in place. Either way the other
/// workers spin while `f` runs; `f` must be `Send`. On a one-thread pool, and on a thread that
/// already serves a `warm` (inside `f`, or a task of `f`'s parallel work that a spinner runs),
/// `f` simply runs on the calling thread. Use it around work that is parallel for most of its
/// duration (a model's forward or a training step), not around a long serial computation.
pub fn warm<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let threads = rayon::current_num_threads();
    if threads < 2 || is_warm() {
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
        let _mark = WarmMark::set();
        f()
    })
}

thread_local! {
    /// Set while this thread runs a [`warm`] closure or one of its spinners.
    static WARM_HERE: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread serves a [`warm`] call: it runs the closure, or it is one of the
/// spinning workers (running a task of the closure's parallel work). A `warm` there runs its
/// closure in place, since the pool is awake already.
///
/// ```
/// use convkit_tensor::parallel::{is_warm, warm};
/// assert!(!is_warm());
/// let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a pool");
/// assert!(pool.install(|| warm(is_warm)));
/// assert!(!is_warm());
/// ```
pub fn is_warm() -> bool {
    WARM_HERE.with(Cell::get)
}

/// Marks the current thread as serving a [`warm`] call until dropped (also on a panic), then
/// restores the previous mark.
struct WarmMark(bool);

impl WarmMark {
    fn set() -> WarmMark {
        WarmMark(WARM_HERE.with(|w| w.replace(true)))
    }
}

impl Drop for WarmMark {
    fn drop(&mut self) {
        WARM_HERE.with(|w| w.set(self.0));
    }
}

/// A builder for a rayon pool of `threads` workers (rayon's default count when 0: the
/// `RAYON_NUM_THREADS` variable, else one per CPU), each pinned to a CPU of its own when the
/// process may use at least that many (see [Pinned workers](self#pinned-workers)).
/// Further settings (a thread name, a stack size) can be added before `build`, but not another
/// `start_handler`, which would replace the pinning.
#[cfg(feature = "pin")]
pub fn pinned_builder(threads: usize) -> rayon::ThreadPoolBuilder {
    let builder = rayon::ThreadPoolBuilder::new().num_threads(threads);
    let cpus = core_affinity::get_core_ids().unwrap_or_default();
    let threads = match threads {
        0 => std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or(cpus.len()),
        n => n,
    };
    if threads < 2 || threads > cpus.len() {
        return builder;
    }
    builder.start_handler(move |worker| {
        // Best effort: a refused pin leaves the worker where the system put it.
        let _ = core_affinity::set_for_current(cpus[worker]);
    })
}

/// A rayon pool of `threads` workers pinned one per CPU: [`pinned_builder`]`(threads).build()`.
///
/// ```
/// let pool = convkit_tensor::parallel::pinned_pool(2).expect("a thread pool");
/// let total = pool.install(|| convkit_tensor::Tensor::full(&[512, 512], 1.0).sum());
/// assert_eq!(total, 262_144.0);
/// ```
///
/// # Errors
/// When rayon cannot start the threads.
#[cfg(feature = "pin")]
pub fn pinned_pool(threads: usize) -> Result<rayon::ThreadPool, rayon::ThreadPoolBuildError> {
    pinned_builder(threads).build()
}

/// Makes a pool of `threads` pinned workers (0: rayon's default count) rayon's global pool,
/// the one the kernels use outside any `install`. Call it at the start of `main`, before any
/// parallel operation.
///
/// # Errors
/// When the global pool already exists (an earlier call, or a parallel operation that started
/// it) or rayon cannot start the threads.
#[cfg(feature = "pin")]
pub fn pin_global_pool(threads: usize) -> Result<(), rayon::ThreadPoolBuildError> {
    pinned_builder(threads).build_global()
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
    let _mark = WarmMark::set();
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

    /// The CPU the calling thread runs on (field 39 of `/proc/thread-self/stat`).
    #[cfg(all(feature = "pin", target_os = "linux"))]
    fn current_cpu() -> usize {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let fields = &stat[stat.rfind(')').unwrap() + 2..];
        fields.split(' ').nth(36).unwrap().parse().unwrap()
    }

    #[cfg(all(feature = "pin", target_os = "linux"))]
    #[test]
    fn pinned_workers_stay_on_their_own_cpu() {
        let cpus = core_affinity::get_core_ids().unwrap();
        if cpus.len() < 2 {
            eprintln!("skipping: the process may use {} CPU", cpus.len());
            return;
        }
        let pool = pinned_pool(2).unwrap();
        for _ in 0..20 {
            let seen = pool.broadcast(|ctx| {
                std::hint::black_box(work(20_000));
                (ctx.index(), current_cpu())
            });
            for (worker, cpu) in seen {
                assert_eq!(cpu, cpus[worker].id, "worker {worker}");
            }
        }
        // The pool computes what an ordinary one does.
        assert_eq!(pool.install(|| warm(|| work(100_000))), work(100_000));
    }

    #[cfg(feature = "pin")]
    #[test]
    fn more_workers_than_cpus_is_an_ordinary_pool() {
        let cpus = core_affinity::get_core_ids().unwrap_or_default().len();
        let pool = pinned_pool(cpus + 1).unwrap();
        assert_eq!(pool.current_num_threads(), cpus + 1);
        assert_eq!(pool.install(|| work(100_000)), work(100_000));
        // The global pool exists once anything ran on it; a second attempt is an error.
        assert_eq!(warm(|| work(1000)), work(1000));
        assert!(pin_global_pool(1).is_err());
    }

    #[test]
    fn returns_the_closure_result_on_any_pool() {
        let want = work(100_000);
        for threads in [1, 2, 3, 4] {
            // `install` runs on a worker already: `warm` runs the closure in place, with the
            // other workers spinning.
            let got = pool(threads).install(|| warm(|| (0..8).map(|_| work(100_000)).sum::<u64>()));
            assert_eq!(got, 8 * want, "{threads} threads");
        }
        // From outside any pool: the closure moves to a worker of the global pool.
        assert_eq!(warm(|| work(100_000)), want);
    }

    #[test]
    fn nested_and_inside_parallel_iterators() {
        let want = work(50_000);
        let nested = || {
            warm(|| {
                let a = work(50_000);
                let b = warm(|| (is_warm(), work(50_000)));
                let c: Vec<u64> = (0..8).into_par_iter().map(|_| warm(|| work(10_000))).collect();
                (a, b, c.len())
            })
        };
        assert_eq!(nested(), (want, (true, want), 8));
        // Inside `install`, and inside a user's parallel iterator without an outer `warm`.
        assert_eq!(pool(2).install(nested), (want, (true, want), 8));
        let each: Vec<u64> =
            pool(3).install(|| (0..6).into_par_iter().map(|_| warm(|| work(20_000))).collect());
        assert_eq!(each, vec![work(20_000); 6]);
        assert!(!is_warm());
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
