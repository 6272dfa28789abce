//! Import of the operator patterns other exporters write, on hand-built graphs: `MatMul` +
//! `Add` as a linear layer, `Reshape` as a flatten, `Constant`, `Identity`, `Dropout` with a
//! ratio input; and the graph shapes import refuses.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::run;
use convkit_nn::{Layer, Module, named_params};
use convkit_onnx::proto::{
    AttributeProto, DATA_TYPE_FLOAT, DATA_TYPE_INT64, Dimension, DimensionValue, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto,
    TypeProtoTensor, ValueInfoProto, attribute_type,
};
use convkit_onnx::{OnnxError, import};
use convkit_tensor::{Rng, Tensor};
use prost::Message;

fn floats(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.to_vec(),
        data_type: DATA_TYPE_FLOAT,
        name: name.into(),
        float_data: data.to_vec(),
        ..Default::default()
    }
}

fn ints(name: &str, data: &[i64]) -> TensorProto {
    TensorProto {
        dims: vec![data.len() as i64],
        data_type: DATA_TYPE_INT64,
        name: name.into(),
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| (*s).into()).collect(),
        output: outputs.iter().map(|s| (*s).into()).collect(),
        name: name.into(),
        op_type: op.into(),
        ..Default::default()
    }
}

fn value(name: &str, dims: &[i64]) -> ValueInfoProto {
    let mut dim =
        vec![Dimension { value: Some(DimensionValue::DimParam("n".into())), ..Default::default() }];
    dim.extend(
        dims.iter()
            .map(|&d| Dimension { value: Some(DimensionValue::DimValue(d)), ..Default::default() }),
    );
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: DATA_TYPE_FLOAT,
                shape: Some(TensorShapeProto { dim }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn model(nodes: Vec<NodeProto>, inits: Vec<TensorProto>, input_dims: &[i64]) -> Vec<u8> {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(GraphProto {
            node: nodes,
            initializer: inits,
            input: vec![value("x", input_dims)],
            output: vec![value("y", &[])],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

#[test]
fn matmul_and_bias_add_import_as_a_linear_layer() {
    // y = x · B + c with B [2, 3]: the linear weight is Bᵀ.
    let bytes = model(
        vec![
            node("MatMul", "/fc/MatMul", &["x", "fc.weight_t"], &["h"]),
            node("Add", "/fc/Add", &["h", "fc.bias"], &["y"]),
        ],
        vec![
            floats("fc.weight_t", &[2, 3], &[1., 2., 3., 4., 5., 6.]),
            floats("fc.bias", &[3], &[0.5, 0.0, -0.5]),
        ],
        &[2],
    );
    let m = import(&bytes).unwrap();
    let Layer::Sequential(children) = m.describe() else { panic!() };
    assert_eq!(children.len(), 1);
    assert!(matches!(children[0].1.describe(), Layer::Linear { bias: Some(_), .. }));
    let x = Tensor::from_vec(&[1, 2], vec![1.0, -1.0]).unwrap();
    // [1·1 − 4, 2 − 5, 3 − 6] + c
    assert_eq!(run(&m, &x).as_slice(), &[-2.5, -3.0, -3.5]);
    assert_eq!(named_params(&m)[0].0, "fc.weight");
}

#[test]
fn reshape_to_features_constant_identity_and_dropout_import() {
    let mut dropout = node("Dropout", "/drop/Dropout", &["f", "ratio"], &["g", "mask"]);
    dropout.output[1].clear();
    let constant = NodeProto {
        attribute: vec![AttributeProto {
            name: "value".into(),
            r#type: attribute_type::TENSOR,
            t: Some(ints("", &[-1, 12])),
            ..Default::default()
        }],
        ..node("Constant", "/Constant", &[], &["shape"])
    };
    let bytes = model(
        vec![
            constant,
            node("Identity", "/Identity", &["x"], &["i"]),
            node("Reshape", "/Reshape", &["i", "shape"], &["f"]),
            dropout,
            node("Relu", "/Relu", &["g"], &["y"]),
        ],
        vec![floats("ratio", &[], &[0.25])],
        &[3, 2, 2],
    );
    let m = import(&bytes).unwrap();
    let Layer::Sequential(children) = m.describe() else { panic!() };
    let kinds: Vec<&str> = children.iter().map(|(_, c)| c.describe().kind()).collect();
    assert_eq!(kinds, ["Flatten", "Dropout", "ReLU"]);
    assert!(matches!(children[1].1.describe(), Layer::Dropout { p } if p == 0.25));
    // Evaluation mode: the dropout is the identity.
    let x = Tensor::rand_uniform(&[2, 3, 2, 2], -1.0, 1.0, &mut Rng::new(0)).unwrap();
    assert_eq!(run(&m, &x).as_slice(), x.map(|v| v.max(0.0)).as_slice());

    // A reshape to anything but [batch, features] is refused.
    let bytes = model(
        vec![node("Reshape", "/Reshape", &["x", "shape"], &["y"])],
        vec![ints("shape", &[-1, 6])],
        &[3, 2, 2],
    );
    let e = import(&bytes).unwrap_err().to_string();
    assert!(e.contains("is not a flatten"), "{e}");
}

#[test]
fn graphs_that_are_not_chains_are_refused() {
    // Three readers of one value.
    let bytes = model(
        vec![
            node("Relu", "a", &["x"], &["p"]),
            node("Tanh", "b", &["x"], &["q"]),
            node("Sigmoid", "c", &["x"], &["r"]),
            node("Add", "d", &["p", "q"], &["y"]),
        ],
        vec![],
        &[2],
    );
    let e = import(&bytes).unwrap_err();
    assert!(matches!(e, OnnxError::Graph(_)) && e.to_string().contains("read by 3 nodes"), "{e}");
    // A fork that nothing joins.
    let bytes = model(
        vec![node("Relu", "a", &["x"], &["y"]), node("Tanh", "b", &["x"], &["z"])],
        vec![],
        &[2],
    );
    assert!(import(&bytes).unwrap_err().to_string().contains("which no Add joins"));
    // A dead branch off the path.
    let bytes = model(
        vec![node("Relu", "a", &["x"], &["y"]), node("Tanh", "b", &["w"], &["z"])],
        vec![],
        &[2],
    );
    assert!(import(&bytes).unwrap_err().to_string().contains("off the path"));
    // Weights computed from the input.
    let bytes = model(vec![node("Conv", "conv", &["x", "x"], &["y"])], vec![], &[1, 3, 3]);
    let e = import(&bytes).unwrap_err().to_string();
    assert!(e.contains("must be an initializer"), "{e}");
    // A custom domain.
    let mut custom = node("Relu", "custom", &["x"], &["y"]);
    custom.domain = "com.example".into();
    let e = import(&model(vec![custom], vec![], &[2])).unwrap_err().to_string();
    assert!(e.contains("`com.example::Relu`"), "{e}");
}

#[test]
fn x_plus_x_is_a_residual_with_an_identity_body() {
    let bytes = model(vec![node("Add", "/Add", &["x", "x"], &["y"])], vec![], &[2]);
    let m = import(&bytes).unwrap();
    let x = Tensor::from_vec(&[1, 2], vec![1.5, -2.0]).unwrap();
    assert_eq!(run(&m, &x).as_slice(), &[3.0, -4.0]);
}
