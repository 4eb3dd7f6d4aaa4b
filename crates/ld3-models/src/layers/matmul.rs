//! Matrix products on strided views for the CPU kernels (the convolutions', the attention's),
//! by the `gemm` crate — candle's own CPU matrix product — on views checked to lie inside their
//! slices, and the element types those kernels run in, with per-thread scratch buffers.

use gemm::Parallelism;

use super::parallel::{self, chunks};

/// The element types the kernels run in.
pub(crate) trait Element:
    Copy + Send + Sync + 'static + std::ops::AddAssign + std::ops::Add<Output = Self>
{
    const ZERO: Self;
    const ONE: Self;
    /// Runs `f` on this thread's two scratch buffers (the patch matrix and the product), kept
    /// between calls: a fresh allocation of that size is a fresh mapping, and its page faults
    /// cost as much as the copies.
    fn with_scratch<R>(f: impl FnOnce(&mut Vec<Self>, &mut Vec<Self>) -> R) -> R;
}

macro_rules! element {
    ($t:ty, $scratch:ident) => {
        thread_local! {
            static $scratch: std::cell::RefCell<(Vec<$t>, Vec<$t>)> =
                const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
        }
        impl Element for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            fn with_scratch<R>(f: impl FnOnce(&mut Vec<Self>, &mut Vec<Self>) -> R) -> R {
                $scratch.with(|cell| match cell.try_borrow_mut() {
                    Ok(mut pair) => {
                        let (a, b) = &mut *pair;
                        f(a, b)
                    }
                    // Re-entered on this thread (a kernel called inside another's task): fresh
                    // buffers.
                    Err(_) => f(&mut Vec::new(), &mut Vec::new()),
                })
            }
        }
    };
}
element!(f32, SCRATCH_F32);
element!(f64, SCRATCH_F64);

/// Below this many multiply-adds a product runs on the calling thread: handing it to the pool
/// (waking threads) costs more than it saves.
const PARALLEL_PRODUCT: usize = 1 << 21;

/// A strided matrix view: `rows × cols` elements at `data[r·row_stride + c·col_stride]`.
pub(crate) struct Strided<S> {
    pub data: S,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<T> Strided<&[T]> {
    /// The same view, borrowed again (for each of several products).
    pub fn reborrow(&self) -> Strided<&[T]> {
        Strided {
            data: self.data,
            rows: self.rows,
            cols: self.cols,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }
}

impl<S> Strided<S> {
    /// A view of `rows` rows `row_stride` apart, each of `cols` consecutive elements.
    pub fn rows(data: S, rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }
    /// The elements the view reaches, from its first.
    pub fn extent(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1
        }
    }
}

/// `dst (+)= lhs·rhs`; with `parallel` and enough work, the rows of `dst` are shared out between
/// the pool's threads in blocks (each block a product of its own).
pub(crate) fn product<T: Element>(
    dst: Strided<&mut [T]>,
    accumulate: bool,
    lhs: Strided<&[T]>,
    rhs: Strided<&[T]>,
    parallel: bool,
) {
    let (m, n, k) = (dst.rows, dst.cols, lhs.cols);
    let disjoint_rows = dst.cols == 0 || dst.row_stride > (dst.cols - 1) * dst.col_stride;
    let split = parallel
        && disjoint_rows
        && lhs.rows == m
        && m >= 2
        && m * n * k >= PARALLEL_PRODUCT
        && parallel::can_fork();
    if !split {
        return product_here(dst, accumulate, lhs, rhs);
    }
    let block = m.div_ceil(parallel::threads());
    let extent = dst.extent().min(dst.data.len());
    let (row_stride, col_stride) = (dst.row_stride, dst.col_stride);
    chunks(
        &mut dst.data[..extent],
        block * row_stride,
        true,
        |(i, piece)| {
            let (r0, rows) = (i * block, block.min(m - i * block));
            let lhs = Strided {
                data: lhs.data.get(r0 * lhs.row_stride..).unwrap_or(&[]),
                rows,
                cols: k,
                row_stride: lhs.row_stride,
                col_stride: lhs.col_stride,
            };
            let dst = Strided {
                data: piece,
                rows,
                cols: n,
                row_stride,
                col_stride,
            };
            product_here(dst, accumulate, lhs, rhs.reborrow());
        },
    );
}

/// `dst (+)= lhs·rhs` on this thread by the `gemm` crate (candle's own CPU matrix product), on
/// strided views whose shapes and extents are checked here; the borrows keep `dst` apart from
/// the operands.
// One of the workspace's three `unsafe` sites (the others: `Checkpoint::map_safetensors`,
// `allocator::keep_freed_memory`): the one call into gemm, on views checked to lie inside their
// slices.
#[allow(unsafe_code)]
fn product_here<T: Element>(
    dst: Strided<&mut [T]>,
    accumulate: bool,
    lhs: Strided<&[T]>,
    rhs: Strided<&[T]>,
) {
    let (m, n, k) = (dst.rows, dst.cols, lhs.cols);
    assert!(
        lhs.rows == m && rhs.rows == k && rhs.cols == n,
        "matrix product: a {m}×{n} product of {}×{} and {}×{}",
        lhs.rows,
        lhs.cols,
        rhs.rows,
        rhs.cols
    );
    assert!(
        dst.extent() <= dst.data.len()
            && lhs.extent() <= lhs.data.len()
            && rhs.extent() <= rhs.data.len(),
        "matrix product: a matrix view outside its slice"
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: every element gemm reads or writes lies inside the extents checked above; `dst` is
    // an exclusive borrow, so it overlaps neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            dst.col_stride as isize,
            dst.row_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}
