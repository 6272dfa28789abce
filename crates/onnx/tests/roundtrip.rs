//! Export then import gives back the same model: same logits, same parameter names.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{ROUND_TRIP, assert_logits_close, run, tensors};
use convkit_nn::{Module, Sequential, named_buffers, named_params};
use convkit_onnx::{ExportOptions, export, import};
use convkit_tensor::{Rng, Tensor};

fn round_trip(what: &str, m: &Sequential, chw: [usize; 3], x: &Tensor) -> Sequential {
    let bytes = export(m, chw, &ExportOptions::default()).unwrap();
    let back = import(&bytes).unwrap();
    assert_logits_close(&format!("{what} export→import"), &run(&back, x), &run(m, x), ROUND_TRIP);
    back
}

fn names(m: &dyn Module) -> Vec<String> {
    named_params(m).into_iter().chain(named_buffers(m)).map(|(n, _)| n).collect()
}

#[test]
fn lenet5_round_trips_with_its_names() {
    let m = common::lenet5();
    let x = tensors("lenet5_io.safetensors")["input"].clone();
    let back = round_trip("lenet5", &m, [1, 32, 32], &x);
    assert_eq!(names(&back), names(&m));
}

#[test]
fn conv_bn_net_round_trips() {
    let m = common::conv_bn_net();
    let x = tensors("convbn_io.safetensors")["input"].clone();
    let back = round_trip("conv-bn", &m, [3, 16, 16], &x);
    assert_eq!(names(&back), names(&m));
}

#[test]
fn residual_net_round_trips() {
    let m = common::residual_net(7);
    let x = Tensor::rand_uniform(&[5, 3, 12, 12], -1.0, 1.0, &mut Rng::new(8)).unwrap();
    let back = round_trip("residual", &m, [3, 12, 12], &x);
    // Every parameter and buffer comes back under its name (`layer2.shortcut.0.weight`).
    assert_eq!(names(&back), names(&m));
    let round_again = export(&back, [3, 12, 12], &ExportOptions::default()).unwrap();
    assert!(import(&round_again).is_ok());
}

#[test]
fn export_does_not_change_the_model() {
    let mut m = common::residual_net(9);
    m.set_training(true);
    let before: Vec<Vec<f32>> =
        named_buffers(&m).iter().map(|(_, p)| p.value().as_slice().to_vec()).collect();
    export(&m, [3, 12, 12], &ExportOptions::default()).unwrap();
    let after: Vec<Vec<f32>> =
        named_buffers(&m).iter().map(|(_, p)| p.value().as_slice().to_vec()).collect();
    assert_eq!(before, after, "running statistics moved during export");
}

#[test]
fn exported_graph_has_the_documented_layout() {
    use convkit_onnx::proto::{DimensionValue, ModelProto};
    use prost::Message;

    let m = common::lenet5();
    let model =
        ModelProto::decode(export(&m, [1, 32, 32], &ExportOptions::default()).unwrap().as_slice())
            .unwrap();
    assert_eq!(model.ir_version, 8);
    assert_eq!(model.opset_import.len(), 1);
    assert_eq!((model.opset_import[0].domain.as_str(), model.opset_import[0].version), ("", 17));
    let g = model.graph.unwrap();
    let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
    assert_eq!(
        ops,
        [
            "Conv",
            "Relu",
            "AveragePool",
            "Conv",
            "Relu",
            "AveragePool",
            "Flatten",
            "Gemm",
            "Relu",
            "Gemm",
            "Relu",
            "Gemm"
        ]
    );
    assert_eq!(g.node[0].name, "/conv1/Conv");
    assert_eq!(g.node[0].input, ["input", "conv1.weight", "conv1.bias"]);
    assert_eq!(g.node.last().unwrap().output, ["logits"]);
    let inits: Vec<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(inits.len(), 10);
    assert!(inits.contains(&"fc3.bias"));
    let dims = |v: &convkit_onnx::proto::ValueInfoProto| -> Vec<DimensionValue> {
        let t = v.r#type.as_ref().unwrap().tensor_type.as_ref().unwrap();
        t.shape.as_ref().unwrap().dim.iter().map(|d| d.value.clone().unwrap()).collect()
    };
    assert_eq!(g.input[0].name, "input");
    assert_eq!(
        dims(&g.input[0]),
        [
            DimensionValue::DimParam("batch".into()),
            DimensionValue::DimValue(1),
            DimensionValue::DimValue(32),
            DimensionValue::DimValue(32)
        ]
    );
    assert_eq!(g.output[0].name, "logits");
    assert_eq!(
        dims(&g.output[0]),
        [DimensionValue::DimParam("batch".into()), DimensionValue::DimValue(10)]
    );

    // A fixed batch, other names.
    let opts = ExportOptions {
        input_name: "x".into(),
        output_name: "y".into(),
        batch_dim: None,
        ..Default::default()
    };
    let g = ModelProto::decode(export(&m, [1, 32, 32], &opts).unwrap().as_slice())
        .unwrap()
        .graph
        .unwrap();
    assert_eq!(dims(&g.input[0])[0], DimensionValue::DimValue(1));
    assert_eq!((g.input[0].name.as_str(), g.output[0].name.as_str()), ("x", "y"));
    // Without an operator set import does not guess the operators' semantics.
    let e = import(&ModelProto { graph: Some(g), ..Default::default() }.encode_to_vec());
    assert!(e.unwrap_err().to_string().contains("operator set"));
}

#[test]
fn dropout_is_omitted_and_an_identity_model_still_exports() {
    use convkit_nn::{Dropout, ReLU};
    let m = Sequential::new()
        .push(Dropout::new(0.5, 1).unwrap())
        .push(ReLU)
        .push(Dropout::new(0.2, 2).unwrap());
    let back = import(&export(&m, [2, 3, 3], &ExportOptions::default()).unwrap()).unwrap();
    assert_eq!(back.len(), 1);
    let x = Tensor::rand_uniform(&[2, 2, 3, 3], -1.0, 1.0, &mut Rng::new(0)).unwrap();
    assert_eq!(run(&back, &x), x.map(|v| v.max(0.0)));
    let only_dropout = Sequential::new().push(Dropout::new(0.5, 1).unwrap());
    let back =
        import(&export(&only_dropout, [2, 3, 3], &ExportOptions::default()).unwrap()).unwrap();
    assert_eq!(run(&back, &x), x);
}

#[test]
fn folding_batch_norm_removes_it_and_keeps_the_function() {
    use convkit_onnx::proto::ModelProto;
    use prost::Message;

    let opts = ExportOptions { fold_batch_norm: true, ..Default::default() };
    for (what, m, chw) in [
        ("conv-bn", common::conv_bn_net(), [3, 16, 16]),
        ("residual", common::residual_net(3), [3, 12, 12]),
    ] {
        let bytes = export(&m, chw, &opts).unwrap();
        let g = ModelProto::decode(bytes.as_slice()).unwrap().graph.unwrap();
        assert!(g.node.iter().all(|n| n.op_type != "BatchNormalization"), "{what}");
        let back = import(&bytes).unwrap();
        let [c, h, w] = chw;
        let x = Tensor::rand_uniform(&[3, c, h, w], -1.0, 1.0, &mut Rng::new(1)).unwrap();
        // Folding rounds differently from normalizing: the peers' tolerance, not exact.
        assert_logits_close(
            &format!("{what} folded export→import"),
            &run(&back, &x),
            &run(&m, &x),
            common::PEER,
        );
        assert!(named_buffers(&back).is_empty());
    }
}
