//! Frames that find the cores idle, as a camera's do: the whole pipeline on
//! the group photo (3 faces) at 640x480 and 1920x1080, with 2 threads, for a
//! `pin_threads` pipeline and an unpinned one, interleaved frame by frame,
//! back to back and after 33 and 100 ms of idle. Prints medians over 40
//! frames each (total and detection, ms), after 10 frames of warm-up.
//!
//! A third column, `pinned+spin`, runs the pinned pipeline again after the
//! same idle time, of which the calling thread spends the last
//! [`SPIN_BEFORE`] spinning instead of sleeping (not counted in the frame's
//! time). It tells where the cost of idle cores comes from: if a frame after
//! a short spin is as fast as back to back, it is the calling core's state
//! after sleeping (what the hypervisor or the CPU does with a halted core),
//! not ONNX Runtime's sleeping workers or anything in the pipeline.
//!
//! Usage: cargo run --release --example idle_frames (part of `make bench`)

use face_perception::config::{Config, RawConfig};
use face_perception::frame::Frame;
use face_perception::pipeline::{FrameRequest, Pipeline};
use image::imageops::{resize, FilterType};
use std::time::{Duration, Instant};

const FRAMES: usize = 40;
/// How long the `pinned+spin` case spins before each frame.
const SPIN_BEFORE: Duration = Duration::from_millis(2);

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let photo = image::open(root.join("tests/fixtures/models/photos/group.jpg"))?.to_rgb8();
    let mut frames = Vec::new();
    for (w, h) in [(640, 480), (1920, 1080)] {
        let scaled = resize(&photo, w, h, FilterType::Triangle);
        frames.push((
            format!("{w}x{h}"),
            Frame::from_rgb8(w, h, scaled.into_raw())?,
        ));
    }
    let pipeline = |pin_threads| -> Result<Pipeline, Box<dyn std::error::Error>> {
        let raw = RawConfig {
            intra_op_threads: 2,
            pin_threads,
            ..RawConfig::default()
        };
        Ok(Pipeline::new(&Config::from_raw(raw)?)?)
    };
    let mut pipelines = [pipeline(false)?, pipeline(true)?];
    // (name, index in `pipelines`, spin before the frame)
    let cases = [
        ("unpinned", 0, false),
        ("pinned", 1, false),
        ("pinned+spin", 1, true),
    ];
    let request = FrameRequest::default();
    for p in &mut pipelines {
        for (_, frame) in &frames {
            for _ in 0..10 {
                p.process(frame, &request)?;
            }
        }
    }
    for (size, frame) in &frames {
        for idle_ms in [0, 33, 100] {
            let mut total = vec![Vec::new(); cases.len()];
            let mut detect = vec![Vec::new(); cases.len()];
            for _ in 0..FRAMES {
                for (k, &(_, index, spin)) in cases.iter().enumerate() {
                    let idle = Duration::from_millis(idle_ms);
                    if spin {
                        std::thread::sleep(idle.saturating_sub(SPIN_BEFORE));
                        let spinning = Instant::now();
                        while spinning.elapsed() < SPIN_BEFORE.min(idle) {
                            std::hint::spin_loop();
                        }
                    } else {
                        std::thread::sleep(idle);
                    }
                    let started = Instant::now();
                    let result = pipelines[index].process(frame, &request)?;
                    total[k].push(started.elapsed().as_secs_f64() * 1e3);
                    detect[k].push(result.timings.detect.as_secs_f64() * 1e3);
                }
            }
            let cells: Vec<String> = (0..cases.len())
                .map(|k| {
                    format!(
                        "{} {:6.2} (detect {:6.2})",
                        cases[k].0,
                        median(&mut total[k]),
                        median(&mut detect[k])
                    )
                })
                .collect();
            println!(
                "{size:>9}, {idle_ms:3} ms idle before each frame: {}",
                cells.join(", ")
            );
        }
    }
    Ok(())
}
