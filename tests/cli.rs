//! Runs the `face_perception` binary and parses its JSON Lines.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn photo(name: &str) -> PathBuf {
    repo().join("tests/fixtures/models/photos").join(name)
}

fn analyze(args: &[&Path]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_face_perception"));
    command
        .arg("analyze")
        .arg("--models")
        .arg(repo().join("models"));
    command.args(args);
    command.output().expect("the binary runs")
}

fn json_lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

#[test]
fn astronaut_gives_one_female_happy_face_as_json() {
    let output = analyze(&[&photo("astronaut.jpg")]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines = json_lines(&output);
    assert_eq!(lines.len(), 1);
    let image = &lines[0];
    assert!(image["image"].as_str().unwrap().ends_with("astronaut.jpg"));
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(512), Some(512))
    );
    let faces = image["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 1);
    let face = &faces[0];
    assert!(face["id"].is_string());
    assert_eq!(face["box"].as_array().unwrap().len(), 4);
    assert!(face["score"].as_f64().unwrap() > 0.5);
    assert_eq!(face["gender"]["label"], "female");
    assert_eq!(face["emotion"]["label"], "happy");
    let emotions = face["emotion"]["probabilities"].as_object().unwrap();
    assert_eq!(emotions.len(), 7);
    let total: f64 = emotions.values().map(|v| v.as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-3, "{total}");
    assert!(face["gender"]["probabilities"]["female"].as_f64().unwrap() > 0.5);
    assert!(face.get("age").is_none());
    // CenterFace's five named landmarks, in the box, the subject's right eye
    // nearer the image's left edge.
    let landmarks = face["landmarks"].as_object().unwrap();
    let mut names: Vec<&str> = landmarks.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "left_eye",
            "mouth_left",
            "mouth_right",
            "nose_tip",
            "right_eye"
        ]
    );
    let b: Vec<f64> = face["box"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for (name, xy) in landmarks {
        let (x, y) = (xy[0].as_f64().unwrap(), xy[1].as_f64().unwrap());
        assert!(
            (b[0]..=b[0] + b[2]).contains(&x) && (b[1]..=b[1] + b[3]).contains(&y),
            "{name} at ({x}, {y}) outside the box {b:?}"
        );
    }
    assert!(landmarks["right_eye"][0].as_f64() < landmarks["left_eye"][0].as_f64());
    for stage in ["detect", "classify", "total"] {
        assert!(
            image["timings_ms"][stage].as_f64().unwrap() >= 0.0,
            "{stage}"
        );
    }
}

#[test]
fn keys_come_in_the_documented_order() {
    let output = analyze(&[&photo("astronaut.jpg")]);
    let line = String::from_utf8_lossy(&output.stdout);
    let position = |key: &str| {
        line.find(&format!("\"{key}\""))
            .unwrap_or_else(|| panic!("{key} missing: {line}"))
    };
    let order = [
        "image",
        "width",
        "height",
        "faces",
        "id",
        "box",
        "score",
        "landmarks",
        "gender",
        "emotion",
        "timings_ms",
    ];
    for pair in order.windows(2) {
        assert!(
            position(pair[0]) < position(pair[1]),
            "{} before {}",
            pair[0],
            pair[1]
        );
    }
}

#[test]
fn an_unreadable_input_is_reported_and_the_others_still_processed() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.jpg");
    std::fs::write(&broken, b"\xFF\xD8\xFF not really a jpeg").unwrap();
    let missing = dir.path().join("missing.png");
    let output = analyze(&[
        &broken,
        &photo("astronaut.jpg"),
        &missing,
        &photo("grace_hopper.jpg"),
    ]);
    assert!(!output.status.success(), "exit code must be non-zero");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("broken.jpg") && stderr.contains("missing.png"),
        "{stderr}"
    );
    let images: Vec<String> = json_lines(&output)
        .iter()
        .map(|v| v["image"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(images.len(), 2, "{images:?}");
    assert!(images[0].ends_with("astronaut.jpg") && images[1].ends_with("grace_hopper.jpg"));
}

#[test]
fn folders_options_and_annotated_output() {
    let out = tempfile::tempdir().unwrap();
    let photos = repo().join("tests/fixtures/models/photos");
    let output = Command::new(env!("CARGO_BIN_EXE_face_perception"))
        .args([
            "analyze",
            "--detector",
            "haar",
            "--threshold",
            "0.5",
            "--age",
            "--models",
        ])
        .arg(repo().join("models"))
        .arg("--annotated")
        .arg(out.path())
        .arg(&photos)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines = json_lines(&output);
    assert_eq!(lines.len(), 4, "the four photos of the folder");
    let astronaut = lines
        .iter()
        .find(|v| v["image"].as_str().unwrap().ends_with("astronaut.jpg"))
        .unwrap();
    assert!(astronaut["faces"][0]["age"]["years"].as_f64().unwrap() > 0.0);
    let written = std::fs::read_dir(out.path()).unwrap().count();
    assert_eq!(written, 4);
    assert!(out.path().join("astronaut_annotated.png").is_file());
}

#[test]
fn invalid_options_are_refused_with_the_field_name() {
    let output = Command::new(env!("CARGO_BIN_EXE_face_perception"))
        .args(["analyze", "--threshold", "1.5"])
        .arg(photo("astronaut.jpg"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("score_threshold"));
}

#[test]
fn saliency_images_for_each_classifier_and_face() {
    let out = tempfile::tempdir().unwrap();
    for method in ["guided", "gradcam"] {
        let dir = out.path().join(method);
        let output = analyze(&[
            Path::new("--saliency"),
            &dir,
            Path::new("--saliency-method"),
            Path::new(method),
            &photo("astronaut.jpg"),
        ]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        for task in ["emotion", "gender"] {
            let frame = image::open(dir.join(format!("astronaut_saliency_{task}.png"))).unwrap();
            assert_eq!(
                (frame.width(), frame.height()),
                (512, 512),
                "frame-sized overlay"
            );
            // The single face has id "0" (no tracking for photos).
            let face = image::open(dir.join(format!("astronaut_saliency_{task}_face0.png")))
                .unwrap()
                .to_luma8();
            let (min, max) = face
                .pixels()
                .fold((255u8, 0u8), |(lo, hi), p| (lo.min(p[0]), hi.max(p[0])));
            assert!(
                max > min + 50,
                "{method} {task}: the face map has contrast ({min}..{max})"
            );
        }
    }
    let refused = analyze(&[
        Path::new("--saliency"),
        out.path(),
        Path::new("--saliency-method"),
        Path::new("magic"),
        &photo("astronaut.jpg"),
    ]);
    assert!(!refused.status.success());
}

/// Frames of the generated test video.
const VIDEO_FRAMES: usize = 8;
/// Pixels the face moves right and down per frame.
const VIDEO_SHIFT: i32 = 4;
/// Frame rate written into the test video.
const VIDEO_FPS: f64 = 10.0;

/// Where the photo starts in the test video (left and top, pixels).
const VIDEO_START: i32 = 40;

/// Writes an MJPG AVI of [`VIDEO_FRAMES`] 640x480 frames: the astronaut photo
/// (320 px) on a grey canvas, from `start` right and down, moved by
/// [`VIDEO_SHIFT`] pixels each frame.
fn write_moving_face_video(path: &Path, start: i32) {
    use opencv::core::{Mat, Rect, Scalar, Size, CV_8UC3};
    use opencv::prelude::*;
    use opencv::videoio::VideoWriter;
    let photo = opencv::imgcodecs::imread(
        photo("astronaut.jpg").to_str().unwrap(),
        opencv::imgcodecs::IMREAD_COLOR,
    )
    .unwrap();
    let mut small = Mat::default();
    opencv::imgproc::resize(
        &photo,
        &mut small,
        Size::new(320, 320),
        0.0,
        0.0,
        opencv::imgproc::INTER_AREA,
    )
    .unwrap();
    let size = Size::new(640, 480);
    let fourcc = VideoWriter::fourcc('M', 'J', 'P', 'G').unwrap();
    let mut writer =
        VideoWriter::new(path.to_str().unwrap(), fourcc, VIDEO_FPS, size, true).unwrap();
    assert!(
        writer.is_opened().unwrap(),
        "OpenCV cannot write MJPG AVI here"
    );
    for k in 0..VIDEO_FRAMES as i32 {
        let mut canvas = Mat::new_size_with_default(size, CV_8UC3, Scalar::all(90.0)).unwrap();
        let offset = start + VIDEO_SHIFT * k;
        let mut target = canvas.roi_mut(Rect::new(offset, offset, 320, 320)).unwrap();
        small.copy_to(&mut target).unwrap();
        writer.write(&canvas).unwrap();
    }
    writer.release().unwrap();
}

#[test]
fn a_video_gives_one_line_per_frame_with_one_tracked_face() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("moving.avi");
    write_moving_face_video(&video, VIDEO_START);
    let out = dir.path().join("annotated");
    let saliency = dir.path().join("saliency");
    let started = std::time::Instant::now();
    let output = analyze(&[
        Path::new("--annotated"),
        &out,
        Path::new("--saliency"),
        &saliency,
        Path::new("--saliency-method"),
        Path::new("gradcam"),
        &video,
    ]);
    eprintln!("analyze on {VIDEO_FRAMES} frames: {:?}", started.elapsed());
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines = json_lines(&output);
    assert_eq!(lines.len(), VIDEO_FRAMES, "one line per frame");
    let mut ids = Vec::new();
    let mut lefts = Vec::new();
    for (k, line) in lines.iter().enumerate() {
        assert!(line["image"].as_str().unwrap().ends_with("moving.avi"));
        assert_eq!(line["frame"].as_u64(), Some(k as u64), "{line}");
        let time = line["time_s"].as_f64().unwrap();
        assert!(
            (time - k as f64 / VIDEO_FPS).abs() < 1e-3,
            "frame {k} at {time} s"
        );
        assert_eq!(
            (line["width"].as_u64(), line["height"].as_u64()),
            (Some(640), Some(480))
        );
        let faces = line["faces"].as_array().unwrap();
        assert_eq!(faces.len(), 1, "frame {k}: {line}");
        assert_eq!(faces[0]["gender"]["label"], "female", "frame {k}");
        assert_eq!(faces[0]["emotion"]["label"], "happy", "frame {k}");
        ids.push(faces[0]["id"].as_str().unwrap().to_string());
        lefts.push(faces[0]["box"][0].as_f64().unwrap());
    }
    assert!(ids.iter().all(|id| id == &ids[0]), "one track: {ids:?}");
    // The face really moves: the box follows the shift (within 3 pixels).
    let moved = lefts[VIDEO_FRAMES - 1] - lefts[0];
    let expected = f64::from(VIDEO_SHIFT) * (VIDEO_FRAMES - 1) as f64;
    assert!(
        (moved - expected).abs() < 3.0,
        "moved {moved}, expected {expected}"
    );
    // --annotated writes the annotated video, one frame per analysed frame.
    let annotated = out.join("moving_annotated.avi");
    let mut capture = opencv::videoio::VideoCapture::from_file(
        annotated.to_str().unwrap(),
        opencv::videoio::CAP_ANY,
    )
    .unwrap();
    let mut frame = opencv::core::Mat::default();
    let mut count = 0;
    while opencv::prelude::VideoCaptureTrait::read(&mut capture, &mut frame).unwrap() {
        count += 1;
    }
    assert_eq!(count, VIDEO_FRAMES, "{}", annotated.display());
    // --saliency writes each frame's images, named with its index.
    for k in [0, VIDEO_FRAMES - 1] {
        for task in ["emotion", "gender"] {
            let overlay = saliency.join(format!("moving_{k:06}_saliency_{task}.png"));
            assert_eq!(image::open(&overlay).unwrap().width(), 640);
            let face = format!("moving_{k:06}_saliency_{task}_face{}.png", ids[0]);
            assert!(saliency.join(&face).is_file(), "{face}");
        }
    }
}

#[test]
fn a_second_video_starts_a_fresh_tracker() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.avi");
    write_moving_face_video(&first, VIDEO_START);
    // The second video starts where the first ends.
    let second = dir.path().join("second.avi");
    let last = VIDEO_START + VIDEO_SHIFT * (VIDEO_FRAMES as i32 - 1);
    write_moving_face_video(&second, last);
    let output = analyze(&[&first, &second]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines = json_lines(&output);
    assert_eq!(lines.len(), 2 * VIDEO_FRAMES);
    let id = |line: &Value| line["faces"][0]["id"].as_str().unwrap().to_string();
    let (first_ids, second_ids) = lines.split_at(VIDEO_FRAMES);
    assert_eq!(second_ids[0]["frame"].as_u64(), Some(0));
    assert!(second_ids.iter().all(|line| id(line) == id(&second_ids[0])));
    // The second video's first face is where the first video's last one
    // was: one tracker across both videos would have continued its track.
    assert_ne!(
        id(&second_ids[0]),
        id(&first_ids[VIDEO_FRAMES - 1]),
        "a new track for a new video"
    );
}

#[test]
fn a_corrupt_video_is_reported_and_the_others_still_processed() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.avi");
    std::fs::write(&broken, b"RIFF\x10\x00\x00\x00AVI LIST not really a video").unwrap();
    let junk = dir.path().join("notes.xyz");
    std::fs::write(&junk, b"neither an image nor a video").unwrap();
    // A video with an extension the CLI does not know is found by probing.
    let unnamed = dir.path().join("recording.clip");
    let written = dir.path().join("recording.avi");
    write_moving_face_video(&written, VIDEO_START);
    std::fs::rename(&written, &unnamed).unwrap();
    let output = analyze(&[&broken, &junk, &unnamed, &photo("astronaut.jpg")]);
    assert!(!output.status.success(), "exit code must be non-zero");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("broken.avi") && stderr.contains("notes.xyz"),
        "{stderr}"
    );
    assert!(!stderr.contains("recording.clip"), "{stderr}");
    let lines = json_lines(&output);
    assert_eq!(lines.len(), VIDEO_FRAMES + 1, "{lines:?}");
    for (k, line) in lines[..VIDEO_FRAMES].iter().enumerate() {
        assert!(line["image"].as_str().unwrap().ends_with("recording.clip"));
        assert_eq!(line["frame"].as_u64(), Some(k as u64));
    }
    let photo_line = &lines[VIDEO_FRAMES];
    assert!(photo_line["image"]
        .as_str()
        .unwrap()
        .ends_with("astronaut.jpg"));
    assert!(photo_line.get("frame").is_none() && photo_line.get("time_s").is_none());
}
