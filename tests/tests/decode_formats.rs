//! Every supported format and mode decodes as Pillow decodes it (`Image.open(f).convert("RGB")`,
//! what torchvision's loaders feed the model): the committed seed images in
//! `tests/fixtures/images/` — JPEG (cut short and with stray bytes too), PNG (8/16-bit, palette,
//! alpha, interlaced), GIF (without a colour table too), BMP (every header and depth, RLE),
//! ICO, QOI, TGA, WebP, PNM, and TIFF in strips and tiles, contiguous and separate planes,
//! 8/16/32-bit, LZW/deflate/PackBits/LZMA/fax, grey, palette, CMYK, CIELab, integer and float
//! grey, JPEG-compressed (YCbCr and old-style), BigTIFF, a cycle of directories. See
//! docs/formats.md for the table of formats and the tolerances.

use std::collections::HashMap;

use infer::{decode_file_with_status, DecodeLimits};
use toolkit_tests::{fixture_files, run_python};

/// Lossy formats are decoded by other decoders than Pillow's (libjpeg, libwebp): allowed mean
/// and maximum per-sample differences. Everything else must match exactly.
fn tolerance(name: &str) -> Option<(f64, u8)> {
    if name.starts_with("jpeg_")
        || name.starts_with("tiff_jpeg_")
        || name == "tiff_ojpeg.tif"
        || name == "webp_lossy.webp"
    {
        return Some((1.0, 8));
    }
    // Pillow converts Lab through LittleCMS's interpolated 8-bit lookup table: colours out of
    // the sRGB gamut come out up to a few dozen levels from the exact conversion used here.
    (name == "tiff_cielab8.tif").then_some((0.5, 24))
}

/// Files cut inside their image data: only the rows before the cut are compared (libjpeg
/// fills the rest with grey, the decoder here otherwise).
const COMPARED_ROWS: &[(&str, usize)] = &[("jpeg_truncated_in_scan.jpg", 14)];

/// Files Pillow itself misreads (uncompressed 16-bit planar strips: its unpacker takes the
/// planes as interleaved samples), each with a file of the same pixels that Pillow reads right.
const PILLOW_MISREADS: &[(&str, &str)] = &[
    ("tiff_strip_planar_rgb16.tif", "tiff_tiled_planar_rgb16_lzw.tif"),
    ("tiff_strip_planar_rgb16_bigendian.tif", "tiff_tiled_planar_rgb16_lzw.tif"),
];

#[test]
fn every_fixture_decodes_like_pillow() {
    let files = fixture_files("images");
    assert!(files.len() >= 100, "fixtures missing: {}", files.len());
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
        let ours = match decode_file_with_status(file, DecodeLimits::default()) {
            // Files cut short, and only they, are reported incomplete.
            Ok(d) if d.incomplete != name.contains("truncated") => {
                failures.push(format!("{name}: incomplete is {}", d.incomplete));
                continue;
            }
            Ok(d) => d.image,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        if ours.as_raw().len() != reference.len() {
            failures.push(format!("{name}: {}x{} but Pillow's is another size", ours.width(), ours.height()));
            continue;
        }
        let rows = COMPARED_ROWS.iter().find(|(f, _)| *f == name).map_or(ours.height() as usize, |(_, r)| *r);
        let len = rows * ours.width() as usize * 3;
        let diffs: Vec<u8> = ours.as_raw()[..len].iter().zip(&reference).map(|(a, b)| a.abs_diff(*b)).collect();
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
