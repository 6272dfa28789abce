//! Corrupt, truncated and hostile files give errors, never panics, and never make import
//! allocate much more than the file's size. `CONVKIT_ONNX_FUZZ_CASES` sets the number of
//! mutations per property (default 3000).
//!
//! A counting global allocator measures, per thread, the peak bytes live during each
//! `import`; the bound checked is `4 × file size + 256 KiB` (the decoded messages, the
//! tensors copied out of them, names and maps).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use convkit_autograd::Var;
use convkit_nn::{Module, Sequential};
use convkit_onnx::proto::{
    AttributeProto, DATA_TYPE_FLOAT, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    TensorProto, attribute_type,
};
use convkit_onnx::{ExportOptions, OnnxError, export, import};
use convkit_tensor::Tensor;
use proptest::prelude::*;
use prost::Message;

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    // `try_with`: the thread-locals may be gone while a thread shuts down.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Imports `bytes`, checking the allocation bound; when the import succeeds, also runs the
/// model on `x` (which may fail, but must not panic).
fn import_bounded(bytes: &[u8], x: &Tensor) -> Result<Sequential, OnnxError> {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let result = import(bytes);
    let peak = PEAK.with(Cell::get) - base;
    let bound = 4 * bytes.len() as isize + (256 << 10);
    assert!(peak <= bound, "import of {} bytes peaked at {peak} bytes", bytes.len());
    if let Ok(m) = &result {
        let _ = m.forward(&Var::constant(x.clone()));
    }
    result
}

fn conv_bn_bytes() -> Vec<u8> {
    export(&common::conv_bn_net(), [3, 16, 16], &ExportOptions::default()).unwrap()
}

fn residual_bytes() -> Vec<u8> {
    export(&common::residual_net(1), [3, 12, 12], &ExportOptions::default()).unwrap()
}

fn small_input(c: usize, hw: usize) -> Tensor {
    Tensor::full(&[2, c, hw, hw], 0.5)
}

/// What a mutation does to a file.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBits(Vec<(usize, u8)>),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    /// Copies `len` bytes from `from` over position `to` (a splice of the file into itself).
    Splice {
        from: usize,
        to: usize,
        len: usize,
    },
    /// Overwrites bytes with a varint that declares a huge length.
    HugeLength(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        prop::collection::vec((any::<usize>(), 0u8..8), 1..8).prop_map(Mutation::FlipBits),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, b)| Mutation::Insert(at, b)),
        (any::<usize>(), any::<usize>(), 1usize..512)
            .prop_map(|(from, to, len)| Mutation::Splice { from, to, len }),
        any::<usize>().prop_map(Mutation::HugeLength),
    ]
}

fn apply(bytes: &[u8], m: &Mutation) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let n = b.len();
    match m {
        Mutation::FlipBits(flips) => {
            for &(i, bit) in flips {
                b[i % n] ^= 1 << bit;
            }
        }
        Mutation::Truncate(len) => b.truncate(len % n),
        Mutation::Insert(at, ins) => {
            let at = at % (n + 1);
            b.splice(at..at, ins.iter().copied());
        }
        Mutation::Splice { from, to, len } => {
            let (from, to) = (from % n, to % n);
            let len = (*len).min(n - from).min(n - to);
            let chunk = bytes[from..from + len].to_vec();
            b[to..to + len].copy_from_slice(&chunk);
        }
        Mutation::HugeLength(at) => {
            let at = at % n;
            let varint = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
            let end = (at + varint.len()).min(n);
            b[at..end].copy_from_slice(&varint[..end - at]);
        }
    }
    b
}

/// Cases per property: `CONVKIT_ONNX_FUZZ_CASES`, default 3000.
fn cases() -> u32 {
    std::env::var("CONVKIT_ONNX_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
}

/// PyTorch's files (torch's node names, `Gemm`, `Flatten`, folded and unfolded batch norm,
/// residual `Add`s), one picked per case.
fn pytorch_bytes(pick: usize) -> Vec<u8> {
    static FILES: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    let files = FILES.get_or_init(|| {
        ["convbn.onnx", "convbn_fused.onnx", "resnet_tiny.onnx"]
            .iter()
            .map(|f| std::fs::read(common::fixture(f)).unwrap())
            .collect()
    });
    files[pick % files.len()].clone()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn mutated_pytorch_files_never_panic(pick in any::<usize>(), m in mutation()) {
        let bytes = apply(&pytorch_bytes(pick), &m);
        let hw = if pick % 3 == 2 { 12 } else { 16 };
        let _ = import_bounded(&bytes, &small_input(3, hw));
    }

    #[test]
    fn mutated_conv_bn_files_never_panic(m in mutation()) {
        let bytes = apply(&conv_bn_bytes_cached(), &m);
        let _ = import_bounded(&bytes, &small_input(3, 16));
    }

    #[test]
    fn mutated_residual_files_never_panic(m in mutation()) {
        let bytes = apply(&residual_bytes_cached(), &m);
        let _ = import_bounded(&bytes, &small_input(3, 12));
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = import_bounded(&bytes, &small_input(3, 8));
    }
}

fn conv_bn_bytes_cached() -> Vec<u8> {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(conv_bn_bytes).clone()
}

fn residual_bytes_cached() -> Vec<u8> {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(residual_bytes).clone()
}

#[test]
fn the_mutation_tests_start_from_files_that_import() {
    let bytes = conv_bn_bytes();
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    assert!(import(&bytes).is_ok());
    // The counter counts: the tensors alone are most of the file.
    assert!(PEAK.with(Cell::get) - base > bytes.len() as isize / 2);
    assert!(import(&residual_bytes()).is_ok());
}

/// The mutations reach past the decoder: some files still import, and the errors come from
/// every stage (decoding, attributes, graph structure; tensor errors have their own tests).
#[test]
fn mutations_reach_every_stage_of_import() {
    let bytes = residual_bytes();
    let mut rng = convkit_tensor::Rng::new(5);
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..2000 {
        let at = rng.next_u64() as usize;
        let m = match rng.next_u64() % 3 {
            0 => Mutation::FlipBits(vec![(at, (rng.next_u64() % 8) as u8)]),
            1 => Mutation::Truncate(at),
            _ => Mutation::Splice { from: rng.next_u64() as usize, to: at, len: 8 },
        };
        let kind = match import_bounded(&apply(&bytes, &m), &small_input(3, 12)) {
            Ok(_) => "ok",
            Err(OnnxError::Decode(_)) => "decode",
            Err(OnnxError::Tensor { .. }) => "tensor",
            Err(OnnxError::UnsupportedAttribute { .. }) => "attribute",
            Err(OnnxError::UnsupportedOp { .. }) => "op",
            Err(OnnxError::Graph(_)) => "graph",
            Err(_) => "other",
        };
        *counts.entry(kind).or_insert(0) += 1;
    }
    println!("outcomes of 2000 mutations: {counts:?}");
    for kind in ["ok", "decode", "attribute", "graph"] {
        assert!(counts.contains_key(kind), "no `{kind}` outcome: {counts:?}");
    }
}

/// A one-node model `Relu` or `Conv` around an initializer, to corrupt field by field.
fn model_with(node: NodeProto, initializer: Vec<TensorProto>) -> Vec<u8> {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(GraphProto {
            node: vec![node],
            initializer,
            input: vec![convkit_onnx::proto::ValueInfoProto {
                name: "x".into(),
                ..Default::default()
            }],
            output: vec![convkit_onnx::proto::ValueInfoProto {
                name: "y".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

fn conv_node(attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: vec!["x".into(), "w".into()],
        output: vec!["y".into()],
        name: "/conv/Conv".into(),
        op_type: "Conv".into(),
        attribute: attrs,
        ..Default::default()
    }
}

fn weight(dims: Vec<i64>, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        dims,
        data_type: DATA_TYPE_FLOAT,
        name: "w".into(),
        raw_data: raw,
        ..Default::default()
    }
}

fn import_err(bytes: &[u8]) -> String {
    match import_bounded(bytes, &small_input(1, 4)) {
        Ok(_) => panic!("imported a bad file"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_valid_hand_built_conv_imports() {
    let bytes = model_with(conv_node(vec![]), vec![weight(vec![2, 1, 3, 3], vec![0; 72])]);
    let m = import(&bytes).unwrap();
    let y = m.forward(&Var::constant(Tensor::ones(&[1, 1, 4, 4]))).unwrap();
    assert_eq!(y.dims(), [1, 2, 2, 2]);
}

#[test]
fn huge_dims_are_refused_before_allocating() {
    // 2^40 x 2^40 floats declared, 4 bytes present.
    let e = import_err(&model_with(
        conv_node(vec![]),
        vec![weight(vec![1 << 40, 1 << 40, 1, 1], vec![0; 4])],
    ));
    assert!(e.contains("overflow") || e.contains("need"), "{e}");
    // A product that fits but far exceeds the data.
    let e = import_err(&model_with(
        conv_node(vec![]),
        vec![weight(vec![1 << 20, 1 << 10, 3, 3], vec![0; 8])],
    ));
    assert!(e.contains("bytes of raw data, the file has 8"), "{e}");
    let e = import_err(&model_with(
        conv_node(vec![]),
        vec![weight(vec![i64::MAX, 2, 1, 1], vec![0; 4])],
    ));
    assert!(e.contains("overflow"), "{e}");
}

#[test]
fn negative_dims_wrong_types_and_lengths_are_errors() {
    let e =
        import_err(&model_with(conv_node(vec![]), vec![weight(vec![-1, 1, 3, 3], vec![0; 36])]));
    assert!(e.contains("negative dim"), "{e}");
    let e = import_err(&model_with(conv_node(vec![]), vec![weight(vec![2, 1, 3, 3], vec![0; 71])]));
    assert!(e.contains("need 72 bytes"), "{e}");
    let mut int_weight = weight(vec![2, 1, 3, 3], vec![0; 72]);
    int_weight.data_type = 7;
    let e = import_err(&model_with(conv_node(vec![]), vec![int_weight]));
    assert!(e.contains("not float32"), "{e}");
    let mut floats = weight(vec![2, 1, 3, 3], Vec::new());
    floats.float_data = vec![0.0; 17];
    let e = import_err(&model_with(conv_node(vec![]), vec![floats]));
    assert!(e.contains("need 18 floats, the file has 17"), "{e}");
    // An attribute of the wrong type.
    let strides = AttributeProto {
        name: "strides".into(),
        r#type: attribute_type::FLOAT,
        f: 2.0,
        ..Default::default()
    };
    let e = import_err(&model_with(
        conv_node(vec![strides]),
        vec![weight(vec![2, 1, 3, 3], vec![0; 72])],
    ));
    assert!(e.contains("`strides` has type 1, expected 7"), "{e}");
}

#[test]
fn unsupported_ops_and_attributes_are_named() {
    let node = NodeProto {
        input: vec!["x".into()],
        output: vec!["y".into()],
        name: "/act/LeakyRelu".into(),
        op_type: "LeakyRelu".into(),
        ..Default::default()
    };
    let e = import_err(&model_with(node, vec![]));
    assert!(
        e.contains("`LeakyRelu`")
            && e.contains("/act/LeakyRelu")
            && e.contains("supported: Conv, Gemm"),
        "{e}"
    );
    let pads = AttributeProto {
        name: "pads".into(),
        r#type: attribute_type::INTS,
        ints: vec![0, 0, 1, 1],
        ..Default::default()
    };
    let e =
        import_err(&model_with(conv_node(vec![pads]), vec![weight(vec![2, 1, 3, 3], vec![0; 72])]));
    assert!(e.contains("/conv/Conv") && e.contains("symmetric"), "{e}");
    let odd = AttributeProto {
        name: "frobnicate".into(),
        r#type: attribute_type::INT,
        i: 1,
        ..Default::default()
    };
    let e =
        import_err(&model_with(conv_node(vec![odd]), vec![weight(vec![2, 1, 3, 3], vec![0; 72])]));
    assert!(e.contains("`frobnicate` is not supported; supported: auto_pad, dilations"), "{e}");
}

/// A graph nested `depth` levels deep through `If`-style subgraph attributes.
fn nested(depth: usize) -> Vec<u8> {
    let mut g = GraphProto::default();
    for _ in 0..depth {
        let attr = AttributeProto {
            name: "then_branch".into(),
            r#type: attribute_type::GRAPH,
            g: Some(g),
            ..Default::default()
        };
        g = GraphProto {
            node: vec![NodeProto {
                op_type: "If".into(),
                attribute: vec![attr],
                ..Default::default()
            }],
            ..Default::default()
        };
    }
    ModelProto { graph: Some(g), ..Default::default() }.encode_to_vec()
}

#[test]
fn prost_bounds_nesting() {
    // Each level is three messages (graph, node, attribute); prost's limit is 100.
    let e = import(&nested(40)).unwrap_err();
    assert!(matches!(e, OnnxError::Decode(_)), "{e}");
    assert!(e.to_string().contains("recursion limit"), "{e}");
    // Shallow nesting decodes, and the control-flow op is then refused by name.
    let e = import(&nested(5)).unwrap_err();
    assert!(matches!(e, OnnxError::Graph(_) | OnnxError::UnsupportedOp { .. }), "{e}");
    // Far deeper nesting is refused just the same, without exhausting the stack.
    assert!(matches!(import(&nested(5000)), Err(OnnxError::Decode(_))));
}

#[test]
fn truncated_wrong_wire_types_and_empty_files_are_errors() {
    let bytes = conv_bn_bytes();
    for len in [0, 1, 2, 10, bytes.len() / 2, bytes.len() - 1] {
        assert!(import(&bytes[..len]).is_err(), "a file truncated to {len} bytes imported");
    }
    // Field 7 (graph) as a varint instead of a message.
    assert!(matches!(import(&[7 << 3, 1]), Err(OnnxError::Decode(_))));
    // A length-delimited field that declares 2^62 bytes.
    let mut huge = vec![7 << 3 | 2];
    huge.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
    assert!(matches!(import(&huge), Err(OnnxError::Decode(_))));
}

#[test]
fn export_names_unsupported_layers() {
    struct Custom;
    impl Module for Custom {
        fn forward(&self, x: &Var) -> convkit_nn::Result<Var> {
            Ok(x.clone())
        }
        fn visit_params(&self, _: &str, _: &mut dyn FnMut(String, &convkit_autograd::Param)) {}
    }
    let m = Sequential::new()
        .push_named("features", Sequential::new().push(convkit_nn::ReLU).push(Custom));
    let e = export(&m, [1, 4, 4], &ExportOptions::default()).unwrap_err().to_string();
    assert!(
        e.contains("`features.1`") && e.contains("hostile::") && e.contains("supported: Conv2d"),
        "{e}"
    );
    let e = export(&m, [0, 4, 4], &ExportOptions::default()).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
}
