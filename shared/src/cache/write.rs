//! What a write touched. A service's write path hands its result back wrapped in
//! [`Written`], naming the scopes the write changed (its `cache_rules.rs` says
//! which); the only way to the result is [`Cache::commit`](super::Cache::commit),
//! which invalidates those scopes first. A handler therefore cannot answer a write
//! without the invalidation, and dropping a `Written` is a `must_use` warning
//! (an error under `clippy -D warnings`).

use super::Scope;

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
