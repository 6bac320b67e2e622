//! Every supported format and mode decodes as Pillow decodes it (`Image.open(f).convert("RGB")`,
//! what torchvision's loaders feed the model): the committed seed images in
//! `tests/fixtures/images/` — JPEG, PNG (8/16-bit, palette, alpha, interlaced), GIF, BMP,
//! WebP, PNM, and TIFF in strips and tiles, contiguous and separate planes, 8/16-bit,
//! LZW/deflate/PackBits, grey, palette, CMYK, 32-bit float grey, JPEG-compressed.

use std::collections::HashMap;

use infer::{decode_file, DecodeLimits};
use toolkit_tests::{fixture_files, run_python};

/// Lossy formats are decoded by other decoders than Pillow's (libjpeg, libwebp): allowed mean
/// and maximum per-sample differences. Everything else must match exactly.
fn tolerance(name: &str) -> Option<(f64, u8)> {
    (name.starts_with("jpeg_") || name.starts_with("tiff_jpeg_") || name == "webp_lossy.webp").then_some((1.0, 8))
}

/// Files Pillow itself misreads (uncompressed 16-bit planar strips: its unpacker takes the
/// planes as interleaved samples), each with a file of the same pixels that Pillow reads right.
const PILLOW_MISREADS: &[(&str, &str)] = &[
    ("tiff_strip_planar_rgb16.tif", "tiff_tiled_planar_rgb16_lzw.tif"),
    ("tiff_strip_planar_rgb16_bigendian.tif", "tiff_tiled_planar_rgb16_lzw.tif"),
];

#[test]
fn every_fixture_decodes_like_pillow() {
    let files = fixture_files("images");
    assert!(files.len() >= 35, "fixtures missing: {}", files.len());
    let refs = tempfile::tempdir().unwrap();
    let mut args: Vec<&std::ffi::OsStr> = vec![refs.path().as_os_str()];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let modes: HashMap<String, String> = run_python("pillow_decode.py", &args)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["file"].as_str().unwrap().to_string(), v["mode"].as_str().unwrap().to_string())
        })
        .collect();
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let same_as = PILLOW_MISREADS.iter().find(|(f, _)| *f == name).map_or(name.as_str(), |(_, r)| r);
        let reference = std::fs::read(refs.path().join(format!("{same_as}.rgb"))).unwrap();
        let ours = match decode_file(file, DecodeLimits::default()) {
            Ok(img) => img,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        if ours.as_raw().len() != reference.len() {
            failures.push(format!("{name}: {}x{} but Pillow's is another size", ours.width(), ours.height()));
            continue;
        }
        let diffs: Vec<u8> = ours.as_raw().iter().zip(&reference).map(|(a, b)| a.abs_diff(*b)).collect();
        let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
        let max = diffs.iter().copied().max().unwrap_or(0);
        let vs = if same_as == name { String::new() } else { format!(" (vs Pillow's {same_as})") };
        println!("{name:<44} Pillow mode {:<6} mean |diff| {mean:.3}, max {max}{vs}", modes[&name]);
        let ok = match tolerance(&name) {
            Some((m, x)) => mean <= m && max <= x,
            None => max == 0,
        };
        if !ok {
            failures.push(format!("{name}: mean |diff| {mean:.3}, max {max}"));
        }
    }
    assert!(failures.is_empty(), "differences from Pillow:\n{}", failures.join("\n"));
}
