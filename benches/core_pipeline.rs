//! Benchmarks of the perception core, per stage and end to end, on composite
//! frames tiled from the real test photos (`tests/fixtures/core`, made by
//! `benches/make_bench_frames.py`): 640 x 480 and 1920 x 1080 with 1, 2 and 5
//! faces.
//!
//! Criterion measures each stage; a summary at the end prints, per frame
//! size, face count, intra-op thread count and precision (fp32, int8), the
//! median of every pipeline stage over [`SUMMARY_FRAMES`] frames, so a
//! missed target shows where the time goes.
//! Run: `cargo bench --no-default-features --bench core_pipeline`.

use criterion::{black_box, BenchmarkId, Criterion};
use face_perception::classify::{Classifier, ClassifierTask};
use face_perception::config::{Config, RawConfig};
use face_perception::detect::shrink::AreaShrink;
use face_perception::detect::DetectionScale;
use face_perception::frame::{Frame, FrameLimits, RawImage};
use face_perception::manifest::Manifest;
use face_perception::parallel::Cores;
use face_perception::pipeline::{load_session, FrameRequest, Pipeline};
use std::path::PathBuf;
use std::time::Duration;

/// Frames per summary case.
const SUMMARY_FRAMES: usize = 200;
/// Frames run before measuring (session warm-up, buffer allocation).
const WARM_UP_FRAMES: usize = 20;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn frame(width: u32, height: u32, faces: usize) -> Frame {
    let path = repo().join(format!(
        "tests/fixtures/core/frame_{width}x{height}_{faces}faces.jpg"
    ));
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run benches/make_bench_frames.py)", path.display()));
    Frame::from_compressed("jpeg", &bytes, &FrameLimits::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// fp32 (cases without a precision in their name), `threads` intra-op
/// threads, `detector`.
fn config(threads: i64, detector: &str) -> Config {
    Config::from_raw(RawConfig {
        models_dir: repo().join("models").to_string_lossy().into_owned(),
        precision: "fp32".into(),
        intra_op_threads: threads,
        detector: detector.to_string(),
        ..RawConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn pipeline(threads: i64, detector: &str) -> Pipeline {
    Pipeline::new(&config(threads, detector)).unwrap_or_else(|e| panic!("{e}"))
}

/// `detector` at `precision` ("fp32" or "int8").
fn pipeline_at(threads: i64, precision: &str, detector: &str) -> Pipeline {
    let raw = RawConfig {
        precision: precision.to_string(),
        ..config(threads, detector).to_raw()
    };
    let config = Config::from_raw(raw).unwrap_or_else(|e| panic!("{e}"));
    Pipeline::new(&config).unwrap_or_else(|e| panic!("{e}"))
}

const SIZES: [(u32, u32); 2] = [(640, 480), (1920, 1080)];

/// Pseudo-random bytes (xorshift), so that YUV conversion meets every value.
fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect()
}

/// Frame conversion into a reused frame, and, for YUV 4:2:2, OpenCV's bare
/// `cvtColor` on the same bytes into a reused Mat (`*_opencv_t<threads>`:
/// OpenCV's own thread pool and one thread), which `Frame` uses inside: the
/// difference is the frame's checks and overhead. (The per-pixel Rust
/// conversion it replaced took 3.3 to 3.7 ms at 640x480, 22 ms at 1920x1080.)
fn bench_frames(c: &mut Criterion) {
    use opencv::core::{Mat, Vec2b};
    use opencv::imgproc::{cvt_color_def, COLOR_YUV2RGB_UYVY, COLOR_YUV2RGB_YUYV};
    let mut group = c.benchmark_group("frame");
    group.measurement_time(Duration::from_secs(2));
    let opencv_threads = opencv::core::get_num_threads().unwrap();
    for (w, h) in SIZES {
        let id = format!("{w}x{h}");
        let rgb = frame(w, h, 5);
        let bgr: Vec<u8> = rgb
            .data()
            .chunks_exact(3)
            .flat_map(|p| [p[2], p[1], p[0]])
            .collect();
        let yuv = noise((w * h * 2) as usize);
        let mut out = Frame::empty();
        let limits = FrameLimits::default();
        for (name, encoding, data, step) in [
            ("bgr8", "bgr8", &bgr, w * 3),
            ("yuyv", "yuv422_yuy2", &yuv, w * 2),
            ("uyvy", "yuv422", &yuv, w * 2),
        ] {
            let raw = RawImage {
                width: w,
                height: h,
                encoding,
                is_bigendian: false,
                step,
                data,
            };
            group.bench_function(BenchmarkId::new(name, &id), |b| {
                b.iter(|| out.assign_from_raw(black_box(&raw), &limits).unwrap())
            });
        }
        let src = Mat::new_rows_cols_with_bytes::<Vec2b>(h as i32, w as i32, &yuv).unwrap();
        let mut dst = Mat::default();
        for (name, code) in [("yuyv", COLOR_YUV2RGB_YUYV), ("uyvy", COLOR_YUV2RGB_UYVY)] {
            for threads in [opencv_threads, 1] {
                opencv::core::set_num_threads(threads).unwrap();
                group.bench_function(
                    BenchmarkId::new(format!("{name}_opencv_t{threads}"), &id),
                    |b| b.iter(|| cvt_color_def(black_box(&src), &mut dst, code).unwrap()),
                );
            }
        }
        opencv::core::set_num_threads(opencv_threads).unwrap();
        let path = repo().join(format!("tests/fixtures/core/frame_{w}x{h}_5faces.jpg"));
        let jpeg = std::fs::read(path).unwrap();
        group.bench_function(BenchmarkId::new("jpeg", &id), |b| {
            b.iter(|| Frame::from_compressed("jpeg", black_box(&jpeg), &limits).unwrap())
        });
    }
    // Shrinking a frame to CenterFace's default 320 px input: OpenCV's area
    // resize and the detectors' AreaShrink (the same bytes; 640x480 is a
    // factor of 2, which AreaShrink leaves to OpenCV).
    let mut shrink = AreaShrink::default();
    for (w, h) in SIZES {
        let frame = frame(w, h, 5);
        let source =
            Mat::new_rows_cols_with_bytes::<opencv::core::Vec3b>(h as i32, w as i32, frame.data())
                .unwrap();
        let scale = DetectionScale::for_frame(w, h, 320);
        let size = opencv::core::Size::new(scale.width as i32, scale.height as i32);
        let id = format!("{w}x{h}_to_{}x{}", scale.width, scale.height);
        let mut out = Mat::default();
        group.bench_function(BenchmarkId::new("shrink_area_opencv", &id), |b| {
            b.iter(|| {
                opencv::imgproc::resize(
                    black_box(&source),
                    &mut out,
                    size,
                    0.0,
                    0.0,
                    opencv::imgproc::INTER_AREA,
                )
                .unwrap()
            })
        });
        group.bench_function(BenchmarkId::new("shrink_area", &id), |b| {
            b.iter(|| shrink.resize(black_box(&source), &mut out, size).unwrap())
        });
    }
    group.finish();
}

fn bench_stages(c: &mut Criterion) {
    let mut group = c.benchmark_group("stage");
    for threads in [1, 2] {
        let mut p = pipeline(threads, "dnn");
        for (w, h) in SIZES {
            let f = frame(w, h, 5);
            group.bench_function(
                BenchmarkId::new(format!("detect_dnn_t{threads}"), format!("{w}x{h}")),
                |b| b.iter(|| p.detect(black_box(&f)).unwrap()),
            );
        }
        // With 2 threads the classifiers run side by side, one thread each,
        // their faces shared evenly between the two (crate::balance).
        let f = frame(640, 480, 5);
        let faces = p.detect(&f).unwrap();
        group.bench_function(
            BenchmarkId::new(
                format!("classify_gender_emotion_t{threads}"),
                format!("{}faces", faces.len()),
            ),
            |b| b.iter(|| p.classify(black_box(&f), &faces).unwrap()),
        );
    }
    // Chip cutting versus inference, per classifier, on the five faces.
    let manifest = Manifest::load(&repo().join("models")).unwrap();
    for (w, h) in SIZES {
        let f = frame(w, h, 5);
        let faces = pipeline(1, "dnn").detect(&f).unwrap();
        for task in [ClassifierTask::Gender, ClassifierTask::Emotion] {
            let (session, entry) =
                load_session(&manifest, task.model_name(), 1, &Cores::unpinned()).unwrap();
            let mut classifier = Classifier::new(task, session, &entry, faces.len()).unwrap();
            let id = format!("{w}x{h}_{}faces", faces.len());
            group.bench_function(
                BenchmarkId::new(format!("prepare_{}", task.model_name()), &id),
                |b| b.iter(|| classifier.prepare(black_box(&f), &faces, true).unwrap()),
            );
            // Prepared here too: a filter that skips the bench above must not
            // leave the batch empty.
            classifier.prepare(&f, &faces, true).unwrap();
            group.bench_function(
                BenchmarkId::new(format!("run_{}", task.model_name()), &id),
                |b| b.iter(|| classifier.run().unwrap()),
            );
        }
    }
    // The DNN backends by name (detect_dnn_* above is the default, CenterFace).
    for backend in ["blazeface", "centerface"] {
        let mut p = pipeline(1, backend);
        for (w, h) in SIZES {
            let f = frame(w, h, 2);
            group.bench_function(
                BenchmarkId::new(format!("detect_{backend}_t1"), format!("{w}x{h}_2faces")),
                |b| b.iter(|| p.detect(black_box(&f)).unwrap()),
            );
        }
    }
    // precision int8: int8 CenterFace and gender, partly int8 emotion.
    let mut p = pipeline_at(1, "int8", "dnn");
    for (w, h) in SIZES {
        let f = frame(w, h, 5);
        group.bench_function(
            BenchmarkId::new("detect_dnn_int8_t1", format!("{w}x{h}")),
            |b| b.iter(|| p.detect(black_box(&f)).unwrap()),
        );
    }
    let f = frame(640, 480, 5);
    let faces = p.detect(&f).unwrap();
    let id = format!("640x480_{}faces", faces.len());
    group.bench_function(
        BenchmarkId::new("classify_gender_emotion_int8_t1", &id),
        |b| b.iter(|| p.classify(black_box(&f), &faces).unwrap()),
    );
    // Two threads: the int8 classifiers side by side, one thread each: by
    // default each with all faces in one batched call (emotion, the slower,
    // on the calling thread), with classifier_split "face" their faces
    // shared evenly between the two (emotion as two instances).
    let mut p2 = pipeline_at(2, "int8", "dnn");
    group.bench_function(
        BenchmarkId::new("classify_gender_emotion_int8_t2", &id),
        |b| b.iter(|| p2.classify(black_box(&f), &faces).unwrap()),
    );
    let by_face = RawConfig {
        classifier_split: "face".into(),
        ..p2.config().to_raw()
    };
    let mut p2_by_face = Pipeline::new(&Config::from_raw(by_face).unwrap()).unwrap();
    group.bench_function(
        BenchmarkId::new("classify_gender_emotion_int8_t2_by_face", &id),
        |b| b.iter(|| p2_by_face.classify(black_box(&f), &faces).unwrap()),
    );
    let mut int8_classifiers: Vec<Classifier> = [ClassifierTask::Gender, ClassifierTask::Emotion]
        .into_iter()
        .map(|task| {
            let name = format!("{}_int8", task.model_name());
            let (session, entry) = load_session(&manifest, &name, 1, &Cores::unpinned()).unwrap();
            Classifier::new(task, session, &entry, faces.len()).unwrap()
        })
        .collect();
    for classifier in &mut int8_classifiers {
        classifier.prepare(&f, &faces, true).unwrap();
        let name = format!("run_{}_int8", classifier.task().model_name());
        group.bench_function(BenchmarkId::new(name, &id), |b| {
            b.iter(|| classifier.run().unwrap())
        });
    }
    Cores::unpinned().pin_caller();
    let mut haar = pipeline(1, "haar");
    let f = frame(640, 480, 5);
    group.bench_function(BenchmarkId::new("detect_haar", "640x480"), |b| {
        b.iter(|| haar.detect(black_box(&f)).unwrap())
    });
    group.finish();
}

fn bench_end_to_end(c: &mut Criterion) {
    let mut group = c.benchmark_group("end_to_end");
    let mut p = pipeline(1, "dnn");
    let request = FrameRequest::default();
    for (w, h) in SIZES {
        for faces in [1, 2, 5] {
            let f = frame(w, h, faces);
            group.bench_function(
                BenchmarkId::new(format!("{w}x{h}"), format!("{faces}faces")),
                |b| b.iter(|| p.process(black_box(&f), &request).unwrap()),
            );
        }
    }
    let f = frame(640, 480, 2);
    let annotated = FrameRequest {
        annotated: true,
        ..Default::default()
    };
    group.bench_function(BenchmarkId::new("640x480_annotated", "2faces"), |b| {
        b.iter(|| p.process(black_box(&f), &annotated).unwrap())
    });
    group.finish();
}

fn median(values: &mut [Duration]) -> f64 {
    values.sort();
    values[values.len() / 2].as_secs_f64() * 1e3
}

/// Median per stage over many frames, for every case of the targets.
fn stage_summary() {
    println!("\nMedians over {SUMMARY_FRAMES} frames (ms): total = detect + classify + track (+ overhead)");
    println!(
        "{:<44} {:>6} {:>8} {:>9} {:>7} {:>8}",
        "case", "faces", "detect", "classify", "track", "total"
    );
    for (threads, precision, detector) in [
        (1, "fp32", "centerface"),
        (2, "fp32", "centerface"),
        (1, "int8", "centerface"),
        (2, "int8", "centerface"),
        (1, "fp32", "blazeface"),
        (2, "int8", "blazeface"),
    ] {
        let mut p = pipeline_at(threads, precision, detector);
        for (w, h) in SIZES {
            for faces in [1, 2, 5] {
                let f = frame(w, h, faces);
                for _ in 0..WARM_UP_FRAMES {
                    let _ = p.process(&f, &FrameRequest::default());
                }
                let (mut detect, mut classify, mut track, mut total) =
                    (vec![], vec![], vec![], vec![]);
                let mut found = 0;
                for _ in 0..SUMMARY_FRAMES {
                    let r = p.process(&f, &FrameRequest::default()).unwrap();
                    found = r.faces.len();
                    detect.push(r.timings.detect);
                    classify.push(r.timings.classify);
                    track.push(r.timings.track);
                    total.push(r.timings.total);
                }
                println!(
                    "{:<44} {:>6} {:>8.3} {:>9.3} {:>7.3} {:>8.3}",
                    format!("{w}x{h} {faces} faces, {threads} thr {precision} {detector}"),
                    found,
                    median(&mut detect),
                    median(&mut classify),
                    median(&mut track),
                    median(&mut total)
                );
            }
        }
    }
}

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench_frames(&mut criterion);
    bench_stages(&mut criterion);
    bench_end_to_end(&mut criterion);
    criterion.final_summary();
    // The per-stage table takes about two minutes: only without a filter,
    // or with the filter `summary`.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if filter.as_deref().is_none_or(|f| f == "summary") {
        stage_summary();
    }
}
