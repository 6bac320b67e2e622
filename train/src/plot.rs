//! The run's pictures: `curves.png` (loss and accuracy per epoch) and `train_batch.png` (the
//! first augmented batch with its class names, as the seed's `imshow(make_grid(...))`).
//! Drawn directly into an RGB buffer with the embedded font of `infer::canvas`.

use image::{Rgb, RgbImage};
use infer::canvas::{Canvas, BLACK, BLUE as TRAIN, GRID, LINE, ORANGE as VAL, WHITE};

/// One panel of the curves figure.
fn panel(cv: &mut Canvas, x0: i64, title: &str, train: &[f64], val: &[f64], fixed_max: Option<f64>) {
    let (w, h, top, left, bottom) = (440i64, 400i64, 40i64, 60i64, 40i64);
    let (px, py, pw, ph) = (x0 + left, top, w - left - 20, h - top - bottom);
    let n = train.len().max(val.len()).max(1);
    let data_max = train.iter().chain(val).cloned().filter(|v| v.is_finite()).fold(0.0f64, f64::max);
    let ymax = fixed_max.unwrap_or(if data_max > 0.0 { data_max * 1.1 } else { 1.0 });
    cv.text(x0 + w / 2 - Canvas::text_width(title, 2) / 2, 8, title, BLACK, 2);
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let y = py + ph - (f64::from(i) / 4.0 * ph as f64) as i64;
        cv.line((px, y), (px + pw, y), GRID, 1);
        let label = format!("{v:.2}");
        cv.text(px - Canvas::text_width(&label, 1) - 6, y - LINE / 2, &label, BLACK, 1);
    }
    let xs = |i: usize| px + if n == 1 { pw / 2 } else { (i as f64 / (n - 1) as f64 * pw as f64) as i64 };
    let ticks = if n <= 10 { 1 } else { n.div_ceil(10) };
    for i in (0..n).step_by(ticks) {
        let label = (i + 1).to_string();
        cv.text(xs(i) - Canvas::text_width(&label, 1) / 2, py + ph + 6, &label, BLACK, 1);
    }
    cv.text(px + pw / 2 - 20, py + ph + 24, "epoch", BLACK, 1);
    cv.line((px, py), (px, py + ph), BLACK, 1);
    cv.line((px, py + ph), (px + pw, py + ph), BLACK, 1);
    let ys = |v: f64| py + ph - ((v / ymax).clamp(0.0, 1.0) * ph as f64) as i64;
    for (series, color) in [(train, TRAIN), (val, VAL)] {
        let pts: Vec<(i64, i64)> =
            series.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(i, &v)| (xs(i), ys(v))).collect();
        for pair in pts.windows(2) {
            cv.line(pair[0], pair[1], color, 2);
        }
        for &(x, y) in &pts {
            cv.fill(x - 3, y - 3, 7, 7, color);
        }
    }
    // Legend
    for (j, (name, color)) in [("train", TRAIN), ("val", VAL)].iter().enumerate() {
        let ly = py + 10 + j as i64 * 16;
        cv.fill(px + pw - 80, ly, 14, 8, *color);
        cv.text(px + pw - 60, ly, name, BLACK, 1);
    }
}

/// Loss and accuracy per epoch, train and val, side by side.
pub fn curves(train_loss: &[f64], val_loss: &[f64], train_acc: &[f64], val_acc: &[f64]) -> RgbImage {
    let mut cv = Canvas::new(880, 400);
    panel(&mut cv, 0, "loss", train_loss, val_loss, None);
    panel(&mut cv, 440, "accuracy", train_acc, val_acc, Some(1.0));
    cv.img
}

/// A grid of normalised CHW images (`make_grid` with padding 2), each labelled with its class.
pub fn batch_grid(
    images: &[f32],
    labels: &[usize],
    classes: &[String],
    size: u32,
    mean: [f32; 3],
    std: [f32; 3],
    caption: &str,
) -> RgbImage {
    let n = labels.len().max(1) as u32;
    let cols = n.min(8);
    let rows = n.div_ceil(cols);
    let (pad, label_h, head) = (2u32, LINE as u32 + 4, LINE as u32 + 8);
    let cell_w = size + pad;
    let cell_h = size + pad + label_h;
    let width = (cols * cell_w + pad).max(Canvas::text_width(caption, 1) as u32 + 8);
    let mut cv = Canvas::new(width, head + rows * cell_h + pad);
    cv.fill(0, 0, i64::from(cv.img.width()), i64::from(cv.img.height()), BLACK);
    cv.text(4, 4, caption, WHITE, 1);
    let plane = (size * size) as usize;
    for (k, &label) in labels.iter().enumerate() {
        let (c, r) = (k as u32 % cols, k as u32 / cols);
        let (x0, y0) = (pad + c * cell_w, head + pad + r * cell_h);
        let name = classes.get(label).map(String::as_str).unwrap_or("?");
        cv.text(i64::from(x0), i64::from(y0 + 2), &Canvas::fit(name, i64::from(size), 1), WHITE, 1);
        let img = &images[k * 3 * plane..(k + 1) * 3 * plane];
        for y in 0..size {
            for x in 0..size {
                let i = (y * size + x) as usize;
                let px = Rgb(std::array::from_fn(|ch| {
                    let v = img[ch * plane + i] * std[ch] + mean[ch];
                    (v.clamp(0.0, 1.0) * 255.0).round() as u8
                }));
                cv.img.put_pixel(x0 + x, y0 + label_h + y, px);
            }
        }
    }
    cv.img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_have_content() {
        let img = curves(&[0.7, 0.5, 0.4], &[0.6, 0.55, 0.5], &[0.6, 0.7, 0.8], &[0.65, 0.7, 0.75]);
        assert_eq!(img.dimensions(), (880, 400));
        let coloured = img.pixels().filter(|p| **p == TRAIN || **p == VAL).count();
        assert!(coloured > 200, "{coloured}");
    }

    #[test]
    fn grid_restores_pixels() {
        let size = 4u32;
        let mean = [0.5; 3];
        let std = [0.25; 3];
        // One image, value 0 everywhere => pixel 0.5 => 128
        let images = vec![0.0f32; 3 * 16];
        let img = batch_grid(&images, &[1], &["a".into(), "b".into()], size, mean, std, "");
        let top = LINE as u32 + 8 + 2 + LINE as u32 + 4;
        assert_eq!(img.get_pixel(2, top), &Rgb([128, 128, 128]));
    }
}
