//! The annotated image: a box per face coloured by its emotion, with a label
//! block giving the face id, gender and emotion with their confidences (and
//! age when estimated). Line widths and text size follow the frame size, so
//! labels stay readable from 640 x 480 to 1920 x 1080 and beyond.

use crate::frame::Frame;
use crate::pipeline::FaceResult;
use opencv::core::{Mat, Point, Rect, Scalar, Vec3b};
use opencv::imgproc;

/// Font used for labels.
const FONT: i32 = imgproc::FONT_HERSHEY_SIMPLEX;
/// Text height relative to the frame's shorter side (about 14 px at 480, 30 px at 1080).
const TEXT_SCALE_PER_PIXEL: f64 = 1.0 / 1000.0;
/// Smallest font scale, so 480-line frames still get legible text.
const MIN_FONT_SCALE: f64 = 0.45;
/// Box outline thickness relative to the shorter side.
const BOX_THICKNESS_PER_PIXEL: f64 = 1.0 / 300.0;
/// Colour of a face without an emotion result (RGB).
pub const NO_EMOTION_COLOUR: [u8; 3] = [0, 200, 220];

/// Why rendering failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// An OpenCV drawing call failed.
    #[error("OpenCV failed while drawing: {0}")]
    OpenCv(String),
}

impl From<opencv::Error> for RenderError {
    fn from(e: opencv::Error) -> Self {
        Self::OpenCv(e.to_string())
    }
}

/// The box colour for an emotion label (RGB).
pub fn emotion_colour(label: &str) -> [u8; 3] {
    match label {
        "angry" => [230, 40, 40],
        "disgust" => [110, 170, 30],
        "fear" => [160, 80, 220],
        "happy" => [255, 205, 0],
        "sad" => [60, 120, 240],
        "surprise" => [255, 130, 0],
        "neutral" => [210, 210, 210],
        _ => NO_EMOTION_COLOUR,
    }
}

fn scalar(rgb: [u8; 3]) -> Scalar {
    // The frame is RGB, so channels are given in that order.
    Scalar::new(f64::from(rgb[0]), f64::from(rgb[1]), f64::from(rgb[2]), 0.0)
}

/// Black or white, whichever reads better on `background`.
fn text_colour(background: [u8; 3]) -> [u8; 3] {
    let luma = 0.299 * f32::from(background[0])
        + 0.587 * f32::from(background[1])
        + 0.114 * f32::from(background[2]);
    if luma > 140.0 {
        [0, 0, 0]
    } else {
        [255, 255, 255]
    }
}

/// The label lines of a face: id and gender, then emotion, then age.
pub fn label_lines(face: &FaceResult) -> Vec<String> {
    let mut first = format!("#{}", face.id);
    if let Some(g) = &face.gender {
        first.push_str(&format!(" {} {:.0}%", g.label(), g.confidence() * 100.0));
    }
    let mut lines = vec![first];
    if let Some(e) = &face.emotion {
        lines.push(format!("{} {:.0}%", e.label(), e.confidence() * 100.0));
    }
    if let Some(a) = &face.age {
        lines.push(format!("age {:.0}", a.years));
    }
    lines
}

/// Draws the faces on a copy of `frame`.
pub fn annotate(frame: &Frame, faces: &[FaceResult]) -> Result<Frame, RenderError> {
    let mut out = frame.clone();
    draw_faces(&mut out, faces)?;
    Ok(out)
}

/// Draws the faces onto `frame` in place.
pub fn draw_faces(frame: &mut Frame, faces: &[FaceResult]) -> Result<(), RenderError> {
    let (width, height) = (frame.width() as i32, frame.height() as i32);
    if width == 0 || height == 0 {
        return Ok(());
    }
    let short_side = f64::from(width.min(height));
    let font_scale = (short_side * TEXT_SCALE_PER_PIXEL).max(MIN_FONT_SCALE);
    let text_thickness = ((font_scale * 2.0).round() as i32).max(1);
    let box_thickness = ((short_side * BOX_THICKNESS_PER_PIXEL).round() as i32).max(2);
    let mut mat = Mat::new_rows_cols_with_bytes_mut::<Vec3b>(height, width, frame.data_mut())?;
    for face in faces {
        let colour = face
            .emotion
            .as_ref()
            .map(|e| emotion_colour(e.label()))
            .unwrap_or(NO_EMOTION_COLOUR);
        let b = &face.bbox;
        let rect = Rect::new(
            b.x.round() as i32,
            b.y.round() as i32,
            b.width.round() as i32,
            b.height.round() as i32,
        );
        imgproc::rectangle(
            &mut mat,
            rect,
            scalar(colour),
            box_thickness,
            imgproc::LINE_AA,
            0,
        )?;

        let lines = label_lines(face);
        let mut baseline = 0;
        let mut block_w = 0;
        let mut line_h = 0;
        for line in &lines {
            let size =
                imgproc::get_text_size(line, FONT, font_scale, text_thickness, &mut baseline)?;
            block_w = block_w.max(size.width);
            line_h = line_h.max(size.height + baseline);
        }
        let pad = (line_h / 4).max(2);
        let block_h = lines.len() as i32 * (line_h + pad) + pad;
        block_w += 2 * pad;
        // Above the box when there is room, else below it, else inside its top edge.
        let top = if rect.y - block_h >= 0 {
            rect.y - block_h
        } else if rect.y + rect.height + block_h <= height {
            rect.y + rect.height
        } else {
            rect.y.max(0)
        };
        let left = rect.x.clamp(0, (width - block_w).max(0));
        imgproc::rectangle(
            &mut mat,
            Rect::new(left, top, block_w, block_h),
            scalar(colour),
            imgproc::FILLED,
            imgproc::LINE_8,
            0,
        )?;
        let ink = scalar(text_colour(colour));
        for (i, line) in lines.iter().enumerate() {
            let y = top + pad + (i as i32) * (line_h + pad) + line_h - baseline;
            imgproc::put_text(
                &mut mat,
                line,
                Point::new(left + pad, y),
                FONT,
                font_scale,
                ink,
                text_thickness,
                imgproc::LINE_AA,
                false,
            )?;
        }
    }
    Ok(())
}
