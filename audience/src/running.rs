//! Names with a computation under way in this process: a second computation of one name is
//! refused while the first runs, never overlapped. Packs and saved reports each keep one.

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::error::{Error, Result};

/// The names being computed now.
pub struct Registry(Mutex<BTreeSet<String>>);

impl Registry {
    pub const fn new() -> Registry {
        Registry(Mutex::new(BTreeSet::new()))
    }

    /// Marks `name` as running until the guard is dropped; if it already runs, a conflict
    /// saying `busy`.
    pub fn start(&'static self, name: &str, busy: impl FnOnce() -> String) -> Result<Guard> {
        let mut names = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !names.insert(name.to_string()) {
            return Err(Error::Conflict(busy()));
        }
        Ok(Guard {
            registry: self,
            name: name.to_string(),
        })
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

/// A name marked as running.
pub struct Guard {
    registry: &'static Registry,
    name: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.registry
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_runs_once_at_a_time() {
        static NAMES: Registry = Registry::new();
        let first = NAMES.start("a", || "busy".into()).expect("free");
        assert!(matches!(
            NAMES.start("a", || "busy".into()),
            Err(Error::Conflict(m)) if m == "busy"
        ));
        let _other = NAMES
            .start("b", || "busy".into())
            .expect("another name is free");
        drop(first);
        NAMES.start("a", || "busy".into()).expect("free again");
    }
}
