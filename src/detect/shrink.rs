//! Downscaling by area averaging: a frame for a detector, a face's region
//! for its chips (`classify`).
//!
//! OpenCV's `resize` with `INTER_AREA` takes a fast path when the frame is a
//! whole number of times the target size, but only a factor of 2 is
//! vectorised: every other factor sums each block pixel by pixel. A
//! 1920x1080 frame shrunk 6 times to 320x180 (CenterFace's default input)
//! took 1.79 ms here (criterion median), about a quarter of such a frame's
//! time at the default settings. [`AreaShrink::resize`] computes the same
//! bytes for those factors by summing whole rows first (which vectorises)
//! and then each block's columns: 0.58 ms. It hands every other size to
//! OpenCV, and takes views (a face's region, a buffer's corner) as they are.

use opencv::core::{Mat, Size, ToInputArray, ToOutputArray, CV_8U};
use opencv::imgproc;
use opencv::prelude::*;

/// Rows of a block are summed in 16 bits: at most this many rows of 8-bit
/// values fit.
const MAX_BLOCK_ROWS: usize = u16::MAX as usize / u8::MAX as usize;

/// Area downscaling with its scratch buffer, kept between frames by each
/// detector and by each classifier's chip cutting.
#[derive(Default)]
pub struct AreaShrink {
    /// The column sums of one band of block rows, grown as needed.
    row_sums: Vec<u16>,
}

impl AreaShrink {
    /// `src` shrunk to `size` by area averaging, into `dst` (reallocated
    /// only when its size or type differs). When `src` is 8-bit with 1, 3
    /// or 4 channels and a whole number of times `size` along each axis
    /// (other than 2 x 2, which OpenCV vectorises itself), each output value
    /// is the block's sum times the reciprocal of its area in single
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
        if dst.typ() != src.typ() || dst.size()? != size {
            *dst = Mat::new_rows_cols_with_default(size.height, size.width, src.typ(), 0.0.into())?;
        }
        self.sum_blocks(src, dst, block)
    }

    /// [`resize`](Self::resize) into `dst` at its own size: a view into a
    /// larger buffer (never reallocated), as the chip cutting keeps.
    pub fn resize_into(
        &mut self,
        src: &(impl MatTraitConst + ToInputArray),
        dst: &mut (impl MatTrait + ToOutputArray),
    ) -> opencv::Result<()> {
        let size = dst.size()?;
        match whole_factor(src, size) {
            Some(block) if dst.typ() == src.typ() => self.sum_blocks(src, dst, block),
            _ => imgproc::resize(src, dst, size, 0.0, 0.0, imgproc::INTER_AREA),
        }
    }

    /// Averages blocks of `bx` x `by` pixels of `src` into `dst`: each band
    /// of `by` rows is summed column by column (which vectorises), then each
    /// block's columns are added. Views work: rows are read one by one.
    fn sum_blocks(
        &mut self,
        src: &impl MatTraitConst,
        dst: &mut impl MatTrait,
        (bx, by): (usize, usize),
    ) -> opencv::Result<()> {
        let channels = src.channels() as usize;
        let scale = 1.0 / (bx * by) as f32;
        let out_rows = dst.rows();
        // One element per byte: rows of width x channels values.
        let src = src.reshape(1, 0)?;
        let mut dst = dst.reshape_mut(1, 0)?;
        let row_sums = &mut self.row_sums;
        row_sums.resize(src.cols() as usize, 0);
        let mut next_row = 0;
        for out_row in 0..out_rows {
            row_sums.fill(0);
            for _ in 0..by {
                for (sum, &value) in row_sums.iter_mut().zip(src.at_row::<u8>(next_row)?) {
                    *sum += u16::from(value);
                }
                next_row += 1;
            }
            let out = dst.at_row_mut::<u8>(out_row)?;
            // whole_factor admits 1, 3 or 4 channels.
            match channels {
                1 => average_columns::<1>(row_sums, bx, scale, out),
                3 => average_columns::<3>(row_sums, bx, scale, out),
                _ => average_columns::<4>(row_sums, bx, scale, out),
            }
        }
        Ok(())
    }
}

/// The block (columns, rows) when [`AreaShrink`] sums blocks itself.
fn whole_factor(src: &impl MatTraitConst, size: Size) -> Option<(usize, usize)> {
    let channels_summed = matches!(src.channels(), 1 | 3 | 4);
    if src.depth() != CV_8U || !channels_summed || size.width < 1 || size.height < 1 {
        return None;
    }
    let (w, h) = (src.cols(), src.rows());
    let (bx, by) = (w / size.width, h / size.height);
    let exact = bx * size.width == w && by * size.height == h;
    let useful = bx >= 1 && by >= 1 && (bx, by) != (1, 1) && (bx, by) != (2, 2);
    (exact && useful && by as usize <= MAX_BLOCK_ROWS).then_some((bx as usize, by as usize))
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
    use opencv::core::{Rect, Scalar, CV_8UC1, CV_8UC3};

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
    fn a_view_of_the_frame_into_a_view_of_a_buffer() {
        // As the chip cutting does: a region of the frame, 3 x 3 blocks,
        // into the top-left corner of a larger buffer.
        let frame = noise(100, 120, CV_8UC3, 11);
        let region = Mat::roi(&frame, Rect::new(7, 5, 60, 45)).unwrap();
        let mut buffer =
            Mat::new_rows_cols_with_default(30, 40, CV_8UC3, Scalar::all(9.0)).unwrap();
        let mut view = Mat::roi_mut(&mut buffer, Rect::new(0, 0, 20, 15)).unwrap();
        AreaShrink::default()
            .resize_into(&region, &mut view)
            .unwrap();
        let expected = opencv_area(&region.try_clone().unwrap(), Size::new(20, 15));
        for row in 0..15 {
            let got = buffer.at_row::<opencv::core::Vec3b>(row).unwrap();
            let got: Vec<u8> = got.iter().flat_map(|p| p.0).collect();
            assert_eq!(
                &got[..60],
                &expected[row as usize * 60..][..60],
                "row {row}"
            );
            assert!(
                got[60..].iter().all(|&v| v == 9),
                "row {row}: outside the view"
            );
        }
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
        let two_channels = noise(48, 64, opencv::core::CV_8UC2, 5);
        assert_eq!(
            whole_factor(&two_channels, Size::new(16, 16)),
            None,
            "2 channels"
        );
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
