//! Single-flight: N concurrent misses of one key on one instance run the loader
//! once; the others wait for its result (success or error). If the leader is
//! cancelled (its client went away), one waiter takes over instead of hanging.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Coalesces concurrent work per key.
pub struct SingleFlight<T> {
    inflight: Arc<Mutex<HashMap<String, watch::Receiver<Option<T>>>>>,
}

impl<T> Default for SingleFlight<T> {
    fn default() -> Self {
        Self {
            inflight: Arc::default(),
        }
    }
}

enum Role<T> {
    Leader(watch::Sender<Option<T>>),
    Follower(watch::Receiver<Option<T>>),
}

/// Removes the in-flight marker when the leader finishes or is dropped.
struct Unregister<T> {
    inflight: Arc<Mutex<HashMap<String, watch::Receiver<Option<T>>>>>,
    key: String,
}

impl<T> Drop for Unregister<T> {
    fn drop(&mut self) {
        self.inflight
            .lock()
            .expect("single-flight lock")
            .remove(&self.key);
    }
}

impl<T: Clone> SingleFlight<T> {
    /// Runs `work` unless the same key is already running; returns the result and
    /// whether this call ran it.
    pub async fn run(&self, key: &str, work: impl Future<Output = T>) -> (T, bool) {
        let mut work = Some(work);
        loop {
            let role = {
                let mut map = self.inflight.lock().expect("single-flight lock");
                match map.get(key) {
                    Some(rx) => Role::Follower(rx.clone()),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        map.insert(key.to_owned(), rx);
                        Role::Leader(tx)
                    }
                }
            };
            match role {
                Role::Leader(tx) => {
                    let _unregister = Unregister {
                        inflight: self.inflight.clone(),
                        key: key.to_owned(),
                    };
                    let work = work.take().expect("a call leads at most once");
                    let value = work.await;
                    tx.send_replace(Some(value.clone()));
                    return (value, true);
                }
                Role::Follower(mut rx) => {
                    if let Ok(value) = rx.wait_for(Option::is_some).await {
                        return (value.clone().expect("waited for Some"), false);
                    }
                    // The leader was dropped before finishing: try again (maybe as leader).
                }
            }
        }
    }

    /// Waits for the flight running for `key`, if one is: its value; `None` when
    /// none runs (or its leader was dropped before finishing).
    pub async fn follow(&self, key: &str) -> Option<T> {
        let mut rx = {
            let map = self.inflight.lock().expect("single-flight lock");
            map.get(key)?.clone()
        };
        let value = rx.wait_for(Option::is_some).await.ok()?;
        value.clone()
    }

    /// Whether `key` is being loaded right now.
    pub fn is_running(&self, key: &str) -> bool {
        self.inflight
            .lock()
            .expect("single-flight lock")
            .contains_key(key)
    }

    /// Keys currently in flight (for tests).
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.inflight.lock().expect("single-flight lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_calls_run_the_work_once() {
        let sf = Arc::new(SingleFlight::<u32>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let (sf, runs) = (sf.clone(), runs.clone());
                tokio::spawn(async move {
                    sf.run("k", async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        7
                    })
                    .await
                })
            })
            .collect();
        let mut leaders = 0;
        for t in tasks {
            let (v, led) = t.await.unwrap();
            assert_eq!(v, 7);
            leaders += usize::from(led);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
        assert_eq!(sf.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_over_to_a_waiter() {
        let sf = Arc::new(SingleFlight::<u32>::default());
        let leader = {
            let sf = sf.clone();
            tokio::spawn(async move { sf.run("k", std::future::pending::<u32>()).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let follower = {
            let sf = sf.clone();
            tokio::spawn(async move { sf.run("k", async { 9 }).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        leader.abort();
        let (v, led) = tokio::time::timeout(Duration::from_secs(5), follower)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((v, led), (9, true));
    }
}
