//! Saliency maps as images: per-face normalised maps and a frame-sized
//! heat-map overlay.
//!
//! Normalisation follows the seed paper's code (Arriaga & Valdenegro-Toro
//! 2017, `deprocess_image`): standardise, scale by 0.1, shift by 0.5, clip to
//! `[0, 1]`, so that 0.5 means "no gradient" and the contrast is comparable
//! across faces. Colour images' gradients are averaged over channels first.
//! Grad-CAM maps are non-negative and are scaled by their maximum instead.
//!
//! Everything works on plain RGB8 / grey8 buffers, row-major, no padding.

use super::{SaliencyError, SaliencyMethod};
use ndarray::{Array2, ArrayView3};

/// Added to the standard deviation so that a flat map does not divide by zero (seed value).
const STD_EPSILON: f32 = 1e-5;
/// Scale after standardising (seed value).
const SEED_SCALE: f32 = 0.1;
/// Shift after scaling (seed value): zero gradient maps to mid-grey.
const SEED_SHIFT: f32 = 0.5;
/// Brightness kept outside the faces in the overlay.
const DIM_FACTOR: f32 = 0.35;
/// Weight of the heat-map colour over the face where the energy is 0 ...
const HEAT_ALPHA_MIN: f32 = 0.2;
/// ... and where it is 1: the face stays readable under low saliency.
const HEAT_ALPHA_MAX: f32 = 0.8;

/// An RGB8 image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height * 3` bytes.
    pub data: Vec<u8>,
}

/// A grey8 image, row-major, one byte per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GreyImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height` bytes.
    pub data: Vec<u8>,
}

/// The frame rectangle a face crop was taken from (the face box grown by the
/// model's crop padding); it may reach beyond the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaceRegion {
    /// Left edge, pixels.
    pub x: i64,
    /// Top edge, pixels.
    pub y: i64,
    /// Width, pixels (> 0).
    pub width: usize,
    /// Height, pixels (> 0).
    pub height: usize,
}

/// How a normalised map's values are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapScale {
    /// Seed normalisation of a signed gradient: 0.5 is no gradient.
    Signed,
    /// Non-negative map scaled to `[0, 1]` (Grad-CAM): 0 is nothing.
    NonNegative,
}

/// One face's saliency, normalised to `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SaliencyMap {
    /// Values `[height, width]` in `[0, 1]`.
    pub values: Array2<f32>,
    /// How to read the values.
    pub scale: MapScale,
}

impl RgbImage {
    /// Wraps an RGB8 buffer, checking its length.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self, SaliencyError> {
        if data.len() != width * height * 3 {
            return Err(SaliencyError::ImageBuffer {
                reason: format!("{} bytes for a {width}x{height} RGB8 image", data.len()),
            });
        }
        Ok(RgbImage {
            width,
            height,
            data,
        })
    }
}

/// One face's normalised map from its gradient `[C, H, W]` (plain or
/// guided; channels averaged) or Grad-CAM map `[1, H, W]`.
pub fn map_from_gradient(gradient: ArrayView3<'_, f32>, method: SaliencyMethod) -> SaliencyMap {
    let mean_over_channels = gradient
        .mean_axis(ndarray::Axis(0))
        .unwrap_or_else(|| Array2::zeros((0, 0)));
    match method {
        SaliencyMethod::Plain | SaliencyMethod::Guided => {
            let n = mean_over_channels.len().max(1) as f32;
            let mean = mean_over_channels.sum() / n;
            let var = mean_over_channels
                .iter()
                .map(|v| (v - mean) * (v - mean))
                .sum::<f32>()
                / n;
            let std = var.sqrt() + STD_EPSILON;
            SaliencyMap {
                values: mean_over_channels
                    .mapv(|v| ((v - mean) / std * SEED_SCALE + SEED_SHIFT).clamp(0.0, 1.0)),
                scale: MapScale::Signed,
            }
        }
        SaliencyMethod::GradCam => {
            let max = mean_over_channels.iter().copied().fold(0.0f32, f32::max);
            let values = if max > 0.0 {
                mean_over_channels.mapv(|v| (v / max).clamp(0.0, 1.0))
            } else {
                Array2::zeros(mean_over_channels.raw_dim())
            };
            SaliencyMap {
                values,
                scale: MapScale::NonNegative,
            }
        }
    }
}

impl SaliencyMap {
    /// Height and width.
    pub fn dims(&self) -> (usize, usize) {
        self.values.dim()
    }

    /// How strongly each pixel drove the decision, in `[0, 1]`: the distance
    /// from mid-grey for signed maps, the value itself for Grad-CAM.
    pub fn energy(&self) -> Array2<f32> {
        match self.scale {
            MapScale::Signed => self
                .values
                .mapv(|v| ((v - SEED_SHIFT).abs() * 2.0).min(1.0)),
            MapScale::NonNegative => self.values.clone(),
        }
    }

    /// The map resized (bilinear) to `width` x `height`.
    pub fn resized(&self, width: usize, height: usize) -> SaliencyMap {
        SaliencyMap {
            values: resize_bilinear(&self.values, width, height),
            scale: self.scale,
        }
    }

    /// The map as a grey8 image at its own size.
    pub fn to_grey(&self) -> GreyImage {
        let (height, width) = self.dims();
        GreyImage {
            width,
            height,
            data: self.values.iter().map(|&v| unit_to_u8(v)).collect(),
        }
    }

    /// The map resized to a face region, as a grey8 image (the raw per-face map).
    pub fn grey_for_region(&self, region: &FaceRegion) -> GreyImage {
        self.resized(region.width, region.height).to_grey()
    }

    /// The map at the chip's size in frame pixels (upright, in the chip's
    /// orientation), as a grey8 image: the raw per-face map of an aligned chip.
    pub fn grey_for_chip(&self, placement: &ChipPlacement) -> GreyImage {
        let (h, w) = self.dims();
        let scale = placement.scale();
        let size = |n: usize| ((n as f32 * scale).round() as usize).max(1);
        self.resized(size(w), size(h)).to_grey()
    }
}

fn unit_to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// Bilinear resize with half-pixel centres (as OpenCV's `INTER_LINEAR`).
pub fn resize_bilinear(src: &Array2<f32>, width: usize, height: usize) -> Array2<f32> {
    let (sh, sw) = src.dim();
    if sh == 0 || sw == 0 || width == 0 || height == 0 {
        return Array2::zeros((height, width));
    }
    let axis = |out: usize, size_out: usize, size_in: usize| -> (usize, usize, f32) {
        let pos = ((out as f32 + 0.5) * size_in as f32 / size_out as f32 - 0.5).max(0.0);
        let i0 = (pos.floor() as usize).min(size_in - 1);
        let i1 = (i0 + 1).min(size_in - 1);
        (i0, i1, pos - i0 as f32)
    };
    let cols: Vec<(usize, usize, f32)> = (0..width).map(|x| axis(x, width, sw)).collect();
    Array2::from_shape_fn((height, width), |(y, x)| {
        let (y0, y1, fy) = axis(y, height, sh);
        let (x0, x1, fx) = cols[x];
        let top = src[[y0, x0]] * (1.0 - fx) + src[[y0, x1]] * fx;
        let bottom = src[[y1, x0]] * (1.0 - fx) + src[[y1, x1]] * fx;
        top * (1.0 - fy) + bottom * fy
    })
}

/// The jet colour map at `v` in `[0, 1]` (blue - cyan - yellow - red).
pub fn jet(v: f32) -> [u8; 3] {
    let v = v.clamp(0.0, 1.0);
    let channel = |centre: f32| unit_to_u8((1.5 - (4.0 * v - centre).abs()).clamp(0.0, 1.0));
    [channel(3.0), channel(2.0), channel(1.0)]
}

/// A frame-sized image: the frame dimmed, and over each face region its
/// saliency energy as a jet heat map blended onto the face, more opaque
/// where the energy is higher.
pub fn overlay_heatmaps(
    frame: &RgbImage,
    faces: &[(FaceRegion, &SaliencyMap)],
) -> Result<RgbImage, SaliencyError> {
    let mut out = dimmed(frame)?;
    for (region, map) in faces {
        if region.width == 0 || region.height == 0 {
            continue;
        }
        let energy = resize_bilinear(&map.energy(), region.width, region.height);
        for ry in 0..region.height {
            let fy = region.y + ry as i64;
            if fy < 0 || fy >= frame.height as i64 {
                continue;
            }
            for rx in 0..region.width {
                let fx = region.x + rx as i64;
                if fx < 0 || fx >= frame.width as i64 {
                    continue;
                }
                blend_heat(
                    &mut out,
                    frame,
                    (fy as usize * frame.width + fx as usize) * 3,
                    energy[[ry, rx]],
                );
            }
        }
    }
    Ok(out)
}

/// Where a face chip (the classifier's input) was cut from the frame, for
/// chips that are rotated or scaled (aligned chips).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChipPlacement {
    /// The 2 x 3 affine map `[a, b, tx; c, d, ty]` from chip pixel centres
    /// to frame pixel centres (the core's `FaceChip::chip_to_frame`).
    pub chip_to_frame: [[f32; 3]; 2],
}

impl ChipPlacement {
    /// The inverse map, frame pixel centres to chip pixel centres; `None`
    /// if the map is degenerate.
    fn frame_to_chip(&self) -> Option<[[f32; 3]; 2]> {
        let [[a, b, tx], [c, d, ty]] = self.chip_to_frame;
        let det = a * d - b * c;
        if !det.is_finite() || det.abs() < f32::EPSILON {
            return None;
        }
        let (ia, ib, ic, id) = (d / det, -b / det, -c / det, a / det);
        Some([
            [ia, ib, -(ia * tx + ib * ty)],
            [ic, id, -(ic * tx + id * ty)],
        ])
    }

    /// Frame pixels per chip pixel.
    pub fn scale(&self) -> f32 {
        let [[a, b, _], [c, d, _]] = self.chip_to_frame;
        (a * d - b * c).abs().sqrt()
    }
}

/// Like [`overlay_heatmaps`], for faces placed by an affine chip map: each
/// map (at the chip's resolution) is warped onto the frame, bilinearly.
pub fn overlay_heatmaps_on_chips(
    frame: &RgbImage,
    faces: &[(ChipPlacement, &SaliencyMap)],
) -> Result<RgbImage, SaliencyError> {
    let mut out = dimmed(frame)?;
    for (placement, map) in faces {
        let (h, w) = map.dims();
        let Some(inverse) = placement.frame_to_chip() else {
            continue;
        };
        if h == 0 || w == 0 {
            continue;
        }
        let energy = map.energy();
        // The chip's corners (pixel edges) in the frame bound the pixels to visit.
        let corners = [
            (-0.5, -0.5),
            (w as f32 - 0.5, -0.5),
            (-0.5, h as f32 - 0.5),
            (w as f32 - 0.5, h as f32 - 0.5),
        ];
        let m = placement.chip_to_frame;
        let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for (cx, cy) in corners {
            let (fx, fy) = (
                m[0][0] * cx + m[0][1] * cy + m[0][2],
                m[1][0] * cx + m[1][1] * cy + m[1][2],
            );
            (x0, y0, x1, y1) = (x0.min(fx), y0.min(fy), x1.max(fx), y1.max(fy));
        }
        let x_range = (x0.floor().max(0.0) as usize)
            ..((x1.ceil() + 1.0).clamp(0.0, frame.width as f32) as usize);
        let y_range = (y0.floor().max(0.0) as usize)
            ..((y1.ceil() + 1.0).clamp(0.0, frame.height as f32) as usize);
        for fy in y_range {
            for fx in x_range.clone() {
                let (px, py) = (fx as f32, fy as f32);
                let cx = inverse[0][0] * px + inverse[0][1] * py + inverse[0][2];
                let cy = inverse[1][0] * px + inverse[1][1] * py + inverse[1][2];
                if cx < -0.5 || cy < -0.5 || cx >= w as f32 - 0.5 || cy >= h as f32 - 0.5 {
                    continue;
                }
                let e = sample_bilinear(&energy, cx, cy);
                blend_heat(&mut out, frame, (fy * frame.width + fx) * 3, e);
            }
        }
    }
    Ok(out)
}

/// `values` at a fractional position (pixel centres at integers), edges clamped.
fn sample_bilinear(values: &Array2<f32>, x: f32, y: f32) -> f32 {
    let (h, w) = values.dim();
    let (x, y) = (x.clamp(0.0, (w - 1) as f32), y.clamp(0.0, (h - 1) as f32));
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let top = values[[y0, x0]] * (1.0 - fx) + values[[y0, x1]] * fx;
    let bottom = values[[y1, x0]] * (1.0 - fx) + values[[y1, x1]] * fx;
    top * (1.0 - fy) + bottom * fy
}

/// The frame with every channel scaled by [`DIM_FACTOR`], after checking its buffer.
fn dimmed(frame: &RgbImage) -> Result<RgbImage, SaliencyError> {
    if frame.data.len() != frame.width * frame.height * 3 {
        return Err(SaliencyError::ImageBuffer {
            reason: format!(
                "{} bytes for a {}x{} RGB8 frame",
                frame.data.len(),
                frame.width,
                frame.height
            ),
        });
    }
    // One rounding per byte value, not per byte: a 640x480 frame has 921,600
    // bytes, and the per-byte `round` was a library call (about 2 ms).
    let lut: [u8; 256] = std::array::from_fn(|b| (b as f32 * DIM_FACTOR).round() as u8);
    Ok(RgbImage {
        width: frame.width,
        height: frame.height,
        data: frame.data.iter().map(|&b| lut[usize::from(b)]).collect(),
    })
}

/// Blends the heat colour of energy `e` over the original frame pixel at byte `i`.
fn blend_heat(out: &mut RgbImage, frame: &RgbImage, i: usize, e: f32) {
    let e = e.clamp(0.0, 1.0);
    let colour = jet(e);
    let alpha = HEAT_ALPHA_MIN + (HEAT_ALPHA_MAX - HEAT_ALPHA_MIN) * e;
    for (c, &heat) in colour.iter().enumerate() {
        let blended = (1.0 - alpha) * f32::from(frame.data[i + c]) + alpha * f32::from(heat);
        out.data[i + c] = blended.round().clamp(0.0, 255.0) as u8;
    }
}
