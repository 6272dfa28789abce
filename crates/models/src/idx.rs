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

use flate2::read::MultiGzDecoder;

use crate::error::{ModelError, Result, invalid, io_err};

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
    parse_idx_images(&bytes).map_err(|msg| ModelError::Idx { path: path.to_path_buf(), msg })
}

/// Reads an IDX label file (magic 2049), raw or gzip (detected from the content).
pub fn read_idx_labels(path: impl AsRef<Path>) -> Result<IdxLabels> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    parse_idx_labels(&bytes).map_err(|msg| ModelError::Idx { path: path.to_path_buf(), msg })
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
    let io = |e: std::io::Error| ModelError::Io { path: path.to_path_buf(), msg: e.to_string() };
    let idx = |msg: String| ModelError::Idx { path: path.to_path_buf(), msg };
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
            return Err(ModelError::MissingFiles { dir: dir.to_path_buf(), missing });
        }
        let [train_images, train_labels, test_images, test_labels] =
            <[PathBuf; 4]>::try_from(found).map_err(|_| ModelError::MissingFiles {
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
            return Err(ModelError::Idx {
                path: ipath.to_path_buf(),
                msg: format!("images are {}x{}, expected {rows}x{cols}", images.rows, images.cols),
            });
        }
        let labels = read_idx_labels(lpath)?;
        if labels.labels.len() != images.count {
            return Err(ModelError::Idx {
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
            return Err(ModelError::Idx {
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
}

/// What [`write_image_folder`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenImageFolder {
    /// The folder, `root/<class dir>/<index>.png`.
    pub root: PathBuf,
    /// The sub-folder of each class, in the order of the IDX labels (see [`class_dir_name`]).
    pub class_dirs: Vec<String>,
    /// Images written per class, in the order of the IDX labels.
    pub counts: Vec<usize>,
}

impl WrittenImageFolder {
    /// Images written in all.
    pub fn total(&self) -> usize {
        self.counts.iter().sum()
    }
}

/// The sub-folder name of a class: each path separator (`/` or `\`) becomes `_`, so
/// Fashion-MNIST's `T-shirt/top` is written as `T-shirt_top`. Empty names, `.`, `..` and names
/// with control characters are refused.
pub fn class_dir_name(name: &str) -> Result<String> {
    if name.is_empty() || name == "." || name == ".." || name.chars().any(char::is_control) {
        return Err(invalid(
            "class name",
            format!("{name:?} cannot name a folder (empty, `.`, `..` or a control character)"),
        ));
    }
    Ok(name.replace(['/', '\\'], "_"))
}

/// Writes the first `limit` examples of `split` (all of them with `None`) as an image folder
/// that [`convkit_data::ImageFolder`] reads: `root/<class dir>/<index>.png`, one 8-bit
/// grayscale PNG per image, `class_names[label]` naming the class (through
/// [`class_dir_name`]) and `index` being the example's position in the split, zero-padded to
/// five digits (more for splits of more than 100,000 images) so that path order is split order.
///
/// Every class gets its folder, even one that the limit leaves empty, so that folders written
/// from the training and test splits list the same classes. `ImageFolder` numbers the classes
/// in sorted folder-name order, so its labels are a permutation of the IDX labels;
/// [`WrittenImageFolder::class_dirs`] maps one to the other.
///
/// `root` must not exist or be an empty folder; otherwise [`ModelError::NotEmpty`] and
/// nothing is written. The images are written (in parallel) into a sibling folder
/// `.<root name>.partial-<process id>` that is renamed to `root` once complete, so `root`
/// either does not exist or holds every image; on an error the partial folder is removed.
/// A label not below `class_names.len()` is an error naming its index.
pub fn write_image_folder(
    split: &IdxSplit,
    class_names: &[&str],
    root: &Path,
    limit: Option<usize>,
) -> Result<WrittenImageFolder> {
    let n = limit.map_or(split.len(), |l| l.min(split.len()));
    let class_dirs: Vec<String> =
        class_names.iter().map(|c| class_dir_name(c)).collect::<Result<_>>()?;
    if class_dirs.is_empty() {
        return Err(invalid("class names", "at least one class is needed"));
    }
    for (i, dir) in class_dirs.iter().enumerate() {
        if let Some(j) = class_dirs[..i].iter().position(|d| d == dir) {
            return Err(invalid(
                "class names",
                format!(
                    "{:?} and {:?} would share the folder {dir:?}",
                    class_names[j], class_names[i]
                ),
            ));
        }
    }
    let labels = &split.labels.labels[..n.min(split.labels.labels.len())];
    if labels.len() < n {
        return Err(invalid(
            "split",
            format!("{} labels for {n} images", split.labels.labels.len()),
        ));
    }
    if let Some((i, &l)) =
        labels.iter().enumerate().find(|&(_, &l)| usize::from(l) >= class_dirs.len())
    {
        return Err(invalid(
            "split",
            format!("label {l} at index {i} is not below the {} class names", class_dirs.len()),
        ));
    }
    let side = |v: usize, what: &str| {
        u32::try_from(v).map_err(|_| invalid("split", format!("{what} {v} does not fit a PNG")))
    };
    let (w, h) = (side(split.images.cols, "width")?, side(split.images.rows, "height")?);

    let name = root.file_name().ok_or_else(|| {
        invalid("image folder", format!("{} does not end in a folder name", root.display()))
    })?;
    if root.exists() {
        let mut entries = std::fs::read_dir(root).map_err(|e| io_err(root, &e))?;
        if entries.next().is_some() {
            return Err(ModelError::NotEmpty { path: root.to_path_buf() });
        }
    }
    let mut partial_name = std::ffi::OsString::from(".");
    partial_name.push(name);
    partial_name.push(format!(".partial-{}", std::process::id()));
    let partial = root.with_file_name(partial_name);
    if partial.exists() {
        // Left by an earlier run of a process with this id that was killed.
        std::fs::remove_dir_all(&partial).map_err(|e| io_err(&partial, &e))?;
    }
    let written = write_pngs(split, labels, &class_dirs, &partial, (w, h)).and_then(|counts| {
        if root.exists() {
            std::fs::remove_dir(root).map_err(|e| io_err(root, &e))?;
        }
        std::fs::rename(&partial, root).map_err(|e| io_err(root, &e))?;
        Ok(counts)
    });
    match written {
        Ok(counts) => Ok(WrittenImageFolder { root: root.to_path_buf(), class_dirs, counts }),
        Err(e) => {
            // Best effort: the error being reported matters more than a failed clean-up.
            let _ = std::fs::remove_dir_all(&partial);
            Err(e)
        }
    }
}

/// Writes `labels.len()` images of `split` under `dir/<class dir>/`, in parallel; the count
/// per class.
fn write_pngs(
    split: &IdxSplit,
    labels: &[u8],
    class_dirs: &[String],
    dir: &Path,
    (w, h): (u32, u32),
) -> Result<Vec<usize>> {
    use rayon::prelude::*;
    for class in class_dirs {
        let d = dir.join(class);
        std::fs::create_dir_all(&d).map_err(|e| io_err(&d, &e))?;
    }
    let digits = labels.len().saturating_sub(1).to_string().len().max(5);
    // One task per file: encoding a PNG and creating its file is coarse enough work for rayon
    // even at 28x28 (Fashion-MNIST's 60,000 training images: 2.8 s on 2 threads).
    labels.par_iter().enumerate().try_for_each(|(i, &label)| {
        let path = dir.join(&class_dirs[usize::from(label)]).join(format!("{i:0digits$}.png"));
        let pixels = split.images.image(i).ok_or_else(|| {
            invalid("split", format!("image {i} is past the {} images", split.images.count))
        })?;
        image::save_buffer_with_format(
            &path,
            pixels,
            w,
            h,
            image::ExtendedColorType::L8,
            image::ImageFormat::Png,
        )
        .map_err(|e| ModelError::Io { path: path.clone(), msg: e.to_string() })
    })?;
    let mut counts = vec![0; class_dirs.len()];
    for &l in labels {
        counts[usize::from(l)] += 1;
    }
    Ok(counts)
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

    fn fresh_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("convkit-idx-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// 7 images of 3x5 (odd sizes), the `k`-th pixel of the split `2k mod 256`, labels cycling
    /// through three classes.
    fn small_split() -> IdxSplit {
        let (count, rows, cols) = (7, 3, 5);
        let pixels = (0..count * rows * cols).map(|v| (v * 2 % 256) as u8).collect();
        let labels = (0..count).map(|i| (i % 3) as u8).collect();
        IdxSplit { images: IdxImages { count, rows, cols, pixels }, labels: IdxLabels { labels } }
    }

    #[test]
    fn writes_an_image_folder_that_image_folder_reads_back_exactly() {
        use convkit_data::{ImageFolder, ImageFolderConfig};
        let split = small_split();
        let root = fresh_dir("write").join("train");
        let names = ["top/shirt", "b", "a"];
        let w = write_image_folder(&split, &names, &root, None).unwrap();
        assert_eq!(w.class_dirs, ["top_shirt", "b", "a"]);
        assert_eq!((w.counts.clone(), w.total()), (vec![3, 2, 2], 7));
        assert!(root.join("top_shirt/00003.png").is_file());
        assert!(root.join("a/00005.png").is_file());
        // No partial folder is left beside it.
        let siblings: Vec<_> = std::fs::read_dir(root.parent().unwrap()).unwrap().collect();
        assert_eq!(siblings.len(), 1);

        let cfg = ImageFolderConfig { size: (3, 5), ..Default::default() };
        let folder = ImageFolder::load(&root, &cfg).unwrap();
        assert_eq!(folder.classes, ["a", "b", "top_shirt"]);
        assert_eq!(folder.images.dims(), [7, 1, 3, 5]);
        // ImageFolder's label is the sorted position; map each back through its file name.
        for (k, path) in folder.paths.iter().enumerate() {
            let i: usize = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
            let idx_label = usize::from(split.labels.labels[i]);
            assert_eq!(folder.classes[folder.labels[k]], w.class_dirs[idx_label]);
            let got = &folder.images.as_slice()[k * 15..(k + 1) * 15];
            let want: Vec<f32> =
                split.images.image(i).unwrap().iter().map(|&v| f32::from(v) / 255.0).collect();
            assert_eq!(got, want.as_slice(), "image {i}");
        }
    }

    #[test]
    fn a_limit_writes_the_first_images_and_every_class_folder() {
        let root = fresh_dir("limit").join("slice");
        let w = write_image_folder(&small_split(), &["x", "y", "z"], &root, Some(2)).unwrap();
        assert_eq!(w.counts, [1, 1, 0]);
        assert!(root.join("z").is_dir());
        assert!(root.join("x/00000.png").is_file() && root.join("y/00001.png").is_file());
        // An empty existing folder is filled; a limit past the end writes everything.
        let empty = fresh_dir("limit-empty");
        let w = write_image_folder(&small_split(), &["x", "y", "z"], &empty, Some(100)).unwrap();
        assert_eq!(w.total(), 7);
    }

    #[test]
    fn write_image_folder_refuses_bad_arguments_without_writing() {
        let parent = fresh_dir("refuse");
        let split = small_split();
        let root = parent.join("out");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("keep.txt"), b"mine").unwrap();
        let e = write_image_folder(&split, &["a", "b", "c"], &root, None).unwrap_err();
        assert!(matches!(e, ModelError::NotEmpty { .. }), "{e}");
        assert!(e.to_string().contains("out: already exists and is not empty"), "{e}");
        assert_eq!(std::fs::read(root.join("keep.txt")).unwrap(), b"mine");

        let fresh = parent.join("fresh");
        let e = write_image_folder(&split, &["a", "b"], &fresh, None).unwrap_err().to_string();
        assert!(e.contains("label 2 at index 2 is not below the 2 class names"), "{e}");
        let e = write_image_folder(&split, &["a/b", "a_b", "c"], &fresh, None).unwrap_err();
        assert!(e.to_string().contains("would share the folder \"a_b\""), "{e}");
        for bad in ["", "..", "tab\there"] {
            let e = write_image_folder(&split, &[bad, "b", "c"], &fresh, None).unwrap_err();
            assert!(e.to_string().contains("cannot name a folder"), "{e}");
        }
        let e = write_image_folder(&split, &[], &fresh, None).unwrap_err().to_string();
        assert!(e.contains("at least one class"), "{e}");
        // Nothing was created for any of the refused calls.
        let entries: Vec<_> =
            std::fs::read_dir(&parent).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(entries, ["out"]);
    }
}
