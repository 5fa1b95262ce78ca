//! Frame conversion: golden pixels for every encoding, agreement with OpenCV's
//! `cvtColor` on random buffers (tolerance: exact, 0 levels), and a typed error
//! (never a panic) for each class of bad buffer.

use face_perception::frame::{Frame, FrameError, FrameLimits, PixelEncoding, RawImage};
use opencv::core::{Mat, Vec2b, Vec3b, Vec4b};
use opencv::imgproc;
use opencv::prelude::*;

fn raw<'a>(width: u32, height: u32, encoding: &'a str, step: u32, data: &'a [u8]) -> RawImage<'a> {
    RawImage {
        width,
        height,
        encoding,
        is_bigendian: false,
        step,
        data,
    }
}

fn convert(raw: &RawImage<'_>) -> Frame {
    match Frame::from_raw(raw, &FrameLimits::default()) {
        Ok(frame) => frame,
        Err(e) => panic!("{} should convert: {e}", raw.encoding),
    }
}

fn pixels(frame: &Frame) -> Vec<[u8; 3]> {
    frame
        .data()
        .chunks_exact(3)
        .map(|p| [p[0], p[1], p[2]])
        .collect()
}

const RED: [u8; 3] = [255, 0, 0];
const GREEN: [u8; 3] = [0, 255, 0];
const BLUE: [u8; 3] = [0, 0, 255];
const GREY: [u8; 3] = [100, 100, 100];

#[test]
fn rgb8_golden() {
    let data = [255, 0, 0, 0, 255, 0, 0, 0, 255, 100, 100, 100];
    let frame = convert(&raw(2, 2, "rgb8", 6, &data));
    assert_eq!((frame.width(), frame.height()), (2, 2));
    assert_eq!(pixels(&frame), [RED, GREEN, BLUE, GREY]);
}

#[test]
fn bgr8_golden() {
    let data = [0, 0, 255, 0, 255, 0, 255, 0, 0, 100, 100, 100];
    assert_eq!(
        pixels(&convert(&raw(2, 2, "bgr8", 6, &data))),
        [RED, GREEN, BLUE, GREY]
    );
}

#[test]
fn rgba8_golden_ignores_alpha() {
    let data = [
        255, 0, 0, 7, 0, 255, 0, 0, 0, 0, 255, 255, 100, 100, 100, 128,
    ];
    assert_eq!(
        pixels(&convert(&raw(4, 1, "rgba8", 16, &data))),
        [RED, GREEN, BLUE, GREY]
    );
}

#[test]
fn bgra8_golden_ignores_alpha() {
    let data = [
        0, 0, 255, 7, 0, 255, 0, 0, 255, 0, 0, 255, 100, 100, 100, 128,
    ];
    assert_eq!(
        pixels(&convert(&raw(4, 1, "bgra8", 16, &data))),
        [RED, GREEN, BLUE, GREY]
    );
}

#[test]
fn mono8_golden() {
    let data = [0, 100, 255];
    assert_eq!(
        pixels(&convert(&raw(3, 1, "mono8", 3, &data))),
        [[0; 3], GREY, [255; 3]]
    );
}

#[test]
fn mono16_golden_both_byte_orders() {
    // 0x64FF, 0x0001, 0xFFFF: the high byte is the grey level.
    let little = [0xFF, 0x64, 0x01, 0x00, 0xFF, 0xFF];
    let big = [0x64, 0xFF, 0x00, 0x01, 0xFF, 0xFF];
    let expected = [GREY, [0; 3], [255; 3]];
    assert_eq!(pixels(&convert(&raw(3, 1, "mono16", 6, &little))), expected);
    let big_raw = RawImage {
        is_bigendian: true,
        ..raw(3, 1, "mono16", 6, &big)
    };
    assert_eq!(pixels(&convert(&big_raw)), expected);
}

// Golden values from OpenCV 4.6 `cv2.cvtColor(..., COLOR_YUV2RGB_UYVY)`:
// black, white, red (Y 81, U 90, V 240), green (145, 54, 34), blue (41, 240, 110).
const YUV_GOLDEN_RGB: [[u8; 3]; 8] = [
    [0, 0, 0],
    [255, 255, 255],
    [254, 0, 0],
    [254, 0, 0],
    [0, 255, 1],
    [0, 255, 1],
    [0, 0, 255],
    [0, 0, 255],
];

#[test]
fn uyvy_golden() {
    let data = [
        128, 16, 128, 235, 90, 81, 240, 81, 54, 145, 34, 145, 240, 41, 110, 41,
    ];
    for name in ["yuv422", "uyvy", "UYVY"] {
        assert_eq!(
            pixels(&convert(&raw(8, 1, name, 16, &data))),
            YUV_GOLDEN_RGB,
            "{name}"
        );
    }
}

#[test]
fn yuyv_golden() {
    let data = [
        16, 128, 235, 128, 81, 90, 81, 240, 145, 54, 145, 34, 41, 240, 41, 110,
    ];
    for name in ["yuv422_yuy2", "yuyv", "YUYV"] {
        assert_eq!(
            pixels(&convert(&raw(8, 1, name, 16, &data))),
            YUV_GOLDEN_RGB,
            "{name}"
        );
    }
}

#[test]
fn row_padding_is_skipped() {
    // 2 x 2 rgb8 with 3 bytes of padding per row (step 9), padding filled with junk.
    let data = [
        1, 2, 3, 4, 5, 6, 99, 99, 99, 7, 8, 9, 10, 11, 12, 99, 99, 99,
    ];
    let frame = convert(&raw(2, 2, "rgb8", 9, &data));
    assert_eq!(frame.data(), &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    // The last row's padding may be missing.
    let frame = convert(&raw(2, 2, "rgb8", 9, &data[..15]));
    assert_eq!(frame.data(), &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
}

#[test]
fn yuv422_row_padding_is_skipped() {
    // Three layouts of the same 6 x 3 image: padding of 4 bytes per row, the
    // last row's padding missing, and an odd padding of 3 bytes.
    let (width, height, row_bytes) = (6u32, 3u32, 12usize);
    let packed = noise(row_bytes * height as usize, 5);
    for name in ["uyvy", "yuyv"] {
        let expected = convert(&raw(width, height, name, row_bytes as u32, &packed));
        for (padding, trim_last) in [(4usize, false), (4, true), (3, false)] {
            let step = row_bytes + padding;
            let mut padded: Vec<u8> = packed
                .chunks_exact(row_bytes)
                .flat_map(|row| {
                    row.iter()
                        .copied()
                        .chain([0xAB; 4].into_iter().take(padding))
                })
                .collect();
            if trim_last {
                padded.truncate(padded.len() - padding);
            }
            let frame = convert(&raw(width, height, name, step as u32, &padded));
            assert_eq!(
                frame, expected,
                "{name}, padding {padding}, trimmed {trim_last}"
            );
        }
    }
}

#[test]
fn assign_reuses_the_frame_and_leaves_it_unchanged_on_error() {
    let mut frame = Frame::empty();
    let data = [1, 2, 3, 4, 5, 6];
    frame
        .assign_from_raw(&raw(2, 1, "rgb8", 6, &data), &FrameLimits::default())
        .unwrap();
    let before = frame.clone();
    let err = frame
        .assign_from_raw(&raw(4, 1, "rgb8", 12, &data), &FrameLimits::default())
        .unwrap_err();
    assert_eq!(err.kind(), "buffer_too_short");
    assert_eq!(frame, before);
}

/// A deterministic pseudo-random buffer (xorshift), so failures reproduce.
fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.max(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect()
}

/// OpenCV's reading of the same bytes, as packed RGB8.
fn opencv_rgb(encoding: PixelEncoding, width: i32, height: i32, data: &[u8]) -> Vec<u8> {
    let (src, code) = match encoding {
        PixelEncoding::Rgb8 => return data.to_vec(),
        PixelEncoding::Bgr8 => (
            Mat::new_rows_cols_with_bytes::<Vec3b>(height, width, data)
                .unwrap()
                .try_clone()
                .unwrap(),
            imgproc::COLOR_BGR2RGB,
        ),
        PixelEncoding::Rgba8 => (
            Mat::new_rows_cols_with_bytes::<Vec4b>(height, width, data)
                .unwrap()
                .try_clone()
                .unwrap(),
            imgproc::COLOR_RGBA2RGB,
        ),
        PixelEncoding::Bgra8 => (
            Mat::new_rows_cols_with_bytes::<Vec4b>(height, width, data)
                .unwrap()
                .try_clone()
                .unwrap(),
            imgproc::COLOR_BGRA2RGB,
        ),
        PixelEncoding::Mono8 => (
            Mat::new_rows_cols_with_bytes::<u8>(height, width, data)
                .unwrap()
                .try_clone()
                .unwrap(),
            imgproc::COLOR_GRAY2RGB,
        ),
        PixelEncoding::Mono16 => {
            let high: Vec<u8> = data.chunks_exact(2).map(|p| p[1]).collect();
            (
                Mat::new_rows_cols_with_bytes::<u8>(height, width, &high)
                    .unwrap()
                    .try_clone()
                    .unwrap(),
                imgproc::COLOR_GRAY2RGB,
            )
        }
        PixelEncoding::Uyvy => (
            Mat::new_rows_cols_with_bytes::<Vec2b>(height, width, data)
                .unwrap()
                .try_clone()
                .unwrap(),
            imgproc::COLOR_YUV2RGB_UYVY,
        ),
        PixelEncoding::Yuyv => (
            Mat::new_rows_cols_with_bytes::<Vec2b>(height, width, data)
                .unwrap()
                .try_clone()
                .unwrap(),
            imgproc::COLOR_YUV2RGB_YUYV,
        ),
    };
    let mut dst = Mat::default();
    imgproc::cvt_color_def(&src, &mut dst, code).unwrap();
    dst.data_bytes().unwrap().to_vec()
}

#[test]
fn every_encoding_matches_opencv_on_random_pixels() {
    let (width, height) = (32u32, 7u32);
    for (seed, encoding) in PixelEncoding::ALL.into_iter().enumerate() {
        let step = width * encoding.bytes_per_pixel() as u32;
        let data = noise((step * height) as usize, seed as u32 + 11);
        let frame = convert(&raw(width, height, encoding.ros_name(), step, &data));
        let expected = opencv_rgb(encoding, width as i32, height as i32, &data);
        let max_diff = frame
            .data()
            .iter()
            .zip(&expected)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0);
        assert_eq!(frame.data().len(), expected.len(), "{encoding:?}");
        assert_eq!(
            max_diff, 0,
            "{encoding:?} differs from OpenCV by up to {max_diff}"
        );
    }
}

fn refused(raw: &RawImage<'_>, limits: &FrameLimits) -> FrameError {
    match Frame::from_raw(raw, limits) {
        Ok(_) => panic!("{raw:?} should be refused"),
        Err(e) => e,
    }
}

#[test]
fn bad_buffers_give_typed_errors() {
    let limits = FrameLimits::default();
    let data = vec![0u8; 64];
    let cases: [(RawImage<'_>, &str); 10] = [
        (raw(2, 2, "rgb16", 12, &data), "unsupported_encoding"),
        (raw(2, 2, "", 12, &data), "unsupported_encoding"),
        (raw(0, 2, "rgb8", 6, &data), "empty_image"),
        (raw(2, 0, "rgb8", 6, &data), "empty_image"),
        (raw(3, 2, "yuv422", 6, &data), "odd_width"),
        (raw(4, 2, "rgb8", 11, &data), "step_too_small"),
        (raw(4, 4, "rgb8", 12, &data[..47]), "buffer_too_short"),
        (raw(2, 2, "rgb8", 6, &[]), "buffer_too_short"),
        (raw(2, 2, "rgb8", u32::MAX, &data), "buffer_too_short"),
        (
            raw(60_000, 60_000, "rgb8", 180_000, &data),
            "too_many_pixels",
        ),
    ];
    for (raw, kind) in cases {
        let err = refused(&raw, &limits);
        assert_eq!(err.kind(), kind, "{raw:?}: {err}");
    }
}

#[test]
fn extreme_dimensions_never_panic() {
    let unlimited = FrameLimits {
        max_pixels: u64::MAX,
        ..FrameLimits::default()
    };
    let data = [0u8; 16];
    for encoding in PixelEncoding::ALL {
        for (w, h, step) in [
            (u32::MAX, u32::MAX, u32::MAX),
            (u32::MAX, 1, 0),
            (2, u32::MAX, u32::MAX),
            (1 << 31, 2, 0),
        ] {
            let err = refused(&raw(w, h, encoding.ros_name(), step, &data), &unlimited);
            assert!(
                [
                    "step_too_small",
                    "buffer_too_short",
                    "size_overflow",
                    "odd_width"
                ]
                .contains(&err.kind()),
                "{encoding:?} {w}x{h} step {step}: {err}"
            );
        }
    }
}

#[test]
fn pixel_limit_is_configurable() {
    let data = [0u8; 12];
    let limits = FrameLimits {
        max_pixels: 3,
        ..FrameLimits::default()
    };
    assert_eq!(
        refused(&raw(2, 2, "rgb8", 6, &data), &limits).kind(),
        "too_many_pixels"
    );
    assert!(Frame::from_raw(&raw(3, 1, "rgb8", 9, &data), &limits).is_ok());
}

fn png_bytes(width: u32, height: u32, rgb: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(rgb, width, height, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

use image::ImageEncoder;

#[test]
fn png_decodes_losslessly() {
    let rgb = noise(5 * 3 * 3, 3);
    let png = png_bytes(5, 3, &rgb);
    for format in ["png", "rgb8; png compressed bgr8", ""] {
        let frame = Frame::from_compressed(format, &png, &FrameLimits::default()).unwrap();
        assert_eq!((frame.width(), frame.height()), (5, 3));
        assert_eq!(frame.data(), &rgb[..], "{format:?}");
    }
}

#[test]
fn jpeg_decodes_close_to_its_source() {
    // A flat colour survives JPEG within a few levels (tolerance 4).
    let rgb: Vec<u8> = [200u8, 40, 90].repeat(16 * 16);
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .write_image(&rgb, 16, 16, image::ExtendedColorType::Rgb8)
        .unwrap();
    let frame = Frame::from_compressed("jpeg", &jpeg, &FrameLimits::default()).unwrap();
    let max_diff = frame
        .data()
        .iter()
        .zip(&rgb)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(255);
    assert!(max_diff <= 4, "max difference {max_diff}");
}

#[test]
fn bad_compressed_payloads_give_typed_errors() {
    let limits = FrameLimits::default();
    let png = png_bytes(4, 4, &[7u8; 48]);
    let kind = |format: &str, data: &[u8], limits: &FrameLimits| match Frame::from_compressed(
        format, data, limits,
    ) {
        Ok(_) => panic!("{format:?} should be refused"),
        Err(e) => e.kind(),
    };
    assert_eq!(kind("bmp", &png, &limits), "unsupported_format");
    assert_eq!(
        kind("16UC1; compressedDepth png", &png, &limits),
        "unsupported_format"
    );
    assert_eq!(kind("", b"not an image", &limits), "unsupported_format");
    assert_eq!(kind("png", &png[..png.len() / 2], &limits), "decode_failed");
    assert_eq!(kind("jpeg", &png, &limits), "decode_failed");
    assert_eq!(kind("png", &[], &limits), "decode_failed");
    let small = FrameLimits {
        max_pixels: 15,
        ..limits
    };
    assert_eq!(kind("png", &png, &small), "too_many_pixels");
    let tiny = FrameLimits {
        max_compressed_bytes: 10,
        ..limits
    };
    assert_eq!(kind("png", &png, &tiny), "compressed_too_large");
}

#[test]
fn rgb8_wrapper_checks_its_length() {
    assert!(Frame::from_rgb8(2, 2, vec![0; 12]).is_ok());
    assert_eq!(
        Frame::from_rgb8(2, 2, vec![0; 11]).unwrap_err().kind(),
        "dimension_mismatch"
    );
    assert_eq!(
        Frame::from_rgb8(u32::MAX, u32::MAX, vec![])
            .unwrap_err()
            .kind(),
        "dimension_mismatch"
    );
}
