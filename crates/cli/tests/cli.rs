//! The `lenet` binary end to end, on small generated IDX datasets: training, bit-exact
//! resume, eval, predict on a PNG written here, info, and clear errors with a non-zero exit
//! on bad input.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use convkit_models::LeNet5;
use convkit_models::data::preprocess;
use convkit_models::preprocess::{decode_picture, picture_to_mnist};
use convkit_tensor::load_safetensors_with_metadata;

const BIN: &str = env!("CARGO_BIN_EXE_lenet");

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("convkit-cli-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

/// Synthetic 28x28 images whose class is the row of a bright bar, plus noise.
fn make_split(n: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rng = convkit_tensor::Rng::new(seed);
    let mut pixels = vec![0u8; n * 784];
    let mut labels = vec![0u8; n];
    for i in 0..n {
        let c = rng.below(10);
        labels[i] = c as u8;
        let img = &mut pixels[i * 784..(i + 1) * 784];
        for p in img.iter_mut() {
            *p = rng.below(40) as u8;
        }
        let row = 3 + 2 * c;
        for x in 4..24 {
            img[row * 28 + x] = 200 + rng.below(55) as u8;
        }
    }
    (pixels, labels)
}

/// Writes a small dataset in MNIST's layout into `dir`.
fn write_dataset(dir: &Path, n_train: usize, n_test: usize) {
    let (tp, tl) = make_split(n_train, 1);
    let (sp, sl) = make_split(n_test, 2);
    fs::write(dir.join("train-images-idx3-ubyte"), idx(2051, &[n_train as u32, 28, 28], &tp))
        .unwrap();
    fs::write(dir.join("train-labels-idx1-ubyte"), idx(2049, &[n_train as u32], &tl)).unwrap();
    fs::write(dir.join("t10k-images-idx3-ubyte"), idx(2051, &[n_test as u32, 28, 28], &sp))
        .unwrap();
    fs::write(dir.join("t10k-labels-idx1-ubyte"), idx(2049, &[n_test as u32], &sl)).unwrap();
}

fn lenet(args: &[&str], cwd: &Path) -> Output {
    Command::new(BIN).args(args).current_dir(cwd).env_remove("CONVKIT_DATA").output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs and expects success, showing stderr otherwise.
fn ok(args: &[&str], cwd: &Path) -> Output {
    let o = lenet(args, cwd);
    assert!(o.status.success(), "lenet {args:?} failed:\n{}", stderr(&o));
    o
}

/// Runs and expects a failure whose stderr contains `needle`.
fn fails(args: &[&str], cwd: &Path, needle: &str) {
    let o = lenet(args, cwd);
    assert!(!o.status.success(), "lenet {args:?} should fail");
    let err = stderr(&o);
    assert!(err.contains(needle), "lenet {args:?}: expected {needle:?} in:\n{err}");
    assert!(!err.contains("panicked"), "lenet {args:?} panicked:\n{err}");
}

#[test]
fn resume_continues_bit_for_bit() {
    let dir = scratch("resume");
    write_dataset(&dir, 300, 100);
    let d = dir.to_str().unwrap();
    for opt in ["sgd", "adam"] {
        let full = dir.join(format!("full-{opt}.safetensors"));
        let half = dir.join(format!("half-{opt}.safetensors"));
        let common = [
            "train",
            "--data",
            d,
            "--optimizer",
            opt,
            "--batch-size",
            "32",
            "--seed",
            "5",
            "--limit",
            "200",
            "--json",
            "--schedule",
            "cosine",
            "--weight-decay",
            "0.0001",
        ];
        let run = |extra: &[&str]| {
            let mut a: Vec<&str> = common.to_vec();
            a.extend_from_slice(extra);
            ok(&a, &dir)
        };
        let f = run(&["--epochs", "3", "--out", full.to_str().unwrap()]);
        // Interrupted after one epoch, then resumed: the recipe comes from the checkpoint.
        run(&["--epochs", "3", "--stop-after", "1", "--out", half.to_str().unwrap()]);
        let r = ok(
            &[
                "train",
                "--data",
                d,
                "--resume",
                half.to_str().unwrap(),
                "--json",
                "--out",
                half.to_str().unwrap(),
            ],
            &dir,
        );
        let (a, ma) = load_safetensors_with_metadata(&full).unwrap();
        let (b, mb) = load_safetensors_with_metadata(&half).unwrap();
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (k, t) in &a {
            let same =
                t.as_slice().iter().zip(b[k].as_slice()).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{opt}: {k} differs after resume");
        }
        assert_eq!(ma, mb, "{opt}: metadata differs");
        // The metrics of the last epochs agree too (apart from timings).
        let strip = |s: &str| -> Vec<String> {
            s.lines().map(|l| l.split(",\"seconds\"").next().unwrap().to_owned()).collect()
        };
        let (fl, rl) = (strip(&stdout(&f)), strip(&stdout(&r)));
        assert_eq!(fl.len(), 3);
        assert_eq!(rl, fl[1..].to_vec(), "{opt}: resumed metrics differ");
        // The metrics file beside the checkpoint has all three epochs.
        let metrics = fs::read_to_string(dir.join(format!("half-{opt}.metrics.jsonl"))).unwrap();
        assert_eq!(metrics.lines().count(), 3);
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn same_seed_same_weights_with_one_or_two_threads() {
    let dir = scratch("threads");
    write_dataset(&dir, 200, 50);
    let d = dir.to_str().unwrap();
    for t in ["1", "2"] {
        ok(
            &[
                "train",
                "--data",
                d,
                "--epochs",
                "1",
                "--threads",
                t,
                "--json",
                "--out",
                &format!("t{t}.safetensors"),
            ],
            &dir,
        );
    }
    // Compare the tensors bit for bit (the header's metadata order may differ between files).
    let (a, _) = load_safetensors_with_metadata(dir.join("t1.safetensors")).unwrap();
    let (b, _) = load_safetensors_with_metadata(dir.join("t2.safetensors")).unwrap();
    for (k, t) in &a {
        let same =
            t.as_slice().iter().zip(b[k].as_slice()).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{k} differs between 1 and 2 threads");
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn train_json_eval_predict_and_info() {
    let dir = scratch("flow");
    write_dataset(&dir, 1000, 100);
    let d = dir.to_str().unwrap();
    let o = ok(
        &[
            "train",
            "--data",
            d,
            "--epochs",
            "2",
            "--optimizer",
            "adam",
            "--lr",
            "0.003",
            "--json",
            "--out",
            "m.safetensors",
        ],
        &dir,
    );
    let lines: Vec<serde_json::Value> =
        stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    for key in ["epoch", "train_loss", "train_acc", "test_acc", "seconds", "images_per_sec"] {
        assert!(lines[1].get(key).is_some(), "missing {key} in {}", lines[1]);
    }
    assert_eq!(lines[1]["epoch"], 2);
    // The synthetic classes are easy.
    assert!(lines[1]["test_acc"].as_f64().unwrap() > 0.8, "{}", lines[1]);
    assert!(dir.join("m.optim.safetensors").is_file());
    // The normalization is stored in the checkpoint.
    let (_, meta) = load_safetensors_with_metadata(dir.join("m.safetensors")).unwrap();
    assert_eq!(meta["norm.mean"], "0.1307");
    assert_eq!(meta["norm.std"], "0.3081");

    let o = ok(&["eval", "--weights", "m.safetensors", "--data", d, "--json"], &dir);
    let e: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(e["n"], 100);
    assert_eq!(e["per_class"].as_array().unwrap().len(), 10);
    assert_eq!(e["confusion"].as_array().unwrap().len(), 10);
    let o = ok(&["eval", "--weights", "m.safetensors", "--data", d], &dir);
    assert!(stdout(&o).contains("confusion"), "{}", stdout(&o));

    // A PNG with a dark bar on a light background, larger than 28x28: predict prepares it
    // as serve and visualize do (light on dark, cropped to the ink, centred) and answers
    // what the model says of that 28x28 picture.
    let mut img = image::GrayImage::from_pixel(56, 56, image::Luma([250]));
    for y in 22..24 {
        for x in 8..48 {
            img.put_pixel(x, y, image::Luma([10]));
        }
    }
    img.save(dir.join("bar.png")).unwrap();
    let o = ok(
        &["predict", "--weights", "m.safetensors", "--dataset", "mnist", "--json", "bar.png"],
        &dir,
    );
    let p: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let top3 = p[0]["top3"].as_array().unwrap();
    assert_eq!(top3.len(), 3);
    let bytes = fs::read(dir.join("bar.png")).unwrap();
    let px = picture_to_mnist(&decode_picture(&bytes).unwrap()).unwrap();
    assert!(
        px.iter().any(|&v| v > 200) && px.iter().map(|&v| f64::from(v)).sum::<f64>() < 40.0 * 784.0
    );
    let (model, norm, _) = LeNet5::load(dir.join("m.safetensors")).unwrap();
    let want = model.logits(&preprocess(&[&px], norm).unwrap()).unwrap().argmax_axis(1).unwrap();
    assert_eq!(top3[0]["class"], want[0], "{p}");
    let probs: Vec<f64> = top3.iter().map(|t| t["probability"].as_f64().unwrap()).collect();
    assert!(probs[0] >= probs[1] && probs[1] >= probs[2]);
    let o = ok(&["predict", "--weights", "m.safetensors", "bar.png"], &dir);
    assert!(stdout(&o).contains("bar.png"), "{}", stdout(&o));

    let test_images = dir.join("t10k-images-idx3-ubyte");
    let o = ok(
        &[
            "predict",
            "--weights",
            "m.safetensors",
            "--idx",
            test_images.to_str().unwrap(),
            "--index",
            "3",
            "--json",
        ],
        &dir,
    );
    assert!(stdout(&o).contains("top3"));

    let o = ok(&["info", "--batch-size", "1"], &dir);
    let s = stdout(&o);
    assert!(s.contains("61706") && s.contains("conv1") && s.contains("[1, 16, 5, 5]"), "{s}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_give_clear_errors() {
    let dir = scratch("bad");
    write_dataset(&dir, 50, 20);
    let d = dir.to_str().unwrap();
    fails(&["train", "--data", "/nonexistent/dir", "--epochs", "1"], &dir, "/nonexistent/dir");
    fails(&["train", "--data", d, "--batch-size", "0"], &dir, "batch size");
    fails(&["train", "--data", d, "--lr=-1"], &dir, "learning rate");
    fails(&["train", "--data", d, "--limit", "0"], &dir, "--limit 0");
    fails(&["train", "--data", d, "--threads", "0"], &dir, "--threads");
    fails(&["train", "--data", d, "--dataset", "cifar"], &dir, "invalid value 'cifar'");
    fails(
        &["train", "--data", d, "--recipe", "best"],
        &dir,
        "[possible values: reference, fashion-mnist]",
    );
    fails(&["train", "--data", d, "--optimizer", "adamw"], &dir, "[possible values: sgd, adam]");
    fails(
        &["train", "--data", d, "--schedule", "step"],
        &dir,
        "[possible values: constant, cosine]",
    );
    fails(&["train", "--data", d, "--resume", "missing.safetensors"], &dir, "missing.safetensors");
    // An exploding learning rate stops with an error.
    fails(
        &["train", "--data", d, "--lr", "1e30", "--epochs", "2", "--out", "x.safetensors"],
        &dir,
        "loss is",
    );
    fails(&["eval", "--weights", "nope.safetensors", "--data", d], &dir, "nope.safetensors");
    fs::write(dir.join("junk.safetensors"), b"not a checkpoint").unwrap();
    fails(&["eval", "--weights", "junk.safetensors", "--data", d], &dir, "junk.safetensors");
    fs::write(dir.join("t10k-labels-idx1-ubyte"), idx(2049, &[19], &[0; 19])).unwrap();
    fails(
        &["train", "--data", d, "--epochs", "1", "--out", "w.safetensors"],
        &dir,
        "19 labels for 20 images",
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn predict_rejects_bad_images_and_indices() {
    let dir = scratch("predict-bad");
    write_dataset(&dir, 50, 20);
    let d = dir.to_str().unwrap();
    ok(&["train", "--data", d, "--epochs", "1", "--json", "--out", "m.safetensors"], &dir);
    fs::write(dir.join("fake.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    fails(&["predict", "--weights", "m.safetensors", "fake.png"], &dir, "fake.png");
    fails(&["predict", "--weights", "m.safetensors", "absent.png"], &dir, "absent.png");
    fails(&["predict", "--weights", "m.safetensors"], &dir, "image files");
    let images = dir.join("t10k-images-idx3-ubyte");
    fails(
        &[
            "predict",
            "--weights",
            "m.safetensors",
            "--idx",
            images.to_str().unwrap(),
            "--index",
            "20",
        ],
        &dir,
        "out of range",
    );
    let labels = dir.join("t10k-labels-idx1-ubyte");
    fails(
        &[
            "predict",
            "--weights",
            "m.safetensors",
            "--idx",
            labels.to_str().unwrap(),
            "--index",
            "0",
        ],
        &dir,
        "magic",
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fetch_offline_fails_fast_naming_alternatives_and_keeps_no_partial_file() {
    let dir = scratch("fetch");
    let start = std::time::Instant::now();
    let o = lenet(&["fetch", "mnist"], &dir);
    if o.status.success() {
        // A machine with network: the files arrived and were checked.
        assert!(dir.join("data/mnist/train-images-idx3-ubyte.gz").is_file());
        return;
    }
    let err = stderr(&o);
    assert!(err.contains("--data") && err.contains("CONVKIT_DATA"), "{err}");
    assert!(start.elapsed().as_secs() < 60, "offline fetch took {:?}", start.elapsed());
    let leftovers: Vec<_> = fs::read_dir(dir.join("data/mnist")).unwrap().collect();
    assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn no_data_anywhere_names_every_place_and_the_fix() {
    let dir = scratch("nodata");
    // MNIST has no system package, so with an empty working directory nothing is found.
    let o = lenet(&["train", "--dataset", "mnist", "--epochs", "1"], &dir);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("data/mnist") && err.contains("lenet fetch mnist"), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}

/// Rewrites a checkpoint's metadata with `edit`, keeping its tensors.
fn edit_metadata(path: &Path, edit: impl FnOnce(&mut std::collections::HashMap<String, String>)) {
    let (tensors, meta) = load_safetensors_with_metadata(path).unwrap();
    let mut meta: std::collections::HashMap<String, String> = meta.into_iter().collect();
    edit(&mut meta);
    convkit_tensor::save_safetensors(path, &tensors, Some(meta)).unwrap();
}

#[test]
fn resume_writes_in_place_and_appends_to_its_metrics() {
    let dir = scratch("resume-in-place");
    write_dataset(&dir, 200, 50);
    let d = dir.to_str().unwrap();
    let run = dir.join("run.safetensors");
    let common = ["--data", d, "--batch-size", "32", "--json", "--optimizer", "adam"];
    let mut first = vec!["train", "--epochs", "3", "--stop-after", "1", "--out"];
    first.push(run.to_str().unwrap());
    first.extend_from_slice(&common);
    ok(&first, &dir);
    // Readable metadata: the recipe's floats are decimals.
    let (_, meta) = load_safetensors_with_metadata(&run).unwrap();
    assert_eq!(meta["train.lr"], "0.001", "{meta:?}");
    assert_eq!(meta["norm.mean"], "0.1307", "{meta:?}");

    // Resumed without --out: the same files go on, nothing is written to ./model.safetensors.
    let mut second = vec!["train", "--stop-after", "1", "--resume", run.to_str().unwrap()];
    second.extend_from_slice(&common);
    ok(&second, &dir);
    assert!(!dir.join("model.safetensors").exists(), "resume wrote ./model.safetensors");
    let (_, meta) = load_safetensors_with_metadata(&run).unwrap();
    assert_eq!(meta["train.epochs_done"], "2");
    let metrics = fs::read_to_string(dir.join("run.metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2, "{metrics}");
    assert!(metrics.lines().nth(1).unwrap().starts_with("{\"epoch\":2,"), "{metrics}");

    // Resumed into another checkpoint: its metrics start with the run's history.
    let other = dir.join("other.safetensors");
    let mut third =
        vec!["train", "--resume", run.to_str().unwrap(), "--out", other.to_str().unwrap()];
    third.extend_from_slice(&common);
    ok(&third, &dir);
    let metrics = fs::read_to_string(dir.join("other.metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 3, "{metrics}");
    let (_, meta) = load_safetensors_with_metadata(&run).unwrap();
    assert_eq!(meta["train.epochs_done"], "2", "the resumed checkpoint was changed");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn checkpoints_with_hex_metadata_from_earlier_versions_still_resume() {
    let dir = scratch("old-metadata");
    write_dataset(&dir, 200, 50);
    let d = dir.to_str().unwrap();
    let new = dir.join("new.safetensors");
    let old = dir.join("old.safetensors");
    let common = ["--data", d, "--batch-size", "32", "--json", "--lr", "0.002"];
    for out in [&new, &old] {
        let mut a = vec!["train", "--epochs", "2", "--stop-after", "1", "--out"];
        a.push(out.to_str().unwrap());
        a.extend_from_slice(&common);
        ok(&a, &dir);
    }
    // The format written before decimals: the 8 hex digits of each f32's bits, and the
    // optimizer's f64 scalars as 16 hex digits.
    edit_metadata(&old, |m| {
        for k in ["train.lr", "train.momentum", "train.weight_decay"] {
            let v: f32 = m[k].parse().unwrap();
            m.insert(k.to_owned(), format!("{:08x}", v.to_bits()));
        }
    });
    assert_eq!(load_safetensors_with_metadata(&old).unwrap().1["train.lr"], "3b03126f");
    let old_opt = dir.join("old.optim.safetensors");
    edit_metadata(&old_opt, |m| {
        for (k, v) in m.iter_mut() {
            if k.starts_with("scalar.") {
                let x: f64 = v.parse().unwrap();
                *v = format!("{:016x}", x.to_bits());
            }
        }
    });
    for out in [&new, &old] {
        let mut a = vec!["train", "--resume", out.to_str().unwrap()];
        a.extend_from_slice(&common[..4]);
        ok(&a, &dir);
    }
    let (a, ma) = load_safetensors_with_metadata(&new).unwrap();
    let (b, mb) = load_safetensors_with_metadata(&old).unwrap();
    for (k, t) in &a {
        let same =
            t.as_slice().iter().zip(b[k].as_slice()).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{k} differs after resuming from hex metadata");
    }
    assert_eq!(ma, mb, "the resumed run rewrites its metadata as decimals");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn weights_with_nan_or_infinity_are_refused_naming_the_tensor() {
    let dir = scratch("nan-weights");
    write_dataset(&dir, 100, 50);
    let d = dir.to_str().unwrap();
    let w = dir.join("w.safetensors");
    ok(&["train", "--data", d, "--epochs", "1", "--json", "--out", w.to_str().unwrap()], &dir);
    for (name, bad) in [("fc2.weight", f32::NAN), ("conv1.bias", f32::INFINITY)] {
        let (mut tensors, meta) = load_safetensors_with_metadata(&w).unwrap();
        let t = &tensors[name];
        let mut v = t.as_slice().to_vec();
        v[3] = bad;
        let replaced = convkit_tensor::Tensor::from_vec(t.dims(), v).unwrap();
        tensors.insert(name.to_owned(), replaced);
        let bad_path = dir.join("bad.safetensors");
        let meta: std::collections::HashMap<String, String> = meta.into_iter().collect();
        convkit_tensor::save_safetensors(&bad_path, &tensors, Some(meta)).unwrap();
        let p = bad_path.to_str().unwrap();
        fails(&["eval", "--weights", p, "--data", d], &dir, name);
        fails(&["eval", "--weights", p, "--data", d], &dir, "non-finite");
        let idx = dir.join("t10k-images-idx3-ubyte");
        let idx = idx.to_str().unwrap();
        fails(&["predict", "--weights", p, "--idx", idx, "--index", "0"], &dir, name);
    }
    fs::remove_dir_all(&dir).unwrap();
}
