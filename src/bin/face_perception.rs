//! `face_perception`: the offline command-line face of the perception core.
//!
//! `face_perception analyze [OPTIONS] INPUT...` runs detection, gender and
//! emotion (and age with `--age`) on image files, folders of images and video
//! files, and writes one JSON object per image (or video frame) to stdout.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use face_perception::classify::Classification;
use face_perception::config::{Config, RawConfig};
use face_perception::detect::Landmarks;
use face_perception::frame::{Frame, FrameError, FrameLimits};
use face_perception::pipeline::{Explain, FaceResult, FrameRequest, FrameResult, Pipeline};
use face_perception::saliency::SaliencyMethod;
use indicatif::{ProgressBar, ProgressStyle};
use opencv::core::Mat;
use opencv::prelude::*;
use opencv::videoio::{
    VideoCapture, VideoWriter, CAP_FFMPEG, CAP_GSTREAMER, CAP_OPENCV_MJPEG, CAP_PROP_FPS,
    CAP_PROP_POS_MSEC,
};
use serde::ser::SerializeMap;
use serde::Serialize;
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Image file extensions read from folders (lower case).
const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff", "pgm", "ppm", "pnm",
];
/// Video file extensions (lower case). A file named on the command line
/// with another extension that is no readable image is tried as a video too.
const VIDEO_EXTENSIONS: &[&str] = &["mp4", "avi", "mkv", "mov", "webm", "m4v", "mpg", "mpeg"];
/// Show a progress bar from this many inputs on.
const PROGRESS_MIN_INPUTS: usize = 5;
/// Decimal places of probabilities and scores in the JSON.
const PROBABILITY_DECIMALS: i32 = 4;
/// Decimal places of box coordinates.
const BOX_DECIMALS: i32 = 1;
/// Decimal places of timings in milliseconds.
const TIMING_DECIMALS: i32 = 3;
/// Decimal places of a video frame's time in seconds.
const TIME_DECIMALS: i32 = 4;
/// Frame rate of the annotated video when the input's is unknown.
const DEFAULT_VIDEO_FPS: f64 = 25.0;

#[derive(Parser)]
#[command(
    name = "face_perception",
    version,
    about = "Real-time face detection, gender, emotion and age"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Analyse images, folders of images and videos; one JSON object per image or video frame (JSON Lines) on stdout.
    Analyze(AnalyzeArgs),
}

#[derive(clap::Args)]
struct AnalyzeArgs {
    /// Image files, folders (their images, recursively) or video files.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    /// Write annotated images into this folder (`<name>_annotated.png`; for a
    /// video, an MJPG video of its analysed frames, `<name>_annotated.avi`).
    #[arg(long, value_name = "DIR")]
    annotated: Option<PathBuf>,
    /// Face detector: dnn (the default DNN, CenterFace), centerface,
    /// blazeface (MediaPipe BlazeFace full range, fp32: faster than fp32
    /// centerface, fewer small faces) or haar (OpenCV cascade).
    #[arg(
        long,
        value_name = "dnn|centerface|blazeface|haar",
        default_value = "dnn"
    )]
    detector: String,
    /// Minimum detection score, in (0, 1].
    #[arg(long, value_name = "SCORE")]
    threshold: Option<f64>,
    /// Also estimate age.
    #[arg(long)]
    age: bool,
    /// Skip gender.
    #[arg(long)]
    no_gender: bool,
    /// Skip emotion.
    #[arg(long)]
    no_emotion: bool,
    /// Models directory (holding manifest.toml); default: $FACE_PERCEPTION_MODELS or the installed models.
    #[arg(long, value_name = "DIR")]
    models: Option<PathBuf>,
    /// Longest side of the image given to the detector (larger images are downscaled).
    #[arg(long, value_name = "PIXELS")]
    detection_size: Option<i64>,
    /// Minimum face side in pixels.
    #[arg(long, value_name = "PIXELS")]
    min_face: Option<i64>,
    /// Maximum faces per image.
    #[arg(long, value_name = "N")]
    max_faces: Option<i64>,
    /// ONNX Runtime intra-op threads per model.
    #[arg(long, value_name = "N")]
    threads: Option<i64>,
    /// Leave the threads where the system puts them instead of pinning the
    /// main thread and ONNX Runtime's workers to cores of their own.
    #[arg(long)]
    no_pin_threads: bool,
    /// With 2 or more threads, how the classifiers share the cores: model
    /// (default; each classifier all faces in one batched call, side by
    /// side) or face (the faces shared evenly; a model may run as two
    /// batched calls on two instances).
    #[arg(long, value_name = "model|face")]
    classifier_split: Option<String>,
    /// Model precision: int8 (default; int8 CenterFace and gender, partly
    /// int8 emotion; faster on CPUs with VNNI, see models/README.md;
    /// saliency explains the fp32 models at int8's top class) or fp32.
    #[arg(long, value_name = "fp32|int8")]
    precision: Option<String>,
    /// Further settings from a TOML file (fields of RawConfig); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Write guided-backprop saliency images into this folder: per
    /// classifier, the frame with heat maps over the faces
    /// (`<name>_saliency_<classifier>.png`) and each face's map
    /// (`<name>_saliency_<classifier>_face<id>.png`); for a video, per
    /// analysed frame, `<name>` being `<video name>_<frame, 6 digits>`.
    #[arg(long, value_name = "DIR")]
    saliency: Option<PathBuf>,
    /// Saliency method.
    #[arg(long, value_name = "guided|plain|gradcam", default_value = "guided")]
    saliency_method: String,
    /// For videos: analyse every Nth frame.
    #[arg(long, value_name = "N", default_value_t = 1)]
    every: u64,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Analyze(args) => analyze(&args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("face_perception: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn raw_config(args: &AnalyzeArgs) -> Result<RawConfig> {
    let mut raw = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("invalid configuration file {}", path.display()))?
        }
        None => RawConfig::default(),
    };
    raw.detector = args.detector.clone();
    if let Some(t) = args.threshold {
        raw.score_threshold = t;
    }
    raw.enable_age |= args.age;
    raw.enable_gender &= !args.no_gender;
    raw.enable_emotion &= !args.no_emotion;
    if let Some(dir) = &args.models {
        raw.models_dir = dir.to_string_lossy().into_owned();
    }
    if let Some(v) = args.detection_size {
        raw.detection_max_side = v;
    }
    if let Some(v) = args.min_face {
        raw.min_face_size = v;
    }
    if let Some(v) = args.max_faces {
        raw.max_faces = v;
    }
    if let Some(v) = args.threads {
        raw.intra_op_threads = v;
    }
    raw.pin_threads &= !args.no_pin_threads;
    if let Some(v) = &args.classifier_split {
        raw.classifier_split.clone_from(v);
    }
    if let Some(v) = &args.precision {
        raw.precision.clone_from(v);
    }
    Ok(raw)
}

/// One unit of work.
enum Input {
    /// A file with an image extension.
    Image(PathBuf),
    /// A file with a video extension.
    Video(PathBuf),
    /// A file named on the command line with neither: an image, else a video.
    Named(PathBuf),
}

fn extension_of(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Expands folders (recursively, sorted) into their image and video files.
fn expand_inputs(paths: &[PathBuf], errors: &mut Vec<String>) -> Vec<Input> {
    let mut inputs = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut files = Vec::new();
            collect_dir(path, &mut files, errors);
            files.sort();
            for file in files {
                let ext = extension_of(&file);
                if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
                    inputs.push(Input::Image(file));
                } else if VIDEO_EXTENSIONS.contains(&ext.as_str()) {
                    inputs.push(Input::Video(file));
                }
            }
        } else {
            // Failures (missing, unreadable) are reported per input.
            let ext = extension_of(path);
            inputs.push(if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
                Input::Image(path.clone())
            } else if VIDEO_EXTENSIONS.contains(&ext.as_str()) {
                Input::Video(path.clone())
            } else {
                Input::Named(path.clone())
            });
        }
    }
    inputs
}

fn collect_dir(dir: &Path, files: &mut Vec<PathBuf>, errors: &mut Vec<String>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(format!("{}: cannot read folder: {e}", dir.display()));
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_dir(&path, files, errors);
        } else {
            files.push(path);
        }
    }
}

/// Reads an image file into a frame: JPEG and PNG by the core's decoder,
/// other formats (BMP, WebP, TIFF, PNM) through OpenCV.
fn read_image(path: &Path, limits: &FrameLimits) -> Result<Frame> {
    let bytes = std::fs::read(path).context("cannot read")?;
    match Frame::from_compressed("", &bytes, limits) {
        Ok(frame) => Ok(frame),
        Err(FrameError::UnsupportedFormat { .. }) => {
            decode_with_opencv(&bytes, limits).context("not a readable image")
        }
        Err(e) => Err(anyhow::Error::new(e).context("not a readable image")),
    }
}

fn decode_with_opencv(bytes: &[u8], limits: &FrameLimits) -> Result<Frame> {
    use opencv::core::Vector;
    let buffer: Vector<u8> = Vector::from_slice(bytes);
    let bgr = opencv::imgcodecs::imdecode(&buffer, opencv::imgcodecs::IMREAD_COLOR)?;
    if bgr.empty() {
        bail!("unsupported or corrupt image");
    }
    frame_from_bgr_mat(&bgr, limits, &mut Mat::default())
}

fn frame_from_bgr_mat(
    bgr: &opencv::core::Mat,
    limits: &FrameLimits,
    contiguous: &mut opencv::core::Mat,
) -> Result<Frame> {
    use face_perception::frame::RawImage;
    if bgr.typ() != opencv::core::CV_8UC3 {
        bail!(
            "expected 8-bit BGR pixels from OpenCV, got type {}",
            bgr.typ()
        );
    }
    let mat = if bgr.is_continuous() {
        bgr
    } else {
        *contiguous = bgr.try_clone()?;
        &*contiguous
    };
    let (width, height) = (u32::try_from(mat.cols())?, u32::try_from(mat.rows())?);
    let raw = RawImage {
        width,
        height,
        encoding: "bgr8",
        is_bigendian: false,
        step: width.checked_mul(3).context("image too wide")?,
        data: mat.data_bytes()?,
    };
    Ok(Frame::from_raw(&raw, limits)?)
}

fn round_to(value: f64, decimals: i32) -> f64 {
    let factor = 10f64.powi(decimals);
    (value * factor).round() / factor
}

/// Probabilities keyed by label, in the model's label order.
struct Probabilities<'a>(&'a Classification);

impl Serialize for Probabilities<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.labels.len()))?;
        for (label, p) in self.0.labels.iter().zip(&self.0.probabilities) {
            map.serialize_entry(label, &round_to(f64::from(*p), PROBABILITY_DECIMALS))?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct ClassRecord<'a> {
    label: &'a str,
    confidence: f64,
    probabilities: Probabilities<'a>,
}

impl<'a> ClassRecord<'a> {
    fn new(c: &'a Classification) -> Self {
        Self {
            label: c.label(),
            confidence: round_to(f64::from(c.confidence()), PROBABILITY_DECIMALS),
            probabilities: Probabilities(c),
        }
    }
}

#[derive(Serialize)]
struct AgeRecord {
    years: f64,
    stddev: f64,
}

/// Named points, serialised as a JSON object in the detector's order.
struct NamedPoints(Vec<(&'static str, [f64; 2])>);

impl NamedPoints {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<(&'static str, [f64; 2])>> for NamedPoints {
    fn from(points: Vec<(&'static str, [f64; 2])>) -> Self {
        Self(points)
    }
}

impl Serialize for NamedPoints {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, xy)| (name, xy)))
    }
}

#[derive(Serialize)]
struct FaceRecord<'a> {
    id: &'a str,
    #[serde(rename = "box")]
    bbox: [f64; 4],
    score: f64,
    /// Facial keypoints by name, `[x, y]` in pixels (none from Haar).
    #[serde(skip_serializing_if = "NamedPoints::is_empty")]
    landmarks: NamedPoints,
    #[serde(skip_serializing_if = "Option::is_none")]
    gender: Option<ClassRecord<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    emotion: Option<ClassRecord<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    age: Option<AgeRecord>,
}

impl<'a> FaceRecord<'a> {
    fn new(face: &'a FaceResult) -> Self {
        Self {
            id: &face.id,
            bbox: face
                .bbox
                .to_array()
                .map(|v| round_to(f64::from(v), BOX_DECIMALS)),
            score: round_to(f64::from(face.score), PROBABILITY_DECIMALS),
            landmarks: face
                .landmarks
                .as_ref()
                .map(Landmarks::named_points)
                .unwrap_or_default()
                .into_iter()
                .map(|(name, p)| {
                    let at = |v: f32| round_to(f64::from(v), BOX_DECIMALS);
                    (name, [at(p.x), at(p.y)])
                })
                .collect::<Vec<_>>()
                .into(),
            gender: face.gender.as_ref().map(ClassRecord::new),
            emotion: face.emotion.as_ref().map(ClassRecord::new),
            age: face.age.as_ref().map(|a| AgeRecord {
                years: round_to(f64::from(a.years), 1),
                stddev: round_to(f64::from(a.stddev), 1),
            }),
        }
    }
}

#[derive(Serialize)]
struct TimingsRecord {
    detect: f64,
    classify: f64,
    total: f64,
}

/// One line of output: an image or a video frame.
#[derive(Serialize)]
struct ImageRecord<'a> {
    image: &'a str,
    /// Video frames: the frame's index in the video, from 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    frame: Option<u64>,
    /// Video frames: the frame's time in the video, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    time_s: Option<f64>,
    width: u32,
    height: u32,
    faces: Vec<FaceRecord<'a>>,
    timings_ms: TimingsRecord,
}

fn ms(d: std::time::Duration) -> f64 {
    round_to(d.as_secs_f64() * 1000.0, TIMING_DECIMALS)
}

fn image_record<'a>(
    image: &'a str,
    frame_index: Option<u64>,
    frame: &Frame,
    result: &'a FrameResult,
) -> ImageRecord<'a> {
    ImageRecord {
        image,
        frame: frame_index,
        time_s: None,
        width: frame.width(),
        height: frame.height(),
        faces: result.faces.iter().map(FaceRecord::new).collect(),
        timings_ms: TimingsRecord {
            detect: ms(result.timings.detect),
            classify: ms(result.timings.classify),
            total: ms(result.timings.total),
        },
    }
}

/// The file stem of an input, used to name its output files.
fn stem_of(input: &Path) -> String {
    input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into())
}

/// Chooses an output file name `<stem>_<kind>.<suffix>` in `dir` not used
/// before in this run.
fn output_path(
    dir: &Path,
    stem: &str,
    kind: &str,
    suffix: &str,
    used: &mut HashSet<PathBuf>,
) -> PathBuf {
    let mut candidate = dir.join(format!("{stem}_{kind}.{suffix}"));
    let mut n = 1;
    while used.contains(&candidate) {
        candidate = dir.join(format!("{stem}_{kind}_{n}.{suffix}"));
        n += 1;
    }
    used.insert(candidate.clone());
    candidate
}

fn write_png(path: &Path, frame: &Frame) -> Result<()> {
    image::save_buffer(
        path,
        frame.data(),
        frame.width(),
        frame.height(),
        image::ExtendedColorType::Rgb8,
    )
    .with_context(|| format!("cannot write {}", path.display()))
}

struct Run<'a> {
    pipeline: Pipeline,
    image_config: Config,
    video_config: Config,
    annotated_dir: Option<&'a Path>,
    saliency_dir: Option<&'a Path>,
    saliency_method: SaliencyMethod,
    used_names: HashSet<PathBuf>,
    every: u64,
    out: std::io::StdoutLock<'static>,
}

impl Run<'_> {
    fn emit(&mut self, value: &ImageRecord<'_>) -> Result<()> {
        serde_json::to_writer(&mut self.out, value)?;
        self.out.write_all(b"\n")?;
        self.out.flush()?;
        Ok(())
    }

    fn request(&self) -> FrameRequest {
        FrameRequest {
            annotated: self.annotated_dir.is_some(),
            explain: self
                .saliency_dir
                .map(|_| Explain::all(self.saliency_method)),
            ..Default::default()
        }
    }

    /// Writes the saliency images of one result, named after `stem`.
    fn write_saliency(&mut self, stem: &str, result: &FrameResult) -> Result<()> {
        let Some(dir) = self.saliency_dir else {
            return Ok(());
        };
        for explained in &result.saliency_images {
            let task = explained.task.model_name();
            let kind = format!("saliency_{task}");
            let out = output_path(dir, stem, &kind, "png", &mut self.used_names);
            write_png(&out, &explained.overlay)?;
            for (id, map) in &explained.face_maps {
                let kind = format!("saliency_{task}_face{id}");
                let out = output_path(dir, stem, &kind, "png", &mut self.used_names);
                image::save_buffer(
                    &out,
                    &map.data,
                    map.width as u32,
                    map.height as u32,
                    image::ExtendedColorType::L8,
                )
                .with_context(|| format!("cannot write {}", out.display()))?;
            }
        }
        Ok(())
    }

    fn image(&mut self, path: &Path) -> Result<()> {
        let frame = read_image(path, self.image_config.frame_limits())?;
        self.analyze_image(path, &frame)
    }

    fn analyze_image(&mut self, path: &Path, frame: &Frame) -> Result<()> {
        if self.pipeline.config() != &self.image_config {
            self.pipeline.reconfigure(&self.image_config)?;
        }
        let result = self.pipeline.process(frame, &self.request())?;
        let name = path.to_string_lossy();
        self.emit(&image_record(&name, None, frame, &result))?;
        let stem = stem_of(path);
        if let (Some(dir), Some(annotated)) = (self.annotated_dir, &result.annotated) {
            let out = output_path(dir, &stem, "annotated", "png", &mut self.used_names);
            write_png(&out, annotated)?;
        }
        self.write_saliency(&stem, &result)
    }

    /// An input given by name that is not a readable image: analysed as a
    /// video when OpenCV can read frames from it, else the image error.
    fn image_or_video(&mut self, path: &Path) -> Result<()> {
        let image_error = match read_image(path, self.image_config.frame_limits()) {
            Ok(frame) => return self.analyze_image(path, &frame),
            Err(e) => e,
        };
        match open_video(path) {
            Ok(Some(capture)) => self.video(path, capture),
            _ => bail!("neither a readable image ({image_error:#}) nor a video OpenCV can read"),
        }
    }

    /// Analyses every frame (or every `--every`th) of a video with tracking:
    /// ids persist across its frames, and each video starts a fresh tracker.
    fn video(&mut self, path: &Path, mut capture: VideoCapture) -> Result<()> {
        if self.pipeline.config() != &self.video_config {
            self.pipeline.reconfigure(&self.video_config)?;
        }
        self.pipeline.reset_tracks();
        let name = path.to_string_lossy().into_owned();
        let stem = stem_of(path);
        let mut clock = FrameClock::new(&capture);
        let mut annotated_video: Option<AnnotatedVideo> = None;
        let mut bgr = Mat::default();
        let mut contiguous = Mat::default();
        let request = self.request();
        let every = self.every.max(1);
        let mut index = 0u64;
        while capture.read(&mut bgr)? && !bgr.empty() {
            let this = index;
            index += 1;
            let time_s = clock.time_s(this, capture.get(CAP_PROP_POS_MSEC).ok());
            if !this.is_multiple_of(every) {
                continue;
            }
            let frame = frame_from_bgr_mat(&bgr, self.video_config.frame_limits(), &mut contiguous)
                .with_context(|| format!("frame {this}"))?;
            let result = self
                .pipeline
                .process(&frame, &request)
                .with_context(|| format!("frame {this}"))?;
            let mut record = image_record(&name, Some(this), &frame, &result);
            record.time_s = time_s.map(|t| round_to(t, TIME_DECIMALS));
            self.emit(&record)?;
            if let (Some(dir), Some(annotated)) = (self.annotated_dir, &result.annotated) {
                if annotated_video.is_none() {
                    let out = output_path(dir, &stem, "annotated", "avi", &mut self.used_names);
                    let rate = if clock.fps > 0.0 {
                        clock.fps
                    } else {
                        DEFAULT_VIDEO_FPS
                    };
                    annotated_video = Some(AnnotatedVideo::create(
                        &out,
                        rate / every as f64,
                        annotated,
                    )?);
                }
                if let Some(video) = annotated_video.as_mut() {
                    video.write(annotated)?;
                }
            }
            self.write_saliency(&format!("{stem}_{this:06}"), &result)?;
        }
        if index == 0 {
            bail!("no frame could be decoded (corrupt or unsupported video)");
        }
        Ok(())
    }
}

/// Opens a video with FFmpeg, else OpenCV's own MJPEG-in-AVI reader (else
/// GStreamer, when this OpenCV has no FFmpeg); `None` when none can read it.
/// GStreamer comes last because it reports a file it cannot play with
/// screens of GStreamer-CRITICAL messages.
fn open_video(path: &Path) -> Result<Option<VideoCapture>> {
    if !path.is_file() {
        bail!("no such file");
    }
    let name = path.to_str().context("the path is not valid UTF-8")?;
    let mut backends = vec![CAP_FFMPEG, CAP_OPENCV_MJPEG];
    if !opencv::videoio::has_backend(opencv::videoio::VideoCaptureAPIs::CAP_FFMPEG)? {
        backends.push(CAP_GSTREAMER);
    }
    // A backend that fails logs why: noise next to the one message given
    // for the input.
    let log_level = opencv::core::set_log_level(opencv::core::LogLevel::LOG_LEVEL_SILENT)?;
    let mut opened = None;
    for backend in backends {
        match VideoCapture::from_file(name, backend) {
            Ok(capture) if capture.is_opened().unwrap_or(false) => {
                opened = Some(capture);
                break;
            }
            _ => {}
        }
    }
    opencv::core::set_log_level(log_level)?;
    Ok(opened)
}

/// The time of each frame: the FFmpeg backend's timestamp (right for
/// variable frame rates too) while it keeps increasing, else the frame index
/// over the frame rate, else unknown. OpenCV's own MJPEG reader reports the
/// time after the frame, hence only FFmpeg's is used.
struct FrameClock {
    fps: f64,
    last_ms: Option<f64>,
    backend_times: bool,
}

impl FrameClock {
    fn new(capture: &VideoCapture) -> Self {
        Self {
            fps: capture.get(CAP_PROP_FPS).unwrap_or(0.0),
            last_ms: None,
            backend_times: capture.get_backend_name().is_ok_and(|b| b == "FFMPEG"),
        }
    }

    fn time_s(&mut self, index: u64, position_ms: Option<f64>) -> Option<f64> {
        if self.backend_times {
            match position_ms {
                Some(ms) if ms.is_finite() && ms >= 0.0 && self.last_ms.is_none_or(|l| ms > l) => {
                    self.last_ms = Some(ms);
                    return Some(ms / 1000.0);
                }
                // Not reported, or not increasing: do not trust it for this video.
                _ => self.backend_times = false,
            }
        }
        (self.fps > 0.0 && self.fps.is_finite()).then(|| index as f64 / self.fps)
    }
}

/// The annotated frames of one video, written as MJPG in AVI (OpenCV's own
/// encoder, no FFmpeg needed).
struct AnnotatedVideo {
    writer: VideoWriter,
    bgr: Mat,
}

impl AnnotatedVideo {
    fn create(path: &Path, fps: f64, first: &Frame) -> Result<Self> {
        let name = path.to_str().context("the path is not valid UTF-8")?;
        let fourcc = VideoWriter::fourcc('M', 'J', 'P', 'G')?;
        let size = opencv::core::Size::new(
            i32::try_from(first.width())?,
            i32::try_from(first.height())?,
        );
        let writer = VideoWriter::new(name, fourcc, fps, size, true)?;
        if !writer.is_opened()? {
            bail!("cannot write video {}", path.display());
        }
        Ok(Self {
            writer,
            bgr: Mat::default(),
        })
    }

    fn write(&mut self, frame: &Frame) -> Result<()> {
        let rgb = Mat::new_rows_cols_with_bytes::<opencv::core::Vec3b>(
            i32::try_from(frame.height())?,
            i32::try_from(frame.width())?,
            frame.data(),
        )?;
        opencv::imgproc::cvt_color_def(&rgb, &mut self.bgr, opencv::imgproc::COLOR_RGB2BGR)?;
        self.writer.write(&self.bgr)?;
        Ok(())
    }
}

/// Runs `analyze`; `Ok(false)` when some inputs failed.
fn analyze(args: &AnalyzeArgs) -> Result<bool> {
    let raw = raw_config(args)?;
    // Independent photos: no tracking, no smoothing; ids are indices.
    let image_config = Config::from_raw(RawConfig {
        tracking: false,
        smoothing: "off".into(),
        ..raw.clone()
    })
    .context("invalid option")?;
    // Videos: tracking and smoothing as configured.
    let video_config = Config::from_raw(raw).context("invalid option")?;
    let saliency_method: SaliencyMethod = args
        .saliency_method
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid option --saliency-method: {e}"))?;
    for dir in [&args.annotated, &args.saliency].into_iter().flatten() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut errors = Vec::new();
    let inputs = expand_inputs(&args.inputs, &mut errors);
    let pipeline = Pipeline::new(&image_config).context("cannot start the pipeline")?;
    let mut run = Run {
        pipeline,
        image_config,
        video_config,
        annotated_dir: args.annotated.as_deref(),
        saliency_dir: args.saliency.as_deref(),
        saliency_method,
        used_names: HashSet::new(),
        every: args.every,
        out: std::io::stdout().lock(),
    };
    let progress = if inputs.len() >= PROGRESS_MIN_INPUTS {
        let bar = ProgressBar::new(inputs.len() as u64);
        if let Ok(style) = ProgressStyle::with_template(
            "{bar:40} {pos}/{len} {elapsed_precise} ETA {eta} {wide_msg}",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    for message in &errors {
        progress.suspend(|| eprintln!("face_perception: {message}"));
    }
    for input in &inputs {
        let (path, outcome) = match input {
            Input::Image(path) => (path, run.image(path)),
            Input::Named(path) => (path, run.image_or_video(path)),
            Input::Video(path) => (
                path,
                open_video(path).and_then(|capture| match capture {
                    Some(capture) => run.video(path, capture),
                    None => bail!("not a video OpenCV can read (corrupt or unsupported)"),
                }),
            ),
        };
        if let Err(e) = outcome {
            progress.suspend(|| eprintln!("face_perception: {}: {e:#}", path.display()));
            errors.push(e.to_string());
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    if inputs.is_empty() {
        eprintln!("face_perception: no images or videos found in the inputs");
        return Ok(false);
    }
    Ok(errors.is_empty())
}
