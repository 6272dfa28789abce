//! `lenet visualize` end to end: the binary run on the PyTorch-trained fixture weights with an
//! IDX image and with a PNG picture; every PNG it writes must decode with the documented size,
//! a missing metrics file must be reported and skipped, and bad input must fail clearly.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use convkit_cli::visualize::{CURVES_SIZE, feature_grid_size};
use image::{Rgb, RgbImage};

const BIN: &str = env!("CARGO_BIN_EXE_lenet");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures").join(name)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("convkit-vis-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn lenet(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Checks that `dir/name` is a PNG of `size`.
fn check_png(dir: &Path, name: &str, size: (u32, u32)) {
    let path = dir.join(name);
    let img = image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!((img.width(), img.height()), size, "{name}");
}

fn check_feature_maps(out: &Path) {
    check_png(out, "conv1_filters.png", (388, 68));
    check_png(out, "input.png", (224, 224));
    for (stage, c, side) in
        [("conv1", 6, 28), ("pool1", 6, 14), ("conv2", 16, 10), ("pool2", 16, 5)]
    {
        check_png(out, &format!("feature_maps_{stage}.png"), feature_grid_size(c, side));
    }
}

/// Three 28x28 images in an IDX file.
fn write_idx(path: &Path) {
    let mut v = 2051u32.to_be_bytes().to_vec();
    for d in [3u32, 28, 28] {
        v.extend_from_slice(&d.to_be_bytes());
    }
    for i in 0..3 * 784 {
        let (r, c) = ((i % 784) / 28, i % 28);
        v.push(if (6..22).contains(&r) && (8..20).contains(&c) { 220 } else { 0 });
    }
    fs::write(path, v).unwrap();
}

#[test]
fn idx_input_without_metrics_writes_maps_and_skips_the_curves() {
    let dir = scratch("idx");
    let idx = dir.join("images-idx3-ubyte");
    write_idx(&idx);
    let out = dir.join("out");
    let weights = fixture("lenet_fashion_torch.safetensors");
    let o = lenet(&[
        "visualize",
        "--weights",
        weights.to_str().unwrap(),
        "--idx",
        idx.to_str().unwrap(),
        "--index",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    check_feature_maps(&out);
    assert!(text(&o).contains("training curves: skipped, no metrics file"), "{}", text(&o));
    assert!(!out.join("training_curves.png").exists());

    let o = lenet(&[
        "visualize",
        "--weights",
        weights.to_str().unwrap(),
        "--idx",
        idx.to_str().unwrap(),
        "--index",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("index 3 out of range (3 images)"), "{}", text(&o));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn png_input_with_metrics_draws_the_curves() {
    let dir = scratch("png");
    let weights = dir.join("model.safetensors");
    fs::copy(fixture("lenet_fashion_torch.safetensors"), &weights).unwrap();
    let mut metrics = String::new();
    for e in 1..=5 {
        let f = f64::from(e);
        metrics += &format!(
            "{{\"epoch\":{e},\"train_loss\":{:.4},\"train_acc\":{:.4},\"test_acc\":{:.4},\"seconds\":1.0,\"images_per_sec\":1.0,\"lr\":0.01}}\n",
            0.9 / f,
            0.7 + 0.04 * f,
            0.72 + 0.03 * f
        );
    }
    fs::write(dir.join("model.metrics.jsonl"), metrics).unwrap();
    // A dark diagonal stroke on white, 120x90.
    let mut pic = RgbImage::from_pixel(120, 90, Rgb([255, 255, 255]));
    for t in 0..80 {
        for d in 0..6 {
            pic.put_pixel(20 + t, 5 + t + d / 2, Rgb([0, 0, 0]));
        }
    }
    let png = dir.join("stroke.png");
    pic.save(&png).unwrap();
    let out = dir.join("out");
    let o = lenet(&[
        "visualize",
        "--weights",
        weights.to_str().unwrap(),
        "--image",
        png.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    check_feature_maps(&out);
    if text(&o).contains("no TrueType font found") {
        eprintln!("skipping the curves check: {}", text(&o));
    } else {
        check_png(&out, "training_curves.png", CURVES_SIZE);
    }

    let o = lenet(&[
        "visualize",
        "--weights",
        weights.to_str().unwrap(),
        "--image",
        weights.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("not a PNG or JPEG"), "{}", text(&o));
    fs::remove_dir_all(&dir).unwrap();
}
