//! The threads of the own CPU ops: candle's barrier pool, the one its element-wise ops run on.
//!
//! Sharing it matters on few cores. candle's pool threads spin for a while after each op before
//! they sleep; work handed to a second pool (rayon's) in that window competes with them for the
//! same cores. With one pool, a network's forward pass keeps exactly one thread per core busy.
//!
//! Calls made from inside a task (a nested parallel loop) run on the calling thread: the pool
//! runs one job at a time.

use std::cell::Cell;
use std::sync::{Mutex, PoisonError};

/// Below this many elements a loop runs on the calling thread: waking the pool costs more.
pub const PARALLEL_ELEMENTS: usize = 1 << 16;

thread_local! {
    /// Set while this thread runs a task of [`for_each_index`].
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

/// candle's thread count (read once: candle reads the environment on every call, which costs
/// several percent of a small network's forward pass).
pub fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(candle_core::utils::get_num_threads)
}

/// Whether a parallel loop started here would use the pool (more than one thread, and not
/// already inside one of its tasks).
pub fn can_fork() -> bool {
    threads() > 1 && !IN_TASK.with(Cell::get)
}

/// Resets [`IN_TASK`] when a task ends, by return or by panic.
struct TaskGuard(bool);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        IN_TASK.with(|c| c.set(self.0));
    }
}

/// `f(i)` for every `i < n`, shared out between candle's pool threads and this one.
pub fn for_each_index(n: usize, f: impl Fn(usize) + Sync) {
    if n <= 1 || !can_fork() {
        (0..n).for_each(f);
        return;
    }
    // A panic is caught in the task and raised again here, after the pool has finished: one
    // escaping the pool would poison its lock for every later candle op of the process.
    let panic = Mutex::new(None);
    candle_core::utils::barrier_pool().execute_chunked(n, |range| {
        let _guard = TaskGuard(IN_TASK.with(|c| c.replace(true)));
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| range.for_each(&f)));
        if let Err(payload) = run {
            panic
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert(payload);
        }
    });
    if let Some(payload) = panic.into_inner().unwrap_or_else(PoisonError::into_inner) {
        std::panic::resume_unwind(payload);
    }
}

/// `f((index, chunk))` over the `chunk`-sized pieces of `data`, on the pool when `parallel`.
pub fn chunks<T: Send>(
    data: &mut [T],
    chunk: usize,
    parallel: bool,
    f: impl Fn((usize, &mut [T])) + Send + Sync,
) {
    if !parallel || chunk == 0 || data.len() <= chunk || !can_fork() {
        data.chunks_mut(chunk.max(1)).enumerate().for_each(f);
        return;
    }
    // Each piece behind its own (never contended) lock: the safe way to hand disjoint `&mut`
    // pieces to whichever thread takes their index.
    let pieces: Vec<Mutex<&mut [T]>> = data.chunks_mut(chunk).map(Mutex::new).collect();
    for_each_index(pieces.len(), |i| {
        let mut piece = pieces[i].lock().unwrap_or_else(PoisonError::into_inner);
        f((i, &mut piece))
    });
}

/// [`chunks`] on the pool when `data` has at least [`PARALLEL_ELEMENTS`] elements.
pub fn for_each_chunk<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: impl Fn((usize, &mut [T])) + Send + Sync,
) {
    chunks(data, chunk, data.len() >= PARALLEL_ELEMENTS, f)
}

/// Runs `f` compiled for the widest vector instructions this CPU has (AVX-512, AVX2 with FMA,
/// or x86-64's baseline), chosen at run time: the element-wise loops in `f` vectorise to that
/// width. (The crate is built for the baseline, whose SSE2 holds four f32 per register.)
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    struct Op<F>(F);
    impl<R, F: FnOnce() -> R> pulp::WithSimd for Op<F> {
        type Output = R;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> R {
            (self.0)()
        }
    }
    pulp::Arch::new().dispatch(Op(f))
}

/// Partial sums and maxima side by side: a loop carrying one running sum (a chain of dependent
/// additions) does not vectorise; sixteen independent ones do.
const LANES: usize = 16;

/// Σ f(xᵢ), in sixteen partial sums.
#[inline(always)]
pub fn sum_map<T: Copy, S: Copy + Default + std::ops::Add<Output = S>>(
    x: &[T],
    f: impl Fn(T) -> S,
) -> S {
    let mut acc = [S::default(); LANES];
    let blocks = x.chunks_exact(LANES);
    let total = blocks
        .remainder()
        .iter()
        .fold(S::default(), |s, &v| s + f(v));
    for xs in blocks {
        for k in 0..LANES {
            acc[k] = acc[k] + f(xs[k]);
        }
    }
    acc.into_iter().fold(total, |s, a| s + a)
}

/// Σ f(xᵢ, yᵢ) over the pairs of `x` and `y`, in sixteen partial sums.
#[inline(always)]
pub fn sum_zip<T: Copy, U: Copy, S: Copy + Default + std::ops::Add<Output = S>>(
    x: &[T],
    y: &[U],
    f: impl Fn(T, U) -> S,
) -> S {
    let mut acc = [S::default(); LANES];
    let (xb, yb) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    let mut total = S::default();
    for (&a, &b) in xb.remainder().iter().zip(yb.remainder()) {
        total = total + f(a, b);
    }
    for (xs, ys) in xb.zip(yb) {
        for k in 0..LANES {
            acc[k] = acc[k] + f(xs[k], ys[k]);
        }
    }
    acc.into_iter().fold(total, |s, a| s + a)
}

/// Σ xᵢ·yᵢ, in sixteen partial sums.
#[inline(always)]
pub fn dot<T: Copy + Default + std::ops::Add<Output = T> + std::ops::Mul<Output = T>>(
    x: &[T],
    y: &[T],
) -> T {
    sum_zip(x, y, |a, b| a * b)
}

/// Σ xᵢ, in sixteen partial sums.
#[inline(always)]
pub fn sum<T: Copy + Default + std::ops::Add<Output = T>>(x: &[T]) -> T {
    sum_map(x, |v| v)
}

/// The largest xᵢ and `floor` (NaNs are passed over, as `f32::max` does).
#[inline(always)]
pub fn max<T: Copy + PartialOrd>(x: &[T], floor: T) -> T {
    let pick = |m: T, v: T| if v > m { v } else { m };
    let mut acc = [floor; LANES];
    let blocks = x.chunks_exact(LANES);
    let most = blocks.remainder().iter().fold(floor, |m, &v| pick(m, v));
    for xs in blocks {
        for k in 0..LANES {
            acc[k] = pick(acc[k], xs[k]);
        }
    }
    acc.into_iter().fold(most, pick)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_chunk_once_and_nested_loops_run_inline() {
        let mut data = vec![0usize; 3 * PARALLEL_ELEMENTS + 5];
        let nested = AtomicUsize::new(0);
        for_each_chunk(&mut data, 1000, |(i, piece)| {
            for (j, v) in piece.iter_mut().enumerate() {
                *v += i * 1000 + j + 1;
            }
            // A loop started inside a task must not wait for the pool it runs on.
            for_each_index(3, |_| {
                nested.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert!(data.iter().enumerate().all(|(k, &v)| v == k + 1));
        assert_eq!(nested.into_inner(), 3 * data.len().div_ceil(1000));
    }

    #[test]
    fn lane_reductions_equal_the_plain_ones() {
        for n in [0, 1, 15, 16, 17, 100] {
            let x: Vec<f64> = (0..n).map(|i| ((i * 37) % 11) as f64 - 4.5).collect();
            let y: Vec<f64> = (0..n).map(|i| ((i * 13) % 7) as f64 * 0.25).collect();
            assert_eq!(sum(&x), x.iter().sum::<f64>());
            assert_eq!(
                dot(&x, &y),
                x.iter().zip(&y).map(|(a, b)| a * b).sum::<f64>()
            );
            assert_eq!(
                max(&x, f64::NEG_INFINITY),
                x.iter().copied().fold(f64::NEG_INFINITY, f64::max)
            );
        }
        assert_eq!(max(&[1.0, f64::NAN, 3.0], f64::NEG_INFINITY), 3.0);
    }

    #[test]
    fn a_panicking_task_reaches_the_caller() {
        let r = std::panic::catch_unwind(|| {
            for_each_index(64, |i| assert!(i != 17, "task 17"));
        });
        assert!(r.is_err());
        // The pool still works afterwards.
        let count = AtomicUsize::new(0);
        for_each_index(64, |_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.into_inner(), 64);
    }
}
