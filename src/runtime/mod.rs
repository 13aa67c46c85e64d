//! Executors: one glommio `LocalExecutor` per core, each with its own io_uring.
//!
//! Runs on: every core. Invariant: every executor Keel starts is built here, so the
//! registered I/O memory of all of them stays within `ulimit -l` (8 MiB on our machines;
//! glommio's own default of 10 MiB per executor would not fit).

pub mod log;
pub mod responses;

use glommio::{LocalExecutorBuilder, Placement};
use std::future::Future;

/// Registered io_uring buffer memory per executor. Keel's storage writes go through
/// buffered files and the mmap, not DMA buffers, so a small pool is enough.
pub const IO_MEMORY_BYTES: usize = 512 * 1024;

/// A builder with Keel's defaults for an executor on `placement`.
pub fn executor_builder(name: &str, placement: Placement) -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(placement)
        .name(name)
        .io_memory(IO_MEMORY_BYTES)
        .ring_depth(128)
}

/// Runs `fut` to completion on a fresh, unpinned executor on the calling thread.
/// For tools, tests and boot-time work that is not yet on a core of its own.
pub fn block_on<T, F>(fut: F) -> T
where
    F: Future<Output = T> + 'static,
    T: 'static,
{
    executor_builder("keel-block-on", Placement::Unbound)
        .make()
        .expect("cannot start a glommio executor (io_uring unavailable or memlock too low?)")
        .run(fut)
}

/// glibc malloc tuned for a server that allocates and frees many short-lived buffers (a
/// fanned-out watch event, a coalesced write): no trimming of the heap top below 256 MiB
/// and no mmap for blocks under 32 MiB, so freed memory is reused instead of returned to
/// the kernel and faulted in again. Call once at boot, before any executor thread starts.
/// Since issue 22 the `keel` binary's Rust allocations go to mimalloc (its global
/// allocator, in main.rs); this still governs what C code allocates through glibc.
#[allow(unsafe_code)]
pub fn tune_malloc() {
    // SAFETY: mallopt only sets allocator parameters; it is called before any executor
    // thread starts.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
    }
}

/// Every `every`, asks the allocator to give back what this core freed (mimalloc's
/// `mi_collect`). mimalloc returns memory a thread freed only from that thread's own
/// allocator calls, so an executor that went quiet after a burst kept the burst's peak
/// resident: four 27 MB Range answers at once left Keel at 480 MiB, 250 MiB over its
/// size before them (tuning.md, issue 23). Call once on every executor (a detached task;
/// a member that boots again gets new executor threads).
pub fn spawn_allocator_collect(every: std::time::Duration) {
    extern "C" {
        fn mi_collect(force: bool);
    }
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(every).await;
            // SAFETY: mi_collect takes no pointers; it walks this thread's own heap
            // (empty, when mimalloc is not the global allocator, as in unit tests).
            #[allow(unsafe_code)]
            unsafe {
                mi_collect(false)
            };
        }
    })
    .detach();
}

/// The shortest [`background_pause`].
pub const IO_YIELD: std::time::Duration = std::time::Duration::from_micros(20);

/// The pause (a timer sleep) after a step of background work done between a core's
/// requests (a compaction's sweep) that took `took`: as long again, so the work takes at
/// most half of the core while requests wait for it, and never less than [`IO_YIELD`], so
/// that the executor polls its rings (the network, timers, other cores' messages) before
/// the next step. glommio's `yield_now` only puts a task back in its queue, and a queue
/// that always has a runnable task polls its rings only when the 100 ms preemption timer
/// fires: steps separated by `yield_now` held every connection of the core for that long
/// (tuning.md, issue 23: puts stalled 300 ms during a sweep). A timer already due when
/// polled (`sleep(0)`) does not yield at all.
pub fn background_pause(took: std::time::Duration) -> std::time::Duration {
    took.max(IO_YIELD)
}

/// Lets the executor poll its rings and run the core's other tasks before the caller goes
/// on (a pause of [`IO_YIELD`]): between the slices of a long computation on a
/// connection's core (see [`background_pause`] for why `yield_now` does not).
pub async fn yield_to_rings() {
    glommio::timer::sleep(IO_YIELD).await;
}

/// Lets the calling thread run on every CPU the process may use (its main thread's mask,
/// which no executor pins). A thread spawned from a pinned executor inherits that one
/// CPU; a helper thread that should run beside the executor calls this first. Best
/// effort: on failure the thread stays where it was.
#[allow(unsafe_code)]
pub fn unpin_current_thread() {
    // SAFETY: `set` is a plain bitmask the kernel fills and reads; both calls are given
    // its true size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(libc::getpid(), size, &mut set) == 0 {
            libc::sched_setaffinity(0, size, &set);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// The vendored glommio's `set_spin_before_park` (the raft core's idle spin): a pinned
    /// executor that spins still wakes for its timers and for wakes from other threads,
    /// and goes back to parking when the spin is turned off.
    #[test]
    fn a_spinning_executor_still_wakes_for_timers_and_other_threads() {
        let got = super::executor_builder("spin-test", glommio::Placement::Fixed(0))
            .spawn(|| async {
                let mut got = Vec::new();
                for spin in [
                    Some(Duration::from_millis(50)),
                    Some(Duration::from_micros(100)),
                    None,
                ] {
                    glommio::executor().set_spin_before_park(spin);
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                    let (tx, rx) = flume::bounded(1);
                    let sender = std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(10));
                        tx.send(spin).unwrap();
                    });
                    got.push(rx.recv_async().await.unwrap());
                    sender.join().unwrap();
                }
                got
            })
            .unwrap()
            .join()
            .unwrap();
        let want = vec![
            Some(Duration::from_millis(50)),
            Some(Duration::from_micros(100)),
            None,
        ];
        assert_eq!(got, want);
    }

    /// The vendored glommio keeps its preemption timers armed across turns (KEEL-PATCH.md):
    /// a busy task queue is still preempted every period, re-armed after each time the
    /// timer fires, and a timer shorter than the armed preemption timer still ends a sleep
    /// on time (the kept timer is cancelled for it). The bounds leave wide margins: at
    /// least 3 preemptions where the 100 ms period gives 4, and up to 70 ms for a 5 ms
    /// sleep that a kept timer would stretch to ~100 ms.
    #[test]
    fn kept_preemption_timers_still_preempt_and_do_not_delay_user_timers() {
        use std::cell::Cell;
        use std::rc::Rc;
        use std::time::Instant;
        let (preempted, slept) =
            super::executor_builder("preempt-test", glommio::Placement::Unbound)
                .spawn(|| async {
                    // A CPU-bound task that yields only when told to: the other task runs only
                    // when the preemption timer fires.
                    let ran = Rc::new(Cell::new(0u32));
                    let counter = {
                        let ran = ran.clone();
                        glommio::spawn_local(async move {
                            loop {
                                ran.set(ran.get() + 1);
                                futures_lite::future::yield_now().await;
                            }
                        })
                        .detach()
                    };
                    let started = Instant::now();
                    while started.elapsed() < Duration::from_millis(450) {
                        glommio::yield_if_needed().await;
                    }
                    let preempted = ran.get();
                    counter.cancel();
                    // The turn after a short sleep arms a preemption timer due 100 ms
                    // later; a 5 ms timer must not wait for it.
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                    let started = Instant::now();
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                    (preempted, started.elapsed())
                })
                .unwrap()
                .join()
                .unwrap();
        assert!(preempted >= 3, "preempted {preempted} times in 450 ms");
        assert!(
            slept < Duration::from_millis(70),
            "a 5 ms sleep took {slept:?}"
        );
    }
}
