//! Small ONNX models built in memory, for doctests, unit tests and the fuzz target's seeds.

use prost::Message;

use crate::proto::{
    Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorShapeProto, TensorTypeProto, TypeProto,
    ValueInfoProto,
};

/// A value of type float with the given dimensions (`None`: symbolic).
pub fn float_value(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: 1,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            dim_value: *d,
                            dim_param: d.is_none().then(|| "N".to_string()),
                        })
                        .collect(),
                }),
            }),
        }),
    }
}

/// A model of `nodes` at `opset`, with one input `x` of shape `(N, c, h, w)` and output `y`.
pub fn model(nodes: Vec<NodeProto>, opset: i64, c: i64, h: i64, w: i64) -> Vec<u8> {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        producer_name: "extremal-onnx tests".into(),
        graph: Some(GraphProto {
            node: nodes,
            name: "g".into(),
            input: vec![float_value("x", &[None, Some(c), Some(h), Some(w)])],
            output: vec![float_value("y", &[])],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// One ReLU node named as the TorchScript exporter names module `act`'s ReLU.
pub fn relu_model() -> Vec<u8> {
    model(
        vec![NodeProto {
            input: vec!["x".into()],
            output: vec!["y".into()],
            name: "/act/Relu".into(),
            op_type: "Relu".into(),
            ..Default::default()
        }],
        17,
        1,
        1,
        2,
    )
}
