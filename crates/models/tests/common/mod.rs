//! What the real-data tests share: finding Debian's Fashion-MNIST, or skipping.

use convkit_models::fetch::DEBIAN_FASHION_DIR;
use convkit_models::idx::IdxFiles;

/// The four files of Debian's `dataset-fashion-mnist`, or `None` after a "skipping" message
/// when they are absent. With `CONVKIT_REQUIRE_REAL_DATA=1` (CI, after installing the
/// package) a missing dataset is a failure instead.
pub fn fashion_mnist() -> Option<IdxFiles> {
    match IdxFiles::find(DEBIAN_FASHION_DIR) {
        Ok(f) => Some(f),
        Err(e) => {
            let required = std::env::var("CONVKIT_REQUIRE_REAL_DATA").is_ok_and(|v| v == "1");
            assert!(!required, "CONVKIT_REQUIRE_REAL_DATA=1 but the dataset is missing: {e}");
            eprintln!("skipping: no Fashion-MNIST ({e}); apt-get install dataset-fashion-mnist");
            None
        }
    }
}
