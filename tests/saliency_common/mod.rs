//! Shared helpers of the saliency tests: models through the manifest, the
//! golden face crops of `tests/fixtures/models/golden`, and a clean skip when
//! a model, a fixture or ONNX Runtime is absent.

#![allow(dead_code)]

use face_perception::manifest::{Manifest, ModelEntry};
use face_perception::saliency::onnx_proto::{GraphProto, ModelProto, OperatorSetIdProto};
use ndarray::Array4;
use prost::Message;
use std::path::PathBuf;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether ONNX Runtime can be loaded; prints why not.
pub fn ort_ready() -> bool {
    match face_perception::runtime::environment() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipping: {e}");
            false
        }
    }
}

/// A model's verified bytes and manifest entry, or `None` (with a message) if absent.
pub fn model(name: &str) -> Option<(Vec<u8>, ModelEntry)> {
    let dir = repo().join("models");
    let manifest = match Manifest::load(&dir) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("skipping: {e}");
            return None;
        }
    };
    let entry = match manifest.entry(name) {
        Ok(e) => e.clone(),
        Err(e) => {
            eprintln!("skipping: {e}");
            return None;
        }
    };
    match manifest.read_verified(&entry) {
        Ok(bytes) => Some((bytes, entry)),
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

/// The golden input batch of a model (real face crops, preprocessed), and
/// the crops' names, from `tests/fixtures/models/golden/<name>.json`.
pub fn golden_batch(name: &str) -> Option<(Array4<f32>, Vec<String>)> {
    let dir = repo().join("tests/fixtures/models/golden");
    let text = match std::fs::read_to_string(dir.join(format!("{name}.json"))) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("skipping: golden fixture for {name}: {e}");
            return None;
        }
    };
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let input = &json["input"];
    let shape: Vec<usize> = input["shape"]
        .as_array()?
        .iter()
        .filter_map(|v| v.as_u64())
        .map(|v| v as usize)
        .collect();
    let bytes = std::fs::read(dir.join(input["file"].as_str()?)).ok()?;
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let [n, c, h, w] = shape[..] else { return None };
    let batch = Array4::from_shape_vec((n, c, h, w), values).ok()?;
    let crops = json["crops"]
        .as_array()?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    Some((batch, crops))
}

/// A small deterministic pseudo-random generator (tests must be reproducible).
pub struct Lcg(pub u64);

impl Lcg {
    /// Next value in `0..bound`.
    pub fn below(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % bound as u64) as usize
    }
}

/// `graph` as the bytes of an ONNX model (IR 8, default-domain opset 17).
pub fn encode_model(graph: GraphProto, producer: &str) -> Vec<u8> {
    ModelProto {
        ir_version: 8,
        producer_name: producer.to_string(),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        ..Default::default()
    }
    .encode_to_vec()
}
