//! Configuration, in two phases: a [`RawConfig`] as it arrives (ROS parameters,
//! a file, command-line flags; plain `i64`/`f64`/`bool`/`String` fields, the
//! types ROS parameters have), then one validated [`Config`]. A value out of
//! range is refused with a [`ConfigError`] naming the field and the reason,
//! never clamped silently.
//!
//! ```
//! use face_perception::config::{Config, RawConfig};
//!
//! let config = Config::from_raw(RawConfig { score_threshold: 0.6, ..RawConfig::default() }).unwrap();
//! assert_eq!(config.detector().score_threshold, 0.6);
//!
//! let err = Config::from_raw(RawConfig { max_faces: 0, ..RawConfig::default() }).unwrap_err();
//! assert_eq!(err.field, "max_faces");
//! ```

use crate::frame::{FrameLimits, DEFAULT_MAX_PIXELS};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Default detection score threshold.
pub const DEFAULT_SCORE_THRESHOLD: f64 = 0.5;
/// Default IoU above which the weaker of two overlapping detections is dropped.
pub const DEFAULT_NMS_IOU: f64 = 0.3;
/// Default minimum face side, in frame pixels.
pub const DEFAULT_MIN_FACE_SIZE: i64 = 20;
/// Default maximum number of faces per frame.
pub const DEFAULT_MAX_FACES: i64 = 16;
/// Largest accepted `max_faces` (bounds the preallocated classifier batches).
pub const MAX_FACES_LIMIT: i64 = 256;
/// Default longest side of the image given to the detector, in pixels.
pub const DEFAULT_DETECTION_MAX_SIDE: i64 = 320;
/// Accepted range of `detection_max_side`.
pub const DETECTION_MAX_SIDE_RANGE: (i64, i64) = (32, 4096);
/// Default exponential moving average factor: the weight of the newest frame.
pub const DEFAULT_SMOOTHING_ALPHA: f64 = 0.35;
/// Default number of frames a track may go unseen before its id is retired.
pub const DEFAULT_TRACK_MAX_MISSED: i64 = 10;
/// Default IoU for matching a detection to a track.
pub const DEFAULT_TRACK_IOU: f64 = 0.3;
/// Default ONNX Runtime intra-op threads per session (measured: see the README).
pub const DEFAULT_INTRA_OP_THREADS: i64 = 2;
/// Largest accepted `intra_op_threads`.
pub const MAX_INTRA_OP_THREADS: i64 = 64;
/// The Haar cascade used when none is configured (Debian's `opencv-data`).
pub const DEFAULT_HAAR_CASCADE: &str =
    "/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml";

/// Which face detector runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorBackend {
    /// MediaPipe's BlazeFace, full range (model `face_detector` of the
    /// manifest), fp32: faster than fp32 CenterFace, about as fast as the
    /// int8 one on 2 threads, but misses faces under about a 18th of the
    /// frame's longest side (models/README.md).
    BlazeFace,
    /// The CenterFace network (model `face_detector_centerface`); the default
    /// DNN, also selected by `"dnn"`.
    CenterFace,
    /// OpenCV's Viola-Jones Haar cascade.
    Haar,
}

impl DetectorBackend {
    /// Whether the backend runs a model from the manifest.
    pub fn is_dnn(self) -> bool {
        self != Self::Haar
    }
}

impl std::str::FromStr for DetectorBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "blazeface" => Ok(Self::BlazeFace),
            "dnn" | "centerface" => Ok(Self::CenterFace),
            "haar" => Ok(Self::Haar),
            other => Err(format!(
                "expected \"dnn\", \"blazeface\", \"centerface\" or \"haar\", got {other:?}"
            )),
        }
    }
}

impl std::fmt::Display for DetectorBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::BlazeFace => "blazeface",
            Self::CenterFace => "centerface",
            Self::Haar => "haar",
        })
    }
}

/// Numeric precision of the models that have an int8 variant in the manifest
/// (CenterFace, gender and, in part, emotion); the others always run in fp32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// The float models as published.
    Fp32,
    /// Statically quantised (QDQ) variants, `<name>_int8` in the manifest
    /// (the default): faster on CPUs with int8 dot-product instructions,
    /// slightly different numbers (models/README.md, "int8 against fp32").
    #[default]
    Int8,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fp32" => Ok(Self::Fp32),
            "int8" => Ok(Self::Int8),
            other => Err(format!("expected \"fp32\" or \"int8\", got {other:?}")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fp32 => "fp32",
            Self::Int8 => "int8",
        })
    }
}

/// How the enabled classifiers' work on a frame is split among the cores
/// when they run side by side (`intra_op_threads` of 2 or more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClassifierSplit {
    /// By model (the default): each classifier takes all faces of the frame
    /// in one batched ONNX Runtime call, the classifiers spread over the
    /// cores ([`crate::balance::by_model`]).
    #[default]
    Model,
    /// By face: the faces of all classifiers shared evenly among the cores
    /// ([`crate::balance::share`]); a classifier whose faces fall on two
    /// cores runs as two instances of its model, each a batched call.
    /// Faster when one model costs much more than the others.
    Face,
}

impl std::str::FromStr for ClassifierSplit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "model" => Ok(Self::Model),
            "face" => Ok(Self::Face),
            other => Err(format!("expected \"model\" or \"face\", got {other:?}")),
        }
    }
}

impl std::fmt::Display for ClassifierSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Model => "model",
            Self::Face => "face",
        })
    }
}

/// Temporal smoothing of class probabilities per track.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Smoothing {
    /// Raw per-frame probabilities.
    Off,
    /// Exponential moving average: `p = alpha * p_new + (1 - alpha) * p`.
    Ema {
        /// Weight of the newest frame, in (0, 1].
        alpha: f32,
    },
}

/// Configuration as received, before validation. Every field has a default
/// ([`RawConfig::default`]); unknown fields are refused when deserialising.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// `"dnn"` (default: the default DNN, CenterFace), `"centerface"`,
    /// `"blazeface"` or `"haar"`.
    pub detector: String,
    /// Minimum detection score, in (0, 1].
    pub score_threshold: f64,
    /// Non-maximum suppression IoU, in (0, 1] (BlazeFace: the IoU above
    /// which detections are merged into their score-weighted mean).
    pub nms_iou: f64,
    /// Minimum face side in frame pixels, >= 0.
    pub min_face_size: i64,
    /// Maximum faces per frame (the highest-scoring are kept), 1..=256.
    pub max_faces: i64,
    /// Longest side of the image the detector sees, 32..=4096; larger frames are downscaled.
    pub detection_max_side: i64,
    /// Classify gender.
    pub enable_gender: bool,
    /// Classify emotion.
    pub enable_emotion: bool,
    /// Estimate age.
    pub enable_age: bool,
    /// Rotate face crops upright using the eye landmarks when the detector gives them.
    pub align_faces: bool,
    /// `"off"` or `"ema"`.
    pub smoothing: String,
    /// EMA weight of the newest frame, in (0, 1]; used when `smoothing` is `"ema"`.
    pub smoothing_alpha: f64,
    /// Keep stable face ids across frames.
    pub tracking: bool,
    /// Frames a track may go unseen before its id is retired, 0..=10000.
    pub track_max_missed: i64,
    /// Minimum IoU to continue a track, in (0, 1].
    pub track_iou: f64,
    /// Directory holding `manifest.toml`; empty means the default lookup
    /// ([`crate::manifest::default_models_dir`]).
    pub models_dir: String,
    /// Haar cascade XML file; empty means [`DEFAULT_HAAR_CASCADE`].
    pub haar_cascade: String,
    /// ONNX Runtime intra-op threads per session, 1..=64.
    pub intra_op_threads: i64,
    /// Pin the thread that calls the pipeline and ONNX Runtime's workers to
    /// cores of their own (the first `intra_op_threads` CPUs the process may
    /// run on); see [`crate::parallel::Cores`].
    pub pin_threads: bool,
    /// `"model"` (default) or `"face"`: how side-by-side classifiers share
    /// the cores ([`ClassifierSplit`]).
    pub classifier_split: String,
    /// Largest accepted frame, in pixels.
    pub max_frame_pixels: i64,
    /// `"int8"` (default) or `"fp32"`: int8 loads the manifest's `<name>_int8`
    /// variant of each model that has one (CenterFace, gender, emotion).
    pub precision: String,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            detector: "dnn".to_string(),
            score_threshold: DEFAULT_SCORE_THRESHOLD,
            nms_iou: DEFAULT_NMS_IOU,
            min_face_size: DEFAULT_MIN_FACE_SIZE,
            max_faces: DEFAULT_MAX_FACES,
            detection_max_side: DEFAULT_DETECTION_MAX_SIDE,
            enable_gender: true,
            enable_emotion: true,
            enable_age: false,
            align_faces: true,
            smoothing: "ema".to_string(),
            smoothing_alpha: DEFAULT_SMOOTHING_ALPHA,
            tracking: true,
            track_max_missed: DEFAULT_TRACK_MAX_MISSED,
            track_iou: DEFAULT_TRACK_IOU,
            models_dir: String::new(),
            haar_cascade: String::new(),
            intra_op_threads: DEFAULT_INTRA_OP_THREADS,
            pin_threads: true,
            classifier_split: ClassifierSplit::default().to_string(),
            max_frame_pixels: DEFAULT_MAX_PIXELS as i64,
            precision: Precision::default().to_string(),
        }
    }
}

/// A configuration value was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid parameter {field}: {reason}")]
pub struct ConfigError {
    /// The [`RawConfig`] field name.
    pub field: &'static str,
    /// Why it was refused, including the value.
    pub reason: String,
}

impl ConfigError {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// Detector parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectorConfig {
    /// Backend.
    pub backend: DetectorBackend,
    /// Minimum detection score.
    pub score_threshold: f32,
    /// Non-maximum suppression IoU.
    pub nms_iou: f32,
    /// Minimum face side in frame pixels.
    pub min_face_size: f32,
    /// Maximum faces per frame.
    pub max_faces: usize,
    /// Longest side of the image the detector sees.
    pub max_side: u32,
    /// Haar cascade file.
    pub haar_cascade: PathBuf,
}

/// Which classifiers run, and how faces are cropped for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassifierConfig {
    /// Gender.
    pub gender: bool,
    /// Emotion.
    pub emotion: bool,
    /// Age.
    pub age: bool,
    /// Level face crops using the eye landmarks.
    pub align_faces: bool,
}

/// Tracking and smoothing.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackerConfig {
    /// Keep stable ids across frames (off: ids are per-frame indices).
    pub enabled: bool,
    /// Frames a track may go unseen before its id is retired.
    pub max_missed: u32,
    /// Minimum IoU to continue a track.
    pub iou: f32,
    /// Probability smoothing.
    pub smoothing: Smoothing,
}

/// A validated configuration. Built only by [`Config::from_raw`]; change it by
/// editing [`Config::to_raw`] and validating again.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    detector: DetectorConfig,
    classifiers: ClassifierConfig,
    tracker: TrackerConfig,
    models_dir: Option<PathBuf>,
    intra_op_threads: usize,
    classifier_split: ClassifierSplit,
    precision: Precision,
    frame_limits: FrameLimits,
    raw: RawConfig,
}

impl Default for Config {
    fn default() -> Self {
        // The defaults are valid (checked by a unit test); fall back field by
        // field would hide a broken default, so build it the checked way.
        match Self::from_raw(RawConfig::default()) {
            Ok(config) => config,
            Err(e) => unreachable!("default configuration is invalid: {e}"),
        }
    }
}

fn unit_interval(field: &'static str, value: f64) -> Result<f32, ConfigError> {
    if value.is_finite() && value > 0.0 && value <= 1.0 {
        Ok(value as f32)
    } else {
        Err(ConfigError::new(
            field,
            format!("must be in (0, 1], got {value}"),
        ))
    }
}

fn int_in(field: &'static str, value: i64, min: i64, max: i64) -> Result<i64, ConfigError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::new(
            field,
            format!("must be in {min}..={max}, got {value}"),
        ))
    }
}

fn non_empty_path(value: &str) -> Option<PathBuf> {
    let trimmed = value.trim();
    (!trimmed.is_empty()).then(|| PathBuf::from(trimmed))
}

impl Config {
    /// Validates a raw configuration.
    pub fn from_raw(raw: RawConfig) -> Result<Self, ConfigError> {
        let backend = raw
            .detector
            .parse::<DetectorBackend>()
            .map_err(|r| ConfigError::new("detector", r))?;
        let detector = DetectorConfig {
            backend,
            score_threshold: unit_interval("score_threshold", raw.score_threshold)?,
            nms_iou: unit_interval("nms_iou", raw.nms_iou)?,
            min_face_size: int_in("min_face_size", raw.min_face_size, 0, 100_000)? as f32,
            max_faces: int_in("max_faces", raw.max_faces, 1, MAX_FACES_LIMIT)? as usize,
            max_side: int_in(
                "detection_max_side",
                raw.detection_max_side,
                DETECTION_MAX_SIDE_RANGE.0,
                DETECTION_MAX_SIDE_RANGE.1,
            )? as u32,
            haar_cascade: non_empty_path(&raw.haar_cascade)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_HAAR_CASCADE)),
        };
        let smoothing = match raw.smoothing.trim().to_ascii_lowercase().as_str() {
            "off" | "none" | "" => Smoothing::Off,
            "ema" => Smoothing::Ema {
                alpha: unit_interval("smoothing_alpha", raw.smoothing_alpha)?,
            },
            other => {
                return Err(ConfigError::new(
                    "smoothing",
                    format!("expected \"off\" or \"ema\", got {other:?}"),
                ))
            }
        };
        let tracker = TrackerConfig {
            enabled: raw.tracking,
            max_missed: int_in("track_max_missed", raw.track_max_missed, 0, 10_000)? as u32,
            iou: unit_interval("track_iou", raw.track_iou)?,
            smoothing,
        };
        if smoothing != Smoothing::Off && !raw.tracking {
            return Err(ConfigError::new(
                "smoothing",
                "smoothing needs tracking = true (it is kept per track)",
            ));
        }
        let classifiers = ClassifierConfig {
            gender: raw.enable_gender,
            emotion: raw.enable_emotion,
            age: raw.enable_age,
            align_faces: raw.align_faces,
        };
        let intra_op_threads = int_in(
            "intra_op_threads",
            raw.intra_op_threads,
            1,
            MAX_INTRA_OP_THREADS,
        )? as usize;
        let classifier_split = raw
            .classifier_split
            .parse::<ClassifierSplit>()
            .map_err(|r| ConfigError::new("classifier_split", r))?;
        let max_pixels = int_in("max_frame_pixels", raw.max_frame_pixels, 1, i64::MAX)? as u64;
        let precision = raw
            .precision
            .parse::<Precision>()
            .map_err(|r| ConfigError::new("precision", r))?;
        Ok(Self {
            detector,
            classifiers,
            tracker,
            models_dir: non_empty_path(&raw.models_dir),
            intra_op_threads,
            classifier_split,
            precision,
            frame_limits: FrameLimits {
                max_pixels,
                ..FrameLimits::default()
            },
            raw,
        })
    }

    /// The raw form this configuration was validated from.
    pub fn to_raw(&self) -> RawConfig {
        self.raw.clone()
    }

    /// Detector parameters.
    pub fn detector(&self) -> &DetectorConfig {
        &self.detector
    }

    /// Classifier selection.
    pub fn classifiers(&self) -> &ClassifierConfig {
        &self.classifiers
    }

    /// Tracking and smoothing.
    pub fn tracker(&self) -> &TrackerConfig {
        &self.tracker
    }

    /// The configured models directory, if one was given.
    pub fn models_dir(&self) -> Option<&std::path::Path> {
        self.models_dir.as_deref()
    }

    /// ONNX Runtime intra-op threads per session.
    pub fn intra_op_threads(&self) -> usize {
        self.intra_op_threads
    }

    /// Precision of the models that have an int8 variant.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// How side-by-side classifiers share the cores.
    pub fn classifier_split(&self) -> ClassifierSplit {
        self.classifier_split
    }

    /// Whether the pipeline pins its threads to cores of their own.
    pub fn pin_threads(&self) -> bool {
        self.raw.pin_threads
    }

    /// Limits applied to incoming frames.
    pub fn frame_limits(&self) -> &FrameLimits {
        &self.frame_limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = Config::from_raw(RawConfig::default()).unwrap();
        assert_eq!(config.detector().backend, DetectorBackend::CenterFace);
        assert_eq!(
            config.tracker().smoothing,
            Smoothing::Ema {
                alpha: DEFAULT_SMOOTHING_ALPHA as f32
            }
        );
        assert_eq!(config.to_raw(), RawConfig::default());
    }

    #[test]
    fn detector_names_and_the_dnn_alias() {
        for (name, backend) in [
            ("dnn", DetectorBackend::CenterFace),
            ("blazeface", DetectorBackend::BlazeFace),
            (" CenterFace ", DetectorBackend::CenterFace),
            ("haar", DetectorBackend::Haar),
        ] {
            assert_eq!(name.parse::<DetectorBackend>(), Ok(backend), "{name}");
            assert_eq!(backend.to_string().parse::<DetectorBackend>(), Ok(backend));
        }
        assert!("yolo".parse::<DetectorBackend>().is_err());
        assert!(!DetectorBackend::Haar.is_dnn() && DetectorBackend::CenterFace.is_dnn());
    }

    #[test]
    fn each_invalid_value_names_its_field() {
        let cases: Vec<(RawConfig, &str)> = vec![
            (
                RawConfig {
                    detector: "yolo".into(),
                    ..Default::default()
                },
                "detector",
            ),
            (
                RawConfig {
                    score_threshold: 0.0,
                    ..Default::default()
                },
                "score_threshold",
            ),
            (
                RawConfig {
                    score_threshold: f64::NAN,
                    ..Default::default()
                },
                "score_threshold",
            ),
            (
                RawConfig {
                    nms_iou: 1.5,
                    ..Default::default()
                },
                "nms_iou",
            ),
            (
                RawConfig {
                    min_face_size: -1,
                    ..Default::default()
                },
                "min_face_size",
            ),
            (
                RawConfig {
                    max_faces: 0,
                    ..Default::default()
                },
                "max_faces",
            ),
            (
                RawConfig {
                    max_faces: MAX_FACES_LIMIT + 1,
                    ..Default::default()
                },
                "max_faces",
            ),
            (
                RawConfig {
                    detection_max_side: 16,
                    ..Default::default()
                },
                "detection_max_side",
            ),
            (
                RawConfig {
                    smoothing: "median".into(),
                    ..Default::default()
                },
                "smoothing",
            ),
            (
                RawConfig {
                    smoothing_alpha: 0.0,
                    ..Default::default()
                },
                "smoothing_alpha",
            ),
            (
                RawConfig {
                    tracking: false,
                    ..Default::default()
                },
                "smoothing",
            ),
            (
                RawConfig {
                    track_max_missed: -3,
                    ..Default::default()
                },
                "track_max_missed",
            ),
            (
                RawConfig {
                    track_iou: -0.1,
                    ..Default::default()
                },
                "track_iou",
            ),
            (
                RawConfig {
                    intra_op_threads: 0,
                    ..Default::default()
                },
                "intra_op_threads",
            ),
            (
                RawConfig {
                    max_frame_pixels: 0,
                    ..Default::default()
                },
                "max_frame_pixels",
            ),
            (
                RawConfig {
                    precision: "int4".into(),
                    ..Default::default()
                },
                "precision",
            ),
            (
                RawConfig {
                    precision: "fp16".into(),
                    ..Default::default()
                },
                "precision",
            ),
            (
                RawConfig {
                    precision: String::new(),
                    ..Default::default()
                },
                "precision",
            ),
            (
                RawConfig {
                    classifier_split: "lane".into(),
                    ..Default::default()
                },
                "classifier_split",
            ),
        ];
        for (raw, field) in cases {
            let err = Config::from_raw(raw.clone()).unwrap_err();
            assert_eq!(err.field, field, "{raw:?}");
            assert!(err.to_string().contains(field));
        }
    }

    #[test]
    fn precision_names() {
        assert_eq!(Config::default().precision(), Precision::Int8);
        for (name, precision) in [("fp32", Precision::Fp32), (" INT8 ", Precision::Int8)] {
            let raw = RawConfig {
                precision: name.into(),
                ..Default::default()
            };
            assert_eq!(Config::from_raw(raw).unwrap().precision(), precision);
            assert_eq!(precision.to_string().parse::<Precision>(), Ok(precision));
        }
    }

    #[test]
    fn classifier_split_names() {
        assert_eq!(Config::default().classifier_split(), ClassifierSplit::Model);
        for (name, split) in [
            ("face", ClassifierSplit::Face),
            (" Model", ClassifierSplit::Model),
        ] {
            let raw = RawConfig {
                classifier_split: name.into(),
                ..Default::default()
            };
            assert_eq!(Config::from_raw(raw).unwrap().classifier_split(), split);
            assert_eq!(split.to_string().parse::<ClassifierSplit>(), Ok(split));
        }
    }

    #[test]
    fn tracking_off_with_smoothing_off_is_valid() {
        let raw = RawConfig {
            tracking: false,
            smoothing: "off".into(),
            ..Default::default()
        };
        let config = Config::from_raw(raw).unwrap();
        assert!(!config.tracker().enabled);
        assert_eq!(config.tracker().smoothing, Smoothing::Off);
    }

    #[test]
    fn raw_config_reads_from_toml_and_refuses_unknown_fields() {
        let raw: RawConfig = toml::from_str("detector = \"haar\"\nmax_faces = 3").unwrap();
        let config = Config::from_raw(raw).unwrap();
        assert_eq!(config.detector().backend, DetectorBackend::Haar);
        assert_eq!(config.detector().max_faces, 3);
        assert!(toml::from_str::<RawConfig>("max_face = 3").is_err());
    }
}
