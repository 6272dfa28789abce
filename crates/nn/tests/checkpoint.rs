//! Checkpoints: bit-exact round trips, every kind of broken file, and PyTorch's LeNet-5.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use convkit_nn::checkpoint::{self, Metadata};
use convkit_nn::{
    AvgPool2d, BatchNorm2d, Conv2d, Flatten, Linear, NnError, ReLU, Sequential, named_params,
    num_params,
};
use convkit_tensor::Rng;

/// LeNet-5 with PyTorch's `state_dict` names, built from the generic layers.
fn lenet(seed: u64) -> Sequential {
    let mut rng = Rng::new(seed);
    Sequential::new()
        .push_named("conv1", Conv2d::new(1, 6, 5, &mut rng).unwrap())
        .push_named("relu1", ReLU)
        .push_named("pool1", AvgPool2d::new(2))
        .push_named("conv2", Conv2d::new(6, 16, 5, &mut rng).unwrap())
        .push_named("relu2", ReLU)
        .push_named("pool2", AvgPool2d::new(2))
        .push_named("flatten", Flatten)
        .push_named("fc1", Linear::new(400, 120, &mut rng).unwrap())
        .push_named("relu3", ReLU)
        .push_named("fc2", Linear::new(120, 84, &mut rng).unwrap())
        .push_named("relu4", ReLU)
        .push_named("fc3", Linear::new(84, 10, &mut rng).unwrap())
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("convkit-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn problems(e: NnError) -> Vec<String> {
    match e {
        NnError::Checkpoint { problems, .. } => problems,
        other => panic!("expected a checkpoint error, got {other}"),
    }
}

#[test]
fn round_trip_is_bit_exact_with_metadata() {
    let a = lenet(1);
    let b = lenet(2);
    assert_eq!(num_params(&a), 61_706);
    let path = tmp("lenet.safetensors");
    let meta: Metadata =
        [("model", "lenet5"), ("epoch", "3")].map(|(k, v)| (k.into(), v.into())).into();
    checkpoint::save(&path, &a, &meta).unwrap();
    let got = checkpoint::load(&path, &b, true).unwrap();
    assert_eq!(got, meta);
    for ((na, pa), (nb, pb)) in named_params(&a).iter().zip(named_params(&b).iter()) {
        assert_eq!(na, nb);
        let (va, vb) = (pa.value(), pb.value());
        let bits = |s: &[f32]| s.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(va.as_slice()), bits(vb.as_slice()), "{na}");
    }
    // No temporary file is left next to the checkpoint.
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("lenet.safetensors") && n != "lenet.safetensors")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn buffers_are_saved_and_restored() {
    let mut rng = Rng::new(0);
    let make = |rng: &mut Rng| {
        Sequential::new()
            .push_named("conv", Conv2d::new(1, 2, 3, rng).unwrap())
            .push_named("bn", BatchNorm2d::new(2).unwrap())
    };
    let a = make(&mut rng);
    let b = make(&mut rng);
    let sd = checkpoint::state_dict(&a);
    let names: Vec<_> = sd.keys().cloned().collect();
    assert_eq!(
        names,
        ["bn.bias", "bn.running_mean", "bn.running_var", "bn.weight", "conv.bias", "conv.weight"]
    );
    let path = tmp("bn.safetensors");
    checkpoint::save(&path, &a, &Metadata::new()).unwrap();
    checkpoint::load(&path, &b, true).unwrap();
    assert_eq!(checkpoint::state_dict(&b), sd);
}

#[test]
fn strict_loading_lists_every_problem_and_changes_nothing() {
    let model = lenet(3);
    let before = checkpoint::state_dict(&model);
    let mut sd: BTreeMap<_, _> = checkpoint::state_dict(&lenet(4));
    sd.remove("fc3.bias");
    sd.insert("fc4.weight".into(), sd["fc3.weight"].clone());
    sd.insert("conv1.weight".into(), sd["conv2.weight"].clone());
    let e = checkpoint::load_state_dict(&model, &sd, true, "test").unwrap_err();
    let msg = e.to_string();
    let p = problems(e);
    assert_eq!(p.len(), 3, "{msg}");
    assert!(msg.contains("missing key fc3.bias [10]"), "{msg}");
    assert!(msg.contains("unexpected key fc4.weight [10, 84]"), "{msg}");
    assert!(
        msg.contains(
            "shape mismatch for conv1.weight: checkpoint [16, 6, 5, 5], model [6, 1, 5, 5]"
        ),
        "{msg}"
    );
    assert_eq!(checkpoint::state_dict(&model), before, "a failed load must change nothing");
    // Non-strict loading takes what fits, but shapes must still match.
    sd.insert("conv1.weight".into(), before["conv1.weight"].clone());
    checkpoint::load_state_dict(&model, &sd, false, "test").unwrap();
}

#[test]
fn corrupt_and_truncated_files_are_errors_naming_the_file() {
    let model = lenet(5);
    let path = tmp("good.safetensors");
    checkpoint::save(&path, &model, &Metadata::new()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("header-only", bytes[..16].to_vec()),
        ("garbage", b"this is not a safetensors file at all".to_vec()),
        ("huge-header", {
            let mut b = bytes.clone();
            b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            b
        }),
    ];
    for (name, data) in cases {
        let p = tmp(&format!("{name}.safetensors"));
        std::fs::write(&p, data).unwrap();
        let e = checkpoint::load(&p, &model, true).unwrap_err().to_string();
        assert!(e.contains(&format!("{name}.safetensors")), "{name}: {e}");
    }
    let e = checkpoint::load(tmp("missing.safetensors"), &model, true).unwrap_err().to_string();
    assert!(e.contains("missing.safetensors"), "{e}");
}

#[test]
fn pytorch_lenet_fixture_loads_with_expected_names_and_shapes() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/lenet_fashion_torch.safetensors");
    let (tensors, _) = checkpoint::read(&path).unwrap();
    let shapes: Vec<(String, Vec<usize>)> =
        tensors.iter().map(|(k, t)| (k.clone(), t.dims().to_vec())).collect();
    let want: Vec<(String, Vec<usize>)> = [
        ("conv1.bias", vec![6]),
        ("conv1.weight", vec![6, 1, 5, 5]),
        ("conv2.bias", vec![16]),
        ("conv2.weight", vec![16, 6, 5, 5]),
        ("fc1.bias", vec![120]),
        ("fc1.weight", vec![120, 400]),
        ("fc2.bias", vec![84]),
        ("fc2.weight", vec![84, 120]),
        ("fc3.bias", vec![10]),
        ("fc3.weight", vec![10, 84]),
    ]
    .into_iter()
    .map(|(k, d)| (k.to_owned(), d))
    .collect();
    assert_eq!(shapes, want);
    let model = lenet(6);
    checkpoint::load(&path, &model, true).unwrap();
    assert_eq!(checkpoint::state_dict(&model), tensors);
}

#[test]
fn metadata_floats_are_decimals_that_read_back_bit_for_bit() {
    let mut rng = Rng::new(3);
    let mut cases = vec![0.002f32, 0.01, 0.9, 1.0, 0.1307, 1e-8, 3.4e38, -0.0, f32::MIN_POSITIVE];
    cases
        .extend((0..2000).map(|_| f32::from_bits(rng.next_u64() as u32)).filter(|x| x.is_finite()));
    for x in cases {
        let s = checkpoint::format_f32(x);
        assert!(!(s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit())), "{s} looks like hex");
        assert_eq!(checkpoint::parse_f32(&s).map(f32::to_bits), Some(x.to_bits()), "{s}");
        let d = f64::from(x) * 1.000_000_1;
        let s = checkpoint::format_f64(d);
        assert_eq!(checkpoint::parse_f64(&s).map(f64::to_bits), Some(d.to_bits()), "{s}");
    }
    assert_eq!(checkpoint::format_f32(0.002), "0.002");
    // What earlier versions wrote: the bits in hex.
    assert_eq!(checkpoint::parse_f32("3b03126f"), Some(0.002));
    assert_eq!(checkpoint::parse_f64(&format!("{:016x}", 0.9f64.to_bits())), Some(0.9));
    assert_eq!(checkpoint::parse_f32("fast"), None);
}

#[test]
fn non_finite_weights_are_refused_naming_the_tensor_and_nothing_changes() {
    let model = lenet(0);
    let path = tmp("nan");
    checkpoint::save(&path, &model, &Metadata::new()).unwrap();
    let (mut tensors, _) = checkpoint::read(&path).unwrap();
    let w = &tensors["fc2.weight"];
    let mut v = w.as_slice().to_vec();
    v[17] = f32::NAN;
    tensors.insert("fc2.weight".into(), convkit_tensor::Tensor::from_vec(w.dims(), v).unwrap());
    let target = lenet(1);
    let before: Vec<_> = named_params(&target).iter().map(|(_, p)| p.value().clone()).collect();
    for strict in [true, false] {
        let e = checkpoint::load_state_dict(&target, &tensors, strict, "x").unwrap_err();
        let p = problems(e);
        assert!(p.iter().any(|m| m.contains("fc2.weight") && m.contains("non-finite")), "{p:?}");
    }
    let after: Vec<_> = named_params(&target).iter().map(|(_, p)| p.value().clone()).collect();
    for (a, b) in before.iter().zip(&after) {
        assert_eq!(a.as_slice(), b.as_slice());
    }
}
