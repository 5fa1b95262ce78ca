//! OpenCV's Viola-Jones Haar cascade: the classic detector the seed pipeline
//! used. No landmarks; the score is derived from the number of overlapping
//! raw detections that were merged into each face (its "neighbours").

use super::shrink::AreaShrink;
use super::{filter_detections, DetectError, Detection, DetectionScale, FaceBox, FaceDetector};
use crate::config::DetectorConfig;
use crate::frame::Frame;
use opencv::core::{Mat, Rect, Size, Vector};
use opencv::imgproc;
use opencv::objdetect::CascadeClassifier;
use opencv::prelude::*;
use std::path::Path;

/// Pyramid step between detection scales.
pub const SCALE_FACTOR: f64 = 1.1;
/// Raw detections merged into one face; a face with this many neighbours scores 0.5.
pub const NEIGHBOURS_AT_HALF_SCORE: f32 = 4.0;
/// Faces with fewer neighbours are never reported.
const MIN_NEIGHBOURS: i32 = 2;

/// A Haar cascade face detector with its reused grey and resize buffers.
pub struct HaarCascade {
    cascade: CascadeClassifier,
    grey: Mat,
    resized: Mat,
    shrink: AreaShrink,
}

impl HaarCascade {
    /// Loads a cascade XML file.
    pub fn load(path: &Path) -> Result<Self, DetectError> {
        let cascade_error = |reason: String| DetectError::Cascade {
            path: path.display().to_string(),
            reason,
        };
        if !path.is_file() {
            return Err(cascade_error("no such file".to_string()));
        }
        let path_text = path
            .to_str()
            .ok_or_else(|| cascade_error("path is not UTF-8".to_string()))?;
        let cascade =
            CascadeClassifier::new(path_text).map_err(|e| cascade_error(e.to_string()))?;
        if cascade.empty().map_err(|e| cascade_error(e.to_string()))? {
            return Err(cascade_error("not a cascade classifier".to_string()));
        }
        Ok(Self {
            cascade,
            grey: Mat::default(),
            resized: Mat::default(),
            shrink: AreaShrink::default(),
        })
    }

    /// Score of a face merged from `neighbours` raw detections, in (0, 1).
    pub fn score_from_neighbours(neighbours: i32) -> f32 {
        let n = neighbours.max(0) as f32;
        n / (n + NEIGHBOURS_AT_HALF_SCORE)
    }
}

impl FaceDetector for HaarCascade {
    fn detect(
        &mut self,
        frame: &Frame,
        params: &DetectorConfig,
    ) -> Result<Vec<Detection>, DetectError> {
        if frame.is_empty() {
            return Ok(Vec::new());
        }
        let scale = DetectionScale::for_frame(frame.width(), frame.height(), params.max_side);
        let source = frame.as_mat()?;
        imgproc::cvt_color_def(&source, &mut self.grey, imgproc::COLOR_RGB2GRAY)?;
        let image = if scale.is_identity() {
            &self.grey
        } else {
            let size = Size::new(scale.width as i32, scale.height as i32);
            self.shrink.resize(&self.grey, &mut self.resized, size)?;
            &self.resized
        };
        let min_side = (params.min_face_size * scale.scale_x.min(scale.scale_y))
            .round()
            .max(1.0) as i32;
        let mut rects: Vector<Rect> = Vector::new();
        let mut neighbours: Vector<i32> = Vector::new();
        self.cascade.detect_multi_scale2(
            image,
            &mut rects,
            &mut neighbours,
            SCALE_FACTOR,
            MIN_NEIGHBOURS,
            0,
            Size::new(min_side, min_side),
            Size::default(),
        )?;
        let mut detections: Vec<Detection> = rects
            .iter()
            .zip(neighbours.iter())
            .map(|(r, n)| Detection {
                bbox: scale.box_to_frame(FaceBox {
                    x: r.x as f32,
                    y: r.y as f32,
                    width: r.width as f32,
                    height: r.height as f32,
                }),
                score: Self::score_from_neighbours(n),
                landmarks: None,
            })
            .collect();
        filter_detections(&mut detections, params);
        Ok(detections)
    }

    fn name(&self) -> &'static str {
        "haar"
    }
}
