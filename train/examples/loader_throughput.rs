//! Times the training data loader alone (decode, random resized crop, flip, normalise, batch):
//! `loader_throughput <class-folder root> [epochs] [workers] [batch size]`.
//! Used by `scripts/bench_train.py` to check that loading outpaces training.

use std::sync::Arc;
use std::time::Instant;

use infer::PreprocessConfig;
use train::dataset::{scan, ScanOptions};
use train::loader::{Loader, Phase};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let root =
        args.get(1).ok_or_else(|| anyhow::anyhow!("usage: loader_throughput ROOT [epochs] [workers] [batch]"))?;
    let epochs: usize = args.get(2).map_or(Ok(3), |s| s.parse())?;
    let workers: usize = args.get(3).map_or(Ok(std::thread::available_parallelism()?.get()), |s| s.parse())?;
    let batch: usize = args.get(4).map_or(Ok(4), |s| s.parse())?;
    let ok = |_: &std::path::Path| Ok(train::dataset::FileNotes::default());
    let ds = scan(std::path::Path::new(root), &ScanOptions { val_fraction: 0.2, seed: 0, val_dir: None, check: &ok })?;
    // Every image of the folder, as one training pass.
    let mut samples = ds.train;
    samples.extend(ds.val);
    let samples = Arc::new(samples);
    let loader = Arc::new(Loader::new(PreprocessConfig::default(), Default::default(), workers, 4, 0)?);
    let start = Instant::now();
    let mut images = 0;
    for epoch in 0..epochs {
        for b in loader.batches(Arc::clone(&samples), Phase::Train { epoch }, batch) {
            images += b.labels.len();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!("loader: {images} images in {secs:.2} s, {workers} workers, batch {batch}");
    println!("images/s {:.1}", images as f64 / secs);
    Ok(())
}
