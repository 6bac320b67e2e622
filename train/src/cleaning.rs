//! Finding the images worth a second look, from one evaluation pass: fastai's
//! `ClassificationInterpretation` — `top_losses` (the images the model is most wrong about:
//! mislabelled, ambiguous or broken files float to the top) and `most_confused` (the class
//! pairs most often mistaken for each other).
//!
//! The trainer collects an [`ImageLoss`] per validation image (per-image losses from
//! [`per_image_losses`]); this module ranks them, writes `top_losses.csv` atomically and draws
//! them as a captioned gallery, and reads the confusion matrix.

use std::io::Write;
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{Rgb, RgbImage};
use infer::canvas::{Canvas, BLACK, GREEN, LINE, RED};
use infer::{decode_file, DecodeLimits};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

/// One evaluated image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageLoss {
    /// Index in the evaluated sample list.
    pub sample: usize,
    pub path: PathBuf,
    pub label: usize,
    pub predicted: usize,
    /// Probability of the predicted class.
    pub confidence: f32,
    /// Cross entropy of the true label (no smoothing, no class weights).
    pub loss: f64,
}

/// `--top-losses K` and the confused-pairs threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleaningSettings {
    /// Images listed in `top_losses.csv` and drawn in `top_losses.png`.
    pub top_k: usize,
    /// Confused pairs with at least this many images (fastai's `min_val`).
    pub min_confused: usize,
}

impl Default for CleaningSettings {
    fn default() -> Self {
        CleaningSettings { top_k: 32, min_confused: 1 }
    }
}

/// Unreduced cross entropy of each row of float `logits` `[N, C]` against `labels` `[N]`
/// (`CrossEntropyLoss(reduction='none')`).
pub fn per_image_losses(logits: &Tensor, labels: &Tensor) -> Result<Vec<f64>, tch::TchError> {
    let l = logits.to_kind(Kind::Float).f_cross_entropy_loss(labels, None::<Tensor>, Reduction::None, -100, 0.0)?;
    Vec::<f64>::try_from(l.to_kind(Kind::Double).to_device(tch::Device::Cpu))
}

/// The `k` highest losses, highest first (a NaN loss counts as highest: a broken prediction is
/// worth a look); ties in input order.
pub fn top_losses(items: &[ImageLoss], k: usize) -> Vec<ImageLoss> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    let key = |i: usize| if items[i].loss.is_nan() { f64::INFINITY } else { items[i].loss };
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    order.into_iter().take(k).map(|i| items[i].clone()).collect()
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes `rows` (as [`top_losses`] ranks them) to `path` atomically:
/// `rank,path,label,predicted,confidence,loss`, class names for the classes.
pub fn write_top_losses_csv(path: &Path, rows: &[ImageLoss], classes: &[String]) -> std::io::Result<()> {
    let name = |c: usize| classes.get(c).cloned().unwrap_or_else(|| c.to_string());
    infer::atomic::write_with(path, |w| {
        writeln!(w, "rank,path,label,predicted,confidence,loss")?;
        for (rank, r) in rows.iter().enumerate() {
            writeln!(
                w,
                "{},{},{},{},{:.4},{:.6}",
                rank + 1,
                csv_field(&r.path.to_string_lossy()),
                csv_field(&name(r.label)),
                csv_field(&name(r.predicted)),
                r.confidence,
                r.loss
            )?;
        }
        Ok(())
    })
}

/// Thumbnail size keeping the aspect ratio within a `side × side` square.
fn fit(w: u32, h: u32, side: u32) -> (u32, u32) {
    let s = f64::from(side) / f64::from(w.max(h).max(1));
    (((f64::from(w) * s).round() as u32).max(1), ((f64::from(h) * s).round() as u32).max(1))
}

/// The top-loss images as a grid of thumbnails, in rank order, each captioned with its true
/// class, the prediction and its probability (red when wrong) and the loss; framed red for a
/// mistake, green otherwise. Unreadable files get a placeholder.
pub fn top_losses_picture(rows: &[ImageLoss], classes: &[String], thumb: u32, columns: usize) -> RgbImage {
    let thumbs: Vec<Option<RgbImage>> = rows
        .par_iter()
        .map(|r| {
            let img = decode_file(&r.path, DecodeLimits::default()).ok()?;
            let (w, h) = fit(img.width(), img.height(), thumb);
            Some(image::imageops::resize(&img, w, h, FilterType::Triangle))
        })
        .collect();
    let cols = columns.clamp(1, rows.len().max(1)) as i64;
    let n_rows = (rows.len() as i64 + cols - 1) / cols;
    let cell = i64::from(thumb);
    let (pad, caption, header) = (8i64, 3 * LINE + 4, LINE + 12);
    let (cell_w, cell_h) = (cell + pad, cell + caption + pad);
    let mut cv = Canvas::new((pad + cols * cell_w).max(360) as u32, (header + pad + n_rows.max(1) * cell_h) as u32);
    let title = format!("{} highest-loss images, highest first", rows.len());
    cv.text(pad, 6, &Canvas::fit(&title, i64::from(cv.img.width()) - 2 * pad, 1), BLACK, 1);
    let name = |c: usize| classes.get(c).map_or("?", String::as_str);
    for (k, (r, t)) in rows.iter().zip(&thumbs).enumerate() {
        let (x, y) = (pad + (k as i64 % cols) * cell_w, header + (k as i64 / cols) * cell_h);
        cv.fill(x, y, cell, cell, Rgb([235, 235, 235]));
        match t {
            Some(t) => {
                let (ox, oy) = (x + (cell - i64::from(t.width())) / 2, y + (cell - i64::from(t.height())) / 2);
                for (px, py, p) in t.enumerate_pixels() {
                    cv.put(ox + i64::from(px), oy + i64::from(py), *p);
                }
            }
            None => cv.text(x + 6, y + cell / 2 - LINE / 2, "unreadable", BLACK, 1),
        }
        let wrong = r.label != r.predicted;
        cv.frame(x, y, cell, cell, if wrong { RED } else { GREEN }, 3);
        let lines = [
            (format!("true: {}", name(r.label)), BLACK),
            (format!("pred: {} {:.0}%", name(r.predicted), 100.0 * r.confidence), if wrong { RED } else { BLACK }),
            (format!("loss {:.3}", r.loss), BLACK),
        ];
        for (i, (text, colour)) in lines.iter().enumerate() {
            cv.text(x, y + cell + 2 + i as i64 * LINE, &Canvas::fit(text, cell, 1), *colour, 1);
        }
    }
    cv.img
}

/// A pair of classes the model confuses: `count` images of `actual` predicted as `predicted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ConfusedPair {
    pub actual: usize,
    pub predicted: usize,
    pub count: usize,
}

/// fastai's `most_confused(min_val)`: the off-diagonal cells of `matrix[actual][predicted]` with
/// at least `min_count` images, most first (ties by actual, then predicted class).
pub fn most_confused(matrix: &[Vec<usize>], min_count: usize) -> Vec<ConfusedPair> {
    let mut pairs: Vec<ConfusedPair> = matrix
        .iter()
        .enumerate()
        .flat_map(|(a, row)| {
            row.iter()
                .enumerate()
                .filter(move |&(p, &n)| p != a && n >= min_count.max(1))
                .map(move |(p, &n)| ConfusedPair { actual: a, predicted: p, count: n })
        })
        .collect();
    pairs.sort_by(|x, y| y.count.cmp(&x.count).then(x.actual.cmp(&y.actual)).then(x.predicted.cmp(&y.predicted)));
    pairs
}

/// One line per pair: `bees → ants: 7 images`.
pub fn describe_confused(pairs: &[ConfusedPair], classes: &[String]) -> Vec<String> {
    let name = |c: usize| classes.get(c).cloned().unwrap_or_else(|| c.to_string());
    pairs
        .iter()
        .map(|p| {
            format!(
                "{} → {}: {} image{}",
                name(p.actual),
                name(p.predicted),
                p.count,
                if p.count == 1 { "" } else { "s" }
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(sample: usize, label: usize, predicted: usize, loss: f64) -> ImageLoss {
        ImageLoss {
            sample,
            path: PathBuf::from(format!("/data/{sample}.jpg")),
            label,
            predicted,
            confidence: 0.75,
            loss,
        }
    }

    #[test]
    fn ranks_highest_first() {
        let items = vec![
            item(0, 0, 0, 0.1),
            item(1, 1, 0, 2.5),
            item(2, 0, 1, f64::NAN),
            item(3, 1, 1, 2.5),
            item(4, 0, 0, 0.7),
        ];
        let top: Vec<usize> = top_losses(&items, 4).iter().map(|r| r.sample).collect();
        assert_eq!(top, [2, 1, 3, 4]);
        assert_eq!(top_losses(&items, 10).len(), 5);
    }

    #[test]
    fn per_image_losses_are_cross_entropies() {
        let logits = Tensor::from_slice(&[2.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
        let l = per_image_losses(&logits, &Tensor::from_slice(&[0i64, 0])).unwrap();
        let lse = |a: f64, b: f64| (a.exp() + b.exp()).ln();
        assert!((l[0] - (lse(2.0, 0.0) - 2.0)).abs() < 1e-6);
        assert!((l[1] - lse(0.0, 1.0)).abs() < 1e-6);
    }

    #[test]
    fn csv_is_quoted_and_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("top_losses.csv");
        let mut odd = item(7, 1, 0, 3.25);
        odd.path = PathBuf::from("/data/a, \"b\".jpg");
        let classes = vec!["ants".to_string(), "bees, wild".to_string()];
        write_top_losses_csv(&out, &[odd], &classes).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(text, "rank,path,label,predicted,confidence,loss\n1,\"/data/a, \"\"b\"\".jpg\",\"bees, wild\",ants,0.7500,3.250000\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn confused_pairs_most_first() {
        let m = vec![vec![10, 3, 0], vec![7, 5, 1], vec![3, 0, 9]];
        let pairs = most_confused(&m, 1);
        let flat: Vec<(usize, usize, usize)> = pairs.iter().map(|p| (p.actual, p.predicted, p.count)).collect();
        assert_eq!(flat, [(1, 0, 7), (0, 1, 3), (2, 0, 3), (1, 2, 1)]);
        assert_eq!(most_confused(&m, 3).len(), 3);
        let classes = vec!["ants".to_string(), "bees".to_string(), "wasps".to_string()];
        assert_eq!(describe_confused(&pairs[..1], &classes), ["bees → ants: 7 images"]);
        assert!(most_confused(&[vec![4]], 1).is_empty());
    }

    #[test]
    fn picture_has_frames_and_thumbnails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.png");
        RgbImage::from_pixel(40, 30, Rgb([0, 0, 255])).save(&path).unwrap();
        let mut wrong = item(0, 1, 0, 2.0);
        wrong.path = path.clone();
        let mut right = item(1, 0, 0, 0.5);
        right.path = path;
        let missing = item(2, 0, 1, 1.0);
        let img = top_losses_picture(&[wrong, right, missing], &["a".into(), "b".into()], 64, 8);
        let count = |c: Rgb<u8>| img.pixels().filter(|p| **p == c).count();
        assert!(count(RED) > 2 * 64 * 3, "red frames");
        assert!(count(GREEN) > 64 * 3, "green frame");
        assert!(count(Rgb([0, 0, 255])) > 2 * 64 * 40, "thumbnails");
    }
}
