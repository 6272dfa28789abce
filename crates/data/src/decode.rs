//! Decoding untrusted PNG and JPEG bytes with bounded sizes.

use image::DynamicImage;

/// Decodes PNG or JPEG bytes (format guessed from the content), refusing pictures that declare
/// a side above `max_side` or whose decoding needs more than `max_alloc` bytes, before their
/// pixels are decoded, so that a small file cannot demand a huge allocation. The error is the
/// reason, for the caller to attach to its file or request.
pub fn decode_picture(
    bytes: &[u8],
    max_side: u32,
    max_alloc: u64,
) -> std::result::Result<DynamicImage, String> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read the image: {e}"))?;
    match reader.format() {
        Some(image::ImageFormat::Png | image::ImageFormat::Jpeg) => {}
        Some(other) => {
            return Err(format!(
                "not a PNG or JPEG image (looks like {other:?}, which is not supported)"
            ));
        }
        None => return Err("not a PNG or JPEG image (unrecognized content)".to_owned()),
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    limits.max_alloc = Some(max_alloc);
    reader.limits(limits);
    reader.decode().map_err(|e| format!("cannot decode the image: {e}"))
}
