//! Conversions between ROS messages and the perception core's types.

use face_perception::classify::Classification;
use face_perception::detect::Landmarks;
use face_perception::frame::{Frame, RawImage};
use face_perception::pipeline::{FaceResult, FrameResult};
use r2r::face_perception_msgs::msg as fp;
use r2r::geometry_msgs::msg::Point32;
use r2r::sensor_msgs::msg::{Image, RegionOfInterest};
use r2r::std_msgs::msg::Header;

/// Borrowed view of a `sensor_msgs/Image` for the core's checked conversion.
pub fn raw_image(msg: &Image) -> RawImage<'_> {
    RawImage {
        width: msg.width,
        height: msg.height,
        encoding: &msg.encoding,
        is_bigendian: msg.is_bigendian != 0,
        step: msg.step,
        data: &msg.data,
    }
}

/// An RGB8 frame as a `sensor_msgs/Image` carrying `header`.
pub fn image_from_frame(header: &Header, frame: Frame) -> Image {
    Image {
        header: header.clone(),
        height: frame.height(),
        width: frame.width(),
        encoding: "rgb8".to_string(),
        is_bigendian: 0,
        step: frame.width() * 3,
        data: frame.into_data(),
    }
}

fn classification(c: Option<&Classification>) -> fp::Classification {
    match c {
        Some(c) => fp::Classification {
            label: c.label().to_string(),
            confidence: c.confidence(),
            labels: c.labels.to_vec(),
            probabilities: c.probabilities.clone(),
        },
        None => fp::Classification {
            label: String::new(),
            confidence: f32::NAN,
            labels: vec![],
            probabilities: vec![],
        },
    }
}

/// The landmarks' names (sides are the subject's, see Face.msg) and points.
fn landmarks(l: Option<&Landmarks>) -> (Vec<String>, Vec<Point32>) {
    l.map(Landmarks::named_points)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, p)| {
            (
                name.to_string(),
                Point32 {
                    x: p.x,
                    y: p.y,
                    z: 0.0,
                },
            )
        })
        .unzip()
}

fn face(f: &FaceResult, width: u32, height: u32) -> fp::Face {
    // The box in whole pixels, clipped to the image.
    let x0 = f.bbox.x.floor().clamp(0.0, width as f32) as u32;
    let y0 = f.bbox.y.floor().clamp(0.0, height as f32) as u32;
    let x1 = (f.bbox.x + f.bbox.width).ceil().clamp(0.0, width as f32) as u32;
    let y1 = (f.bbox.y + f.bbox.height).ceil().clamp(0.0, height as f32) as u32;
    let (age_years, age_confidence) = match &f.age {
        Some(a) => (a.years, age_confidence(a.stddev)),
        None => (f32::NAN, f32::NAN),
    };
    let (landmark_names, landmarks) = landmarks(f.landmarks.as_ref());
    fp::Face {
        id: f.id.clone(),
        roi: RegionOfInterest {
            x_offset: x0,
            y_offset: y0,
            width: x1.saturating_sub(x0),
            height: y1.saturating_sub(y0),
            do_rectify: false,
        },
        detection_confidence: f.score,
        landmark_names,
        landmarks,
        gender: classification(f.gender.as_ref()),
        emotion: classification(f.emotion.as_ref()),
        age_years,
        age_confidence,
    }
}

/// Probability that the age lies within +-5 years of the estimate, with the
/// age distribution taken as normal with the model's standard deviation.
fn age_confidence(stddev: f32) -> f32 {
    if stddev <= 0.0 || !stddev.is_finite() {
        return 1.0;
    }
    erf(5.0 / (stddev * std::f32::consts::SQRT_2))
}

/// Abramowitz-Stegun 7.1.26 (absolute error below 1.5e-7).
fn erf(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    (1.0 - poly * (-x * x).exp()).copysign(x)
}

/// The `FaceArray` of one processed frame, with the input's header unchanged.
pub fn face_array(header: &Header, result: &FrameResult, width: u32, height: u32) -> fp::FaceArray {
    fp::FaceArray {
        header: header.clone(),
        faces: result
            .faces
            .iter()
            .map(|f| face(f, width, height))
            .collect(),
    }
}
