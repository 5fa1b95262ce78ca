//! Frames: camera images, raw or compressed, converted into one owned RGB8 type.
//!
//! A [`RawImage`] mirrors `sensor_msgs/Image` without depending on ROS: a
//! width, a height, an encoding name, an endianness flag, a row stride
//! (`step`, which may include padding) and the bytes. [`Frame::from_raw`]
//! checks every size with checked arithmetic against an allow-list of
//! encodings and a maximum pixel count ([`FrameLimits`]) before reading a
//! single byte, and converts into a tightly packed RGB8 [`Frame`].
//! [`Frame::from_compressed`] does the same for JPEG and PNG
//! (`sensor_msgs/CompressedImage`). Anything else is a typed [`FrameError`];
//! nothing here panics on outside input.
//!
//! ```
//! use face_perception::frame::{Frame, FrameLimits, RawImage};
//!
//! // Two BGR pixels, rows padded to 8 bytes.
//! let data = [0, 0, 255, 255, 0, 0, 9, 9];
//! let raw = RawImage { width: 2, height: 1, encoding: "bgr8", is_bigendian: false, step: 8, data: &data };
//! let frame = Frame::from_raw(&raw, &FrameLimits::default()).unwrap();
//! assert_eq!(frame.data(), &[255, 0, 0, 0, 0, 255]);
//! ```

use std::io::Cursor;

/// Largest frame accepted by default: 8K UHD (7680 x 4320), about 33 megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 7680 * 4320;
/// Largest compressed image accepted by default, in bytes.
pub const DEFAULT_MAX_COMPRESSED_BYTES: usize = 64 * 1024 * 1024;
/// Bytes per pixel of a [`Frame`] (R, G, B).
pub const FRAME_CHANNELS: usize = 3;

/// Bounds applied to every incoming image before any buffer is read or allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest `width * height` accepted.
    pub max_pixels: u64,
    /// Largest compressed payload accepted, in bytes.
    pub max_compressed_bytes: usize,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self {
            max_pixels: DEFAULT_MAX_PIXELS,
            max_compressed_bytes: DEFAULT_MAX_COMPRESSED_BYTES,
        }
    }
}

/// A borrowed raw image, field for field as `sensor_msgs/Image` carries it.
#[derive(Debug, Clone, Copy)]
pub struct RawImage<'a> {
    /// Pixels per row.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// Encoding name as in `sensor_msgs/image_encodings` (e.g. `"bgr8"`).
    pub encoding: &'a str,
    /// Byte order of multi-byte channels (`mono16`).
    pub is_bigendian: bool,
    /// Bytes from the start of one row to the start of the next (may include padding).
    pub step: u32,
    /// Row-major pixel bytes.
    pub data: &'a [u8],
}

/// The raw pixel encodings accepted by [`Frame::from_raw`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelEncoding {
    /// 8-bit red, green, blue.
    Rgb8,
    /// 8-bit blue, green, red.
    Bgr8,
    /// 8-bit red, green, blue, alpha (alpha ignored).
    Rgba8,
    /// 8-bit blue, green, red, alpha (alpha ignored).
    Bgra8,
    /// 8-bit grey.
    Mono8,
    /// 16-bit grey; the high byte becomes the grey level.
    Mono16,
    /// YUV 4:2:2 in the byte order U Y0 V Y1 (ROS `yuv422`, also called UYVY).
    Uyvy,
    /// YUV 4:2:2 in the byte order Y0 U Y1 V (ROS `yuv422_yuy2`, also called YUYV).
    Yuyv,
}

impl PixelEncoding {
    /// Every accepted encoding.
    pub const ALL: [PixelEncoding; 8] = [
        PixelEncoding::Rgb8,
        PixelEncoding::Bgr8,
        PixelEncoding::Rgba8,
        PixelEncoding::Bgra8,
        PixelEncoding::Mono8,
        PixelEncoding::Mono16,
        PixelEncoding::Uyvy,
        PixelEncoding::Yuyv,
    ];

    /// The encoding named `name` (ROS names and common aliases), if accepted.
    pub fn from_ros_name(name: &str) -> Option<Self> {
        match name {
            "rgb8" => Some(Self::Rgb8),
            "bgr8" | "8UC3" => Some(Self::Bgr8),
            "rgba8" => Some(Self::Rgba8),
            "bgra8" | "8UC4" => Some(Self::Bgra8),
            "mono8" | "8UC1" => Some(Self::Mono8),
            "mono16" | "16UC1" => Some(Self::Mono16),
            "yuv422" | "uyvy" | "UYVY" => Some(Self::Uyvy),
            "yuv422_yuy2" | "yuyv" | "YUYV" | "yuy2" | "YUY2" => Some(Self::Yuyv),
            _ => None,
        }
    }

    /// The canonical ROS name.
    pub fn ros_name(self) -> &'static str {
        match self {
            Self::Rgb8 => "rgb8",
            Self::Bgr8 => "bgr8",
            Self::Rgba8 => "rgba8",
            Self::Bgra8 => "bgra8",
            Self::Mono8 => "mono8",
            Self::Mono16 => "mono16",
            Self::Uyvy => "yuv422",
            Self::Yuyv => "yuv422_yuy2",
        }
    }

    /// Bytes per pixel (4:2:2 formats: two bytes per pixel, in pairs of pixels).
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            Self::Mono8 => 1,
            Self::Mono16 | Self::Uyvy | Self::Yuyv => 2,
            Self::Rgb8 | Self::Bgr8 => 3,
            Self::Rgba8 | Self::Bgra8 => 4,
        }
    }

    /// Whether pixels come in horizontal pairs sharing chroma (width must be even).
    pub fn is_chroma_subsampled(self) -> bool {
        matches!(self, Self::Uyvy | Self::Yuyv)
    }
}

/// The compressed formats accepted by [`Frame::from_compressed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressedFormat {
    /// JPEG (JFIF/EXIF).
    Jpeg,
    /// PNG.
    Png,
}

impl CompressedFormat {
    /// Reads the `format` field of `sensor_msgs/CompressedImage` (`"jpeg"`,
    /// `"png"`, or image_transport's `"bgr8; jpeg compressed bgr8"`); an empty
    /// field means "look at the bytes".
    pub fn from_format_field(format: &str, data: &[u8]) -> Result<Self, FrameError> {
        let lower = format.to_ascii_lowercase();
        if lower.contains("compresseddepth") {
            return Err(FrameError::UnsupportedFormat {
                format: format.to_string(),
            });
        }
        if lower.contains("png") {
            Ok(Self::Png)
        } else if lower.contains("jpeg") || lower.contains("jpg") {
            Ok(Self::Jpeg)
        } else if lower.trim().is_empty() {
            Self::sniff(data).ok_or_else(|| FrameError::UnsupportedFormat {
                format: "(unrecognised bytes)".to_string(),
            })
        } else {
            Err(FrameError::UnsupportedFormat {
                format: format.to_string(),
            })
        }
    }

    /// Recognises the format from its magic bytes.
    pub fn sniff(data: &[u8]) -> Option<Self> {
        const JPEG_MAGIC: &[u8] = &[0xFF, 0xD8, 0xFF];
        const PNG_MAGIC: &[u8] = &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
        if data.starts_with(JPEG_MAGIC) {
            Some(Self::Jpeg)
        } else if data.starts_with(PNG_MAGIC) {
            Some(Self::Png)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Jpeg => "jpeg",
            Self::Png => "png",
        }
    }

    fn image_format(self) -> image::ImageFormat {
        match self {
            Self::Jpeg => image::ImageFormat::Jpeg,
            Self::Png => image::ImageFormat::Png,
        }
    }
}

/// Why an incoming image was refused. Each variant has a stable [`kind`](FrameError::kind)
/// suitable as a diagnostics counter name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The encoding is not on the allow-list ([`PixelEncoding`]).
    #[error("unsupported image encoding {encoding:?}")]
    UnsupportedEncoding {
        /// The encoding as received.
        encoding: String,
    },
    /// Width or height is zero.
    #[error("image is empty ({width} x {height})")]
    EmptyImage {
        /// Width as received.
        width: u32,
        /// Height as received.
        height: u32,
    },
    /// More pixels than [`FrameLimits::max_pixels`].
    #[error("image of {width} x {height} exceeds the limit of {max_pixels} pixels")]
    TooManyPixels {
        /// Width as received.
        width: u32,
        /// Height as received.
        height: u32,
        /// The limit.
        max_pixels: u64,
    },
    /// A 4:2:2 image with an odd width (pixels come in pairs).
    #[error("{encoding} needs an even width, got {width}")]
    OddWidth {
        /// The encoding.
        encoding: &'static str,
        /// Width as received.
        width: u32,
    },
    /// The row stride is shorter than one row of pixels.
    #[error("row step {step} is shorter than a row of {min_step} bytes")]
    StepTooSmall {
        /// Step as received.
        step: u32,
        /// Bytes in one row of pixels.
        min_step: u64,
    },
    /// Fewer bytes than the dimensions and step require.
    #[error("image buffer has {len} bytes, {needed} needed")]
    BufferTooShort {
        /// Bytes received.
        len: usize,
        /// Bytes required.
        needed: u64,
    },
    /// A size computation overflowed (absurd dimensions or step).
    #[error("image size arithmetic overflows ({width} x {height}, step {step})")]
    SizeOverflow {
        /// Width as received.
        width: u32,
        /// Height as received.
        height: u32,
        /// Step as received.
        step: u32,
    },
    /// A compressed format other than JPEG or PNG.
    #[error("unsupported compressed image format {format:?} (JPEG and PNG are accepted)")]
    UnsupportedFormat {
        /// The format as received.
        format: String,
    },
    /// A compressed payload larger than [`FrameLimits::max_compressed_bytes`].
    #[error("compressed image of {len} bytes exceeds the limit of {max} bytes")]
    CompressedTooLarge {
        /// Bytes received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The compressed payload could not be decoded.
    #[error("cannot decode {format} image: {reason}")]
    Decode {
        /// The format it was decoded as.
        format: &'static str,
        /// What the decoder reported.
        reason: String,
    },
    /// Packed RGB8 data whose length does not match its dimensions.
    #[error("RGB8 buffer of {len} bytes does not match {width} x {height}")]
    DimensionMismatch {
        /// Width given.
        width: u32,
        /// Height given.
        height: u32,
        /// Bytes given.
        len: usize,
    },
}

impl FrameError {
    /// Every value [`kind`](FrameError::kind) can return, for registering counters up front.
    pub const KINDS: [&'static str; 11] = [
        "unsupported_encoding",
        "empty_image",
        "too_many_pixels",
        "odd_width",
        "step_too_small",
        "buffer_too_short",
        "size_overflow",
        "unsupported_format",
        "compressed_too_large",
        "decode_failed",
        "dimension_mismatch",
    ];

    /// A short, stable name of the error class, e.g. `"buffer_too_short"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnsupportedEncoding { .. } => Self::KINDS[0],
            Self::EmptyImage { .. } => Self::KINDS[1],
            Self::TooManyPixels { .. } => Self::KINDS[2],
            Self::OddWidth { .. } => Self::KINDS[3],
            Self::StepTooSmall { .. } => Self::KINDS[4],
            Self::BufferTooShort { .. } => Self::KINDS[5],
            Self::SizeOverflow { .. } => Self::KINDS[6],
            Self::UnsupportedFormat { .. } => Self::KINDS[7],
            Self::CompressedTooLarge { .. } => Self::KINDS[8],
            Self::Decode { .. } => Self::KINDS[9],
            Self::DimensionMismatch { .. } => Self::KINDS[10],
        }
    }
}

/// An owned image: tightly packed RGB8, row-major, `width * height * 3` bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

impl Default for Frame {
    fn default() -> Self {
        Self::empty()
    }
}

/// Checked geometry of a raw image: everything [`Frame::assign_from_raw`] needs to
/// read rows without further checks.
struct RawLayout {
    encoding: PixelEncoding,
    width: usize,
    height: usize,
    step: usize,
    row_bytes: usize,
    frame_bytes: usize,
}

fn raw_layout(raw: &RawImage<'_>, limits: &FrameLimits) -> Result<RawLayout, FrameError> {
    let encoding = PixelEncoding::from_ros_name(raw.encoding).ok_or_else(|| {
        FrameError::UnsupportedEncoding {
            encoding: raw.encoding.chars().take(64).collect(),
        }
    })?;
    let (width, height) = checked_dimensions(raw.width, raw.height, limits)?;
    if encoding.is_chroma_subsampled() && width % 2 != 0 {
        return Err(FrameError::OddWidth {
            encoding: encoding.ros_name(),
            width: raw.width,
        });
    }
    let overflow = || FrameError::SizeOverflow {
        width: raw.width,
        height: raw.height,
        step: raw.step,
    };
    let row_bytes = width
        .checked_mul(encoding.bytes_per_pixel())
        .ok_or_else(overflow)?;
    let step = usize::try_from(raw.step).map_err(|_| overflow())?;
    if step < row_bytes {
        return Err(FrameError::StepTooSmall {
            step: raw.step,
            min_step: row_bytes as u64,
        });
    }
    // The last row need not carry its padding: some publishers trim it.
    let needed = step
        .checked_mul(height - 1)
        .and_then(|n| n.checked_add(row_bytes))
        .ok_or_else(overflow)?;
    if raw.data.len() < needed {
        return Err(FrameError::BufferTooShort {
            len: raw.data.len(),
            needed: needed as u64,
        });
    }
    let frame_bytes = frame_len(width, height).ok_or_else(overflow)?;
    Ok(RawLayout {
        encoding,
        width,
        height,
        step,
        row_bytes,
        frame_bytes,
    })
}

fn checked_dimensions(
    width: u32,
    height: u32,
    limits: &FrameLimits,
) -> Result<(usize, usize), FrameError> {
    if width == 0 || height == 0 {
        return Err(FrameError::EmptyImage { width, height });
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(FrameError::TooManyPixels {
            width,
            height,
            max_pixels: limits.max_pixels,
        });
    }
    let overflow = || FrameError::SizeOverflow {
        width,
        height,
        step: 0,
    };
    Ok((
        usize::try_from(width).map_err(|_| overflow())?,
        usize::try_from(height).map_err(|_| overflow())?,
    ))
}

fn frame_len(width: usize, height: usize) -> Option<usize> {
    width.checked_mul(height)?.checked_mul(FRAME_CHANNELS)
}

impl Frame {
    /// A 0 x 0 frame, to be filled by [`assign_from_raw`](Frame::assign_from_raw).
    pub fn empty() -> Self {
        Self {
            width: 0,
            height: 0,
            data: Vec::new(),
        }
    }

    /// Wraps packed RGB8 bytes; `data.len()` must be `width * height * 3`.
    pub fn from_rgb8(width: u32, height: u32, data: Vec<u8>) -> Result<Self, FrameError> {
        let expected = usize::try_from(width)
            .ok()
            .zip(usize::try_from(height).ok())
            .and_then(|(w, h)| frame_len(w, h));
        if expected != Some(data.len()) {
            return Err(FrameError::DimensionMismatch {
                width,
                height,
                len: data.len(),
            });
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// A frame filled with one colour.
    pub fn filled(width: u32, height: u32, rgb: [u8; 3]) -> Self {
        let pixels = width as usize * height as usize;
        let mut data = Vec::with_capacity(pixels * FRAME_CHANNELS);
        for _ in 0..pixels {
            data.extend_from_slice(&rgb);
        }
        Self {
            width,
            height,
            data,
        }
    }

    /// Converts a raw image (see the module documentation).
    pub fn from_raw(raw: &RawImage<'_>, limits: &FrameLimits) -> Result<Self, FrameError> {
        let mut frame = Self::empty();
        frame.assign_from_raw(raw, limits)?;
        Ok(frame)
    }

    /// Converts a raw image into this frame, reusing its allocation. On error
    /// the frame is left unchanged.
    pub fn assign_from_raw(
        &mut self,
        raw: &RawImage<'_>,
        limits: &FrameLimits,
    ) -> Result<(), FrameError> {
        let layout = raw_layout(raw, limits)?;
        // Every byte is written below: a frame of the same size (a camera
        // stream) is not cleared first.
        if self.data.len() != layout.frame_bytes {
            self.data.clear();
            self.data.resize(layout.frame_bytes, 0);
        }
        // OpenCV's vectorised cvtColor is 15 to 30 times faster than the
        // per-pixel loop below for YUV 4:2:2, with the same results (the
        // loop stays as the fallback should OpenCV fail).
        if layout.encoding.is_chroma_subsampled()
            && rgb_from_yuv422_with_opencv(&layout, raw.data, &mut self.data).is_ok()
        {
            self.width = raw.width;
            self.height = raw.height;
            return Ok(());
        }
        let out_row_bytes = layout.width * FRAME_CHANNELS;
        for (y, out_row) in self
            .data
            .chunks_exact_mut(out_row_bytes)
            .enumerate()
            .take(layout.height)
        {
            // In bounds: raw_layout checked step * (height - 1) + row_bytes <= len.
            let start = y * layout.step;
            let in_row = &raw.data[start..start + layout.row_bytes];
            convert_row(layout.encoding, raw.is_bigendian, in_row, out_row);
        }
        // Both fit in u32: they came from the message.
        self.width = raw.width;
        self.height = raw.height;
        Ok(())
    }

    /// Decodes a JPEG or PNG payload. `format` is the `sensor_msgs/CompressedImage`
    /// format field; empty means "recognise the bytes".
    pub fn from_compressed(
        format: &str,
        data: &[u8],
        limits: &FrameLimits,
    ) -> Result<Self, FrameError> {
        if data.len() > limits.max_compressed_bytes {
            return Err(FrameError::CompressedTooLarge {
                len: data.len(),
                max: limits.max_compressed_bytes,
            });
        }
        let kind = CompressedFormat::from_format_field(format, data)?;
        let decode_error = |e: image::ImageError| FrameError::Decode {
            format: kind.name(),
            reason: e.to_string(),
        };
        let reader = image::ImageReader::with_format(Cursor::new(data), kind.image_format());
        let (width, height) = reader.into_dimensions().map_err(decode_error)?;
        checked_dimensions(width, height, limits)?;
        let mut reader = image::ImageReader::with_format(Cursor::new(data), kind.image_format());
        let mut decoder_limits = image::Limits::default();
        decoder_limits.max_image_width = Some(width);
        decoder_limits.max_image_height = Some(height);
        // Worst case: 16-bit RGBA, plus the RGB8 copy.
        decoder_limits.max_alloc =
            Some(limits.max_pixels.saturating_mul(8 + FRAME_CHANNELS as u64));
        reader.limits(decoder_limits);
        let decoded = reader.decode().map_err(decode_error)?;
        let rgb = decoded.into_rgb8();
        let (width, height) = rgb.dimensions();
        Self::from_rgb8(width, height, rgb.into_raw())
    }

    /// Pixels per row.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Rows.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Packed RGB8 bytes, row-major.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Mutable packed RGB8 bytes (the length cannot change).
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// Takes the bytes out.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// The pixel at (`x`, `y`), if inside.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * FRAME_CHANNELS;
        Some([self.data[i], self.data[i + 1], self.data[i + 2]])
    }

    /// Whether the frame has no pixels.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// An OpenCV view of the pixels (3 channels, RGB order), borrowing the frame.
    pub(crate) fn as_mat(
        &self,
    ) -> opencv::Result<opencv::boxed_ref::BoxedRef<'_, opencv::core::Mat>> {
        opencv::core::Mat::new_rows_cols_with_bytes::<opencv::core::Vec3b>(
            self.height as i32,
            self.width as i32,
            &self.data,
        )
    }
}

/// Converts a YUV 4:2:2 image (UYVY or YUYV) into packed RGB8 `out` with
/// OpenCV's `cvtColor`, which writes straight into `out`. Padded rows are
/// read in place when every row (the last included) carries its padding, else
/// packed first.
fn rgb_from_yuv422_with_opencv(
    layout: &RawLayout,
    data: &[u8],
    out: &mut [u8],
) -> opencv::Result<()> {
    use opencv::core::{Mat, Rect, Vec2b, Vec3b};
    use opencv::prelude::*;
    let out_of_range = |what: &str| opencv::Error::new(opencv::core::StsOutOfRange, what);
    let code = match layout.encoding {
        PixelEncoding::Uyvy => opencv::imgproc::COLOR_YUV2RGB_UYVY,
        PixelEncoding::Yuyv => opencv::imgproc::COLOR_YUV2RGB_YUYV,
        _ => return Err(out_of_range("not a YUV 4:2:2 encoding")),
    };
    let rows = i32::try_from(layout.height).map_err(|_| out_of_range("too many rows"))?;
    let cols = i32::try_from(layout.width).map_err(|_| out_of_range("too wide"))?;
    let (packed, whole): (Vec<u8>, _);
    let padded_len = layout.step.checked_mul(layout.height);
    let src = if layout.step == layout.row_bytes {
        Mat::new_rows_cols_with_bytes::<Vec2b>(
            rows,
            cols,
            &data[..layout.row_bytes * layout.height],
        )?
    } else if let Some(len) =
        padded_len.filter(|&n| layout.step.is_multiple_of(2) && n <= data.len())
    {
        let step_cols =
            i32::try_from(layout.step / 2).map_err(|_| out_of_range("step too large"))?;
        whole = Mat::new_rows_cols_with_bytes::<Vec2b>(rows, step_cols, &data[..len])?;
        Mat::roi(&whole, Rect::new(0, 0, cols, rows))?
    } else {
        packed = data
            .chunks(layout.step)
            .take(layout.height)
            .flat_map(|row| &row[..layout.row_bytes])
            .copied()
            .collect();
        Mat::new_rows_cols_with_bytes::<Vec2b>(rows, cols, &packed)?
    };
    let mut dst = Mat::new_rows_cols_with_bytes_mut::<Vec3b>(rows, cols, out)?;
    let target = dst.data();
    opencv::imgproc::cvt_color_def(&src, &mut dst, code)?;
    // cvtColor reallocates a destination of the wrong size or type instead of
    // failing: make sure it wrote into `out`.
    if dst.data() != target {
        return Err(out_of_range("cvtColor did not write into the frame"));
    }
    Ok(())
}

/// Converts one row of `encoding` pixels into packed RGB8.
fn convert_row(encoding: PixelEncoding, is_bigendian: bool, input: &[u8], out: &mut [u8]) {
    match encoding {
        PixelEncoding::Rgb8 => out.copy_from_slice(input),
        PixelEncoding::Bgr8 => {
            for (o, i) in out.chunks_exact_mut(3).zip(input.chunks_exact(3)) {
                o.copy_from_slice(&[i[2], i[1], i[0]]);
            }
        }
        PixelEncoding::Rgba8 => {
            for (o, i) in out.chunks_exact_mut(3).zip(input.chunks_exact(4)) {
                o.copy_from_slice(&i[..3]);
            }
        }
        PixelEncoding::Bgra8 => {
            for (o, i) in out.chunks_exact_mut(3).zip(input.chunks_exact(4)) {
                o.copy_from_slice(&[i[2], i[1], i[0]]);
            }
        }
        PixelEncoding::Mono8 => {
            for (o, &g) in out.chunks_exact_mut(3).zip(input) {
                o.fill(g);
            }
        }
        PixelEncoding::Mono16 => {
            for (o, i) in out.chunks_exact_mut(3).zip(input.chunks_exact(2)) {
                // The high byte: the same as dividing by 256, as cv_bridge does.
                o.fill(if is_bigendian { i[0] } else { i[1] });
            }
        }
        PixelEncoding::Uyvy => {
            for (o, i) in out.chunks_exact_mut(6).zip(input.chunks_exact(4)) {
                let (u, y0, v, y1) = (i[0], i[1], i[2], i[3]);
                o[..3].copy_from_slice(&rgb_from_yuv(y0, u, v));
                o[3..].copy_from_slice(&rgb_from_yuv(y1, u, v));
            }
        }
        PixelEncoding::Yuyv => {
            for (o, i) in out.chunks_exact_mut(6).zip(input.chunks_exact(4)) {
                let (y0, u, y1, v) = (i[0], i[1], i[2], i[3]);
                o[..3].copy_from_slice(&rgb_from_yuv(y0, u, v));
                o[3..].copy_from_slice(&rgb_from_yuv(y1, u, v));
            }
        }
    }
}

// ITU-R BT.601 limited-range YUV to RGB in 20-bit fixed point, the same
// coefficients as OpenCV's COLOR_YUV2RGB_UYVY/YUYV, so results match it exactly.
const YUV_SHIFT: i32 = 20;
const YUV_HALF: i32 = 1 << (YUV_SHIFT - 1);
const YUV_CY: i32 = 1_220_542; // 1.164 * 2^20
const YUV_CUB: i32 = 2_116_026; // 2.018
const YUV_CUG: i32 = -409_993; // -0.391
const YUV_CVG: i32 = -852_492; // -0.813
const YUV_CVR: i32 = 1_673_527; // 1.596
const YUV_LUMA_BLACK: i32 = 16;
const YUV_CHROMA_ZERO: i32 = 128;

/// One RGB pixel from BT.601 limited-range Y, U, V.
fn rgb_from_yuv(y: u8, u: u8, v: u8) -> [u8; 3] {
    let y = (i32::from(y) - YUV_LUMA_BLACK).max(0) * YUV_CY;
    let u = i32::from(u) - YUV_CHROMA_ZERO;
    let v = i32::from(v) - YUV_CHROMA_ZERO;
    let r = YUV_HALF + YUV_CVR * v;
    let g = YUV_HALF + YUV_CVG * v + YUV_CUG * u;
    let b = YUV_HALF + YUV_CUB * u;
    let clamp = |x: i32| (x >> YUV_SHIFT).clamp(0, 255) as u8;
    [clamp(y + r), clamp(y + g), clamp(y + b)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_encoding_round_trips_its_name() {
        for encoding in PixelEncoding::ALL {
            assert_eq!(
                PixelEncoding::from_ros_name(encoding.ros_name()),
                Some(encoding)
            );
        }
    }

    #[test]
    fn every_error_kind_is_listed() {
        let errors = [
            FrameError::UnsupportedEncoding {
                encoding: String::new(),
            },
            FrameError::EmptyImage {
                width: 0,
                height: 0,
            },
            FrameError::TooManyPixels {
                width: 0,
                height: 0,
                max_pixels: 0,
            },
            FrameError::OddWidth {
                encoding: "",
                width: 0,
            },
            FrameError::StepTooSmall {
                step: 0,
                min_step: 0,
            },
            FrameError::BufferTooShort { len: 0, needed: 0 },
            FrameError::SizeOverflow {
                width: 0,
                height: 0,
                step: 0,
            },
            FrameError::UnsupportedFormat {
                format: String::new(),
            },
            FrameError::CompressedTooLarge { len: 0, max: 0 },
            FrameError::Decode {
                format: "",
                reason: String::new(),
            },
            FrameError::DimensionMismatch {
                width: 0,
                height: 0,
                len: 0,
            },
        ];
        let kinds: Vec<_> = errors.iter().map(FrameError::kind).collect();
        assert_eq!(kinds, FrameError::KINDS);
    }

    /// The per-pixel fallback gives exactly what OpenCV gives, for both byte
    /// orders, on pseudo-random bytes.
    #[test]
    fn yuv422_fallback_matches_opencv() {
        let (width, height) = (64usize, 5usize);
        let mut state = 7u32;
        let data: Vec<u8> = (0..width * height * 2)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state >> 24) as u8
            })
            .collect();
        for encoding in [PixelEncoding::Uyvy, PixelEncoding::Yuyv] {
            let layout = RawLayout {
                encoding,
                width,
                height,
                step: width * 2,
                row_bytes: width * 2,
                frame_bytes: width * height * FRAME_CHANNELS,
            };
            let mut with_opencv = vec![0u8; layout.frame_bytes];
            rgb_from_yuv422_with_opencv(&layout, &data, &mut with_opencv).unwrap();
            let mut per_pixel = vec![0u8; layout.frame_bytes];
            for (in_row, out_row) in data
                .chunks_exact(layout.row_bytes)
                .zip(per_pixel.chunks_exact_mut(width * FRAME_CHANNELS))
            {
                convert_row(encoding, false, in_row, out_row);
            }
            assert!(with_opencv.iter().any(|&b| b != 0));
            assert_eq!(per_pixel, with_opencv, "{encoding:?}");
        }
    }

    #[test]
    fn yuv_extremes_saturate() {
        assert_eq!(rgb_from_yuv(16, 128, 128), [0, 0, 0]);
        assert_eq!(rgb_from_yuv(235, 128, 128), [255, 255, 255]);
        assert_eq!(rgb_from_yuv(255, 255, 255)[0], 255);
        assert_eq!(rgb_from_yuv(0, 0, 0)[0], 0);
    }
}
