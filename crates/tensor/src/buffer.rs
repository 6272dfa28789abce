//! Reuse of large `f32` buffers between tensors: one process-wide cache.
//!
//! A training step allocates the same activations and gradients at every step (tens of MiB
//! at batch 64) and frees them when the step ends. Allocators give such blocks back to the
//! operating system and take them again (mimalloc purges freed pages, glibc maps large blocks
//! afresh), so every step pays for page faults, pages zeroed by the kernel and buffers zeroed
//! again by `calloc`: a fifth of a small ResNet's training step. Instead, a [`Tensor`] of at
//! least [`MIN_FLOATS`] elements hands its buffer to this cache when its last handle is
//! dropped, and the operations that overwrite every element of their output take one from
//! here ([`take`]) without zeroing it.
//!
//! The cache matches buffers by exact length (a training loop asks for the same sizes step
//! after step), hands out the most recently returned first and holds at most
//! [`cache_limit`] bytes, 512 MiB unless [`set_cache_limit`] says otherwise (0 turns it off);
//! past the limit the oldest buffers are freed. [`cached_bytes`] reports what it holds and
//! [`clear_cache`] frees it all. Index buffers (`Vec<usize>`, such as max pooling's argmax
//! positions, which a training step also allocates every step) share the cache and its limit
//! through [`take_indices`] and [`recycle_indices`].
//!
//! Contents are never observable: [`take`] is for outputs written in full before they are
//! read, and in debug builds it fills every buffer with NaN so that an element a kernel
//! forgets to write shows up in the tests; [`zeroed`] is for outputs that are accumulated.
//!
//! ```
//! use convkit_tensor::{Tensor, buffer};
//!
//! let before = buffer::cached_bytes();
//! let t = Tensor::zeros(&[64, 16, 28, 28]); // 3.2 MB
//! drop(t); // the buffer goes to the cache …
//! assert!(buffer::cached_bytes() >= before);
//! let again = buffer::zeroed(64 * 16 * 28 * 28); // … and comes back, zeroed
//! assert!(again.iter().all(|&v| v == 0.0));
//! # Ok::<(), convkit_tensor::TensorError>(())
//! ```
//!
//! [`Tensor`]: crate::Tensor

use std::collections::VecDeque;
use std::sync::Mutex;

/// Buffers of fewer elements (64 KiB) are left to the allocator, which serves them well.
pub const MIN_FLOATS: usize = 1 << 14;

/// The default [`cache_limit`]: 512 MiB.
pub const DEFAULT_CACHE_LIMIT: usize = 512 << 20;

/// A free buffer of either element type.
enum Buf {
    F32(Vec<f32>),
    Index(Vec<usize>),
}

impl Buf {
    fn len(&self) -> usize {
        match self {
            Buf::F32(v) => v.len(),
            Buf::Index(v) => v.len(),
        }
    }
    /// Bytes of the buffer's capacity.
    fn bytes(&self) -> usize {
        match self {
            Buf::F32(v) => v.capacity() * std::mem::size_of::<f32>(),
            Buf::Index(v) => v.capacity() * std::mem::size_of::<usize>(),
        }
    }
}

struct Cache {
    /// Free buffers, oldest first.
    free: VecDeque<Buf>,
    /// Bytes held by `free` (their capacities).
    bytes: usize,
    /// The most bytes `free` may hold.
    limit: usize,
}

impl Cache {
    /// Takes the oldest buffers out until the cache is within its limit; the caller frees
    /// them after releasing the lock.
    fn evict_over_limit(&mut self) -> Vec<Buf> {
        let mut evicted = Vec::new();
        while self.bytes > self.limit {
            let Some(old) = self.free.pop_front() else { break };
            self.bytes -= old.bytes();
            evicted.push(old);
        }
        evicted
    }
}

static CACHE: Mutex<Cache> =
    Mutex::new(Cache { free: VecDeque::new(), bytes: 0, limit: DEFAULT_CACHE_LIMIT });

fn cache() -> std::sync::MutexGuard<'static, Cache> {
    // A panic while the lock was held leaves a list of buffers, which is still valid.
    CACHE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A cached buffer of exactly `len` elements of the kind `is_kind` accepts, most recently
/// returned first.
fn reuse(len: usize, is_kind: fn(&Buf) -> bool) -> Option<Buf> {
    let mut c = cache();
    let i = c.free.iter().rposition(|v| is_kind(v) && v.len() == len)?;
    let v = c.free.remove(i)?;
    c.bytes -= v.bytes();
    Some(v)
}

/// A cached `f32` buffer of exactly `len` elements.
fn reuse_f32(len: usize) -> Option<Vec<f32>> {
    if len < MIN_FLOATS {
        return None;
    }
    match reuse(len, |b| matches!(b, Buf::F32(_)))? {
        Buf::F32(v) => Some(v),
        Buf::Index(_) => None,
    }
}

/// Index buffers of fewer elements (64 KiB) are left to the allocator.
pub const MIN_INDICES: usize =
    (MIN_FLOATS * std::mem::size_of::<f32>()) / std::mem::size_of::<usize>();

/// A buffer of `len` indices whose contents are unspecified (every element is written
/// before it is read), from the cache when one of this length is free. Debug builds fill it
/// with `usize::MAX`.
pub fn take_indices(len: usize) -> Vec<usize> {
    let cached = if len < MIN_INDICES {
        None
    } else {
        match reuse(len, |b| matches!(b, Buf::Index(_))) {
            Some(Buf::Index(v)) => Some(v),
            _ => None,
        }
    };
    #[allow(unused_mut)]
    let mut v = cached.unwrap_or_else(|| vec![0; len]);
    #[cfg(debug_assertions)]
    v.fill(usize::MAX);
    v
}

/// Gives an index buffer to the cache (see [`take_indices`]); freed instead when it is small
/// or the cache is off.
pub fn recycle_indices(v: Vec<usize>) {
    if v.len() >= MIN_INDICES {
        keep(Buf::Index(v));
    }
}

/// Adds `b` to the cache, evicting the oldest buffers above the limit.
fn keep(b: Buf) {
    let mut c = cache();
    let size = b.bytes();
    if size > c.limit {
        return;
    }
    c.bytes += size;
    c.free.push_back(b);
    let evicted = c.evict_over_limit();
    drop(c);
    // Freed outside the lock.
    drop(evicted);
}

/// A buffer of `len` elements whose contents are unspecified: for an output that is written
/// in full before anything reads it. A cached buffer when one of this length is free,
/// otherwise a new one. Debug builds fill it with NaN, so that an element left unwritten
/// fails the tests instead of passing on a lucky zero.
pub fn take(len: usize) -> Vec<f32> {
    #[allow(unused_mut)]
    let mut v = reuse_f32(len).unwrap_or_else(|| vec![0.0; len]);
    #[cfg(debug_assertions)]
    v.fill(f32::NAN);
    v
}

/// A buffer of `len` zeros (a cached one, cleared, when one of this length is free).
pub fn zeroed(len: usize) -> Vec<f32> {
    match reuse_f32(len) {
        Some(mut v) => {
            v.fill(0.0);
            v
        }
        None => vec![0.0; len],
    }
}

/// Gives `v` to the cache (freed instead when it is small or the cache is off). Called when
/// a tensor's last handle is dropped; call it for a large scratch `Vec<f32>` of your own that
/// the next step will need again.
pub fn recycle(v: Vec<f32>) {
    if v.len() >= MIN_FLOATS {
        keep(Buf::F32(v));
    }
}

/// The most bytes the cache holds ([`DEFAULT_CACHE_LIMIT`] unless set).
pub fn cache_limit() -> usize {
    cache().limit
}

/// Sets the most bytes the cache may hold, freeing the oldest buffers above it; 0 turns the
/// cache off (every buffer goes back to the allocator).
pub fn set_cache_limit(bytes: usize) {
    let mut c = cache();
    c.limit = bytes;
    let evicted = c.evict_over_limit();
    drop(c);
    // Freed outside the lock.
    drop(evicted);
}

/// Bytes the cache holds now.
pub fn cached_bytes() -> usize {
    cache().bytes
}

/// Frees every cached buffer.
pub fn clear_cache() {
    let free = {
        let mut c = cache();
        c.bytes = 0;
        std::mem::take(&mut c.free)
    };
    drop(free);
}

#[cfg(test)]
mod tests {
    use super::*;

    // The cache is process-wide and the tests of this crate run in parallel, so these tests
    // use lengths no other test allocates and check only what they alone can cause.

    #[test]
    fn buffers_come_back_by_exact_length() {
        let len = MIN_FLOATS + 17;
        let mut v = vec![1.0f32; len];
        v[0] = 5.0;
        let ptr = v.as_ptr();
        recycle(v);
        let w = zeroed(len);
        assert_eq!(w.len(), len);
        assert!(w.iter().all(|&x| x == 0.0));
        assert_eq!(w.as_ptr(), ptr, "the recycled buffer is handed out again");
        // Another length never gets it.
        recycle(w);
        let other = take(len + 1);
        assert_ne!(other.as_ptr(), ptr);
        assert_eq!(other.len(), len + 1);
    }

    #[test]
    fn small_buffers_are_not_kept() {
        let v = vec![0.0f32; MIN_FLOATS - 1];
        let ptr = v.as_ptr();
        recycle(v);
        assert!(reuse_f32(MIN_FLOATS - 1).is_none());
        let _ = ptr;
    }

    #[test]
    fn index_buffers_come_back_by_length_and_kind() {
        let len = MIN_INDICES + 23;
        let v = vec![7usize; len];
        let ptr = v.as_ptr();
        recycle_indices(v);
        // An f32 request of the same length never gets an index buffer.
        assert!(reuse_f32(len).is_none());
        let w = take_indices(len);
        assert_eq!(w.len(), len);
        assert_eq!(w.as_ptr(), ptr, "the recycled index buffer is handed out again");
        #[cfg(debug_assertions)]
        assert!(w.iter().all(|&i| i == usize::MAX));
        recycle_indices(vec![0; MIN_INDICES - 1]);
        assert!(reuse(MIN_INDICES - 1, |b| matches!(b, Buf::Index(_))).is_none());
    }

    #[test]
    #[cfg(debug_assertions)]
    fn take_poisons_buffers_in_debug_builds() {
        let len = MIN_FLOATS + 29;
        recycle(vec![0.0; len]);
        assert!(take(len).iter().all(|v| v.is_nan()));
        assert!(take(len + 2).iter().all(|v| v.is_nan()));
        assert!(take(3).iter().all(|v| v.is_nan()));
    }
}
