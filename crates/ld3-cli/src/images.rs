//! PNG output for image models: samples in [−1, 1] as 8-bit grey or RGB, one file per image
//! or a grid, written atomically.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use ld3_solvers::schedule_file::write_atomic;

/// Whether samples of this shape are images ([C, H, W] with 1 or 3 channels).
pub fn is_image(shape: &[usize]) -> bool {
    shape.len() == 3 && matches!(shape[0], 1 | 3) && shape[1] >= 8 && shape[2] >= 8
}

/// An 8-bit image: `channels` of 1 (grey) or 3 (RGB), rows of `width · channels` bytes.
pub struct Image {
    width: usize,
    height: usize,
    channels: usize,
    pixels: Vec<u8>,
}

impl Image {
    /// A blank (black) image.
    pub fn blank(width: usize, height: usize, channels: usize) -> Self {
        Self {
            width,
            height,
            channels,
            pixels: vec![0; width * height * channels],
        }
    }

    /// Each sample of `x` [B, C, H, W] in [−1, 1] as an image ((x + 1)·127.5, rounded, clamped).
    pub fn from_batch(x: &Tensor) -> Result<Vec<Self>> {
        let (b, c, h, w) = x.dims4().context("images must be [B, C, H, W]")?;
        if !matches!(c, 1 | 3) {
            bail!("images need 1 or 3 channels, got {c}");
        }
        // The one quantisation the FID tools see too (ld3-metrics reads these values).
        let data: Vec<f32> = ld3_metrics::fid_sets::samples_to_u8_values(x)?
            .flatten_all()?
            .to_vec1()?;
        Ok((0..b)
            .map(|i| {
                let sample = &data[i * c * h * w..(i + 1) * c * h * w];
                let mut pixels = vec![0u8; c * h * w];
                for ch in 0..c {
                    for p in 0..h * w {
                        pixels[p * c + ch] = sample[ch * h * w + p] as u8;
                    }
                }
                Self {
                    width: w,
                    height: h,
                    channels: c,
                    pixels,
                }
            })
            .collect())
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Each pixel as a k×k block (nearest-neighbour enlargement, for small images).
    pub fn upscale(&self, k: usize) -> Self {
        let c = self.channels;
        let (w, h) = (self.width * k, self.height * k);
        let mut pixels = vec![0u8; w * h * c];
        for y in 0..h {
            for x in 0..w {
                let from = ((y / k) * self.width + x / k) * c;
                pixels[(y * w + x) * c..(y * w + x + 1) * c]
                    .copy_from_slice(&self.pixels[from..from + c]);
            }
        }
        Self {
            width: w,
            height: h,
            channels: c,
            pixels,
        }
    }

    /// Copies `other` in with its top-left corner at (x, y).
    fn paste(&mut self, other: &Image, x: usize, y: usize) {
        let c = self.channels;
        for row in 0..other.height {
            let from = &other.pixels[row * other.width * c..(row + 1) * other.width * c];
            let start = ((y + row) * self.width + x) * c;
            self.pixels[start..start + from.len()].copy_from_slice(from);
        }
    }

    /// `text` in white on black, each font pixel a `scale`×`scale` block (8×8 glyphs, basic
    /// Latin; other characters as `?`).
    pub fn text(text: &str, scale: usize, channels: usize) -> Self {
        use font8x8::UnicodeFonts;
        let glyphs: Vec<[u8; 8]> = text
            .chars()
            .map(|ch| {
                font8x8::BASIC_FONTS
                    .get(ch)
                    .or_else(|| font8x8::BASIC_FONTS.get('?'))
                    .unwrap_or([0; 8])
            })
            .collect();
        let mut img = Self::blank(glyphs.len() * 8 * scale, 8 * scale, channels);
        for (i, glyph) in glyphs.iter().enumerate() {
            for (gy, bits) in glyph.iter().enumerate() {
                // Bit 0 is the leftmost pixel.
                for gx in (0..8).filter(|gx| bits >> gx & 1 == 1) {
                    for y in gy * scale..(gy + 1) * scale {
                        for x in (i * 8 + gx) * scale..(i * 8 + gx + 1) * scale {
                            let at = (y * img.width + x) * channels;
                            img.pixels[at..at + channels].fill(255);
                        }
                    }
                }
            }
        }
        img
    }

    /// Rows of images laid out in a grid with `gap` pixels between cells ([`Image::grid`]), row
    /// r's label `labels[r]` written to its left.
    pub fn labelled_grid(labels: &[&str], rows: &[Vec<Image>], gap: usize) -> Result<Self> {
        let grid = Self::grid(rows, gap)?;
        let first = rows
            .iter()
            .flatten()
            .next()
            .expect("grid checked for images");
        let (h, c) = (first.height, first.channels);
        // Text about a sixth of a cell high, at least the font's own 8 pixels.
        let scale = (h / 48).max(1);
        let labels: Vec<Image> = labels.iter().map(|l| Self::text(l, scale, c)).collect();
        let label_width = labels.iter().map(|l| l.width).max().unwrap_or(0) + gap;
        let mut out = Self::blank(label_width + grid.width, grid.height, c);
        out.paste(&grid, label_width, 0);
        for (r, label) in labels.iter().enumerate() {
            let y = gap + r * (h + gap) + (h.saturating_sub(label.height)) / 2;
            out.paste(label, gap, y);
        }
        Ok(out)
    }

    /// Rows of images laid out in a grid with `gap` pixels between cells.
    pub fn grid(rows: &[Vec<Image>], gap: usize) -> Result<Self> {
        let Some(first) = rows.iter().flatten().next() else {
            bail!("no images to lay out");
        };
        let (w, h, c) = (first.width, first.height, first.channels);
        let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut grid = Self::blank(gap + cols * (w + gap), gap + rows.len() * (h + gap), c);
        for (r, row) in rows.iter().enumerate() {
            for (k, img) in row.iter().enumerate() {
                grid.paste(img, gap + k * (w + gap), gap + r * (h + gap));
            }
        }
        Ok(grid)
    }

    /// Writes the image as PNG, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.save_with_text(path, &[])
    }

    /// Writes the image as PNG, atomically, with `text` as UTF-8 text chunks (iTXt: keyword,
    /// value), e.g. the prompt and seed of a sample.
    pub fn save_with_text(&self, path: &Path, text: &[(&str, String)]) -> Result<()> {
        let color = if self.channels == 1 {
            png::ColorType::Grayscale
        } else {
            png::ColorType::Rgb
        };
        write_atomic(path, |tmp| {
            let file = std::fs::File::create(tmp).map_err(|source| ld3_solvers::Error::Io {
                path: tmp.display().to_string(),
                cause: source,
            })?;
            let mut enc = png::Encoder::new(
                std::io::BufWriter::new(file),
                self.width as u32,
                self.height as u32,
            );
            enc.set_color(color);
            enc.set_depth(png::BitDepth::Eight);
            let io = |e: png::EncodingError| {
                ld3_solvers::Error::Invalid(format!("{}: {e}", tmp.display()))
            };
            for (key, value) in text {
                enc.add_itxt_chunk(key.to_string(), value.clone())
                    .map_err(io)?;
            }
            let mut writer = enc.write_header().map_err(io)?;
            writer.write_image_data(&self.pixels).map_err(io)?;
            writer.finish().map_err(io)?;
            Ok(())
        })?;
        Ok(())
    }
}

/// How much to enlarge images `height` pixels high so that they can be seen: to about 96
/// pixels, by a whole factor.
pub fn enlargement(height: usize) -> usize {
    96_usize.div_ceil(height.max(1)).max(1)
}

/// Samples as a grid of about √B columns, small ones enlarged ([`enlargement`]).
pub fn sample_grid(x: &Tensor) -> Result<Image> {
    let images = Image::from_batch(x)?;
    let k = images.first().map_or(1, |i| enlargement(i.height));
    let images: Vec<Image> = images.iter().map(|i| i.upscale(k)).collect();
    let cols = (images.len() as f64).sqrt().ceil().max(1.0) as usize;
    let mut rows = Vec::new();
    let mut it = images.into_iter().peekable();
    while it.peek().is_some() {
        rows.push(it.by_ref().take(cols).collect());
    }
    Image::grid(&rows, 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn maps_minus_one_to_black_and_one_to_white_and_lays_out_a_grid() {
        let x = Tensor::new(&[-1f32, 1.0, 0.0, 2.0], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 2, 2))
            .unwrap();
        let img = &Image::from_batch(&x).unwrap()[0];
        assert_eq!(img.pixels, vec![0, 255, 128, 255]);
        let x = Tensor::zeros((5, 3, 32, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
        let g = sample_grid(&x).unwrap();
        // 3 columns and 2 rows of 32x32 enlarged to 96x96, with 2-pixel gaps.
        assert_eq!((g.width, g.height, g.channels), (2 + 3 * 98, 2 + 2 * 98, 3));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.png");
        g.save(&path).unwrap();
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (296, 198));
        assert_eq!(
            (enlargement(16), enlargement(32), enlargement(256)),
            (6, 3, 1)
        );
        assert!(is_image(&[1, 32, 32]) && !is_image(&[1, 4, 4]) && !is_image(&[2, 32, 32]));
    }

    #[test]
    fn labels_are_drawn_left_of_their_rows() {
        let t = Image::text("l1", 1, 1);
        assert_eq!((t.width, t.height), (16, 8));
        // font8x8's 'l': a vertical stroke; '1' too — both light some pixels in every glyph.
        assert!(t.pixels[..8 * 16].contains(&255));
        let cell = || Image::blank(48, 48, 1);
        let rows = vec![vec![cell(), cell()], vec![cell(), cell()]];
        let g = Image::labelled_grid(&["teacher", "ld3"], &rows, 2).unwrap();
        let label_width = 7 * 8 + 2;
        assert_eq!((g.width, g.height), (label_width + 2 + 2 * 50, 2 + 2 * 50));
        // The labels are the only light pixels, all left of the images.
        let lit: Vec<usize> = (0..g.pixels.len())
            .filter(|&i| g.pixels[i] == 255)
            .collect();
        assert!(!lit.is_empty() && lit.iter().all(|&i| i % g.width < label_width));
    }
}
