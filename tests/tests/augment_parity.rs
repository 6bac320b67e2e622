//! `train::autoaugment` against torchvision, operation by operation: the same pictures (a seed
//! photo cut to an odd size when the dataset is present, a generated odd-sized one and a small
//! square one) through every operation at several magnitudes, negative ones included, compared
//! with what `TrivialAugmentWide._apply_image_or_video_transform` gives on the PIL image (the
//! reference: within one 8-bit level; measured equal for every operation) and, for information,
//! on the uint8 tensor. ColorJitter's hue follows the tensor kernel and is held to it instead
//! (measured equal). The magnitude tables are compared bit for bit.

use std::collections::BTreeMap;
use std::path::PathBuf;

use image::{Rgb, RgbImage};
use toolkit_tests::{files_under, run_python, seed_data};
use train::autoaugment::{self, magnitudes, Op, Space};

fn images(dir: &std::path::Path) -> Vec<(String, RgbImage)> {
    let mut out = Vec::new();
    let photo = seed_data().and_then(|d| files_under(&d.join("val")).into_iter().next());
    match photo {
        Some(path) => {
            let img = infer::decode_file(&path, infer::DecodeLimits::default()).expect("decode seed photo");
            let (w, h) = (181.min(img.width() - 17), 137.min(img.height() - 9));
            let (w, h) = (w - (1 - w % 2), h - (1 - h % 2));
            let cut = image::imageops::crop_imm(&img, 17, 9, w, h).to_image();
            out.push((format!("photo {w}x{h}"), cut));
        }
        None => eprintln!("seed dataset absent: generated pictures only"),
    }
    // Gradients, a flat band, texture and saturated colours.
    let generated = RgbImage::from_fn(97, 61, |x, y| {
        if y < 8 {
            Rgb([90, 90, 90])
        } else {
            let n = (x * 73 + y * 151) % 97;
            Rgb([(x * 255 / 96) as u8, (y * 4 + n) as u8, ((x * y) % 256) as u8])
        }
    });
    out.push(("generated 97x61".into(), generated));
    out.push((
        "square 33x33".into(),
        RgbImage::from_fn(33, 33, |x, y| Rgb([(x * 7) as u8, (y * 7) as u8, ((x + y) * 3) as u8])),
    ));
    for (i, (_, img)) in out.iter().enumerate() {
        img.save(dir.join(format!("in_{i}.png"))).expect("save input");
    }
    out
}

/// The cases: every operation at magnitudes from the policies' bins, both signs where signed,
/// plus the special angles; and ColorJitter's hue factors.
fn cases() -> Vec<(String, f64)> {
    let ta = |op, bin: usize| f64::from(magnitudes(Space::TrivialAugmentWide, op, 31, 61, 97).unwrap()[bin]);
    let ra = |op, bin: usize| f64::from(magnitudes(Space::RandAugment, op, 31, 61, 97).unwrap()[bin]);
    let mut out = Vec::new();
    for op in Op::ALL {
        let mut ms: Vec<f64> = match op {
            Op::Identity | Op::AutoContrast | Op::Equalize => vec![0.0],
            Op::Posterize => (1..=8).map(f64::from).collect(),
            Op::Solarize => vec![ta(op, 0), ta(op, 7), ta(op, 15), ta(op, 24), ta(op, 30)],
            Op::Rotate => vec![ta(op, 1), ta(op, 13), ta(op, 30), ra(op, 9), 90.0, 180.0, 270.0, 360.0, 33.3],
            _ => vec![ta(op, 1), ta(op, 9), ta(op, 15), ta(op, 30), ra(op, 9)],
        };
        if op.signed() {
            let negative: Vec<f64> = ms.iter().map(|m| -m).collect();
            ms.extend(negative);
            if op != Op::Rotate {
                ms.push(0.0);
            }
        }
        out.extend(ms.into_iter().map(|m| (op.name().to_string(), m)));
    }
    for h in [-0.5, -0.23, 0.0, 0.1, 0.37, 0.5] {
        out.push(("Hue".into(), h));
    }
    out
}

#[derive(Default)]
struct Stat {
    max_pil: u8,
    max_tensor: u8,
    values: usize,
    differ_pil: usize,
    differ_tensor: usize,
}

#[test]
fn operations_match_torchvision() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = images(dir.path());
    let cases = cases();
    let sizes: Vec<[u32; 2]> = imgs.iter().map(|(_, i)| [i.height(), i.width()]).collect();
    let spec = serde_json::json!({
        "images": (0..imgs.len()).map(|i| dir.path().join(format!("in_{i}.png"))).collect::<Vec<PathBuf>>(),
        "cases": cases.iter().map(|(op, m)| serde_json::json!({"op": op, "magnitude": m})).collect::<Vec<_>>(),
        "bins": [31, 10, 7],
        "sizes": sizes,
    });
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    run_python("augment_ops.py", &[spec_path.as_os_str(), dir.path().as_os_str()]);

    let mut stats: BTreeMap<String, Stat> = BTreeMap::new();
    let mut worst: Vec<String> = Vec::new();
    for (i, (label, img)) in imgs.iter().enumerate() {
        let pil = std::fs::read(dir.path().join(format!("pil_{i}.bin"))).unwrap();
        let tensor = std::fs::read(dir.path().join(format!("tensor_{i}.bin"))).unwrap();
        let n = img.as_raw().len();
        assert_eq!(pil.len(), n * cases.len());
        for (k, (op, m)) in cases.iter().enumerate() {
            let ours = if op == "Hue" {
                autoaugment::adjust_hue(img, *m)
            } else {
                autoaugment::apply(op.parse().unwrap(), *m, img)
            };
            let ours = ours.as_raw();
            let s = stats.entry(op.clone()).or_default();
            s.values += n;
            for (reference, max, differ, path) in [
                (&pil[k * n..(k + 1) * n], &mut s.max_pil, &mut s.differ_pil, "PIL"),
                (&tensor[k * n..(k + 1) * n], &mut s.max_tensor, &mut s.differ_tensor, "tensor"),
            ] {
                let d = ours.iter().zip(reference).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(0);
                *differ += ours.iter().zip(reference).filter(|(a, b)| a != b).count();
                *max = (*max).max(d);
                if d > 1 && (path == "PIL") == (op != "Hue") {
                    worst.push(format!("{label}: {op}({m}) differs from the {path} reference by {d}"));
                }
            }
        }
    }
    println!(
        "{:<13} {:>9} {:>8} {:>13} {:>10} {:>16}",
        "op", "values", "max PIL", "differ (PIL)", "max tensor", "differ (tensor)"
    );
    for (op, s) in &stats {
        println!(
            "{op:<13} {:>9} {:>8} {:>13} {:>10} {:>16}",
            s.values, s.max_pil, s.differ_pil, s.max_tensor, s.differ_tensor
        );
    }
    assert!(worst.is_empty(), "{}", worst.join("\n"));

    // The magnitude tables, the operation order and the signed flags, exactly.
    let tables: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("tables.json")).unwrap()).unwrap();
    for (name, space) in [("TrivialAugmentWide", Space::TrivialAugmentWide), ("RandAugment", Space::RandAugment)] {
        let entry = &tables[name];
        let ops: Vec<&str> = entry["ops"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(ops, Op::ALL.map(Op::name), "{name}: operations");
        let signed: Vec<bool> = entry["signed"].as_array().unwrap().iter().map(|v| v.as_bool().unwrap()).collect();
        assert_eq!(signed, Op::ALL.map(Op::signed), "{name}: signed flags");
        for t in entry["tables"].as_array().unwrap() {
            let op: Op = t["op"].as_str().unwrap().parse().unwrap();
            let (bins, h, w) =
                (t["bins"].as_u64().unwrap(), t["height"].as_u64().unwrap(), t["width"].as_u64().unwrap());
            let theirs: Option<Vec<f32>> =
                t["values"].as_array().map(|a| a.iter().map(|v| v.as_f64().unwrap() as f32).collect());
            let ours = magnitudes(space, op, bins as usize, h as u32, w as u32);
            assert_eq!(ours, theirs, "{name} {op} bins {bins} size {h}x{w}");
        }
    }
}
