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

/// The saliency stage explains the classes it is given, whether one
/// classifier's faces run on one thread or are shared between two
/// (`SaliencyStage::run_each`), as the int8 pipeline asks it to (the class
/// its int8 classifier ranked first). Each face's lowest-ranked class is
/// asked for, so that the default (the graph's own top class) would differ.
#[test]
fn the_stage_explains_the_classes_it_is_given() {
    use face_perception::classify::ClassifierTask;
    use face_perception::manifest::Manifest;
    use face_perception::parallel::Cores;
    use face_perception::saliency::stage::{SaliencyJob, SaliencyStage};
    use ndarray::s;

    if !ort_ready() {
        return;
    }
    let Ok(manifest) = Manifest::load(&repo().join("models")) else {
        return;
    };
    let (Some((emotion, _)), Some((gender, _))) = (golden_batch("emotion"), golden_batch("gender"))
    else {
        return;
    };
    // Equal batch sizes, so that the stage may share the faces.
    let n = emotion.dim().0.min(gender.dim().0);
    let batches = [
        (ClassifierTask::Emotion, emotion.slice(s![..n, .., .., ..])),
        (ClassifierTask::Gender, gender.slice(s![..n, .., .., ..])),
    ];
    let method = SaliencyMethod::Guided;
    let mut alone = SaliencyStage::new(1, Cores::plan(false, 1));
    let mut lowest = Vec::new();
    let mut expected = Vec::new();
    for (task, batch) in &batches {
        let top = alone.run(&manifest, *task, method, *batch, None).unwrap();
        let classes: Vec<usize> = top
            .scores
            .rows()
            .into_iter()
            .map(|row| {
                (0..row.len())
                    .min_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .unwrap()
            })
            .collect();
        assert_ne!(classes, top.classes, "{task:?}: lowest differs from top");
        let asked = alone
            .run(&manifest, *task, method, *batch, Some(&classes))
            .unwrap();
        assert_eq!(asked.classes, classes);
        let moved = (&asked.maps - &top.maps)
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()));
        assert!(moved > 0.0, "{task:?}: the class asked for changes the map");
        lowest.push(classes);
        expected.push(asked);
    }
    let jobs: Vec<SaliencyJob<'_>> = batches
        .iter()
        .zip(&lowest)
        .map(|((task, batch), classes)| SaliencyJob {
            task: *task,
            batch: *batch,
            classes: Some(classes),
        })
        .collect();
    let mut shared = SaliencyStage::new(2, Cores::plan(false, 2));
    // The first run cuts by equal costs; later ones by the measured costs,
    // which split a classifier's faces between the two threads.
    for run in 0..3 {
        let got = shared.run_each(&manifest, method, &jobs).unwrap();
        for ((task, _), (got, want)) in batches.iter().zip(got.iter().zip(&expected)) {
            assert_eq!(got.classes, want.classes, "run {run}, {task:?}");
            let scale = want.maps.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = (&got.maps - &want.maps)
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                worst <= 1e-5 * scale,
                "run {run}, {task:?}: maps differ by {worst} (largest {scale})"
            );
        }
    }
}
