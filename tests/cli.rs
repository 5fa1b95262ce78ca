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
