//! BlazeFace: MediaPipe's SSD-style face detector. A fixed square input
//! (192 x 192 for the full-range model), one box, six keypoints and one logit
//! per anchor.
//!
//! The frame is letterboxed into the input (scaled to fit, centred on black),
//! the anchors are MediaPipe's SSD anchors from the manifest's
//! `[model.decode]` (`decoder = "ssd_anchors"`), and boxes and keypoints are
//! mapped back to frame pixels by undoing the letterbox. Overlapping
//! detections are merged by weighted NMS
//! ([`weighted_non_max_suppression`],
//! MediaPipe's rule for this detector: score-weighted mean box and keypoints)
//! rather than the other backends' greedy NMS. `models/README.md` documents
//! the decoding, `tools/blazeface_decode.py` is its reference. The
//! anchors, the letterbox canvas and the input tensor are built once; only
//! the resized frame's buffer follows the frame size.

use super::shrink::AreaShrink;
use super::{
    check_interface, output_tensor, weighted_non_max_suppression, BlazeFaceKeypoints, DetectError,
    Detection, FaceBox, FaceDetector, Landmarks, Normalization, Point,
};
use crate::config::DetectorConfig;
use crate::frame::Frame;
use crate::manifest::{DetectorDecode, ModelEntry, SsdAnchorsDecode};
use ndarray::Array4;
use opencv::core::{Mat, Size};
use opencv::imgproc;
use opencv::prelude::*;
use ort::session::Session;
use ort::value::TensorRef;

/// Box values per anchor before the keypoints: centre x, centre y, width, height.
const BOX_VALUES: usize = 4;
/// Keypoints of BlazeFace's faces.
const KEYPOINTS: usize = 6;
/// Number of outputs: box and keypoint regressors, logits.
const OUTPUT_COUNT: usize = 2;

/// Where the frame sits inside the square network input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    /// Width of the scaled frame, input pixels.
    pub width: u32,
    /// Height of the scaled frame, input pixels.
    pub height: u32,
    /// Left edge of the scaled frame in the input.
    pub left: u32,
    /// Top edge of the scaled frame in the input.
    pub top: u32,
    /// Scaled width over frame width.
    pub scale_x: f32,
    /// Scaled height over frame height.
    pub scale_y: f32,
}

impl Letterbox {
    /// The letterbox of a `frame_width` x `frame_height` frame in a `size` x
    /// `size` input: scaled by `size / max(w, h)` (up or down), centred.
    pub fn for_frame(frame_width: u32, frame_height: u32, size: u32) -> Self {
        let (w, h) = (frame_width.max(1), frame_height.max(1));
        let factor = size as f32 / w.max(h) as f32;
        let width = ((w as f32 * factor).round() as u32).clamp(1, size);
        let height = ((h as f32 * factor).round() as u32).clamp(1, size);
        Self {
            width,
            height,
            left: (size - width) / 2,
            top: (size - height) / 2,
            scale_x: width as f32 / w as f32,
            scale_y: height as f32 / h as f32,
        }
    }

    /// A point in input pixels mapped to frame pixels.
    pub fn point_to_frame(&self, x: f32, y: f32) -> Point {
        Point {
            x: (x - self.left as f32) / self.scale_x,
            y: (y - self.top as f32) / self.scale_y,
        }
    }
}

/// Anchor centres in input pixels, in the network's output order: per group
/// of layers sharing a stride, cells row by row, every anchor of a cell
/// together (MediaPipe's `SsdAnchorsCalculator` with `fixed_anchor_size`).
pub fn anchor_centres(decode: &SsdAnchorsDecode, input_size: u32) -> Vec<Point> {
    let mut centres = Vec::new();
    let strides = &decode.strides;
    let mut layer = 0;
    while layer < strides.len() {
        let stride = strides[layer].max(1);
        let mut per_cell = 0;
        while layer < strides.len() && strides[layer].max(1) == stride {
            per_cell += decode.anchors_per_layer as usize;
            layer += 1;
        }
        let cells = input_size.div_ceil(stride);
        let cell_size = input_size as f32 / cells as f32;
        for row in 0..cells {
            for col in 0..cells {
                let centre = Point {
                    x: (col as f32 + decode.anchor_offset) * cell_size,
                    y: (row as f32 + decode.anchor_offset) * cell_size,
                };
                centres.extend(std::iter::repeat_n(centre, per_cell));
            }
        }
    }
    centres
}

/// The logit whose sigmoid is `probability` (so thresholds are compared
/// before any exponential is computed).
fn logit_of(probability: f32) -> f32 {
    let p = probability.clamp(f32::MIN_POSITIVE, 1.0 - f32::EPSILON);
    (p / (1.0 - p)).ln()
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The BlazeFace detector: its session, anchors and reused buffers.
pub struct BlazeFace {
    session: Session,
    model: String,
    input_name: String,
    /// Regressors, logits, in that order.
    output_names: [String; OUTPUT_COUNT],
    norm: Normalization,
    size: u32,
    anchors: Vec<Point>,
    logit_limit: f32,
    resized: Mat,
    shrink: AreaShrink,
    /// Letterboxed RGB8 input image, `size * size * 3` bytes.
    canvas: Vec<u8>,
    input: Array4<f32>,
}

impl BlazeFace {
    /// Wraps a session of a manifest entry whose decoder is `ssd_anchors`,
    /// checking the entry against the model: a square 3-channel input, the two
    /// outputs, as many anchors as the output has rows.
    pub fn new(session: Session, entry: &ModelEntry) -> Result<Self, DetectError> {
        let mismatch = |reason: String| DetectError::ModelMismatch {
            model: entry.file.clone(),
            reason,
        };
        let decode = match &entry.decode {
            Some(DetectorDecode::SsdAnchors(d)) => d,
            other => {
                return Err(mismatch(format!(
                    "BlazeFace needs [model.decode] decoder = \"ssd_anchors\", found {other:?}"
                )))
            }
        };
        if decode.keypoints as usize != KEYPOINTS {
            return Err(mismatch(format!(
                "{} keypoints, BlazeFace has {KEYPOINTS}",
                decode.keypoints
            )));
        }
        let norm = Normalization::from_entry(entry).map_err(mismatch)?;
        if norm.channels() != 3 {
            return Err(mismatch(
                "the detector needs a 3-channel colour input".to_string(),
            ));
        }
        let size = match entry.input.shape.as_slice() {
            &[_, 3, h, w] if h == w && h > 0 => h as u32,
            shape => {
                return Err(mismatch(format!(
                    "input shape {shape:?} is not N x 3 x S x S"
                )))
            }
        };
        check_interface(&session, entry, OUTPUT_COUNT, "BlazeFace").map_err(mismatch)?;
        let anchors = anchor_centres(decode, size);
        let rows = entry.outputs[0].shape.get(1).copied().unwrap_or(-1);
        if rows >= 0 && rows as usize != anchors.len() {
            return Err(mismatch(format!(
                "{} anchors from [model.decode], the output has {rows}",
                anchors.len()
            )));
        }
        let side = size as usize;
        Ok(Self {
            session,
            model: entry.file.clone(),
            input_name: entry.input.name.clone(),
            output_names: [0, 1].map(|i| entry.outputs[i].name.clone()),
            norm,
            size,
            anchors,
            logit_limit: decode.logit_limit,
            resized: Mat::default(),
            shrink: AreaShrink::default(),
            canvas: vec![0; side * side * 3],
            input: Array4::zeros((1, 3, side, side)),
        })
    }

    /// The network's square input side, pixels.
    pub fn input_size(&self) -> u32 {
        self.size
    }

    /// Letterboxes the frame into the input tensor; returns the letterbox.
    fn prepare(&mut self, frame: &Frame) -> Result<Letterbox, DetectError> {
        let letterbox = Letterbox::for_frame(frame.width(), frame.height(), self.size);
        let side = self.size as usize;
        let pixels: &[u8] =
            if (letterbox.width, letterbox.height) == (frame.width(), frame.height()) {
                frame.data()
            } else {
                let target = Size::new(letterbox.width as i32, letterbox.height as i32);
                let source = frame.as_mat()?;
                // Area averaging when shrinking (no aliasing), bilinear when enlarging.
                if letterbox.scale_x < 1.0 {
                    self.shrink.resize(&source, &mut self.resized, target)?;
                } else {
                    imgproc::resize(
                        &source,
                        &mut self.resized,
                        target,
                        0.0,
                        0.0,
                        imgproc::INTER_LINEAR,
                    )?;
                }
                self.resized.data_bytes()?
            };
        self.canvas.fill(0);
        let row_bytes = letterbox.width as usize * 3;
        for (y, row) in pixels.chunks_exact(row_bytes).enumerate() {
            let start = ((letterbox.top as usize + y) * side + letterbox.left as usize) * 3;
            self.canvas[start..start + row_bytes].copy_from_slice(row);
        }
        let planes = self
            .input
            .as_slice_mut()
            .ok_or_else(|| DetectError::OpenCv("input tensor is not contiguous".into()))?;
        self.norm
            .fill_planes(&self.canvas, side, planes, side * side, side);
        Ok(letterbox)
    }

    /// Runs the network on the prepared input and decodes the faces above
    /// `score_threshold` (before NMS) in frame pixels, boxes not yet clipped.
    fn infer(
        &mut self,
        letterbox: &Letterbox,
        score_threshold: f32,
    ) -> Result<Vec<Detection>, DetectError> {
        let inference = |e: ort::Error| DetectError::Inference(e.to_string());
        let input = TensorRef::from_array_view(self.input.view()).map_err(inference)?;
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => input])
            .map_err(inference)?;
        let mut tensors: [&[f32]; OUTPUT_COUNT] = [&[], &[]];
        for (tensor, name) in tensors.iter_mut().zip(&self.output_names) {
            *tensor = output_tensor(&outputs, name, &self.model)?.1;
        }
        let [regressors, logits] = tensors;
        let per_anchor = BOX_VALUES + 2 * KEYPOINTS;
        let anchors = self.anchors.len();
        if regressors.len() != anchors * per_anchor || logits.len() != anchors {
            return Err(DetectError::ModelMismatch {
                model: self.model.clone(),
                reason: format!(
                    "outputs hold {} and {} values for {anchors} anchors",
                    regressors.len(),
                    logits.len()
                ),
            });
        }
        let min_logit = logit_of(score_threshold);
        let mut detections = Vec::new();
        for (i, (&logit, anchor)) in logits.iter().zip(&self.anchors).enumerate() {
            if logit <= min_logit {
                continue;
            }
            let score = sigmoid(logit.clamp(-self.logit_limit, self.logit_limit));
            let r = &regressors[i * per_anchor..(i + 1) * per_anchor];
            let (width, height) = (r[2], r[3]);
            if width <= 0.0 || height <= 0.0 {
                continue;
            }
            let (cx, cy) = (anchor.x + r[0], anchor.y + r[1]);
            let top_left = letterbox.point_to_frame(cx - width / 2.0, cy - height / 2.0);
            let bottom_right = letterbox.point_to_frame(cx + width / 2.0, cy + height / 2.0);
            let mut points = [Point::default(); KEYPOINTS];
            for (k, p) in points.iter_mut().enumerate() {
                let offset = BOX_VALUES + 2 * k;
                *p = letterbox.point_to_frame(anchor.x + r[offset], anchor.y + r[offset + 1]);
            }
            let bbox = FaceBox {
                x: top_left.x,
                y: top_left.y,
                width: bottom_right.x - top_left.x,
                height: bottom_right.y - top_left.y,
            };
            detections.push(Detection {
                bbox,
                score,
                landmarks: Some(Landmarks::BlazeFace(BlazeFaceKeypoints::from_points(
                    points,
                ))),
            });
        }
        Ok(detections)
    }
}

impl FaceDetector for BlazeFace {
    fn detect(
        &mut self,
        frame: &Frame,
        params: &DetectorConfig,
    ) -> Result<Vec<Detection>, DetectError> {
        if frame.is_empty() {
            return Ok(Vec::new());
        }
        let letterbox = self.prepare(frame)?;
        // Score threshold (in `infer`), then weighted NMS on the unclipped
        // boxes (as the reference: clipping first would pull a cluster at the
        // frame's edge inwards), then clipping, minimum size and `max_faces`
        // on the merged faces, best score first.
        let mut detections = self.infer(&letterbox, params.score_threshold)?;
        weighted_non_max_suppression(&mut detections, params.nms_iou);
        let (width, height) = (frame.width() as f32, frame.height() as f32);
        for d in &mut detections {
            d.bbox = d.bbox.clipped(width, height);
        }
        detections.retain(|d| d.bbox.width.min(d.bbox.height) >= params.min_face_size);
        detections.truncate(params.max_faces);
        Ok(detections)
    }

    fn name(&self) -> &'static str {
        "blazeface"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(strides: Vec<u32>, anchors_per_layer: u32) -> SsdAnchorsDecode {
        SsdAnchorsDecode {
            strides,
            anchors_per_layer,
            anchor_offset: 0.5,
            keypoints: KEYPOINTS as u32,
            logit_limit: 100.0,
            score_threshold: 0.5,
            nms_iou: 0.3,
        }
    }

    #[test]
    fn anchors_of_the_full_range_model() {
        let anchors = anchor_centres(&decode(vec![4], 1), 192);
        assert_eq!(anchors.len(), 48 * 48);
        assert_eq!(anchors[0], Point { x: 2.0, y: 2.0 });
        // Row-major: the second anchor is one cell to the right, the 49th one row down.
        assert_eq!(anchors[1], Point { x: 6.0, y: 2.0 });
        assert_eq!(anchors[48], Point { x: 2.0, y: 6.0 });
    }

    #[test]
    fn anchors_of_the_short_range_model() {
        // Strides 8, 16, 16, 16 with two anchors per layer: 16 x 16 x 2 + 8 x 8 x 6.
        let anchors = anchor_centres(&decode(vec![8, 16, 16, 16], 2), 128);
        assert_eq!(anchors.len(), 896);
        assert_eq!(anchors[0], anchors[1]);
        assert_eq!(anchors[2], Point { x: 12.0, y: 4.0 });
        assert_eq!(anchors[512], Point { x: 8.0, y: 8.0 });
        assert_eq!(anchors[517], anchors[512]);
        assert_eq!(anchors[518], Point { x: 24.0, y: 8.0 });
    }

    #[test]
    fn letterbox_centres_the_frame_and_maps_back() {
        let l = Letterbox::for_frame(640, 480, 192);
        assert_eq!((l.width, l.height, l.left, l.top), (192, 144, 0, 24));
        let p = l.point_to_frame(96.0, 24.0 + 72.0);
        assert!(
            (p.x - 320.0).abs() < 1e-3 && (p.y - 240.0).abs() < 1e-3,
            "{p:?}"
        );
        let tall = Letterbox::for_frame(100, 200, 192);
        assert_eq!(
            (tall.width, tall.height, tall.left, tall.top),
            (96, 192, 48, 0)
        );
    }

    #[test]
    fn logit_threshold_matches_the_sigmoid() {
        for p in [0.1, 0.5, 0.75, 0.99] {
            assert!((sigmoid(logit_of(p)) - p).abs() < 1e-5, "{p}");
        }
    }
}
