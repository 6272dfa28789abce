//! Finding a dataset on disk, and downloading it with SHA-256 checks.
//!
//! [`locate`] tries, in order: an explicit directory (`--data`), `$CONVKIT_DATA`, the cache
//! `data/<dataset>/` (relative to the working directory), and for Fashion-MNIST Debian's
//! `/usr/share/datasets/fashion-mnist` (package `dataset-fashion-mnist`). [`fetch`] downloads
//! the four `.gz` files from the public mirrors into `data/<dataset>/`: each file goes to a
//! temporary name, is checked against its published SHA-256, and only then renamed, so the
//! cache never holds a partial or corrupt file. Without network it fails within seconds with
//! a message naming the alternatives.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{DataError, Result, io_err};
use crate::idx::{IdxFiles, STANDARD_NAMES};

/// Environment variable naming a directory with the four IDX files.
pub const DATA_ENV: &str = "CONVKIT_DATA";
/// Where Debian's `dataset-fashion-mnist` package installs Fashion-MNIST.
pub const DEBIAN_FASHION_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// Largest download accepted per file (the biggest, MNIST's training images, is 9.9 MB
/// compressed; Fashion-MNIST's 26 MB).
pub const MAX_DOWNLOAD_BYTES: u64 = 64 << 20;

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

    /// The published SHA-256 of each `.gz` file, in the order of [`STANDARD_NAMES`].
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
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "mnist" => Ok(DatasetKind::Mnist),
            "fashion-mnist" | "fashion" | "fashionmnist" => Ok(DatasetKind::FashionMnist),
            other => Err(DataError::Invalid {
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
    Err(DataError::NotFound {
        dataset: kind.name().to_owned(),
        searched: candidates.iter().map(|(d, _)| d.display().to_string()).collect(),
        hint: not_found_hint(kind),
    })
}

fn not_found_hint(kind: DatasetKind) -> String {
    let mut hint = format!(
        "pass --data DIR (a directory with the four IDX files, raw or .gz), set {DATA_ENV}, \
         or run `lenet fetch {kind}`"
    );
    if kind == DatasetKind::FashionMnist {
        hint.push_str(", or install Debian's package: apt-get install dataset-fashion-mnist");
    }
    hint
}

/// The lower-case hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).map_err(|e| io_err(path, &e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| io_err(path, &e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a file against an expected SHA-256 (hex, any case).
pub fn verify_sha256(path: &Path, expected: &str) -> Result<()> {
    let got = sha256_file(path)?;
    if got.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(DataError::Checksum { path: path.to_path_buf(), got, expected: expected.to_owned() })
    }
}

/// Downloads the four files of `kind` into `dir` (usually [`cache_dir`]), skipping files
/// already there with the right checksum. `log` receives one line per step.
pub fn fetch(kind: DatasetKind, dir: &Path, log: &mut dyn FnMut(&str)) -> Result<IdxFiles> {
    fs::create_dir_all(dir).map_err(|e| io_err(dir, &e))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into();
    for (name, sha) in STANDARD_NAMES.iter().zip(kind.sha256()) {
        let file = format!("{name}.gz");
        let dest = dir.join(&file);
        if dest.is_file() && verify_sha256(&dest, sha).is_ok() {
            log(&format!("{}: present, checksum ok", dest.display()));
            continue;
        }
        let mut last_err = None;
        for mirror in kind.mirrors() {
            let url = format!("{mirror}{file}");
            log(&format!("downloading {url}"));
            match download_verified(&agent, &url, &dest, sha) {
                Ok(()) => {
                    last_err = None;
                    break;
                }
                Err(e) => {
                    log(&format!("  failed: {e}"));
                    let offline =
                        matches!(&e, DataError::Fetch { msg, .. } if msg.starts_with("network:"));
                    last_err = Some(e);
                    if offline && mirror == &kind.mirrors()[0] {
                        // A DNS or connection failure on the first mirror: try the next once,
                        // it fails as fast when the machine is offline.
                        continue;
                    }
                }
            }
        }
        if let Some(e) = last_err {
            return Err(match e {
                DataError::Fetch { url, msg } => DataError::Fetch {
                    url,
                    msg: format!(
                        "{msg}; instead, {}",
                        not_found_hint(kind).replace(&format!(", or run `lenet fetch {kind}`"), "")
                    ),
                },
                other => other,
            });
        }
    }
    IdxFiles::find(dir)
}

/// Downloads `url` to a temporary file beside `dest`, checks its SHA-256, renames it.
fn download_verified(agent: &ureq::Agent, url: &str, dest: &Path, sha: &str) -> Result<()> {
    let fetch_err = |msg: String| DataError::Fetch { url: url.to_owned(), msg };
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::StatusCode(code) => fetch_err(format!("HTTP status {code}")),
        other => fetch_err(format!("network: {other}")),
    })?;
    let tmp = dest.with_extension("gz.part");
    let result = (|| {
        let mut out = fs::File::create(&tmp).map_err(|e| io_err(&tmp, &e))?;
        let mut body = response.into_body().into_reader().take(MAX_DOWNLOAD_BYTES + 1);
        let n =
            std::io::copy(&mut body, &mut out).map_err(|e| fetch_err(format!("network: {e}")))?;
        if n > MAX_DOWNLOAD_BYTES {
            return Err(fetch_err(format!("larger than {MAX_DOWNLOAD_BYTES} bytes")));
        }
        out.flush().and_then(|()| out.sync_all()).map_err(|e| io_err(&tmp, &e))?;
        verify_sha256(&tmp, sha)?;
        fs::rename(&tmp, dest).map_err(|e| io_err(dest, &e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
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
    fn sha256_of_known_bytes_and_mismatch() {
        let dir = std::env::temp_dir().join(format!("convkit-sha-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("abc");
        fs::write(&f, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_file(&f).unwrap(), abc);
        verify_sha256(&f, &abc.to_uppercase()).unwrap();
        let err = verify_sha256(&f, &"0".repeat(64)).unwrap_err();
        assert!(matches!(err, DataError::Checksum { .. }), "{err}");
        fs::remove_dir_all(&dir).unwrap();
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
