//! Decoding of colour modes, bit depths and EXIF orientation, against PIL's reading of the same
//! files (written by the venv's Pillow).

use infer::{decode_file, DecodeLimits};
use toolkit_tests::run_python;

fn mean_and_max_diff(a: &image::RgbImage, b: &image::RgbImage) -> (f64, u8) {
    assert_eq!(a.dimensions(), b.dimensions(), "dimensions differ");
    let diffs: Vec<u8> = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).collect();
    (diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64, diffs.into_iter().max().unwrap_or(0))
}

#[test]
fn every_mode_decodes_like_its_rgb_upright_version() {
    let dir = tempfile::tempdir().unwrap();
    run_python("make_modes.py", &[dir.path().as_os_str()]);
    // Lossless encodings must match exactly; JPEGs within decoder rounding.
    let cases = [
        ("rgb.png", true),
        ("gray.png", true),
        ("rgba.png", true),
        ("la.png", true),
        ("palette.png", true),
        ("palette_gif.gif", true),
        ("gray16.png", true),
        ("plain.jpg", false),
        ("cmyk.jpg", false),
        ("exif_rotated.jpg", false),
    ];
    for (file, exact) in cases {
        let path = dir.path().join(file);
        let stem = file.split('.').next().unwrap();
        let ours = decode_file(&path, DecodeLimits::default()).unwrap_or_else(|e| panic!("{file}: {e}"));
        let reference = image::open(dir.path().join(format!("{stem}.ref.png"))).unwrap().to_rgb8();
        let (mean, max) = mean_and_max_diff(&ours, &reference);
        println!("{file}: {}x{}, mean |diff| {mean:.3}, max {max}", ours.width(), ours.height());
        if exact {
            assert_eq!(max, 0, "{file} differs from PIL");
        } else {
            assert!(mean <= 1.0 && max <= 16, "{file}: mean {mean}, max {max}");
        }
    }
}
