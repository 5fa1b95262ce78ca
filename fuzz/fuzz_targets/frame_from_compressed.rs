//! Fuzzes `Frame::from_compressed` (JPEG and PNG decoding behind the size
//! limits): never a panic, and a frame within the pixel limit.
//!
//! Input layout: format selector (u8: 0 = "jpeg", 1 = "png", else "" =
//! recognise the bytes), then the payload.

#![no_main]

use face_perception::frame::{Frame, FrameLimits};
use libfuzzer_sys::fuzz_target;

const MAX_FUZZ_PIXELS: u64 = 1 << 20;

fuzz_target!(|input: &[u8]| {
    let Some((&selector, payload)) = input.split_first() else { return };
    let format = match selector {
        0 => "jpeg",
        1 => "png",
        _ => "",
    };
    let limits = FrameLimits { max_pixels: MAX_FUZZ_PIXELS, ..FrameLimits::default() };
    if let Ok(frame) = Frame::from_compressed(format, payload, &limits) {
        assert!(u64::from(frame.width()) * u64::from(frame.height()) <= MAX_FUZZ_PIXELS);
        assert_eq!(frame.data().len(), frame.width() as usize * frame.height() as usize * 3);
    }
});
