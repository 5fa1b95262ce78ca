//! The guided back-propagation rule: at every ReLU the gradient passes only
//! where the forward input is positive and the incoming gradient is
//! positive; nothing passes anywhere else.
//!
//! Checked exactly on a tiny synthetic network whose gradient is known in
//! closed form, and on every ReLU inside the real emotion and gender networks
//! (through the transform's ReLU taps).

mod saliency_common;

use face_perception::saliency::onnx_proto::{
    AttributeProto, GraphProto, NodeProto, TensorProto, ValueInfoProto, DT_FLOAT,
};
use face_perception::saliency::{
    gradient_model_bytes_with_relu_taps, GradientModel, SaliencyError, SaliencyMethod,
};
use ndarray::{Array4, ArrayD};
use ort::session::Session;
use ort::value::TensorRef;
use saliency_common::{encode_model, golden_batch, model, ort_ready};

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    output: &str,
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: name.to_string(),
        op_type: op.to_string(),
        attribute,
        ..Default::default()
    }
}

/// x [N,1,2,2] -> Flatten -> Gemm(I, b1) = h -> Relu -> Gemm(W2) = logits -> Softmax.
/// With W1 = I the gradient at x is the gradient at h, so the ReLU's rule is
/// visible directly in the output. `activation` replaces the ReLU's op type.
fn tiny_classifier(b1: [f32; 4], w2: [[f32; 3]; 4], activation: &str) -> Vec<u8> {
    let identity: Vec<f32> = (0..16)
        .map(|i| if i % 5 == 0 { 1.0 } else { 0.0 })
        .collect();
    let w2_flat: Vec<f32> = w2.iter().flatten().copied().collect();
    let graph = GraphProto {
        node: vec![
            node(
                "Flatten",
                "flatten",
                &["x"],
                "f",
                vec![AttributeProto::int("axis", 1)],
            ),
            node("Gemm", "fc1", &["f", "w1", "b1"], "h", vec![]),
            node(activation, "act", &["h"], "r", vec![]),
            node("Gemm", "fc2", &["r", "w2", "b2"], "logits", vec![]),
            node(
                "Softmax",
                "softmax",
                &["logits"],
                "probabilities",
                vec![AttributeProto::int("axis", 1)],
            ),
        ],
        name: "tiny".to_string(),
        initializer: vec![
            TensorProto::from_f32("w1", &[4, 4], &identity),
            TensorProto::from_f32("b1", &[4], &b1),
            TensorProto::from_f32("w2", &[4, 3], &w2_flat),
            TensorProto::from_f32("b2", &[3], &[0.1, -0.2, 0.3]),
        ],
        input: vec![ValueInfoProto::tensor(
            "x",
            DT_FLOAT,
            &[None, Some(1), Some(2), Some(2)],
        )],
        output: vec![ValueInfoProto::tensor(
            "probabilities",
            DT_FLOAT,
            &[None, Some(3)],
        )],
        ..Default::default()
    };
    encode_model(graph, "saliency_guided test")
}

const B1: [f32; 4] = [0.5, -0.5, 0.5, -0.5];
const W2: [[f32; 3]; 4] = [
    [1.5, -1.0, 0.2],
    [-2.0, 2.0, 0.1],
    [0.75, -3.0, 0.0],
    [-1.0, 0.5, 0.4],
];

/// Two items: h = x + b1 is [+, +, -, -] for the first and [-, +, +, +] for the second.
fn tiny_batch() -> Array4<f32> {
    let x = [[0.2f32, 0.8, -0.9, -0.9], [-0.6, 0.9, -0.3, 1.1]];
    Array4::from_shape_fn((2, 1, 2, 2), |(n, _, y, xx)| x[n][y * 2 + xx])
}

#[test]
fn guided_rule_on_a_tiny_network_is_exact() {
    if !ort_ready() {
        return;
    }
    let bytes = tiny_classifier(B1, W2, "Relu");
    let batch = tiny_batch();
    let classes = [0usize, 1];
    let mut guided =
        GradientModel::new(&bytes, None, SaliencyMethod::Guided, 1).expect("guided model");
    let mut plain =
        GradientModel::new(&bytes, None, SaliencyMethod::Plain, 1).expect("plain model");
    let g = guided
        .gradients(batch.view(), Some(&classes))
        .expect("guided gradients");
    let p = plain
        .gradients(batch.view(), Some(&classes))
        .expect("plain gradients");
    for n in 0..2 {
        for j in 0..4 {
            let h = batch[[n, 0, j / 2, j % 2]] + B1[j];
            let incoming = W2[j][classes[n]];
            let expected_plain = if h > 0.0 { incoming } else { 0.0 };
            let expected_guided = if h > 0.0 && incoming > 0.0 {
                incoming
            } else {
                0.0
            };
            assert_eq!(
                p[[n, 0, j / 2, j % 2]],
                expected_plain,
                "plain item {n} unit {j}"
            );
            assert_eq!(
                g[[n, 0, j / 2, j % 2]],
                expected_guided,
                "guided item {n} unit {j} (h {h}, grad {incoming})"
            );
        }
    }
    // The default class is the arg-max of the logits.
    let result = guided.run(batch.view(), None).expect("default classes");
    for n in 0..2 {
        let row = result.scores.row(n);
        let argmax = (0..3)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap_or(0);
        assert_eq!(result.classes[n], argmax);
    }
}

#[test]
fn unsupported_op_is_named_at_start_up() {
    if !ort_ready() {
        return;
    }
    let bytes = tiny_classifier(B1, W2, "Sigmoid");
    match GradientModel::new(&bytes, None, SaliencyMethod::Guided, 1) {
        Err(SaliencyError::UnsupportedOp { op, node }) => {
            assert_eq!(op, "Sigmoid");
            assert_eq!(node, "act");
        }
        other => panic!("expected UnsupportedOp, got {other:?}"),
    }
}

/// Every ReLU inside a real network obeys the rule, exactly.
fn check_real_network(name: &str) {
    if !ort_ready() {
        return;
    }
    let Some((bytes, _)) = model(name) else {
        return;
    };
    let Some((batch, _)) = golden_batch(name) else {
        return;
    };
    let graph = gradient_model_bytes_with_relu_taps(&bytes, None, SaliencyMethod::Guided)
        .expect("transform");
    let env = face_perception::runtime::environment().expect("ort");
    let mut session = Session::builder(env)
        .expect("builder")
        .commit_from_memory(&graph)
        .expect("session");
    let classes = ndarray::Array1::from_elem(batch.dim().0, -1i64);
    let outputs = session
        .run(ort::inputs![
            TensorRef::from_array_view(batch.view()).expect("batch"),
            TensorRef::from_array_view(classes.view()).expect("classes")
        ])
        .expect("run");
    let get = |tap: &str| -> ArrayD<f32> {
        outputs[tap]
            .try_extract_array::<f32>()
            .expect("tap")
            .to_owned()
    };
    let relus: Vec<String> = outputs
        .keys()
        .filter_map(|k| {
            k.strip_prefix("tap/")
                .and_then(|k| k.strip_suffix("/x"))
                .map(str::to_string)
        })
        .collect();
    assert!(!relus.is_empty(), "{name}: no ReLU taps");
    let (mut passed, mut blocked_negative_input, mut blocked_negative_grad) =
        (0usize, 0usize, 0usize);
    for relu in &relus {
        let x = get(&format!("tap/{relu}/x"));
        let grad_out = get(&format!("tap/{relu}/grad_out"));
        let grad_in = get(&format!("tap/{relu}/grad_in"));
        assert_eq!(x.shape(), grad_in.shape());
        for ((&xv, &go), &gi) in x.iter().zip(grad_out.iter()).zip(grad_in.iter()) {
            if xv > 0.0 && go > 0.0 {
                assert_eq!(
                    gi, go,
                    "{name} {relu}: positive input and gradient must pass unchanged"
                );
                passed += 1;
            } else {
                assert_eq!(
                    gi, 0.0,
                    "{name} {relu}: x {xv}, incoming {go} must pass nothing"
                );
                if xv <= 0.0 {
                    blocked_negative_input += 1;
                } else {
                    blocked_negative_grad += 1;
                }
            }
        }
    }
    eprintln!(
        "{name}: {} ReLUs, {passed} values passed, {blocked_negative_input} blocked by the input, \
         {blocked_negative_grad} blocked by the gradient",
        relus.len()
    );
    assert!(passed > 0 && blocked_negative_input > 0 && blocked_negative_grad > 0);
}

#[test]
fn guided_rule_holds_at_every_relu_of_the_emotion_network() {
    check_real_network("emotion");
}

#[test]
fn guided_rule_holds_at_every_relu_of_the_gender_network() {
    check_real_network("gender");
}

#[test]
fn batch_edge_cases_are_handled() {
    if !ort_ready() {
        return;
    }
    let bytes = tiny_classifier(B1, W2, "Relu");
    let mut model = GradientModel::new(&bytes, None, SaliencyMethod::Guided, 1).expect("model");
    assert_eq!(model.input_dims(), &[1, 2, 2]);
    assert_eq!(model.num_classes(), 3);
    // No faces: no run, empty result.
    let empty = Array4::<f32>::zeros((0, 1, 2, 2));
    assert_eq!(
        model
            .gradients(empty.view(), None)
            .expect("empty batch")
            .dim(),
        (0, 1, 2, 2)
    );
    // Wrong image size, wrong number of classes, class out of range.
    let wrong = Array4::<f32>::zeros((1, 1, 3, 2));
    assert!(matches!(
        model.gradients(wrong.view(), None),
        Err(SaliencyError::InputShape { .. })
    ));
    let batch = tiny_batch();
    assert!(matches!(
        model.gradients(batch.view(), Some(&[0])),
        Err(SaliencyError::Classes { .. })
    ));
    assert!(matches!(
        model.gradients(batch.view(), Some(&[0, 3])),
        Err(SaliencyError::Classes { .. })
    ));
    // A non-contiguous view is accepted.
    let doubled = Array4::from_shape_fn((4, 1, 2, 2), |(n, c, y, x)| batch[[n / 2, c, y, x]]);
    let every_other = doubled.slice(ndarray::s![..;2, .., .., ..]);
    assert!(!every_other.is_standard_layout());
    assert_eq!(
        model
            .gradients(every_other, Some(&[0, 1]))
            .expect("strided view"),
        model
            .gradients(batch.view(), Some(&[0, 1]))
            .expect("contiguous")
    );
    // Not an ONNX model.
    assert!(matches!(
        GradientModel::new(b"not a model", None, SaliencyMethod::Guided, 1),
        Err(SaliencyError::Decode { .. })
    ));
}
