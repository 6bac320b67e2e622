//! CIELab to RGB as Pillow converts it: `convert("RGB")` on a mode `LAB` image goes through
//! LittleCMS, from its built-in Lab profile (D50) to its built-in sRGB profile. The same
//! colour science is computed here in floating point: Lab to XYZ (D50), the sRGB profile's
//! Bradford-adapted primaries, the sRGB tone curve, rounded to 8 bits. LittleCMS evaluates an
//! 8-bit transform through an interpolated lookup table, so results may differ by a level or
//! two (measured in the decode tests).

/// D50 white, as LittleCMS has it.
const WHITE: [f64; 3] = [0.9642, 1.0, 0.8249];

/// XYZ (D50) to linear sRGB: the inverse of the sRGB profile's D50-adapted colorants.
const XYZ_TO_RGB: [[f64; 3]; 3] =
    [[3.1338561, -1.6168667, -0.4906146], [-0.9787684, 1.9161415, 0.0334540], [0.0719453, -0.2289914, 1.4052427]];

/// An 8-bit Lab pixel (L 0–255 for 0–100, a and b signed) as 8-bit sRGB.
pub(super) fn to_rgb(l: u8, a: i8, b: i8) -> [u8; 3] {
    let l = f64::from(l) * 100.0 / 255.0;
    let fy = (l + 16.0) / 116.0;
    let fx = fy + f64::from(a) / 500.0;
    let fz = fy - f64::from(b) / 200.0;
    let inverse = |t: f64| if t > 6.0 / 29.0 { t * t * t } else { 108.0 / 841.0 * (t - 4.0 / 29.0) };
    let xyz = [inverse(fx) * WHITE[0], inverse(fy) * WHITE[1], inverse(fz) * WHITE[2]];
    XYZ_TO_RGB.map(|row| {
        let linear = (row[0] * xyz[0] + row[1] * xyz[1] + row[2] * xyz[2]).clamp(0.0, 1.0);
        let v = if linear <= 0.0031308 { 12.92 * linear } else { 1.055 * linear.powf(1.0 / 2.4) - 0.055 };
        (v * 255.0).round() as u8
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_to_pillow() {
        // Pillow 13: `Image.frombytes("LAB", ...).convert("RGB")`.
        let cases = [
            ((128, 0, 0), [119, 119, 119]),
            ((200, 0, 0), [194, 194, 194]),
            ((128, 20, 0), [152, 107, 120]),
            ((128, 0, 20), [129, 119, 85]),
            ((128, -20, 0), [77, 129, 119]),
            ((200, 10, -10), [206, 188, 213]),
        ];
        for ((l, a, b), pillow) in cases {
            let ours = to_rgb(l, a, b);
            let worst = ours.iter().zip(pillow).map(|(x, y)| x.abs_diff(y)).max().unwrap();
            assert!(worst <= 2, "{l} {a} {b}: {ours:?} vs {pillow:?}");
        }
    }
}
