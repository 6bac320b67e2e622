//! Parallel batch loading: decoding and augmentation run on a dedicated thread pool, and a
//! producer thread assembles whole batches ahead of the training thread through a bounded
//! channel. Every random choice derives from `(seed, epoch, position)`, so a run is reproducible
//! whatever the thread count or timing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver};
use infer::{decode_file, DecodeLimits, PreprocessConfig};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::augment::{random_resized_crop, CropParams};
use crate::dataset::{Sample, Skipped};
use crate::error::TrainError;

/// Which transform a pass uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Shuffled, random resized crop and flip; `epoch` seeds the randomness.
    Train { epoch: usize },
    /// In order, the deterministic deployment transform.
    Eval,
}

/// One batch, in CHW `f32` layout, ready for the model.
pub struct Batch {
    /// `labels.len() × 3 × crop × crop` values.
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    /// Files of this batch that failed to load (left out of `images`).
    pub failed: Vec<Skipped>,
}

/// SplitMix64: decorrelates seeds built from small integers.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Lowers the calling thread's scheduling priority. The loader is many times faster than
/// training needs, and on a machine with few cores its threads would otherwise preempt
/// libtorch's compute threads, which stall at every barrier when one of them is descheduled.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority only reads its integer arguments; who = 0 is the calling thread on Linux.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

/// Produces batches of a sample list.
pub struct Loader {
    pool: Arc<rayon::ThreadPool>,
    preprocess: Arc<PreprocessConfig>,
    crop: CropParams,
    limits: DecodeLimits,
    seed: u64,
    /// Batches assembled ahead of the consumer.
    prefetch: usize,
}

impl Loader {
    pub fn new(
        preprocess: PreprocessConfig,
        workers: usize,
        prefetch: usize,
        seed: u64,
    ) -> Result<Loader, TrainError> {
        preprocess
            .validate()
            .map_err(|e| TrainError::Config(e.to_string()))?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers.max(1))
            .thread_name(|i| format!("loader-{i}"))
            .start_handler(|_| lower_priority())
            .build()
            .map_err(|e| TrainError::Config(format!("cannot start loader threads: {e}")))?;
        Ok(Loader {
            pool: Arc::new(pool),
            preprocess: Arc::new(preprocess),
            crop: CropParams::default(),
            limits: DecodeLimits::default(),
            seed,
            prefetch: prefetch.max(1),
        })
    }

    pub fn preprocess(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    /// Order in which a pass visits the samples.
    pub fn order(&self, n: usize, phase: Phase) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        if let Phase::Train { epoch } = phase {
            let mut rng = ChaCha8Rng::seed_from_u64(mix(self.seed ^ mix(epoch as u64)));
            order.shuffle(&mut rng);
        }
        order
    }

    /// Loads one sample into `out` (decode, then augment or the eval transform).
    fn load_one(
        &self,
        sample: &Sample,
        phase: Phase,
        position: usize,
        out: &mut [f32],
    ) -> Result<(), String> {
        let img = decode_file(&sample.path, self.limits).map_err(|e| e.to_string())?;
        match phase {
            Phase::Train { epoch } => {
                let seed = mix(self.seed ^ mix((epoch as u64) << 32 | position as u64));
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let rect = random_resized_crop(img.width(), img.height(), &self.crop, &mut rng);
                let flip = rng.gen_bool(0.5);
                self.preprocess.resized_crop_into(&img, rect, flip, out)
            }
            Phase::Eval => self.preprocess.eval_into(&img, out),
        }
        .map_err(|e| e.to_string())
    }

    /// Loads one batch (sample indices `batch`, starting at `position` in the pass) on the pool.
    fn assemble(
        &self,
        samples: &[Sample],
        batch: &[usize],
        position: usize,
        phase: Phase,
    ) -> Batch {
        let n = self.preprocess.input_len();
        let loaded: Vec<Result<Vec<f32>, String>> = batch
            .par_iter()
            .enumerate()
            .map(|(i, &s)| {
                let mut buf = vec![0f32; n];
                self.load_one(&samples[s], phase, position + i, &mut buf)
                    .map(|()| buf)
            })
            .collect();
        let mut out = Batch {
            images: Vec::with_capacity(batch.len() * n),
            labels: Vec::new(),
            failed: Vec::new(),
        };
        for (&s, result) in batch.iter().zip(loaded) {
            match result {
                Ok(buf) => {
                    out.images.extend_from_slice(&buf);
                    out.labels.push(samples[s].label as i64);
                }
                Err(reason) => out.failed.push(Skipped {
                    path: samples[s].path.clone(),
                    reason,
                }),
            }
        }
        out
    }

    /// All batches of one pass, produced in the background while the caller consumes them.
    ///
    /// Up to `prefetch` batches are in flight on the pool at once, each loading its images in
    /// parallel; they are handed over in order, each as soon as it and those before it are done.
    pub fn batches(
        self: &Arc<Self>,
        samples: Arc<Vec<Sample>>,
        phase: Phase,
        batch_size: usize,
    ) -> Batches {
        let batch_size = batch_size.max(1);
        let order = self.order(samples.len(), phase);
        let count = order.len().div_ceil(batch_size);
        let (tx, rx) = bounded(1);
        let stop = Arc::new(AtomicBool::new(false));
        let (me, stop2) = (Arc::clone(self), Arc::clone(&stop));
        let handle = std::thread::Builder::new()
            .name("batch-producer".into())
            .spawn(move || {
                let order = Arc::new(order);
                let mut in_flight = std::collections::VecDeque::new();
                let mut next = 0;
                loop {
                    while next < count
                        && in_flight.len() < me.prefetch
                        && !stop2.load(Ordering::Relaxed)
                    {
                        let (done_tx, done_rx) = bounded(1);
                        let (me2, samples, order) =
                            (Arc::clone(&me), Arc::clone(&samples), Arc::clone(&order));
                        let start = next * batch_size;
                        me.pool.spawn(move || {
                            let end = (start + batch_size).min(order.len());
                            let _ = done_tx.send(me2.assemble(
                                &samples,
                                &order[start..end],
                                start,
                                phase,
                            ));
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
        Batches {
            rx: Some(rx),
            handle: Some(handle),
            stop,
            len: count,
        }
    }
}

/// Iterator over the batches of one pass. Dropping it early stops the producer.
pub struct Batches {
    rx: Option<Receiver<Batch>>,
    handle: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    len: usize,
}

impl Batches {
    /// Number of batches in the pass.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Iterator for Batches {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Closing the channel unblocks a producer waiting to send.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_images(dir: &std::path::Path, n: usize) -> Vec<Sample> {
        (0..n)
            .map(|i| {
                let path = dir.join(format!("{i}.png"));
                let img = image::RgbImage::from_fn(40 + i as u32, 30, |x, y| {
                    image::Rgb([(x * 5) as u8, (y * 7) as u8, i as u8])
                });
                img.save(&path).unwrap();
                Sample { path, label: i % 2 }
            })
            .collect()
    }

    fn small() -> PreprocessConfig {
        PreprocessConfig {
            resize_size: 24,
            crop_size: 16,
            ..Default::default()
        }
    }

    #[test]
    fn reproducible_regardless_of_workers_and_bad_files_are_reported() {
        let d = tempfile::tempdir().unwrap();
        let mut samples = write_images(d.path(), 9);
        let bad = d.path().join("bad.png");
        std::fs::write(&bad, b"not a png").unwrap();
        samples.push(Sample {
            path: bad.clone(),
            label: 1,
        });
        let samples = Arc::new(samples);
        let run = |workers| {
            let loader = Arc::new(Loader::new(small(), workers, 2, 5).unwrap());
            loader
                .batches(Arc::clone(&samples), Phase::Train { epoch: 3 }, 4)
                .collect::<Vec<_>>()
        };
        let a = run(1);
        let b = run(3);
        assert_eq!(a.len(), 3);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.images, y.images);
            assert_eq!(x.labels, y.labels);
        }
        let failed: Vec<_> = a.iter().flat_map(|b| b.failed.iter()).collect();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].path, bad);
        assert_eq!(a.iter().map(|b| b.labels.len()).sum::<usize>(), 9);
        // Another epoch shuffles and augments differently.
        let loader = Arc::new(Loader::new(small(), 2, 2, 5).unwrap());
        let c: Vec<_> = loader
            .batches(Arc::clone(&samples), Phase::Train { epoch: 4 }, 4)
            .collect();
        assert_ne!(a[0].images, c[0].images);
    }

    #[test]
    fn eval_is_ordered_and_matches_the_deployment_transform() {
        let d = tempfile::tempdir().unwrap();
        let samples = Arc::new(write_images(d.path(), 5));
        let loader = Arc::new(Loader::new(small(), 2, 1, 0).unwrap());
        let batches: Vec<_> = loader
            .batches(Arc::clone(&samples), Phase::Eval, 2)
            .collect();
        assert_eq!(
            batches.iter().map(|b| b.labels.len()).collect::<Vec<_>>(),
            [2, 2, 1]
        );
        let img = decode_file(&samples[2].path, DecodeLimits::default()).unwrap();
        let expected = small().eval(&img).unwrap();
        assert_eq!(&batches[1].images[..expected.len()], &expected[..]);
    }

    #[test]
    fn dropping_early_stops_the_producer() {
        let d = tempfile::tempdir().unwrap();
        let samples = Arc::new(write_images(d.path(), 8));
        let loader = Arc::new(Loader::new(small(), 1, 1, 0).unwrap());
        let mut it = loader.batches(samples, Phase::Eval, 1);
        assert!(it.next().is_some());
        drop(it); // must not hang
    }
}
