//! MNIST-format IDX files: the readers are `convkit-data`'s ([`convkit_data::idx`], re-exported
//! here); this module adds [`write_image_folder`], which writes a split as a folder of PNGs by
//! class, the layout of [`convkit_data::ImageFolder`].

use std::path::{Path, PathBuf};

pub use convkit_data::idx::*;

use crate::error::{ModelError, Result, invalid, io_err};

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
