//! Bringing images to one shape: grey to colour and back, and resizing (the shorter side to
//! the size, then a centre crop), done once, in parallel, on the packed bytes.

use image::imageops::FilterType;
use image::{DynamicImage, GrayImage, RgbImage};
use rayon::prelude::*;

use super::{DataOptions, ImageSet};
use crate::error::{Error, Result};

/// Checks a requested channel count and size.
pub fn check_target(channels: usize, size: usize) -> Result<()> {
    if channels != 1 && channels != 3 {
        return Err(Error::invalid(
            "channels",
            format!("{channels}: 1 (grey) or 3 (colour)"),
        ));
    }
    if !(4..=1024).contains(&size) {
        return Err(Error::invalid(
            "image size",
            format!("{size}: 4 to 1024 pixels"),
        ));
    }
    Ok(())
}

/// `set` with the shape `options` asks for (unchanged when it asks for none or has it).
pub fn to_options(set: ImageSet, options: &DataOptions) -> Result<ImageSet> {
    let channels = options.channels.unwrap_or(set.channels);
    let size = match options.image_size {
        Some(size) => size,
        None if set.height == set.width => set.height,
        None if channels == set.channels => return Ok(set),
        None => {
            return Err(Error::invalid(
                "image size",
                format!(
                    "the images are {}x{}: give --image-size to make them square",
                    set.height, set.width
                ),
            ));
        }
    };
    to_shape(&set, [channels, size, size])
}

/// `set` converted to `[channels, size, size]`.
pub fn to_shape(set: &ImageSet, [channels, size, width]: [usize; 3]) -> Result<ImageSet> {
    if size != width {
        return Err(Error::invalid("image shape", "images are made square"));
    }
    if set.shape() == [channels, size, size] {
        return Ok(set.clone());
    }
    check_target(channels, size)?;
    let len = channels * size * size;
    let total = set
        .len()
        .checked_mul(len)
        .filter(|&total| total <= MAX_CONVERTED_BYTES)
        .ok_or_else(|| {
            Error::invalid(
                "image size",
                format!(
                    "{} images of {channels}x{size}x{size} need more than {} GiB \
                     (use --limit or a smaller --image-size)",
                    set.len(),
                    MAX_CONVERTED_BYTES >> 30
                ),
            )
        })?;
    let mut bytes = vec![0u8; total];
    bytes.par_chunks_mut(len).enumerate().for_each(|(i, out)| {
        let image = to_image(set.image(i), set.shape());
        out.copy_from_slice(&from_image(&fit(image, size), channels));
    });
    set.with_pixels(bytes, [channels, size, size])
}

/// The most bytes a converted data set may take in memory.
const MAX_CONVERTED_BYTES: usize = 16 << 30;

/// An image from planar bytes `[c, h, w]` (1 or 3 channels).
pub fn to_image(bytes: &[u8], [c, h, w]: [usize; 3]) -> DynamicImage {
    let (w32, h32) = (w as u32, h as u32);
    if c == 1 {
        DynamicImage::ImageLuma8(GrayImage::from_raw(w32, h32, bytes.to_vec()).expect("sizes"))
    } else {
        let plane = h * w;
        let mut rgb = Vec::with_capacity(3 * plane);
        for p in 0..plane {
            rgb.extend([bytes[p], bytes[plane + p], bytes[2 * plane + p]]);
        }
        DynamicImage::ImageRgb8(RgbImage::from_raw(w32, h32, rgb).expect("sizes"))
    }
}

/// Planar bytes `[channels, h, w]` of an image (grey from colour by luminance, colour from
/// grey by repetition).
pub fn from_image(image: &DynamicImage, channels: usize) -> Vec<u8> {
    if channels == 1 {
        return image.to_luma8().into_raw();
    }
    let rgb = image.to_rgb8();
    let plane = (rgb.width() * rgb.height()) as usize;
    let mut out = vec![0u8; 3 * plane];
    for (p, px) in rgb.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + p] = px.0[c];
        }
    }
    out
}

/// Crops the centre square of `image` (its shorter side), then resizes it to `size x size`
/// (a triangle filter): memory stays within `size²` whatever the image's aspect.
pub fn fit(image: DynamicImage, size: usize) -> DynamicImage {
    let (w, h) = (image.width(), image.height());
    let size = size as u32;
    if (w, h) == (size, size) {
        return image;
    }
    let side = w.min(h).max(1);
    let square = image.crop_imm(
        w.saturating_sub(side) / 2,
        h.saturating_sub(side) / 2,
        side,
        side,
    );
    square.resize_exact(size, size, FilterType::Triangle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planar_round_trip_and_channel_conversion() {
        let bytes: Vec<u8> = (0..3 * 4 * 5).map(|i| (i * 4) as u8).collect();
        let image = to_image(&bytes, [3, 4, 5]);
        assert_eq!((image.width(), image.height()), (5, 4));
        assert_eq!(from_image(&image, 3), bytes);
        let grey = from_image(&image, 1);
        assert_eq!(grey.len(), 20);
        let back = from_image(&to_image(&grey, [1, 4, 5]), 3);
        assert_eq!(&back[..20], &grey[..], "grey to colour repeats the plane");
        assert_eq!(&back[40..], &grey[..]);
    }

    #[test]
    fn fitting_resizes_the_short_side_and_crops_the_centre() {
        // A 8x4 grey image whose left half is black and right half white.
        let bytes: Vec<u8> = (0..32).map(|i| if i % 8 < 4 { 0 } else { 255 }).collect();
        let image = fit(to_image(&bytes, [1, 4, 8]), 2);
        assert_eq!((image.width(), image.height()), (2, 2));
        let px = image.to_luma8().into_raw();
        assert!(px[0] < 128 && px[1] > 128, "{px:?}");
        assert!(matches!(image, DynamicImage::ImageLuma8(_)));
    }
}
