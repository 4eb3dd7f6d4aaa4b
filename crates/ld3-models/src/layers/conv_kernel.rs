//! The CPU convolution kernels of the frozen-weight [`Conv2d`](super::Conv2d), in NCHW, by
//! im2col and matrix products:
//!
//! - forward: `y = W·cols(x) + b`, with `W` the weight read as a `[c_out, c_in·k_h·k_w]` matrix
//!   (its own memory: no copy) and `cols(x)` the `[c_in·k_h·k_w, pixels]` patch matrix;
//! - input gradient at stride 1: a convolution of `∂y` with the weight flipped in space and its
//!   channel axes exchanged (the forward kernel again: gathers, no scattered additions);
//! - input gradient when strided: `∂x = col2im(Wᵀ·∂y)`, the adjoint of each forward step.
//!
//! Threads (candle's pool, [`super::parallel`]): a batch of at least as many images as threads is
//! shared out by image groups, one group per task with its own patch matrix kept under
//! [`CACHED_PATCH`] elements — it stays in that core's cache — and single-threaded products
//! written in place (narrow images, under [`NARROW`] pixels, grouped into one product, then added
//! to their places). Smaller batches are cut into tiles whose patch matrix stays under
//! [`TILE_ELEMENTS`] (several whole images, or a band of output rows when one image alone is too
//! large: a 512² VAE layer would otherwise need a gigabyte); the patch matrix is built in
//! parallel and each product's output channels are shared out in blocks. A pointwise convolution
//! (1×1, stride 1, no padding) needs no patch matrix: its input is read in place. Patch matrices
//! and products live in per-thread scratch buffers reused between calls.

use candle_core::Result;

use super::matmul::{product, Element, Strided};
use super::parallel::{self, chunks, for_each_chunk};

/// The most elements one tile's patch matrix holds (16 MB in f32), unless a single output row
/// needs more.
const TILE_ELEMENTS: usize = 1 << 22;

/// Shapes and hyper-parameters of one convolution (groups 1, the same padding on every side).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub k_h: usize,
    pub k_w: usize,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
}

impl Geometry {
    /// The geometry of `x` [b, c_in, h, w] convolved with `w` [c_out, c_in, k_h, k_w]; an error
    /// names what does not fit.
    pub fn new(
        x: &[usize],
        w: &[usize],
        padding: usize,
        stride: usize,
        dilation: usize,
    ) -> Result<Self> {
        let (&[batch, c_in, h, wd], &[c_out, w_c_in, k_h, k_w]) = (x, w) else {
            candle_core::bail!("conv2d: the input {x:?} and weight {w:?} must both have rank 4");
        };
        if c_in != w_c_in {
            candle_core::bail!(
                "conv2d: the input has {c_in} channels but the weight {w:?} expects {w_c_in}"
            );
        }
        if stride == 0 || dilation == 0 {
            candle_core::bail!("conv2d: stride {stride} and dilation {dilation} must be positive");
        }
        if [c_in, h, wd, c_out, k_h, k_w].contains(&0) {
            candle_core::bail!(
                "conv2d: an empty input {x:?} or weight {w:?} (only the batch may be 0)"
            );
        }
        let g = Self {
            batch,
            c_in,
            h,
            w: wd,
            c_out,
            k_h,
            k_w,
            stride,
            padding,
            dilation,
        };
        if h + 2 * padding < g.span(k_h) || wd + 2 * padding < g.span(k_w) {
            candle_core::bail!(
                "conv2d: a {k_h}×{k_w} kernel (dilation {dilation}) does not fit the {h}×{wd} \
                 input padded by {padding}"
            );
        }
        Ok(g)
    }

    fn span(&self, k: usize) -> usize {
        self.dilation * (k - 1) + 1
    }
    pub fn h_out(&self) -> usize {
        (self.h + 2 * self.padding - self.span(self.k_h)) / self.stride + 1
    }
    pub fn w_out(&self) -> usize {
        (self.w + 2 * self.padding - self.span(self.k_w)) / self.stride + 1
    }
    /// Rows of the patch matrix (columns of the weight matrix).
    fn patch(&self) -> usize {
        self.c_in * self.k_h * self.k_w
    }
    fn pixels_in(&self) -> usize {
        self.h * self.w
    }
    fn pixels_out(&self) -> usize {
        self.h_out() * self.w_out()
    }
    fn pointwise(&self) -> bool {
        self.k_h == 1 && self.k_w == 1 && self.stride == 1 && self.padding == 0
    }
    pub fn input_len(&self) -> usize {
        self.batch * self.c_in * self.pixels_in()
    }
    pub fn output_len(&self) -> usize {
        self.batch * self.c_out * self.pixels_out()
    }

    /// The tiles of the whole batch: whole images `b0..b0 + images` (rows `0..h_out`), or one
    /// image's output rows `rows`.
    fn tiles(&self, tile_elements: usize) -> Vec<Tile> {
        self.tiles_of(0, self.batch, tile_elements)
    }

    /// The tiles of the images `first..first + count`.
    fn tiles_of(&self, first: usize, count: usize, tile_elements: usize) -> Vec<Tile> {
        let (h_out, w_out) = (self.h_out(), self.w_out());
        // Per output pixel a tile holds a patch column and, for narrow images, a product column.
        let budget = (tile_elements / self.patch().max(self.c_out).max(1)).max(w_out);
        let per_image = h_out * w_out;
        let end = first + count;
        let mut tiles = Vec::new();
        if per_image <= budget {
            let most = (budget / per_image.max(1)).clamp(1, count.max(1));
            // As many tiles as needed, of even size (8 images by 7 at most: 4 + 4, not 7 + 1).
            let images = count.div_ceil(count.div_ceil(most)).max(1);
            let mut b0 = first;
            while b0 < end {
                let n = images.min(end - b0);
                tiles.push(Tile {
                    b0,
                    images: n,
                    rows: 0..h_out,
                });
                b0 += n;
            }
        } else {
            let band = (budget / w_out).max(1);
            for b0 in first..end {
                let mut r0 = 0;
                while r0 < h_out {
                    let r1 = (r0 + band).min(h_out);
                    tiles.push(Tile {
                        b0,
                        images: 1,
                        rows: r0..r1,
                    });
                    r0 = r1;
                }
            }
        }
        tiles
    }
}

/// A set of output pixels: the rows `rows` of the images `b0..b0 + images` (several images only
/// with all rows).
#[derive(Clone, Debug)]
struct Tile {
    b0: usize,
    images: usize,
    rows: std::ops::Range<usize>,
}

impl Tile {
    /// Output pixels per image in this tile.
    fn pixels(&self, w_out: usize) -> usize {
        self.rows.len() * w_out
    }
}

/// For kernel column `kj`: the output columns whose input column lies inside the image, and the
/// input column of the first one (stride and dilation apart).
fn valid_columns(g: &Geometry, kj: usize) -> (std::ops::Range<usize>, usize) {
    let offset = kj * g.dilation; // input column = ow·stride + offset − padding
    let first = g.padding.saturating_sub(offset).div_ceil(g.stride);
    let last = if g.w + g.padding > offset {
        ((g.w + g.padding - offset - 1) / g.stride + 1).min(g.w_out())
    } else {
        0
    };
    if first >= last {
        // The whole kernel column lies in the padding.
        return (0..0, 0);
    }
    (first..last, first * g.stride + offset - g.padding)
}

/// The input row of output row `oh` under kernel row `ki`, if inside the image.
fn input_row(g: &Geometry, oh: usize, ki: usize) -> Option<usize> {
    (oh * g.stride + ki * g.dilation)
        .checked_sub(g.padding)
        .filter(|&ih| ih < g.h)
}

/// The tile's patch matrix: row `(c, ki, kj)`, column `i·pixels + (oh − rows.start)·w_out + ow`.
fn im2col<T: Element>(g: &Geometry, x: &[T], tile: &Tile, cols: &mut [T], parallel: bool) {
    let w_out = g.w_out();
    let pixels = tile.pixels(w_out);
    let kk = g.k_h * g.k_w;
    chunks(
        &mut cols[..g.patch() * tile.images * pixels],
        tile.images * pixels,
        parallel,
        |(r, row)| {
            let (c, ki, kj) = (r / kk, (r % kk) / g.k_w, r % g.k_w);
            let (valid, iw0) = valid_columns(g, kj);
            for i in 0..tile.images {
                let plane = &x[((tile.b0 + i) * g.c_in + c) * g.pixels_in()..][..g.pixels_in()];
                if g.stride == 1 && w_out == g.w {
                    let out = &mut row[i * pixels..][..pixels];
                    shifted_rows(g, plane, tile.rows.clone(), (ki, kj), &valid, out);
                    continue;
                }
                for (j, oh) in tile.rows.clone().enumerate() {
                    let out = &mut row[i * pixels + j * w_out..][..w_out];
                    let Some(ih) = input_row(g, oh, ki) else {
                        out.fill(T::ZERO);
                        continue;
                    };
                    let line = &plane[ih * g.w..][..g.w];
                    out[..valid.start].fill(T::ZERO);
                    out[valid.end..].fill(T::ZERO);
                    if g.stride == 1 {
                        out[valid.clone()].copy_from_slice(&line[iw0..iw0 + valid.len()]);
                    } else {
                        for (n, o) in out[valid.clone()].iter_mut().enumerate() {
                            *o = line[iw0 + n * g.stride];
                        }
                    }
                }
            }
        },
    );
}

/// One patch-matrix row of one image for a stride-1 convolution that keeps the width: output
/// rows `rows` of the plane shifted by the kernel offset `(ki, kj)`. Consecutive output rows read
/// consecutive input rows, so the rows inside the image are one copy; the columns that wrapped
/// round a row's edge (outside `valid`) and the rows outside the image are then zeroed.
fn shifted_rows<T: Element>(
    g: &Geometry,
    plane: &[T],
    rows: std::ops::Range<usize>,
    (ki, kj): (usize, usize),
    valid: &std::ops::Range<usize>,
    out: &mut [T],
) {
    let w = g.w;
    // Output row oh reads input row oh + ki·dilation − padding.
    let down = ki * g.dilation;
    let first = rows.start.max(g.padding.saturating_sub(down));
    let last = rows.end.min((g.h + g.padding).saturating_sub(down));
    if valid.is_empty() || first >= last {
        out.fill(T::ZERO);
        return;
    }
    let (a, b) = ((first - rows.start) * w, (last - rows.start) * w);
    out[..a].fill(T::ZERO);
    out[b..].fill(T::ZERO);
    // The block's first element reads plane[(first + down − padding)·w + kj·dilation − padding],
    // which may lie up to `padding` before the plane or after it: those elements are in the
    // wrapped columns, zeroed below.
    let start = ((first + down - g.padding) * w + kj * g.dilation) as isize - g.padding as isize;
    let skip = (-start).max(0) as usize;
    let src_start = start.max(0) as usize;
    let len = (b - a)
        .saturating_sub(skip)
        .min(plane.len().saturating_sub(src_start));
    if len > 0 {
        out[a + skip..][..len].copy_from_slice(&plane[src_start..][..len]);
    }
    // Column by column down the lines (a column or two: a fill per line is a call per line).
    let lines = &mut out[a..b];
    for c in (0..valid.start).chain(valid.end..w) {
        for v in lines.iter_mut().skip(c).step_by(w) {
            *v = T::ZERO;
        }
    }
}

/// Adds the tile's patch-matrix gradient into `dx` (the adjoint of [`im2col`]).
fn col2im_add<T: Element>(g: &Geometry, cols: &[T], tile: &Tile, dx: &mut [T]) {
    let w_out = g.w_out();
    let pixels = tile.pixels(w_out);
    let kk = g.k_h * g.k_w;
    let images =
        &mut dx[tile.b0 * g.c_in * g.pixels_in()..][..tile.images * g.c_in * g.pixels_in()];
    for_each_chunk(images, g.pixels_in(), |(plane_index, plane)| {
        let (i, c) = (plane_index / g.c_in, plane_index % g.c_in);
        for r in c * kk..(c + 1) * kk {
            let (ki, kj) = ((r % kk) / g.k_w, r % g.k_w);
            let (valid, iw0) = valid_columns(g, kj);
            let row = &cols[r * tile.images * pixels + i * pixels..][..pixels];
            for (j, oh) in tile.rows.clone().enumerate() {
                let Some(ih) = input_row(g, oh, ki) else {
                    continue;
                };
                let src = &row[j * w_out..][..w_out];
                let line = &mut plane[ih * g.w..][..g.w];
                for (n, &v) in src[valid.clone()].iter().enumerate() {
                    line[iw0 + n * g.stride] += v;
                }
            }
        }
    });
}

/// What a convolution's output holds before the products are added to it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Start<'a, T> {
    /// A value per output plane (`batch·c_out` of them, image by image), or per channel (`c_out`).
    pub bias: Option<&'a [T]>,
    /// An output-shaped addend (a residual branch).
    pub residual: Option<&'a [T]>,
}

impl<T> Start<'_, T> {
    /// An output that starts at zero.
    pub const ZERO: Self = Start {
        bias: None,
        residual: None,
    };

    fn is_zero(&self) -> bool {
        self.bias.is_none() && self.residual.is_none()
    }
}

/// `start + conv2d(x, weight)` in NCHW; `x`, `weight` and `start`'s slices contiguous, of the
/// lengths the geometry gives (the caller checks them).
pub(crate) fn forward<T: Element>(g: &Geometry, x: &[T], weight: &[T], start: Start<T>) -> Vec<T> {
    forward_tiled(g, x, weight, start, TILE_ELEMENTS, FRESH_PAGES_BYTES)
}

fn forward_tiled<T: Element>(
    g: &Geometry,
    x: &[T],
    weight: &[T],
    start: Start<T>,
    tile_elements: usize,
    fresh_pages_bytes: usize,
) -> Vec<T> {
    let pixels_out = g.pixels_out();
    // The output starts as the residual, or the bias planes, or zeros. Below glibc's largest
    // mmap threshold a zeroed allocation is a pass of its own (heap memory is reused), so the
    // bias planes are written directly; above it, zeroed memory is fresh pages at no cost and
    // the bias is filled in below, by the threads that then work on each part.
    let bias_direct = g.output_len() * size_of::<T>() < fresh_pages_bytes;
    let mut y = match (start.residual, start.bias) {
        (Some(r), _) => r.to_vec(),
        (None, Some(bias)) if bias_direct => {
            let mut y = Vec::with_capacity(g.output_len());
            for plane in 0..g.batch * g.c_out {
                y.extend(std::iter::repeat_n(bias[plane % bias.len()], pixels_out));
            }
            y
        }
        (None, _) => vec![T::ZERO; g.output_len()],
    };
    if g.batch == 0 || pixels_out == 0 {
        return y;
    }
    let accumulate = !start.is_zero();
    // The bias is in already if written directly.
    let start = Start {
        bias: start
            .bias
            .filter(|_| start.residual.is_some() || !bias_direct),
        ..start
    };
    if let Some(images) = images_per_task(g, tile_elements) {
        // One task per group of images, each on one thread with its own scratch, products
        // and copies single-threaded: the patch matrix stays in that core's cache.
        let tile_elements = tile_elements.min(CACHED_PATCH);
        chunks(&mut y, images * g.c_out * pixels_out, true, |(task, y)| {
            let b0 = task * images;
            let images = y.len() / (g.c_out * pixels_out);
            add_bias(y, start, b0 * g.c_out, pixels_out);
            let tiles = g.tiles_of(b0, images, tile_elements);
            T::with_scratch(|cols, wide| {
                for tile in &tiles {
                    forward_tile(g, x, weight, accumulate, tile, cols, wide, (y, b0), false);
                }
            });
        });
        return y;
    }
    add_bias(&mut y, start, 0, pixels_out);
    T::with_scratch(|cols, wide| {
        for tile in &g.tiles(tile_elements) {
            forward_tile(
                g,
                x,
                weight,
                accumulate,
                tile,
                cols,
                wide,
                (&mut y, 0),
                true,
            );
        }
    });
    y
}

/// glibc's largest mmap threshold (32 MB): larger allocations are always fresh mappings.
const FRESH_PAGES_BYTES: usize = 32 << 20;

/// The bias of `start` set into (or, over a residual, added to) the output planes of `y`
/// (`pixels` each), the first of them plane `first` of the output.
fn add_bias<T: Element>(y: &mut [T], start: Start<T>, first: usize, pixels: usize) {
    let Some(bias) = start.bias else {
        return;
    };
    let over = start.residual.is_some();
    for_each_chunk(y, pixels, |(n, plane)| {
        let b = bias[(first + n) % bias.len()];
        if over {
            plane.iter_mut().for_each(|v| *v += b);
        } else {
            plane.fill(b);
        }
    });
}

/// Per-thread patch matrices are kept under this many elements (1 MiB in f32: a core's share of
/// the L2 cache) when the batch is shared out between threads.
const CACHED_PATCH: usize = 1 << 18;

/// How many images each task takes when the batch is shared out between threads, image groups
/// to a thread (narrow images grouped to [`NARROW`] pixels); `None` when there are too few
/// images to keep the threads busy (then each product uses them all).
fn images_per_task(g: &Geometry, tile_elements: usize) -> Option<usize> {
    let threads = parallel::threads();
    if g.batch < threads.max(2) {
        return None;
    }
    let pixels = g.pixels_out();
    let mut images = NARROW.div_ceil(pixels);
    if !g.pointwise() {
        images = images.min(tile_elements.min(CACHED_PATCH) / (g.patch() * pixels).max(1));
    }
    Some(images.clamp(1, g.batch.div_ceil(threads)))
}

/// Below this many output pixels per image, the images of a tile share one product (then added
/// to their places in `y`): a product per image would be too narrow to run fast.
const NARROW: usize = 256;

/// One tile of [`forward_tiled`]: `y` (already holding the start values, if `accumulate`) gets the
/// tile's products: written in place, one per image, for wide images; for narrow ones, one
/// product for the whole tile in `wide`, then added to `y`. `y` holds the outputs of the images
/// from `y_b0` on. `parallel`: the products and copies use the thread pool.
#[allow(clippy::too_many_arguments)]
fn forward_tile<T: Element>(
    g: &Geometry,
    x: &[T],
    weight: &[T],
    accumulate: bool,
    tile: &Tile,
    cols: &mut Vec<T>,
    wide: &mut Vec<T>,
    (y, y_b0): (&mut [T], usize),
    parallel: bool,
) {
    let (patch, pixels_out, pixels_in) = (g.patch(), g.pixels_out(), g.pixels_in());
    let pixels = tile.pixels(g.w_out());
    let p0 = tile.rows.start * g.w_out();
    let width = tile.images * pixels;
    let weight = || Strided::rows(weight, g.c_out, patch, patch);
    if !g.pointwise() {
        cols.resize(patch * width, T::ZERO);
        im2col(g, x, tile, cols, parallel);
    }
    let out = |b: usize| (b - y_b0) * g.c_out * pixels_out;
    if tile.images > 1 && pixels < NARROW && !g.pointwise() {
        wide.resize(g.c_out * width, T::ZERO);
        let dst = Strided::rows(&mut wide[..], g.c_out, width, width);
        product(
            dst,
            false,
            weight(),
            Strided::rows(&cols[..], patch, width, width),
            parallel,
        );
        chunks(
            &mut y[out(tile.b0)..][..tile.images * g.c_out * pixels_out],
            pixels_out,
            parallel,
            |(n, plane)| {
                let (i, co) = (n / g.c_out, n % g.c_out);
                let src = &wide[co * width + i * pixels..][..pixels];
                for (o, &v) in plane.iter_mut().zip(src) {
                    *o += v;
                }
            },
        );
        return;
    }
    for (i, b) in (tile.b0..tile.b0 + tile.images).enumerate() {
        // The pointwise convolution's patch matrix is its input.
        let rhs = if g.pointwise() {
            Strided::rows(&x[b * g.c_in * pixels_in + p0..], g.c_in, pixels, pixels_in)
        } else {
            Strided::rows(&cols[i * pixels..], patch, pixels, width)
        };
        let dst = Strided::rows(&mut y[out(b) + p0..], g.c_out, pixels, pixels_out);
        product(dst, accumulate, weight(), rhs, parallel);
    }
}

/// The gradient in `x` of `⟨dy, conv2d(x, weight)⟩`; `dy` [b, c_out, h_out, w_out] and `weight`
/// contiguous.
///
/// With stride 1 it is itself a convolution, of `dy` with the weight flipped in space and with
/// its channel axes exchanged, padded by `dilation·(k − 1) − padding`: the forward kernel's
/// gathers instead of col2im's scattered additions. Otherwise (strided, or padded past the
/// kernel) it is `col2im(Wᵀ·∂y)`.
pub(crate) fn input_gradient<T: Element>(g: &Geometry, dy: &[T], weight: &[T]) -> Vec<T> {
    input_gradient_tiled(g, dy, weight, TILE_ELEMENTS)
}

fn input_gradient_tiled<T: Element>(
    g: &Geometry,
    dy: &[T],
    weight: &[T],
    tile_elements: usize,
) -> Vec<T> {
    if let Some((adjoint, flipped)) = adjoint_convolution(g, weight) {
        return forward_tiled(
            &adjoint,
            dy,
            &flipped,
            Start::ZERO,
            tile_elements,
            FRESH_PAGES_BYTES,
        );
    }
    let (patch, pixels_out, w_out) = (g.patch(), g.pixels_out(), g.w_out());
    let mut dx = vec![T::ZERO; g.input_len()];
    if g.batch == 0 || pixels_out == 0 {
        return dx;
    }
    // Wᵀ: the weight's [c_out, patch] memory read with swapped strides.
    let weight_t = || Strided {
        data: weight,
        rows: patch,
        cols: g.c_out,
        row_stride: 1,
        col_stride: patch,
    };
    T::with_scratch(|cols, gathered| {
        for tile in &g.tiles(tile_elements) {
            let pixels = tile.pixels(w_out);
            let width = tile.images * pixels;
            cols.resize(patch * width, T::ZERO);
            let p0 = tile.rows.start * w_out;
            let rhs = if tile.images == 1 {
                let image = &dy[tile.b0 * g.c_out * pixels_out + p0..];
                Strided::rows(image, g.c_out, width, pixels_out)
            } else {
                gathered.resize(g.c_out * width, T::ZERO);
                for_each_chunk(gathered, width, |(co, row)| {
                    for i in 0..tile.images {
                        let src = &dy[((tile.b0 + i) * g.c_out + co) * pixels_out..];
                        row[i * pixels..][..pixels].copy_from_slice(&src[..pixels]);
                    }
                });
                Strided::rows(&gathered[..], g.c_out, width, width)
            };
            let dst = Strided::rows(&mut cols[..], patch, width, width);
            product(dst, false, weight_t(), rhs, true);
            col2im_add(g, cols, tile, &mut dx);
        }
    });
    dx
}

/// For a stride-1 convolution padded by at most `dilation·(k − 1)`: the convolution whose
/// forward is this one's input gradient, and its weight `W'[ci, co, i, j] = W[co, ci, k_h − 1 −
/// i, k_w − 1 − j]`.
fn adjoint_convolution<T: Element>(g: &Geometry, weight: &[T]) -> Option<(Geometry, Vec<T>)> {
    let reach_h = g.dilation * (g.k_h - 1);
    let reach_w = g.dilation * (g.k_w - 1);
    if g.stride != 1 || g.padding > reach_h || g.padding > reach_w || reach_h != reach_w {
        return None;
    }
    let adjoint = Geometry {
        batch: g.batch,
        c_in: g.c_out,
        h: g.h_out(),
        w: g.w_out(),
        c_out: g.c_in,
        k_h: g.k_h,
        k_w: g.k_w,
        stride: 1,
        padding: reach_h - g.padding,
        dilation: g.dilation,
    };
    let kk = g.k_h * g.k_w;
    let mut flipped = vec![T::ZERO; weight.len()];
    for_each_chunk(&mut flipped, g.c_out * kk, |(ci, block)| {
        for co in 0..g.c_out {
            let src = &weight[(co * g.c_in + ci) * kk..][..kk];
            for (d, s) in block[co * kk..][..kk].iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
        }
    });
    Some((adjoint, flipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook definition, one output at a time.
    fn naive(g: &Geometry, x: &[f64], w: &[f64]) -> Vec<f64> {
        let (h_out, w_out) = (g.h_out(), g.w_out());
        let mut y = vec![0.0; g.output_len()];
        for b in 0..g.batch {
            for co in 0..g.c_out {
                for oh in 0..h_out {
                    for ow in 0..w_out {
                        let mut s = 0.0;
                        for c in 0..g.c_in {
                            for ki in 0..g.k_h {
                                for kj in 0..g.k_w {
                                    let ih = (oh * g.stride + ki * g.dilation) as isize
                                        - g.padding as isize;
                                    let iw = (ow * g.stride + kj * g.dilation) as isize
                                        - g.padding as isize;
                                    if ih < 0 || iw < 0 || ih >= g.h as isize || iw >= g.w as isize
                                    {
                                        continue;
                                    }
                                    s += x[((b * g.c_in + c) * g.h + ih as usize) * g.w
                                        + iw as usize]
                                        * w[((co * g.c_in + c) * g.k_h + ki) * g.k_w + kj];
                                }
                            }
                        }
                        y[((b * g.c_out + co) * h_out + oh) * w_out + ow] = s;
                    }
                }
            }
        }
        y
    }

    fn noise(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect()
    }

    /// Forward equals the definition, and the input gradient is its adjoint
    /// (⟨dy, conv(x)⟩ = ⟨input_gradient(dy), x⟩), over strides, paddings, dilations, kernel
    /// shapes and batch sizes, including tiles of several images and bands of rows.
    #[test]
    fn forward_and_adjoint_match_the_definition() {
        let cases = [
            // batch, c_in, h, w, c_out, k_h, k_w, stride, padding, dilation
            (2, 3, 7, 9, 4, 3, 3, 1, 1, 1),
            (3, 2, 8, 8, 5, 3, 3, 2, 1, 1),
            (2, 3, 9, 8, 2, 3, 3, 2, 0, 1),
            (1, 4, 6, 6, 3, 1, 1, 1, 0, 1),
            (2, 4, 6, 5, 3, 1, 1, 2, 0, 1),
            (2, 2, 10, 11, 3, 3, 2, 1, 2, 2),
            (2, 3, 5, 5, 2, 5, 5, 1, 2, 1),
            (1, 2, 5, 7, 2, 4, 4, 3, 3, 1),
            (2, 1, 1, 1, 2, 3, 3, 1, 1, 1),
            // Kernel columns lying wholly in the padding.
            (1, 1, 2, 2, 2, 7, 7, 1, 3, 1),
            (2, 2, 1, 1, 3, 5, 5, 1, 2, 1),
            (1, 1, 1, 1, 1, 3, 3, 1, 2, 2),
            // Batches shared out between threads: grouped narrow images, a pointwise layer.
            (5, 2, 4, 3, 3, 3, 3, 1, 1, 1),
            (4, 3, 6, 6, 2, 1, 1, 1, 0, 1),
            // Width kept by a dilated kernel; a taller kernel than wide.
            (2, 2, 6, 5, 3, 3, 3, 1, 2, 2),
            (3, 2, 7, 6, 2, 5, 3, 1, 1, 1),
        ];
        for (n, &(batch, c_in, h, w, c_out, k_h, k_w, stride, padding, dilation)) in
            cases.iter().enumerate()
        {
            let g = Geometry::new(
                &[batch, c_in, h, w],
                &[c_out, c_in, k_h, k_w],
                padding,
                stride,
                dilation,
            )
            .unwrap();
            let x = noise(g.input_len(), n as u64);
            let wt = noise(c_out * c_in * k_h * k_w, 100 + n as u64);
            let bias = noise(c_out, 200 + n as u64);
            let dy = noise(g.output_len(), 300 + n as u64);
            let plane_bias = noise(batch * c_out, 400 + n as u64);
            let residual = noise(g.output_len(), 500 + n as u64);
            let expected = naive(&g, &x, &wt);
            let pixels = g.h_out() * g.w_out();
            let patch = c_in * k_h * k_w;
            // One tile for everything; two images per tile; one output row per tile.
            // (The bias written directly, or filled into zeroed memory as for large outputs.)
            for (budget, fresh) in [
                (TILE_ELEMENTS, FRESH_PAGES_BYTES),
                (2 * pixels * patch, 0),
                (1, FRESH_PAGES_BYTES),
                (1, 0),
            ] {
                let start = Start {
                    bias: Some(&bias),
                    residual: None,
                };
                let y = forward_tiled(&g, &x, &wt, start, budget, fresh);
                for (i, (a, e)) in y.iter().zip(&expected).enumerate() {
                    let e = e + bias[(i / pixels) % c_out];
                    assert!((a - e).abs() < 1e-12, "case {n} output {i}: {a} vs {e}");
                }
                // A bias per image and channel over a residual.
                let start = Start {
                    bias: Some(&plane_bias),
                    residual: Some(&residual),
                };
                let y = forward_tiled(&g, &x, &wt, start, budget, fresh);
                for (i, (a, e)) in y.iter().zip(&expected).enumerate() {
                    let e = e + plane_bias[i / pixels] + residual[i];
                    assert!((a - e).abs() < 1e-12, "case {n} output {i}: {a} vs {e}");
                }
                let dx = input_gradient_tiled(&g, &dy, &wt, budget);
                let lhs: f64 = dy.iter().zip(&expected).map(|(a, b)| a * b).sum();
                let rhs: f64 = dx.iter().zip(&x).map(|(a, b)| a * b).sum();
                assert!(
                    (lhs - rhs).abs() < 1e-12,
                    "case {n}, budget {budget}: ⟨dy, Wx⟩ {lhs} vs ⟨Wᵀdy, x⟩ {rhs}"
                );
            }
        }
    }

    /// Tiling: several images per tile and bands of rows within one image give the same result
    /// as one tile per image.
    #[test]
    fn tiles_cover_every_pixel_once() {
        for (batch, patch, h_out, w_out) in [
            (5, 9, 4, 4),
            (5, 104_857, 4, 4),
            (2, 1 << 20, 9, 3),
            (3, 1 << 21, 2, 2),
        ] {
            let g = Geometry {
                batch,
                c_in: patch,
                h: h_out,
                w: w_out,
                c_out: 1,
                k_h: 1,
                k_w: 1,
                stride: 1,
                padding: 0,
                dilation: 1,
            };
            let mut seen = vec![0; batch * h_out];
            for t in g.tiles(TILE_ELEMENTS) {
                assert!(t.images == 1 || t.rows == (0..h_out));
                for i in 0..t.images {
                    for r in t.rows.clone() {
                        seen[(t.b0 + i) * h_out + r] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&s| s == 1), "{seen:?}");
        }
    }

    #[test]
    fn bad_geometry_is_named() {
        let e = Geometry::new(&[1, 3, 4, 4], &[2, 4, 3, 3], 1, 1, 1).unwrap_err();
        assert!(e.to_string().contains("3 channels"), "{e}");
        let e = Geometry::new(&[1, 3, 2, 2], &[2, 3, 5, 5], 0, 1, 1).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
        for (x, w) in [([1, 3, 4, 4], [2, 3, 0, 3]), ([1, 3, 0, 4], [2, 3, 1, 1])] {
            let e = Geometry::new(&x, &w, 0, 1, 1).unwrap_err();
            assert!(e.to_string().contains("empty"), "{e}");
        }
        let g = Geometry::new(&[0, 3, 4, 4], &[2, 3, 3, 3], 1, 1, 1).unwrap();
        assert!(forward(&g, &[], &[0.0f64; 54], Start::ZERO).is_empty());
        assert!(input_gradient(&g, &[], &[0.0f64; 54]).is_empty());
    }
}
