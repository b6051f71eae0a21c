//! A thread pool for the many small products of a decode step. At B = 1 a layer's products
//! take tens of microseconds each, and rayon's idle workers are asleep by the next one: each
//! product paid a futex wake-up and a reschedule (`perf`: about a tenth of decode time in
//! `__schedule`, `sched_yield` and futex calls). Here the helpers spin for a short while
//! after a job, yielding the core to anything else runnable, and sleep only after
//! `SLEEP_AFTER` without work, so that a server with nothing to do costs nothing.
//!
//! One job at a time: `run` returns false when another thread holds the pool, and the caller
//! uses rayon instead.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock, TryLockError};
use std::time::{Duration, Instant};

/// How long a helper spins without yielding after its last job.
const SPIN: Duration = Duration::from_micros(20);
/// How long a helper waits for a job, yielding the core, before it sleeps.
const SLEEP_AFTER: Duration = Duration::from_millis(2);

type Task<'a> = dyn Fn(usize) + Sync + 'a;

struct Shared {
    /// The job's epoch in the high 32 bits, its next unclaimed task in the low 32: a claim
    /// is a compare-and-swap that fails once a newer job has replaced the one it read.
    next: Line<AtomicU64>,
    /// Tasks finished, added once per thread and job.
    done: Line<AtomicUsize>,
    epoch: Line<AtomicU64>,
    tasks: AtomicUsize,
    /// A `&Task` on the stack of the thread in `run`, valid while the job has tasks left.
    job: AtomicPtr<()>,
    panicked: AtomicBool,
    sleeping: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

/// A value alone on its cache line. The claim counter, the done counter and what a job
/// publishes once shared a line: every claim and every finished task took it from the other
/// core, and a helper's poll took it back. An empty job of 11 tasks cost 2.8 µs so.
#[repr(align(64))]
struct Line<T>(T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

struct Pool {
    shared: &'static Shared,
    submit: Mutex<()>,
}

/// The pool, with one helper per thread beyond the caller's (`rayon::current_num_threads`,
/// which `RAYON_NUM_THREADS` sets); None with one thread.
fn pool() -> Option<&'static Pool> {
    static POOL: OnceLock<Option<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let helpers = rayon::current_num_threads().saturating_sub(1);
        if helpers == 0 {
            return None;
        }
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            next: Line(AtomicU64::new(0)),
            done: Line(AtomicUsize::new(0)),
            epoch: Line(AtomicU64::new(0)),
            tasks: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            panicked: AtomicBool::new(false),
            sleeping: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }));
        for i in 0..helpers {
            std::thread::Builder::new()
                .name(format!("conclave-matmul-{i}"))
                .spawn(move || helper(shared))
                .ok()?;
        }
        Some(Pool {
            shared,
            submit: Mutex::new(()),
        })
    })
    .as_ref()
}

/// `f(0)` … `f(tasks − 1)`, on the pool when it is free, else one after the other here.
pub fn for_each(tasks: usize, f: &Task<'_>) {
    if !run(tasks, f) {
        (0..tasks).for_each(f);
    }
}

/// Runs `f(0)` … `f(tasks − 1)` on this thread and the helpers, and returns when all are
/// done; false (nothing run) when there is no pool or another thread is using it.
pub fn run(tasks: usize, f: &Task<'_>) -> bool {
    let Some(pool) = pool() else {
        return false;
    };
    // A job whose task panicked poisons the lock as it unwinds; the pool is still sound
    // (the next job resets every count), so poison does not keep later jobs off it.
    let _one_job = match pool.submit.try_lock() {
        Ok(held) => held,
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
        Err(TryLockError::WouldBlock) => return false,
    };
    let s = pool.shared;
    let epoch = (s.epoch.load(Ordering::Relaxed) + 1) & 0xFFFF_FFFF;
    // Closed first: a helper still in the last job's `work` (it ran none of its tasks, so
    // that job could end without it) then fails its claim, where it could otherwise claim
    // against this job's count and run this job's task, or the last one's gone closure.
    s.next.store(epoch << 32 | 0xFFFF_FFFF, Ordering::Release);
    let job: *const &Task<'_> = &f;
    s.job.store(job as *mut (), Ordering::Release);
    s.tasks.store(tasks, Ordering::Release);
    s.done.store(0, Ordering::Release);
    s.panicked.store(false, Ordering::Release);
    s.next.store(epoch << 32, Ordering::Release);
    s.epoch.store(epoch, Ordering::SeqCst);
    if s.sleeping.load(Ordering::SeqCst) > 0 {
        let _l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
        s.wake.notify_all();
    }
    work(s, epoch);
    // The helpers finish the tasks they claimed: short, but one may have lost its core.
    let mut wait = Backoff::new();
    while s.done.load(Ordering::Acquire) < tasks {
        wait.poll();
        wait.pause();
    }
    if s.panicked.load(Ordering::Acquire) {
        panic!("a quantized matmul task panicked on a helper thread");
    }
    true
}

/// Waiting on another thread by polling: spinning for the first `SPIN`, then yielding the
/// core between polls.
struct Backoff {
    start: Instant,
    polls: u32,
    /// The time waited at the last reading of the clock.
    waited: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            start: Instant::now(),
            polls: 0,
            waited: Duration::ZERO,
        }
    }

    /// Counts a poll; returns the time waited. Reading the clock costs more than a poll, so
    /// it is read every 64th.
    fn poll(&mut self) -> Duration {
        if self.polls.is_multiple_of(64) {
            self.waited = self.start.elapsed();
        }
        self.polls = self.polls.wrapping_add(1);
        self.waited
    }

    /// The pause before the next poll.
    fn pause(&self) {
        if self.waited < SPIN {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// Claims and runs tasks of job `epoch` until none are left, then counts them done.
fn work(s: &Shared, epoch: u64) {
    let tasks = s.tasks.load(Ordering::Acquire);
    let mut ran = 0;
    loop {
        let cur = s.next.load(Ordering::Acquire);
        let index = (cur & 0xFFFF_FFFF) as usize;
        if cur >> 32 != epoch || index >= tasks {
            break;
        }
        if s.next
            .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            continue;
        }
        // SAFETY: the claim succeeded, so job `epoch` has a task not yet done: `run` is
        // still waiting, and `job` (stored before the epoch was published) points to its `f`.
        let f = unsafe { *(s.job.load(Ordering::Acquire) as *const &Task<'_>) };
        if catch_unwind(AssertUnwindSafe(|| f(index))).is_err() {
            s.panicked.store(true, Ordering::Release);
        }
        ran += 1;
    }
    if ran > 0 {
        s.done.fetch_add(ran, Ordering::AcqRel);
    }
}

fn helper(s: &'static Shared) {
    let mut seen = s.epoch.load(Ordering::Acquire);
    loop {
        let mut idle = Backoff::new();
        loop {
            let epoch = s.epoch.load(Ordering::SeqCst);
            if epoch != seen {
                seen = epoch;
                break;
            }
            if idle.poll() < SLEEP_AFTER {
                idle.pause();
            } else {
                let guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleeping.fetch_add(1, Ordering::SeqCst);
                let guard = s
                    .wake
                    .wait_while(guard, |_| s.epoch.load(Ordering::SeqCst) == seen)
                    .unwrap_or_else(|e| e.into_inner());
                s.sleeping.fetch_sub(1, Ordering::SeqCst);
                drop(guard);
            }
        }
        work(s, seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job of `tasks` tasks that count their runs: whether it ran on the pool, having
    /// checked that each of its tasks then ran once.
    fn counted_job(tasks: usize) -> bool {
        let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
        let ran = run(tasks, &|i| {
            hits[i].fetch_add(1, Ordering::Relaxed);
        });
        if ran {
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
        ran
    }

    #[test]
    fn every_task_runs_once_per_job() {
        if rayon::current_num_threads() == 1 {
            return; // no pool: `run` declines every job
        }
        // Other tests hold the pool now and then (the one whose task panics, for as long as
        // its panic messages take), so jobs go on until 1000 have run on the pool.
        let start = Instant::now();
        let mut ran_jobs = 0;
        for job in 0.. {
            if ran_jobs == 1000 || start.elapsed() > Duration::from_secs(20) {
                break;
            }
            if counted_job([0, 1, 2, 7, 64][job % 5]) {
                ran_jobs += 1;
            }
        }
        assert_eq!(ran_jobs, 1000, "the pool was never free for long");
    }

    /// A task that panics, on whichever thread, fails its job; the pool then takes the next
    /// job, and runs each of its tasks once.
    #[test]
    fn a_panicking_task_fails_its_job_and_the_pool_goes_on() {
        if rayon::current_num_threads() == 1 {
            return;
        }
        let start = Instant::now();
        let in_time = || start.elapsed() < Duration::from_secs(20);
        // Other tests hold the pool now and then: Ok(false) is a job it declined.
        let mut failed = false;
        while !failed && in_time() {
            let job = catch_unwind(|| {
                run(8, &|i| {
                    if i == 3 {
                        panic!("task 3 fails on purpose");
                    }
                })
            });
            assert!(!matches!(job, Ok(true)), "the job hid its task's panic");
            failed = job.is_err();
        }
        let mut ran = false;
        while failed && !ran && in_time() {
            ran = counted_job(8);
        }
        assert!(failed && ran, "no job ran on the pool after the failed one");
    }

    /// After a pause long enough for the helpers to sleep, a job wakes one: its tasks run on
    /// two threads. Each task waits (boundedly) until tasks have run on two threads, so the
    /// caller cannot finish the job alone before a helper wakes.
    #[test]
    fn a_sleeping_helper_wakes_for_the_next_job() {
        if rayon::current_num_threads() == 1 {
            return;
        }
        let start = Instant::now();
        // Other tests hold the pool now and then: a declined job is tried again.
        loop {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the pool was never free"
            );
            std::thread::sleep(SLEEP_AFTER * 3);
            let threads = Mutex::new(std::collections::HashSet::new());
            let sum = AtomicUsize::new(0);
            let ran = run(10, &|i| {
                threads.lock().unwrap().insert(std::thread::current().id());
                let wait = Instant::now();
                while threads.lock().unwrap().len() < 2 && wait.elapsed() < Duration::from_secs(5) {
                    std::thread::yield_now();
                }
                sum.fetch_add(i, Ordering::Relaxed);
            });
            if !ran {
                continue;
            }
            assert_eq!(sum.load(Ordering::Relaxed), 45, "every task ran once");
            let threads = threads.lock().unwrap().len();
            assert!(
                threads >= 2,
                "no helper woke: the tasks ran on {threads} thread"
            );
            break;
        }
    }
}
