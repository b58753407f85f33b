//! Work split across the machine's cores.

use crate::{Error, Result};

/// `work` on a run of `items` per core (contiguous, in order), each on a thread of its own;
/// the runs' results in the order of the runs. The first error (in that order) is the result;
/// a thread that panics is an error naming `what`.
pub(crate) fn on_every_core<T: Sync, R: Send>(
    items: &[T],
    what: &str,
    work: impl Fn(&[T]) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let per = items.len().div_ceil(cores).max(1);
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(per)
            .map(|run| scope.spawn(move || work(run)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Internal(format!("a thread {what} panicked"))))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_come_back_in_order_and_the_first_error_wins() {
        let items: Vec<u32> = (0..1_001).collect();
        let sums = on_every_core(&items, "summing", |run| Ok(run.to_vec())).expect("runs");
        assert_eq!(sums.concat(), items);
        let failed = on_every_core(&items, "failing", |run| match run.contains(&0) {
            true => Err(Error::Internal("the first run".into())),
            false => Ok(()),
        });
        assert!(matches!(failed, Err(Error::Internal(m)) if m == "the first run"));
        let none: Vec<u32> = Vec::new();
        assert!(
            on_every_core(&none, "idle", |_| Ok(1))
                .expect("runs")
                .is_empty()
        );
    }
}
