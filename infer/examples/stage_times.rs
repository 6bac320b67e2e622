//! Where one image's time goes in `infer`: decoding, the deployment transform (resize, crop,
//! normalise) and the model, each timed alone on one thread.
//! `cargo run --release -p infer --example stage_times -- MODEL.onnx THREADS IMAGE...`
//! prints milliseconds per image for each stage (the model at batch 32, on THREADS threads).

use std::path::PathBuf;
use std::time::Instant;

use infer::{decode_file, Classifier, DecodeLimits, ExecutionProvider};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args.next().ok_or("usage: stage_times MODEL.onnx THREADS IMAGE...")?;
    let threads: usize = args.next().ok_or("THREADS missing")?.parse()?;
    let files: Vec<PathBuf> = args.map(PathBuf::from).collect();
    let c = Classifier::builder(&model).execution_provider(ExecutionProvider::Cpu).intra_threads(threads).build()?;
    let t = Instant::now();
    let images: Vec<_> = files.iter().filter_map(|f| decode_file(f, DecodeLimits::default()).ok()).collect();
    let decode = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let inputs: Vec<Vec<f32>> = images.iter().filter_map(|i| c.preprocess(i).ok()).collect();
    let preprocess = t.elapsed().as_secs_f64();
    let batch: Vec<f32> = inputs.iter().take(32).flatten().copied().collect();
    c.run(&batch)?; // warm-up
    let t = Instant::now();
    let rounds = inputs.len().div_ceil(32);
    for chunk in inputs.chunks(32) {
        c.run(&chunk.concat())?;
    }
    let model_time = t.elapsed().as_secs_f64();
    let n = images.len() as f64;
    println!(
        "per image: decode {:.2} ms, preprocess {:.2} ms (one thread each); model {:.2} ms (batch 32, {threads} threads, {rounds} batches)",
        1e3 * decode / n,
        1e3 * preprocess / n,
        1e3 * model_time / n
    );
    Ok(())
}
