//! The max-pool gradient of the transform against a direct computation: on
//! a synthetic classifier `MaxPool -> Flatten -> Gemm -> Softmax`, the plain
//! gradient of a class score must route each window's incoming gradient (the
//! Gemm weight of that window for the class) to the window's maximum, for
//! pools the transform handles by stride phase (equal strides, stride at
//! most the kernel) and for those it handles by unfolding windows (a stride
//! larger than the kernel), with padding, odd sizes and `ceil_mode`.
//!
//! Inputs are pseudo-random and distinct, so every window has one maximum.
//! Tolerance 1e-5: each expected value is a sum of at most four Gemm weights
//! (below 1 in magnitude); only the order of the float additions may differ.

mod saliency_common;

use face_perception::saliency::onnx_proto::{
    AttributeProto, GraphProto, NodeProto, TensorProto, ValueInfoProto, DT_FLOAT,
};
use face_perception::saliency::{GradientModel, SaliencyMethod};
use ndarray::Array4;
use saliency_common::{encode_model, ort_ready};

const CHANNELS: usize = 2;
const CLASSES: usize = 3;
const BATCH: usize = 2;
const TOLERANCE: f32 = 1e-5;

/// A max pool's geometry (square kernel and stride, pads begin/end per axis).
#[derive(Debug, Clone, Copy)]
struct Pool {
    kernel: usize,
    stride: usize,
    /// Top, left, bottom, right.
    pads: [usize; 4],
    ceil_mode: bool,
    height: usize,
    width: usize,
}

impl Pool {
    fn out_len(&self, input: usize, begin: usize, end: usize) -> usize {
        let span = input + begin + end - self.kernel;
        let steps = if self.ceil_mode {
            span.div_ceil(self.stride)
        } else {
            span / self.stride
        };
        steps + 1
    }

    fn out_dims(&self) -> (usize, usize) {
        (
            self.out_len(self.height, self.pads[0], self.pads[2]),
            self.out_len(self.width, self.pads[1], self.pads[3]),
        )
    }
}

/// Deterministic pseudo-random values in (-1, 1).
fn values(seed: u32, n: usize) -> Vec<f32> {
    let mut state = seed.max(1);
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state as f64 / u32::MAX as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: output.to_string(),
        op_type: op.to_string(),
        attribute,
        ..Default::default()
    }
}

fn classifier(pool: &Pool, weights: &[f32]) -> Vec<u8> {
    let (oh, ow) = pool.out_dims();
    let features = (CHANNELS * oh * ow) as i64;
    let k = pool.kernel as i64;
    let s = pool.stride as i64;
    let pads: Vec<i64> = pool.pads.iter().map(|&p| p as i64).collect();
    let graph = GraphProto {
        node: vec![
            node(
                "MaxPool",
                &["x"],
                "pooled",
                vec![
                    AttributeProto::ints("kernel_shape", &[k, k]),
                    AttributeProto::ints("strides", &[s, s]),
                    AttributeProto::ints("pads", &[pads[0], pads[1], pads[2], pads[3]]),
                    AttributeProto::int("ceil_mode", i64::from(pool.ceil_mode)),
                ],
            ),
            node(
                "Flatten",
                &["pooled"],
                "features",
                vec![AttributeProto::int("axis", 1)],
            ),
            node("Gemm", &["features", "w", "b"], "logits", vec![]),
            node(
                "Softmax",
                &["logits"],
                "probabilities",
                vec![AttributeProto::int("axis", 1)],
            ),
        ],
        name: "pool".to_string(),
        initializer: vec![
            TensorProto::from_f32("w", &[features, CLASSES as i64], weights),
            TensorProto::from_f32("b", &[CLASSES as i64], &[0.1, -0.1, 0.2]),
        ],
        input: vec![ValueInfoProto::tensor(
            "x",
            DT_FLOAT,
            &[
                None,
                Some(CHANNELS as i64),
                Some(pool.height as i64),
                Some(pool.width as i64),
            ],
        )],
        output: vec![ValueInfoProto::tensor(
            "probabilities",
            DT_FLOAT,
            &[None, Some(CLASSES as i64)],
        )],
        ..Default::default()
    };
    encode_model(graph, "saliency_pooling test")
}

/// The gradient of class `class`'s score at `x`, computed window by window.
fn expected_gradient(
    pool: &Pool,
    x: &Array4<f32>,
    weights: &[f32],
    classes: &[usize],
) -> Array4<f32> {
    let (oh, ow) = pool.out_dims();
    let mut grad = Array4::zeros(x.raw_dim());
    for (n, &class) in classes.iter().enumerate() {
        for c in 0..CHANNELS {
            for i in 0..oh {
                for j in 0..ow {
                    let mut best: Option<(usize, usize)> = None;
                    for di in 0..pool.kernel {
                        for dj in 0..pool.kernel {
                            let (Some(r), Some(q)) = (
                                (i * pool.stride + di).checked_sub(pool.pads[0]),
                                (j * pool.stride + dj).checked_sub(pool.pads[1]),
                            ) else {
                                continue;
                            };
                            if r >= pool.height || q >= pool.width {
                                continue;
                            }
                            if best.is_none_or(|(br, bq)| x[[n, c, r, q]] > x[[n, c, br, bq]]) {
                                best = Some((r, q));
                            }
                        }
                    }
                    let (r, q) = best.expect("every window holds an input cell");
                    let feature = (c * oh + i) * ow + j;
                    grad[[n, c, r, q]] += weights[feature * CLASSES + class];
                }
            }
        }
    }
    grad
}

fn check(pool: Pool, seed: u32) {
    let (oh, ow) = pool.out_dims();
    let weights = values(seed, CHANNELS * oh * ow * CLASSES);
    let x = Array4::from_shape_vec(
        (BATCH, CHANNELS, pool.height, pool.width),
        values(seed + 7, BATCH * CHANNELS * pool.height * pool.width),
    )
    .unwrap();
    let classes = [0, 2];
    let mut model =
        GradientModel::new(&classifier(&pool, &weights), None, SaliencyMethod::Plain, 1)
            .unwrap_or_else(|e| panic!("{pool:?}: {e}"));
    let got = model.gradients(x.view(), Some(&classes)).unwrap();
    let want = expected_gradient(&pool, &x, &weights, &classes);
    assert_eq!(got.shape(), want.shape(), "{pool:?}");
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= TOLERANCE, "{pool:?}: off by {worst}");
    assert!(want.iter().any(|v| *v != 0.0), "{pool:?}: an empty check");
}

fn pool(kernel: usize, stride: usize, pads: [usize; 4], height: usize, width: usize) -> Pool {
    Pool {
        kernel,
        stride,
        pads,
        ceil_mode: false,
        height,
        width,
    }
}

#[test]
fn overlapping_windows_with_padding_as_in_mini_xception() {
    assert!(ort_ready());
    check(pool(3, 2, [1, 1, 1, 1], 9, 9), 11);
    check(pool(3, 2, [1, 1, 1, 1], 8, 6), 12);
}

#[test]
fn windows_without_padding_odd_sizes_and_asymmetric_pads() {
    assert!(ort_ready());
    check(pool(2, 2, [0; 4], 8, 8), 21);
    check(pool(3, 2, [0; 4], 8, 7), 22);
    check(pool(3, 2, [1, 0, 0, 1], 7, 9), 23);
    check(pool(3, 1, [1, 1, 1, 1], 6, 5), 24);
    check(pool(3, 3, [0; 4], 9, 10), 25);
}

#[test]
fn ceil_mode_and_strides_larger_than_the_kernel() {
    assert!(ort_ready());
    check(
        Pool {
            ceil_mode: true,
            ..pool(3, 2, [0; 4], 8, 8)
        },
        31,
    );
    // Stride 3 over a 2x2 kernel: some cells are in no window (unfold path).
    check(pool(2, 3, [0; 4], 9, 8), 32);
}
