//! Fuzzes `Frame::from_raw`: any header and any bytes must give a frame or a
//! typed error, never a panic, and a frame must have the promised size.
//!
//! Input layout: width (u16), height (u16), step (u16), encoding index (u8),
//! flags (u8: bit 0 = big-endian, bit 1 = take the encoding name from the
//! data instead, up to the first NUL), then the pixel bytes.

#![no_main]

use face_perception::frame::{Frame, FrameLimits, PixelEncoding, RawImage};
use libfuzzer_sys::fuzz_target;

/// Small enough that the fuzzer explores sizes rather than allocating.
const MAX_FUZZ_PIXELS: u64 = 1 << 20;

fuzz_target!(|input: &[u8]| {
    let Some((header, mut data)) = input.split_at_checked(8) else { return };
    let width = u32::from(u16::from_le_bytes([header[0], header[1]]));
    let height = u32::from(u16::from_le_bytes([header[2], header[3]]));
    let step = u32::from(u16::from_le_bytes([header[4], header[5]]));
    let is_bigendian = header[7] & 1 != 0;
    let owned_name;
    let encoding = if header[7] & 2 != 0 {
        let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
        owned_name = String::from_utf8_lossy(&data[..end]).into_owned();
        data = data.get(end + 1..).unwrap_or(&[]);
        owned_name.as_str()
    } else {
        PixelEncoding::ALL[usize::from(header[6]) % PixelEncoding::ALL.len()].ros_name()
    };
    let limits = FrameLimits { max_pixels: MAX_FUZZ_PIXELS, ..FrameLimits::default() };
    let raw = RawImage { width, height, encoding, is_bigendian, step, data };
    if let Ok(frame) = Frame::from_raw(&raw, &limits) {
        assert_eq!((frame.width(), frame.height()), (width, height));
        assert_eq!(frame.data().len(), width as usize * height as usize * 3);
    }
});
