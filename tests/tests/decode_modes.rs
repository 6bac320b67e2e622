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

/// `train --background COLOUR`: every kind of transparency (an alpha channel, grey with alpha,
/// a palette's transparent entry or per-entry alpha, a GIF's transparent index, an RGB colour
/// key, WebP and TGA alpha) composites onto the colour exactly as PIL's `alpha_composite` does.
#[test]
fn transparency_composites_onto_the_background_like_pil() {
    for (hex, colour) in [("ffffff", [255, 255, 255]), ("336699", [0x33, 0x66, 0x99])] {
        let dir = tempfile::tempdir().unwrap();
        run_python("make_transparent.py", &[dir.path().as_os_str(), hex.as_ref()]);
        let mut checked = 0;
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".ref.png") {
                continue;
            }
            let decoded = infer::decode::decode_file_with_status(&path, DecodeLimits::default()).unwrap();
            assert!(decoded.alpha.is_some(), "{name}: its transparency was not seen");
            let ours = decoded.flatten(Some(infer::Background(colour)));
            let stem = name.split('.').next().unwrap();
            let reference = image::open(dir.path().join(format!("{stem}.ref.png"))).unwrap().to_rgb8();
            let (mean, max) = mean_and_max_diff(&ours, &reference);
            println!("{name} onto #{hex}: mean |diff| {mean:.3}, max {max}");
            assert_eq!(max, 0, "{name} composited onto #{hex} differs from PIL");
            checked += 1;
        }
        assert_eq!(checked, 8);
    }
    // An opaque image has no alpha to composite, whatever its file format can hold.
    let dir = tempfile::tempdir().unwrap();
    let opaque = dir.path().join("opaque.png");
    image::RgbaImage::from_pixel(8, 8, image::Rgba([1, 2, 3, 255])).save(&opaque).unwrap();
    assert!(infer::decode::decode_file_with_status(&opaque, DecodeLimits::default()).unwrap().alpha.is_none());
}
