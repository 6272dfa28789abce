//! safetensors I/O: named maps of F32 tensors to and from bytes or files.
//!
//! The format (<https://github.com/huggingface/safetensors>) is an 8-byte little-endian
//! header length, a JSON header (`{"name": {"dtype": "F32", "shape": [..],
//! "data_offsets": [start, end]}, "__metadata__": {..}}`) and the raw little-endian data. Parsing
//! and validation are the `safetensors` crate's: offsets must tile the data exactly and match
//! each shape, so a truncated or inconsistent file is an error before any tensor is allocated.
//! Only `F32` is accepted; any other dtype is an error naming the tensor and its dtype.
//!
//! Writes to a path are atomic: the bytes go to a temporary file in the same directory, which
//! is flushed to disk (`fsync`) and then renamed over the target, so a crash leaves either the
//! old file or the new one, never a torn mix.
//!
//! ```
//! use std::collections::BTreeMap;
//! use convkit_tensor::{Tensor, from_safetensors_bytes, to_safetensors_bytes};
//! let mut params = BTreeMap::new();
//! params.insert("fc.weight".to_string(), Tensor::ones(&[2, 3]));
//! params.insert("fc.bias".to_string(), Tensor::zeros(&[2]));
//! let bytes = to_safetensors_bytes(&params, None)?;
//! assert_eq!(from_safetensors_bytes(&bytes)?, params);
//! # Ok::<(), convkit_tensor::TensorError>(())
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Result, TensorError};
use crate::tensor::Tensor;

/// The little-endian bytes of `data` — a zero-copy `bytemuck` view on little-endian targets.
fn le_bytes(data: &[f32]) -> Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        Cow::Borrowed(bytemuck::cast_slice(data))
    } else {
        Cow::Owned(data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

/// The `f32`s of little-endian `bytes` (length a multiple of 4, checked by the caller).
fn f32s_from_le(bytes: &[u8]) -> Vec<f32> {
    if cfg!(target_endian = "little") {
        // Zero-copy view when the buffer happens to be 4-byte aligned; the data section of a
        // safetensors file often is not (the header length is arbitrary), so fall back to
        // an aligned copy.
        match bytemuck::try_cast_slice::<u8, f32>(bytes) {
            Ok(view) => view.to_vec(),
            Err(_) => bytemuck::pod_collect_to_vec::<u8, f32>(bytes),
        }
    } else {
        bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }
}

/// Serializes named tensors (any iterator of `(name, &Tensor)`, e.g. `&BTreeMap<String,
/// Tensor>`) with optional string metadata to safetensors bytes. Errors on a duplicate name
/// or the reserved name `__metadata__`.
///
/// ```
/// use convkit_tensor::{Tensor, to_safetensors_bytes};
/// let w = Tensor::ones(&[2]);
/// let bytes = to_safetensors_bytes([("w", &w)], None)?;
/// assert_eq!(&bytes[8..9], b"{");
/// # Ok::<(), convkit_tensor::TensorError>(())
/// ```
pub fn to_safetensors_bytes<'a, I, S>(
    tensors: I,
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>>
where
    I: IntoIterator<Item = (S, &'a Tensor)>,
    S: AsRef<str>,
{
    let mut seen = BTreeSet::new();
    let mut views = Vec::new();
    for (name, tensor) in tensors {
        let name = name.as_ref().to_string();
        if name == "__metadata__" {
            return Err(TensorError::Safetensors(
                "`__metadata__` is reserved and cannot name a tensor".to_string(),
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(TensorError::Safetensors(format!("duplicate tensor name `{name}`")));
        }
        views.push((name, tensor));
    }
    let bytes: Vec<(String, Cow<'_, [u8]>, &Tensor)> =
        views.into_iter().map(|(name, t)| (name, le_bytes(t.as_slice()), t)).collect();
    let mut st_views = Vec::with_capacity(bytes.len());
    for (name, data, t) in &bytes {
        let view = TensorView::new(Dtype::F32, t.dims().to_vec(), data).map_err(|e| {
            TensorError::Safetensors(format!("tensor `{name}` {:?}: {e}", t.dims()))
        })?;
        st_views.push((name.clone(), view));
    }
    safetensors::serialize(st_views, metadata).map_err(|e| TensorError::Safetensors(e.to_string()))
}

/// Parses safetensors bytes into named tensors and the header metadata (empty when the file
/// has none). Every tensor must be F32.
///
/// ```
/// use std::collections::HashMap;
/// use convkit_tensor::{Tensor, from_safetensors_bytes_with_metadata, to_safetensors_bytes};
/// let meta = HashMap::from([("epoch".to_string(), "3".to_string())]);
/// let bytes = to_safetensors_bytes([("w", &Tensor::ones(&[1]))], Some(meta.clone()))?;
/// let (tensors, got) = from_safetensors_bytes_with_metadata(&bytes)?;
/// assert_eq!(got, meta);
/// assert_eq!(tensors["w"].as_slice(), &[1.0]);
/// # Ok::<(), convkit_tensor::TensorError>(())
/// ```
pub fn from_safetensors_bytes_with_metadata(
    bytes: &[u8],
) -> Result<(BTreeMap<String, Tensor>, HashMap<String, String>)> {
    // One pass over the header: `read_metadata` parses the JSON and checks that the offsets
    // tile the data section exactly and agree with every shape and dtype.
    let (header_len, header) = SafeTensors::read_metadata(bytes).map_err(|e| {
        TensorError::Safetensors(format!("cannot parse a buffer of {} bytes: {e}", bytes.len()))
    })?;
    let corrupt = |name: &str| {
        TensorError::Safetensors(format!("tensor `{name}`: data offsets outside the buffer"))
    };
    let data = bytes.get(8 + header_len..).ok_or_else(|| corrupt(""))?;
    let mut out = BTreeMap::new();
    // In offset order, so the first bad tensor reported is the same on every run.
    for name in header.offset_keys() {
        let info = header.info(&name).ok_or_else(|| corrupt(&name))?;
        if info.dtype != Dtype::F32 {
            return Err(TensorError::UnsupportedDtype {
                name,
                dtype: format!("{:?}", info.dtype),
                shape: info.shape.clone(),
            });
        }
        let (start, end) = info.data_offsets;
        let raw = data.get(start..end).ok_or_else(|| corrupt(&name))?;
        let tensor = Tensor::from_vec(&info.shape, f32s_from_le(raw))?;
        out.insert(name, tensor);
    }
    Ok((out, header.metadata().clone().unwrap_or_default()))
}

/// Parses safetensors bytes into named tensors; see [`from_safetensors_bytes_with_metadata`].
///
/// ```
/// use convkit_tensor::from_safetensors_bytes;
/// let e = from_safetensors_bytes(b"\x02\x00\x00").unwrap_err();
/// assert!(e.to_string().starts_with("safetensors: cannot parse a buffer of 3 bytes"));
/// ```
pub fn from_safetensors_bytes(bytes: &[u8]) -> Result<BTreeMap<String, Tensor>> {
    Ok(from_safetensors_bytes_with_metadata(bytes)?.0)
}

/// Writes named tensors and optional metadata to a safetensors file, atomically (temporary
/// file in the same directory, `fsync`, rename). The whole file is built in memory first.
///
/// ```
/// use std::collections::BTreeMap;
/// use convkit_tensor::{Tensor, load_safetensors, save_safetensors};
/// let path = std::env::temp_dir().join(format!("convkit-doc-{}.safetensors", std::process::id()));
/// let params = BTreeMap::from([("w".to_string(), Tensor::ones(&[2, 2]))]);
/// save_safetensors(&path, &params, None)?;
/// assert_eq!(load_safetensors(&path)?, params);
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), convkit_tensor::TensorError>(())
/// ```
pub fn save_safetensors<'a, I, S>(
    path: impl AsRef<Path>,
    tensors: I,
    metadata: Option<HashMap<String, String>>,
) -> Result<()>
where
    I: IntoIterator<Item = (S, &'a Tensor)>,
    S: AsRef<str>,
{
    let bytes = to_safetensors_bytes(tensors, metadata)?;
    write_atomic(path.as_ref(), &bytes)
}

/// Reads a safetensors file into named tensors and its metadata.
///
/// ```
/// use convkit_tensor::load_safetensors_with_metadata;
/// let e = load_safetensors_with_metadata("/nonexistent/model.safetensors").unwrap_err();
/// assert!(e.to_string().starts_with("reading /nonexistent/model.safetensors"));
/// ```
pub fn load_safetensors_with_metadata(
    path: impl AsRef<Path>,
) -> Result<(BTreeMap<String, Tensor>, HashMap<String, String>)> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(|e| io_error("reading", path, &e))?;
    from_safetensors_bytes_with_metadata(&bytes).map_err(|e| match e {
        TensorError::Safetensors(msg) => {
            TensorError::Safetensors(format!("{}: {msg}", path.display()))
        }
        other => other,
    })
}

/// Reads a safetensors file into named tensors; see [`load_safetensors_with_metadata`].
///
/// ```no_run
/// let params = convkit_tensor::load_safetensors("lenet5.safetensors")?;
/// println!("{:?}", params.get("conv1.weight").map(|t| t.dims().to_vec()));
/// # Ok::<(), convkit_tensor::TensorError>(())
/// ```
pub fn load_safetensors(path: impl AsRef<Path>) -> Result<BTreeMap<String, Tensor>> {
    Ok(load_safetensors_with_metadata(path)?.0)
}

fn io_error(op: &'static str, path: &Path, e: &std::io::Error) -> TensorError {
    TensorError::Io { op, path: path.display().to_string(), msg: e.to_string() }
}

/// Writes `bytes` to `path` atomically: a temporary sibling, `fsync`, rename (and a sync of
/// the directory on Unix). A crash leaves either the old file or the new one; on error the
/// temporary is removed. Shared by every crate that saves files.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| TensorError::Io {
        op: "writing",
        path: path.display().to_string(),
        msg: "the path has no file name".to_string(),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io_error("writing", &tmp, &e))?;
        file.write_all(bytes).map_err(|e| io_error("writing", &tmp, &e))?;
        file.sync_all().map_err(|e| io_error("writing", &tmp, &e))?;
        drop(file);
        fs::rename(&tmp, path).map_err(|e| io_error("writing", path, &e))
    })();
    if result.is_err() {
        // Best effort: do not leave a stray temporary behind; the original error matters more.
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Persist the rename itself (the directory entry) where the platform allows it.
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        d.sync_all().map_err(|e| io_error("writing", dir, &e))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unaligned_buffer_loads() {
        let t = Tensor::from_vec(&[3], vec![1.5, -2.0, f32::MIN_POSITIVE]).unwrap();
        let bytes = to_safetensors_bytes([("x", &t)], None).unwrap();
        // Copy into a buffer shifted by one byte so the data section is misaligned.
        let mut shifted = vec![0u8; bytes.len() + 1];
        shifted[1..].copy_from_slice(&bytes);
        let got = from_safetensors_bytes(&shifted[1..]).unwrap();
        assert_eq!(got["x"], t);
    }

    #[test]
    fn reserved_and_duplicate_names() {
        let t = Tensor::ones(&[1]);
        assert!(to_safetensors_bytes([("__metadata__", &t)], None).is_err());
        let e = to_safetensors_bytes([("a", &t), ("a", &t)], None).unwrap_err();
        assert_eq!(e.to_string(), "safetensors: duplicate tensor name `a`");
    }

    #[test]
    fn file_without_name_is_an_error() {
        let e = save_safetensors("/", [("a", &Tensor::ones(&[1]))], None).unwrap_err();
        assert!(e.to_string().contains("no file name"), "{e}");
    }
}
