//! Image resampling that reproduces Pillow's `Image.resize` on 8-bit RGB images, pixel for pixel.
//!
//! timm and torchvision evaluate on PIL images, so their resize is Pillow's. Primary source:
//! Pillow `src/libImaging/Resample.c` (`precompute_coeffs`, `normalize_coeffs_8bpc`,
//! `ImagingResampleHorizontal_8bpc` / `_Vertical_8bpc`, `ImagingResampleInner`) for bilinear and
//! bicubic, and `src/libImaging/Geometry.c` (`ImagingScaleAffine`) with `_imaging.c` (`_resize`) for
//! nearest. The algorithm, re-implemented here:
//!
//! - **Separable convolution with antialiasing.** For an axis of `in` samples resized to `out`,
//!   `scale = in / out`; the filter is stretched by `max(scale, 1)`, so a downscale averages over
//!   every input pixel it covers (support 1 for bilinear, 2 for bicubic with `a = -0.5`, times the
//!   stretch). Output sample `i` is centred at `(i + 0.5) * scale`; its taps run from
//!   `trunc(center - support + 0.5)` to `trunc(center + support + 0.5)`, clamped to the image, and
//!   are normalised to sum to one (edge pixels are not replicated: the taps are cut and renormalised).
//! - **Fixed point.** Each weight becomes `round_half_away(w * 2^22)`; a pixel is
//!   `clamp((2^21 + Σ p·k) >> 22, 0, 255)`. The horizontal pass runs first, its 8-bit result is the
//!   input of the vertical pass (that intermediate rounding is why a float implementation differs
//!   from PIL by a level here and there). A pass whose size does not change is skipped.
//! - **Nearest** is an affine scale: the source coordinate starts at `scale / 2` and is advanced by
//!   adding `scale` (accumulated in `f64`, as Pillow does), truncated to an index; an index outside
//!   the image gives a black pixel.

use image::RgbImage;

use crate::error::{Error, Result};

/// Interpolation filter, with Pillow's semantics (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interpolation {
    /// Pillow `BICUBIC`: Keys cubic convolution with `a = -0.5`, antialiased when downscaling.
    Bicubic,
    /// Pillow `BILINEAR`: triangle filter, antialiased when downscaling.
    Bilinear,
    /// Pillow `NEAREST`: nearest source pixel, no filtering.
    Nearest,
}

impl Interpolation {
    /// The lower-case name timm and torchvision use (`"bicubic"`, `"bilinear"`, `"nearest"`).
    pub fn name(self) -> &'static str {
        match self {
            Interpolation::Bicubic => "bicubic",
            Interpolation::Bilinear => "bilinear",
            Interpolation::Nearest => "nearest",
        }
    }

    /// Parses timm's / torchvision's interpolation names (case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "bicubic" => Some(Interpolation::Bicubic),
            "bilinear" => Some(Interpolation::Bilinear),
            "nearest" => Some(Interpolation::Nearest),
            _ => None,
        }
    }
}

impl std::fmt::Display for Interpolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Bits of fraction in the fixed-point weights (Pillow's `PRECISION_BITS = 32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

fn bicubic(x: f64) -> f64 {
    // Keys' cubic with a = -0.5, written in Pillow's evaluation order so the f64 results agree.
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point taps of one axis: for output sample `i`, `count[i]` weights starting at input
/// `first[i]`, stored at `weights[i * ksize..]`.
struct Taps {
    ksize: usize,
    first: Vec<usize>,
    count: Vec<usize>,
    weights: Vec<i32>,
}

fn precompute_taps(in_size: usize, out_size: usize, filter: fn(f64) -> f64, support: f64) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = support * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let inv = 1.0 / filterscale;
    let mut first = Vec::with_capacity(out_size);
    let mut count = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for (i, row) in weights.chunks_exact_mut(ksize).enumerate() {
        let center = (i as f64 + 0.5) * scale;
        // `as` truncates toward zero like C's `(int)`; negative starts clamp to 0.
        let lo = ((center - support + 0.5) as i64).max(0) as usize;
        let hi = ((center + support + 0.5) as i64).clamp(0, in_size as i64) as usize;
        let n = hi.saturating_sub(lo).min(ksize);
        let mut total = 0.0;
        for (x, wx) in w.iter_mut().take(n).enumerate() {
            *wx = filter(((x + lo) as f64 - center + 0.5) * inv);
            total += *wx;
        }
        for (k, wx) in row.iter_mut().zip(&w[..n]) {
            let v = if total != 0.0 { wx / total } else { *wx };
            let fixed = v * f64::from(1u32 << PRECISION_BITS);
            *k = if v < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        first.push(lo);
        count.push(n);
    }
    Taps {
        ksize,
        first,
        count,
        weights,
    }
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Horizontal pass over rows `row0..row0 + rows` of `src` (`src_w` wide), into an `out_w`-wide buffer.
fn horizontal(src: &[u8], src_w: usize, row0: usize, rows: usize, taps: &Taps) -> Vec<u8> {
    let out_w = taps.first.len();
    let mut out = vec![0u8; out_w * rows * 3];
    let half = 1i64 << (PRECISION_BITS - 1);
    for (y, out_row) in out.chunks_exact_mut(out_w * 3).enumerate() {
        let start = (row0 + y) * src_w * 3;
        let src_row = &src[start..start + src_w * 3];
        for (x, px) in out_row.chunks_exact_mut(3).enumerate() {
            let k = &taps.weights[x * taps.ksize..x * taps.ksize + taps.count[x]];
            let s = &src_row[taps.first[x] * 3..(taps.first[x] + taps.count[x]) * 3];
            let mut acc = [half; 3];
            for (w, p) in k.iter().zip(s.chunks_exact(3)) {
                let w = i64::from(*w);
                acc[0] += i64::from(p[0]) * w;
                acc[1] += i64::from(p[1]) * w;
                acc[2] += i64::from(p[2]) * w;
            }
            px[0] = clip8(acc[0]);
            px[1] = clip8(acc[1]);
            px[2] = clip8(acc[2]);
        }
    }
    out
}

/// Vertical pass: `src` is `width` wide; `taps.first` are row indices into `src` minus `row0`.
fn vertical(src: &[u8], width: usize, row0: usize, taps: &Taps) -> Vec<u8> {
    let out_h = taps.first.len();
    let stride = width * 3;
    let mut out = vec![0u8; stride * out_h];
    let half = 1i64 << (PRECISION_BITS - 1);
    let mut acc = vec![0i64; stride];
    for (y, out_row) in out.chunks_exact_mut(stride).enumerate() {
        acc.fill(half);
        let k = &taps.weights[y * taps.ksize..y * taps.ksize + taps.count[y]];
        for (j, w) in k.iter().enumerate() {
            let r = taps.first[y] - row0 + j;
            let w = i64::from(*w);
            for (a, p) in acc.iter_mut().zip(&src[r * stride..(r + 1) * stride]) {
                *a += i64::from(*p) * w;
            }
        }
        for (o, a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(*a);
        }
    }
    out
}

fn resample_convolution(
    img: &RgbImage,
    width: usize,
    height: usize,
    filter: fn(f64) -> f64,
    support: f64,
) -> Vec<u8> {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let src = img.as_raw();
    let vert = precompute_taps(in_h, height, filter, support);
    // Only the rows the vertical pass reads need a horizontal pass (as in Pillow).
    let row0 = vert.first.first().copied().unwrap_or(0);
    let row1 = vert
        .first
        .iter()
        .zip(&vert.count)
        .map(|(f, c)| f + c)
        .max()
        .unwrap_or(row0);
    let (buf, buf_w, base) = if width != in_w {
        let horiz = precompute_taps(in_w, width, filter, support);
        (
            horizontal(src, in_w, row0, row1 - row0, &horiz),
            width,
            row0,
        )
    } else {
        (src.to_vec(), in_w, 0)
    };
    if height != in_h {
        vertical(&buf, buf_w, base, &vert)
    } else {
        buf
    }
}

fn resample_nearest(img: &RgbImage, width: usize, height: usize) -> Vec<u8> {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let src = img.as_raw();
    let coords = |in_size: usize, out_size: usize| -> Vec<Option<usize>> {
        let step = in_size as f64 / out_size as f64;
        let mut pos = step * 0.5;
        let mut out = Vec::with_capacity(out_size);
        for _ in 0..out_size {
            let idx = if pos < 0.0 { None } else { Some(pos as usize) };
            out.push(idx.filter(|&i| i < in_size));
            pos += step;
        }
        out
    };
    let xs = coords(in_w, width);
    let ys = coords(in_h, height);
    let mut out = vec![0u8; width * height * 3];
    for (row, yi) in out.chunks_exact_mut(width * 3).zip(&ys) {
        let Some(yi) = yi else { continue };
        let src_row = &src[yi * in_w * 3..(yi + 1) * in_w * 3];
        for (px, xi) in row.chunks_exact_mut(3).zip(&xs) {
            if let Some(xi) = xi {
                px.copy_from_slice(&src_row[xi * 3..xi * 3 + 3]);
            }
        }
    }
    out
}

/// Resizes `img` to `width` x `height` exactly as Pillow's `Image.resize((width, height), filter)`
/// does on an `RGB` image (no `box`, no `reducing_gap`, which is how torchvision calls it).
///
/// Errors with [`Error::InvalidInput`] if a size is zero or the input image is empty.
pub fn resize(
    img: &RgbImage,
    width: usize,
    height: usize,
    interpolation: Interpolation,
) -> Result<RgbImage> {
    if width == 0 || height == 0 || img.width() == 0 || img.height() == 0 {
        return Err(Error::InvalidInput(format!(
            "cannot resize a {}x{} image to {width}x{height}",
            img.width(),
            img.height()
        )));
    }
    let (w32, h32) = match (u32::try_from(width), u32::try_from(height)) {
        (Ok(w), Ok(h)) => (w, h),
        _ => {
            return Err(Error::InvalidInput(format!(
                "resize target {width}x{height} is too large"
            )))
        }
    };
    if (width, height) == (img.width() as usize, img.height() as usize) {
        return Ok(img.clone());
    }
    let data = match interpolation {
        Interpolation::Bicubic => resample_convolution(img, width, height, bicubic, 2.0),
        Interpolation::Bilinear => resample_convolution(img, width, height, bilinear, 1.0),
        Interpolation::Nearest => resample_nearest(img, width, height),
    };
    RgbImage::from_raw(w32, h32, data).ok_or_else(|| {
        Error::InvalidInput(format!(
            "resize to {width}x{height} produced a short buffer"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gray(w: u32, h: u32, f: impl Fn(u32, u32) -> u8) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let v = f(x, y);
            image::Rgb([v, v, v])
        })
    }

    #[test]
    fn filters_match_their_definitions() {
        assert_eq!(bicubic(0.0), 1.0);
        assert_eq!(bicubic(1.0), 0.0);
        assert_eq!(bicubic(2.0), 0.0);
        assert_eq!(bicubic(0.5), 0.5625);
        assert_eq!(bicubic(1.5), -0.0625);
        assert_eq!(bilinear(0.25), 0.75);
        assert_eq!(bilinear(-1.0), 0.0);
    }

    #[test]
    fn taps_sum_to_one_in_fixed_point() {
        for (i, o) in [(300, 256), (256, 300), (1000, 7), (5, 5)] {
            for (f, s) in [(bicubic as fn(f64) -> f64, 2.0), (bilinear, 1.0)] {
                let t = precompute_taps(i, o, f, s);
                for y in 0..o {
                    let sum: i64 = t.weights[y * t.ksize..y * t.ksize + t.count[y]]
                        .iter()
                        .map(|&k| i64::from(k))
                        .sum();
                    // Each weight is rounded separately, so the sum is within count/2 of 2^22.
                    assert!(
                        (sum - (1 << 22)).abs() <= t.count[y] as i64,
                        "{i}->{o}: {sum}"
                    );
                    assert!(t.first[y] + t.count[y] <= i);
                }
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = gray(37, 23, |_, _| 173);
        for interp in [
            Interpolation::Bicubic,
            Interpolation::Bilinear,
            Interpolation::Nearest,
        ] {
            for (w, h) in [(11, 5), (80, 61), (37, 9)] {
                let out = resize(&img, w, h, interp).unwrap();
                assert!(
                    out.pixels().all(|p| p.0 == [173, 173, 173]),
                    "{interp} {w}x{h}"
                );
            }
        }
    }

    #[test]
    fn halving_bilinear_averages_pairs() {
        // At scale 2 the triangle is stretched to support 2; taps outside the image are cut.
        let img = gray(4, 1, |x, _| [0, 100, 200, 40][x as usize]);
        let out = resize(&img, 2, 1, Interpolation::Bilinear).unwrap();
        // Pixel 0: taps 0..3 with weights 3/7, 3/7, 1/7 -> (0*3 + 100*3 + 200) / 7 = 71.43.
        // Pixel 1: taps 1..4 with weights 1/7, 3/7, 3/7 -> (100 + 600 + 120) / 7 = 117.14.
        assert_eq!(out.get_pixel(0, 0).0[0], 71);
        assert_eq!(out.get_pixel(1, 0).0[0], 117);
    }

    #[test]
    fn nearest_picks_centres() {
        let img = gray(6, 1, |x, _| x as u8 * 10);
        let out = resize(&img, 3, 1, Interpolation::Nearest).unwrap();
        let v: Vec<u8> = out.pixels().map(|p| p.0[0]).collect();
        assert_eq!(v, vec![10, 30, 50]);
        let up = resize(&img, 12, 1, Interpolation::Nearest).unwrap();
        let v: Vec<u8> = up.pixels().map(|p| p.0[0]).collect();
        assert_eq!(v, vec![0, 0, 10, 10, 20, 20, 30, 30, 40, 40, 50, 50]);
    }

    #[test]
    fn zero_sizes_are_errors() {
        let img = gray(4, 4, |_, _| 0);
        assert!(resize(&img, 0, 4, Interpolation::Bicubic).is_err());
        assert!(resize(&RgbImage::new(0, 3), 2, 2, Interpolation::Bicubic).is_err());
    }

    #[test]
    fn interpolation_names_round_trip() {
        for i in [
            Interpolation::Bicubic,
            Interpolation::Bilinear,
            Interpolation::Nearest,
        ] {
            assert_eq!(Interpolation::from_name(i.name()), Some(i));
        }
        assert_eq!(
            Interpolation::from_name("BICUBIC"),
            Some(Interpolation::Bicubic)
        );
        assert_eq!(Interpolation::from_name("lanczos"), None);
    }
}
