//! Thumbnail generation (CPU only, run on the blocking pool): choosing a preset size,
//! reading the image's dimensions from its header before decoding, decoding under
//! `image::Limits`, scaling or cropping, and encoding the result.
//!
//! Sizes: like Synapse, a fixed set of presets, each for both methods. A request gets the
//! smallest preset that covers it (the largest if none does), so one piece of media has at
//! most `PRESETS.len() * 2` thumbnails however many sizes clients ask for.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader, Limits, imageops::FilterType};

/// (width, height) presets, smallest first.
pub const PRESETS: [(u32, u32); 5] = [(32, 32), (96, 96), (320, 240), (640, 480), (800, 600)];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Fit inside the box, keeping the aspect ratio (never enlarged).
    Scale,
    /// Fill the box, then cut the centre to exactly its size.
    Crop,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scale => "scale",
            Self::Crop => "crop",
        }
    }
}

/// The preset serving a request for `width` x `height`.
pub fn choose_preset(width: u32, height: u32) -> (u32, u32) {
    PRESETS.iter().copied().find(|&(w, h)| w >= width && h >= height).unwrap_or(PRESETS[PRESETS.len() - 1])
}

#[derive(Debug, PartialEq, Eq)]
pub enum ThumbnailError {
    /// Not an image we decode (or not an image at all).
    Unsupported,
    /// Declared dimensions beyond the limit: not decoded.
    TooLarge { width: u32, height: u32 },
    /// An image format we know, but the data does not decode.
    Undecodable(String),
}

/// A generated thumbnail.
pub struct Thumbnail {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
}

/// Formats we thumbnail; anything else (SVG, video, PDF, ...) is `Unsupported`.
fn supported(format: ImageFormat) -> bool {
    matches!(format, ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP)
}

/// Makes a thumbnail of `source` for the preset `(width, height)`, refusing images of more
/// than `max_pixels` pixels before decoding them.
pub fn generate(
    source: &[u8],
    width: u32,
    height: u32,
    method: Method,
    max_pixels: u64,
) -> Result<Thumbnail, ThumbnailError> {
    let reader =
        ImageReader::new(Cursor::new(source)).with_guessed_format().map_err(|_| ThumbnailError::Unsupported)?;
    let format = reader.format().filter(|f| supported(*f)).ok_or(ThumbnailError::Unsupported)?;
    // The header alone says how big the decoded image would be: refuse a decompression
    // bomb (a small file declaring huge dimensions) before allocating anything for it.
    let (source_width, source_height) =
        reader.into_dimensions().map_err(|e| ThumbnailError::Undecodable(e.to_string()))?;
    if source_width == 0 || source_height == 0 {
        return Err(ThumbnailError::Undecodable("empty image".into()));
    }
    if u64::from(source_width) * u64::from(source_height) > max_pixels {
        return Err(ThumbnailError::TooLarge { width: source_width, height: source_height });
    }
    let mut reader = ImageReader::with_format(Cursor::new(source), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(source_width);
    limits.max_image_height = Some(source_height);
    // RGBA16 of the declared size, plus room for the decoder's own buffers.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 * 1024 * 1024));
    reader.limits(limits);
    let image = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => ThumbnailError::TooLarge { width: source_width, height: source_height },
        other => ThumbnailError::Undecodable(other.to_string()),
    })?;
    let resized = resize(image, width, height, method);
    encode(resized, format)
}

fn resize(image: DynamicImage, width: u32, height: u32, method: Method) -> DynamicImage {
    match method {
        Method::Scale if image.width() <= width && image.height() <= height => image,
        Method::Scale => image.resize(width, height, FilterType::Triangle),
        Method::Crop => image.resize_to_fill(width, height, FilterType::Triangle),
    }
}

/// JPEG sources give JPEG thumbnails (smaller, no alpha to lose); everything else PNG.
fn encode(image: DynamicImage, source_format: ImageFormat) -> Result<Thumbnail, ThumbnailError> {
    let mut out = Cursor::new(Vec::new());
    let content_type = if source_format == ImageFormat::Jpeg {
        DynamicImage::ImageRgb8(image.to_rgb8())
            .write_to(&mut out, ImageFormat::Jpeg)
            .map_err(|e| ThumbnailError::Undecodable(e.to_string()))?;
        "image/jpeg"
    } else {
        image.write_to(&mut out, ImageFormat::Png).map_err(|e| ThumbnailError::Undecodable(e.to_string()))?;
        "image/png"
    };
    Ok(Thumbnail { bytes: out.into_inner(), content_type })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image =
            image::RgbaImage::from_fn(width, height, |x, y| image::Rgba([(x % 256) as u8, (y % 256) as u8, 0, 255]));
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgba8(image).write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn dimensions(bytes: &[u8]) -> (u32, u32) {
        ImageReader::new(Cursor::new(bytes)).with_guessed_format().unwrap().into_dimensions().unwrap()
    }

    #[test]
    fn presets_cover_the_request_or_are_the_largest() {
        assert_eq!(choose_preset(32, 32), (32, 32));
        assert_eq!(choose_preset(50, 20), (96, 96));
        assert_eq!(choose_preset(300, 200), (320, 240));
        assert_eq!(choose_preset(5000, 5000), (800, 600));
    }

    #[test]
    fn scale_fits_inside_and_crop_fills() {
        let source = png(400, 200);
        let scaled = generate(&source, 96, 96, Method::Scale, 1 << 30).unwrap();
        assert_eq!(dimensions(&scaled.bytes), (96, 48));
        let cropped = generate(&source, 96, 96, Method::Crop, 1 << 30).unwrap();
        assert_eq!(dimensions(&cropped.bytes), (96, 96));
        assert_eq!(cropped.content_type, "image/png");
        // Never enlarged when scaling.
        let small = generate(&png(20, 10), 320, 240, Method::Scale, 1 << 30).unwrap();
        assert_eq!(dimensions(&small.bytes), (20, 10));
    }

    #[test]
    fn non_images_and_bombs_are_refused() {
        assert_eq!(generate(b"hello, world", 32, 32, Method::Scale, 1 << 30).err(), Some(ThumbnailError::Unsupported));
        let source = png(400, 200);
        assert_eq!(
            generate(&source, 32, 32, Method::Scale, 1000).err(),
            Some(ThumbnailError::TooLarge { width: 400, height: 200 })
        );
        assert!(matches!(generate(&source[..60], 32, 32, Method::Scale, 1 << 30), Err(ThumbnailError::Undecodable(_))));
    }
}
