//! `precision: int8` on the real test photos (`tests/fixtures/models/photos`,
//! not used to calibrate the int8 models: tools/quantize_models.py calibrates
//! on the benchmark frames), against fp32 with the real models of `models/`.
//!
//! Acceptance (the astronaut with int8: tests/core_pipeline.rs): int8
//! CenterFace finds the faces fp32 finds and no other, each within
//! [`INT8_BOX_IOU`]; on the same faces, int8 gender gives fp32's top-1 with
//! probabilities within [`INT8_GENDER_PROBABILITY`], and the partly int8
//! emotion model gives fp32's top-1 with probabilities within
//! [`INT8_EMOTION_PROBABILITY`]. Saliency explains the fp32 gender model at
//! the class int8 ranked first, and an explained gender keeps its int8
//! probabilities.

use face_perception::classify::{Classification, ClassifierTask};
use face_perception::config::{Config, RawConfig};
use face_perception::frame::{Frame, FrameLimits, RawImage};
use face_perception::manifest::Manifest;
use face_perception::parallel::Cores;
use face_perception::pipeline::{
    ClassifiedFaces, Explain, FrameRequest, Pipeline, SaliencyRequest,
};
use face_perception::saliency::stage::{FrameSaliency, SaliencyStage};
use face_perception::saliency::SaliencyMethod;
use std::path::PathBuf;

const PHOTOS: [&str; 4] = [
    "astronaut.jpg",
    "camera.jpg",
    "grace_hopper.jpg",
    "group.jpg",
];
/// Detection sizes: the default `detection_max_side` and the whole photo.
const DETECTION_SIDES: [i64; 2] = [320, 4096];
/// Minimum IoU between an int8 box and the fp32 box of the same face.
/// Measured here: 0.928 at the lowest (11 faces; the colleague's run of
/// tools/quantize_models.py measured 0.807 on small faces of the calibration
/// frames). The detector sees 320 px: one int8 step of the `scale` or
/// `offset` head moves a box edge by a fraction of a stride-4 cell, i.e.
/// several frame pixels, a tenth of IoU on a 30 px face; 0.8 allows that
/// and still fails a box shifted or scaled by a fifth of its size.
const INT8_BOX_IOU: f32 = 0.8;
/// Largest difference between int8 and fp32 gender probabilities on the same
/// chips, on faces fp32 is sure of (top probability >= [`CONFIDENT`]).
/// Measured here: 0.010 (the group composite's astronaut at full size).
const INT8_GENDER_PROBABILITY: f32 = 0.02;
/// The same on any face. Measured here: 0.146, on the group composite's
/// astronaut (37 x 45 px) with landmarks from the 320 px detection, where
/// fp32 itself is unsure (0.67 female; int8 0.52, still female).
const INT8_GENDER_PROBABILITY_UNSURE: f32 = 0.2;
/// Largest difference between the partly int8 emotion model's probabilities
/// and fp32's on the same chips (only its last two residual blocks and the
/// classifier are int8). Measured here: 0.020 (11 faces); on chips of the
/// same faces cut in Python (bilinear, no supersampling) 0.047.
const INT8_EMOTION_PROBABILITY: f32 = 0.05;
/// fp32 top probability above which a face counts as one the model is sure of.
const CONFIDENT: f32 = 0.85;
/// An explained classifier's probabilities against the plain run of the same
/// pipeline (the bound tests/core_pipeline.rs uses at fp32, where they come
/// from the gradient graph's forward pass), and the least difference that
/// shows int8 is not fp32.
const EXPLAINED_TOLERANCE: f32 = 1e-4;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn photo(name: &str) -> Frame {
    let path = repo().join("tests/fixtures/models/photos").join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Frame::from_compressed("jpeg", &bytes, &FrameLimits::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn config(precision: &str, detector: &str, detection_max_side: i64) -> Config {
    Config::from_raw(RawConfig {
        models_dir: repo().join("models").to_string_lossy().into_owned(),
        precision: precision.into(),
        detector: detector.into(),
        detection_max_side,
        tracking: false,
        smoothing: "off".into(),
        intra_op_threads: 1,
        ..RawConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// `frame` resized by `scale` (OpenCV's area interpolation).
fn scaled(frame: &Frame, scale: f64) -> Frame {
    use opencv::core::{Mat, Size, Vec3b};
    use opencv::prelude::*;
    let (w, h) = (frame.width() as i32, frame.height() as i32);
    let source = Mat::new_rows_cols_with_bytes::<Vec3b>(h, w, frame.data()).unwrap();
    let size = Size::new(
        (f64::from(w) * scale).round() as i32,
        (f64::from(h) * scale).round() as i32,
    );
    let mut out = Mat::default();
    opencv::imgproc::resize(
        &source,
        &mut out,
        size,
        0.0,
        0.0,
        opencv::imgproc::INTER_AREA,
    )
    .unwrap();
    let raw = RawImage {
        width: size.width as u32,
        height: size.height as u32,
        encoding: "rgb8",
        is_bigendian: false,
        step: size.width as u32 * 3,
        data: out.data_bytes().unwrap(),
    };
    Frame::from_raw(&raw, &FrameLimits::default()).unwrap()
}

fn pipeline(precision: &str, detector: &str, detection_max_side: i64) -> Pipeline {
    Pipeline::new(&config(precision, detector, detection_max_side))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn model_file(p: &Pipeline, task: ClassifierTask) -> &str {
    p.classifier(task).map_or("", |c| c.model_file())
}

/// int8 gender and (partly) int8 emotion.
fn assert_int8_classifiers(p: &Pipeline) {
    assert_eq!(model_file(p, ClassifierTask::Gender), "gender-v1.int8.onnx");
    assert_eq!(
        model_file(p, ClassifierTask::Emotion),
        "emotion_mini_xception.int8.onnx"
    );
}

fn max_difference(a: &Classification, b: &Classification) -> f32 {
    a.probabilities
        .iter()
        .zip(&b.probabilities)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn int8_loads_the_int8_variants_only_where_they_exist() {
    assert_int8_classifiers(&pipeline("int8", "dnn", 320));
    let p = pipeline("fp32", "dnn", 320);
    assert_eq!(model_file(&p, ClassifierTask::Gender), "gender-v1.onnx");
    assert_eq!(
        model_file(&p, ClassifierTask::Emotion),
        "emotion_mini_xception.onnx"
    );
}

#[test]
fn int8_centerface_finds_the_fp32_faces() {
    let mut worst = f32::INFINITY;
    for side in DETECTION_SIDES {
        let mut fp32 = pipeline("fp32", "dnn", side);
        let mut int8 = pipeline("int8", "dnn", side);
        for name in PHOTOS {
            let frame = photo(name);
            let expected = fp32.detect(&frame).unwrap();
            let found = int8.detect(&frame).unwrap();
            assert!(!expected.is_empty(), "{name} at {side}: fp32 finds a face");
            assert_eq!(
                found.len(),
                expected.len(),
                "{name} at {side}: fp32 {expected:?}, int8 {found:?}"
            );
            // Each fp32 face has its own int8 box (no two share one).
            let mut used = vec![false; found.len()];
            for e in &expected {
                let (best, iou) = found
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !used[*i])
                    .map(|(i, f)| (i, e.bbox.iou(&f.bbox)))
                    .fold((usize::MAX, 0.0), |a, b| if b.1 > a.1 { b } else { a });
                assert!(
                    iou >= INT8_BOX_IOU,
                    "{name} at {side}: fp32 box {:?}, best int8 IoU {iou}",
                    e.bbox
                );
                used[best] = true;
                worst = worst.min(iou);
            }
        }
    }
    println!("int8 vs fp32 CenterFace: lowest box IoU {worst:.3}");
}

/// Every face fp32 CenterFace finds on the test photos at each detection
/// side, classified for `task` by the fp32 and the int8 pipeline on the same
/// faces (so only the classifier differs): (where, fp32, int8) per face.
fn same_faces_both_precisions(
    task: ClassifierTask,
) -> Vec<(String, Classification, Classification)> {
    let mut pairs = Vec::new();
    for side in DETECTION_SIDES {
        let mut fp32 = pipeline("fp32", "dnn", side);
        let mut int8 = pipeline("int8", "dnn", side);
        for name in PHOTOS {
            let frame = photo(name);
            let faces = fp32.detect(&frame).unwrap();
            let of_task = |c: ClassifiedFaces| match task {
                ClassifierTask::Gender => c.gender,
                ClassifierTask::Emotion => c.emotion,
                ClassifierTask::Age => c.age,
            };
            let a = of_task(fp32.classify(&frame, &faces).unwrap()).unwrap();
            let b = of_task(int8.classify(&frame, &faces).unwrap()).unwrap();
            assert_eq!(a.len(), faces.len(), "{name} at {side}");
            assert_eq!(b.len(), faces.len(), "{name} at {side}");
            for (i, (a, b)) in a.into_iter().zip(b).enumerate() {
                assert_eq!(a.top, b.top, "{name} at {side}, face {i}: {a:?} vs {b:?}");
                pairs.push((format!("{name} at {side}, face {i}"), a, b));
            }
        }
    }
    pairs
}

#[test]
fn int8_gender_keeps_the_fp32_top_class() {
    let (mut sure, mut unsure) = (0.0f32, 0.0f32);
    let pairs = same_faces_both_precisions(ClassifierTask::Gender);
    for (at, a, b) in &pairs {
        let difference = max_difference(a, b);
        let (bound, largest) = if a.confidence() >= CONFIDENT {
            (INT8_GENDER_PROBABILITY, &mut sure)
        } else {
            (INT8_GENDER_PROBABILITY_UNSURE, &mut unsure)
        };
        assert!(difference <= bound, "{at}: {a:?} vs {b:?}");
        *largest = largest.max(difference);
    }
    println!(
        "int8 vs fp32 gender: {} faces, largest probability difference {sure:.4} where \
         fp32 is sure, {unsure:.4} where it is not",
        pairs.len()
    );
}

#[test]
fn int8_emotion_keeps_the_fp32_top_class() {
    let mut largest = 0.0f32;
    let pairs = same_faces_both_precisions(ClassifierTask::Emotion);
    for (at, a, b) in &pairs {
        let difference = max_difference(a, b);
        assert!(
            difference <= INT8_EMOTION_PROBABILITY,
            "{at}: {a:?} vs {b:?}"
        );
        largest = largest.max(difference);
    }
    println!(
        "int8 vs fp32 emotion: {} faces, largest probability difference {largest:.4}",
        pairs.len()
    );
}

/// Under int8 an explained classifier still reports its int8 labels (they
/// must not depend on whether saliency is requested), and its saliency is the
/// fp32 gradient graph's for the class int8 ranked first. BlazeFace has no
/// int8 variant, so both pipelines see the same faces. The cameraman, half
/// hidden by his camera, is a face fp32 gender is unsure of (about 0.35 to
/// 0.53 male, depending on the scale of the photo), so the scale is searched
/// for one where int8 ranks the other gender first (half size when the test
/// was written: the test prints the one it used). On Grace Hopper the int8
/// model is within 7e-5 of fp32, too close to tell from the bound.
#[test]
fn explained_gender_keeps_its_int8_labels() {
    let mut fp32 = pipeline("fp32", "blazeface", 320);
    let mut int8 = pipeline("int8", "blazeface", 320);
    let camera = photo("camera.jpg");
    let top = |p: &mut Pipeline, frame: &Frame| {
        let result = p.process(frame, &FrameRequest::default()).unwrap();
        result
            .faces
            .first()
            .and_then(|f| f.gender.as_ref())
            .map(|g| g.top)
    };
    let (scale, frame) = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
        .into_iter()
        .map(|scale| (scale, scaled(&camera, scale)))
        .find(|(_, frame)| top(&mut fp32, frame) != top(&mut int8, frame))
        .expect("a scale of the cameraman where fp32 and int8 rank the genders differently");
    println!("cameraman at scale {scale}: fp32 and int8 rank the genders differently");
    let explain = FrameRequest {
        explain: Some(Explain {
            method: SaliencyMethod::Guided,
            tasks: vec![ClassifierTask::Gender],
        }),
        ..Default::default()
    };
    let plain_fp32 = fp32.process(&frame, &FrameRequest::default()).unwrap();
    let plain_int8 = int8.process(&frame, &FrameRequest::default()).unwrap();
    let explained = int8.process(&frame, &explain).unwrap();
    let explained_fp32 = fp32.process(&frame, &explain).unwrap();
    assert_eq!(explained.saliency_images.len(), 1);
    assert_eq!(plain_fp32.faces.len(), 1);
    assert_eq!(explained.faces.len(), 1);
    let gender = |r: &face_perception::pipeline::FrameResult| r.faces[0].gender.clone().unwrap();
    let (f, q, e) = (gender(&plain_fp32), gender(&plain_int8), gender(&explained));
    assert!(
        max_difference(&q, &e) < EXPLAINED_TOLERANCE,
        "explained {e:?} vs plain int8 {q:?}"
    );
    // The int8 model really differs, else this test shows nothing.
    assert!(
        max_difference(&f, &q) > EXPLAINED_TOLERANCE,
        "int8 {q:?} vs fp32 {f:?}"
    );
    // The map is that of int8's top class on the classifier's chip, which
    // here is not fp32's top class.
    assert_ne!(f.top, q.top, "fp32 {f:?}, int8 {q:?}");
    let inputs = int8
        .process(
            &frame,
            &FrameRequest {
                saliency: Some(SaliencyRequest {
                    task: ClassifierTask::Gender,
                    class_index: None,
                }),
                ..Default::default()
            },
        )
        .unwrap()
        .saliency
        .unwrap();
    let manifest = Manifest::load(&repo().join("models")).unwrap();
    let mut stage = SaliencyStage::new(1, Cores::plan(false, 1));
    let method = SaliencyMethod::Guided;
    let of_int8_top = stage
        .run(
            &manifest,
            ClassifierTask::Gender,
            method,
            inputs.batch.view(),
            Some(&[q.top]),
        )
        .unwrap();
    let expected = SaliencyStage::render(
        &frame,
        ClassifierTask::Gender,
        method,
        of_int8_top.maps.view(),
        &inputs.chips,
        &inputs.face_ids,
    )
    .unwrap();
    let maps = |s: &FrameSaliency| s.face_maps.clone();
    assert_eq!(maps(&explained.saliency_images[0]), maps(&expected));
    assert_ne!(
        maps(&explained.saliency_images[0]),
        maps(&explained_fp32.saliency_images[0]),
        "fp32's top class gives another map"
    );
}

#[test]
fn reconfigure_swaps_only_the_models_with_an_int8_variant() {
    let frame = photo("astronaut.jpg");
    let mut p = pipeline("fp32", "dnn", 320);
    let before = p.detect(&frame).unwrap();
    p.reconfigure(&config("int8", "dnn", 320)).unwrap();
    assert_int8_classifiers(&p);
    let int8 = p.detect(&frame).unwrap();
    assert_eq!(int8.len(), before.len());
    assert_ne!(int8[0].score, before[0].score, "detector still fp32");
    p.reconfigure(&config("fp32", "dnn", 320)).unwrap();
    assert_eq!(model_file(&p, ClassifierTask::Gender), "gender-v1.onnx");
    assert_eq!(p.detect(&frame).unwrap(), before, "fp32 detector back");
}
