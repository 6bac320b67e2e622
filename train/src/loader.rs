//! Parallel batch loading: decoding and augmentation run on a dedicated thread pool, and
//! batches are assembled ahead of the training thread through a bounded queue
//! ([`infer::batching`]). Every random choice derives from `(seed, epoch, position)`, so a run is reproducible
//! whatever the thread count or timing.

use std::sync::Arc;

use infer::batching::{self, BatchStream};
use infer::decode::decode_file_with_status;
use infer::guard::Panicked;
use infer::{DecodeLimits, PreprocessConfig};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::augment::{random_resized_crop, Augment};
use crate::autoaugment::{resized_crop_augment_into, PixelAugment};
use crate::dataset::{Sample, Skipped};
use crate::error::ConfigError;
use crate::sampler::WeightedSampler;
use crate::shard::Visits;

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
    /// Index of each image's sample in the pass's sample list.
    pub samples: Vec<usize>,
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
    augment: Augment,
    /// Policy, jitter and erasing after the crop and flip (none: the plain crop path).
    pixel: PixelAugment,
    /// Draws each training epoch's samples with replacement instead of shuffling them.
    sampler: Option<WeightedSampler>,
    limits: DecodeLimits,
    seed: u64,
    /// Batches assembled ahead of the consumer.
    prefetch: usize,
}

impl Loader {
    pub fn new(
        preprocess: PreprocessConfig,
        augment: Augment,
        workers: usize,
        prefetch: usize,
        seed: u64,
    ) -> Result<Loader, ConfigError> {
        augment.validate()?;
        preprocess.validate()?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers.max(1))
            .thread_name(|i| format!("loader-{i}"))
            .start_handler(|_| lower_priority())
            .build()?;
        Ok(Loader {
            pool: Arc::new(pool),
            preprocess: Arc::new(preprocess),
            augment,
            pixel: PixelAugment::default(),
            sampler: None,
            limits: DecodeLimits::default(),
            seed,
            prefetch: prefetch.max(1),
        })
    }

    /// With pixel-level augmentation after the crop and flip.
    pub fn with_pixel_augment(mut self, pixel: PixelAugment) -> Result<Loader, ConfigError> {
        pixel.validate()?;
        self.pixel = pixel;
        Ok(self)
    }

    /// Training epochs draw their samples from `sampler` (with replacement) instead of a
    /// shuffle of all of them; `n` draws an epoch for `n` samples.
    pub fn with_sampler(mut self, sampler: Option<WeightedSampler>) -> Loader {
        self.sampler = sampler;
        self
    }

    /// Order in which a pass visits the samples: the same on every rank of a data-parallel job
    /// (a function of the seed and epoch), which then takes its shard of it.
    pub fn order(&self, n: usize, phase: Phase) -> Vec<usize> {
        let Phase::Train { epoch } = phase else { return (0..n).collect() };
        let mut rng = ChaCha8Rng::seed_from_u64(mix(self.seed ^ mix(epoch as u64)));
        match &self.sampler {
            Some(s) if s.len() == n => s.order(n, &mut rng),
            _ => {
                let mut order: Vec<usize> = (0..n).collect();
                order.shuffle(&mut rng);
                order
            }
        }
    }

    /// Loads one sample into `out` (decode, then augment or the eval transform).
    fn load_one(&self, sample: &Sample, phase: Phase, position: usize, out: &mut [f32]) -> Result<(), String> {
        let decoded = decode_file_with_status(&sample.path, self.limits).map_err(|e| e.to_string())?;
        let img = decoded.flatten(self.preprocess.background);
        match phase {
            Phase::Train { epoch } => {
                let seed = mix(self.seed ^ mix((epoch as u64) << 32 | position as u64));
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let rect = random_resized_crop(img.width(), img.height(), &self.augment, &mut rng);
                // Drawn even when flips are off, so that the crops stay those of a run with them.
                let flip = rng.gen_bool(0.5) && self.augment.flip;
                if self.pixel == PixelAugment::default() {
                    self.preprocess.resized_crop_into(&img, rect, flip, out)
                } else {
                    resized_crop_augment_into(&self.preprocess, &img, rect, flip, &self.pixel, &mut rng, out)
                        .map(|_| ())
                }
            }
            Phase::Eval => self.preprocess.eval_into(&img, out),
        }
        .map_err(|e| e.to_string())
    }

    /// All batches of one pass, produced in the background while the caller consumes them:
    /// up to `prefetch` batches are in flight on the loader threads at once.
    pub fn batches(self: &Arc<Self>, samples: Arc<Vec<Sample>>, phase: Phase, batch_size: usize) -> Batches {
        let order = self.order(samples.len(), phase);
        self.batches_of(samples, phase, Visits::all(order), batch_size)
    }

    /// As [`Loader::batches`], visiting only `visits` (a rank's shard of [`Loader::order`]);
    /// each sample's augmentation is drawn for its position in the whole epoch, so that it does
    /// not depend on how the epoch is split among ranks.
    pub fn batches_of(
        self: &Arc<Self>,
        samples: Arc<Vec<Sample>>,
        phase: Phase,
        visits: Visits,
        batch_size: usize,
    ) -> Batches {
        let Visits { order, positions } = visits;
        let me = Arc::clone(self);
        let n = self.preprocess.input_len();
        let stream = batching::stream(
            Arc::clone(&self.pool),
            Arc::clone(&samples),
            order.clone(),
            batch_size,
            self.prefetch,
            move |sample: &Sample, i| {
                let mut buf = vec![0f32; n];
                let position = positions.get(i).copied().unwrap_or(i);
                me.load_one(sample, phase, position, &mut buf).map_err(LoadError)?;
                Ok(buf)
            },
        );
        Batches { stream, samples, order: order.into_iter() }
    }
}

/// Why one sample could not be loaded (decoding, preprocessing, or a panic in either).
#[derive(Debug)]
pub struct LoadError(pub String);

impl From<Panicked> for LoadError {
    fn from(p: Panicked) -> Self {
        LoadError(p.to_string())
    }
}

/// Iterator over the batches of one pass. Dropping it early stops the producer.
pub struct Batches {
    stream: BatchStream<Result<Vec<f32>, LoadError>>,
    samples: Arc<Vec<Sample>>,
    /// Sample indices in the order the stream yields them.
    order: std::vec::IntoIter<usize>,
}

impl Iterator for Batches {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        let loaded = self.stream.next()?;
        let per_image = loaded.iter().find_map(|r| r.as_ref().ok().map(Vec::len)).unwrap_or(0);
        let mut batch = Batch {
            images: Vec::with_capacity(loaded.len() * per_image),
            labels: Vec::new(),
            samples: Vec::new(),
            failed: Vec::new(),
        };
        for result in loaded {
            let index = self.order.next()?;
            let sample = &self.samples[index];
            match result {
                Ok(buf) => {
                    batch.images.extend_from_slice(&buf);
                    batch.labels.push(sample.label as i64);
                    batch.samples.push(index);
                }
                Err(LoadError(reason)) => batch.failed.push(Skipped { path: sample.path.clone(), reason }),
            }
        }
        Some(batch)
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
        PreprocessConfig { resize_size: 24, crop_size: 16, ..Default::default() }
    }

    #[test]
    fn reproducible_regardless_of_workers_and_bad_files_are_reported() {
        let d = tempfile::tempdir().unwrap();
        let mut samples = write_images(d.path(), 9);
        let bad = d.path().join("bad.png");
        std::fs::write(&bad, b"not a png").unwrap();
        samples.push(Sample { path: bad.clone(), label: 1 });
        let samples = Arc::new(samples);
        let run = |workers| {
            let loader = Arc::new(Loader::new(small(), Augment::default(), workers, 2, 5).unwrap());
            loader.batches(Arc::clone(&samples), Phase::Train { epoch: 3 }, 4).collect::<Vec<_>>()
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
        let loader = Arc::new(Loader::new(small(), Augment::default(), 2, 2, 5).unwrap());
        let c: Vec<_> = loader.batches(Arc::clone(&samples), Phase::Train { epoch: 4 }, 4).collect();
        assert_ne!(a[0].images, c[0].images);
    }

    #[test]
    fn eval_is_ordered_and_matches_the_deployment_transform() {
        let d = tempfile::tempdir().unwrap();
        let samples = Arc::new(write_images(d.path(), 5));
        let loader = Arc::new(Loader::new(small(), Augment::default(), 2, 1, 0).unwrap());
        let batches: Vec<_> = loader.batches(Arc::clone(&samples), Phase::Eval, 2).collect();
        assert_eq!(batches.iter().map(|b| b.labels.len()).collect::<Vec<_>>(), [2, 2, 1]);
        let img = infer::decode_file(&samples[2].path, DecodeLimits::default()).unwrap();
        let expected = small().eval(&img).unwrap();
        assert_eq!(&batches[1].images[..expected.len()], &expected[..]);
    }

    /// A sample's augmentation depends on its position in the epoch, not on which rank's shard
    /// holds it: the two halves of an epoch, loaded as two ranks load them, are the epoch.
    #[test]
    fn shards_load_what_the_whole_epoch_loads() {
        use crate::shard::Shard;
        let d = tempfile::tempdir().unwrap();
        let samples = Arc::new(write_images(d.path(), 6));
        let loader = Arc::new(Loader::new(small(), Augment::default(), 2, 2, 9).unwrap());
        let phase = Phase::Train { epoch: 1 };
        let whole: Vec<Batch> = loader.batches(Arc::clone(&samples), phase, 1).collect();
        let order = loader.order(samples.len(), phase);
        for rank in 0..2 {
            let shard = Shard { rank, world: 2 }.padded(&order);
            let batches: Vec<Batch> = loader.batches_of(Arc::clone(&samples), phase, shard, 1).collect();
            assert_eq!(batches.len(), 3);
            for (k, b) in batches.iter().enumerate() {
                let w = &whole[2 * k + rank];
                assert_eq!((&b.samples, &b.images), (&w.samples, &w.images), "rank {rank}, visit {k}");
            }
        }
    }

    /// With a balanced sampler an epoch draws as many samples as there are, with replacement,
    /// the same order for the same epoch (so every rank shards the same order), and pixel
    /// augmentation changes the images but not which samples load.
    #[test]
    fn balanced_sampler_and_pixel_augmentation() {
        use crate::autoaugment::Policy;
        let d = tempfile::tempdir().unwrap();
        let samples = Arc::new(write_images(d.path(), 8));
        let labels = [0, 0, 0, 0, 0, 0, 1, 1];
        let sampler = WeightedSampler::balanced(&labels, 2).unwrap();
        let loader = Loader::new(small(), Augment::default(), 2, 2, 3).unwrap().with_sampler(Some(sampler));
        let phase = Phase::Train { epoch: 2 };
        let order = loader.order(8, phase);
        assert_eq!(order.len(), 8);
        assert_eq!(order, loader.order(8, phase));
        let mut sorted = order.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert!(sorted.len() < 8, "drawn with replacement: {order:?}");
        let rare = (0..50).flat_map(|e| loader.order(8, Phase::Train { epoch: e })).filter(|&i| i >= 6).count();
        assert!((150..250).contains(&rare), "class 1 drawn about half the time: {rare} of 400");
        assert_eq!(loader.order(8, Phase::Eval), (0..8).collect::<Vec<_>>());

        let plain = Arc::new(Loader::new(small(), Augment::default(), 2, 2, 3).unwrap());
        let pixel = PixelAugment { policy: Some(Policy::TRIVIAL_AUGMENT_WIDE), ..Default::default() };
        let augmented =
            Arc::new(Loader::new(small(), Augment::default(), 2, 2, 3).unwrap().with_pixel_augment(pixel).unwrap());
        let a: Vec<Batch> = plain.batches(Arc::clone(&samples), phase, 8).collect();
        let b: Vec<Batch> = augmented.batches(Arc::clone(&samples), phase, 8).collect();
        assert_eq!(a[0].samples, b[0].samples);
        assert_ne!(a[0].images, b[0].images);
        let none = Arc::new(
            Loader::new(small(), Augment::default(), 2, 2, 3)
                .unwrap()
                .with_pixel_augment(PixelAugment::default())
                .unwrap(),
        );
        let c: Vec<Batch> = none.batches(samples, phase, 8).collect();
        assert_eq!(a[0].images, c[0].images);
    }

    #[test]
    fn dropping_early_stops_the_producer() {
        let d = tempfile::tempdir().unwrap();
        let samples = Arc::new(write_images(d.path(), 8));
        let loader = Arc::new(Loader::new(small(), Augment::default(), 1, 1, 0).unwrap());
        let mut it = loader.batches(samples, Phase::Eval, 1);
        assert!(it.next().is_some());
        drop(it); // must not hang
    }
}
