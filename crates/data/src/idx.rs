//! Readers for the IDX files of MNIST and Fashion-MNIST, raw or gzip-compressed.
//!
//! An IDX file is a big-endian header — two zero bytes, a type byte (`0x08` = unsigned byte),
//! the number of dimensions — then one `u32` size per dimension, then the data. Image files
//! have magic `0x00000803` (2051: three dims, count × rows × cols), label files `0x00000801`
//! (2049: one dim, count).
//!
//! Every size is checked before memory is allocated: the header's element count must match the
//! file's length (for gzip files, the uncompressed length recorded in the gzip trailer, and the
//! decoder is capped at that length), so a corrupt or hostile header cannot make the reader
//! allocate gigabytes. Every error names the file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use convkit_tensor::Tensor;
use flate2::read::MultiGzDecoder;

use crate::error::{DataError, Result};
use crate::loader::TensorDataset;

/// Magic number of an IDX file of unsigned-byte images (three dimensions).
pub const IMAGES_MAGIC: u32 = 2051;
/// Magic number of an IDX file of unsigned-byte labels (one dimension).
pub const LABELS_MAGIC: u32 = 2049;
/// Largest file the reader accepts (uncompressed): 1 GiB, far above MNIST's 47 MB.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// A set of grayscale images read from an IDX file: `count` images of `rows × cols` bytes,
/// stored one after the other, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// `count · rows · cols` pixel values, 0 (background) to 255.
    pub pixels: Vec<u8>,
}

impl IdxImages {
    /// The pixels of image `i`, or `None` past the end.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let size = self.rows * self.cols;
        self.pixels.get(i * size..(i + 1) * size)
    }
}

/// Class labels read from an IDX file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxLabels {
    /// One label per example.
    pub labels: Vec<u8>,
}

/// Reads an IDX image file (magic 2051), raw or gzip (detected from the content).
pub fn read_idx_images(path: impl AsRef<Path>) -> Result<IdxImages> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    parse_idx_images(&bytes).map_err(|msg| DataError::Idx { path: path.to_path_buf(), msg })
}

/// Reads an IDX label file (magic 2049), raw or gzip (detected from the content).
pub fn read_idx_labels(path: impl AsRef<Path>) -> Result<IdxLabels> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    parse_idx_labels(&bytes).map_err(|msg| DataError::Idx { path: path.to_path_buf(), msg })
}

/// Parses the uncompressed bytes of an IDX image file.
pub fn parse_idx_images(bytes: &[u8]) -> std::result::Result<IdxImages, String> {
    let dims = parse_header(bytes, IMAGES_MAGIC, 3)?;
    let (count, rows, cols) = (dims[0], dims[1], dims[2]);
    let pixels = body(bytes, 16, &dims)?;
    Ok(IdxImages { count, rows, cols, pixels: pixels.to_vec() })
}

/// Parses the uncompressed bytes of an IDX label file.
pub fn parse_idx_labels(bytes: &[u8]) -> std::result::Result<IdxLabels, String> {
    let dims = parse_header(bytes, LABELS_MAGIC, 1)?;
    let labels = body(bytes, 8, &dims)?;
    Ok(IdxLabels { labels: labels.to_vec() })
}

/// Checks the magic number and reads the dimension sizes.
fn parse_header(bytes: &[u8], magic: u32, rank: usize) -> std::result::Result<Vec<usize>, String> {
    let header_len = 4 + 4 * rank;
    if bytes.len() < header_len {
        return Err(format!(
            "file is {} bytes, shorter than the {header_len}-byte IDX header",
            bytes.len()
        ));
    }
    let word = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let found = word(0);
    if found != magic {
        let what = match found {
            IMAGES_MAGIC => " (an image file)".to_owned(),
            LABELS_MAGIC => " (a label file)".to_owned(),
            _ => String::new(),
        };
        return Err(format!("magic number {found}{what}, expected {magic}"));
    }
    Ok((0..rank).map(|d| word(4 + 4 * d) as usize).collect())
}

/// The data after the header, whose length must equal the product of `dims`.
fn body<'a>(
    bytes: &'a [u8],
    header: usize,
    dims: &[usize],
) -> std::result::Result<&'a [u8], String> {
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("header sizes {dims:?} overflow"))?;
    let got = bytes.len() - header;
    if got != expected {
        return Err(format!(
            "header sizes {dims:?} need {expected} data bytes, the file has {got}{}",
            if got < expected { " (truncated?)" } else { " (trailing bytes)" }
        ));
    }
    Ok(&bytes[header..])
}

/// Reads a whole file, decompressing gzip, with the size checked before allocating.
fn read_file(path: &Path) -> Result<Vec<u8>> {
    let io = |e: std::io::Error| DataError::Io { path: path.to_path_buf(), msg: e.to_string() };
    let idx = |msg: String| DataError::Idx { path: path.to_path_buf(), msg };
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut magic = [0u8; 2];
    let is_gzip = len >= 2 && {
        file.read_exact(&mut magic).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        magic == [0x1f, 0x8b]
    };
    if !is_gzip {
        if len > MAX_FILE_BYTES {
            return Err(idx(format!("{len} bytes is larger than the {MAX_FILE_BYTES}-byte limit")));
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.read_to_end(&mut bytes).map_err(io)?;
        return Ok(bytes);
    }
    // The gzip trailer's last four bytes hold the uncompressed size modulo 2^32: use it to size
    // the buffer, and cap the decoder so a lying trailer cannot grow it without bound.
    if len < 18 {
        return Err(idx(format!("{len} bytes is too short for a gzip file")));
    }
    let mut trailer = [0u8; 4];
    file.seek(SeekFrom::End(-4)).map_err(io)?;
    file.read_exact(&mut trailer).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let isize = u64::from(u32::from_le_bytes(trailer));
    if isize > MAX_FILE_BYTES {
        return Err(idx(format!(
            "gzip trailer says {isize} uncompressed bytes, more than the {MAX_FILE_BYTES}-byte limit"
        )));
    }
    let mut bytes = Vec::with_capacity(isize as usize);
    MultiGzDecoder::new(file)
        .take(isize + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| idx(format!("gzip data is corrupt: {e}")))?;
    if bytes.len() as u64 != isize {
        return Err(idx(format!(
            "gzip data decompresses to {}{} bytes, its trailer says {isize}",
            bytes.len(),
            if bytes.len() as u64 > isize { "+" } else { "" }
        )));
    }
    Ok(bytes)
}

/// The four files of an MNIST-format dataset in a directory, found under their standard names
/// (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
/// `t10k-labels-idx1-ubyte`), each raw or with a `.gz` suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxFiles {
    /// Training images.
    pub train_images: PathBuf,
    /// Training labels.
    pub train_labels: PathBuf,
    /// Test images.
    pub test_images: PathBuf,
    /// Test labels.
    pub test_labels: PathBuf,
}

/// Standard base names of the four files, in the order of [`IdxFiles`]' fields.
pub const STANDARD_NAMES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

impl IdxFiles {
    /// Finds the four files in `dir` (raw preferred over `.gz` when both exist); the error lists
    /// the names that are missing.
    pub fn find(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let mut found = Vec::with_capacity(4);
        let mut missing = Vec::new();
        for name in STANDARD_NAMES {
            let raw = dir.join(name);
            let gz = dir.join(format!("{name}.gz"));
            if raw.is_file() {
                found.push(raw);
            } else if gz.is_file() {
                found.push(gz);
            } else {
                missing.push(format!("{name}[.gz]"));
            }
        }
        if !missing.is_empty() {
            return Err(DataError::MissingFiles { dir: dir.to_path_buf(), missing });
        }
        let [train_images, train_labels, test_images, test_labels] =
            <[PathBuf; 4]>::try_from(found).map_err(|_| DataError::MissingFiles {
                dir: dir.to_path_buf(),
                missing: Vec::new(),
            })?;
        Ok(Self { train_images, train_labels, test_images, test_labels })
    }
}

/// Images and labels of one split, checked to belong together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxSplit {
    /// The images.
    pub images: IdxImages,
    /// One label per image.
    pub labels: IdxLabels,
}

impl IdxSplit {
    /// Reads an image file and a label file and checks that the counts are equal, that the
    /// images are `rows × cols`, and that every label is below `classes`.
    pub fn read(
        images: impl AsRef<Path>,
        labels: impl AsRef<Path>,
        rows: usize,
        cols: usize,
        classes: u8,
    ) -> Result<Self> {
        let (ipath, lpath) = (images.as_ref(), labels.as_ref());
        let images = read_idx_images(ipath)?;
        if (images.rows, images.cols) != (rows, cols) {
            return Err(DataError::Idx {
                path: ipath.to_path_buf(),
                msg: format!("images are {}x{}, expected {rows}x{cols}", images.rows, images.cols),
            });
        }
        let labels = read_idx_labels(lpath)?;
        if labels.labels.len() != images.count {
            return Err(DataError::Idx {
                path: lpath.to_path_buf(),
                msg: format!(
                    "{} labels for {} images in {}",
                    labels.labels.len(),
                    images.count,
                    ipath.display()
                ),
            });
        }
        if let Some((i, &l)) = labels.labels.iter().enumerate().find(|&(_, &l)| l >= classes) {
            return Err(DataError::Idx {
                path: lpath.to_path_buf(),
                msg: format!("label {l} at index {i} is not below the {classes} classes"),
            });
        }
        Ok(Self { images, labels })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.images.count
    }

    /// Whether the split has no examples.
    pub fn is_empty(&self) -> bool {
        self.images.count == 0
    }

    /// The split as a [`TensorDataset`] for any model: images `[n, 1, rows, cols]` with
    /// values `p / 255` in `[0, 1]`, labels below `classes`.
    pub fn to_dataset(&self, classes: usize) -> Result<TensorDataset> {
        let IdxImages { count, rows, cols, ref pixels } = self.images;
        let values = pixels.iter().map(|&p| f32::from(p) / 255.0).collect();
        let images = Tensor::from_vec(&[count, 1, rows, cols], values)?;
        let labels = self.labels.labels.iter().map(|&l| usize::from(l)).collect();
        TensorDataset::new(images, labels, classes)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    /// Builds the bytes of an IDX file with the given magic, dims and data.
    pub(crate) fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn tmp(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("convkit-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn parses_raw_and_gzip() {
        let pixels: Vec<u8> = (0..2 * 3 * 4).map(|v| v as u8).collect();
        let raw = idx_bytes(IMAGES_MAGIC, &[2, 3, 4], &pixels);
        for (name, bytes) in [("img", raw.clone()), ("img.gz", gzip(&raw))] {
            let im = read_idx_images(tmp(name, &bytes)).unwrap();
            assert_eq!((im.count, im.rows, im.cols), (2, 3, 4));
            assert_eq!(im.image(1).unwrap(), &pixels[12..24]);
            assert!(im.image(2).is_none());
        }
        let labels = idx_bytes(LABELS_MAGIC, &[3], &[7, 0, 9]);
        let l = read_idx_labels(tmp("lab.gz", &gzip(&labels))).unwrap();
        assert_eq!(l.labels, [7, 0, 9]);
    }

    #[test]
    fn rejects_bad_files_with_their_name() {
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("short", vec![0, 0, 8], "shorter than the 16-byte IDX header"),
            ("labels-as-images", idx_bytes(LABELS_MAGIC, &[1, 1, 1], &[0]), "(a label file)"),
            ("truncated", idx_bytes(IMAGES_MAGIC, &[2, 2, 2], &[0; 7]), "truncated"),
            ("trailing", idx_bytes(IMAGES_MAGIC, &[1, 2, 2], &[0; 5]), "trailing"),
            // A header claiming 4 billion × 4 billion × 4 billion pixels must not allocate.
            ("huge", idx_bytes(IMAGES_MAGIC, &[u32::MAX, u32::MAX, u32::MAX], &[0; 4]), "overflow"),
            ("huge2", idx_bytes(IMAGES_MAGIC, &[60000, 28, u32::MAX], &[]), "need"),
        ];
        for (name, bytes, want) in cases {
            let p = tmp(name, &bytes);
            let e = read_idx_images(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{name}: {e}");
            assert!(e.contains(name), "{name}: error does not name the file: {e}");
        }
    }

    #[test]
    fn rejects_corrupt_gzip() {
        let raw = idx_bytes(IMAGES_MAGIC, &[1, 2, 2], &[1, 2, 3, 4]);
        let mut gz = gzip(&raw);
        // A trailer that lies about the size.
        let n = gz.len();
        gz[n - 4..].copy_from_slice(&(1u32 << 31).to_le_bytes());
        let e = read_idx_images(tmp("liar.gz", &gz)).unwrap_err().to_string();
        assert!(e.contains("limit"), "{e}");
        gz[n - 4..].copy_from_slice(&3u32.to_le_bytes());
        let e = read_idx_images(tmp("liar2.gz", &gz)).unwrap_err().to_string();
        assert!(e.contains("trailer says 3"), "{e}");
        // Damaged deflate data.
        let mut bad = gzip(&raw);
        for b in bad.iter_mut().skip(10).take(6) {
            *b ^= 0xff;
        }
        let e = read_idx_images(tmp("bad.gz", &bad)).unwrap_err().to_string();
        assert!(e.contains("bad.gz"), "{e}");
        let e = read_idx_images(tmp("tiny.gz", &[0x1f, 0x8b, 0])).unwrap_err().to_string();
        assert!(e.contains("too short"), "{e}");
    }

    #[test]
    fn split_checks_counts_sizes_and_labels() {
        let imgs = tmp("s-img", &idx_bytes(IMAGES_MAGIC, &[2, 2, 2], &[0; 8]));
        let good = tmp("s-lab", &idx_bytes(LABELS_MAGIC, &[2], &[1, 9]));
        let s = IdxSplit::read(&imgs, &good, 2, 2, 10).unwrap();
        assert_eq!(s.len(), 2);
        let few = tmp("s-few", &idx_bytes(LABELS_MAGIC, &[1], &[1]));
        let e = IdxSplit::read(&imgs, &few, 2, 2, 10).unwrap_err().to_string();
        assert!(e.contains("1 labels for 2 images"), "{e}");
        let e = IdxSplit::read(&imgs, &good, 28, 28, 10).unwrap_err().to_string();
        assert!(e.contains("images are 2x2, expected 28x28"), "{e}");
        let bad = tmp("s-bad", &idx_bytes(LABELS_MAGIC, &[2], &[1, 10]));
        let e = IdxSplit::read(&imgs, &bad, 2, 2, 10).unwrap_err().to_string();
        assert!(e.contains("label 10 at index 1"), "{e}");
        let e = IdxSplit::read(imgs.with_file_name("nope"), &good, 2, 2, 10).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn finds_standard_files() {
        let dir = std::env::temp_dir().join(format!("convkit-idx-find-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (i, name) in STANDARD_NAMES.iter().enumerate() {
            let file = if i % 2 == 0 { format!("{name}.gz") } else { (*name).to_owned() };
            if i < 3 {
                std::fs::write(dir.join(file), b"x").unwrap();
            }
        }
        let e = IdxFiles::find(&dir).unwrap_err().to_string();
        assert!(e.contains("t10k-labels-idx1-ubyte[.gz]"), "{e}");
        std::fs::write(dir.join("t10k-labels-idx1-ubyte"), b"x").unwrap();
        let f = IdxFiles::find(&dir).unwrap();
        assert!(f.train_images.ends_with("train-images-idx3-ubyte.gz"));
        assert!(f.test_labels.ends_with("t10k-labels-idx1-ubyte"));
    }

    #[test]
    fn a_split_becomes_a_dataset_of_unit_range_images() {
        use crate::loader::Dataset;
        let images = IdxImages { count: 2, rows: 1, cols: 3, pixels: vec![0, 51, 255, 1, 2, 3] };
        let split = IdxSplit { images, labels: IdxLabels { labels: vec![2, 0] } };
        let d = split.to_dataset(3).unwrap();
        assert_eq!(d.images().dims(), [2, 1, 1, 3]);
        assert_eq!(d.images().as_slice()[..3], [0.0, 0.2, 1.0]);
        assert_eq!(d.labels(), [2, 0]);
        assert_eq!(d.len(), 2);
        assert!(split.to_dataset(2).unwrap_err().to_string().contains("label 2"));
    }
}
