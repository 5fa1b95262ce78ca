//! Cross-client check: an rclpy node (tests/rclpy_client.py, the project's
//! Python ROS 2) publishes the astronaut photo to `face_perception_node` and
//! must receive every output topic: faces, annotated_image, saliency/emotion,
//! saliency/gender and the node's status on /diagnostics.

mod ros_common;
use ros_common::*;
use std::process::Command;
use std::time::Duration;

/// What the Python client waits for at most (node start-up included).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(40);

#[test]
fn rclpy_client_receives_every_output_topic() {
    const NS: &str = "/rclpy_check";
    large_message_transport();
    let node = NodeProcess::start(NS, &[]);

    // The photo as packed rgb8 bytes, so the client needs no image library.
    let photo = photo_message(
        "tests/fixtures/models/photos/astronaut.jpg",
        "camera_optical",
        0,
        0,
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let raw = dir.path().join("astronaut.rgb");
    std::fs::write(&raw, &photo.data).expect("raw image");

    let python = repo_path(".cache/venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run `make setup`",
        python.display()
    );
    // The environment of scripts/env.sh is inherited; the domain and the
    // transport profile are this test's.
    let output = Command::new(&python)
        .arg(repo_path("tests/rclpy_client.py"))
        .args([
            "--namespace",
            NS,
            "--width",
            &photo.width.to_string(),
            "--height",
            &photo.height.to_string(),
        ])
        .arg("--raw")
        .arg(&raw)
        .args(["--timeout", &CLIENT_TIMEOUT.as_secs().to_string()])
        .env("ROS_DOMAIN_ID", domain_id().to_string())
        .output()
        .expect("run the rclpy client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(
        output.status.success(),
        "rclpy client failed ({}):\n{stdout}{stderr}\nnode log:\n{}",
        output.status,
        node.log_text()
    );
}
