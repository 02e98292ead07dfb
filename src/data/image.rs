//! Decoding image files to 8-bit RGB, the way PIL's `Image.open(f).convert("RGB")` does.
//!
//! Formats: JPEG (baseline and progressive, grayscale, RGB and CMYK/YCCK), PNG (any bit depth,
//! palette, alpha), WebP (lossy and lossless), GIF (first frame) and BMP, decoded by the
//! [`image`](https://docs.rs/image) crate. The format is detected from the file's bytes, not its
//! extension.
//!
//! Conversion to RGB (reference: Pillow `src/libImaging/Convert.c`, `PngImagePlugin.py`):
//! - grayscale is replicated to the three channels;
//! - **alpha is dropped, not composited**: a transparent pixel keeps the colour stored under it,
//!   exactly as `convert("RGB")` does (timm and torchvision loaders call it). Compositing on black or
//!   white would change the pixels the model sees relative to the reference pipelines;
//! - 16-bit samples keep their high byte (PIL's `RGB;16B` unpacking). PIL itself clips 16-bit
//!   *grayscale* (`I;16`) to 255 instead of scaling it, which turns most of such an image white; this
//!   crate scales grayscale like colour (high byte) and accepts that deliberate difference;
//! - CMYK JPEGs become RGB as `R = (255 - C)(255 - K) / 255`, etc. (within 1 level of PIL on the
//!   test fixture). JPEG decoding itself (zune-jpeg) differs from libjpeg-turbo by a few levels on
//!   some pixels (different IDCT and chroma upsampling rounding).
//!
//! EXIF orientation (JPEG `APP1`, PNG `eXIf`, WebP `EXIF`) is applied by default
//! ([`DecodeOptions::apply_orientation`]), so a photo taken in portrait is upright. timm's and
//! torchvision's dataset loaders do **not** apply it: on an image whose tag rotates or flips it, they
//! feed the model the stored (unrotated) pixels. Turn the option off to reproduce those loaders bit
//! for bit. A malformed EXIF block is ignored (no rotation), not an error: the pixels are still valid.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::error::{Error, Result};

/// How [`decode_rgb`] and [`load_rgb_with`] treat metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecodeOptions {
    /// Rotate/flip the image as its EXIF orientation tag says (default `true`).
    pub apply_orientation: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            apply_orientation: true,
        }
    }
}

/// Reads and decodes an image file to RGB, applying its EXIF orientation.
///
/// Errors: [`Error::Io`] if the file cannot be read, [`Error::Format`] (naming the file) if it is
/// not a supported or valid image.
pub fn load_rgb(path: impl AsRef<Path>) -> Result<RgbImage> {
    load_rgb_with(path, DecodeOptions::default())
}

/// [`load_rgb`] with explicit [`DecodeOptions`].
pub fn load_rgb_with(path: impl AsRef<Path>, options: DecodeOptions) -> Result<RgbImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_rgb(&bytes, &path.display().to_string(), options)
}

/// Decodes an in-memory image to RGB. `name` is used in error messages (a file name or URL).
pub fn decode_rgb(bytes: &[u8], name: &str, options: DecodeOptions) -> Result<RgbImage> {
    let fail = |what: &str, e: &dyn std::fmt::Display| Error::format(name, format!("{what}: {e}"));
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| fail("cannot read image", &e))?;
    if reader.format().is_none() {
        return Err(Error::format(
            name,
            "not a recognised image (expected JPEG, PNG, WebP, GIF or BMP)",
        ));
    }
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| fail("cannot decode image", &e))?;
    let orientation = if options.apply_orientation {
        decoder.orientation().ok()
    } else {
        None
    };
    let mut img =
        DynamicImage::from_decoder(decoder).map_err(|e| fail("cannot decode image", &e))?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    if img.width() == 0 || img.height() == 0 {
        return Err(Error::format(name, "image has zero width or height"));
    }
    Ok(to_rgb8(img))
}

fn map_pixels<const N: usize, T: Copy>(
    data: &[T],
    w: u32,
    h: u32,
    f: impl Fn(&[T]) -> [u8; 3],
) -> RgbImage {
    let raw: Vec<u8> = data.chunks_exact(N).flat_map(f).collect();
    // The buffer has exactly w * h pixels because it comes from an image of that size.
    RgbImage::from_raw(w, h, raw).unwrap_or_else(|| RgbImage::new(w, h))
}

/// Converts any decoded image to 8-bit RGB with PIL's rules (see the module docs).
pub fn to_rgb8(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let hi = |v: u16| (v >> 8) as u8;
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageLuma8(g) => map_pixels::<1, u8>(g.as_raw(), w, h, |p| [p[0]; 3]),
        DynamicImage::ImageLumaA8(g) => map_pixels::<2, u8>(g.as_raw(), w, h, |p| [p[0]; 3]),
        DynamicImage::ImageRgba8(c) => {
            map_pixels::<4, u8>(c.as_raw(), w, h, |p| [p[0], p[1], p[2]])
        }
        DynamicImage::ImageLuma16(g) => map_pixels::<1, u16>(g.as_raw(), w, h, |p| [hi(p[0]); 3]),
        DynamicImage::ImageLumaA16(g) => map_pixels::<2, u16>(g.as_raw(), w, h, |p| [hi(p[0]); 3]),
        DynamicImage::ImageRgb16(c) => {
            map_pixels::<3, u16>(c.as_raw(), w, h, |p| [hi(p[0]), hi(p[1]), hi(p[2])])
        }
        DynamicImage::ImageRgba16(c) => {
            map_pixels::<4, u16>(c.as_raw(), w, h, |p| [hi(p[0]), hi(p[1]), hi(p[2])])
        }
        // Float images do not come out of the enabled codecs; the image crate clamps them.
        other => other.to_rgb8(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, ImageFormat, Luma, LumaA, Rgba};

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn alpha_is_dropped_not_composited() {
        let rgba = ImageBuffer::from_fn(2, 1, |x, _| {
            Rgba([200, 100, 50, if x == 0 { 0 } else { 128 }])
        });
        let png = encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::Png);
        let rgb = decode_rgb(&png, "a.png", DecodeOptions::default()).unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [200, 100, 50]);
        assert_eq!(rgb.get_pixel(1, 0).0, [200, 100, 50]);
    }

    #[test]
    fn gray_and_16_bit_conversions() {
        let g = ImageBuffer::from_fn(3, 1, |x, _| Luma([[0u16, 0x12ff, 0xffff][x as usize]]));
        let png = encode(&DynamicImage::ImageLuma16(g), ImageFormat::Png);
        let rgb = decode_rgb(&png, "g16.png", DecodeOptions::default()).unwrap();
        let v: Vec<[u8; 3]> = rgb.pixels().map(|p| p.0).collect();
        assert_eq!(v, vec![[0; 3], [0x12; 3], [0xff; 3]]);
        let la = ImageBuffer::from_fn(1, 1, |_, _| LumaA([77u8, 3]));
        let png = encode(&DynamicImage::ImageLumaA8(la), ImageFormat::Png);
        let rgb = decode_rgb(&png, "la.png", DecodeOptions::default()).unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [77; 3]);
    }

    #[test]
    fn garbage_and_truncated_files_are_format_errors() {
        let err = decode_rgb(
            b"definitely not an image",
            "x.jpg",
            DecodeOptions::default(),
        );
        assert!(
            matches!(err, Err(Error::Format { ref file, .. }) if file == "x.jpg"),
            "{err:?}"
        );
        let png = encode(
            &DynamicImage::ImageRgb8(RgbImage::from_fn(64, 64, |x, y| {
                image::Rgb([x as u8, y as u8, (x ^ y) as u8])
            })),
            ImageFormat::Png,
        );
        for cut in [8, 40, png.len() / 2, png.len() - 13] {
            let err = decode_rgb(&png[..cut], "cut.png", DecodeOptions::default());
            assert!(
                matches!(err, Err(Error::Format { .. })),
                "cut at {cut}: {err:?}"
            );
        }
        assert!(matches!(
            decode_rgb(&[], "empty.png", DecodeOptions::default()),
            Err(Error::Format { .. })
        ));
    }

    #[test]
    fn missing_file_is_io_error_with_path() {
        let err = load_rgb("/nonexistent/dir/img.jpg");
        assert!(
            matches!(err, Err(Error::Io { ref path, .. }) if path.ends_with("img.jpg")),
            "{err:?}"
        );
    }
}
