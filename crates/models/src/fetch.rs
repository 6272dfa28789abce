//! Finding a dataset on disk, and what is known of each dataset by name.
//!
//! [`locate`] tries, in order: an explicit directory (`--data`), `$CONVKIT_DATA`, the cache
//! `data/<dataset>/` (relative to the working directory), and for Fashion-MNIST Debian's
//! `/usr/share/datasets/fashion-mnist` (package `dataset-fashion-mnist`). [`DatasetKind`]
//! carries the mirrors and published SHA-256 sums that the downloader of `convkit-cli`
//! (`lenet fetch`) uses; the library itself never touches the network.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{ModelError, Result};
use crate::idx::IdxFiles;

/// Environment variable naming a directory with the four IDX files.
pub const DATA_ENV: &str = "CONVKIT_DATA";
/// Where Debian's `dataset-fashion-mnist` package installs Fashion-MNIST.
pub const DEBIAN_FASHION_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The datasets in MNIST's format that the tools know by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DatasetKind {
    /// Handwritten digits (LeCun, Cortes, Burges).
    Mnist,
    /// Zalando's clothing images (Xiao, Rasul, Vollgraf), same format and sizes.
    #[default]
    FashionMnist,
}

impl DatasetKind {
    /// The name used on the command line and as the cache directory (`mnist`,
    /// `fashion-mnist`).
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
        }
    }

    /// The ten class names.
    pub fn class_names(self) -> [&'static str; 10] {
        match self {
            DatasetKind::Mnist => ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            DatasetKind::FashionMnist => [
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ],
        }
    }

    /// Base addresses of the public mirrors, tried in order.
    pub fn mirrors(self) -> &'static [&'static str] {
        match self {
            DatasetKind::Mnist => &[
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
                "https://storage.googleapis.com/cvdf-datasets/mnist/",
            ],
            DatasetKind::FashionMnist => &[
                "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            ],
        }
    }

    /// The published SHA-256 of each `.gz` file, in the order of [`STANDARD_NAMES`](crate::idx::STANDARD_NAMES).
    pub fn sha256(self) -> [&'static str; 4] {
        match self {
            DatasetKind::Mnist => [
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            ],
            DatasetKind::FashionMnist => [
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            ],
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DatasetKind {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "mnist" => Ok(DatasetKind::Mnist),
            "fashion-mnist" | "fashion" | "fashionmnist" => Ok(DatasetKind::FashionMnist),
            other => Err(ModelError::Invalid {
                what: "dataset",
                msg: format!("unknown dataset {other:?}; expected mnist or fashion-mnist"),
            }),
        }
    }
}

/// Where a dataset was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The four files.
    pub files: IdxFiles,
    /// The directory holding them.
    pub dir: PathBuf,
    /// How it was found (`--data`, `$CONVKIT_DATA`, the cache, the Debian package).
    pub source: &'static str,
}

/// The cache directory of a dataset: `data/<name>` under `base` (the working directory).
pub fn cache_dir(base: &Path, kind: DatasetKind) -> PathBuf {
    base.join("data").join(kind.name())
}

/// Finds `kind` as described in the [module docs](self). `explicit` (`--data`) is the only
/// place tried when given, so a typo is an error rather than a silent fallback. `env` is the
/// value of `$CONVKIT_DATA`, `base` the directory holding the `data/` cache.
pub fn locate(
    kind: DatasetKind,
    explicit: Option<&Path>,
    env: Option<&Path>,
    base: &Path,
) -> Result<Located> {
    if let Some(dir) = explicit {
        let files = IdxFiles::find(dir)?;
        return Ok(Located { files, dir: dir.to_path_buf(), source: "--data" });
    }
    let mut candidates: Vec<(PathBuf, &'static str)> = Vec::new();
    if let Some(dir) = env {
        candidates.push((dir.to_path_buf(), "$CONVKIT_DATA"));
    }
    candidates.push((cache_dir(base, kind), "the data/ cache"));
    if kind == DatasetKind::FashionMnist {
        candidates.push((PathBuf::from(DEBIAN_FASHION_DIR), "Debian's dataset-fashion-mnist"));
    }
    for (dir, source) in &candidates {
        if let Ok(files) = IdxFiles::find(dir) {
            return Ok(Located { files, dir: dir.clone(), source });
        }
    }
    Err(ModelError::NotFound {
        dataset: kind.name().to_owned(),
        searched: candidates.iter().map(|(d, _)| d.display().to_string()).collect(),
        hint: not_found_hint(kind),
    })
}

/// What to do when a dataset is nowhere to be found: the places and commands that provide it.
pub fn not_found_hint(kind: DatasetKind) -> String {
    let mut hint = format!(
        "pass --data DIR (a directory with the four IDX files, raw or .gz), set {DATA_ENV}, \
         or run `lenet fetch {kind}`"
    );
    if kind == DatasetKind::FashionMnist {
        hint.push_str(", or install Debian's package: apt-get install dataset-fashion-mnist");
    }
    hint
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_parse_both_ways() {
        for k in [DatasetKind::Mnist, DatasetKind::FashionMnist] {
            assert_eq!(k.name().parse::<DatasetKind>().unwrap(), k);
        }
        let err = "cifar".parse::<DatasetKind>().unwrap_err().to_string();
        assert!(err.contains("mnist or fashion-mnist"), "{err}");
    }

    #[test]
    fn locate_reports_every_place_tried() {
        let base = std::env::temp_dir().join(format!("convkit-locate-{}", std::process::id()));
        let err = locate(DatasetKind::Mnist, None, Some(Path::new("/nonexistent/x")), &base)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/x") && err.contains("data/mnist"), "{err}");
        assert!(err.contains("lenet fetch mnist") && err.contains("--data"), "{err}");
        let err = locate(DatasetKind::Mnist, Some(Path::new("/nonexistent/y")), None, &base)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/y") && err.contains("missing"), "{err}");
    }
}
