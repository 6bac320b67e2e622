//! Ordered, bounded, parallel batch production — shared by inference over many files and by
//! training's data loader.
//!
//! A producer thread keeps up to `prefetch` batches in flight on a thread pool, each batch
//! loading its items in parallel, and hands them over in order as soon as each (and every one
//! before it) is done. Memory stays bounded whatever the number of items, and the consumer
//! (the model) never waits on decoding while the producer keeps up.
//!
//! Each item's `load` runs under [`guard::isolate`]: a panic while loading one item becomes
//! that item's error (`E: From<Panicked>`), never a panic inside the thread pool.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver};
use rayon::prelude::*;

use crate::guard::{self, Panicked};

/// Iterator over batches; dropping it stops the producer after the batches in flight.
pub struct BatchStream<R> {
    rx: Option<Receiver<Vec<R>>>,
    handle: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    len: usize,
}

impl<R> BatchStream<R> {
    /// Number of batches the stream yields.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<R> Iterator for BatchStream<R> {
    type Item = Vec<R>;
    fn next(&mut self) -> Option<Vec<R>> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl<R> Drop for BatchStream<R> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Closing the channel unblocks a producer waiting to hand over a batch.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Streams `load(&items[i], position)` for `i` in `order`, grouped into batches of
/// `batch_size`; `position` is the index within `order`, for per-item seeding.
pub fn stream<T, R, E, F>(
    pool: Arc<rayon::ThreadPool>,
    items: Arc<Vec<T>>,
    order: Vec<usize>,
    batch_size: usize,
    prefetch: usize,
    load: F,
) -> BatchStream<Result<R, E>>
where
    T: Send + Sync + 'static,
    R: Send + 'static,
    E: From<Panicked> + Send + 'static,
    F: Fn(&T, usize) -> Result<R, E> + Send + Sync + 'static,
{
    let batch_size = batch_size.max(1);
    let prefetch = prefetch.max(1);
    let len = order.len().div_ceil(batch_size);
    let (tx, rx) = bounded(1);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let load = Arc::new(load);
    let order = Arc::new(order);
    let handle = std::thread::Builder::new()
        .name("batch-producer".into())
        .spawn(move || {
            let mut in_flight = VecDeque::new();
            let mut next = 0;
            loop {
                while next < len && in_flight.len() < prefetch && !stop2.load(Ordering::Relaxed) {
                    let (done_tx, done_rx) = bounded(1);
                    let (items, order, load) = (Arc::clone(&items), Arc::clone(&order), Arc::clone(&load));
                    let start = next * batch_size;
                    pool.spawn(move || {
                        let end = (start + batch_size).min(order.len());
                        let batch: Vec<Result<R, E>> = order[start..end]
                            .par_iter()
                            .enumerate()
                            .map(|(i, &item)| {
                                guard::isolate("loading an item", || load(&items[item], start + i))
                                    .unwrap_or_else(|p| Err(E::from(p)))
                            })
                            .collect();
                        let _ = done_tx.send(batch);
                    });
                    in_flight.push_back(done_rx);
                    next += 1;
                }
                let Some(done) = in_flight.pop_front() else {
                    return;
                };
                let Ok(batch) = done.recv() else { return };
                if stop2.load(Ordering::Relaxed) || tx.send(batch).is_err() {
                    return;
                }
            }
        })
        .expect("spawn the batch producer thread");
    BatchStream { rx: Some(rx), handle: Some(handle), stop, len }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Arc<rayon::ThreadPool> {
        Arc::new(rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap())
    }

    type Out = Result<(i32, usize), Panicked>;

    #[test]
    fn ordered_batches_with_positions() {
        let items = Arc::new((0..10).map(|i| i * 10).collect::<Vec<_>>());
        let order = vec![9, 8, 7, 6, 5, 4, 3, 2, 1, 0];
        let out: Vec<Vec<Out>> = stream(pool(3), items, order, 4, 2, |v, pos| Ok((*v, pos))).collect();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], [Ok((90, 0)), Ok((80, 1)), Ok((70, 2)), Ok((60, 3))]);
        assert_eq!(out[2], [Ok((10, 8)), Ok((0, 9))]);
    }

    #[test]
    fn a_panicking_item_is_that_items_error() {
        let items = Arc::new((0..20).collect::<Vec<i32>>());
        let out: Vec<Out> = stream(pool(2), items, (0..20).collect(), 3, 2, |v, pos| {
            assert!(*v != 13, "cannot load {v}");
            Ok((*v, pos))
        })
        .flatten()
        .collect();
        assert_eq!(out.len(), 20);
        assert_eq!(out[12], Ok((12, 12)));
        let err = out[13].as_ref().unwrap_err();
        assert_eq!(err.message, "cannot load 13");
        assert!(out.iter().filter(|r| r.is_err()).count() == 1);
    }

    #[test]
    fn empty_and_early_drop() {
        let s = stream(pool(1), Arc::new(Vec::<u8>::new()), vec![], 4, 2, |_, _| Ok::<_, Panicked>(()));
        assert!(s.is_empty());
        assert_eq!(s.count(), 0);
        let mut s = stream(pool(1), Arc::new(vec![1u8; 100]), (0..100).collect(), 1, 2, |_, _| Ok::<_, Panicked>(()));
        assert_eq!(s.len(), 100);
        assert!(s.next().is_some());
        drop(s); // must not hang
    }
}
