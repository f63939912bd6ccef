//! Write combining (group commit): single-row writes that arrive while earlier
//! ones are still in flight reach PostgreSQL as one multi-row statement.
//!
//! Why: a single-row `INSERT` pays per statement for what does not depend on its
//! one row — the protocol round trip, executor start-up (PostgreSQL re-reads the
//! table's CHECK and generated-column expressions each time), statement-level
//! triggers, and the commit with its WAL flush. In the 90/10 read/write benchmark
//! those were most of PostgreSQL's ~500 µs per write (docs/PERFORMANCE.md).
//!
//! How: at most `slots` batches run at once. A write that finds a slot free runs
//! at once, alone — no timer, no added latency when the service is quiet. A write
//! that finds every slot busy queues; when a slot frees, the first waiter takes
//! everything queued (up to `max_batch`) and runs it as one batch, and every
//! writer in it gets its own result. The batch runs in its own task, so a client
//! that disconnects cannot cancel the other writers' batch half-way (between the
//! commit and the cache invalidation, say).
//!
//! The combiner knows nothing of SQL: the caller's `run` turns a batch of items
//! into one result per item, in order (a service's multi-row statement, with its
//! own fallback to one statement per item when the batch as a whole is refused).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, oneshot};

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
    queue: Mutex<VecDeque<(I, oneshot::Sender<O>)>>,
    slots: Arc<Semaphore>,
    max_batch: usize,
}

impl<I: Send + 'static, O: Send + 'static> Combiner<I, O> {
    /// At most `slots` batches in flight, each of at most `max_batch` items.
    pub fn new(slots: usize, max_batch: usize) -> Self {
        assert!(
            slots > 0 && max_batch > 0,
            "a combiner needs a slot and a batch size"
        );
        Self {
            inner: Arc::new(Inner {
                queue: Mutex::new(VecDeque::new()),
                slots: Arc::new(Semaphore::new(slots)),
                max_batch,
            }),
        }
    }

    /// Writes `item`, alone or with whatever else is queued, and returns its
    /// result. Whoever leads a batch runs `run(ctx, items)`, which must return one
    /// result per item, in order.
    pub async fn submit<C, F, Fut>(&self, ctx: C, item: I, run: F) -> Result<O, Lost>
    where
        C: Clone + Send + 'static,
        F: Fn(C, Vec<I>) -> Fut,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        let (tx, mut rx) = oneshot::channel();
        self.lock().push_back((item, tx));
        loop {
            tokio::select! {
                biased;
                out = &mut rx => return out.map_err(|_| Lost),
                permit = self.inner.slots.clone().acquire_owned() => {
                    let permit = permit.expect("the combiner's semaphore is never closed");
                    let batch: Vec<_> = {
                        let mut queue = self.lock();
                        let n = queue.len().min(self.inner.max_batch);
                        queue.drain(..n).collect()
                    };
                    if batch.is_empty() {
                        // Another leader took this write: wait for its answer.
                        drop(permit);
                        return rx.await.map_err(|_| Lost);
                    }
                    let (items, replies): (Vec<I>, Vec<_>) = batch.into_iter().unzip();
                    let work = run(ctx.clone(), items);
                    tokio::spawn(async move {
                        let results = work.await;
                        drop(permit);
                        debug_assert_eq!(results.len(), replies.len(), "one result per item");
                        for (reply, result) in replies.into_iter().zip(results) {
                            // A writer that went away no longer wants its answer.
                            let _ = reply.send(result);
                        }
                    });
                    // This write may not have fitted in the batch: go round again.
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(I, oneshot::Sender<O>)>> {
        self.inner.queue.lock().expect("combiner queue lock")
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
            c.submit((), item, |ctx, items| run(ctx, items))
                .await
                .unwrap()
        })
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
        until(|| combiner.lock().len() == 3).await;
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
        until(|| combiner.lock().len() == 5).await;
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
    async fn a_writer_that_goes_away_does_not_cancel_the_batch_it_leads() {
        let (combiner, runs, gate, run) = fixture(1, 64);
        let busy = submit(&combiner, &run, 1);
        until(|| runs.lock().unwrap().len() == 1).await;
        // Two writers queue; the first of them will lead their batch.
        let leader = submit(&combiner, &run, 2);
        until(|| combiner.lock().len() == 1).await;
        let follower = submit(&combiner, &run, 3);
        until(|| combiner.lock().len() == 2).await;
        gate.notify_one();
        busy.await.unwrap();
        until(|| runs.lock().unwrap().len() == 2).await;
        // The leader's client disconnects while its batch is in flight.
        leader.abort();
        gate.notify_one();
        assert_eq!(
            follower.await.unwrap(),
            6,
            "the follower still gets its answer"
        );
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
}
