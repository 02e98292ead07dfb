//! The evaluation transform of a weight set: resize, center crop, scale to `[0, 1]`, normalise.
//!
//! This reproduces timm's `transforms_imagenet_eval` (timm 1.0, `timm/data/transforms_factory.py`)
//! and torchvision's `ImageClassification` preset on PIL images, in this order:
//!
//! 1. **Resize.** `scale = floor(size / crop_pct)` per side (Python `math.floor(img_size / crop_pct)`).
//!    [`Resize::ShortSide`] (timm's default `crop_mode="center"`) keeps the aspect ratio. For a square
//!    crop it is torchvision's `Resize(int)`: the short side becomes `scale` and the long side
//!    `int(scale * long / short)` (truncated). For a non-square crop it is timm's `ResizeKeepRatio`:
//!    `ratio = min(h / scale_h, w / scale_w)`, sides `round_half_even(side / ratio)`.
//!    [`Resize::Exact`] (timm's `crop_mode="squash"`, Hugging Face image processors) resizes to
//!    `scale_h x scale_w` ignoring the aspect ratio; with `crop_pct = 1` that is a straight resize to
//!    the crop size. The resampling is Pillow's, reproduced exactly by [`super::resize::resize`].
//! 2. **Center crop** to `size` (torchvision `CenterCrop`): offsets
//!    `int(round((h - crop_h) / 2))` with Python's round-half-to-even, so a 257-pixel side cropped to
//!    224 starts at 16, not 17. A side shorter than the crop is first zero-padded, `(crop - h) // 2`
//!    before and the rest after.
//! 3. **To float**: `x / 255` in `f32` (torchvision `ToTensor`).
//! 4. **Normalise**: `(x - mean) / std` in `f32` per channel (torchvision `Normalize`). Inception /
//!    AdvProp / TF-Lite style `[-1, 1]` input is `mean = std = 0.5`.
//!
//! Output tensors are `[3, H, W]` (or `[N, 3, H, W]`), `f32`, RGB, on the CPU.
//!
//! Known difference: for a *non-square* crop with `ShortSide`, timm 1.0.15 resamples bilinearly
//! whatever interpolation the weight set names (it does not pass it to `ResizeKeepRatio`); this crate
//! uses the configured interpolation.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::RgbImage;
use rayon::prelude::*;

use super::image::{load_rgb_with, DecodeOptions};
use super::resize::{resize, Interpolation};
use crate::error::{Error, Result};

/// Largest intermediate (resized, uncropped) image accepted: 2^27 pixels, 384 MiB in RGB. Only an
/// extreme aspect ratio reaches it (a 1 x 100000 strip resized to a 256 short side).
pub const MAX_RESIZED_PIXELS: usize = 1 << 27;

/// How the image is scaled before the center crop (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resize {
    /// Keep the aspect ratio; the short side becomes `floor(size / crop_pct)` (timm, torchvision).
    ShortSide,
    /// Resize both sides to `floor(size / crop_pct)`, ignoring the aspect ratio (timm "squash").
    Exact,
}

/// Where the crop lands for an input of a given size (all in pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Geometry {
    /// Size `(height, width)` of the resized image, before the crop.
    pub resized: (usize, usize),
    /// Top-left corner `(top, left)` of the crop in the resized image; negative where the resized
    /// image is smaller than the crop and zero padding fills the border.
    pub offset: (i64, i64),
}

/// A weight set's evaluation preprocessing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    /// Crop size `(height, width)`: the model's input resolution.
    pub size: (usize, usize),
    /// Fraction of the resized image the crop keeps: the resize target is `floor(size / crop_pct)`.
    pub crop_pct: f64,
    /// Resampling filter (Pillow semantics).
    pub interpolation: Interpolation,
    /// Per-channel mean (RGB), subtracted after scaling to `[0, 1]`.
    pub mean: [f32; 3],
    /// Per-channel standard deviation (RGB).
    pub std: [f32; 3],
    /// Resize mode.
    pub resize: Resize,
    /// Exact resize target for a square crop (torchvision's `resize_size`, e.g. 256 for a 224 crop),
    /// used instead of `floor(size / crop_pct)`, which float rounding can put one pixel off.
    pub resize_size: Option<usize>,
}

impl Preprocess {
    /// ImageNet mean (timm `IMAGENET_DEFAULT_MEAN`).
    pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    /// ImageNet standard deviation (timm `IMAGENET_DEFAULT_STD`).
    pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
    /// Mean for `[-1, 1]` input (timm `IMAGENET_INCEPTION_MEAN`).
    pub const INCEPTION_MEAN: [f32; 3] = [0.5, 0.5, 0.5];
    /// Standard deviation for `[-1, 1]` input (timm `IMAGENET_INCEPTION_STD`).
    pub const INCEPTION_STD: [f32; 3] = [0.5, 0.5, 0.5];

    /// Square crop of `size`, short-side resize, ImageNet mean/std (timm's default eval transform,
    /// e.g. `imagenet(224, 0.875, Interpolation::Bicubic)` for EfficientNet-B0).
    pub fn imagenet(size: usize, crop_pct: f64, interpolation: Interpolation) -> Self {
        Preprocess {
            size: (size, size),
            crop_pct,
            interpolation,
            mean: Self::IMAGENET_MEAN,
            std: Self::IMAGENET_STD,
            resize: Resize::ShortSide,
            resize_size: None,
        }
    }

    /// Like [`Preprocess::imagenet`] with `mean = std = 0.5`: input in `[-1, 1]` (AdvProp, TF-Lite,
    /// Inception-style weights).
    pub fn inception(size: usize, crop_pct: f64, interpolation: Interpolation) -> Self {
        Preprocess {
            mean: Self::INCEPTION_MEAN,
            std: Self::INCEPTION_STD,
            ..Self::imagenet(size, crop_pct, interpolation)
        }
    }

    /// Sets a (possibly non-square) crop size `(height, width)`.
    pub fn with_size(mut self, height: usize, width: usize) -> Self {
        self.size = (height, width);
        self
    }

    /// Sets the resize mode.
    pub fn with_resize(mut self, resize: Resize) -> Self {
        self.resize = resize;
        self
    }

    /// Sets the exact resize target (see [`Preprocess::resize_size`]).
    pub fn with_resize_size(mut self, resize_size: Option<usize>) -> Self {
        self.resize_size = resize_size;
        self
    }

    /// Sets the normalisation.
    pub fn with_mean_std(mut self, mean: [f32; 3], std: [f32; 3]) -> Self {
        self.mean = mean;
        self.std = std;
        self
    }

    /// Checks the sizes, `crop_pct` and `std`; errors with [`Error::InvalidConfig`].
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(format!("preprocess: {m}")));
        if self.size.0 == 0 || self.size.1 == 0 {
            return bad(format!("crop size {:?} has a zero side", self.size));
        }
        if !(self.crop_pct.is_finite() && self.crop_pct > 0.0) {
            return bad(format!("crop_pct {} must be finite and > 0", self.crop_pct));
        }
        let (sh, sw) = self.scale_size();
        if sh == 0 || sw == 0 || sh > 1 << 20 || sw > 1 << 20 {
            return bad(format!("resize target {sh}x{sw} is out of range"));
        }
        if self.std.iter().any(|s| !s.is_finite() || *s == 0.0)
            || self.mean.iter().any(|m| !m.is_finite())
        {
            return bad(format!(
                "mean {:?} / std {:?} must be finite, std non-zero",
                self.mean, self.std
            ));
        }
        Ok(())
    }

    /// The resize target `(floor(h / crop_pct), floor(w / crop_pct))`, or `resize_size` when set.
    pub fn scale_size(&self) -> (usize, usize) {
        if let Some(r) = self.resize_size {
            return (r, r);
        }
        let f = |s: usize| (s as f64 / self.crop_pct).floor() as usize;
        (f(self.size.0), f(self.size.1))
    }

    /// Resized size and crop offset for an input of `height x width` pixels.
    pub fn geometry(&self, height: usize, width: usize) -> Result<Geometry> {
        self.validate()?;
        if height == 0 || width == 0 {
            return Err(Error::InvalidInput(format!(
                "image of {height}x{width} pixels"
            )));
        }
        let (sh, sw) = self.scale_size();
        let resized = match self.resize {
            Resize::Exact => (sh, sw),
            Resize::ShortSide if sh == sw => {
                // torchvision `_compute_resized_output_size`: int(size * long / short). The
                // product is below 2^20 * 2^32 < 2^53, so exact in f64 like Python's integers.
                let (short, long) = (height.min(width), height.max(width));
                let new_long = (sh as f64 * long as f64 / short as f64) as usize;
                if width <= height {
                    (new_long, sh)
                } else {
                    (sh, new_long)
                }
            }
            Resize::ShortSide => {
                // timm `ResizeKeepRatio.get_params` with longest = 0.
                let ratio = (height as f64 / sh as f64).min(width as f64 / sw as f64);
                let side = |s: usize| (s as f64 / ratio).round_ties_even().max(1.0) as usize;
                (side(height), side(width))
            }
        };
        if resized.0.saturating_mul(resized.1) > MAX_RESIZED_PIXELS {
            return Err(Error::InvalidInput(format!(
                "a {height}x{width} image would be resized to {}x{} pixels (limit {MAX_RESIZED_PIXELS})",
                resized.0, resized.1
            )));
        }
        let offset = |resized: usize, crop: usize| -> i64 {
            if crop > resized {
                -(((crop - resized) / 2) as i64)
            } else {
                round_half_even_half(resized - crop)
            }
        };
        Ok(Geometry {
            resized,
            offset: (
                offset(resized.0, self.size.0),
                offset(resized.1, self.size.1),
            ),
        })
    }

    /// Resize and center crop, in 8 bits: the image the model sees before scaling and normalising.
    pub fn resize_crop(&self, img: &RgbImage) -> Result<RgbImage> {
        let geo = self.geometry(img.height() as usize, img.width() as usize)?;
        let resized = resize(img, geo.resized.1, geo.resized.0, self.interpolation)?;
        let (ch, cw) = self.size;
        let (rh, rw) = (geo.resized.0 as i64, geo.resized.1 as i64);
        let (w32, h32) = match (u32::try_from(cw), u32::try_from(ch)) {
            (Ok(w), Ok(h)) => (w, h),
            _ => {
                return Err(Error::InvalidConfig(format!(
                    "crop size {ch}x{cw} is too large"
                )))
            }
        };
        let mut out = RgbImage::new(w32, h32);
        let src = resized.as_raw();
        for (y, row) in out.chunks_exact_mut(cw * 3).enumerate() {
            let sy = y as i64 + geo.offset.0;
            if !(0..rh).contains(&sy) {
                continue;
            }
            // Columns of the crop that fall inside the resized image (the rest stays zero).
            let x0 = (-geo.offset.1).clamp(0, cw as i64) as usize;
            let x1 = (rw - geo.offset.1).clamp(0, cw as i64) as usize;
            if x0 >= x1 {
                continue;
            }
            let sx0 = (x0 as i64 + geo.offset.1) as usize;
            let start = (sy as usize * rw as usize + sx0) * 3;
            row[x0 * 3..x1 * 3].copy_from_slice(&src[start..start + (x1 - x0) * 3]);
        }
        Ok(out)
    }

    /// Scales an already cropped 8-bit image to `[0, 1]` and normalises it: `[3, H, W]` values,
    /// channel-major.
    pub fn normalize_to_vec(&self, img: &RgbImage) -> Vec<f32> {
        let plane = img.width() as usize * img.height() as usize;
        let mut out = vec![0f32; 3 * plane];
        for (i, p) in img.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = (f32::from(p.0[c]) / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        out
    }

    fn apply_to_vec(&self, img: &RgbImage) -> Result<Vec<f32>> {
        Ok(self.normalize_to_vec(&self.resize_crop(img)?))
    }

    /// The full transform of one decoded image: `[3, H, W]` `f32` on the CPU.
    pub fn apply(&self, img: &RgbImage) -> Result<Tensor> {
        let data = self.apply_to_vec(img)?;
        Ok(Tensor::from_vec(
            data,
            (3, self.size.0, self.size.1),
            &Device::Cpu,
        )?)
    }

    /// Loads one file (EXIF orientation applied) and transforms it.
    pub fn apply_path(&self, path: impl AsRef<Path>) -> Result<Tensor> {
        self.apply(&load_rgb_with(path, DecodeOptions::default())?)
    }

    /// Decodes and transforms one file per element of `paths`, in parallel on rayon's global pool
    /// (all cores unless `RAYON_NUM_THREADS` says otherwise). The results keep the input order; a
    /// file that cannot be read or decoded gives its own error.
    pub fn apply_each<P: AsRef<Path> + Sync>(
        &self,
        paths: &[P],
        options: DecodeOptions,
    ) -> Vec<Result<Vec<f32>>> {
        paths
            .par_iter()
            .map(|p| self.apply_to_vec(&load_rgb_with(p, options)?))
            .collect()
    }

    /// Decodes and transforms a batch in parallel: `[N, 3, H, W]` in the order of `paths`. The first
    /// failing file (in input order) is the error; see [`Preprocess::apply_each`] to keep going.
    pub fn apply_batch<P: AsRef<Path> + Sync>(&self, paths: &[P]) -> Result<Tensor> {
        self.validate()?;
        let (h, w) = self.size;
        let mut data = Vec::with_capacity(paths.len() * 3 * h * w);
        for r in self.apply_each(paths, DecodeOptions::default()) {
            data.extend_from_slice(&r?);
        }
        Ok(Tensor::from_vec(
            data,
            (paths.len(), 3, h, w),
            &Device::Cpu,
        )?)
    }
}

/// `int(round(d / 2))` with Python's round-half-to-even, for a non-negative integer `d`.
fn round_half_even_half(d: usize) -> i64 {
    let half = (d / 2) as i64;
    if d % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

impl std::fmt::Display for Preprocess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (h, w) = self.size;
        let (sh, sw) = self.scale_size();
        let scale = if sh == sw {
            format!("{sh}")
        } else {
            format!("{sh}x{sw}")
        };
        match self.resize {
            Resize::ShortSide => write!(f, "resize shorter side to {scale} keeping aspect")?,
            Resize::Exact => write!(f, "resize to {sh}x{sw} ignoring aspect")?,
        }
        write!(
            f,
            " (crop_pct {}), {} (PIL), center crop {h}x{w}, /255, normalize mean {:?} std {:?}",
            self.crop_pct, self.interpolation, self.mean, self.std
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_round_half_even() {
        // int(round(d / 2.0)) in Python for d = 0..8.
        let got: Vec<i64> = (0..9).map(round_half_even_half).collect();
        assert_eq!(got, vec![0, 0, 1, 2, 2, 2, 3, 4, 4]);
    }

    #[test]
    fn timm_geometry() {
        let b0 = Preprocess::imagenet(224, 0.875, Interpolation::Bicubic);
        assert_eq!(b0.scale_size(), (256, 256));
        // 500x375 (w x h) ImageNet val image: short side 375 -> 256, long int(256*500/375) = 341.
        let g = b0.geometry(375, 500).unwrap();
        assert_eq!(g.resized, (256, 341));
        assert_eq!(g.offset, (16, 58)); // (341 - 224) / 2 = 58.5 -> 58
        let b1 = Preprocess::imagenet(240, 0.882, Interpolation::Bicubic);
        assert_eq!(b1.scale_size(), (272, 272)); // floor(272.108...)
        let portrait = b1.geometry(640, 427).unwrap();
        assert_eq!(portrait.resized, (407, 272)); // int(272 * 640 / 427) = int(407.68)
        assert_eq!(portrait.offset, (84, 16)); // (407 - 240) / 2 = 83.5 -> 84
                                               // A crop larger than the image pads: 1.2 crop_pct gives a 186 resize for a 224 crop.
        let pad = Preprocess::imagenet(224, 1.2, Interpolation::Bilinear);
        let g = pad.geometry(100, 100).unwrap();
        assert_eq!(g.resized, (186, 186));
        assert_eq!(g.offset, (-19, -19));
    }

    #[test]
    fn non_square_and_exact_geometry() {
        let p = Preprocess::imagenet(224, 1.0, Interpolation::Bilinear).with_size(160, 128);
        // ratio = min(300/160, 400/128) = 1.875 -> (160, 213.33 -> 213)
        assert_eq!(p.geometry(300, 400).unwrap().resized, (160, 213));
        let e = p.with_resize(Resize::Exact);
        assert_eq!(
            e.geometry(300, 400).unwrap(),
            Geometry {
                resized: (160, 128),
                offset: (0, 0)
            }
        );
    }

    #[test]
    fn padding_crop_keeps_zero_border() {
        let img = RgbImage::from_pixel(10, 10, image::Rgb([9, 9, 9]));
        let p = Preprocess::imagenet(14, 1.0, Interpolation::Nearest).with_size(14, 14);
        let g = p.geometry(10, 10).unwrap();
        assert_eq!(g.offset, (0, 0)); // scale 14: resized to 14, no padding
        let p = Preprocess::imagenet(14, 1.4, Interpolation::Nearest);
        let g = p.geometry(10, 10).unwrap();
        assert_eq!((g.resized, g.offset), ((10, 10), (-2, -2)));
        let out = p.resize_crop(&img).unwrap();
        assert_eq!(out.get_pixel(0, 0).0, [0; 3]);
        assert_eq!(out.get_pixel(1, 13).0, [0; 3]);
        assert_eq!(out.get_pixel(2, 2).0, [9; 3]);
        assert_eq!(out.get_pixel(11, 11).0, [9; 3]);
        assert_eq!(out.get_pixel(12, 11).0, [0; 3]);
    }

    #[test]
    fn normalisation_matches_torchvision_formula() {
        let img = RgbImage::from_fn(2, 1, |x, _| {
            image::Rgb([0, 128, if x == 0 { 255 } else { 1 }])
        });
        let p = Preprocess::inception(2, 1.0, Interpolation::Bicubic).with_size(1, 2);
        let v = p.normalize_to_vec(&img);
        assert_eq!(v.len(), 6);
        assert_eq!(v[0], -1.0);
        assert_eq!(v[2], (128.0f32 / 255.0 - 0.5) / 0.5);
        assert_eq!(v[4], 1.0);
        let t = p.apply(&img).unwrap();
        assert_eq!(t.dims(), &[3, 1, 2]);
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let ok = Preprocess::imagenet(224, 0.875, Interpolation::Bicubic);
        assert!(ok.validate().is_ok());
        for bad in [
            Preprocess {
                crop_pct: 0.0,
                ..ok
            },
            Preprocess {
                crop_pct: f64::NAN,
                ..ok
            },
            Preprocess {
                size: (0, 224),
                ..ok
            },
            Preprocess {
                std: [1.0, 0.0, 1.0],
                ..ok
            },
            Preprocess {
                crop_pct: 1e-9,
                ..ok
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(Error::InvalidConfig(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn extreme_aspect_ratio_is_an_error_not_an_allocation() {
        let p = Preprocess::imagenet(224, 0.875, Interpolation::Bicubic);
        assert!(matches!(
            p.geometry(1, 1_000_000),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(p.geometry(0, 10), Err(Error::InvalidInput(_))));
    }

    #[test]
    fn display_names_everything() {
        let s = Preprocess::imagenet(240, 0.882, Interpolation::Bicubic).to_string();
        for part in ["272", "0.882", "bicubic", "240x240", "0.485", "0.229"] {
            assert!(s.contains(part), "{s}");
        }
    }

    #[test]
    fn empty_batch_is_an_empty_tensor() {
        let p = Preprocess::imagenet(8, 1.0, Interpolation::Bilinear);
        let t = p.apply_batch::<&str>(&[]).unwrap();
        assert_eq!(t.dims(), &[0, 3, 8, 8]);
    }
}
