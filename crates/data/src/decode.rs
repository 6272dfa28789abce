//! Decoding untrusted PNG and JPEG bytes with bounded sizes.

use image::DynamicImage;
use thiserror::Error;

/// Why a picture was refused: the caller attaches its file or request.
#[derive(Debug, Error)]
pub enum PictureError {
    /// The file could not be read.
    #[error("cannot read the image: {0}")]
    Read(#[from] std::io::Error),
    /// The content is not PNG or JPEG; `found` names the format it looks like, if any.
    #[error("not a PNG or JPEG image ({})", match found {
        Some(f) => format!("looks like {f}, which is not supported"),
        None => "unrecognized content".to_owned(),
    })]
    Format {
        /// The format the content looks like.
        found: Option<String>,
    },
    /// The decoder refused the picture: corrupt, truncated, or above the size limits.
    #[error("cannot decode the image: {0}")]
    Decode(#[from] image::ImageError),
}

/// Decodes PNG or JPEG bytes (format guessed from the content), refusing pictures that declare
/// a side above `max_side` or whose decoding needs more than `max_alloc` bytes, before their
/// pixels are decoded, so that a small file cannot demand a huge allocation.
pub fn decode_picture(
    bytes: &[u8],
    max_side: u32,
    max_alloc: u64,
) -> std::result::Result<DynamicImage, PictureError> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format()?;
    match reader.format() {
        Some(image::ImageFormat::Png | image::ImageFormat::Jpeg) => {}
        other => return Err(PictureError::Format { found: other.map(|f| format!("{f:?}")) }),
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    limits.max_alloc = Some(max_alloc);
    reader.limits(limits);
    Ok(reader.decode()?)
}
