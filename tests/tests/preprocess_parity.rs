//! The deployment transform against torchvision's eval transform on PIL-decoded images.

use infer::{decode_file, DecodeLimits, PreprocessConfig};
use toolkit_tests::{files_under, run_python, seed_data};

#[test]
fn eval_transform_matches_torchvision_on_seed_val_images() {
    let Some(data) = seed_data() else {
        eprintln!("skipped: seed dataset not found (run scripts/setup.sh)");
        return;
    };
    let images = files_under(&data.join("val"));
    assert_eq!(images.len(), 153, "the seed's val split has 153 images");

    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference.f32");
    let mut args = vec![reference.as_os_str()];
    args.extend(images.iter().map(|p| p.as_os_str()));
    run_python("eval_transform.py", &args);
    let bytes = std::fs::read(&reference).unwrap();
    let expected: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();

    let cfg = PreprocessConfig::default();
    let n = cfg.input_len();
    assert_eq!(expected.len(), n * images.len());
    let mut diffs = Vec::with_capacity(expected.len());
    let mut ours = vec![0f32; n];
    for (i, path) in images.iter().enumerate() {
        let img = decode_file(path, DecodeLimits::default()).unwrap();
        cfg.eval_into(&img, &mut ours).unwrap();
        diffs.extend(ours.iter().zip(&expected[i * n..(i + 1) * n]).map(|(a, b)| (a - b).abs()));
    }
    let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
    diffs.sort_by(f32::total_cmp);
    let p999 = diffs[(diffs.len() as f64 * 0.999) as usize];
    let max = diffs[diffs.len() - 1];
    let exact = diffs.iter().filter(|&&d| d == 0.0).count() as f64 / diffs.len() as f64;
    println!(
        "eval transform vs torchvision on {} images: mean |diff| {mean:.6}, p99.9 {p999:.6}, max {max:.6}, exact {:.2}%",
        images.len(),
        exact * 100.0
    );
    assert!(mean <= 0.005, "mean abs difference {mean} > 0.005");
    assert!(p999 <= 0.05, "99.9th percentile {p999} > 0.05");
}
