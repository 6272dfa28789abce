//! ImageFolder on folders written here: layout and order, resizing, grayscale and RGB,
//! corrupt files and decompression bombs (errors naming the file, or skipped), and
//! statistics.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

use convkit_data::{BadFile, DataError, ImageFolder, ImageFolderConfig};
use image::{GrayImage, Luma, Rgb, RgbImage};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("convkit-data-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn gray(path: &Path, w: u32, h: u32, value: u8) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    GrayImage::from_pixel(w, h, Luma([value])).save(path).unwrap();
}

/// CRC-32 (IEEE) of PNG chunks, bit by bit.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn classes_sorted_files_in_path_order_resized_and_scaled() {
    let root = scratch("layout");
    gray(&root.join("zebra/b.png"), 28, 28, 255);
    gray(&root.join("zebra/a.png"), 40, 30, 0);
    gray(&root.join("apple/nested/deep/x.PNG"), 10, 10, 51);
    fs::write(root.join("apple/notes.txt"), b"not an image").unwrap();
    fs::write(root.join("stray.png"), b"files in the root are not a class").unwrap();
    let mut jpg = Vec::new();
    RgbImage::from_pixel(16, 16, Rgb([200, 200, 200]))
        .write_to(&mut std::io::Cursor::new(&mut jpg), image::ImageFormat::Jpeg)
        .unwrap();
    fs::create_dir_all(root.join("mango")).unwrap();
    fs::write(root.join("mango/p.jpeg"), &jpg).unwrap();

    let d = ImageFolder::load(&root, &ImageFolderConfig::default()).unwrap();
    assert_eq!(d.classes, ["apple", "mango", "zebra"]);
    assert_eq!(d.labels, [0, 1, 2, 2]);
    let names: Vec<_> = d.paths.iter().map(|p| p.file_name().unwrap().to_str().unwrap()).collect();
    assert_eq!(names, ["x.PNG", "p.jpeg", "a.png", "b.png"]);
    assert_eq!(d.images.dims(), &[4, 1, 28, 28]);
    let x = d.images.as_slice();
    assert!(x[..784].iter().all(|&v| (v - 0.2).abs() < 1e-6), "51/255 after resizing");
    assert!(x[784..2 * 784].iter().all(|&v| (v - 200.0 / 255.0).abs() < 0.02), "JPEG grey");
    assert!(x[2 * 784..3 * 784].iter().all(|&v| v == 0.0));
    assert!(x[3 * 784..].iter().all(|&v| v == 1.0));
    assert!(d.skipped.is_empty());

    // The same folder gives the same dataset with any number of threads.
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let again = one.install(|| ImageFolder::load(&root, &ImageFolderConfig::default()).unwrap());
    assert_eq!(again.images.as_slice(), d.images.as_slice());
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn rgb_images_are_planar_channels() {
    let root = scratch("rgb");
    fs::create_dir_all(root.join("red")).unwrap();
    RgbImage::from_pixel(8, 8, Rgb([255, 0, 51])).save(root.join("red/r.png")).unwrap();
    let cfg = ImageFolderConfig { size: (8, 8), grayscale: false, ..Default::default() };
    let mut d = ImageFolder::load(&root, &cfg).unwrap();
    assert_eq!(d.images.dims(), &[1, 3, 8, 8]);
    let x = d.images.as_slice();
    assert!(x[..64].iter().all(|&v| v == 1.0) && x[64..128].iter().all(|&v| v == 0.0));
    assert!(x[128..].iter().all(|&v| (v - 0.2).abs() < 1e-6));
    let (mean, std) = d.channel_stats();
    assert_eq!(mean.len(), 3);
    assert!((mean[0] - 1.0).abs() < 1e-6 && std[0].abs() < 1e-6);
    d.normalize(&[0.5, 0.5, 0.5], &[0.25, 0.5, 1.0]).unwrap();
    assert_eq!(d.images.as_slice()[0], 2.0);
    assert_eq!(d.images.as_slice()[64], -1.0);
    let e = d.normalize(&[0.0], &[1.0]).unwrap_err().to_string();
    assert!(e.contains("3 means"), "{e}");
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn bad_files_are_errors_naming_them_or_skipped_when_asked() {
    let root = scratch("bad");
    gray(&root.join("a/good.png"), 28, 28, 10);
    fs::write(root.join("a/truncated.png"), &fs::read(root.join("a/good.png")).unwrap()[..40])
        .unwrap();
    fs::create_dir_all(root.join("b")).unwrap();
    fs::write(root.join("b/text.jpg"), b"GIF89a this is not a jpeg").unwrap();
    // A decompression bomb: a valid PNG whose header declares 100000 x 100000 pixels.
    let mut png = Vec::new();
    GrayImage::from_pixel(4, 4, Luma([1]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    fs::create_dir_all(root.join("c")).unwrap();
    fs::write(root.join("c/bomb.png"), &png).unwrap();
    gray(&root.join("c/fine.png"), 28, 28, 20);

    let e = ImageFolder::load(&root, &ImageFolderConfig::default()).unwrap_err();
    assert!(matches!(e, DataError::Image { .. }), "{e}");
    assert!(e.to_string().contains("truncated.png"), "the first bad file in path order: {e}");

    let cfg = ImageFolderConfig { on_bad_file: BadFile::Skip, ..Default::default() };
    let d = ImageFolder::load(&root, &cfg).unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(d.labels, [0, 2]);
    let skipped: Vec<_> =
        d.skipped.iter().map(|(p, _)| p.file_name().unwrap().to_str().unwrap()).collect();
    assert_eq!(skipped, ["truncated.png", "text.jpg", "bomb.png"]);
    let bomb = &d.skipped[2].1;
    assert!(bomb.contains("limit") || bomb.contains("dimension"), "{bomb}");
    assert!(d.skipped[1].1.contains("not a PNG or JPEG"), "{}", d.skipped[1].1);
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn missing_or_empty_folders_and_bad_options_are_errors() {
    let root = scratch("empty");
    let e = ImageFolder::load(&root, &ImageFolderConfig::default()).unwrap_err().to_string();
    assert!(e.contains("no class folders"), "{e}");
    fs::create_dir_all(root.join("only/sub")).unwrap();
    fs::write(root.join("only/readme.md"), b"# nothing").unwrap();
    let e = ImageFolder::load(&root, &ImageFolderConfig::default()).unwrap_err().to_string();
    assert!(e.contains("no .png, .jpg or .jpeg files") && e.contains("1 class folders"), "{e}");
    let missing = root.join("does-not-exist");
    let e = ImageFolder::load(&missing, &ImageFolderConfig::default()).unwrap_err().to_string();
    assert!(e.contains("does-not-exist"), "{e}");
    let cfg = ImageFolderConfig { size: (0, 28), ..Default::default() };
    assert!(ImageFolder::load(&root, &cfg).is_err());
    fs::remove_dir_all(&root).unwrap();
}
