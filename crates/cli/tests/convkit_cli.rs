//! The `convkit` binary end to end on tiny data written here — an image folder of 12x12 PNGs
//! in three classes and four IDX files: training with JSON lines, the checkpoint's metadata,
//! bit-exact resume, eval, predict, info for both zoo models, and a clear error with a
//! non-zero exit for each kind of bad input.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use convkit_tensor::{Rng, load_safetensors_with_metadata, save_safetensors};

const BIN: &str = env!("CARGO_BIN_EXE_convkit");

/// The classes of the image folder, sorted by name as the folder's classes are.
const CLASSES: [&str; 3] = ["across", "corner", "down"];

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("convkit-tool-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `side`x`side` picture of `class`: a bright horizontal bar (`across`), a vertical bar
/// (`down`) or a bright block in the top-left corner (`corner`), on dark noise; `rng` moves
/// the shape a little and draws the noise (no noise without one).
fn picture(class: &str, side: u32, mut rng: Option<&mut Rng>) -> image::GrayImage {
    // A random draw below `n`, or `clean` for a picture without noise.
    let mut draw = |n: usize, clean: usize| rng.as_deref_mut().map_or(clean, |r| r.below(n));
    let unit = side / 12;
    let at = (4 + draw(4, 2) as u32) * unit;
    let mut img = image::GrayImage::new(side, side);
    for (x, y, p) in img.enumerate_pixels_mut() {
        let on = match class {
            "across" => (at..at + 2 * unit).contains(&y),
            "down" => (at..at + 2 * unit).contains(&x),
            _ => x < 4 * unit && y < 4 * unit,
        };
        p.0 = [if on { 200 + draw(56, 55) } else { draw(60, 0) } as u8];
    }
    img
}

/// `root/{train,test}/<class>/NN.png`: `n_train` and `n_test` 12x12 pictures per class.
fn write_image_folder(root: &Path, n_train: usize, n_test: usize) {
    let mut rng = Rng::new(7);
    for (split, n) in [("train", n_train), ("test", n_test)] {
        for class in CLASSES {
            let dir = root.join(split).join(class);
            fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                picture(class, 12, Some(&mut rng)).save(dir.join(format!("{i:02}.png"))).unwrap();
            }
        }
    }
}

fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

/// 28x28 images of three classes (labels 0–2): a bright bar at row 4, 12 or 20, on noise.
fn idx_split(n: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng::new(seed);
    let (mut pixels, mut labels) = (vec![0u8; n * 784], vec![0u8; n]);
    for i in 0..n {
        let c = i % 3;
        labels[i] = c as u8;
        let img = &mut pixels[i * 784..(i + 1) * 784];
        for p in img.iter_mut() {
            *p = rng.below(40) as u8;
        }
        for row in [4 + 8 * c, 5 + 8 * c] {
            for x in 4..24 {
                img[row * 28 + x] = 200 + rng.below(55) as u8;
            }
        }
    }
    (pixels, labels)
}

/// The four IDX files of a small dataset in MNIST's layout.
fn write_idx(dir: &Path, n_train: usize, n_test: usize) {
    fs::create_dir_all(dir).unwrap();
    for (prefix, n, seed) in [("train", n_train, 1), ("t10k", n_test, 2)] {
        let (px, lb) = idx_split(n, seed);
        let images = idx(2051, &[n as u32, 28, 28], &px);
        fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), idx(2049, &[n as u32], &lb))
            .unwrap();
    }
}

fn convkit(args: &[&str], cwd: &Path) -> Output {
    Command::new(BIN).args(args).current_dir(cwd).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs and expects success, showing stderr otherwise.
fn ok(args: &[&str], cwd: &Path) -> Output {
    let o = convkit(args, cwd);
    assert!(o.status.success(), "convkit {args:?} failed:\n{}", stderr(&o));
    o
}

/// Runs and expects a failure whose stderr contains each of `needles`, without a panic.
fn fails(args: &[&str], cwd: &Path, needles: &[&str]) {
    let o = convkit(args, cwd);
    assert!(!o.status.success(), "convkit {args:?} should fail");
    let err = stderr(&o);
    for needle in needles {
        assert!(err.contains(needle), "convkit {args:?}: expected {needle:?} in:\n{err}");
    }
    assert!(!err.contains("panicked"), "convkit {args:?} panicked:\n{err}");
}

/// The JSON objects of stdout, one per line.
fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    stdout(o).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn metadata(path: &Path) -> HashMap<String, String> {
    load_safetensors_with_metadata(path).unwrap().1
}

/// Rewrites a checkpoint's metadata with `edit`, keeping its tensors.
fn edit_metadata(path: &Path, edit: impl FnOnce(&mut HashMap<String, String>)) {
    let (tensors, mut meta) = load_safetensors_with_metadata(path).unwrap();
    edit(&mut meta);
    save_safetensors(path, &tensors, Some(meta)).unwrap();
}

#[test]
fn image_folder_train_resume_eval_and_predict() {
    let dir = scratch("folder");
    write_image_folder(&dir.join("shapes"), 16, 6);
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--model",
            "resnet-small",
            "--data",
            "shapes",
            "--size",
            "12",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--lr",
            "0.003",
            "--augment",
            "crop:1",
            "--seed",
            "3",
            "--json",
        ];
        args.extend_from_slice(extra);
        ok(&args, &dir)
    };
    let lines = json_lines(&train(&["--out", "full.safetensors"]));
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["epoch"], 2);
    let loss = |l: &serde_json::Value| l["train_loss"].as_f64().unwrap();
    let test_acc = lines[1]["test_acc"].as_f64().unwrap();
    assert!(loss(&lines[1]) < loss(&lines[0]) || test_acc > 0.5, "{lines:?}");

    let meta = metadata(&dir.join("full.safetensors"));
    assert_eq!(meta["model"], "resnet-small");
    assert_eq!(meta["input"], "1x12x12");
    assert_eq!(meta["classes"], "3");
    assert_eq!(meta["class_names"], r#"["across","corner","down"]"#);
    assert_eq!(meta["data.kind"], "image-folder");
    assert_eq!(meta["train.epochs_done"], "2");
    let mean: f32 = meta["norm.mean"].parse().unwrap();
    let std: f32 = meta["norm.std"].parse().unwrap();
    assert!(mean > 0.0 && mean < 0.5 && std > 0.1, "{mean} {std}");

    // Stopped after one epoch and resumed in place: the same weights, bit for bit.
    train(&["--out", "half.safetensors", "--stop-after", "1"]);
    assert_eq!(metadata(&dir.join("half.safetensors"))["train.epochs_done"], "1");
    let resumed = json_lines(&ok(&["train", "--resume", "half.safetensors", "--json"], &dir));
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0]["train_loss"], lines[1]["train_loss"]);
    let (full, _) = load_safetensors_with_metadata(dir.join("full.safetensors")).unwrap();
    let (half, _) = load_safetensors_with_metadata(dir.join("half.safetensors")).unwrap();
    assert_eq!(full.len(), half.len());
    for (name, t) in &full {
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(t.as_slice()), bits(half[name].as_slice()), "{name} differs");
    }
    let metrics = fs::read_to_string(dir.join("half.metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);

    // Evaluation on the test/ folder (prepared inference) agrees with the trainer's.
    let o = ok(&["eval", "--weights", "full.safetensors", "--data", "shapes", "--json"], &dir);
    let e: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(e["n"], 18);
    assert_eq!(e["classes"].as_array().unwrap().len(), 3);
    assert_eq!(e["per_class"].as_array().unwrap().len(), 3);
    let confusion = e["confusion"].as_array().unwrap();
    assert_eq!(confusion.len(), 3);
    let total: u64 =
        confusion.iter().flat_map(|r| r.as_array().unwrap()).map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(total, 18);
    assert!((e["accuracy"].as_f64().unwrap() - test_acc).abs() <= 1.0 / 18.0 + 1e-9, "{e}");
    let o = ok(&["eval", "--weights", "full.safetensors", "--data", "shapes/test"], &dir);
    let s = stdout(&o);
    assert!(s.contains("confusion") && s.contains("corner") && s.contains("18 images"), "{s}");

    // A longer run learns the shapes; a clean 48x48 picture (resized to 12x12) is classified.
    let o = ok(
        &[
            "train",
            "--model",
            "resnet-small",
            "--data",
            "shapes",
            "--size",
            "12",
            "--epochs",
            "8",
            "--batch-size",
            "8",
            "--lr",
            "0.003",
            "--out",
            "long.safetensors",
            "--json",
        ],
        &dir,
    );
    let last = json_lines(&o).pop().unwrap();
    assert!(last["test_acc"].as_f64().unwrap() >= 0.9, "{last}");
    picture("down", 48, None).save(dir.join("down.png")).unwrap();
    picture("corner", 48, None).save(dir.join("corner.png")).unwrap();
    let o = ok(
        &[
            "predict",
            "--weights",
            "long.safetensors",
            "--json",
            "--top",
            "2",
            "down.png",
            "corner.png",
        ],
        &dir,
    );
    let p: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    for (i, want) in ["down", "corner"].into_iter().enumerate() {
        let top = p[i]["top"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(top[0]["name"], want, "{p}");
        assert!(top[0]["probability"].as_f64().unwrap() >= top[1]["probability"].as_f64().unwrap());
    }
    let o = ok(&["predict", "--weights", "long.safetensors", "down.png"], &dir);
    assert!(stdout(&o).contains("down.png:") && stdout(&o).contains("down"), "{}", stdout(&o));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn idx_files_and_rgb_folders_train_and_evaluate() {
    let dir = scratch("idx");
    write_idx(&dir.join("digits"), 96, 30);
    let o = ok(
        &[
            "train",
            "--model",
            "resnet-small",
            "--data",
            "digits",
            "--size",
            "12",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--lr",
            "0.003",
            "--json",
            "--out",
            "idx.safetensors",
        ],
        &dir,
    );
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 2);
    let acc = lines[1]["test_acc"].as_f64().unwrap();
    assert!(
        acc > 0.5 || lines[1]["train_loss"].as_f64() < lines[0]["train_loss"].as_f64(),
        "{lines:?}"
    );
    let meta = metadata(&dir.join("idx.safetensors"));
    assert_eq!(meta["data.kind"], "idx");
    assert_eq!(meta["input"], "1x12x12");
    assert_eq!(meta["classes"], "10");
    let o = ok(&["eval", "--weights", "idx.safetensors", "--data", "digits", "--json"], &dir);
    let e: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(e["n"], 30);
    // Classes 3–9 have no test images: their accuracy is null, not a made-up number.
    assert!(e["per_class"][9].is_null() && e["per_class"][0].is_number(), "{e}");
    picture("across", 12, None).save(dir.join("bar.png")).unwrap();
    let o = ok(&["predict", "--weights", "idx.safetensors", "bar.png", "--json"], &dir);
    assert!(stdout(&o).contains("probability"), "{}", stdout(&o));

    // vgg-small on three channels: a grayscale folder read as RGB.
    write_image_folder(&dir.join("shapes"), 4, 2);
    let o = ok(
        &[
            "train",
            "--model",
            "vgg-small",
            "--data",
            "shapes",
            "--size",
            "12",
            "--channels",
            "3",
            "--epochs",
            "1",
            "--batch-size",
            "6",
            "--json",
            "--out",
            "rgb.safetensors",
        ],
        &dir,
    );
    assert_eq!(json_lines(&o).len(), 1);
    let meta = metadata(&dir.join("rgb.safetensors"));
    assert_eq!(meta["input"], "3x12x12");
    assert_eq!(meta["norm.mean"].split(',').count(), 3);
    ok(&["eval", "--weights", "rgb.safetensors", "--data", "shapes"], &dir);
    let o = ok(&["info", "--weights", "rgb.safetensors", "--batch-size", "1"], &dir);
    let s = stdout(&o);
    assert!(s.contains("vgg-small on [1, 3, 12, 12], 3 classes") && s.contains("across"), "{s}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn info_shows_both_zoo_models() {
    let dir = scratch("info");
    for (model, params) in [("vgg-small", "468010"), ("resnet-small", "174970")] {
        let o = ok(&["info", "--model", model], &dir);
        let s = stdout(&o);
        assert!(s.contains(&format!("{model} on [64, 1, 28, 28], 10 classes")), "{s}");
        assert!(s.contains("Conv2d") && s.contains(params) && s.contains("total"), "{s}");
        let o = ok(&["info", "--model", model, "--input", "3x12x12", "--classes", "4"], &dir);
        assert!(stdout(&o).contains("[64, 4]"), "{}", stdout(&o));
    }
    // `lenet info --model` prints the same table.
    let lenet = Command::new(env!("CARGO_BIN_EXE_lenet"))
        .args(["info", "--model", "resnet-small", "--batch-size", "2"])
        .output()
        .unwrap();
    let ours = ok(&["info", "--model", "resnet-small", "--batch-size", "2"], &dir);
    assert_eq!(stdout(&lenet), stdout(&ours));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_give_clear_errors() {
    let dir = scratch("bad");
    write_image_folder(&dir.join("shapes"), 3, 1);
    write_idx(&dir.join("digits"), 12, 6);
    let base = ["train", "--model", "resnet-small", "--size", "12", "--epochs", "1"];
    let train = |extra: &[&str], needles: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        fails(&args, &dir, needles);
    };
    fails(&["train", "--model", "alexnet", "--data", "shapes"], &dir, &["alexnet", "vgg-small"]);
    fails(&["info", "--model", "alexnet"], &dir, &["alexnet", "resnet-small"]);
    fails(&["train", "--data", "shapes"], &dir, &["--model is required"]);
    train(&["--data", "/nonexistent/x"], &["/nonexistent/x", "no such folder"]);
    fs::create_dir_all(dir.join("empty")).unwrap();
    train(&["--data", "empty"], &["empty", "no class folders"]);
    fs::create_dir_all(dir.join("hollow/cat")).unwrap();
    train(&["--data", "hollow"], &["hollow", "no .png, .jpg or .jpeg files"]);
    // Held-out classes that are not the training classes.
    let odd = dir.join("odd");
    fs::create_dir_all(odd.join("across")).unwrap();
    fs::copy(dir.join("shapes/test/across/00.png"), odd.join("across/00.png")).unwrap();
    train(&["--data", "shapes/train", "--test", "odd"], &["classes", "odd", "corner"]);
    // A file that is not an image, in a class folder.
    fs::write(dir.join("shapes/train/down/bad.png"), b"not a picture").unwrap();
    train(&["--data", "shapes"], &["bad.png", "not a PNG or JPEG"]);
    fs::remove_file(dir.join("shapes/train/down/bad.png")).unwrap();
    train(&["--data", "digits", "--test", "shapes/test"], &["--test", "IDX"]);
    train(&["--data", "digits", "--channels", "3"], &["1 channel"]);
    train(&["--data", "shapes", "--channels", "2"], &["must be 1 or 3"]);
    fails(
        &["train", "--model", "vgg-small", "--data", "shapes", "--size", "10"],
        &dir,
        &["multiples of 4", "[1, 10, 10]"],
    );
    fails(&["info", "--model", "vgg-small", "--input", "1x13x12"], &dir, &["multiples of 4"]);
    train(&["--data", "shapes", "--augment", "rotate"], &["rotate", "hflip or crop:PAD"]);
    train(&["--data", "shapes", "--lr=-1"], &["learning rate"]);

    ok(
        &[
            "train",
            "--model",
            "resnet-small",
            "--data",
            "shapes",
            "--size",
            "12",
            "--epochs",
            "2",
            "--stop-after",
            "1",
            "--json",
            "--out",
            "m.safetensors",
        ],
        &dir,
    );
    fails(
        &["train", "--resume", "m.safetensors", "--data", "shapes", "--lr", "0.1"],
        &dir,
        &["--lr", "recipe comes from the resumed checkpoint"],
    );
    fails(
        &["train", "--resume", "m.safetensors", "--data", "shapes", "--size", "16"],
        &dir,
        &["--size 16x16", "12x12"],
    );
    fails(
        &["train", "--resume", "m.safetensors", "--data", "digits"],
        &dir,
        &["image-folder", "idx"],
    );
    fails(&["train", "--resume", "m.safetensors", "--data", "odd"], &dir, &["classes", "odd"]);
    fails(&["eval", "--weights", "m.safetensors", "--data", "odd"], &dir, &["classes", "odd"]);
    // Not a zoo checkpoint: a missing key is named; a LeNet-5 checkpoint points to `lenet`;
    // a file that is no checkpoint at all is named.
    fs::copy(dir.join("m.safetensors"), dir.join("nokey.safetensors")).unwrap();
    edit_metadata(&dir.join("nokey.safetensors"), |m| {
        m.remove("class_names");
    });
    for cmd in [
        vec!["eval", "--weights", "nokey.safetensors", "--data", "shapes"],
        vec!["predict", "--weights", "nokey.safetensors", "x.png"],
        vec!["info", "--weights", "nokey.safetensors"],
        vec!["train", "--resume", "nokey.safetensors", "--data", "shapes"],
    ] {
        fails(&cmd, &dir, &["nokey.safetensors", "not a convkit zoo checkpoint", "class_names"]);
    }
    edit_metadata(&dir.join("nokey.safetensors"), |m| {
        m.insert("model".into(), "lenet5".into());
        m.insert("class_names".into(), "[]".into());
    });
    fails(
        &["eval", "--weights", "nokey.safetensors", "--data", "shapes"],
        &dir,
        &["LeNet-5", "lenet"],
    );
    fs::write(dir.join("junk.safetensors"), b"junk").unwrap();
    fails(&["predict", "--weights", "junk.safetensors", "x.png"], &dir, &["junk.safetensors"]);
    // Pictures: missing, not an image, none given.
    fs::write(dir.join("text.png"), b"hello").unwrap();
    fails(&["predict", "--weights", "m.safetensors", "missing.png"], &dir, &["missing.png"]);
    fails(
        &["predict", "--weights", "m.safetensors", "text.png"],
        &dir,
        &["text.png", "not a PNG or JPEG"],
    );
    fails(&["predict", "--weights", "m.safetensors"], &dir, &["PNG or JPEG files"]);
    fails(&["predict", "--weights", "m.safetensors", "--top", "0", "text.png"], &dir, &["--top"]);
    fs::remove_dir_all(&dir).unwrap();
}
