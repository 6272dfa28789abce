//! safetensors round trips (bit-exact) and corrupt inputs (errors, never panics).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};

use convkit_tensor::{
    Rng, Tensor, TensorError, from_safetensors_bytes, from_safetensors_bytes_with_metadata,
    load_safetensors, load_safetensors_with_metadata, save_safetensors, to_safetensors_bytes,
};
use proptest::prelude::*;

/// A raw safetensors buffer from a header string and data bytes.
fn raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn lenet_like() -> BTreeMap<String, Tensor> {
    let mut rng = Rng::new(17);
    let mut m = BTreeMap::new();
    for (name, dims) in [
        ("conv1.weight", vec![6, 1, 5, 5]),
        ("conv1.bias", vec![6]),
        ("fc3.weight", vec![10, 84]),
        ("scalar", vec![]),
        ("empty", vec![0, 3]),
    ] {
        m.insert(name.to_string(), Tensor::rand_normal(&dims, 0.0, 1.0, &mut rng).unwrap());
    }
    // Special values must survive bit for bit.
    let special = vec![f32::NAN, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::MIN_POSITIVE / 2.0];
    m.insert("special".to_string(), Tensor::from_vec(&[5], special).unwrap());
    m
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.as_slice().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn round_trip_bytes_is_bit_exact() {
    let params = lenet_like();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = to_safetensors_bytes(&params, Some(meta.clone())).unwrap();
    let (back, got_meta) = from_safetensors_bytes_with_metadata(&bytes).unwrap();
    assert_eq!(got_meta, meta);
    assert_eq!(back.keys().collect::<Vec<_>>(), params.keys().collect::<Vec<_>>());
    for (name, t) in &params {
        assert_eq!(back[name].dims(), t.dims(), "{name}");
        assert_eq!(bits(&back[name]), bits(t), "{name}");
    }
    // Serialization is deterministic.
    assert_eq!(to_safetensors_bytes(&params, Some(meta)).unwrap(), bytes);
}

#[test]
fn round_trip_file_is_atomic_and_overwrites() {
    let dir = std::env::temp_dir().join(format!("convkit-tensor-io-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    let params = lenet_like();
    save_safetensors(&path, &params, None).unwrap();
    let smaller = BTreeMap::from([("w".to_string(), Tensor::ones(&[2]))]);
    save_safetensors(&path, &smaller, Some(HashMap::from([("k".into(), "v".into())]))).unwrap();
    let (back, meta) = load_safetensors_with_metadata(&path).unwrap();
    assert_eq!(back, smaller);
    assert_eq!(meta["k"], "v");
    // No temporaries are left next to the file.
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("model.safetensors")]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reads_a_file_written_by_hand() {
    // A header as PyTorch's safetensors writes it, with a data section of two f32.
    let data: Vec<u8> = [1.0f32, -2.5].iter().flat_map(|v| v.to_le_bytes()).collect();
    let bytes = raw(r#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, &data);
    let t = from_safetensors_bytes(&bytes).unwrap();
    assert_eq!(t["b"].as_slice(), &[1.0, -2.5]);
}

#[test]
fn empty_map_round_trips() {
    let empty: BTreeMap<String, Tensor> = BTreeMap::new();
    let bytes = to_safetensors_bytes(&empty, None).unwrap();
    assert!(from_safetensors_bytes(&bytes).unwrap().is_empty());
}

fn err_text(bytes: &[u8]) -> String {
    from_safetensors_bytes(bytes).unwrap_err().to_string()
}

#[test]
fn truncated_files_are_errors() {
    let bytes = to_safetensors_bytes(&lenet_like(), None).unwrap();
    for cut in [0, 3, 8, 9, bytes.len() / 2, bytes.len() - 1] {
        let msg = err_text(&bytes[..cut]);
        assert!(
            msg.starts_with(&format!("safetensors: cannot parse a buffer of {cut} bytes")),
            "{msg}"
        );
    }
    // Extra trailing bytes are also inconsistent with the header.
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(from_safetensors_bytes(&longer).is_err());
}

#[test]
fn bad_header_length_is_an_error() {
    let bytes = to_safetensors_bytes(&lenet_like(), None).unwrap();
    for n in [u64::MAX, 1 << 40, bytes.len() as u64, 1] {
        let mut b = bytes.clone();
        b[..8].copy_from_slice(&n.to_le_bytes());
        assert!(from_safetensors_bytes(&b).is_err(), "header length {n}");
    }
}

#[test]
fn bad_json_and_bad_utf8_are_errors() {
    let msg = err_text(&raw(r#"{"a":{"dtype":"F32","#, &[]));
    assert!(msg.contains("JSON"), "{msg}");
    assert!(from_safetensors_bytes(&raw("[1, 2]", &[])).is_err());
    let mut bad = raw("{\"\u{e9}\":1}", &[]);
    bad[10] = 0xff;
    assert!(from_safetensors_bytes(&bad).is_err());
}

#[test]
fn wrong_dtype_names_tensor_and_dtype() {
    let bytes =
        raw(r#"{"fc1.weight":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]}}"#, &[0; 8]);
    let e = from_safetensors_bytes(&bytes).unwrap_err();
    assert!(matches!(e, TensorError::UnsupportedDtype { .. }));
    assert_eq!(
        e.to_string(),
        "safetensors: tensor `fc1.weight` has dtype F16 with shape [2, 2]; only F32 is supported"
    );
    let bytes = raw(r#"{"step":{"dtype":"I64","shape":[],"data_offsets":[0,8]}}"#, &[0; 8]);
    assert!(err_text(&bytes).contains("`step` has dtype I64"));
}

#[test]
fn offsets_out_of_range_or_inconsistent_are_errors() {
    // End beyond the data.
    let b = raw(r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,100]}}"#, &[0; 8]);
    assert!(from_safetensors_bytes(&b).is_err());
    // Offsets that do not match the shape.
    let b = raw(r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, &[0; 8]);
    assert!(from_safetensors_bytes(&b).is_err());
    // A gap between tensors.
    let b = raw(
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
        &[0; 12],
    );
    assert!(from_safetensors_bytes(&b).is_err());
    // Start after end.
    let b = raw(r#"{"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#, &[0; 8]);
    assert!(from_safetensors_bytes(&b).is_err());
    // A shape whose element count overflows.
    let b = raw(
        r#"{"w":{"dtype":"F32","shape":[18446744073709551615,4],"data_offsets":[0,8]}}"#,
        &[0; 8],
    );
    assert!(from_safetensors_bytes(&b).is_err());
}

#[test]
fn unwritable_target_is_an_io_error_naming_the_path() {
    let path = std::env::temp_dir().join("convkit-no-such-dir").join("sub").join("m.safetensors");
    let e = save_safetensors(&path, [("w", &Tensor::ones(&[1]))], None).unwrap_err();
    assert!(matches!(e, TensorError::Io { op: "writing", .. }), "{e}");
    assert!(e.to_string().contains("convkit-no-such-dir"), "{e}");
}

#[test]
fn missing_file_names_the_path() {
    let e = load_safetensors("/definitely/not/here.safetensors").unwrap_err();
    assert!(matches!(e, TensorError::Io { op: "reading", .. }));
    assert!(e.to_string().contains("/definitely/not/here.safetensors"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Flipping bytes or cutting anywhere gives an error or a valid map, never a panic.
    #[test]
    fn corrupted_buffers_never_panic(pos in any::<prop::sample::Index>(), byte: u8, cut in any::<prop::sample::Index>()) {
        let bytes = to_safetensors_bytes(&lenet_like(), None).unwrap();
        let mut b = bytes.clone();
        let i = pos.index(b.len());
        b[i] = byte;
        let _ = from_safetensors_bytes(&b);
        let _ = from_safetensors_bytes(&bytes[..cut.index(bytes.len())]);
    }
}
