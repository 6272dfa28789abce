//! Reads the real Fashion-MNIST files of Debian's `dataset-fashion-mnist` package.
//!
//! Skipped (with a message) when the package is absent, unless `CONVKIT_REQUIRE_REAL_DATA=1`,
//! which CI sets after installing it: there a missing dataset is a failure.

mod common;

use convkit_models::idx::IdxSplit;

#[test]
fn fashion_mnist_reads_with_expected_counts() -> Result<(), convkit_models::ModelError> {
    let Some(f) = common::fashion_mnist() else { return Ok(()) };
    let train = IdxSplit::read(&f.train_images, &f.train_labels, 28, 28, 10)?;
    let test = IdxSplit::read(&f.test_images, &f.test_labels, 28, 28, 10)?;
    assert_eq!(train.len(), 60_000);
    assert_eq!(test.len(), 10_000);
    // Fashion-MNIST is balanced: 6,000 training and 1,000 test images per class.
    for (split, per_class) in [(&train, 6_000), (&test, 1_000)] {
        let mut counts = [0usize; 10];
        for &l in &split.labels.labels {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, [per_class; 10]);
    }
    // Images are not blank: the mean pixel of the test set is around 73 (of 255).
    let mean = test.images.pixels.iter().map(|&p| f64::from(p)).sum::<f64>()
        / test.images.pixels.len() as f64;
    assert!((60.0..90.0).contains(&mean), "mean pixel {mean}");
    Ok(())
}
