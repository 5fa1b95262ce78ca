//! ROS parameters: declared with descriptions, validated through the core's
//! [`Config`], refused with a reason when invalid (the old value is kept).
//!
//! Every field of [`RawConfig`] is a parameter of the same name; the node adds
//! `input_transport`, `max_frame_age`, `saliency_method` and
//! `saliency_max_rate`.

use face_perception::config::{Config, RawConfig};
use face_perception::manifest::Manifest;
use face_perception::saliency::SaliencyMethod;
use r2r::{Parameter, ParameterValue, RosParams};
use serde_json::{Map, Value};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// r2r's parameter map type.
type ParamMap = r2r::indexmap::IndexMap<String, Parameter>;

/// Which image topic the node listens to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputTransport {
    /// `image` (sensor_msgs/Image).
    Raw,
    /// `image/compressed` (sensor_msgs/CompressedImage).
    Compressed,
}

/// Everything the worker needs to know about the parameters, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The perception configuration.
    pub config: Config,
    /// Input topic kind (read-only after start).
    pub input_transport: InputTransport,
    /// Frames older than this (seconds, ROS clock) are dropped; 0 disables.
    pub max_frame_age: f64,
    /// Saliency method used when a saliency topic has subscribers.
    pub saliency_method: SaliencyMethod,
    /// Most saliency computations per second (wall clock); 0: every frame.
    pub saliency_max_rate: f64,
    /// Bumped at every accepted change.
    pub generation: u64,
}

/// Parameter descriptions, in declaration order. Ranges are enforced by
/// [`Config::from_raw`] (and below for the node's own parameters).
pub const DESCRIPTIONS: &[(&str, &str)] = &[
    ("detector", "Face detector backend: \"dnn\" (the default DNN, CenterFace; default), \"centerface\", \"blazeface\" (MediaPipe BlazeFace full range, fp32: faster than fp32 CenterFace, about as fast as the default int8 one on 2 threads; misses faces under about 1/18 of the frame's longest side) or \"haar\" (OpenCV cascade)."),
    ("score_threshold", "Minimum detection score, in (0, 1]."),
    ("nms_iou", "Non-maximum suppression IoU, in (0, 1]."),
    ("min_face_size", "Minimum face side in image pixels, 0..=100000."),
    ("max_faces", "Maximum faces per frame (highest scores kept), 1..=256."),
    ("detection_max_side", "Longest side of the image the detector sees (larger frames are downscaled), 32..=4096; centerface and haar only (blazeface always letterboxes into its fixed 192x192 input)."),
    ("enable_gender", "Classify gender."),
    ("enable_emotion", "Classify emotion."),
    ("enable_age", "Estimate age (off by default)."),
    ("align_faces", "Rotate face crops upright using the eye landmarks (DNN detector)."),
    ("smoothing", "Temporal smoothing of class probabilities per track: \"ema\" or \"off\"."),
    ("smoothing_alpha", "EMA weight of the newest frame, in (0, 1]."),
    ("tracking", "Keep stable face ids across frames."),
    ("track_max_missed", "Frames a face may be missed before its id is retired, 0..=10000."),
    ("track_iou", "Minimum IoU to continue a track, in (0, 1]."),
    ("models_dir", "Directory with manifest.toml and the ONNX models; empty: the installed models."),
    ("haar_cascade", "Haar cascade XML; empty: OpenCV's haarcascade_frontalface_default.xml."),
    ("intra_op_threads", "ONNX Runtime intra-op threads, 1..=64: the detector's and each saliency graph's; with 2 or more, the enabled classifiers run side by side, one thread each, split among the threads as classifier_split says (two or more explained classifiers' gradient graphs share their faces among the threads)."),
    ("pin_threads", "Pin the inference thread and ONNX Runtime's workers to cores of their own (the first intra_op_threads CPUs the process may run on; choose them with taskset). Between frames the cores go idle, and unpinned, the next frame's worker tends to share the inference thread's core (measurements: README, Performance). Turn it off when other busy processes are pinned to those cores."),
    ("classifier_split", "How the enabled classifiers share the cores when intra_op_threads is 2 or more: \"model\" (default: each classifier runs all faces of a frame in one batched call, the classifiers side by side, the slowest on the inference thread) or \"face\" (the faces of all classifiers shared evenly among the cores; a classifier split between two cores runs as two instances of its model, each a batched call: about 0.2 ms faster for 5 faces on 2 cores, one more emotion session in memory)."),
    ("max_frame_pixels", "Largest accepted image, in pixels (width x height)."),
    ("precision", "Model precision: \"int8\" (default: int8 CenterFace detector and gender classifier and a partly int8 emotion classifier, faster on CPUs with VNNI; against fp32 on 158 portraits: models/README.md) or \"fp32\" (the published models); age and BlazeFace stay fp32; saliency images explain the fp32 models at the class the int8 classifier ranked first)."),
    ("input_transport", "\"raw\" (subscribe image) or \"compressed\" (subscribe image/compressed). Read-only."),
    ("max_frame_age", "Drop frames older than this many seconds (ROS clock, now - header.stamp); 0 disables."),
    ("saliency_method", "Saliency published on saliency/*: \"guided\" (guided backprop), \"plain\" (gradient) or \"gradcam\"."),
    ("saliency_max_rate", "Most frames per second that get saliency images while saliency/* is watched, 0..=1000 Hz; the frames in between get faces (and the annotated image) only, at full rate. 0: every frame."),
];

/// Default of `max_frame_age`, seconds.
pub const DEFAULT_MAX_FRAME_AGE: f64 = 0.5;
/// Default of `saliency_max_rate`, Hz: guided saliency of both classifiers
/// costs about as much as a whole frame, so at every frame it would halve
/// the rate of `faces`; 5 Hz costs about a tenth of it at 30 Hz input.
pub const DEFAULT_SALIENCY_MAX_RATE: f64 = 5.0;
/// Largest accepted `saliency_max_rate`, Hz.
const MAX_SALIENCY_RATE: f64 = 1000.0;

/// The node's parameter store, plugged into r2r's parameter services.
pub struct NodeParams {
    values: Map<String, Value>,
    settings: Arc<Mutex<Settings>>,
    started: bool,
}

fn parse_transport(s: &str) -> Result<InputTransport, String> {
    match s {
        "raw" => Ok(InputTransport::Raw),
        "compressed" => Ok(InputTransport::Compressed),
        other => Err(format!("expected \"raw\" or \"compressed\", got {other:?}")),
    }
}

fn parse_saliency(s: &str) -> Result<SaliencyMethod, String> {
    s.parse::<SaliencyMethod>().map_err(|e| e.to_string())
}

/// Validates a complete set of values into [`Settings`].
fn settings_from(
    values: &Map<String, Value>,
    generation: u64,
) -> Result<Settings, (String, String)> {
    let mut raw = Map::new();
    let mut transport = InputTransport::Raw;
    let mut max_frame_age = DEFAULT_MAX_FRAME_AGE;
    let mut saliency_method = SaliencyMethod::default();
    let mut saliency_max_rate = DEFAULT_SALIENCY_MAX_RATE;
    for (k, v) in values {
        match k.as_str() {
            "input_transport" => {
                transport =
                    parse_transport(v.as_str().unwrap_or_default()).map_err(|e| (k.clone(), e))?
            }
            "max_frame_age" => {
                let age = v.as_f64().unwrap_or(f64::NAN);
                if !(age.is_finite() && (0.0..=3600.0).contains(&age)) {
                    return Err((k.clone(), format!("must be in 0..=3600 seconds, got {v}")));
                }
                max_frame_age = age;
            }
            "saliency_method" => {
                saliency_method =
                    parse_saliency(v.as_str().unwrap_or_default()).map_err(|e| (k.clone(), e))?
            }
            "saliency_max_rate" => {
                let rate = v.as_f64().unwrap_or(f64::NAN);
                if !(rate.is_finite() && (0.0..=MAX_SALIENCY_RATE).contains(&rate)) {
                    return Err((
                        k.clone(),
                        format!("must be in 0..={MAX_SALIENCY_RATE} Hz, got {v}"),
                    ));
                }
                saliency_max_rate = rate;
            }
            _ => {
                raw.insert(k.clone(), v.clone());
            }
        }
    }
    let raw: RawConfig = serde_json::from_value(Value::Object(raw))
        .map_err(|e| ("(config)".to_string(), e.to_string()))?;
    let config = Config::from_raw(raw).map_err(|e| (e.field.to_string(), e.reason))?;
    Ok(Settings {
        config,
        input_transport: transport,
        max_frame_age,
        saliency_method,
        saliency_max_rate,
        generation,
    })
}

fn json_from_param(value: &ParameterValue) -> Option<Value> {
    match value {
        ParameterValue::Bool(b) => Some(Value::Bool(*b)),
        ParameterValue::Integer(i) => Some(Value::from(*i)),
        ParameterValue::Double(d) => serde_json::Number::from_f64(*d).map(Value::Number),
        ParameterValue::String(s) => Some(Value::String(s.clone())),
        _ => None,
    }
}

fn param_from_json(value: &Value) -> ParameterValue {
    match value {
        Value::Bool(b) => ParameterValue::Bool(*b),
        Value::Number(n) if n.is_i64() => ParameterValue::Integer(n.as_i64().unwrap_or_default()),
        Value::Number(n) => ParameterValue::Double(n.as_f64().unwrap_or_default()),
        Value::String(s) => ParameterValue::String(s.clone()),
        _ => ParameterValue::NotSet,
    }
}

/// The defaults of every parameter, as JSON values.
pub fn default_values() -> Map<String, Value> {
    let mut values = match serde_json::to_value(RawConfig::default()) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    values.insert("input_transport".into(), Value::String("raw".into()));
    values.insert("max_frame_age".into(), Value::from(DEFAULT_MAX_FRAME_AGE));
    values.insert(
        "saliency_method".into(),
        Value::String(SaliencyMethod::default().to_string()),
    );
    values.insert(
        "saliency_max_rate".into(),
        Value::from(DEFAULT_SALIENCY_MAX_RATE),
    );
    values
}

fn conv_error(name: &str, msg: impl Into<String>) -> r2r::Error {
    r2r::Error::ParameterValueConv {
        name: name.to_string(),
        msg: msg.into(),
    }
}

/// A models directory given while running must hold a manifest whose model
/// files are all present and match their checksums; otherwise the change is
/// refused (at start-up the pipeline reports the same errors and exits).
/// Empty means the installed models, checked when the node started.
fn check_models_dir(dir: &str) -> Result<(), String> {
    if dir.is_empty() {
        return Ok(());
    }
    let manifest = Manifest::load(Path::new(dir)).map_err(|e| e.to_string())?;
    for entry in &manifest.models {
        manifest.read_verified(entry).map_err(|e| e.to_string())?;
    }
    Ok(())
}

impl NodeParams {
    /// Parameters at their defaults.
    pub fn new() -> Result<(Self, Arc<Mutex<Settings>>), String> {
        let values = default_values();
        let settings =
            settings_from(&values, 0).map_err(|(f, r)| format!("default {f} is invalid: {r}"))?;
        let settings = Arc::new(Mutex::new(settings));
        Ok((
            Self {
                values,
                settings: settings.clone(),
                started: false,
            },
            settings,
        ))
    }

    /// Applies one value: checked for type, then the whole set re-validated.
    fn apply(&mut self, name: &str, value: &ParameterValue) -> Result<(), r2r::Error> {
        let Some(current) = self.values.get(name) else {
            return Err(r2r::Error::InvalidParameterName {
                name: name.to_string(),
            });
        };
        if self.started && name == "input_transport" {
            return Err(conv_error(
                name,
                "read-only while running: set it in the parameters file and restart",
            ));
        }
        let Some(new) = json_from_param(value) else {
            return Err(conv_error(
                name,
                format!("unsupported value type {}", value.type_name()),
            ));
        };
        // The same type as the declared one (as rclcpp: an integer does not
        // set a double parameter, write 1.0).
        let same_type = match (current, &new) {
            (Value::Bool(_), Value::Bool(_)) | (Value::String(_), Value::String(_)) => true,
            (Value::Number(a), Value::Number(b)) => a.is_f64() == b.is_f64(),
            _ => false,
        };
        if !same_type {
            return Err(conv_error(
                name,
                format!(
                    "wrong type {}, expected the type of {current}",
                    value.type_name()
                ),
            ));
        }
        if self.started && name == "models_dir" {
            if let Value::String(dir) = &new {
                check_models_dir(dir).map_err(|reason| conv_error(name, reason))?;
            }
        }
        let mut candidate = self.values.clone();
        candidate.insert(name.to_string(), new);
        let generation = self
            .settings
            .lock()
            .map(|s| s.generation + 1)
            .unwrap_or_default();
        let settings = settings_from(&candidate, generation)
            .map_err(|(field, reason)| conv_error(&field, reason))?;
        self.values = candidate;
        if let Ok(mut shared) = self.settings.lock() {
            *shared = settings;
        }
        Ok(())
    }
}

impl RosParams for NodeParams {
    fn register_parameters(
        &mut self,
        prefix: &str,
        _param: Option<Parameter>,
        params: &mut ParamMap,
    ) -> r2r::Result<()> {
        // Unknown parameters from a params file are reported, not fatal.
        for unknown in params.keys() {
            let known = DESCRIPTIONS
                .iter()
                .any(|(n, _)| unknown.strip_prefix(prefix) == Some(*n));
            if !known && unknown != "use_sim_time" && !unknown.starts_with("qos_overrides") {
                log::warn!("unknown parameter {unknown} ignored");
            }
        }
        for (name, description) in DESCRIPTIONS {
            let full = format!("{prefix}{name}");
            // A value from --params-file / -p: applied if valid, else refused
            // with a log line and the default kept (the node still starts).
            if let Some(given) = params.shift_remove(&full) {
                if let Err(e) = self.apply(name, &given.value) {
                    log::error!("parameter {full}: {e}; keeping the default");
                }
            }
            let value = self
                .values
                .get(*name)
                .map(param_from_json)
                .unwrap_or(ParameterValue::NotSet);
            params.insert(full, Parameter { value, description });
        }
        self.started = true;
        Ok(())
    }

    fn get_parameter(&mut self, name: &str) -> r2r::Result<ParameterValue> {
        self.values
            .get(name)
            .map(param_from_json)
            .ok_or_else(|| r2r::Error::InvalidParameterName {
                name: name.to_string(),
            })
    }

    fn set_parameter(&mut self, name: &str, value: &ParameterValue) -> r2r::Result<()> {
        self.apply(name, value)
    }

    fn check_parameter(&self, name: &str, value: &ParameterValue) -> r2r::Result<()> {
        let mut probe = NodeParams {
            values: self.values.clone(),
            settings: Arc::new(Mutex::new(
                self.settings
                    .lock()
                    .map(|s| s.clone())
                    .map_err(|_| conv_error(name, "settings lock poisoned"))?,
            )),
            started: self.started,
        };
        probe.apply(name, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_is_described_and_every_description_has_a_default() {
        let defaults = default_values();
        for (name, _) in DESCRIPTIONS {
            assert!(defaults.contains_key(*name), "{name} has no default");
        }
        assert_eq!(defaults.len(), DESCRIPTIONS.len());
    }

    #[test]
    fn invalid_values_are_refused_and_the_old_value_kept() {
        let (mut params, settings) = NodeParams::new().expect("defaults are valid");
        let err = params
            .apply("score_threshold", &ParameterValue::Double(1.5))
            .unwrap_err();
        assert!(err.to_string().contains("(0, 1]"), "{err}");
        assert_eq!(
            params.values["score_threshold"],
            default_values()["score_threshold"]
        );
        assert!(params
            .apply("max_faces", &ParameterValue::String("many".into()))
            .is_err());
        params
            .apply("score_threshold", &ParameterValue::Double(0.7))
            .expect("valid");
        assert!((settings.lock().unwrap().config.detector().score_threshold - 0.7).abs() < 1e-6);
        assert_eq!(settings.lock().unwrap().generation, 1);
    }

    #[test]
    fn a_models_dir_without_valid_models_is_refused_while_running() {
        let (mut params, _settings) = NodeParams::new().expect("defaults are valid");
        params.started = true;
        let empty = std::env::temp_dir().join(format!("fp_no_models_{}", std::process::id()));
        std::fs::create_dir_all(&empty).expect("temp dir");
        let err = params
            .apply(
                "models_dir",
                &ParameterValue::String(empty.display().to_string()),
            )
            .unwrap_err();
        assert!(err.to_string().contains("manifest"), "{err}");
        assert_eq!(params.values["models_dir"], default_values()["models_dir"]);
        let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/models");
        params
            .apply("models_dir", &ParameterValue::String(shipped.into()))
            .expect("the repository's models are valid");
        std::fs::remove_dir_all(&empty).ok();
    }
}
