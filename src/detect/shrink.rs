//! Downscaling a frame for a detector by area averaging.
//!
//! OpenCV's `resize` with `INTER_AREA` takes a fast path when the frame is a
//! whole number of times the target size, but only a factor of 2 is
//! vectorised: every other factor sums each block pixel by pixel. A
//! 1920x1080 frame shrunk 6 times to 320x180 (CenterFace's default input)
//! took 1.79 ms here (criterion median), about a quarter of such a frame's
//! time at the default settings. [`AreaShrink::resize`] computes the same
//! bytes for those factors by summing whole rows first (which vectorises)
//! and then each block's columns: 0.58 ms. It hands every other size to
//! OpenCV.

use opencv::core::{Mat, Size, ToInputArray, CV_8U};
use opencv::imgproc;
use opencv::prelude::*;

/// Rows of a block are summed in 16 bits: at most this many rows of 8-bit
/// values fit.
const MAX_BLOCK_ROWS: usize = u16::MAX as usize / u8::MAX as usize;

/// Area downscaling with its scratch buffer, kept by a detector between
/// frames.
#[derive(Default)]
pub struct AreaShrink {
    /// Each output row's column sums, grown as needed.
    row_sums: Vec<u16>,
}

impl AreaShrink {
    /// `src` shrunk to `size` by area averaging, into `dst` (reallocated
    /// only when its size or type differs). When `src` is 8-bit,
    /// continuous, and a whole number of times `size` along each axis
    /// (other than 2 x 2, which OpenCV vectorises itself), each output
    /// value is the block's sum times the reciprocal of its area in single
    /// precision, rounded half to even: what OpenCV's whole-factor path
    /// computes. Anything else goes to OpenCV's `resize` with `INTER_AREA`.
    pub fn resize(
        &mut self,
        src: &(impl MatTraitConst + ToInputArray),
        dst: &mut Mat,
        size: Size,
    ) -> opencv::Result<()> {
        let Some(block) = whole_factor(src, size) else {
            return imgproc::resize(src, dst, size, 0.0, 0.0, imgproc::INTER_AREA);
        };
        if dst.typ() != src.typ() || dst.rows() != size.height || dst.cols() != size.width {
            *dst = Mat::new_rows_cols_with_default(size.height, size.width, src.typ(), 0.0.into())?;
        }
        let channels = src.channels() as usize;
        sum_blocks(
            src.data_bytes()?,
            src.cols() as usize * channels,
            channels,
            block,
            size.width as usize,
            dst.data_bytes_mut()?,
            &mut self.row_sums,
        );
        Ok(())
    }
}

/// The block (columns, rows) when [`AreaShrink::resize`] sums blocks itself.
fn whole_factor(src: &impl MatTraitConst, size: Size) -> Option<(usize, usize)> {
    if src.depth() != CV_8U || !src.is_continuous() || size.width < 1 || size.height < 1 {
        return None;
    }
    let (w, h) = (src.cols(), src.rows());
    let (bx, by) = (w / size.width, h / size.height);
    let exact = bx * size.width == w && by * size.height == h;
    let useful = bx >= 1 && by >= 1 && (bx, by) != (1, 1) && (bx, by) != (2, 2);
    (exact && useful && by as usize <= MAX_BLOCK_ROWS).then_some((bx as usize, by as usize))
}

/// Averages blocks of `block` (columns, rows) pixels of `src` (rows of
/// `row_len` bytes, `channels` interleaved) into `dst` (rows of
/// `out_width` pixels): each band of block rows is summed column by column
/// into `row_sums` (which vectorises), then each block's columns are added.
fn sum_blocks(
    src: &[u8],
    row_len: usize,
    channels: usize,
    block: (usize, usize),
    out_width: usize,
    dst: &mut [u8],
    row_sums: &mut Vec<u16>,
) {
    let (bx, by) = block;
    let scale = 1.0 / (bx * by) as f32;
    row_sums.resize(row_len, 0);
    let out_len = out_width * channels;
    for (band, out) in src
        .chunks_exact(row_len * by)
        .zip(dst.chunks_exact_mut(out_len))
    {
        row_sums.fill(0);
        for row in band.chunks_exact(row_len) {
            for (sum, &value) in row_sums.iter_mut().zip(row) {
                *sum += u16::from(value);
            }
        }
        match channels {
            1 => average_columns::<1>(row_sums, bx, scale, out),
            3 => average_columns::<3>(row_sums, bx, scale, out),
            4 => average_columns::<4>(row_sums, bx, scale, out),
            _ => {
                for (pixel, sums) in out
                    .chunks_exact_mut(channels)
                    .zip(row_sums.chunks_exact(bx * channels))
                {
                    for (c, value) in pixel.iter_mut().enumerate() {
                        let total: u32 = sums[c..]
                            .iter()
                            .step_by(channels)
                            .map(|&s| u32::from(s))
                            .sum();
                        *value = rounded(total as f32 * scale);
                    }
                }
            }
        }
    }
}

/// One output row from the column sums of its band, `C` channels a pixel.
fn average_columns<const C: usize>(row_sums: &[u16], bx: usize, scale: f32, out: &mut [u8]) {
    let (pixels, _) = out.as_chunks_mut::<C>();
    for (pixel, sums) in pixels.iter_mut().zip(row_sums.chunks_exact(bx * C)) {
        let mut total = [0u32; C];
        let (columns, _) = sums.as_chunks::<C>();
        for column in columns {
            for (t, &s) in total.iter_mut().zip(column) {
                *t += u32::from(s);
            }
        }
        for (value, t) in pixel.iter_mut().zip(total) {
            *value = rounded(t as f32 * scale);
        }
    }
}

/// `x` (in 0..=255) rounded half to even, as OpenCV's `saturate_cast`
/// rounds. Adding and taking away 2^23 leaves an f32 no fraction bits, so
/// the addition rounds in the default mode, half to even, without a call to
/// `rintf` (x86-64's baseline has no rounding instruction).
fn rounded(x: f32) -> u8 {
    const SHIFT: f32 = 8_388_608.0;
    // In 0.0..=255.0 after rounding: the cast drops nothing.
    ((x + SHIFT) - SHIFT) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use opencv::core::{Scalar, CV_8UC1, CV_8UC3};

    fn noise(rows: i32, cols: i32, kind: i32, seed: u32) -> Mat {
        let mut mat = Mat::new_rows_cols_with_default(rows, cols, kind, Scalar::all(0.0)).unwrap();
        let mut state = seed | 1;
        for byte in mat.data_bytes_mut().unwrap() {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            *byte = (state >> 24) as u8;
        }
        mat
    }

    fn opencv_area(src: &Mat, size: Size) -> Vec<u8> {
        let mut out = Mat::default();
        imgproc::resize(src, &mut out, size, 0.0, 0.0, imgproc::INTER_AREA).unwrap();
        out.data_bytes().unwrap().to_vec()
    }

    #[test]
    fn whole_factors_give_opencvs_bytes() {
        let mut shrink = AreaShrink::default();
        // (frame width, height, target width, height): 1080p and 720p to
        // CenterFace's 320 px, BlazeFace's 192 px letterbox of 1080p, and
        // unequal factors.
        let cases = [
            (1920, 1080, 320, 180),
            (1280, 720, 320, 180),
            (1920, 1080, 192, 108),
            (90, 60, 30, 20),
            (60, 45, 30, 9),
            (35, 21, 7, 7),
        ];
        for (kind, channels) in [(CV_8UC3, 3), (CV_8UC1, 1)] {
            for (seed, &(w, h, tw, th)) in cases.iter().enumerate() {
                let src = noise(h, w, kind, seed as u32 + 7);
                let size = Size::new(tw, th);
                assert!(whole_factor(&src, size).is_some(), "{w}x{h} -> {tw}x{th}");
                let mut out = Mat::default();
                shrink.resize(&src, &mut out, size).unwrap();
                assert_eq!((out.cols(), out.rows(), out.channels()), (tw, th, channels));
                assert!(
                    out.data_bytes().unwrap() == opencv_area(&src, size).as_slice(),
                    "{channels} channel(s), {w}x{h} -> {tw}x{th}"
                );
            }
        }
    }

    #[test]
    fn halves_round_to_even_and_a_uniform_frame_stays_uniform() {
        let mut shrink = AreaShrink::default();
        // 2 x 1 blocks: (1 + 2) / 2 = 1.5 -> 2, (2 + 3) / 2 = 2.5 -> 2, 7.
        let src = Mat::from_slice_2d(&[[1u8, 2, 2, 3, 7, 7]]).unwrap();
        let mut out = Mat::default();
        shrink.resize(&src, &mut out, Size::new(3, 1)).unwrap();
        assert_eq!(out.data_bytes().unwrap(), &[2, 2, 7]);
        assert_eq!(opencv_area(&src, Size::new(3, 1)), vec![2, 2, 7]);
        let uniform = Mat::new_rows_cols_with_default(12, 12, CV_8UC3, Scalar::all(201.0)).unwrap();
        shrink.resize(&uniform, &mut out, Size::new(3, 4)).unwrap();
        assert_eq!((out.cols(), out.rows()), (3, 4));
        assert!(out.data_bytes().unwrap().iter().all(|&v| v == 201));
    }

    #[test]
    fn other_sizes_are_left_to_opencv() {
        let src = noise(480, 640, CV_8UC3, 3);
        assert_eq!(
            whole_factor(&src, Size::new(320, 240)),
            None,
            "2 x 2: OpenCV's own"
        );
        assert_eq!(whole_factor(&src, Size::new(300, 200)), None, "not whole");
        assert_eq!(whole_factor(&src, Size::new(640, 480)), None, "same size");
        let mut shrink = AreaShrink::default();
        for size in [Size::new(320, 240), Size::new(300, 200)] {
            let mut out = Mat::default();
            shrink.resize(&src, &mut out, size).unwrap();
            assert_eq!(
                out.data_bytes().unwrap(),
                opencv_area(&src, size).as_slice()
            );
        }
    }
}
