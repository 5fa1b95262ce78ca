//! Model fidelity: every file in `models/` is the one the manifest describes,
//! loads in ONNX Runtime through `ort` with the manifest's interface, and
//! reproduces reference outputs computed by an independent implementation.
//!
//! Golden fixtures (`tests/fixtures/models/golden/`, made by
//! `tools/regenerate_fixtures.sh`) hold, per model, preprocessed input tensors
//! cut from openly licensed photos and the outputs of a reference that is not
//! ONNX Runtime: Keras loading `fer`'s original HDF5 for the emotion
//! classifier, TensorFlow Lite's interpreter running the original `.tflite`
//! flatbuffer for BlazeFace (`face_detector`), onnx's pure-numpy
//! `ReferenceEvaluator` for the others. Each tensor is a raw little-endian
//! `f32` file described by a JSON header.
//!
//! Tolerance: [`TOLERANCE`], absolute, per element, on probabilities and raw
//! scores alike (both sides compute in float32; the measured differences are
//! below 1e-5, see `tests/fixtures/models/fidelity_report.json`, except
//! BlazeFace's box regressors, which are in input pixels: up to 5.4e-5 on the
//! golden input, `tests/fixtures/models/blazeface_fidelity.json`).
//!
//! Needs `libonnxruntime.so` 1.31 (`ORT_DYLIB_PATH`, see `src/runtime.rs`).

use face_perception::manifest::{Manifest, ModelEntry, Task};
use ort::session::Session;
use ort::value::{Tensor, TensorElementType, ValueType};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Largest absolute difference allowed between ONNX Runtime and the reference.
const TOLERANCE: f32 = 1e-4;

/// The model names the rest of the crate looks up, with their tasks.
const EXPECTED_MODELS: [(&str, Task); 8] = [
    ("face_detector", Task::FaceDetection),
    ("face_detector_centerface", Task::FaceDetection),
    ("face_detector_centerface_int8", Task::FaceDetection),
    ("emotion", Task::Emotion),
    ("emotion_int8", Task::Emotion),
    ("gender", Task::Gender),
    ("gender_int8", Task::Gender),
    ("age", Task::Age),
];

/// The int8 variants (`precision: int8`) and their fp32 models.
const INT8_VARIANTS: [(&str, &str); 3] = [
    ("face_detector_centerface_int8", "face_detector_centerface"),
    ("emotion_int8", "emotion"),
    ("gender_int8", "gender"),
];

/// One stored tensor: name in the graph, shape, raw `f32` file.
#[derive(Debug, Deserialize)]
struct GoldenTensor {
    name: String,
    shape: Vec<usize>,
    file: String,
}

/// Header of one model's golden fixture.
#[derive(Debug, Deserialize)]
struct Golden {
    model: String,
    reference: String,
    crops: Vec<String>,
    input: GoldenTensor,
    outputs: Vec<GoldenTensor>,
}

/// Expected detections of the face detector on one photo.
#[derive(Debug, Deserialize)]
struct DetectorPhoto {
    file: String,
    width: u32,
    height: u32,
    faces: Vec<DetectorFace>,
}

/// One expected face: `[x1, y1, x2, y2]` in photo pixels.
#[derive(Debug, Deserialize)]
struct DetectorFace {
    #[serde(rename = "box")]
    bounds: [f32; 4],
    landmarks: Vec<[f32; 2]>,
}

/// `tests/fixtures/models/detector.json`.
#[derive(Debug, Deserialize)]
struct DetectorFixture {
    score_threshold: f32,
    photos: Vec<DetectorPhoto>,
}

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models")
}

fn manifest() -> Manifest {
    Manifest::load(&models_dir()).unwrap_or_else(|e| panic!("{e}"))
}

/// A session over a verified model file, single-threaded for repeatability.
fn session_for(manifest: &Manifest, entry: &ModelEntry) -> Session {
    let env = face_perception::runtime::environment().unwrap_or_else(|e| panic!("{e}"));
    let bytes = manifest
        .read_verified(entry)
        .unwrap_or_else(|e| panic!("{e}"));
    let load = || -> Result<Session, String> {
        let builder = Session::builder(env).map_err(|e| e.to_string())?;
        let mut builder = builder.with_intra_threads(1).map_err(|e| e.to_string())?;
        builder
            .commit_from_memory(&bytes)
            .map_err(|e| e.to_string())
    };
    load().unwrap_or_else(|e| {
        panic!(
            "{}: ONNX Runtime cannot load {}: {e}",
            entry.name, entry.file
        )
    })
}

/// Element type and shape (`-1` for dynamic dimensions) of a graph input or output.
fn float_tensor_shape(model: &str, what: &str, dtype: &ValueType) -> Vec<i64> {
    match dtype {
        ValueType::Tensor { ty, shape, .. } => {
            assert_eq!(
                *ty,
                TensorElementType::Float32,
                "{model}: {what} is not float32"
            );
            shape.to_vec()
        }
        other => panic!("{model}: {what} is not a tensor but {other:?}"),
    }
}

fn read_f32(path: &Path, expected_len: usize) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        bytes.len(),
        expected_len * 4,
        "{}: wrong size for its shape",
        path.display()
    );
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

#[test]
fn manifest_names_the_models_with_their_tasks() {
    let manifest = manifest();
    let names: Vec<&str> = manifest.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names.len(), EXPECTED_MODELS.len(), "models: {names:?}");
    for (name, task) in EXPECTED_MODELS {
        let entry = manifest.entry(name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(entry.task, task, "{name}");
        let channels = entry.input.shape.get(1).copied().unwrap_or(0);
        assert_eq!(
            entry.preprocess.mean.len() as i64,
            channels,
            "{name}: one mean per channel"
        );
        assert_eq!(
            entry.preprocess.scale.len() as i64,
            channels,
            "{name}: one scale per channel"
        );
        assert_eq!(entry.input.layout, "NCHW", "{name}");
        match task {
            Task::FaceDetection => {
                assert!(entry.labels.is_empty(), "{name}: a detector has no labels");
                assert!(
                    entry.decode.is_some(),
                    "{name}: a detector needs [model.decode]"
                );
            }
            _ => {
                let classes = entry.outputs.last().and_then(|o| o.shape.last()).copied();
                assert_eq!(
                    Some(entry.labels.len() as i64),
                    classes,
                    "{name}: one label per class"
                );
            }
        }
    }
}

#[test]
fn int8_variants_keep_their_fp32_model_interface() {
    let manifest = manifest();
    for (int8, fp32) in INT8_VARIANTS {
        let q = manifest.entry(int8).unwrap_or_else(|e| panic!("{e}"));
        let f = manifest.entry(fp32).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(q.file, f.file, "{int8}: a file of its own");
        assert_eq!(q.task, f.task, "{int8}");
        assert_eq!(q.labels, f.labels, "{int8}");
        // Specs without PartialEq: compared through their Debug forms.
        for (what, a, b) in [
            ("input", format!("{:?}", q.input), format!("{:?}", f.input)),
            (
                "preprocess",
                format!("{:?}", q.preprocess),
                format!("{:?}", f.preprocess),
            ),
            (
                "outputs",
                format!("{:?}", q.outputs),
                format!("{:?}", f.outputs),
            ),
            (
                "decode",
                format!("{:?}", q.decode),
                format!("{:?}", f.decode),
            ),
        ] {
            assert_eq!(a, b, "{int8}: {what} differs from {fp32}");
        }
        let (qp, fp) = (&q.provenance, &f.provenance);
        assert_eq!(
            (&qp.package, &qp.version, &qp.source_file, &qp.licence),
            (&fp.package, &fp.version, &fp.source_file, &fp.licence),
            "{int8}: same source as {fp32}"
        );
        assert!(
            qp.produced_by.starts_with("tools/quantize_models.py from ")
                && qp.produced_by.contains(&f.file)
                && qp.produced_by.contains(&f.sha256[..8]),
            "{int8}: provenance names the fp32 file it was made from: {}",
            qp.produced_by
        );
    }
}

#[test]
fn every_model_file_matches_its_sha256() {
    let manifest = manifest();
    for entry in &manifest.models {
        manifest
            .read_verified(entry)
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn every_model_loads_with_the_manifest_interface() {
    let manifest = manifest();
    for entry in &manifest.models {
        let session = session_for(&manifest, entry);
        let name = &entry.name;

        let inputs = session.inputs();
        assert_eq!(inputs.len(), 1, "{name}: exactly one graph input");
        assert_eq!(inputs[0].name(), entry.input.name, "{name}: input name");
        let shape = float_tensor_shape(name, "input", inputs[0].dtype());
        assert_eq!(shape, entry.input.shape, "{name}: input shape");

        let outputs: Vec<(&str, Vec<i64>)> = session
            .outputs()
            .iter()
            .map(|o| (o.name(), float_tensor_shape(name, o.name(), o.dtype())))
            .collect();
        let expected: Vec<(&str, Vec<i64>)> = entry
            .outputs
            .iter()
            .map(|o| (o.name.as_str(), o.shape.clone()))
            .collect();
        assert_eq!(
            outputs, expected,
            "{name}: outputs (name, shape) in graph order"
        );
    }
}

#[test]
fn golden_outputs_match_the_independent_references() {
    let manifest = manifest();
    let golden_dir = fixtures_dir().join("golden");
    for entry in &manifest.models {
        let header_path = golden_dir.join(format!("{}.json", entry.name));
        let Ok(text) = std::fs::read_to_string(&header_path) else {
            eprintln!(
                "skipping {}: no fixture at {}",
                entry.name,
                header_path.display()
            );
            continue;
        };
        let golden: Golden = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", header_path.display()));
        assert_eq!(golden.model, entry.name);
        assert_eq!(
            golden.input.name, entry.input.name,
            "{}: fixture input name",
            entry.name
        );

        let input_len = golden.input.shape.iter().product();
        let input = read_f32(&golden_dir.join(&golden.input.file), input_len);
        let tensor = Tensor::from_array((golden.input.shape.clone(), input))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut session = session_for(&manifest, entry);
        let outputs = session
            .run(ort::inputs![golden.input.name.as_str() => tensor])
            .unwrap_or_else(|e| panic!("{}: run failed: {e}", entry.name));

        for expected in &golden.outputs {
            let (shape, actual) = outputs[expected.name.as_str()]
                .try_extract_tensor::<f32>()
                .unwrap_or_else(|e| panic!("{}: output {}: {e}", entry.name, expected.name));
            let actual_shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
            assert_eq!(
                actual_shape, expected.shape,
                "{}: {} shape",
                entry.name, expected.name
            );
            let reference = read_f32(
                &golden_dir.join(&expected.file),
                expected.shape.iter().product(),
            );

            let worst = actual
                .iter()
                .zip(&reference)
                .map(|(a, r)| (a - r).abs())
                .fold(0.0_f32, f32::max);
            assert!(
                worst <= TOLERANCE,
                "{}: {} differs from {} by up to {worst:e} (tolerance {TOLERANCE:e})",
                entry.name,
                expected.name,
                golden.reference
            );

            // Classifier outputs: every crop keeps the reference's top class.
            if entry.task != Task::FaceDetection {
                let classes = *expected.shape.last().unwrap_or(&1);
                for (row, (a, r)) in actual
                    .chunks(classes)
                    .zip(reference.chunks(classes))
                    .enumerate()
                {
                    let crop = golden.crops.get(row).map_or("?", String::as_str);
                    assert_eq!(
                        argmax(a),
                        argmax(r),
                        "{}: top-1 differs on {crop}",
                        entry.name
                    );
                }
            }
        }
    }
}

/// The detector's expected faces are well formed; the box-level check (IoU)
/// belongs with the decoder in `src/detect/`.
#[test]
fn detector_fixture_lists_faces_on_existing_photos() {
    let path = fixtures_dir().join("detector.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("skipping: no fixture at {}", path.display());
        return;
    };
    let fixture: DetectorFixture =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let manifest = manifest();
    let decode = manifest
        .entry("face_detector_centerface")
        .ok()
        .and_then(|e| e.decode.clone())
        .unwrap_or_else(|| panic!("face_detector_centerface has no [model.decode]"));
    assert_eq!(
        fixture.score_threshold,
        decode.score_threshold(),
        "fixture made at another threshold"
    );
    assert!(!fixture.photos.is_empty());
    for photo in &fixture.photos {
        assert!(
            fixtures_dir().join(&photo.file).is_file(),
            "{} missing",
            photo.file
        );
        assert!(
            !photo.faces.is_empty(),
            "{}: every test photo shows a face",
            photo.file
        );
        for face in &photo.faces {
            let [x1, y1, x2, y2] = face.bounds;
            assert!(
                0.0 <= x1 && x1 < x2 && x2 <= photo.width as f32,
                "{}: {:?}",
                photo.file,
                face.bounds
            );
            assert!(
                0.0 <= y1 && y1 < y2 && y2 <= photo.height as f32,
                "{}: {:?}",
                photo.file,
                face.bounds
            );
            assert_eq!(
                face.landmarks.len(),
                5,
                "{}: five landmarks per face",
                photo.file
            );
        }
    }
}
