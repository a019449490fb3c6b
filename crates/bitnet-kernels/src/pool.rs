//! Where the kernels' parallel loops run: a persistent pool of spinning workers
//! ([`ThreadPool`]) when one is installed on the calling thread, else the current rayon pool.
//!
//! Why a second pool: a decode step is ~150 parallel loops of 10-300 µs each (q/k/v, o, gate/up,
//! down per layer, attention, the head). Rayon's idle workers fall asleep on a futex within
//! microseconds of running out of work, so every loop pays a wake-up of each worker (several µs,
//! more on a loaded or virtualised machine) and the loop waits for the slowest. The workers here
//! keep spinning on one atomic for [`SPIN`] after their last task, which covers the gaps between
//! the loops of a decode step; only then do they park, so an idle engine costs no CPU.
//!
//! Measured (2B4T shapes, `BITNET_POOL=spin|rayon bitnet bench -p 128 -n 32`, interleaved runs):
//! on the lent 16-core Xeon spin/rayon is pp128 2.1x / tg32 1.35x at 2 threads, 2.4x / 1.4x at
//! 4, 1.35x / 1.3x at 8, 1.3x / 1.05x at 16; on the 2-vCPU development VM it is 0.97-1.0x for
//! both (rayon's sleeping workers cost little there). So the engine defaults to this pool.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a worker spins for the next loop before parking.
const SPIN: Duration = Duration::from_millis(2);

/// One parallel loop: `f(i)` for `i in 0..n`. It lives on the caller's stack for the duration
/// of [`ThreadPool::for_each`]; workers reach it through [`Shared::job`].
struct Job {
    /// Type- and lifetime-erased `&(dyn Fn(usize) + Sync)`; see [`ThreadPool::for_each`] for
    /// why it is never called after the loop returns.
    f: *const (dyn Fn(usize) + Sync + 'static),
    n: usize,
}

/// A value alone on its cache lines (two, for the adjacent-line prefetcher): the per-thread
/// cursors and the counters are written by different cores at once, and sharing a line would
/// make every claim a cache-line transfer between all of them.
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// What the workers and the caller share. Per loop the caller writes the job, the cursors and
/// `done`, then opens the loop with one store to `state`; nothing is allocated and no lock is
/// taken, so the fixed cost of a loop is a few cache-line transfers per thread.
struct Shared {
    /// `generation << 1 | open`. Workers spin on it; a loop is open from its publication until
    /// the caller has counted all `n` tasks done.
    state: Padded<AtomicU64>,
    /// The open loop's job (valid while `state` is open, and after it closes for as long as a
    /// worker that joined in time is still registered in `active`).
    job: AtomicPtr<Job>,
    /// Workers inside the current loop. The caller closes the loop, then waits for zero before
    /// the job (on its stack) goes away.
    active: Padded<AtomicUsize>,
    /// Tasks finished in the current loop (each thread adds its count once, when it leaves).
    done: Padded<AtomicUsize>,
    /// Next unclaimed index of each thread's range `[r * n / T, (r + 1) * n / T)`.
    next: Box<[Padded<AtomicUsize>]>,
    /// The first panic of a task of the current loop, for the caller to re-raise.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    /// Workers parked (or about to park) on `wake`.
    sleepers: AtomicUsize,
    /// Guards the parking hand-shake (its value is unused).
    park: Mutex<()>,
    wake: Condvar,
    stop: AtomicBool,
}

impl Shared {
    /// Runs thread `me`'s range of `job`, then whatever is left of the others'. A panicking task
    /// still counts as done (so no thread waits forever); the first panic is kept for the caller.
    fn work(&self, job: &Job, me: usize) {
        let outer = IN_TASK.with(|t| t.replace(true));
        let parts = self.next.len();
        let mut ran = 0;
        for k in 0..parts {
            let r = (me + k) % parts;
            let end = (r + 1) * job.n / parts;
            loop {
                // A plain load first: once a range is used up, every thread that finishes
                // would otherwise write its cursor's line just to learn that.
                if self.next[r].load(Ordering::Relaxed) >= end {
                    break;
                }
                let i = self.next[r].fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    break;
                }
                // SAFETY: index i < n was claimed by this thread only, and for_each does not
                // return (so the closure is alive) until `done` counts it and `active` is zero.
                let run = std::panic::AssertUnwindSafe(|| unsafe { (*job.f)(i) });
                if let Err(payload) = std::panic::catch_unwind(run) {
                    let mut slot = lock(&self.panic);
                    if slot.is_none() {
                        *slot = Some(payload);
                    }
                }
                ran += 1;
            }
        }
        self.done.fetch_add(ran, Ordering::Release);
        IN_TASK.with(|t| t.set(outer));
    }
}

/// A fixed set of `threads - 1` worker threads plus the caller, for the kernels' parallel loops.
/// Install it with [`ThreadPool::install`]; dropping it stops the workers.
pub struct ThreadPool {
    shared: Arc<Shared>,
    /// One loop at a time: callers on other threads (two sessions of one engine) take turns.
    caller: Mutex<()>,
    threads: usize,
    workers: Vec<std::thread::JoinHandle<()>>,
}

thread_local! {
    /// The pool installed on this thread, as a raw pointer valid while `install` runs.
    static CURRENT: Cell<*const ThreadPool> = const { Cell::new(std::ptr::null()) };
    /// Set while this thread runs a task of a loop: a loop started from inside one runs
    /// serially instead of waiting for the pool it is part of.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
    /// On a pool's worker thread: that pool's thread count (0 elsewhere).
    static WORKER_OF: Cell<usize> = const { Cell::new(0) };
}

impl ThreadPool {
    /// Starts `threads - 1` workers (the thread that calls into the pool is the last one).
    /// Where the target has no threads (wasm32 without the `atomics` feature: browsers' and
    /// Node's plain WebAssembly) the pool has one thread and runs every loop inline.
    pub fn new(threads: usize) -> std::io::Result<ThreadPool> {
        let threads = if cfg!(all(target_family = "wasm", not(target_feature = "atomics"))) {
            1
        } else {
            threads.max(1)
        };
        let shared = Arc::new(Shared {
            state: Padded(AtomicU64::new(0)),
            job: AtomicPtr::new(std::ptr::null_mut()),
            active: Padded(AtomicUsize::new(0)),
            done: Padded(AtomicUsize::new(0)),
            next: (0..threads).map(|_| Padded(AtomicUsize::new(0))).collect(),
            panic: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            park: Mutex::new(()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let mut pool = ThreadPool {
            shared: shared.clone(),
            caller: Mutex::new(()),
            threads,
            workers: Vec::with_capacity(threads - 1),
        };
        for i in 1..threads {
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("bitnet-spin-{i}"))
                .spawn(move || {
                    WORKER_OF.with(|w| w.set(threads));
                    worker(&shared, i)
                })?;
            // On error `pool` drops here and stops the workers already started.
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    /// Threads that run a loop (workers + the caller).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` with this pool as the one the kernels use on this thread.
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(*const ThreadPool);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.replace(self)));
        f()
    }

    /// `f(i)` for every `i in 0..n`, spread over the workers and the caller; returns when all
    /// are done.
    pub fn for_each(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if n == 0 {
            return;
        }
        if self.threads == 1 || n == 1 || IN_TASK.with(|t| t.get()) {
            (0..n).for_each(f);
            return;
        }
        let _turn = lock(&self.caller);
        let f: *const (dyn Fn(usize) + Sync + '_) = f;
        // SAFETY: only the lifetime is erased. The pointer is only dereferenced for an index
        // claimed from `next` inside its range, by a thread registered in `active`, and this
        // function does not return before `done == n` and `active == 0`, i.e. before every such
        // call has finished. A worker that sees the loop closed never touches the job.
        let f: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
        let job = Job { f, n };
        let s = &*self.shared;
        // No worker is inside a loop here (the previous call waited for `active == 0`), so the
        // cursors and counters can be reset with plain stores; the SeqCst store that opens the
        // loop publishes them.
        for (r, c) in s.next.iter().enumerate() {
            c.store(r * n / self.threads, Ordering::Relaxed);
        }
        s.done.store(0, Ordering::Relaxed);
        s.job
            .store(&job as *const Job as *mut Job, Ordering::Relaxed);
        let open = ((s.state.load(Ordering::Relaxed) >> 1) + 1) << 1 | 1;
        // Opening and closing are swaps, not stores: each is followed by a load of what the
        // workers write (`sleepers` here, `active` below), and that store-then-load order is
        // what keeps a worker from joining a loop that is gone. SeqCst stores and loads give it
        // by the memory model, but qemu-user on an x86 host runs an aarch64 `stlr` then `ldar`
        // as a plain store and load that the host's store buffer may reorder; an atomic
        // read-modify-write becomes a locked host instruction, a full barrier. Measured under
        // qemu-aarch64 (the CI's aarch64 tests): with stores, 4 of 10 runs of
        // `back_to_back_loops_run_every_task_once` had a worker read the job after the caller
        // had cleared it; with swaps, none of 140. Natively the cost is nil (x86's SeqCst store
        // is an `xchg` already).
        s.state.swap(open, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = lock(&s.park);
            s.wake.notify_all();
        }
        s.work(&job, 0);
        let mut polls = 0u32;
        while s.done.load(Ordering::Acquire) < n {
            polls = polls.wrapping_add(1);
            relax(polls);
        }
        // Close the loop, then wait for the workers that joined it to leave: a late worker
        // either registered before the close (and is waited for here) or sees it closed.
        s.state.swap(open & !1, Ordering::SeqCst);
        while s.active.load(Ordering::SeqCst) > 0 {
            polls = polls.wrapping_add(1);
            relax(polls);
        }
        s.job.store(std::ptr::null_mut(), Ordering::Relaxed);
        // Every task has finished, so nothing refers to `f` any more: re-raise a task's panic
        // here, on the caller, as a serial loop would have.
        let payload = lock(&s.panic).take();
        if let Some(payload) = payload {
            std::panic::resume_unwind(payload);
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _guard = lock(&self.shared.park);
            self.shared.wake.notify_all();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (it is only an `Option`
/// swap or nothing at all).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One poll of a spin-wait: a `pause`, and now and then a yield, so that on an oversubscribed
/// machine (tests in parallel, other processes) a spinning thread hands its core to whoever
/// holds the work it waits for. With free cores the yield returns at once.
#[inline]
fn relax(polls: u32) {
    if polls.is_multiple_of(128) {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// Workers that found a loop open but its job cleared (see `worker`): the tests require none.
#[cfg(test)]
static NULL_JOBS: AtomicUsize = AtomicUsize::new(0);

fn worker(s: &Shared, me: usize) {
    let mut seen = s.state.load(Ordering::SeqCst);
    loop {
        let mut since = Instant::now();
        let mut polls = 0u32;
        let state = loop {
            if s.stop.load(Ordering::Relaxed) {
                return;
            }
            let st = s.state.load(Ordering::Acquire);
            if st != seen {
                seen = st;
                if st & 1 == 1 {
                    break st;
                }
                // A loop closed before this thread got to it: wait for the next one.
                continue;
            }
            polls = polls.wrapping_add(1);
            relax(polls);
            // Checking the clock every poll would cost more than the poll.
            if polls.is_multiple_of(1024) && since.elapsed() > SPIN {
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                let mut guard = lock(&s.park);
                // Re-checked under the lock: a loop published after this check notifies only
                // after this thread waits, so the wake-up cannot be lost.
                while s.state.load(Ordering::SeqCst) == seen && !s.stop.load(Ordering::SeqCst) {
                    guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                }
                drop(guard);
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
                since = Instant::now();
            }
        };
        // Register, then check the loop is still the open one: if so, the caller cannot
        // return (and free the job) until this thread deregisters.
        s.active.fetch_add(1, Ordering::SeqCst);
        if s.state.load(Ordering::SeqCst) == state {
            let job = s.job.load(Ordering::Acquire);
            // The loop's opening swap publishes `job` and its closing swap keeps the caller
            // from clearing it while this thread is registered, so it is not null here. Were
            // that order lost (as qemu-user lost it while those were plain stores: see
            // for_each), a thread that takes no index is still harmless - the caller and the
            // other threads run every index - so a null job is a loop it came too late for.
            // Tests count such arrivals, which must not happen.
            if job.is_null() {
                #[cfg(test)]
                NULL_JOBS.fetch_add(1, Ordering::Relaxed);
            } else {
                // SAFETY: the loop is open and this thread is registered, so `job` points to
                // the caller's live Job (see ThreadPool::for_each).
                s.work(unsafe { &*job }, me);
            }
        }
        s.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Rows (tokens) from which per-row work such as activation quantization or a norm is spread
/// over the pool. Measured on the 16-core host (2B4T shapes, 16 threads): 16 decoding sequences
/// gained 3-10% from it and a 128-token prompt 10-55%, but 4 sequences lost 25-40%, the pool's
/// fixed cost per loop (~12 loops per layer) outweighing four rows' work.
pub const PAR_ROWS: usize = 16;

/// A raw output pointer shared by the tasks of one parallel kernel call. Each task writes a
/// disjoint set of elements (its own rows, for every token), which is what makes the `Send` /
/// `Sync` impls sound; the outputs of a row chunk are strided by `rows` when there are several
/// tokens, so `par_chunks_mut` cannot express the split.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut<T>(*mut T);
// SAFETY: a SharedOut only writes `T`s into the slice it was made from (through the unsafe
// methods, whose callers keep the tasks' elements disjoint); sending it sends those writes, which
// `T: Send` allows.
unsafe impl<T: Send> Send for SharedOut<T> {}
// SAFETY: shared between tasks it is still only a pointer to write through; the disjointness that
// the unsafe methods demand keeps two tasks off the same element.
unsafe impl<T: Send> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    pub(crate) fn new(out: &mut [T]) -> Self {
        SharedOut(out.as_mut_ptr())
    }

    /// # Safety
    /// `i` must be in bounds of the slice this was made from, and no other task may access
    /// element `i` during the call.
    #[inline(always)]
    pub(crate) unsafe fn write(self, i: usize, v: T) {
        // SAFETY: in bounds of the original slice and not accessed by another task (this
        // function's contract).
        unsafe { self.0.add(i).write(v) }
    }

    /// # Safety
    /// `start..start + len` must be in bounds of the slice this was made from, and no other
    /// task may access it while the returned slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice_mut<'a>(&self, start: usize, len: usize) -> &'a mut [T] {
        // SAFETY: in bounds of the original slice and not aliased while it lives (this
        // function's contract).
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// Targets without threads (wasm32 without the `atomics` feature): every loop runs inline on
/// the caller and rayon's global pool is never started (its fallback there registers the calling
/// thread as a worker, and under Node's WASI a test process doing so crashed Node at exit).
const NO_THREADS: bool = cfg!(all(target_family = "wasm", not(target_feature = "atomics")));

/// Threads the kernels' loops run on here: the installed [`ThreadPool`]'s (also on its worker
/// threads), else rayon's.
pub fn current_num_threads() -> usize {
    if NO_THREADS {
        return 1;
    }
    let p = CURRENT.with(|c| c.get());
    if p.is_null() {
        match WORKER_OF.with(|w| w.get()) {
            0 => rayon::current_num_threads(),
            n => n,
        }
    } else {
        // SAFETY: non-null only inside ThreadPool::install, which borrows the pool.
        unsafe { (*p).threads }
    }
}

/// `f(i)` for `i in 0..n` on the installed [`ThreadPool`], else on the current rayon pool.
pub fn parallel_for(n: usize, f: impl Fn(usize) + Sync) {
    if NO_THREADS {
        (0..n).for_each(f);
        return;
    }
    let p = CURRENT.with(|c| c.get());
    if p.is_null() {
        use rayon::prelude::*;
        (0..n).into_par_iter().for_each(&f);
    } else {
        // SAFETY: as in current_num_threads.
        unsafe { (*p).for_each(n, &f) }
    }
}

/// `f(i, chunk)` for the `chunk`-sized pieces of `data` (the last may be shorter), in parallel
/// as [`parallel_for`].
pub fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let chunk = chunk.max(1);
    let len = data.len();
    let base = SharedOut::new(data);
    parallel_for(len.div_ceil(chunk), |i| {
        let start = i * chunk;
        let n = chunk.min(len - start);
        // SAFETY: piece i is `start..start + n`, inside `data` and disjoint from every other
        // piece; `data` is mutably borrowed for the whole call.
        f(i, unsafe { base.slice_mut(start, n) })
    });
}

// These need worker threads (`ThreadPool::new` makes one-thread pools on wasm32).
#[cfg(all(test, not(target_family = "wasm")))]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once_across_many_jobs() {
        for threads in [1, 2, 3, 5] {
            let pool = ThreadPool::new(threads).unwrap();
            for n in [0usize, 1, 2, 7, 64, 1000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.install(|| {
                    assert_eq!(current_num_threads(), threads);
                    parallel_for(n, |i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    })
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    /// Loops back to back, so workers often arrive at a loop late, after it closed, or while
    /// the next one opens: every task still runs exactly once per loop.
    #[test]
    fn back_to_back_loops_run_every_task_once() {
        for threads in [2, 4, 7] {
            let pool = ThreadPool::new(threads).unwrap();
            let hits: Vec<AtomicUsize> = (0..16).map(|_| AtomicUsize::new(0)).collect();
            let mut expected = [0usize; 16];
            for round in 0..20_000usize {
                let n = 1 + round % 16;
                pool.for_each(n, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                expected.iter_mut().take(n).for_each(|e| *e += 1);
            }
            let got: Vec<usize> = hits.iter().map(|h| h.load(Ordering::Relaxed)).collect();
            assert_eq!(got, expected, "{threads} threads");
            assert_eq!(
                NULL_JOBS.load(Ordering::Relaxed),
                0,
                "a worker read a cleared job"
            );
        }
    }

    #[test]
    fn chunks_cover_the_slice_once() {
        let pool = ThreadPool::new(3).unwrap();
        let mut v = vec![0u32; 1001];
        pool.install(|| {
            for_each_chunk_mut(&mut v, 10, |i, c| {
                c.iter_mut().for_each(|x| *x += i as u32 + 1)
            })
        });
        assert!(v.iter().enumerate().all(|(k, &x)| x == (k / 10) as u32 + 1));
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_after_the_others_finish() {
        let pool = ThreadPool::new(3).unwrap();
        let ran = AtomicUsize::new(0);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.for_each(50, &|i| {
                ran.fetch_add(1, Ordering::Relaxed);
                assert!(i != 37, "task 37 fails");
            })
        }));
        assert!(r.is_err());
        assert_eq!(ran.load(Ordering::Relaxed), 50);
        // The pool still works afterwards.
        let sum = AtomicUsize::new(0);
        pool.for_each(10, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 45);
    }

    #[test]
    fn parked_workers_wake_up() {
        let pool = ThreadPool::new(3).unwrap();
        std::thread::sleep(SPIN * 3);
        let sum = AtomicUsize::new(0);
        pool.for_each(100, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 4950);
    }

    #[test]
    fn install_restores_the_previous_pool() {
        let (a, b) = (ThreadPool::new(2).unwrap(), ThreadPool::new(3).unwrap());
        a.install(|| {
            b.install(|| assert_eq!(current_num_threads(), 3));
            assert_eq!(current_num_threads(), 2);
        });
    }
}
