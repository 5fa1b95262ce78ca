//! The gradient model's forward half is the classifier: its class scores
//! match the golden outputs of the models engineer's reference runs (so the
//! ONNX decode/re-encode keeps every weight), the arg-max default picks the
//! predicted class, and Grad-CAM maps are non-negative, input-sized and not
//! flat.

mod saliency_common;

use face_perception::saliency::{GradientModel, SaliencyError, SaliencyMethod, SaliencyOptions};
use ndarray::{Array2, Axis};
use saliency_common::{golden_batch, model, ort_ready, repo};

/// Tolerance on scores and probabilities against the golden outputs (the
/// fixtures' own tolerance).
const GOLDEN_TOLERANCE: f32 = 1e-4;

/// A golden output `[N, K]` by name, from `tests/fixtures/models/golden/<model>.json`.
fn golden_output(model_name: &str, output: &str) -> Option<Array2<f32>> {
    let dir = repo().join("tests/fixtures/models/golden");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{model_name}.json"))).ok()?,
    )
    .ok()?;
    let entry = json["outputs"]
        .as_array()?
        .iter()
        .find(|o| o["name"] == output)?;
    let shape: Vec<usize> = entry["shape"]
        .as_array()?
        .iter()
        .filter_map(|v| v.as_u64())
        .map(|v| v as usize)
        .collect();
    let bytes = std::fs::read(dir.join(entry["file"].as_str()?)).ok()?;
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Array2::from_shape_vec((shape[0], shape[1]), values).ok()
}

fn softmax_rows(scores: &Array2<f32>) -> Array2<f32> {
    let mut out = scores.clone();
    for mut row in out.rows_mut() {
        let max = row.iter().copied().fold(f32::MIN, f32::max);
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row.mapv_inplace(|v| v / sum);
    }
    out
}

fn check_scores(name: &str, golden_name: &str, golden_is_probability: bool) {
    if !ort_ready() {
        return;
    }
    let (Some((bytes, _)), Some((batch, _)), Some(golden)) = (
        model(name),
        golden_batch(name),
        golden_output(name, golden_name),
    ) else {
        return;
    };
    let mut model =
        GradientModel::new(&bytes, None, SaliencyMethod::Guided, 1).expect("gradient model");
    let result = model.run(batch.view(), None).expect("run");
    let got = if golden_is_probability {
        softmax_rows(&result.scores)
    } else {
        result.scores.clone()
    };
    let worst = got
        .iter()
        .zip(golden.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("{name}: max |{golden_name} - golden| = {worst:.2e}");
    assert!(
        worst <= GOLDEN_TOLERANCE,
        "{name}: {golden_name} differ from golden by {worst}"
    );
    for (i, row) in golden.axis_iter(Axis(0)).enumerate() {
        let argmax = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap_or(0);
        assert_eq!(
            result.classes[i], argmax,
            "{name} item {i}: default class is the arg-max"
        );
    }
}

#[test]
fn emotion_scores_match_golden_logits() {
    check_scores("emotion", "logits", false);
}

#[test]
fn gender_scores_match_golden_probabilities() {
    check_scores("gender", "probabilities", true);
}

#[test]
fn gradcam_maps_are_input_sized_non_negative_and_not_flat() {
    if !ort_ready() {
        return;
    }
    for name in ["emotion", "gender"] {
        let (Some((bytes, _)), Some((batch, _))) = (model(name), golden_batch(name)) else {
            return;
        };
        let mut model =
            GradientModel::new(&bytes, None, SaliencyMethod::GradCam, 1).expect("gradcam model");
        let maps = model.gradients(batch.view(), None).expect("gradcam");
        let (n, _, h, w) = batch.dim();
        assert_eq!(maps.dim(), (n, 1, h, w));
        for map in maps.axis_iter(Axis(0)) {
            assert!(
                map.iter().all(|&v| v >= 0.0 && v.is_finite()),
                "{name}: negative or non-finite Grad-CAM"
            );
            let max = map.iter().copied().fold(0f32, f32::max);
            let min = map.iter().copied().fold(f32::MAX, f32::min);
            assert!(max > min, "{name}: flat Grad-CAM map");
        }
    }
}

#[test]
fn gradcam_layer_can_be_named() {
    if !ort_ready() {
        return;
    }
    let (Some((bytes, _)), Some((batch, _))) = (model("emotion"), golden_batch("emotion")) else {
        return;
    };
    let options = |layer| SaliencyOptions {
        method: SaliencyMethod::GradCam,
        gradcam_layer: Some(layer),
        ..Default::default()
    };
    // The 8 x 8 features of the last residual block's separable convolutions.
    let mut model = GradientModel::with_options(&bytes, &options("batch_normalization_14"))
        .expect("named layer");
    let maps = model.gradients(batch.view(), None).expect("gradcam");
    assert_eq!(maps.dim(), (batch.dim().0, 1, 64, 64));
    assert!(matches!(
        GradientModel::with_options(&bytes, &options("no_such_tensor")),
        Err(SaliencyError::InvalidModel { .. })
    ));
}
