//! Face detection behind one interface, [`FaceDetector`], with three
//! backends: [`centerface::CenterFace`] (an anchor-free CNN, the default),
//! [`blazeface::BlazeFace`] (MediaPipe's SSD-style CNN: about half the cost,
//! fewer small faces) and [`haar::HaarCascade`] (OpenCV's Viola-Jones cascade,
//! no model file needed).
//!
//! All share the parameters of [`DetectorConfig`]: detections below the score
//! threshold or the minimum face size are dropped, overlapping ones suppressed
//! (non-maximum suppression at `nms_iou`; BlazeFace merges each overlapping
//! group into its score-weighted mean instead, as MediaPipe does), and the
//! `max_faces` highest-scoring kept. CenterFace and Haar downscale frames whose longest side exceeds
//! `max_side`; BlazeFace letterboxes every frame into its fixed square input.
//! Boxes are always in frame pixels.

pub mod blazeface;
pub mod byte_input;
pub mod centerface;
pub mod haar;
pub mod shrink;

use crate::config::DetectorConfig;
use crate::frame::Frame;
use crate::manifest::{ColorOrder, ModelEntry};
use serde::Serialize;

/// A point in frame pixels.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Point {
    /// Horizontal position, pixels from the left edge.
    pub x: f32,
    /// Vertical position, pixels from the top edge.
    pub y: f32,
}

/// An axis-aligned face box in frame pixels (top-left corner and size).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct FaceBox {
    /// Left edge.
    pub x: f32,
    /// Top edge.
    pub y: f32,
    /// Width.
    pub width: f32,
    /// Height.
    pub height: f32,
}

impl FaceBox {
    /// Right edge.
    pub fn right(&self) -> f32 {
        self.x + self.width
    }

    /// Bottom edge.
    pub fn bottom(&self) -> f32 {
        self.y + self.height
    }

    /// Area (zero for a degenerate box).
    pub fn area(&self) -> f32 {
        self.width.max(0.0) * self.height.max(0.0)
    }

    /// Centre point.
    pub fn centre(&self) -> Point {
        Point {
            x: self.x + self.width / 2.0,
            y: self.y + self.height / 2.0,
        }
    }

    /// Intersection over union with `other`, in [0, 1].
    pub fn iou(&self, other: &FaceBox) -> f32 {
        let w = (self.right().min(other.right()) - self.x.max(other.x)).max(0.0);
        let h = (self.bottom().min(other.bottom()) - self.y.max(other.y)).max(0.0);
        let intersection = w * h;
        let union = self.area() + other.area() - intersection;
        if union > 0.0 {
            intersection / union
        } else {
            0.0
        }
    }

    /// The box clipped to a `width` x `height` frame.
    pub fn clipped(&self, width: f32, height: f32) -> FaceBox {
        let x0 = self.x.clamp(0.0, width);
        let y0 = self.y.clamp(0.0, height);
        let x1 = self.right().clamp(0.0, width);
        let y1 = self.bottom().clamp(0.0, height);
        FaceBox {
            x: x0,
            y: y0,
            width: x1 - x0,
            height: y1 - y0,
        }
    }

    /// `[x, y, width, height]`.
    pub fn to_array(&self) -> [f32; 4] {
        [self.x, self.y, self.width, self.height]
    }
}

/// Five facial landmarks in frame pixels, in the order CenterFace (and most
/// five-point detectors) emit them. "Left" and "right" are as seen in the image.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct FivePointLandmarks {
    /// The eye nearer the image's left edge (the subject's right eye).
    pub eye_left: Point,
    /// The eye nearer the image's right edge.
    pub eye_right: Point,
    /// Nose tip.
    pub nose: Point,
    /// Mouth corner nearer the image's left edge.
    pub mouth_left: Point,
    /// Mouth corner nearer the image's right edge.
    pub mouth_right: Point,
}

impl FivePointLandmarks {
    /// The five points in order.
    pub fn points(&self) -> [Point; 5] {
        [
            self.eye_left,
            self.eye_right,
            self.nose,
            self.mouth_left,
            self.mouth_right,
        ]
    }

    /// Builds landmarks from five points in order.
    pub fn from_points(p: [Point; 5]) -> Self {
        Self {
            eye_left: p[0],
            eye_right: p[1],
            nose: p[2],
            mouth_left: p[3],
            mouth_right: p[4],
        }
    }
}

/// BlazeFace's six keypoints in frame pixels, in the network's order. Sides
/// are the subject's: for a face looking at the camera (image not mirrored)
/// the right eye is the one nearer the image's left edge.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct BlazeFaceKeypoints {
    /// The subject's right eye.
    pub right_eye: Point,
    /// The subject's left eye.
    pub left_eye: Point,
    /// Nose tip.
    pub nose_tip: Point,
    /// Centre of the mouth.
    pub mouth_centre: Point,
    /// The subject's right ear tragion.
    pub right_ear_tragion: Point,
    /// The subject's left ear tragion.
    pub left_ear_tragion: Point,
}

impl BlazeFaceKeypoints {
    /// The six points in the network's order.
    pub fn points(&self) -> [Point; 6] {
        [
            self.right_eye,
            self.left_eye,
            self.nose_tip,
            self.mouth_centre,
            self.right_ear_tragion,
            self.left_ear_tragion,
        ]
    }

    /// Builds keypoints from six points in the network's order.
    pub fn from_points(p: [Point; 6]) -> Self {
        Self {
            right_eye: p[0],
            left_eye: p[1],
            nose_tip: p[2],
            mouth_centre: p[3],
            right_ear_tragion: p[4],
            left_ear_tragion: p[5],
        }
    }
}

/// Facial landmarks as a detector gives them; each detector has its own set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "scheme", rename_all = "snake_case")]
pub enum Landmarks {
    /// CenterFace: eyes, nose tip, mouth corners.
    FivePoint(FivePointLandmarks),
    /// BlazeFace: eyes, nose tip, mouth centre, ear tragions.
    BlazeFace(BlazeFaceKeypoints),
}

impl Landmarks {
    /// Every point with its name, in the detector's order. Sides are the
    /// subject's: in an unmirrored image of a face looking at the camera, the
    /// right eye is the one nearer the image's left edge. Five-point:
    /// `right_eye`, `left_eye`, `nose_tip`, `mouth_right`, `mouth_left`;
    /// BlazeFace: `right_eye`, `left_eye`, `nose_tip`, `mouth_centre`,
    /// `right_ear_tragion`, `left_ear_tragion`.
    pub fn named_points(&self) -> Vec<(&'static str, Point)> {
        // FivePointLandmarks name sides as seen in the image: its first eye
        // and mouth corner are the subject's right ones.
        const FIVE_POINT: [&str; 5] = [
            "right_eye",
            "left_eye",
            "nose_tip",
            "mouth_right",
            "mouth_left",
        ];
        const BLAZEFACE: [&str; 6] = [
            "right_eye",
            "left_eye",
            "nose_tip",
            "mouth_centre",
            "right_ear_tragion",
            "left_ear_tragion",
        ];
        match self {
            Self::FivePoint(p) => FIVE_POINT.into_iter().zip(p.points()).collect(),
            Self::BlazeFace(k) => BLAZEFACE.into_iter().zip(k.points()).collect(),
        }
    }

    /// The eyes, the one nearer the image's left edge first (for an upright,
    /// unmirrored face).
    pub fn eyes(&self) -> (Point, Point) {
        match self {
            Self::FivePoint(l) => (l.eye_left, l.eye_right),
            Self::BlazeFace(k) => (k.right_eye, k.left_eye),
        }
    }

    /// In-plane roll of the face: the angle of the eye line, in radians,
    /// positive when the right-hand eye is lower.
    pub fn roll(&self) -> f32 {
        let (left, right) = self.eyes();
        (right.y - left.y).atan2(right.x - left.x)
    }
}

/// One detected face.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    /// Face box in frame pixels.
    #[serde(rename = "box")]
    pub bbox: FaceBox,
    /// Detector confidence in [0, 1].
    pub score: f32,
    /// Landmarks, when the backend gives them (the CNNs do, Haar does not).
    pub landmarks: Option<Landmarks>,
}

/// Why detection failed.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The model does not have the inputs or outputs the manifest promises.
    #[error("face detector model {model}: {reason}")]
    ModelMismatch {
        /// Model file.
        model: String,
        /// What differs.
        reason: String,
    },
    /// ONNX Runtime failed while running the model.
    #[error("face detector inference failed: {0}")]
    Inference(String),
    /// An OpenCV call failed.
    #[error("OpenCV failed during detection: {0}")]
    OpenCv(String),
    /// The Haar cascade file is missing or invalid.
    #[error("cannot load Haar cascade {path}: {reason}")]
    Cascade {
        /// Cascade file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

impl From<opencv::Error> for DetectError {
    fn from(e: opencv::Error) -> Self {
        Self::OpenCv(e.to_string())
    }
}

/// A face detection backend.
pub trait FaceDetector {
    /// Detects faces in `frame` with `params`; boxes are in frame pixels,
    /// sorted by decreasing score, at most `params.max_faces`.
    fn detect(
        &mut self,
        frame: &Frame,
        params: &DetectorConfig,
    ) -> Result<Vec<Detection>, DetectError>;

    /// Short backend name for logs.
    fn name(&self) -> &'static str;
}

/// Any backend, chosen at run time.
pub enum Detector {
    /// BlazeFace CNN.
    BlazeFace(Box<blazeface::BlazeFace>),
    /// CenterFace CNN.
    CenterFace(Box<centerface::CenterFace>),
    /// Haar cascade.
    Haar(haar::HaarCascade),
}

impl FaceDetector for Detector {
    fn detect(
        &mut self,
        frame: &Frame,
        params: &DetectorConfig,
    ) -> Result<Vec<Detection>, DetectError> {
        match self {
            Self::BlazeFace(d) => d.detect(frame, params),
            Self::CenterFace(d) => d.detect(frame, params),
            Self::Haar(d) => d.detect(frame, params),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::BlazeFace(d) => d.name(),
            Self::CenterFace(d) => d.name(),
            Self::Haar(d) => d.name(),
        }
    }
}

/// How a frame is resized for detection: the detector sees `width` x `height`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectionScale {
    /// Width of the downscaled image.
    pub width: u32,
    /// Height of the downscaled image.
    pub height: u32,
    /// Downscaled width over frame width.
    pub scale_x: f32,
    /// Downscaled height over frame height.
    pub scale_y: f32,
}

impl DetectionScale {
    /// The size that fits a `frame_width` x `frame_height` frame within
    /// `max_side` (never upscaled), keeping the aspect ratio.
    pub fn for_frame(frame_width: u32, frame_height: u32, max_side: u32) -> Self {
        let longest = frame_width.max(frame_height).max(1);
        let factor = (max_side as f32 / longest as f32).min(1.0);
        let width = ((frame_width as f32 * factor).round() as u32).max(1);
        let height = ((frame_height as f32 * factor).round() as u32).max(1);
        Self {
            width,
            height,
            scale_x: width as f32 / frame_width.max(1) as f32,
            scale_y: height as f32 / frame_height.max(1) as f32,
        }
    }

    /// Whether the frame is used at its own size.
    pub fn is_identity(&self) -> bool {
        self.scale_x == 1.0 && self.scale_y == 1.0
    }

    /// A box in detector pixels mapped back to frame pixels.
    pub fn box_to_frame(&self, b: FaceBox) -> FaceBox {
        FaceBox {
            x: b.x / self.scale_x,
            y: b.y / self.scale_y,
            width: b.width / self.scale_x,
            height: b.height / self.scale_y,
        }
    }

    /// A point in detector pixels mapped back to frame pixels.
    pub fn point_to_frame(&self, p: Point) -> Point {
        Point {
            x: p.x / self.scale_x,
            y: p.y / self.scale_y,
        }
    }
}

/// Checks that a detector session has the manifest entry's input and its
/// `output_count` outputs (`detector` names the backend in the message).
pub(crate) fn check_interface(
    session: &ort::session::Session,
    entry: &ModelEntry,
    output_count: usize,
    detector: &str,
) -> Result<(), String> {
    if !session
        .inputs()
        .iter()
        .any(|i| i.name() == entry.input.name)
    {
        return Err(format!("no input named {:?}", entry.input.name));
    }
    if entry.outputs.len() != output_count {
        return Err(format!(
            "manifest lists {} outputs, {detector} has {output_count}",
            entry.outputs.len()
        ));
    }
    for output in &entry.outputs {
        if !session.outputs().iter().any(|o| o.name() == output.name) {
            return Err(format!("no output named {:?}", output.name));
        }
    }
    Ok(())
}

/// The f32 output `name` of a detector run, with its shape; a missing output
/// is a [`DetectError::ModelMismatch`] naming `model`, a non-f32 one an
/// inference error.
pub(crate) fn output_tensor<'a>(
    outputs: &'a ort::session::SessionOutputs<'_>,
    name: &str,
    model: &str,
) -> Result<(&'a [i64], &'a [f32]), DetectError> {
    let value = outputs
        .get(name)
        .ok_or_else(|| DetectError::ModelMismatch {
            model: model.to_string(),
            reason: format!("output {name:?} missing from the results"),
        })?;
    let (shape, data) = value
        .try_extract_tensor::<f32>()
        .map_err(|e| DetectError::Inference(e.to_string()))?;
    Ok((shape, data))
}

/// Greedy non-maximum suppression: keeps the highest-scoring detection of
/// every group overlapping by more than `iou`. Sorts by decreasing score.
pub fn non_max_suppression(detections: &mut Vec<Detection>, iou: f32) {
    detections.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::with_capacity(detections.len());
    for d in detections.drain(..) {
        if kept.iter().all(|k| k.bbox.iou(&d.bbox) <= iou) {
            kept.push(d);
        }
    }
    *detections = kept;
}

/// Weighted (blending) non-maximum suppression, the rule MediaPipe's face
/// detector applies to BlazeFace. Detections are taken in order of
/// decreasing score: the best remaining one and every remaining detection
/// whose IoU with it exceeds `iou` form a cluster, which becomes one
/// detection whose box is the score-weighted mean of the cluster's boxes,
/// whose landmarks are the score-weighted mean of the landmarks of the members
/// that have the best one's scheme (none when it has none), and whose score is
/// the best one's. The cluster is removed and the rest treated the same way.
///
/// The clusters' best detections are exactly the ones
/// [`non_max_suppression`] keeps (same count, scores and order); only their
/// boxes and landmarks move. Unlike greedy NMS, a merged box may overlap
/// another output by more than `iou`. Sorts by decreasing score.
pub fn weighted_non_max_suppression(detections: &mut Vec<Detection>, iou: f32) {
    detections.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut remaining = std::mem::take(detections);
    let mut cluster: Vec<Detection> = Vec::new();
    let mut rest: Vec<Detection> = Vec::with_capacity(remaining.len());
    while !remaining.is_empty() {
        let top = remaining[0].bbox;
        for (i, d) in remaining.drain(..).enumerate() {
            if i == 0 || top.iou(&d.bbox) > iou {
                cluster.push(d);
            } else {
                rest.push(d);
            }
        }
        detections.push(blend_cluster(&cluster));
        cluster.clear();
        std::mem::swap(&mut remaining, &mut rest);
    }
}

/// One detection from a cluster whose first member has the best score: see
/// [`weighted_non_max_suppression`]. A cluster whose weights do not add up to
/// a positive finite number (zero or non-finite scores) gives its best member.
fn blend_cluster(cluster: &[Detection]) -> Detection {
    let top = &cluster[0];
    let total: f32 = cluster.iter().map(|d| d.score).sum();
    if cluster.len() == 1 || !(total.is_finite() && total > 0.0) {
        return top.clone();
    }
    let mut bbox = FaceBox::default();
    for d in cluster {
        let w = d.score / total;
        bbox.x += w * d.bbox.x;
        bbox.y += w * d.bbox.y;
        bbox.width += w * d.bbox.width;
        bbox.height += w * d.bbox.height;
    }
    Detection {
        bbox,
        score: top.score,
        landmarks: top.landmarks.map(|scheme| blend_landmarks(scheme, cluster)),
    }
}

/// The score-weighted mean of the landmarks of the cluster members whose
/// landmarks have the same scheme as `scheme` (the best member's).
fn blend_landmarks(scheme: Landmarks, cluster: &[Detection]) -> Landmarks {
    fn mean<const N: usize>(members: &[([Point; N], f32)]) -> [Point; N] {
        let total: f32 = members.iter().map(|(_, w)| w).sum();
        let mut out = [Point::default(); N];
        for (points, w) in members {
            for (o, p) in out.iter_mut().zip(points) {
                o.x += w / total * p.x;
                o.y += w / total * p.y;
            }
        }
        out
    }
    match scheme {
        Landmarks::FivePoint(_) => {
            let members: Vec<([Point; 5], f32)> = cluster
                .iter()
                .filter_map(|d| match d.landmarks {
                    Some(Landmarks::FivePoint(l)) => Some((l.points(), d.score)),
                    _ => None,
                })
                .collect();
            Landmarks::FivePoint(FivePointLandmarks::from_points(mean(&members)))
        }
        Landmarks::BlazeFace(_) => {
            let members: Vec<([Point; 6], f32)> = cluster
                .iter()
                .filter_map(|d| match d.landmarks {
                    Some(Landmarks::BlazeFace(k)) => Some((k.points(), d.score)),
                    _ => None,
                })
                .collect();
            Landmarks::BlazeFace(BlazeFaceKeypoints::from_points(mean(&members)))
        }
    }
}

/// The common tail of every backend: drop faces below the score threshold or
/// the minimum size, suppress overlaps, keep the `max_faces` best.
pub fn filter_detections(detections: &mut Vec<Detection>, params: &DetectorConfig) {
    detections.retain(|d| {
        d.score >= params.score_threshold && d.bbox.width.min(d.bbox.height) >= params.min_face_size
    });
    non_max_suppression(detections, params.nms_iou);
    detections.truncate(params.max_faces);
}

/// Per-channel affine pixel normalisation of a model input, from the manifest:
/// `value = (pixel - mean[c]) * scale[c]`, channels in model order.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalization {
    /// Channel order the model expects.
    pub color: ColorOrder,
    /// Mean per model channel.
    pub mean: Vec<f32>,
    /// Scale per model channel.
    pub scale: Vec<f32>,
}

impl Normalization {
    /// Reads and checks the manifest entry's normalisation: one mean and one
    /// scale per channel (a single value applies to all channels).
    pub fn from_entry(entry: &ModelEntry) -> Result<Self, String> {
        let channels = match entry.input.color {
            ColorOrder::Grey => 1,
            ColorOrder::Rgb | ColorOrder::Bgr => 3,
        };
        let expand = |values: &[f32], what: &str| -> Result<Vec<f32>, String> {
            match values.len() {
                1 => Ok(vec![values[0]; channels]),
                n if n == channels => Ok(values.to_vec()),
                n => Err(format!(
                    "preprocess.{what} has {n} values for {channels} channel(s)"
                )),
            }
        };
        let norm = Self {
            color: entry.input.color,
            mean: expand(&entry.preprocess.mean, "mean")?,
            scale: expand(&entry.preprocess.scale, "scale")?,
        };
        if norm.mean.iter().chain(&norm.scale).any(|v| !v.is_finite()) {
            return Err("preprocess mean/scale must be finite".to_string());
        }
        Ok(norm)
    }

    /// Whether the model takes the RGB bytes as they are (mean 0, scale 1).
    pub fn is_raw_rgb(&self) -> bool {
        self.color == ColorOrder::Rgb
            && self.mean.iter().all(|&m| m == 0.0)
            && self.scale.iter().all(|&s| s == 1.0)
    }

    /// Number of model channels.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// Writes an interleaved RGB8 image (`width * height * 3` bytes) into
    /// `planes` (channel-major, `channels * plane_stride` values) with row stride
    /// `row_stride` values inside each plane.
    pub fn fill_planes(
        &self,
        rgb: &[u8],
        width: usize,
        planes: &mut [f32],
        plane_stride: usize,
        row_stride: usize,
    ) {
        let source_channel: [usize; 3] = match self.color {
            ColorOrder::Bgr => [2, 1, 0],
            ColorOrder::Rgb | ColorOrder::Grey => [0, 1, 2],
        };
        if self.color == ColorOrder::Grey {
            // Grey models get ITU-R BT.601 luma, as OpenCV's RGB2GRAY computes it.
            let (mean, scale) = (self.mean[0], self.scale[0]);
            for (y, row) in rgb.chunks_exact(width * 3).enumerate() {
                let out = &mut planes[y * row_stride..y * row_stride + width];
                // Whole pixels as arrays, so the loop vectorises.
                let (pixels, _) = row.as_chunks::<3>();
                for (o, &[r, g, b]) in out.iter_mut().zip(pixels) {
                    *o = (f32::from(luma_from_rgb(r, g, b)) - mean) * scale;
                }
            }
            return;
        }
        for (c, &src) in source_channel.iter().enumerate().take(self.channels()) {
            let (mean, scale) = (self.mean[c], self.scale[c]);
            let plane = &mut planes[c * plane_stride..(c + 1) * plane_stride];
            for (y, row) in rgb.chunks_exact(width * 3).enumerate() {
                let out = &mut plane[y * row_stride..y * row_stride + width];
                let (pixels, _) = row.as_chunks::<3>();
                for (o, p) in out.iter_mut().zip(pixels) {
                    *o = (f32::from(p[src]) - mean) * scale;
                }
            }
        }
    }

    /// The input value of a black pixel, per model channel (used for padding).
    pub fn black(&self) -> Vec<f32> {
        self.mean
            .iter()
            .zip(&self.scale)
            .map(|(m, s)| -m * s)
            .collect()
    }
}

/// BT.601 luma with OpenCV's fixed-point rounding (`cvtColor(RGB2GRAY)`).
pub fn luma_from_rgb(r: u8, g: u8, b: u8) -> u8 {
    // 0.299, 0.587, 0.114 in 14-bit fixed point, as OpenCV.
    const R: u32 = 4899;
    const G: u32 = 9617;
    const B: u32 = 1868;
    const SHIFT: u32 = 14;
    ((u32::from(r) * R + u32::from(g) * G + u32::from(b) * B + (1 << (SHIFT - 1))) >> SHIFT) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x: f32, y: f32, side: f32, score: f32) -> Detection {
        Detection {
            bbox: FaceBox {
                x,
                y,
                width: side,
                height: side,
            },
            score,
            landmarks: None,
        }
    }

    #[test]
    fn iou_of_known_boxes() {
        let a = FaceBox {
            x: 0.0,
            y: 0.0,
            width: 10.0,
            height: 10.0,
        };
        let b = FaceBox {
            x: 5.0,
            y: 0.0,
            width: 10.0,
            height: 10.0,
        };
        assert!((a.iou(&b) - 50.0 / 150.0).abs() < 1e-6);
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(a.iou(&FaceBox { x: 20.0, ..a }), 0.0);
        assert_eq!(FaceBox::default().iou(&FaceBox::default()), 0.0);
    }

    #[test]
    fn nms_keeps_the_best_of_each_group() {
        let mut d = vec![
            det(0.0, 0.0, 10.0, 0.6),
            det(1.0, 1.0, 10.0, 0.9),
            det(50.0, 50.0, 10.0, 0.7),
        ];
        non_max_suppression(&mut d, 0.3);
        let scores: Vec<f32> = d.iter().map(|d| d.score).collect();
        assert_eq!(scores, [0.9, 0.7]);
    }

    /// A BlazeFace detection whose six keypoints are `(x + k, y + 2k)`.
    fn blaze(x: f32, y: f32, side: f32, score: f32) -> Detection {
        let points = std::array::from_fn(|k| Point {
            x: x + k as f32,
            y: y + 2.0 * k as f32,
        });
        Detection {
            landmarks: Some(Landmarks::BlazeFace(BlazeFaceKeypoints::from_points(
                points,
            ))),
            ..det(x, y, side, score)
        }
    }

    fn keypoints(d: &Detection) -> [Point; 6] {
        let Some(Landmarks::BlazeFace(k)) = d.landmarks else {
            panic!("no BlazeFace keypoints: {d:?}");
        };
        k.points()
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-4
    }

    #[test]
    fn weighted_nms_blends_a_cluster() {
        // Three overlapping boxes (pairwise IoU 0.6 to 0.8) and one far away.
        let mut d = vec![
            blaze(2.0, 0.0, 10.0, 0.6),
            blaze(0.0, 0.0, 10.0, 0.9),
            blaze(50.0, 50.0, 10.0, 0.7),
            blaze(0.0, 1.0, 12.0, 0.5),
        ];
        weighted_non_max_suppression(&mut d, 0.3);
        assert_eq!(d.len(), 2);
        let scores: Vec<f32> = d.iter().map(|d| d.score).collect();
        assert_eq!(scores, [0.9, 0.7], "the best member's score");
        // Weights 0.9, 0.6, 0.5 over 2.0.
        let (w0, w1, w2) = (0.45, 0.3, 0.25);
        let b = d[0].bbox;
        assert!(close(b.x, w1 * 2.0), "{b:?}");
        assert!(close(b.y, w2 * 1.0), "{b:?}");
        assert!(close(b.width, w0 * 10.0 + w1 * 10.0 + w2 * 12.0), "{b:?}");
        assert!(close(b.height, b.width), "{b:?}");
        for (k, p) in keypoints(&d[0]).iter().enumerate() {
            let k = k as f32;
            assert!(close(p.x, w1 * 2.0 + k), "keypoint {k}: {p:?}");
            assert!(close(p.y, w2 * 1.0 + 2.0 * k), "keypoint {k}: {p:?}");
        }
        // The lone box is untouched.
        assert_eq!(d[1], blaze(50.0, 50.0, 10.0, 0.7));
    }

    #[test]
    fn weighted_nms_leaves_separate_boxes_alone() {
        let mut d = vec![
            blaze(0.0, 0.0, 10.0, 0.6),
            blaze(20.0, 0.0, 10.0, 0.9),
            blaze(40.0, 0.0, 10.0, 0.7),
        ];
        let expected = [d[1].clone(), d[2].clone(), d[0].clone()];
        weighted_non_max_suppression(&mut d, 0.3);
        assert_eq!(d, expected, "unchanged, best score first");
        let mut none: Vec<Detection> = Vec::new();
        weighted_non_max_suppression(&mut none, 0.3);
        assert!(none.is_empty());
    }

    #[test]
    fn weighted_nms_respects_the_threshold() {
        // IoU of boxes shifted by 5 of 10 px: 50 / 150 = 1/3.
        let pair = || vec![det(0.0, 0.0, 10.0, 0.9), det(5.0, 0.0, 10.0, 0.3)];
        let mut above = pair();
        weighted_non_max_suppression(&mut above, 0.3);
        assert_eq!(above.len(), 1);
        assert!(close(above[0].bbox.x, 5.0 * 0.25), "{above:?}");
        assert_eq!(above[0].landmarks, None, "the best member has none");
        let mut below = pair();
        weighted_non_max_suppression(&mut below, 0.34);
        assert_eq!(below, pair(), "IoU 1/3 <= 0.34: two faces");
        // Membership is decided against the cluster's best box only: the
        // third box overlaps the second (IoU 1/3) but not the first, and is
        // left for a cluster of its own.
        let mut chain = vec![
            det(0.0, 0.0, 10.0, 0.9),
            det(5.0, 0.0, 10.0, 0.8),
            det(10.0, 0.0, 10.0, 0.7),
        ];
        weighted_non_max_suppression(&mut chain, 0.3);
        let xs: Vec<f32> = chain.iter().map(|d| d.bbox.x).collect();
        assert_eq!(chain.len(), 2, "{chain:?}");
        assert!(close(xs[0], 5.0 * 0.8 / 1.7) && xs[1] == 10.0, "{xs:?}");
    }

    #[test]
    fn weighted_nms_keeps_the_faces_greedy_nms_keeps() {
        // Pseudo-random boxes: the clusters' best members are greedy NMS's
        // survivors (same scores, same order), and each blended box overlaps
        // its survivor.
        let mut state = 0x2545_f491_u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 1000) as f32 / 1000.0
        };
        for _ in 0..50 {
            let d: Vec<Detection> = (0..20)
                .map(|_| blaze(next() * 60.0, next() * 60.0, 10.0 + next() * 20.0, next()))
                .collect();
            let (mut hard, mut weighted) = (d.clone(), d);
            non_max_suppression(&mut hard, 0.3);
            weighted_non_max_suppression(&mut weighted, 0.3);
            assert_eq!(hard.len(), weighted.len());
            for (h, w) in hard.iter().zip(&weighted) {
                assert_eq!(h.score, w.score);
                assert!(h.bbox.iou(&w.bbox) > 0.3, "{h:?} vs {w:?}");
            }
        }
    }

    #[test]
    fn filter_applies_threshold_size_and_count() {
        let params = DetectorConfig {
            backend: crate::config::DetectorBackend::BlazeFace,
            score_threshold: 0.5,
            nms_iou: 0.3,
            min_face_size: 8.0,
            max_faces: 2,
            max_side: 320,
            haar_cascade: Default::default(),
        };
        let mut d = vec![
            det(0.0, 0.0, 10.0, 0.4),
            det(20.0, 0.0, 4.0, 0.9),
            det(40.0, 0.0, 10.0, 0.8),
            det(60.0, 0.0, 10.0, 0.7),
            det(80.0, 0.0, 10.0, 0.6),
        ];
        filter_detections(&mut d, &params);
        let xs: Vec<f32> = d.iter().map(|d| d.bbox.x).collect();
        assert_eq!(xs, [40.0, 60.0]);
    }

    #[test]
    fn detection_scale_fits_the_longest_side() {
        let s = DetectionScale::for_frame(1920, 1080, 320);
        assert_eq!((s.width, s.height), (320, 180));
        let b = s.box_to_frame(FaceBox {
            x: 10.0,
            y: 10.0,
            width: 20.0,
            height: 20.0,
        });
        assert!((b.x - 60.0).abs() < 1e-3 && (b.width - 120.0).abs() < 1e-3);
        let s = DetectionScale::for_frame(200, 100, 320);
        assert!(s.is_identity());
    }

    #[test]
    fn luma_matches_opencv_rounding() {
        assert_eq!(luma_from_rgb(255, 255, 255), 255);
        assert_eq!(luma_from_rgb(0, 0, 0), 0);
        assert_eq!(luma_from_rgb(255, 0, 0), 76);
        assert_eq!(luma_from_rgb(0, 255, 0), 150);
        assert_eq!(luma_from_rgb(0, 0, 255), 29);
    }
}
