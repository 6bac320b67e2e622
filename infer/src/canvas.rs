//! A small raster canvas for the toolkit's pictures (training curves, sample grids, confusion
//! matrices, prediction galleries), with text in an embedded font (DejaVu Sans: Latin, Greek,
//! Cyrillic and more), anti-aliased, so that class names in any of those scripts are drawn as
//! they are written and no system font is needed.

use std::sync::OnceLock;

use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use image::{Rgb, RgbImage};

pub const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
pub const BLACK: Rgb<u8> = Rgb([20, 20, 20]);
pub const GRID: Rgb<u8> = Rgb([225, 225, 225]);
pub const BLUE: Rgb<u8> = Rgb([31, 119, 180]);
pub const ORANGE: Rgb<u8> = Rgb([255, 127, 14]);
pub const GREEN: Rgb<u8> = Rgb([44, 160, 44]);
pub const RED: Rgb<u8> = Rgb([214, 39, 40]);

/// Pixel height of text at scale 1; lines are [`LINE`] pixels apart.
const PX: f32 = 12.0;
/// Line height at scale 1.
pub const LINE: i64 = 14;

fn font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(dejavu::sans::regular()).expect("the embedded font parses"))
}

/// An RGB image to draw on.
pub struct Canvas {
    pub img: RgbImage,
}

impl Canvas {
    /// A white canvas.
    pub fn new(w: u32, h: u32) -> Canvas {
        Canvas { img: RgbImage::from_pixel(w, h, WHITE) }
    }

    pub fn put(&mut self, x: i64, y: i64, c: Rgb<u8>) {
        self.blend(x, y, c, 1.0);
    }

    /// Mixes `c` into the pixel at (x, y) with weight `alpha` (clipped to the canvas).
    fn blend(&mut self, x: i64, y: i64, c: Rgb<u8>, alpha: f32) {
        if x >= 0 && y >= 0 && (x as u32) < self.img.width() && (y as u32) < self.img.height() {
            let p = self.img.get_pixel_mut(x as u32, y as u32);
            let a = alpha.clamp(0.0, 1.0);
            for (d, s) in p.0.iter_mut().zip(c.0) {
                *d = (f32::from(*d) * (1.0 - a) + f32::from(s) * a).round() as u8;
            }
        }
    }

    /// Fills a rectangle (clipped to the canvas).
    pub fn fill(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb<u8>) {
        let (x0, y0) = (x.max(0), y.max(0));
        let (x1, y1) = ((x + w).min(i64::from(self.img.width())), (y + h).min(i64::from(self.img.height())));
        for yy in y0..y1 {
            for xx in x0..x1 {
                self.img.put_pixel(xx as u32, yy as u32, c);
            }
        }
    }

    /// A rectangle's outline `thick` pixels wide, drawn inside it.
    pub fn frame(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb<u8>, thick: i64) {
        self.fill(x, y, w, thick, c);
        self.fill(x, y + h - thick, w, thick, c);
        self.fill(x, y, thick, h, c);
        self.fill(x + w - thick, y, thick, h, c);
    }

    /// A line `thick` pixels wide (Bresenham with a square brush).
    pub fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb<u8>, thick: i64) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.fill(x - thick / 2, y - thick / 2, thick, thick, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text with its top-left corner at (x, y), [`LINE`]` × scale` pixels high.
    pub fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb<u8>, scale: i64) {
        self.glyphs(s, c, scale, |u, v| (x + u, y + v));
    }

    /// Text turned a quarter left, read from bottom to top (as rotated axis labels are), with
    /// its bottom-left corner at (x, y): [`LINE`]` × scale` pixels wide.
    pub fn text_up(&mut self, x: i64, y: i64, s: &str, c: Rgb<u8>, scale: i64) {
        self.glyphs(s, c, scale, |u, v| (x + v, y - u));
    }

    /// Draws `s`, each pixel at `place(u, v)`: `u` along the text from its start, `v` down from
    /// its top.
    fn glyphs(&mut self, s: &str, c: Rgb<u8>, scale: i64, place: impl Fn(i64, i64) -> (i64, i64)) {
        let font = font().as_scaled(PxScale::from(PX * scale as f32));
        let mut caret = 0.0f32;
        let baseline = font.ascent();
        let mut previous = None;
        for ch in s.chars() {
            let id = font.glyph_id(ch);
            if let Some(p) = previous {
                caret += font.kern(p, id);
            }
            let glyph = id.with_scale_and_position(font.scale(), point(caret, baseline));
            caret += font.h_advance(id);
            previous = Some(id);
            if let Some(outline) = font.outline_glyph(glyph) {
                let b = outline.px_bounds();
                outline.draw(|gx, gy, coverage| {
                    let (x, y) = place(b.min.x as i64 + i64::from(gx), b.min.y as i64 + i64::from(gy));
                    self.blend(x, y, c, coverage);
                });
            }
        }
    }

    /// Width in pixels of `s` drawn at `scale`.
    pub fn text_width(s: &str, scale: i64) -> i64 {
        let font = font().as_scaled(PxScale::from(PX * scale as f32));
        let mut w = 0.0;
        let mut previous = None;
        for ch in s.chars() {
            let id = font.glyph_id(ch);
            if let Some(p) = previous {
                w += font.kern(p, id);
            }
            w += font.h_advance(id);
            previous = Some(id);
        }
        w.ceil() as i64
    }

    /// `s` shortened with an ellipsis to fit `width` pixels at `scale`.
    pub fn fit(s: &str, width: i64, scale: i64) -> String {
        if Canvas::text_width(s, scale) <= width {
            return s.to_string();
        }
        let mut out: String = s.to_string();
        while !out.is_empty() && Canvas::text_width(&format!("{out}…"), scale) > width {
            out.pop();
        }
        format!("{out}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The columns of `img` holding ink (darker than the background), as a signature of the
    /// drawn glyphs.
    fn ink(s: &str) -> Vec<u32> {
        let mut cv = Canvas::new(Canvas::text_width(s, 2) as u32 + 4, 40);
        cv.text(2, 4, s, BLACK, 2);
        (0..cv.img.width()).map(|x| (0..40).map(|y| 255 - u32::from(cv.img.get_pixel(x, y).0[0])).sum()).collect()
    }

    #[test]
    fn latin_greek_and_cyrillic_are_drawn_not_replaced() {
        let missing = ink("\u{FFFF}"); // a code point no font has: the "missing glyph" box
        for s in ["chiffre é 7", "Ελληνικά", "кот"] {
            let drawn = ink(s);
            assert!(drawn.iter().sum::<u32>() > 2000, "{s}: no ink");
            // Letters that differ only in accents or script draw differently.
            assert_ne!(drawn, ink(&s.replace(['é', 'λ', 'о'], "?")), "{s}");
            for ch in s.chars().filter(|c| !c.is_ascii()) {
                assert_ne!(ink(&ch.to_string()), missing, "{ch} is drawn as a missing glyph");
            }
        }
        assert_ne!(ink("chiffre é 7"), ink("chiffre e 7"));
        assert!(Canvas::text_width("кот", 1) > 10);
    }

    #[test]
    fn text_turned_up_is_the_same_text_a_quarter_turn_left() {
        let s = "bees";
        let (w, h) = (Canvas::text_width(s, 1) as u32 + 2, LINE as u32);
        let mut flat = Canvas::new(w, h);
        flat.text(0, 0, s, BLACK, 1);
        let mut up = Canvas::new(h, w);
        up.text_up(0, i64::from(w) - 1, s, BLACK, 1);
        let turned = image::imageops::rotate270(&flat.img);
        let differing = turned.pixels().zip(up.img.pixels()).filter(|(a, b)| a.0[0].abs_diff(b.0[0]) > 1).count();
        assert_eq!(differing, 0, "{differing} pixels differ");
        assert!(up.img.pixels().any(|p| p.0[0] < 100), "no ink");
    }

    #[test]
    fn fit_shortens_with_an_ellipsis() {
        let long = "a very long class name indeed";
        let short = Canvas::fit(long, 60, 1);
        assert!(short.ends_with('…') && Canvas::text_width(&short, 1) <= 60, "{short}");
        assert_eq!(Canvas::fit("ok", 60, 1), "ok");
    }
}
