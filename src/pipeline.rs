//! The perception pipeline: frame -> faces -> labelled, tracked faces ->
//! (optionally) an annotated image.
//!
//! [`Pipeline::new`] loads every model the configuration needs once (ONNX
//! Runtime sessions with the configured intra-op threads; a missing or
//! corrupt model file is an error naming the file). [`Pipeline::process`]
//! then runs one frame: detection, batched classification (all faces in one
//! call per classifier; with two or more threads the classifiers side by
//! side on the cores, or by choice the faces shared evenly among the cores,
//! [`crate::balance`]), tracking
//! and smoothing, rendering on request. [`Pipeline::reconfigure`] applies new
//! parameters from the next frame on, reloading only the models whose
//! settings changed.
//!
//! ```no_run
//! use face_perception::config::Config;
//! use face_perception::frame::{Frame, FrameLimits};
//! use face_perception::pipeline::{FrameRequest, Pipeline};
//!
//! let mut pipeline = Pipeline::new(&Config::default())?;
//! let bytes = std::fs::read("photo.jpg")?;
//! let frame = Frame::from_compressed("jpeg", &bytes, &FrameLimits::default())?;
//! let result = pipeline.process(&frame, &FrameRequest::default())?;
//! for face in &result.faces {
//!     println!("{} {:?}", face.id, face.emotion.as_ref().map(|e| e.label()));
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::balance::{classify_side_by_side, Replicas};
use crate::classify::{
    softmax_in_place, AgeEstimate, Classification, Classifier, ClassifierTask, ClassifyError,
    FaceChip,
};
use crate::config::{ClassifierSplit, Config, DetectorBackend, Precision};
use crate::detect::blazeface::BlazeFace;
use crate::detect::byte_input;
use crate::detect::centerface::CenterFace;
use crate::detect::haar::HaarCascade;
use crate::detect::{
    DetectError, Detection, Detector, FaceBox, FaceDetector, Landmarks, Normalization,
};
use crate::frame::Frame;
use crate::manifest::{self, Manifest, ManifestError, ModelEntry};
use crate::parallel::Cores;
use crate::render::{self, RenderError};
use crate::runtime::{self, RuntimeError};
use crate::saliency::stage::{FrameSaliency, SaliencyJob, SaliencyStage};
use crate::saliency::{SaliencyError, SaliencyMethod};
use crate::track::Tracker;
use ndarray::Array4;
use ort::session::Session;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Manifest name of the BlazeFace face detection model (backend `blazeface`).
pub const DETECTOR_MODEL: &str = "face_detector";
/// Manifest name of the CenterFace face detection model (backend
/// `centerface`, the default DNN `dnn`).
pub const CENTERFACE_MODEL: &str = "face_detector_centerface";
/// Suffix of a model's int8 variant in the manifest (`gender` -> `gender_int8`).
pub const INT8_SUFFIX: &str = "_int8";

/// The manifest entry loaded for model `name` at `precision`: its int8
/// variant when int8 is asked for and the manifest has one, else `name`.
/// (Saliency always builds its gradient graphs from `name`, the fp32 model:
/// the graph transform does not handle QuantizeLinear/DequantizeLinear.)
pub fn model_for_precision(manifest: &Manifest, name: &str, precision: Precision) -> String {
    if precision == Precision::Int8 {
        let int8 = format!("{name}{INT8_SUFFIX}");
        if manifest.models.iter().any(|m| m.name == int8) {
            return int8;
        }
    }
    name.to_string()
}

/// The manifest model a detector backend runs (`None`: Haar, no model).
fn detector_model(backend: DetectorBackend) -> Option<&'static str> {
    match backend {
        DetectorBackend::BlazeFace => Some(DETECTOR_MODEL),
        DetectorBackend::CenterFace => Some(CENTERFACE_MODEL),
        DetectorBackend::Haar => None,
    }
}

/// Why the pipeline could not be built or could not process a frame.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// ONNX Runtime is unavailable.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The manifest or a model file is missing, unreadable or corrupt.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// No models directory was configured and none was found.
    #[error("no models directory: set models_dir (or $FACE_PERCEPTION_MODELS) to the directory holding manifest.toml")]
    NoModelsDir,
    /// ONNX Runtime refused a model file.
    #[error("cannot load model {path}: {reason}")]
    ModelLoad {
        /// Model file.
        path: PathBuf,
        /// What ort reported.
        reason: String,
    },
    /// Detection failed.
    #[error(transparent)]
    Detect(#[from] DetectError),
    /// Classification failed.
    #[error(transparent)]
    Classify(#[from] ClassifyError),
    /// Rendering failed.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// Saliency could not be computed.
    #[error(transparent)]
    Saliency(#[from] SaliencyError),
    /// Saliency was requested for a classifier that is not enabled.
    #[error("saliency requested for {0:?}, which is not enabled")]
    SaliencyTargetDisabled(ClassifierTask),
}

/// A saliency request (computed by [`crate::saliency`] from [`SaliencyInputs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaliencyRequest {
    /// The classifier to explain.
    pub task: ClassifierTask,
    /// The class to explain; `None` means each face's top class.
    pub class_index: Option<usize>,
}

/// What saliency needs from one frame: the exact input batch the classifier
/// saw and where each chip came from.
#[derive(Debug, Clone)]
pub struct SaliencyInputs {
    /// The request this answers.
    pub request: SaliencyRequest,
    /// Normalised classifier input, N x C x H x W, one chip per face.
    pub batch: Array4<f32>,
    /// Chip geometry per face (chip pixels to frame pixels).
    pub chips: Vec<FaceChip>,
    /// Face ids, in batch order.
    pub face_ids: Vec<String>,
    /// Top class per face, in batch order.
    pub top_classes: Vec<usize>,
}

/// Per-frame options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrameRequest {
    /// Produce the annotated image.
    pub annotated: bool,
    /// Keep the classifier inputs for saliency.
    pub saliency: Option<SaliencyRequest>,
    /// Compute saliency images ([`FrameResult::saliency_images`]).
    pub explain: Option<Explain>,
}

/// Which saliency images a frame should get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explain {
    /// The saliency method.
    pub method: SaliencyMethod,
    /// The classifiers to explain (disabled ones are skipped).
    pub tasks: Vec<ClassifierTask>,
}

impl Explain {
    /// Both gender and emotion.
    pub fn all(method: SaliencyMethod) -> Self {
        Self {
            method,
            tasks: vec![ClassifierTask::Emotion, ClassifierTask::Gender],
        }
    }
}

/// Wall time per stage of one frame.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimings {
    /// Detection, including resizing.
    pub detect: Duration,
    /// All classifiers, including cropping.
    pub classify: Duration,
    /// Tracking and smoothing.
    pub track: Duration,
    /// Rendering the annotated image.
    pub render: Duration,
    /// Saliency graphs and their images (zero when none was requested).
    pub saliency: Duration,
    /// The whole call.
    pub total: Duration,
}

/// One face of a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceResult {
    /// Stable id when tracking, else the index in the frame.
    pub id: String,
    /// Face box in frame pixels.
    pub bbox: FaceBox,
    /// Detector score.
    pub score: f32,
    /// Landmarks, when the detector gives them.
    pub landmarks: Option<Landmarks>,
    /// Gender, when enabled.
    pub gender: Option<Classification>,
    /// Emotion, when enabled.
    pub emotion: Option<Classification>,
    /// Age, when enabled.
    pub age: Option<AgeEstimate>,
}

/// The result of one frame.
#[derive(Debug, Clone)]
pub struct FrameResult {
    /// Faces, by decreasing detector score.
    pub faces: Vec<FaceResult>,
    /// The annotated image, when requested.
    pub annotated: Option<Frame>,
    /// Stage timings.
    pub timings: StageTimings,
    /// Classifier inputs for saliency, when requested.
    pub saliency: Option<SaliencyInputs>,
    /// Saliency images per classifier, when [`FrameRequest::explain`] asked.
    pub saliency_images: Vec<FrameSaliency>,
}

/// Builds an ONNX Runtime session for a manifest entry (checksum verified).
pub fn load_session(
    manifest: &Manifest,
    name: &str,
    intra_op_threads: usize,
    cores: &Cores,
) -> Result<(Session, ModelEntry), PipelineError> {
    let (session, entry, _) = load_session_with(manifest, name, intra_op_threads, cores, |_| None)?;
    Ok((session, entry))
}

/// [`load_session`], over the graph `rewrite` makes of the model file when
/// it makes one (the flag says whether it did).
fn load_session_with(
    manifest: &Manifest,
    name: &str,
    intra_op_threads: usize,
    cores: &Cores,
    rewrite: impl FnOnce(&[u8]) -> Option<Vec<u8>>,
) -> Result<(Session, ModelEntry, bool), PipelineError> {
    let entry = manifest.entry(name)?.clone();
    let path = manifest.model_path(&entry);
    let bytes = manifest.read_verified(&entry)?;
    let rewritten = rewrite(&bytes);
    let env = runtime::environment()?;
    let load_error = |reason: String| PipelineError::ModelLoad {
        path: path.clone(),
        reason,
    };
    let model = rewritten.as_deref().unwrap_or(&bytes);
    let session = runtime::session_from_memory(env, model, intra_op_threads, cores)
        .map_err(|e| load_error(e.to_string()))?;
    log::debug!(
        "loaded model {} ({}{}) with {intra_op_threads} intra-op thread(s)",
        entry.name,
        path.display(),
        if rewritten.is_some() {
            ", rewritten"
        } else {
            ""
        }
    );
    Ok((session, entry, rewritten.is_some()))
}

/// The settings a loaded model depends on; a change means reloading it.
#[derive(Debug, Clone, PartialEq)]
struct LoadKey {
    models_dir: Option<PathBuf>,
    threads: usize,
    pin_threads: bool,
    classifier_threads: usize,
    backend: DetectorBackend,
    haar_cascade: PathBuf,
    precision: Precision,
}

impl LoadKey {
    fn of(config: &Config) -> Self {
        Self {
            models_dir: config.models_dir().map(Path::to_path_buf),
            threads: config.intra_op_threads(),
            pin_threads: config.pin_threads(),
            classifier_threads: classifier_threads(config),
            backend: config.detector().backend,
            haar_cascade: config.detector().haar_cascade.clone(),
            precision: config.precision(),
        }
    }
}

/// The face perception pipeline: models, buffers and tracks.
pub struct Pipeline {
    config: Config,
    key: LoadKey,
    manifest: Option<Manifest>,
    detector: Detector,
    gender: Option<Replicas>,
    emotion: Option<Replicas>,
    age: Option<Replicas>,
    tracker: Tracker,
    saliency: SaliencyStage,
    /// Where the pipeline's threads run ([`cores`]).
    cores: Cores,
    /// Where the classifiers' side-by-side jobs run ([`classifier_cores`]).
    classifier_cores: Cores,
}

fn needs_manifest(config: &Config) -> bool {
    let c = config.classifiers();
    config.detector().backend.is_dnn() || c.gender || c.emotion || c.age
}

fn load_manifest(config: &Config) -> Result<Manifest, PipelineError> {
    let dir = match config.models_dir() {
        Some(dir) => dir.to_path_buf(),
        None => manifest::default_models_dir().ok_or(PipelineError::NoModelsDir)?,
    };
    Ok(Manifest::load(&dir)?)
}

fn load_detector(config: &Config, manifest: Option<&Manifest>) -> Result<Detector, PipelineError> {
    let backend = config.detector().backend;
    let Some(model) = detector_model(backend) else {
        return Ok(Detector::Haar(HaarCascade::load(
            &config.detector().haar_cascade,
        )?));
    };
    let manifest = manifest.ok_or(PipelineError::NoModelsDir)?;
    let name = model_for_precision(manifest, model, config.precision());
    let threads = config.intra_op_threads();
    if backend == DetectorBackend::BlazeFace {
        let (session, entry) = load_session(manifest, &name, threads, &cores(config))?;
        return Ok(Detector::BlazeFace(Box::new(BlazeFace::new(
            session, &entry,
        )?)));
    }
    // The int8 CenterFace takes its pixels as bytes when the entry asks for
    // raw RGB values (detect::byte_input); other graphs load as they are.
    let listed = manifest.entry(&name)?;
    let raw_rgb = Normalization::from_entry(listed).is_ok_and(|n| n.is_raw_rgb());
    let input = listed.input.name.clone();
    let (session, entry, byte_blocks) =
        load_session_with(manifest, &name, threads, &cores(config), |model| {
            if raw_rgb {
                byte_input::rewrite(model, &input)
            } else {
                None
            }
        })?;
    Ok(Detector::CenterFace(Box::new(CenterFace::new(
        session,
        &entry,
        byte_blocks,
    )?)))
}

/// Number of classifiers the configuration enables.
fn enabled_classifiers(config: &Config) -> usize {
    let c = config.classifiers();
    [c.gender, c.emotion, c.age]
        .into_iter()
        .filter(|&on| on)
        .count()
}

/// Whether the enabled classifiers run side by side, one thread each
/// ([`crate::balance`]: each on a core of its own, or their faces shared
/// among the cores, as `classifier_split` says): with two or more of them
/// and at least two intra-op threads. The classifiers are small (a
/// batch of five faces takes 1 to 2.5 ms), so a second thread inside one of
/// them gains less than a second run at the same time on the other core.
/// (With one classifier, sharing its faces was measured both ways: int8
/// emotion 5-15 % faster than one run at 2 threads, fp32 gender about 11 %
/// slower; it keeps all the threads.)
fn classifiers_in_parallel(config: &Config) -> bool {
    enabled_classifiers(config) >= 2 && config.intra_op_threads() >= 2
}

/// Intra-op threads of each classifier session: the configured threads
/// shared among the classifiers when they run side by side, else all of them.
fn classifier_threads(config: &Config) -> usize {
    let threads = config.intra_op_threads();
    if classifiers_in_parallel(config) {
        (threads / enabled_classifiers(config)).max(1)
    } else {
        threads
    }
}

/// The cores the pipeline's threads are pinned to: the caller and the
/// workers of sessions it runs with all the threads.
fn cores(config: &Config) -> Cores {
    Cores::plan(config.pin_threads(), config.intra_op_threads())
}

/// The cores of the classifier sessions and of their side-by-side jobs
/// ([`Cores::for_runs_of`]): the pipeline's, unless the classifiers run side
/// by side with several threads each.
fn classifier_cores(config: &Config) -> Cores {
    cores(config).for_runs_of(classifier_threads(config), config.intra_op_threads())
}

/// Number of side-by-side lanes the classifiers' work is split among
/// ([`crate::balance`]): the intra-op threads divided by each classifier
/// session's threads when the classifiers run side by side, else one.
fn classifier_lanes(config: &Config) -> usize {
    if classifiers_in_parallel(config) {
        (config.intra_op_threads() / classifier_threads(config)).max(1)
    } else {
        1
    }
}

/// Classifies `faces` with each of `jobs`' classifiers, the work split
/// among the configuration's lanes ([`classify_side_by_side`]), and stores each
/// result in its task's slot of `into`. A classifier that needs another
/// instance for it gets one loaded like the first.
#[allow(clippy::too_many_arguments)]
fn classify_into(
    into: &mut ClassifiedFaces,
    jobs: Vec<(ClassifierTask, &mut Replicas)>,
    frame: &Frame,
    faces: &[Detection],
    config: &Config,
    manifest: Option<&Manifest>,
    cores: &Cores,
) -> Result<(), PipelineError> {
    let (tasks, mut classifiers): (Vec<_>, Vec<_>) = jobs.into_iter().unzip();
    let results = classify_side_by_side(
        &mut classifiers,
        frame,
        faces,
        config.classifiers().align_faces,
        classifier_lanes(config),
        config.classifier_split(),
        cores,
        |task| load_classifier(task, config, manifest),
    )?;
    for (task, result) in tasks.into_iter().zip(results) {
        *into.slot_mut(task) = Some(result);
    }
    Ok(())
}

fn load_classifier(
    task: ClassifierTask,
    config: &Config,
    manifest: Option<&Manifest>,
) -> Result<Classifier, PipelineError> {
    let manifest = manifest.ok_or(PipelineError::NoModelsDir)?;
    let name = model_for_precision(manifest, task.model_name(), config.precision());
    let (session, entry) = load_session(
        manifest,
        &name,
        classifier_threads(config),
        &classifier_cores(config),
    )?;
    Ok(Classifier::new(
        task,
        session,
        &entry,
        config.detector().max_faces,
    )?)
}

impl Pipeline {
    /// Loads every model the configuration needs.
    pub fn new(config: &Config) -> Result<Self, PipelineError> {
        let manifest = if needs_manifest(config) {
            Some(load_manifest(config)?)
        } else {
            None
        };
        let detector = load_detector(config, manifest.as_ref())?;
        let c = config.classifiers();
        let load = |enabled: bool, task| {
            enabled
                .then(|| load_classifier(task, config, manifest.as_ref()).map(Replicas::new))
                .transpose()
        };
        let gender = load(c.gender, ClassifierTask::Gender)?;
        let emotion = load(c.emotion, ClassifierTask::Emotion)?;
        let age = load(c.age, ClassifierTask::Age)?;
        log::info!(
            "pipeline ready: detector {}, gender {}, emotion {}, age {}",
            detector.name(),
            gender.is_some(),
            emotion.is_some(),
            age.is_some()
        );
        Ok(Self {
            config: config.clone(),
            key: LoadKey::of(config),
            manifest,
            detector,
            gender,
            emotion,
            age,
            tracker: Tracker::new(config.tracker()),
            saliency: SaliencyStage::new(config.intra_op_threads(), cores(config)),
            cores: cores(config),
            classifier_cores: classifier_cores(config),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Applies a new configuration from the next frame on. Models are reloaded
    /// only when their settings changed (models directory, threads, detector
    /// backend, precision for the models with an int8 variant) or when a
    /// classifier is switched on; switching one off drops it. On error nothing
    /// changes.
    pub fn reconfigure(&mut self, config: &Config) -> Result<(), PipelineError> {
        let key = LoadKey::of(config);
        let reload_all = key.models_dir != self.key.models_dir
            || key.threads != self.key.threads
            || key.pin_threads != self.key.pin_threads;
        let reload_classifiers =
            reload_all || key.classifier_threads != self.key.classifier_threads;
        let manifest = if !needs_manifest(config) {
            None
        } else if reload_all || self.manifest.is_none() {
            Some(load_manifest(config)?)
        } else {
            self.manifest.clone()
        };
        // Whether the precision change swaps the model loaded for `name`.
        let variant_changed = |name: &str| {
            key.precision != self.key.precision
                && manifest.as_ref().is_some_and(|m| {
                    model_for_precision(m, name, key.precision)
                        != model_for_precision(m, name, self.key.precision)
                })
        };
        let detector_changed = reload_all
            || key.backend != self.key.backend
            || key.haar_cascade != self.key.haar_cascade
            || detector_model(key.backend).is_some_and(variant_changed);
        let detector = if detector_changed {
            Some(load_detector(config, manifest.as_ref())?)
        } else {
            None
        };
        let c = config.classifiers();
        let max_faces = config.detector().max_faces;
        let next = |current: &Option<Replicas>,
                    enabled: bool,
                    task: ClassifierTask|
         -> Result<Option<Option<Replicas>>, PipelineError> {
            match (current, enabled) {
                (_, false) => Ok(Some(None)),
                (Some(_), true) if !reload_classifiers && !variant_changed(task.model_name()) => {
                    Ok(None)
                }
                _ => Ok(Some(Some(Replicas::new(load_classifier(
                    task,
                    config,
                    manifest.as_ref(),
                )?)))),
            }
        };
        let gender = next(&self.gender, c.gender, ClassifierTask::Gender)?;
        let emotion = next(&self.emotion, c.emotion, ClassifierTask::Emotion)?;
        let age = next(&self.age, c.age, ClassifierTask::Age)?;
        // Everything loaded: commit.
        if let Some(d) = detector {
            self.detector = d;
        }
        for (slot, new) in [
            (&mut self.gender, gender),
            (&mut self.emotion, emotion),
            (&mut self.age, age),
        ] {
            if let Some(new) = new {
                *slot = new;
            }
            if let Some(classifier) = slot {
                classifier.reserve(max_faces);
                if config.classifier_split() == ClassifierSplit::Model {
                    classifier.drop_extra_instances();
                }
            }
        }
        self.manifest = manifest;
        if reload_all {
            self.saliency = SaliencyStage::new(config.intra_op_threads(), cores(config));
            self.cores = cores(config);
        }
        self.tracker.reconfigure(config.tracker());
        self.classifier_cores = classifier_cores(config);
        self.config = config.clone();
        self.key = key;
        log::info!("pipeline reconfigured (models reloaded: {reload_all}, detector reloaded: {detector_changed})");
        Ok(())
    }

    /// The instances of `task`'s classifier, when enabled.
    fn replicas(&self, task: ClassifierTask) -> Option<&Replicas> {
        match task {
            ClassifierTask::Gender => self.gender.as_ref(),
            ClassifierTask::Emotion => self.emotion.as_ref(),
            ClassifierTask::Age => self.age.as_ref(),
        }
    }

    /// The classifier for `task`, when enabled. When its faces were shared
    /// among the cores, its [`Classifier::last_batch`] holds only the faces
    /// it classified itself; a frame's whole classifier input is in
    /// [`FrameResult::saliency`] on request ([`FrameRequest::saliency`]).
    pub fn classifier(&self, task: ClassifierTask) -> Option<&Classifier> {
        self.replicas(task).map(Replicas::main)
    }

    /// How many instances of `task`'s model are loaded (0 when disabled):
    /// more than one once its faces were shared among cores
    /// ([`crate::balance`]).
    pub fn classifier_instances(&self, task: ClassifierTask) -> usize {
        self.replicas(task).map_or(0, Replicas::instances)
    }

    /// The detector backend's name.
    pub fn detector_name(&self) -> &'static str {
        self.detector.name()
    }

    /// Forgets all tracks (e.g. when the camera changes).
    pub fn reset_tracks(&mut self) {
        self.tracker.reset();
    }

    /// Detection only (no classification, tracking or smoothing).
    pub fn detect(&mut self, frame: &Frame) -> Result<Vec<Detection>, PipelineError> {
        self.cores.pin_caller();
        Ok(self.detector.detect(frame, self.config.detector())?)
    }

    /// Classification of given faces only (no tracking or smoothing): one
    /// batched call per enabled classifier, side by side on the cores when
    /// there are two or more threads (or the faces shared among the cores
    /// with `classifier_split` "face", [`crate::balance`]).
    pub fn classify(
        &mut self,
        frame: &Frame,
        faces: &[Detection],
    ) -> Result<ClassifiedFaces, PipelineError> {
        self.cores.pin_caller();
        let jobs = [
            (ClassifierTask::Gender, &mut self.gender),
            (ClassifierTask::Emotion, &mut self.emotion),
            (ClassifierTask::Age, &mut self.age),
        ]
        .into_iter()
        .filter_map(|(task, slot)| slot.as_mut().map(|c| (task, c)))
        .collect();
        let mut classified = ClassifiedFaces::default();
        classify_into(
            &mut classified,
            jobs,
            frame,
            faces,
            &self.config,
            self.manifest.as_ref(),
            &self.classifier_cores,
        )?;
        Ok(classified)
    }

    /// What saliency needs of the last classified batch of `request.task`.
    fn saliency_inputs(
        &self,
        request: &SaliencyRequest,
        faces: &[FaceResult],
    ) -> Option<SaliencyInputs> {
        let classifier = self.replicas(request.task)?;
        let top_classes = faces
            .iter()
            .map(|f| match request.task {
                ClassifierTask::Gender => f.gender.as_ref().map_or(0, |c| c.top),
                ClassifierTask::Emotion => f.emotion.as_ref().map_or(0, |c| c.top),
                ClassifierTask::Age => 0,
            })
            .collect();
        Some(SaliencyInputs {
            request: request.clone(),
            batch: classifier.last_batch(),
            chips: classifier.last_chips(),
            face_ids: faces.iter().map(|f| f.id.clone()).collect(),
            top_classes,
        })
    }

    /// Runs one frame through the pipeline.
    pub fn process(
        &mut self,
        frame: &Frame,
        request: &FrameRequest,
    ) -> Result<FrameResult, PipelineError> {
        let start = Instant::now();
        if let Some(s) = &request.saliency {
            if self.classifier(s.task).is_none() {
                return Err(PipelineError::SaliencyTargetDisabled(s.task));
            }
        }
        let detections = self.detect(frame)?;
        let detected = Instant::now();

        // A classifier being explained whose model is the one its gradient
        // graph is built from (fp32) runs as that graph, whose forward pass
        // gives the class scores: one run instead of two. One running
        // another model (int8) is classified as usual, so labels never depend
        // on whether saliency was requested, and its graph then explains the
        // class the classifier ranked first.
        let explain_method = request.explain.as_ref().map(|e| e.method);
        let explained = |task: ClassifierTask| {
            request
                .explain
                .as_ref()
                .is_some_and(|e| e.tasks.contains(&task))
        };
        let manifest = self.manifest.as_ref();
        let align = self.config.classifiers().align_faces;
        let mut explained_batches = Vec::new();
        let mut gradient_time = Duration::ZERO;
        let mut plain = Vec::new();
        let mut explaining = Vec::new();
        let mut explain_after = Vec::new();
        let mut classified = ClassifiedFaces::default();
        for (task, slot) in [
            (ClassifierTask::Gender, &mut self.gender),
            (ClassifierTask::Emotion, &mut self.emotion),
            (ClassifierTask::Age, &mut self.age),
        ] {
            let Some(replicas) = slot.as_mut() else {
                continue;
            };
            match manifest.filter(|_| explained(task)) {
                Some(m) if graph_is_the_classifier(m, task, replicas.main()) => {
                    let c = replicas.main_mut();
                    c.prepare(frame, &detections, align)?;
                    explaining.push((task, c));
                }
                Some(_) => {
                    explain_after.push(task);
                    plain.push((task, replicas));
                }
                None => plain.push((task, replicas)),
            }
        }
        if let (Some(manifest), Some(method), false) =
            (manifest, explain_method, explaining.is_empty())
        {
            let jobs: Vec<SaliencyJob<'_>> = explaining
                .iter()
                .map(|(task, c)| SaliencyJob {
                    task: *task,
                    batch: c.last_batch(),
                    classes: None,
                })
                .collect();
            let started = Instant::now();
            let batches = self.saliency.run_each(manifest, method, &jobs)?;
            gradient_time += started.elapsed();
            for ((task, c), batch) in explaining.iter().zip(batches) {
                let classes = batch
                    .scores
                    .outer_iter()
                    .map(|scores| {
                        let mut p = scores.to_vec();
                        softmax_in_place(&mut p);
                        Classification::from_probabilities(c.labels().clone(), p)
                    })
                    .collect();
                explained_batches.push((*task, batch, c.last_chips().to_vec()));
                *classified.slot_mut(*task) = Some(classes);
            }
        }
        classify_into(
            &mut classified,
            plain,
            frame,
            &detections,
            &self.config,
            manifest,
            &self.classifier_cores,
        )?;
        if let (Some(manifest), Some(method), false) =
            (manifest, explain_method, explain_after.is_empty())
        {
            // Each one's whole batch (gathered from the instances that cut
            // it) and the classes its classifier ranked first.
            let inputs: Vec<_> = explain_after
                .iter()
                .filter_map(|&task| {
                    let replicas = self.replicas(task)?;
                    let tops: Vec<usize> = classified.slot(task)?.iter().map(|c| c.top).collect();
                    Some((task, replicas.last_batch(), replicas.last_chips(), tops))
                })
                .collect();
            let jobs: Vec<SaliencyJob<'_>> = inputs
                .iter()
                .map(|(task, batch, _, tops)| SaliencyJob {
                    task: *task,
                    batch: batch.view(),
                    classes: Some(tops),
                })
                .collect();
            let started = Instant::now();
            let batches = self.saliency.run_each(manifest, method, &jobs)?;
            gradient_time += started.elapsed();
            for ((task, _, chips, _), batch) in inputs.into_iter().zip(batches) {
                explained_batches.push((task, batch, chips));
            }
        }
        let classified_at = Instant::now();

        let boxes: Vec<FaceBox> = detections.iter().map(|d| d.bbox).collect();
        let assignments = self.tracker.assign(&boxes);
        let bin_years = self
            .age
            .as_ref()
            .map(|age| age.main().bin_years())
            .unwrap_or_default();
        let ClassifiedFaces {
            gender,
            emotion,
            age,
        } = classified;
        let mut gender = gender.map(Vec::into_iter);
        let mut emotion = emotion.map(Vec::into_iter);
        let mut age = age.map(Vec::into_iter);
        let mut faces = Vec::with_capacity(detections.len());
        for (detection, assignment) in detections.into_iter().zip(&assignments) {
            let mut next = |it: &mut Option<std::vec::IntoIter<Classification>>, task| {
                let mut c = it.as_mut().and_then(Iterator::next)?;
                self.tracker.smooth(assignment, task, &mut c);
                Some(c)
            };
            let g = next(&mut gender, ClassifierTask::Gender);
            let e = next(&mut emotion, ClassifierTask::Emotion);
            let a = next(&mut age, ClassifierTask::Age)
                .map(|c| AgeEstimate::from_distribution(&c.probabilities, &bin_years));
            faces.push(FaceResult {
                id: assignment.id.clone(),
                bbox: detection.bbox,
                score: detection.score,
                landmarks: detection.landmarks,
                gender: g,
                emotion: e,
                age: a,
            });
        }
        let tracked = Instant::now();

        let saliency = request
            .saliency
            .as_ref()
            .and_then(|s| self.saliency_inputs(s, &faces));
        // Saliency images in the order the request names the classifiers;
        // each explains the class its classifier ranked first on this frame
        // (before smoothing).
        let saliency_start = Instant::now();
        let mut saliency_images = Vec::new();
        if let Some(explain) = &request.explain {
            let face_ids: Vec<String> = faces.iter().map(|f| f.id.clone()).collect();
            for &task in &explain.tasks {
                let Some((_, batch, chips)) = explained_batches.iter().find(|(t, _, _)| *t == task)
                else {
                    continue;
                };
                saliency_images.push(SaliencyStage::render(
                    frame,
                    task,
                    explain.method,
                    batch.maps.view(),
                    chips,
                    &face_ids,
                )?);
            }
        }
        let saliency_render_time = saliency_start.elapsed();

        let annotated = if request.annotated {
            Some(render::annotate(frame, &faces)?)
        } else {
            None
        };
        let end = Instant::now();
        Ok(FrameResult {
            faces,
            annotated,
            saliency,
            saliency_images,
            timings: StageTimings {
                detect: detected - start,
                classify: (classified_at - detected).saturating_sub(gradient_time),
                track: tracked - classified_at,
                render: (end - tracked).saturating_sub(saliency_render_time),
                saliency: gradient_time + saliency_render_time,
                total: end - start,
            },
        })
    }
}

/// Raw per-classifier results of [`Pipeline::classify`], in face order.
#[derive(Debug, Clone, Default)]
pub struct ClassifiedFaces {
    /// Gender per face, when enabled.
    pub gender: Option<Vec<Classification>>,
    /// Emotion per face, when enabled.
    pub emotion: Option<Vec<Classification>>,
    /// Age-bin probabilities per face, when enabled.
    pub age: Option<Vec<Classification>>,
}

impl ClassifiedFaces {
    fn slot(&self, task: ClassifierTask) -> Option<&Vec<Classification>> {
        match task {
            ClassifierTask::Gender => self.gender.as_ref(),
            ClassifierTask::Emotion => self.emotion.as_ref(),
            ClassifierTask::Age => self.age.as_ref(),
        }
    }

    fn slot_mut(&mut self, task: ClassifierTask) -> &mut Option<Vec<Classification>> {
        match task {
            ClassifierTask::Gender => &mut self.gender,
            ClassifierTask::Emotion => &mut self.emotion,
            ClassifierTask::Age => &mut self.age,
        }
    }
}

/// Whether `task`'s gradient graph, built from the manifest's
/// `task.model_name()` entry, is the model `classifier` runs (not its int8
/// variant), so that the graph's forward scores are the classifier's own.
fn graph_is_the_classifier(
    manifest: &Manifest,
    task: ClassifierTask,
    classifier: &Classifier,
) -> bool {
    manifest
        .entry(task.model_name())
        .is_ok_and(|entry| entry.file == classifier.model_file())
}
