//! A picture of classified images — the seed tutorial's `visualize_model`: a grid of
//! thumbnails, each captioned with the predicted class and its probability. When the true
//! classes are known, correct predictions are framed green, mistakes red with the true class,
//! and the mistakes come first. `infer --gallery` and training's `val_predictions.png` both
//! draw it here.

use std::path::PathBuf;

use image::imageops::FilterType;
use image::{Rgb, RgbImage};
use rayon::prelude::*;

use crate::canvas::{Canvas, BLACK, GREEN, LINE, RED};
use crate::decode::{decode_file, DecodeLimits};

/// One classified image.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub path: PathBuf,
    pub predicted: usize,
    pub confidence: f32,
    /// The true class, when known.
    pub truth: Option<usize>,
}

impl Item {
    fn is_mistake(&self) -> bool {
        self.truth.is_some_and(|t| t != self.predicted)
    }
}

/// Size of the picture.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// Images shown at most.
    pub max_images: usize,
    /// Side of a thumbnail's square cell, in pixels.
    pub thumb: u32,
    /// Thumbnails per row at most.
    pub columns: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { max_images: 48, thumb: 160, columns: 8 }
    }
}

/// Which items are shown, in order: the mistakes first (in input order; when more than fit,
/// taken round-robin by true class, so that every class's mistakes are seen, not only those
/// of the classes that come first), then the others, evenly spaced over the input when there
/// are more than fit. The same input always gives the same choice.
pub fn select(items: &[Item], max: usize) -> Vec<usize> {
    let mut mistakes: Vec<usize> = (0..items.len()).filter(|&i| items[i].is_mistake()).collect();
    if mistakes.len() > max {
        let mut by_class: std::collections::BTreeMap<usize, std::collections::VecDeque<usize>> = Default::default();
        for &i in &mistakes {
            by_class.entry(items[i].truth.unwrap_or(0)).or_default().push_back(i);
        }
        let mut chosen = Vec::with_capacity(max);
        while chosen.len() < max {
            for queue in by_class.values_mut() {
                if let Some(i) = queue.pop_front().filter(|_| chosen.len() < max) {
                    chosen.push(i);
                }
            }
        }
        chosen.sort_unstable();
        mistakes = chosen;
    }
    let rest: Vec<usize> = (0..items.len()).filter(|&i| !items[i].is_mistake()).collect();
    let room = max - mistakes.len();
    let take = room.min(rest.len());
    let spaced = (0..take).map(|k| rest[k * rest.len() / take.max(1)]);
    mistakes.into_iter().chain(spaced).collect()
}

/// The gallery picture of `items` (predicted and true indices into `classes`).
pub fn draw(items: &[Item], classes: &[String], opts: &Options) -> RgbImage {
    let chosen = select(items, opts.max_images);
    let thumbs: Vec<Option<RgbImage>> = chosen
        .par_iter()
        .map(|&i| {
            let img = decode_file(&items[i].path, DecodeLimits::default()).ok()?;
            let (w, h) = fit(img.width(), img.height(), opts.thumb);
            Some(image::imageops::resize(&img, w, h, FilterType::Triangle))
        })
        .collect();
    let cols = opts.columns.clamp(1, chosen.len().max(1)) as i64;
    let rows = (chosen.len() as i64 + cols - 1) / cols;
    let cell = i64::from(opts.thumb);
    let (pad, caption) = (8i64, 2 * LINE + 4);
    let header = 2 * LINE + 10;
    let (cell_w, cell_h) = (cell + pad, cell + caption + pad);
    let mut cv = Canvas::new((pad + cols * cell_w).max(360) as u32, (header + pad + rows.max(1) * cell_h) as u32);
    let mistakes = items.iter().filter(|i| i.is_mistake()).count();
    let known = items.iter().any(|i| i.truth.is_some());
    let mut title = format!("{} of {} images", chosen.len(), items.len());
    if known {
        title.push_str(&format!(" — {mistakes} mistake(s), shown first, framed red; correct ones framed green"));
    }
    cv.text(pad, 6, &Canvas::fit(&title, i64::from(cv.img.width()) - 2 * pad, 1), BLACK, 1);
    for (k, (&i, thumb)) in chosen.iter().zip(&thumbs).enumerate() {
        let item = &items[i];
        let (x, y) = (pad + (k as i64 % cols) * cell_w, header + (k as i64 / cols) * cell_h);
        cv.fill(x, y, cell, cell, Rgb([235, 235, 235]));
        match thumb {
            Some(t) => paste(&mut cv, t, x + (cell - i64::from(t.width())) / 2, y + (cell - i64::from(t.height())) / 2),
            None => cv.text(x + 6, y + cell / 2 - LINE / 2, "unreadable", BLACK, 1),
        }
        if let Some(truth) = item.truth {
            let colour = if truth == item.predicted { GREEN } else { RED };
            cv.frame(x, y, cell, cell, colour, 4);
        }
        let name = |c: usize| classes.get(c).map_or("?", String::as_str);
        let pred = format!("{} {:.0}%", name(item.predicted), 100.0 * item.confidence);
        cv.text(x, y + cell + 2, &Canvas::fit(&pred, cell, 1), BLACK, 1);
        if let Some(t) = item.truth.filter(|&t| t != item.predicted) {
            cv.text(x, y + cell + 2 + LINE, &Canvas::fit(&format!("true: {}", name(t)), cell, 1), RED, 1);
        }
    }
    cv.img
}

/// Thumbnail size keeping the aspect ratio within a `side × side` square.
fn fit(w: u32, h: u32, side: u32) -> (u32, u32) {
    let s = f64::from(side) / f64::from(w.max(h).max(1));
    (((f64::from(w) * s).round() as u32).max(1), ((f64::from(h) * s).round() as u32).max(1))
}

fn paste(cv: &mut Canvas, img: &RgbImage, x: i64, y: i64) {
    for (px, py, p) in img.enumerate_pixels() {
        cv.put(x + i64::from(px), y + i64::from(py), *p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(predicted: usize, truth: Option<usize>) -> Item {
        Item { path: PathBuf::from("/nonexistent.png"), predicted, confidence: 0.9, truth }
    }

    #[test]
    fn mistakes_first_then_evenly_spaced() {
        let items: Vec<Item> = (0..100).map(|i| item(i % 3, Some(if i % 10 == 0 { 1 } else { i % 3 }))).collect();
        let chosen = select(&items, 20);
        assert_eq!(chosen.len(), 20);
        let mistakes: Vec<usize> = (0..100).filter(|i| items[*i].is_mistake()).collect();
        assert_eq!(&chosen[..mistakes.len()], &mistakes[..]);
        assert!(chosen[mistakes.len()..].windows(2).all(|w| w[0] < w[1]));
        assert_eq!(select(&items, 20), chosen, "deterministic");
        assert_eq!(select(&items[..3], 20).len(), 3);
    }

    #[test]
    fn too_many_mistakes_are_taken_from_every_class() {
        // 30 mistakes of class 0 first in path order, then 3 each of classes 1 and 2.
        let mut items: Vec<Item> = (0..30).map(|_| item(1, Some(0))).collect();
        items.extend((0..3).map(|_| item(0, Some(1))));
        items.extend((0..3).map(|_| item(0, Some(2))));
        let chosen = select(&items, 9);
        assert_eq!(chosen.len(), 9);
        let classes: Vec<usize> = chosen.iter().map(|&i| items[i].truth.unwrap()).collect();
        assert_eq!(classes, [0, 0, 0, 1, 1, 1, 2, 2, 2], "{chosen:?}");
        assert!(chosen.windows(2).all(|w| w[0] < w[1]), "in input order");
    }

    #[test]
    fn frames_say_right_and_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.png");
        RgbImage::from_pixel(50, 30, Rgb([0, 0, 255])).save(&path).unwrap();
        let items = vec![
            Item { path: path.clone(), predicted: 0, confidence: 0.8, truth: Some(0) },
            Item { path, predicted: 1, confidence: 0.6, truth: Some(0) },
        ];
        let classes = vec!["кот".to_string(), "Ελληνικά".to_string()];
        let img = draw(&items, &classes, &Options { max_images: 10, thumb: 64, columns: 4 });
        let count = |c: Rgb<u8>| img.pixels().filter(|p| **p == c).count();
        assert!(count(RED) > 200 && count(GREEN) > 200, "red {} green {}", count(RED), count(GREEN));
        assert!(count(Rgb([0, 0, 255])) > 2 * 64 * 30 / 2, "thumbnails pasted");
    }
}
