//! Per-thread scratch buffers, kept between calls: one pool, one cap.
//!
//! A training loop calls the same layers thousands of times; allocating (and page-faulting)
//! a few MiB of column matrices, packing panels or transformed filters on every call cost up
//! to 8% of a layer. Each thread therefore keeps one buffer per [`Slot`] between calls. A
//! buffer larger than [`KEEP_FLOATS`] (16 MiB) is freed after the call that needed it, so a
//! thread holds at most a few slots of 16 MiB, never anything that scales with the batch.
//!
//! A slot already in use on this thread — rayon let the thread pick up another convolution's
//! task while it waited — hands out a fresh buffer instead, so nesting is never an error.

use std::cell::RefCell;

/// Buffers up to this many floats (16 MiB) stay allocated between calls.
pub(crate) const KEEP_FLOATS: usize = 1 << 22;

/// What a scratch buffer is for; each has its own buffer per thread.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Slot {
    /// The im2col column matrix of one image and group.
    Columns,
    /// The padded planes and tiles of one work item of the direct and Winograd kernels.
    Tiles,
    /// The packed GEMM's A block.
    PackA,
    /// The packed GEMM's B block.
    PackB,
    /// Filters transformed by a stateless Winograd call.
    Filters,
}

const SLOTS: usize = 5;

thread_local! {
    static POOL: [RefCell<Vec<f32>>; SLOTS] = const { [const { RefCell::new(Vec::new()) }; SLOTS] };
    /// The im2col packed weights, one buffer per group.
    static LISTS: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's buffer for `slot` (contents unspecified; resize it).
pub(crate) fn with<R>(slot: Slot, f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    POOL.with(|pool| match pool[slot as usize].try_borrow_mut() {
        Ok(mut buf) => {
            let r = f(&mut buf);
            if buf.capacity() > KEEP_FLOATS {
                *buf = Vec::new();
            }
            r
        }
        Err(_) => f(&mut Vec::new()),
    })
}

/// `len` floats of `buf` starting on a 64-byte boundary (a cache line, one AVX-512 vector), so
/// that the kernels' full-vector loads of packed panels never straddle two lines; `buf` grows
/// as needed (contents unspecified).
pub(crate) fn aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len + LINE_FLOATS - 1 {
        buf.resize(len + LINE_FLOATS - 1, 0.0);
    }
    let off = line_gap(buf.as_ptr());
    &mut buf[off..off + len]
}

/// Makes `buf` exactly `len` floats long for a caller that overwrites every one of them:
/// contents unspecified, and only floats beyond the old length are zeroed (a recycled buffer
/// that was longer is cut, one that was shorter grows by the difference). A `clear` and
/// `resize` instead zeroes all `len` floats on every call: 4 MiB for the transformed filter of
/// a 256-channel layer, each time another kernel used the buffer in between.
pub(crate) fn fit(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
    } else {
        buf.truncate(len);
    }
}

/// Floats in one 64-byte cache line (one AVX-512 vector).
pub(crate) const LINE_FLOATS: usize = 64 / std::mem::size_of::<f32>();

/// Floats from `at` to the next 64-byte boundary (0 when `at` is on one; below
/// [`LINE_FLOATS`]).
pub(crate) fn line_gap(at: *const f32) -> usize {
    at.align_offset(64).min(LINE_FLOATS - 1)
}

/// Takes this thread's buffer for `slot` out of the pool (empty if it is in use); give it
/// back with [`put`]. For callers that must not run inside a closure (a closure body is
/// compiled without the caller's `#[target_feature]`s).
pub(crate) fn take(slot: Slot) -> Vec<f32> {
    POOL.with(|pool| {
        pool[slot as usize]
            .try_borrow_mut()
            .map(|mut b| std::mem::take(&mut *b))
            .unwrap_or_default()
    })
}

/// Returns `buf` to the pool for the next call, unless it exceeds [`KEEP_FLOATS`].
pub(crate) fn put(slot: Slot, buf: Vec<f32>) {
    if buf.capacity() <= KEEP_FLOATS {
        POOL.with(|pool| {
            if let Ok(mut b) = pool[slot as usize].try_borrow_mut() {
                *b = buf;
            }
        });
    }
}

/// Takes this thread's list of buffers (im2col's packed weights, one per group; empty if in
/// use); give it back with [`put_list`].
pub(crate) fn take_list() -> Vec<Vec<f32>> {
    LISTS.with(|l| l.try_borrow_mut().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default())
}

/// Returns a list of buffers for the next call, unless together they exceed [`KEEP_FLOATS`].
pub(crate) fn put_list(list: Vec<Vec<f32>>) {
    if list.iter().map(Vec::capacity).sum::<usize>() <= KEEP_FLOATS {
        LISTS.with(|l| {
            if let Ok(mut v) = l.try_borrow_mut() {
                *v = list;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_kept_up_to_the_cap() {
        with(Slot::Columns, |b| b.resize(1000, 1.0));
        with(Slot::Columns, |b| assert!(b.capacity() >= 1000));
        with(Slot::Columns, |b| b.resize(KEEP_FLOATS + 1, 0.0));
        with(Slot::Columns, |b| assert_eq!(b.capacity(), 0));
        let big = vec![0.0; KEEP_FLOATS + 1];
        put(Slot::Filters, big);
        assert_eq!(take(Slot::Filters).capacity(), 0);
        put(Slot::Filters, vec![0.0; 10]);
        assert_eq!(take(Slot::Filters).len(), 10);
    }

    #[test]
    fn fit_sets_the_length_and_zeroes_only_the_growth() {
        let mut b = vec![7.0; 10];
        fit(&mut b, 4);
        assert_eq!(b, [7.0; 4]);
        fit(&mut b, 6);
        assert_eq!(b, [7.0, 7.0, 7.0, 7.0, 0.0, 0.0]);
    }

    #[test]
    fn a_slot_in_use_hands_out_a_fresh_buffer() {
        with(Slot::Tiles, |outer| {
            outer.resize(5, 2.0);
            with(Slot::Tiles, |inner| assert!(inner.is_empty()));
            assert_eq!(take(Slot::Tiles).capacity(), 0);
        });
        put_list(vec![vec![0.0; 4]; 3]);
        assert_eq!(take_list().len(), 3);
        put_list(vec![vec![0.0; KEEP_FLOATS]; 2]);
        assert!(take_list().is_empty());
    }
}
