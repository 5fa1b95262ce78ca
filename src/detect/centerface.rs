//! CenterFace: a dense single-stage face detector (MobileNetV2 + FPN) that
//! predicts, on a grid of stride 4, a face-centre heatmap, the log box size,
//! a sub-cell centre offset and five landmarks per cell.
//!
//! The frame is downscaled to fit [`DetectorConfig::max_side`], padded at the
//! right and bottom to a multiple of 32 (so boxes need no letterbox offset),
//! and decoded as `models/manifest.toml` documents for `face_detector_centerface`. The
//! resize target and the input tensor are kept between frames and reallocated
//! only when the frame size changes. With the int8 model the pixels go in as
//! bytes in 2 x 2 blocks ([`super::byte_input`]).

use super::byte_input::{self, BLOCK, BLOCK_CHANNELS};
use super::shrink::AreaShrink;
use super::{
    check_interface, filter_detections, output_tensor, DetectError, Detection, DetectionScale,
    FaceBox, FaceDetector, FivePointLandmarks, Landmarks, Normalization, Point,
};
use crate::config::DetectorConfig;
use crate::frame::Frame;
use crate::manifest::ModelEntry;
use ndarray::Array4;
use opencv::core::{Mat, Size};
use opencv::prelude::*;
use ort::session::Session;
use ort::value::TensorRef;

/// Output grid stride in input pixels.
pub const STRIDE: usize = 4;
/// Input height and width must be multiples of this.
pub const INPUT_MULTIPLE: u32 = 32;
/// Number of outputs: heatmap, log box size, centre offset, landmarks.
const OUTPUT_COUNT: usize = 4;
/// Landmark channels (five points, y then x).
const LANDMARK_CHANNELS: usize = 10;

/// The CenterFace detector: its session and its reused buffers.
pub struct CenterFace {
    session: Session,
    model: String,
    input_name: String,
    /// Heatmap, scale, offset, landmarks, in that order.
    output_names: [String; OUTPUT_COUNT],
    norm: Normalization,
    resized: Mat,
    shrink: AreaShrink,
    input: Input,
}

/// The network input, reused between frames.
enum Input {
    /// Float planes `[1, 3, H, W]`, normalised as the manifest says.
    Planes(Array4<f32>),
    /// Raw bytes in 2 x 2 blocks, `[1, H / 2, W / 2, 12]`, for a graph made
    /// by [`byte_input::rewrite`].
    Blocks(Array4<u8>),
}

fn round_up(value: u32, multiple: u32) -> u32 {
    value.div_ceil(multiple) * multiple
}

impl CenterFace {
    /// Wraps a session of the manifest's `face_detector_centerface` entry, checking that
    /// the model has the input and the four outputs the entry names.
    /// `byte_blocks`: the session runs the graph [`byte_input::rewrite`] made
    /// of the entry's file, which takes raw bytes in 2 x 2 blocks; the entry
    /// must then ask for raw RGB values (mean 0, scale 1).
    pub fn new(
        session: Session,
        entry: &ModelEntry,
        byte_blocks: bool,
    ) -> Result<Self, DetectError> {
        let mismatch = |reason: String| DetectError::ModelMismatch {
            model: entry.file.clone(),
            reason,
        };
        let norm = Normalization::from_entry(entry).map_err(mismatch)?;
        if norm.channels() != 3 {
            return Err(mismatch(
                "the detector needs a 3-channel colour input".to_string(),
            ));
        }
        if byte_blocks && !norm.is_raw_rgb() {
            return Err(mismatch(
                "byte input needs raw RGB values (mean 0, scale 1)".to_string(),
            ));
        }
        check_interface(&session, entry, OUTPUT_COUNT, "CenterFace").map_err(mismatch)?;
        let output_names = [0, 1, 2, 3].map(|i| entry.outputs[i].name.clone());
        Ok(Self {
            session,
            model: entry.file.clone(),
            input_name: entry.input.name.clone(),
            output_names,
            norm,
            resized: Mat::default(),
            shrink: AreaShrink::default(),
            input: if byte_blocks {
                Input::Blocks(Array4::zeros((1, 0, 0, BLOCK_CHANNELS)))
            } else {
                Input::Planes(Array4::zeros((1, 3, 0, 0)))
            },
        })
    }

    /// Fills the input tensor from the frame; returns the scale used.
    fn prepare(&mut self, frame: &Frame, max_side: u32) -> Result<DetectionScale, DetectError> {
        let scale = DetectionScale::for_frame(frame.width(), frame.height(), max_side);
        let (in_w, in_h) = (
            round_up(scale.width, INPUT_MULTIPLE) as usize,
            round_up(scale.height, INPUT_MULTIPLE) as usize,
        );
        match &mut self.input {
            Input::Planes(planes) => {
                if planes.dim() != (1, 3, in_h, in_w) {
                    *planes = Array4::zeros((1, 3, in_h, in_w));
                }
                // Padding is black, in model units.
                for (c, black) in self.norm.black().into_iter().enumerate() {
                    planes.index_axis_mut(ndarray::Axis(1), c).fill(black);
                }
            }
            Input::Blocks(blocks) => {
                let dim = (1, in_h / BLOCK, in_w / BLOCK, BLOCK_CHANNELS);
                if blocks.dim() != dim {
                    *blocks = Array4::zeros(dim);
                } else {
                    blocks.fill(0);
                }
            }
        }
        let source = frame.as_mat()?;
        let pixels: &[u8] = if scale.is_identity() {
            source.data_bytes()?
        } else {
            let size = Size::new(scale.width as i32, scale.height as i32);
            // Area averaging: no aliasing when shrinking several times.
            self.shrink.resize(&source, &mut self.resized, size)?;
            self.resized.data_bytes()?
        };
        let not_contiguous = || DetectError::OpenCv("input tensor is not contiguous".into());
        match &mut self.input {
            Input::Planes(planes) => {
                let planes = planes.as_slice_mut().ok_or_else(not_contiguous)?;
                let plane = in_w * in_h;
                self.norm
                    .fill_planes(pixels, scale.width as usize, planes, plane, in_w);
            }
            Input::Blocks(blocks) => {
                let blocks = blocks.as_slice_mut().ok_or_else(not_contiguous)?;
                byte_input::fill_blocks(pixels, scale.width as usize, blocks, in_w / BLOCK);
            }
        }
        Ok(scale)
    }

    /// Runs the network on the prepared input and decodes candidate faces
    /// (before filtering) in frame pixels.
    fn infer(
        &mut self,
        scale: &DetectionScale,
        score_threshold: f32,
    ) -> Result<Vec<Detection>, DetectError> {
        let inference = |e: ort::Error| DetectError::Inference(e.to_string());
        let name = self.input_name.as_str();
        let outputs = match &self.input {
            Input::Planes(planes) => {
                let input = TensorRef::from_array_view(planes.view()).map_err(inference)?;
                self.session.run(ort::inputs![name => input])
            }
            Input::Blocks(blocks) => {
                let input = TensorRef::from_array_view(blocks.view()).map_err(inference)?;
                self.session.run(ort::inputs![name => input])
            }
        }
        .map_err(inference)?;
        let mut maps: Vec<(&[f32], usize, usize)> = Vec::with_capacity(OUTPUT_COUNT);
        for name in &self.output_names {
            let (shape, data) = output_tensor(&outputs, name, &self.model)?;
            if shape.len() != 4 || shape[0] != 1 {
                return Err(DetectError::ModelMismatch {
                    model: self.model.clone(),
                    reason: format!("output {name:?} has shape {shape:?}"),
                });
            }
            maps.push((data, shape[2] as usize, shape[3] as usize));
        }
        let (heatmap, rows, cols) = maps[0];
        let plane = rows * cols;
        let expected = [plane, 2 * plane, 2 * plane, LANDMARK_CHANNELS * plane];
        if maps
            .iter()
            .zip(expected)
            .any(|(m, n)| m.0.len() != n || m.1 != rows || m.2 != cols)
        {
            return Err(DetectError::ModelMismatch {
                model: self.model.clone(),
                reason: "output maps disagree in size".into(),
            });
        }
        let (size_map, offset_map, landmark_map) = (maps[1].0, maps[2].0, maps[3].0);
        let (max_x, max_y) = (scale.width as f32, scale.height as f32);
        let stride = STRIDE as f32;
        let mut detections = Vec::new();
        for (i, &score) in heatmap.iter().enumerate() {
            if score <= score_threshold {
                continue;
            }
            let (r, c) = (i / cols, i % cols);
            let box_h = size_map[i].exp() * stride;
            let box_w = size_map[plane + i].exp() * stride;
            let cy = (r as f32 + offset_map[i] + 0.5) * stride;
            let cx = (c as f32 + offset_map[plane + i] + 0.5) * stride;
            let x1 = (cx - box_w / 2.0).clamp(0.0, max_x);
            let y1 = (cy - box_h / 2.0).clamp(0.0, max_y);
            let x2 = (x1 + box_w).min(max_x);
            let y2 = (y1 + box_h).min(max_y);
            let mut points = [Point::default(); 5];
            for (j, p) in points.iter_mut().enumerate() {
                let y = landmark_map[2 * j * plane + i] * box_h + y1;
                let x = landmark_map[(2 * j + 1) * plane + i] * box_w + x1;
                *p = scale.point_to_frame(Point { x, y });
            }
            detections.push(Detection {
                bbox: scale.box_to_frame(FaceBox {
                    x: x1,
                    y: y1,
                    width: x2 - x1,
                    height: y2 - y1,
                }),
                score,
                landmarks: Some(Landmarks::FivePoint(FivePointLandmarks::from_points(
                    points,
                ))),
            });
        }
        Ok(detections)
    }
}

impl FaceDetector for CenterFace {
    fn detect(
        &mut self,
        frame: &Frame,
        params: &DetectorConfig,
    ) -> Result<Vec<Detection>, DetectError> {
        if frame.is_empty() {
            return Ok(Vec::new());
        }
        let scale = self.prepare(frame, params.max_side)?;
        let mut detections = self.infer(&scale, params.score_threshold)?;
        filter_detections(&mut detections, params);
        Ok(detections)
    }

    fn name(&self) -> &'static str {
        "centerface"
    }
}
