//! Image files as the metric tools read them: PNG (exact) and JPEG (jpeg-decoder: within a few
//! levels of PIL's libjpeg-turbo) decoded to 8-bit grey or RGB (alpha dropped, palettes expanded —
//! PIL's `convert("RGB")`), and folders of them checked to be one size and one colour kind before
//! anything is computed.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use ld3_solvers::{Error, Result};

/// An 8-bit image, rows of `width · channels` bytes (1 = grey, 3 = RGB).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageU8 {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// Row-major, interleaved channels.
    pub pixels: Vec<u8>,
}

fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{}: {what}", path.display()))
}

/// Whether `path` has an image extension this module reads (`.png`, `.jpg`, `.jpeg`).
pub fn is_image_file(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}

/// Decodes a PNG or JPEG file.
pub fn read_image(path: &Path) -> Result<ImageU8> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        cause: source,
    })?;
    if bytes.starts_with(b"\x89PNG") {
        decode_png(path, &bytes)
    } else if bytes.starts_with(&[0xFF, 0xD8]) {
        decode_jpeg(path, &bytes)
    } else {
        Err(bad(path, "neither a PNG nor a JPEG file"))
    }
}

fn decode_png(path: &Path, bytes: &[u8]) -> Result<ImageU8> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .map_err(|e| bad(path, format!("unreadable PNG ({e})")))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| bad(path, "PNG too large"))?;
    let mut buf = vec![0; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| bad(path, format!("unreadable PNG ({e})")))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let stride = info.line_size;
    let src_channels = info.color_type.samples();
    let channels = if src_channels <= 2 { 1 } else { 3 };
    let mut pixels = Vec::with_capacity(w * h * channels);
    for row in buf.chunks(stride).take(h) {
        for px in row[..w * src_channels].chunks(src_channels) {
            pixels.extend_from_slice(&px[..channels]);
        }
    }
    Ok(ImageU8 {
        width: w,
        height: h,
        channels,
        pixels,
    })
}

fn decode_jpeg(path: &Path, bytes: &[u8]) -> Result<ImageU8> {
    use jpeg_decoder::PixelFormat;
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    let pixels = decoder
        .decode()
        .map_err(|e| bad(path, format!("unreadable JPEG ({e})")))?;
    let info = decoder
        .info()
        .ok_or_else(|| bad(path, "JPEG without a header"))?;
    let channels = match info.pixel_format {
        PixelFormat::L8 => 1,
        PixelFormat::RGB24 => 3,
        other => {
            return Err(bad(
                path,
                format!("{other:?} JPEGs are not supported: convert it to 8-bit RGB or grey"),
            ))
        }
    };
    Ok(ImageU8 {
        width: info.width as usize,
        height: info.height as usize,
        channels,
        pixels,
    })
}

impl ImageU8 {
    /// [3, H, W] f32 with the 0..255 values (grey repeated to RGB, as PIL's `convert("RGB")`).
    pub fn to_rgb_tensor(&self) -> Result<Tensor> {
        let t = Tensor::from_vec(
            self.pixels.clone(),
            (self.height, self.width, self.channels),
            &Device::Cpu,
        )?
        .permute((2, 0, 1))?
        .to_dtype(candle_core::DType::F32)?;
        Ok(if self.channels == 1 {
            t.repeat((3, 1, 1))?
        } else {
            t
        })
    }
}

/// The image files of a folder (not recursive), sorted by name; an error if there is none.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.display().to_string(),
        cause: source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_image_file(p))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(bad(dir, "holds no PNG or JPEG image"));
    }
    Ok(files)
}

/// What every image of a set shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
}

/// Checks that `image` (read from `path`) matches the set's `first` image (`first_path`): one
/// size and one colour kind per set, as a model's samples are.
pub fn check_same(first: (&Path, Shape), path: &Path, image: &ImageU8) -> Result<()> {
    let (first_path, s) = first;
    if (image.width, image.height) != (s.width, s.height) {
        return Err(bad(
            path,
            format!(
                "is {}x{} but {} is {}x{}: a set's images must share one size (resize them \
                 first, or split the folder)",
                image.width,
                image.height,
                first_path.display(),
                s.width,
                s.height
            ),
        ));
    }
    if image.channels != s.channels {
        let kind = |c| if c == 1 { "greyscale" } else { "RGB" };
        return Err(bad(
            path,
            format!(
                "is {} but {} is {}: a set must be all greyscale or all RGB",
                kind(image.channels),
                first_path.display(),
                kind(s.channels)
            ),
        ));
    }
    Ok(())
}

impl ImageU8 {
    /// Its size and colour kind.
    pub fn shape(&self) -> Shape {
        Shape {
            width: self.width,
            height: self.height,
            channels: self.channels,
        }
    }
}
