//! Pictures of any size → 28x28 images in MNIST's convention, the way MNIST itself was made.
//!
//! MNIST's digits were scanned, cropped to the bounding box of the ink, scaled with
//! anti-aliasing so that the larger side is 20 pixels (keeping the aspect ratio), and placed in
//! a 28x28 field so that their centre of mass is at the centre. [`mnist_style`] does the same
//! to a grayscale picture with light ink on a dark background; [`picture_to_mnist`] first
//! decides which is the ink (a picture whose border is mostly light is inverted, so dark
//! strokes on white paper work too). The result then goes through the model's usual padding
//! and normalization ([`crate::data::preprocess`]).
//!
//! The steps, exactly:
//! 1. **Ink.** A pixel is ink when it is at least [`INK_FRACTION`] of the brightest pixel, so
//!    faint noise or anti-aliasing does not widen the box. A picture without ink (all zero)
//!    becomes an all-zero image.
//! 2. **Crop** to the bounding box of the ink.
//! 3. **Scale** (triangle filter, which averages when shrinking) so that the larger side is
//!    [`BOX_SIDE`] = 20 pixels and the other keeps the aspect ratio (at least 1 pixel).
//! 4. **Centre of mass.** The intensity-weighted centre of the scaled box is placed at the
//!    centre of the 28x28 field (14, 14), rounded to whole pixels; the shift is clamped so the
//!    whole box stays inside the field (this only matters for very lopsided shapes).

use image::{DynamicImage, GrayImage, imageops};

use crate::data::IMAGE_SIZE;
use crate::error::{Result, invalid};

/// Side of the box the ink is scaled into (MNIST: 20 pixels in a 28x28 field).
pub const BOX_SIDE: usize = 20;

/// A pixel is ink when it is at least this fraction of the brightest pixel.
pub const INK_FRACTION: f32 = 0.1;

/// A grayscale picture (`width * height` bytes, row-major, light ink on a dark background) →
/// 784 bytes, cropped, scaled and centred as MNIST's digits were (see the module docs).
pub fn mnist_style(pixels: &[u8], width: usize, height: usize) -> Result<Vec<u8>> {
    if width == 0 || height == 0 || pixels.len() != width * height {
        return Err(invalid(
            "mnist_style",
            format!("{} bytes for a {width}x{height} picture", pixels.len()),
        ));
    }
    let max = pixels.iter().copied().max().unwrap_or(0);
    let mut out = vec![0u8; IMAGE_SIZE * IMAGE_SIZE];
    if max == 0 {
        return Ok(out);
    }
    // At least 1, so that black pixels are never ink.
    let threshold = (f32::from(max) * INK_FRACTION).max(1.0);
    let is_ink = |p: u8| f32::from(p) >= threshold;
    let (mut x0, mut y0, mut x1, mut y1) = (width, height, 0, 0);
    for (y, row) in pixels.chunks_exact(width).enumerate() {
        for (x, &p) in row.iter().enumerate() {
            if is_ink(p) {
                x0 = x0.min(x);
                x1 = x1.max(x);
                y0 = y0.min(y);
                y1 = y1.max(y);
            }
        }
    }
    let (cw, ch) = (x1 - x0 + 1, y1 - y0 + 1);
    let crop = GrayImage::from_fn(cw as u32, ch as u32, |x, y| {
        image::Luma([pixels[(y0 + y as usize) * width + x0 + x as usize]])
    });
    let longer = cw.max(ch) as f64;
    let side = |n: usize| ((n as f64 * BOX_SIDE as f64 / longer).round() as u32).clamp(1, 20);
    let (sw, sh) = (side(cw), side(ch));
    let scaled = imageops::resize(&crop, sw, sh, imageops::FilterType::Triangle);

    // Centre of mass of the scaled box, pixel centres at +0.5.
    let (mut mass, mut mx, mut my) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y, p) in scaled.enumerate_pixels() {
        let v = f64::from(p[0]);
        mass += v;
        mx += v * (f64::from(x) + 0.5);
        my += v * (f64::from(y) + 0.5);
    }
    let centre = IMAGE_SIZE as f64 / 2.0;
    let (cx, cy) = if mass > 0.0 {
        (mx / mass, my / mass)
    } else {
        (f64::from(sw) / 2.0, f64::from(sh) / 2.0)
    };
    let place = |com: f64, len: u32| -> usize {
        let max_off = (IMAGE_SIZE - len as usize) as f64;
        (centre - com).round().clamp(0.0, max_off) as usize
    };
    let (ox, oy) = (place(cx, sw), place(cy, sh));
    for (x, y, p) in scaled.enumerate_pixels() {
        out[(oy + y as usize) * IMAGE_SIZE + ox + x as usize] = p[0];
    }
    Ok(out)
}

/// Inverts a grayscale picture in place when its border is mostly light (mean above 127.5),
/// so that the object is light on a dark background as in the training data.
pub fn make_light_on_dark(pixels: &mut [u8], width: usize, height: usize) -> Result<()> {
    if width == 0 || height == 0 || pixels.len() != width * height {
        return Err(invalid(
            "make_light_on_dark",
            format!("{} bytes for a {width}x{height} picture", pixels.len()),
        ));
    }
    let mut sum = 0u64;
    let mut n = 0u64;
    for x in 0..width {
        sum += u64::from(pixels[x]) + u64::from(pixels[(height - 1) * width + x]);
        n += 2;
    }
    for y in 0..height {
        sum += u64::from(pixels[y * width]) + u64::from(pixels[y * width + width - 1]);
        n += 2;
    }
    if sum as f64 / n as f64 > 127.5 {
        pixels.iter_mut().for_each(|p| *p = 255 - *p);
    }
    Ok(())
}

/// A decoded picture → the 784 bytes the model reads.
///
/// The picture is converted to grayscale. A 28x28 picture is used as is (it is taken to be in
/// MNIST's convention already, like the dataset's own images); any other size is made light on
/// dark ([`make_light_on_dark`]) and then cropped, scaled and centred ([`mnist_style`]).
pub fn picture_to_mnist(img: &DynamicImage) -> Result<Vec<u8>> {
    let gray = img.to_luma8();
    let (w, h) = (gray.width() as usize, gray.height() as usize);
    if w == 0 || h == 0 {
        return Err(invalid("picture", "the image is empty (0 pixels)"));
    }
    let mut px = gray.into_raw();
    if (w, h) == (IMAGE_SIZE, IMAGE_SIZE) {
        return Ok(px);
    }
    make_light_on_dark(&mut px, w, h)?;
    mnist_style(&px, w, h)
}

/// Largest width or height of a picture [`decode_picture`] accepts.
pub const MAX_PICTURE_SIDE: u32 = 4096;

/// Decodes PNG or JPEG bytes (format guessed from the content), refusing pictures larger than
/// [`MAX_PICTURE_SIDE`] on a side so that a small file cannot demand a huge allocation.
pub fn decode_picture(bytes: &[u8]) -> Result<DynamicImage> {
    Ok(convkit_data::decode_picture(bytes, MAX_PICTURE_SIDE, 256 * 1024 * 1024)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Bounding box (x0, y0, x1, y1) of the nonzero pixels of a 28x28 image.
    fn bbox(img: &[u8]) -> (usize, usize, usize, usize) {
        let (mut x0, mut y0, mut x1, mut y1) = (28, 28, 0, 0);
        for (i, &p) in img.iter().enumerate() {
            if p > 0 {
                let (x, y) = (i % 28, i / 28);
                x0 = x0.min(x);
                x1 = x1.max(x);
                y0 = y0.min(y);
                y1 = y1.max(y);
            }
        }
        (x0, y0, x1, y1)
    }

    fn centre_of_mass(img: &[u8]) -> (f64, f64) {
        let (mut m, mut sx, mut sy) = (0.0, 0.0, 0.0);
        for (i, &p) in img.iter().enumerate() {
            let v = f64::from(p);
            m += v;
            sx += v * ((i % 28) as f64 + 0.5);
            sy += v * ((i / 28) as f64 + 0.5);
        }
        (sx / m, sy / m)
    }

    /// A `w`x`h` black picture with a white filled rectangle.
    fn rect(w: usize, h: usize, x0: usize, y0: usize, rw: usize, rh: usize) -> Vec<u8> {
        let mut px = vec![0u8; w * h];
        for y in y0..y0 + rh {
            for x in x0..x0 + rw {
                px[y * w + x] = 255;
            }
        }
        px
    }

    #[test]
    fn blank_picture_is_all_zero() {
        assert_eq!(mnist_style(&[0; 280 * 280], 280, 280).unwrap(), vec![0; 784]);
    }

    #[test]
    fn wide_shape_is_20_wide_keeps_aspect_and_is_centred() {
        // 100x50 rectangle in the corner of a 280x280 picture.
        let out = mnist_style(&rect(280, 280, 5, 200, 100, 50), 280, 280).unwrap();
        let (x0, y0, x1, y1) = bbox(&out);
        assert_eq!(x1 - x0 + 1, 20, "larger side is 20");
        assert_eq!(y1 - y0 + 1, 10, "aspect kept");
        let (cx, cy) = centre_of_mass(&out);
        assert!((cx - 14.0).abs() <= 0.5 && (cy - 14.0).abs() <= 0.5, "{cx} {cy}");
        assert!(out.contains(&255));
    }

    #[test]
    fn tall_and_tiny_shapes() {
        let out = mnist_style(&rect(50, 300, 10, 20, 30, 240), 50, 300).unwrap();
        let (x0, y0, x1, y1) = bbox(&out);
        assert_eq!((x1 - x0 + 1, y1 - y0 + 1), (3, 20));
        // A single bright dot is scaled up to fill the 20x20 box and centred.
        let mut dot = vec![0u8; 64 * 64];
        dot[3 * 64 + 60] = 200;
        let out = mnist_style(&dot, 64, 64).unwrap();
        let (x0, y0, x1, y1) = bbox(&out);
        assert_eq!((x0, y0, x1, y1), (4, 4, 23, 23));
    }

    #[test]
    fn centre_of_mass_not_box_centre_decides_the_place() {
        // A "t": a long stem and a heavy cross bar below its middle, so the mass is low and
        // the box sits higher than centred.
        let mut px = rect(200, 200, 20, 20, 20, 160);
        for y in 110..140 {
            for x in 20..180 {
                px[y * 200 + x] = 255;
            }
        }
        let out = mnist_style(&px, 200, 200).unwrap();
        let (cx, cy) = centre_of_mass(&out);
        assert!((cx - 14.0).abs() <= 0.5 && (cy - 14.0).abs() <= 0.5, "{cx} {cy}");
        let (_, y0, _, y1) = bbox(&out);
        assert!((y0 + y1) as f64 / 2.0 < 13.5, "box centre {}", (y0 + y1) as f64 / 2.0);
    }

    #[test]
    fn lopsided_shapes_stay_whole_inside_the_field() {
        // An "L" whose mass is so low that centring it would push its bottom out of the field.
        let mut px = rect(200, 200, 20, 20, 20, 160);
        for y in 150..180 {
            for x in 20..180 {
                px[y * 200 + x] = 255;
            }
        }
        let out = mnist_style(&px, 200, 200).unwrap();
        let (_, y0, _, y1) = bbox(&out);
        assert_eq!(y1 - y0 + 1, 20, "nothing clipped");
        assert!(y1 <= 27);
    }

    #[test]
    fn faint_noise_does_not_widen_the_box() {
        let mut px = rect(100, 100, 40, 40, 20, 20);
        px[0] = 10; // below 10% of 255
        let out = mnist_style(&px, 100, 100).unwrap();
        let (x0, y0, x1, y1) = bbox(&out);
        assert_eq!((x1 - x0 + 1, y1 - y0 + 1), (20, 20));
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert!(mnist_style(&[0; 10], 3, 3).is_err());
        assert!(mnist_style(&[], 0, 0).is_err());
        assert!(make_light_on_dark(&mut [0; 5], 2, 2).is_err());
    }

    #[test]
    fn pictures_are_inverted_when_light_and_28x28_kept() {
        // Dark strokes on white paper become light on dark.
        let mut paper = vec![255u8; 100 * 100];
        for y in 30..70 {
            paper[y * 100 + 50] = 0;
        }
        let img = DynamicImage::ImageLuma8(GrayImage::from_raw(100, 100, paper).unwrap());
        let out = picture_to_mnist(&img).unwrap();
        let (x0, y0, x1, y1) = bbox(&out);
        assert_eq!(y1 - y0 + 1, 20);
        assert!(x1 - x0 < 2);
        // 28x28 is taken as is, even an odd one.
        let raw: Vec<u8> = (0..784).map(|i| (i % 256) as u8).collect();
        let img = DynamicImage::ImageLuma8(GrayImage::from_raw(28, 28, raw.clone()).unwrap());
        assert_eq!(picture_to_mnist(&img).unwrap(), raw);
    }

    #[test]
    fn decoding_rejects_non_images_and_reads_png() {
        let err = decode_picture(b"hello, not an image").unwrap_err().to_string();
        assert!(err.contains("not a PNG or JPEG"), "{err}");
        let err = decode_picture(b"GIF89a....").unwrap_err().to_string();
        assert!(err.contains("looks like Gif"), "{err}");
        let mut png = Vec::new();
        GrayImage::from_pixel(30, 20, image::Luma([7]))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let img = decode_picture(&png).unwrap();
        assert_eq!((img.width(), img.height()), (30, 20));
        let err = decode_picture(&png[..40]).unwrap_err().to_string();
        assert!(err.contains("cannot decode"), "{err}");
    }
}
