//! Training augmentation: random resized crop, horizontal flip and a small rotation, seeded, decoded
//! and transformed in parallel.
//!
//! [`Augment::apply`] follows torchvision's training transforms (`torchvision/transforms/transforms.py`):
//!
//! 1. **`RandomResizedCrop`**: up to 10 tries of an area fraction drawn uniformly from `scale` and
//!    an aspect ratio drawn log-uniformly from `ratio`; the first box that fits is taken at a uniform
//!    position, otherwise the largest centred box whose ratio is clamped into `ratio`. The box is
//!    resized to `size` with Pillow's filter (see [`super::resize`]).
//! 2. **`RandomHorizontalFlip`** with probability `hflip`.
//! 3. **`RandomRotation`** by an angle drawn uniformly from `[-rotation, rotation]` degrees about the
//!    centre, bilinear, corners filled with black (torchvision's defaults, except bilinear instead of
//!    nearest).
//! 4. `x / 255`, then `(x - mean) / std`, like [`super::Preprocess`].
//!
//! Randomness comes from a SplitMix64 stream per image, seeded from `(seed, epoch, index in the
//! list)`, so a batch is the same whatever the number of threads and the order they finish in.
//! [`ImageList::train_batches`] visits the list in a seeded per-epoch shuffle; files that cannot be
//! read or decoded (the Microsoft `PetImages` folders hold a few corrupt JPEGs) are reported in
//! [`Batch::failed`] and left out of the batch.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::RgbImage;
use rayon::prelude::*;

use super::datasets::{Batch, ImageList, SplitMix64};
use super::image::{load_rgb_with, DecodeOptions};
use super::resize::{resize, Interpolation};
use super::transforms::Preprocess;
use crate::error::{Error, Result};

/// A seeded random stream for one image's augmentation.
#[derive(Debug)]
pub struct AugmentRng(SplitMix64);

impl AugmentRng {
    /// The stream of image `index` in epoch `epoch` of a run seeded with `seed`.
    pub fn new(seed: u64, epoch: u64, index: u64) -> Self {
        let mut mix = SplitMix64(seed);
        let a = mix.next() ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut mix = SplitMix64(a);
        let b = mix.next() ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Self(SplitMix64(b))
    }

    /// Uniform in `[0, 1)` (53 random bits).
    pub fn uniform(&mut self) -> f64 {
        (self.0.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in `0..=max`.
    pub fn below_or_eq(&mut self, max: usize) -> usize {
        (self.0.next() % (max as u64 + 1)) as usize
    }
}

/// Training augmentation settings (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augment {
    /// Output `(height, width)`.
    pub size: (usize, usize),
    /// Range of the crop's area as a fraction of the image (torchvision: `(0.08, 1.0)`).
    pub scale: (f64, f64),
    /// Range of the crop's width / height (torchvision: `(3/4, 4/3)`).
    pub ratio: (f64, f64),
    /// Probability of a horizontal flip.
    pub hflip: f64,
    /// Largest rotation in degrees (0 disables it).
    pub rotation: f64,
    /// Filter for the crop's resize.
    pub interpolation: Interpolation,
    /// Per-channel mean (RGB) subtracted after scaling to `[0, 1]`.
    pub mean: [f32; 3],
    /// Per-channel standard deviation (RGB).
    pub std: [f32; 3],
}

impl Augment {
    /// The standard ImageNet-style training augmentation at `size`, with the normalisation and
    /// filter of an evaluation preprocessing: crop scale `(0.08, 1)`, ratio `(3/4, 4/3)`, flip 0.5,
    /// rotation ±10°.
    pub fn for_eval(pre: &Preprocess, size: usize) -> Self {
        Self {
            size: (size, size),
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip: 0.5,
            rotation: 10.0,
            interpolation: pre.interpolation,
            mean: pre.mean,
            std: pre.std,
        }
    }

    /// Sets the crop's area range.
    #[must_use]
    pub fn with_scale(mut self, lo: f64, hi: f64) -> Self {
        self.scale = (lo, hi);
        self
    }

    /// Sets the largest rotation (degrees).
    #[must_use]
    pub fn with_rotation(mut self, degrees: f64) -> Self {
        self.rotation = degrees;
        self
    }

    /// Sets the flip probability.
    #[must_use]
    pub fn with_hflip(mut self, p: f64) -> Self {
        self.hflip = p;
        self
    }

    /// Checks every value ([`Error::InvalidConfig`]).
    pub fn validate(&self) -> Result<()> {
        let (s0, s1) = self.scale;
        let (r0, r1) = self.ratio;
        let ok = self.size.0 > 0
            && self.size.1 > 0
            && self.size.0 <= 1 << 14
            && self.size.1 <= 1 << 14
            && s0 > 0.0
            && s0 <= s1
            && s1 <= 1.0
            && r0 > 0.0
            && r0 <= r1
            && r1.is_finite()
            && (0.0..=1.0).contains(&self.hflip)
            && (0.0..=180.0).contains(&self.rotation)
            && self.std.iter().all(|s| s.is_finite() && *s != 0.0)
            && self.mean.iter().all(|m| m.is_finite());
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidConfig(format!(
                "augmentation {self:?}: sizes must be in 1..=16384, 0 < scale.0 <= scale.1 <= 1, \
                 0 < ratio.0 <= ratio.1, hflip in [0, 1], rotation in [0, 180], std non-zero"
            )))
        }
    }

    /// The crop box `(top, left, height, width)` for an `h` x `w` image (torchvision's
    /// `RandomResizedCrop.get_params`).
    pub fn crop_box(
        &self,
        h: usize,
        w: usize,
        rng: &mut AugmentRng,
    ) -> (usize, usize, usize, usize) {
        let area = (h * w) as f64;
        let (lr0, lr1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * rng.range(self.scale.0, self.scale.1);
            let aspect = rng.range(lr0, lr1).exp();
            let cw = (target * aspect).sqrt().round() as usize;
            let ch = (target / aspect).sqrt().round() as usize;
            if cw > 0 && cw <= w && ch > 0 && ch <= h {
                let top = rng.below_or_eq(h - ch);
                let left = rng.below_or_eq(w - cw);
                return (top, left, ch, cw);
            }
        }
        let in_ratio = w as f64 / h as f64;
        let (ch, cw) = if in_ratio < self.ratio.0 {
            (((w as f64 / self.ratio.0).round() as usize).clamp(1, h), w)
        } else if in_ratio > self.ratio.1 {
            (h, ((h as f64 * self.ratio.1).round() as usize).clamp(1, w))
        } else {
            (h, w)
        };
        ((h - ch) / 2, (w - cw) / 2, ch, cw)
    }

    /// The augmented 8-bit image.
    pub fn apply(&self, img: &RgbImage, rng: &mut AugmentRng) -> Result<RgbImage> {
        let (h, w) = (img.height() as usize, img.width() as usize);
        if h == 0 || w == 0 {
            return Err(Error::InvalidInput("cannot augment an empty image".into()));
        }
        let (top, left, ch, cw) = self.crop_box(h, w, rng);
        let crop = image::imageops::crop_imm(img, left as u32, top as u32, cw as u32, ch as u32)
            .to_image();
        let (oh, ow) = self.size;
        let mut out = resize(&crop, ow, oh, self.interpolation)?;
        if rng.uniform() < self.hflip {
            image::imageops::flip_horizontal_in_place(&mut out);
        }
        if self.rotation > 0.0 {
            let angle = rng.range(-self.rotation, self.rotation);
            out = rotate(&out, angle);
        }
        Ok(out)
    }

    /// Scales to `[0, 1]` and normalises: `[3, H, W]` values, channel-major.
    pub fn normalize_to_vec(&self, img: &RgbImage) -> Vec<f32> {
        let plane = img.width() as usize * img.height() as usize;
        let mut out = vec![0f32; 3 * plane];
        for (i, p) in img.pixels().enumerate() {
            for (c, v) in p.0.iter().enumerate() {
                out[c * plane + i] = (f32::from(*v) / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        out
    }

    /// Decodes `path` and augments it with `rng`: normalised `[3, H, W]` values.
    pub fn apply_path(&self, path: &Path, rng: &mut AugmentRng) -> Result<Vec<f32>> {
        let img = load_rgb_with(path, DecodeOptions::default())?;
        Ok(self.normalize_to_vec(&self.apply(&img, rng)?))
    }
}

/// `img` rotated by `degrees` (counter-clockwise) about its centre, bilinear, black outside.
fn rotate(img: &RgbImage, degrees: f64) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (s, c) = degrees.to_radians().sin_cos();
    let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
    let src = img.as_raw();
    let mut out = RgbImage::new(img.width(), img.height());
    let sample = |x: i64, y: i64, ch: usize| -> f64 {
        if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
            0.0
        } else {
            f64::from(src[(y as usize * w + x as usize) * 3 + ch])
        }
    };
    for (y, row) in out.chunks_exact_mut(w * 3).enumerate() {
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let (dx, dy) = (x as f64 - cx, y as f64 - cy);
            // Inverse map: rotate the output position back into the source.
            let sx = c * dx - s * dy + cx;
            let sy = s * dx + c * dy + cy;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as i64, y0 as i64);
            for (ch, v) in px.iter_mut().enumerate() {
                let top = sample(x0, y0, ch) * (1.0 - fx) + sample(x0 + 1, y0, ch) * fx;
                let bottom = sample(x0, y0 + 1, ch) * (1.0 - fx) + sample(x0 + 1, y0 + 1, ch) * fx;
                *v = (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

impl ImageList {
    /// Training batches of epoch `epoch`: the list in a shuffle seeded by `(seed, epoch)`, each image
    /// augmented by its own seeded stream, decoded and transformed in parallel (rayon's global pool).
    /// The same arguments give the same batches.
    pub fn train_batches(
        &self,
        augment: &Augment,
        batch_size: usize,
        seed: u64,
        epoch: usize,
    ) -> Result<TrainBatches<'_>> {
        augment.validate()?;
        if batch_size == 0 {
            return Err(Error::InvalidInput("batch_size must be at least 1".into()));
        }
        let mut order: Vec<usize> = (0..self.samples.len()).collect();
        let mut rng = AugmentRng::new(seed, epoch as u64, u64::MAX);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below_or_eq(i));
        }
        Ok(TrainBatches {
            list: self,
            augment: *augment,
            batch_size,
            order,
            next: 0,
            seed,
            epoch: epoch as u64,
        })
    }
}

/// Iterator over augmented training batches (see [`ImageList::train_batches`]).
#[derive(Debug)]
pub struct TrainBatches<'a> {
    list: &'a ImageList,
    augment: Augment,
    batch_size: usize,
    order: Vec<usize>,
    next: usize,
    seed: u64,
    epoch: u64,
}

impl TrainBatches<'_> {
    /// Number of batches in the epoch.
    pub fn num_batches(&self) -> usize {
        self.order.len().div_ceil(self.batch_size)
    }
}

impl Iterator for TrainBatches<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        let idx = self.order.get(self.next..)?;
        if idx.is_empty() {
            return None;
        }
        let idx = idx.get(..idx.len().min(self.batch_size))?.to_vec();
        self.next += idx.len();
        let results: Vec<Result<Vec<f32>>> = idx
            .par_iter()
            .map(|&i| {
                let s = self.list.samples.get(i).ok_or_else(|| {
                    Error::InvalidInput(format!("sample {i} is outside the list"))
                })?;
                let mut rng = AugmentRng::new(self.seed, self.epoch, i as u64);
                self.augment.apply_path(&s.path, &mut rng)
            })
            .collect();
        let (h, w) = self.augment.size;
        let mut data = Vec::with_capacity(idx.len() * 3 * h * w);
        let (mut labels, mut paths, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        for (&i, r) in idx.iter().zip(results) {
            let Some(s) = self.list.samples.get(i) else {
                continue;
            };
            match r {
                Ok(v) => {
                    data.extend_from_slice(&v);
                    labels.push(s.label);
                    paths.push(s.path.clone());
                }
                Err(e) => failed.push((s.path.clone(), e)),
            }
        }
        let images = Tensor::from_vec(data, (labels.len(), 3, h, w), &Device::Cpu);
        Some(images.map_err(Error::from).map(|images| Batch {
            images,
            labels,
            paths,
            failed,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 128]))
    }

    #[test]
    fn crop_boxes_fit_and_follow_the_ranges() {
        let a = Augment::for_eval(&Preprocess::imagenet(32, 1.0, Interpolation::Bilinear), 32);
        let mut rng = AugmentRng::new(7, 0, 0);
        for _ in 0..500 {
            let (t, l, h, w) = a.crop_box(60, 90, &mut rng);
            assert!(h > 0 && w > 0 && t + h <= 60 && l + w <= 90);
            let frac = (h * w) as f64 / (60.0 * 90.0);
            assert!(frac <= 1.0 + 1e-9 && frac > 0.05, "{frac}");
        }
        // A 1 x 100 strip never fits a ratio within 4:3: the clamped centre fallback.
        let (t, l, h, w) = a.crop_box(1, 100, &mut rng);
        assert_eq!((t, h), (0, 1));
        assert!(w >= 1 && l + w <= 100);
    }

    #[test]
    fn seeded_and_deterministic() {
        let a = Augment::for_eval(&Preprocess::imagenet(24, 1.0, Interpolation::Bicubic), 24);
        let img = gradient(50, 40);
        let one = a.apply(&img, &mut AugmentRng::new(1, 2, 3)).unwrap();
        let again = a.apply(&img, &mut AugmentRng::new(1, 2, 3)).unwrap();
        let other = a.apply(&img, &mut AugmentRng::new(1, 3, 3)).unwrap();
        assert_eq!(one, again);
        assert_ne!(one, other);
        assert_eq!(one.dimensions(), (24, 24));
    }

    #[test]
    fn rotation_by_zero_is_identity_and_by_90_moves_corners() {
        let img = gradient(9, 9);
        assert_eq!(rotate(&img, 0.0), img);
        let r = rotate(&img, 90.0);
        // Counter-clockwise: the output's top-left comes from the source's top-right.
        assert_eq!(r.get_pixel(0, 0), img.get_pixel(8, 0));
        assert_eq!(r.get_pixel(4, 4), img.get_pixel(4, 4));
    }

    #[test]
    fn invalid_settings_are_errors() {
        let a = Augment::for_eval(&Preprocess::imagenet(24, 1.0, Interpolation::Bicubic), 24);
        assert!(a.validate().is_ok());
        assert!(a.with_scale(0.0, 1.0).validate().is_err());
        assert!(a.with_scale(0.5, 1.5).validate().is_err());
        assert!(a.with_hflip(2.0).validate().is_err());
        assert!(a.with_rotation(-1.0).validate().is_err());
    }
}
