//! Downloading a dataset with SHA-256 checks.
//!
//! [`fetch`] downloads the four `.gz` files of a [`DatasetKind`] from its public mirrors into
//! a directory (usually [`cache_dir`](convkit_models::fetch::cache_dir)): each file goes to a
//! temporary name, is checked against its published SHA-256, and only then renamed, so the
//! cache never holds a partial or corrupt file. Without network it fails within seconds with
//! a message naming the alternatives.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use convkit_models::fetch::{DatasetKind, not_found_hint};
use convkit_models::idx::{IdxFiles, STANDARD_NAMES};
use convkit_models::{ModelError, Result, io_err};
use sha2::{Digest, Sha256};

/// Largest download accepted per file (the biggest, MNIST's training images, is 9.9 MB
/// compressed; Fashion-MNIST's 26 MB).
pub const MAX_DOWNLOAD_BYTES: u64 = 64 << 20;

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
        Err(ModelError::Checksum { path: path.to_path_buf(), got, expected: expected.to_owned() })
    }
}

/// Downloads the four files of `kind` into `dir` (usually [`cache_dir`](convkit_models::fetch::cache_dir)), skipping files
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
                        matches!(&e, ModelError::Fetch { msg, .. } if msg.starts_with("network:"));
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
                ModelError::Fetch { url, msg } => ModelError::Fetch {
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
    Ok(IdxFiles::find(dir)?)
}

/// Downloads `url` to a temporary file beside `dest`, checks its SHA-256, renames it.
fn download_verified(agent: &ureq::Agent, url: &str, dest: &Path, sha: &str) -> Result<()> {
    let fetch_err = |msg: String| ModelError::Fetch { url: url.to_owned(), msg };
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
    fn sha256_of_known_bytes_and_mismatch() {
        let dir = std::env::temp_dir().join(format!("convkit-sha-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("abc");
        fs::write(&f, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_file(&f).unwrap(), abc);
        verify_sha256(&f, &abc.to_uppercase()).unwrap();
        let err = verify_sha256(&f, &"0".repeat(64)).unwrap_err();
        assert!(matches!(err, ModelError::Checksum { .. }), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
