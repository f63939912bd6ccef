//! What a write touched. A service's write path hands its result back wrapped in
//! [`Written`], naming the scopes the write changed (its `cache_rules.rs` says
//! which); the only way to the result is [`Cache::commit`](super::Cache::commit),
//! which invalidates those scopes first. A handler therefore cannot answer a write
//! without the invalidation, and dropping a `Written` is a `must_use` warning
//! (an error under `clippy -D warnings`).
//!
//! A write may also name [`Refresh`]es: reads of its scope it redoes itself
//! after committing, so that their answers are stored under the scope's new
//! generation in the same step that makes the old one dead, and readers of a
//! hot key find it ready instead of waiting for a load (see
//! [`Cache::commit_all`](super::Cache::commit_all)).

use std::future::Future;

use super::entry::Entry;
use super::{Body, LoadFailure, Policy, Scope};
use futures_util::future::BoxFuture;

/// A committed write's result, held until the scopes it changed are invalidated.
#[derive(Debug)]
#[must_use = "a write's result is reached through `Cache::commit`, which invalidates what it touched"]
pub struct Written<T> {
    value: T,
    touched: Vec<Scope>,
}

impl<T> Written<T> {
    /// `value`, which changed every entry of `touched`.
    pub fn new(value: T, touched: impl IntoIterator<Item = Scope>) -> Self {
        Self {
            value,
            touched: touched.into_iter().collect(),
        }
    }

    /// `value` of a write that changed nothing (its row was not found).
    pub fn unchanged(value: T) -> Self {
        Self {
            value,
            touched: Vec::new(),
        }
    }

    /// The write's result (committed; not yet answerable).
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The scopes to invalidate.
    pub fn touched(&self) -> &[Scope] {
        &self.touched
    }

    pub(super) fn into_parts(self) -> (T, Vec<Scope>) {
        (self.value, self.touched)
    }
}

impl<T> Written<Option<T>> {
    /// A write of a row that may not exist: `touched` when it did.
    pub fn if_found(value: Option<T>, touched: impl IntoIterator<Item = Scope>) -> Self {
        match value {
            Some(_) => Self::new(value, touched),
            None => Self::unchanged(None),
        }
    }
}

impl Written<bool> {
    /// A write that reports whether it changed a row: `touched` when it did.
    pub fn if_changed(changed: bool, touched: impl IntoIterator<Item = Scope>) -> Self {
        if changed {
            Self::new(true, touched)
        } else {
            Self::unchanged(false)
        }
    }
}

/// A cached read of one scope that a write redoes before it answers, if the
/// read is hot: a live entry of the scope's current generation is in this
/// replica's memory. Built without running anything (the load is a future that
/// is dropped unpolled when the read is not hot).
#[must_use = "a refresh does nothing until it is handed to `Cache::commit_all`"]
pub struct Refresh<'a> {
    pub(super) scope: Scope,
    pub(super) policy: Policy,
    pub(super) logical: String,
    /// For a derived refresh: the generation its old entry was live under.
    pub(super) derived_from: Option<u64>,
    pub(super) load: BoxFuture<'a, Result<Entry, LoadFailure>>,
}

/// A hot entry as it was before a write began ([`Cache::hot`](super::Cache::hot)):
/// the write can derive the entry's next value from it instead of loading it
/// ([`Refresh::derived`]).
#[derive(Debug, Clone)]
pub struct Hot {
    pub(super) scope: Scope,
    pub(super) logical: String,
    pub(super) generation: u64,
    pub(super) entry: std::sync::Arc<Entry>,
}

impl<'a> Refresh<'a> {
    /// The read of `logical` in `scope` under `policy`, loaded by `load` — the
    /// same key, policy and loader as the read's `Cache::get_or_load`.
    pub fn new<T, E, Fut>(
        scope: Scope,
        policy: &Policy,
        logical: impl Into<String>,
        load: Fut,
    ) -> Self
    where
        T: Body,
        E: Send + Sync + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'a,
    {
        let policy = *policy;
        Self {
            scope,
            policy,
            logical: logical.into(),
            derived_from: None,
            load: Box::pin(async move {
                super::load_entry(&policy, || load)
                    .await
                    .map(Entry::with_gzip)
            }),
        }
    }
}

impl Refresh<'static> {
    /// The read `hot` was, given its next value without a load: `derive` turns
    /// the old answer (its body) into the new one, knowing what the write did.
    ///
    /// Sound because of when `hot` was taken: before the write began, so the old
    /// answer holds none of the write's changes, and every write announced up to
    /// its generation. It is stored only if no other write moved the scope since
    /// (the bump's check): the one change it lacks is then a write not yet
    /// announced, whose own bump, later, makes it dead.
    pub fn derived<T, E>(
        hot: Hot,
        policy: &Policy,
        derive: impl FnOnce(&[u8]) -> Result<Option<T>, E> + Send + 'static,
    ) -> Self
    where
        T: Body + Send,
        E: Send + Sync + 'static,
    {
        let policy = *policy;
        let Hot {
            scope,
            logical,
            generation,
            entry,
        } = hot;
        Self {
            scope,
            policy,
            logical,
            derived_from: Some(generation),
            load: Box::pin(async move {
                super::load_entry(&policy, || async move { derive(&entry.body) })
                    .await
                    .map(Entry::with_gzip)
            }),
        }
    }
}

impl std::fmt::Debug for Refresh<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresh")
            .field("scope", &self.scope)
            .field("namespace", &self.policy.namespace)
            .field("logical", &self.logical)
            .field("derived_from", &self.derived_from)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn only_a_write_that_found_its_row_touches_a_scope() {
        let scope = Scope::user("svc", Uuid::nil());
        assert_eq!(
            Written::if_found(Some(1), [scope.clone()]).touched().len(),
            1
        );
        assert!(
            Written::<Option<i32>>::if_found(None, [scope.clone()])
                .touched()
                .is_empty()
        );
        assert_eq!(
            Written::if_changed(true, [scope.clone()]).touched().len(),
            1
        );
        assert!(Written::if_changed(false, [scope]).touched().is_empty());
    }
}
