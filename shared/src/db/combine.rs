//! Write combining (group commit): single-row writes that arrive while earlier
//! ones are still in flight reach PostgreSQL as one multi-row statement.
//!
//! Why: a single-row `INSERT` pays per statement for what does not depend on its
//! one row — the protocol round trip, executor start-up (PostgreSQL re-reads the
//! table's CHECK and generated-column expressions each time), statement-level
//! triggers, and the commit with its WAL flush. In the 90/10 read/write benchmark
//! those were most of PostgreSQL's ~500 µs per write (docs/PERFORMANCE.md).
//!
//! How: at most `slots` batches run at once. A write that finds a slot free
//! starts a driver for it and runs at once, alone — no timer, no added latency
//! when the service is quiet. A write that finds every slot busy queues. A
//! driver, when its batch is done, takes everything queued (up to `max_batch`)
//! and runs it as the next batch in the same task, until the queue is empty;
//! every writer gets its own result. The driver is a task of its own, so a
//! client that disconnects cannot cancel the other writers' batch half-way
//! (between the commit and the cache invalidation, say); a write whose client
//! went away before its batch started is not run at all.
//!
//! Why the driver goes on instead of handing the slot to a waiting writer: the
//! hand-over was a wake-up of another request's task on a busy worker, 0.5–0.6
//! ms per batch under the 90/10 benchmark (docs/PERFORMANCE.md, "Eighth
//! round") — a sixth of each batch's cycle, paid by every write queued behind it.
//!
//! The combiner knows nothing of SQL: the caller's `run` turns a batch of items
//! into one result per item, in order (a service's multi-row statement, with its
//! own fallback to one statement per item when the batch as a whole is refused).

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::FutureExt;
use tokio::sync::oneshot;

use crate::home::Home;

/// The batch carrying a write ended without answering it (its task panicked).
#[derive(Debug, thiserror::Error)]
#[error("the combined write's batch ended without an answer")]
pub struct Lost;

/// Combines concurrent writes of items `I` with results `O`. Cheap to clone.
pub struct Combiner<I, O> {
    inner: Arc<Inner<I, O>>,
}

impl<I, O> Clone for Combiner<I, O> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<I, O> {
    state: Mutex<State<I, O>>,
    /// Where drivers run: the runtime that built the combiner (see [`Home`]),
    /// where the pools' connections are driven too.
    home: Home,
    slots: usize,
    max_batch: usize,
}

struct State<I, O> {
    queue: VecDeque<(I, oneshot::Sender<O>)>,
    /// Drivers running (at most `slots`).
    driving: usize,
}

impl<I: Send + 'static, O: Send + 'static> Combiner<I, O> {
    /// At most `slots` batches in flight, each of at most `max_batch` items; the
    /// batches run on the runtime this is called on, if any.
    pub fn new(slots: usize, max_batch: usize) -> Self {
        assert!(
            slots > 0 && max_batch > 0,
            "a combiner needs a slot and a batch size"
        );
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    driving: 0,
                }),
                home: Home::here(),
                slots,
                max_batch,
            }),
        }
    }

    /// Writes `item`, alone or with whatever else is queued, and returns its
    /// result. A driver runs `run(ctx, items)` for each batch, which must return
    /// one result per item, in order.
    pub async fn submit<C, F, Fut>(&self, ctx: C, item: I, run: F) -> Result<O, Lost>
    where
        C: Clone + Send + 'static,
        F: Fn(C, Vec<I>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let alone = {
            let mut state = self.lock();
            if state.driving < self.inner.slots {
                state.driving += 1;
                Some((item, tx))
            } else {
                state.queue.push_back((item, tx));
                None
            }
        };
        if let Some(first) = alone {
            drop(self.inner.home.spawn(self.clone().drive(first, ctx, run)));
        }
        rx.await.map_err(|_| Lost)
    }

    /// Runs `first` alone, then batches of what queued meanwhile until the queue
    /// is empty, then gives its slot back (under the same lock a writer queues
    /// under, so no write is left queued without a driver).
    async fn drive<C, F, Fut>(self, first: (I, oneshot::Sender<O>), ctx: C, run: F)
    where
        C: Clone + Send + 'static,
        F: Fn(C, Vec<I>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        let mut batch = vec![first];
        loop {
            let (items, replies): (Vec<I>, Vec<_>) = batch.into_iter().unzip();
            // A panicking batch loses its own writes (their writers get `Lost`),
            // not the slot: the driver goes on with the next.
            if let Ok(results) = AssertUnwindSafe(run(ctx.clone(), items))
                .catch_unwind()
                .await
            {
                debug_assert_eq!(results.len(), replies.len(), "one result per item");
                for (reply, result) in replies.into_iter().zip(results) {
                    // A writer that went away no longer wants its answer.
                    let _ = reply.send(result);
                }
            }
            let mut state = self.lock();
            // Writers that went away before their batch began are not run.
            state.queue.retain(|(_, reply)| !reply.is_closed());
            let n = state.queue.len().min(self.inner.max_batch);
            if n == 0 {
                state.driving -= 1;
                return;
            }
            batch = state.queue.drain(..n).collect();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<I, O>> {
        self.inner.state.lock().expect("combiner state lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::future::BoxFuture;
    use std::time::Duration;

    type Runs = Arc<Mutex<Vec<Vec<u32>>>>;

    type Run = Box<dyn Fn((), Vec<u32>) -> BoxFuture<'static, Vec<u32>> + Send + Sync>;

    /// A `run` that records each batch, waits for the gate, and doubles each item.
    fn recording(runs: Runs, gate: Arc<tokio::sync::Notify>) -> Arc<Run> {
        Arc::new(Box::new(move |(), items: Vec<u32>| {
            let (runs, gate) = (runs.clone(), gate.clone());
            Box::pin(async move {
                runs.lock().unwrap().push(items.clone());
                gate.notified().await;
                items.into_iter().map(|i| i * 2).collect()
            }) as BoxFuture<'static, Vec<u32>>
        }))
    }

    /// A combiner with `slots` and `max_batch`, and a recording `run` held at its gate.
    fn fixture(
        slots: usize,
        max_batch: usize,
    ) -> (Combiner<u32, u32>, Runs, Arc<tokio::sync::Notify>, Arc<Run>) {
        let runs: Runs = Arc::default();
        let gate = Arc::new(tokio::sync::Notify::new());
        let run = recording(runs.clone(), gate.clone());
        (Combiner::new(slots, max_batch), runs, gate, run)
    }

    /// Submits `item` from its own task (a request of its own).
    fn submit(
        combiner: &Combiner<u32, u32>,
        run: &Arc<Run>,
        item: u32,
    ) -> tokio::task::JoinHandle<u32> {
        let (c, run) = (combiner.clone(), run.clone());
        tokio::spawn(async move {
            c.submit((), item, move |ctx, items| run(ctx, items))
                .await
                .unwrap()
        })
    }

    /// Item 1 in flight (held at the gate), then 2 and 3 queued behind it, in
    /// that order.
    async fn one_running_two_queued(
        combiner: &Combiner<u32, u32>,
        runs: &Runs,
        run: &Arc<Run>,
    ) -> [tokio::task::JoinHandle<u32>; 3] {
        let running = submit(combiner, run, 1);
        until(|| runs.lock().unwrap().len() == 1).await;
        let second = submit(combiner, run, 2);
        until(|| combiner.lock().queue.len() == 1).await;
        let third = submit(combiner, run, 3);
        until(|| combiner.lock().queue.len() == 2).await;
        [running, second, third]
    }

    async fn until(mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("condition never held");
    }

    #[tokio::test]
    async fn writes_queued_behind_a_busy_slot_run_as_one_batch_and_each_gets_its_own_result() {
        let (combiner, runs, gate, run) = fixture(1, 64);

        // The first write finds the slot free and runs alone.
        let first = submit(&combiner, &run, 1);
        until(|| runs.lock().unwrap().len() == 1).await;
        // Three more arrive while it is in flight: they queue.
        let rest: Vec<_> = (2..=4).map(|i| submit(&combiner, &run, i)).collect();
        until(|| combiner.lock().queue.len() == 3).await;
        gate.notify_one();
        assert_eq!(first.await.unwrap(), 2);
        until(|| runs.lock().unwrap().len() == 2).await;
        gate.notify_one();
        let mut answers = Vec::new();
        for r in rest {
            answers.push(r.await.unwrap());
        }
        assert_eq!(answers, [4, 6, 8], "each writer gets its own item's result");
        assert_eq!(
            *runs.lock().unwrap(),
            vec![vec![1], vec![2, 3, 4]],
            "two batches, four items"
        );
    }

    #[tokio::test]
    async fn a_batch_holds_at_most_max_batch_items_and_the_rest_follow() {
        let (combiner, runs, gate, run) = fixture(1, 2);
        let first = submit(&combiner, &run, 0);
        until(|| runs.lock().unwrap().len() == 1).await;
        let rest: Vec<_> = (1..=5).map(|i| submit(&combiner, &run, i)).collect();
        until(|| combiner.lock().queue.len() == 5).await;
        for expected_runs in 2..=4 {
            gate.notify_one();
            until(|| runs.lock().unwrap().len() == expected_runs).await;
        }
        gate.notify_one();
        first.await.unwrap();
        for (i, r) in rest.into_iter().enumerate() {
            assert_eq!(r.await.unwrap(), 2 * (i as u32 + 1));
        }
        let runs = runs.lock().unwrap().clone();
        assert_eq!(runs, vec![vec![0], vec![1, 2], vec![3, 4], vec![5]]);
    }

    #[tokio::test]
    async fn a_writer_that_goes_away_does_not_cancel_the_batch_it_is_in() {
        let (combiner, runs, gate, run) = fixture(1, 64);
        // Two writers queue; they go in the next batch together.
        let [busy, gone, stays] = one_running_two_queued(&combiner, &runs, &run).await;
        gate.notify_one();
        busy.await.unwrap();
        until(|| runs.lock().unwrap().len() == 2).await;
        // The first one's client disconnects while their batch is in flight.
        gone.abort();
        gate.notify_one();
        assert_eq!(
            stays.await.unwrap(),
            6,
            "the other writer still gets its answer"
        );
        assert_eq!(*runs.lock().unwrap(), vec![vec![1], vec![2, 3]]);
    }

    #[tokio::test]
    async fn with_free_slots_each_write_runs_at_once_alone() {
        let (combiner, runs, gate, run) = fixture(2, 64);
        let a = submit(&combiner, &run, 1);
        let b = submit(&combiner, &run, 2);
        until(|| runs.lock().unwrap().len() == 2).await;
        gate.notify_one();
        gate.notify_one();
        assert_eq!((a.await.unwrap(), b.await.unwrap()), (2, 4));
        let mut runs = runs.lock().unwrap().clone();
        runs.sort();
        assert_eq!(runs, vec![vec![1], vec![2]], "two batches of one item each");
    }

    #[tokio::test]
    async fn a_write_whose_writer_went_away_before_its_batch_began_is_not_run() {
        let (combiner, runs, gate, run) = fixture(1, 64);
        let [busy, gone, stays] = one_running_two_queued(&combiner, &runs, &run).await;
        gone.abort();
        let _ = gone.await;
        gate.notify_one();
        busy.await.unwrap();
        until(|| runs.lock().unwrap().len() == 2).await;
        gate.notify_one();
        assert_eq!(stays.await.unwrap(), 6);
        assert_eq!(*runs.lock().unwrap(), vec![vec![1], vec![3]]);
    }

    #[tokio::test]
    async fn a_batch_that_panics_loses_its_writes_not_the_slot() {
        let combiner: Combiner<u32, u32> = Combiner::new(1, 64);
        let run = |(), items: Vec<u32>| async move {
            assert!(!items.contains(&13), "the batch's own failure");
            items
        };
        let c = combiner.clone();
        let lost = tokio::spawn(async move { c.submit((), 13, run).await });
        assert!(
            matches!(lost.await.unwrap(), Err(Lost)),
            "its writer learns the batch ended without an answer"
        );
        assert_eq!(
            combiner.submit((), 7, run).await.unwrap(),
            7,
            "the next write still runs"
        );
        assert_eq!(combiner.lock().driving, 0, "and the slot is free again");
    }

    #[test]
    fn batches_run_on_the_runtime_that_built_the_combiner() {
        let home = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("combiner-home")
            .enable_all()
            .build()
            .unwrap();
        let combiner: Combiner<u32, String> = home.block_on(async { Combiner::new(1, 64) });
        let worker = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ran_on = worker.block_on(combiner.submit((), 1, |(), items: Vec<u32>| async move {
            let name = std::thread::current().name().unwrap_or_default().to_owned();
            items.iter().map(|_| name.clone()).collect()
        }));
        assert_eq!(ran_on.unwrap(), "combiner-home");
    }
}
