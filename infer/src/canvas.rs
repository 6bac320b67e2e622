//! A small raster canvas with a built-in 8×8 bitmap font, for the toolkit's pictures
//! (training curves, sample grids, confusion matrices) without system fonts.

use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};

pub const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
pub const BLACK: Rgb<u8> = Rgb([20, 20, 20]);
pub const GRID: Rgb<u8> = Rgb([225, 225, 225]);
pub const BLUE: Rgb<u8> = Rgb([31, 119, 180]);
pub const ORANGE: Rgb<u8> = Rgb([255, 127, 14]);

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
        if x >= 0 && y >= 0 && (x as u32) < self.img.width() && (y as u32) < self.img.height() {
            self.img.put_pixel(x as u32, y as u32, c);
        }
    }

    /// Fills a rectangle (clipped to the canvas).
    pub fn fill(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb<u8>) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.put(xx, yy, c);
            }
        }
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

    /// Text with the 8×8 font at `scale`; characters outside it print as '?'.
    pub fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb<u8>, scale: i64) {
        for (i, ch) in s.chars().enumerate() {
            let glyph = font8x8::BASIC_FONTS.get(ch).or_else(|| font8x8::BASIC_FONTS.get('?')).unwrap_or([0; 8]);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        self.fill(x + (i as i64 * 8 + col) * scale, y + row as i64 * scale, scale, scale, c);
                    }
                }
            }
        }
    }

    /// Width in pixels of `s` drawn at `scale`.
    pub fn text_width(s: &str, scale: i64) -> i64 {
        s.chars().count() as i64 * 8 * scale
    }
}
