//! The buffer cache's limit and eviction, in a process of their own (the cache is global).

use convkit_tensor::{Tensor, buffer};

#[test]
fn the_limit_bounds_what_the_cache_keeps_and_zero_turns_it_off() {
    buffer::clear_cache();
    assert_eq!(buffer::cache_limit(), buffer::DEFAULT_CACHE_LIMIT);
    let len = buffer::MIN_FLOATS * 4; // 256 KiB
    let bytes = len * 4;

    // A dropped tensor's buffer is cached, and the next tensor of its length reuses it.
    let t = Tensor::zeros(&[len]);
    let ptr = t.as_slice().as_ptr();
    drop(t);
    assert_eq!(buffer::cached_bytes(), bytes);
    let u = Tensor::full(&[len], 2.0);
    assert_eq!(u.as_slice().as_ptr(), ptr);
    assert!(u.as_slice().iter().all(|&v| v == 2.0));
    assert_eq!(buffer::cached_bytes(), 0);
    drop(u);

    // Above the limit the oldest buffers are freed.
    buffer::set_cache_limit(3 * bytes);
    let ts: Vec<Tensor> = (0..5).map(|_| Tensor::zeros(&[len])).collect();
    drop(ts);
    assert_eq!(buffer::cached_bytes(), 3 * bytes);
    buffer::set_cache_limit(bytes);
    assert_eq!(buffer::cached_bytes(), bytes);

    // A clone that is written copies into a cached buffer; the original keeps its values.
    let a = Tensor::full(&[len], 1.0);
    let mut b = a.clone();
    b.data_mut()[0] = 7.0;
    assert_eq!(a.as_slice()[0], 1.0);
    assert_eq!(b.as_slice()[..2], [7.0, 1.0]);
    // `into_vec` takes the buffer out: nothing goes back to the cache.
    buffer::clear_cache();
    let v = b.into_vec();
    assert_eq!(buffer::cached_bytes(), 0);
    buffer::recycle(v);
    assert_eq!(buffer::cached_bytes(), bytes);

    // Off: nothing is kept.
    buffer::set_cache_limit(0);
    assert_eq!(buffer::cached_bytes(), 0);
    drop(Tensor::zeros(&[len]));
    assert_eq!(buffer::cached_bytes(), 0);
    buffer::set_cache_limit(buffer::DEFAULT_CACHE_LIMIT);
}
