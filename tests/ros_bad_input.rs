//! Malformed input over the real middleware: bad images interleaved with good
//! ones. The node must stay up, answer every good frame (matched by header
//! stamp) and count every bad one by kind in `/diagnostics`.
//!
//! The good frame is the 512x512 astronaut photo (786 kB as rgb8): the tests
//! use [`large_message_transport`] so that the middleware itself delivers it.

mod ros_common;
use r2r::diagnostic_msgs::msg::DiagnosticArray;
use r2r::face_perception_msgs::msg::FaceArray;
use r2r::sensor_msgs::msg::{CompressedImage, Image};
use r2r::std_msgs::msg::Header;
use r2r::QosProfile;
use ros_common::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Limit for the first answer (node start-up and DDS discovery included).
const FIRST_ANSWER: Duration = Duration::from_secs(20);
/// Pause after each frame: longer than one inference, so the node's
/// one-frame slot never replaces an unprocessed frame.
const PAUSE: Duration = Duration::from_millis(300);
/// Time for the last answers and the next `/diagnostics` period.
const SETTLE: Duration = Duration::from_secs(5);
const ASTRONAUT: &str = "tests/fixtures/models/photos/astronaut.jpg";

fn header_now(frame_id: &str) -> Header {
    let (sec, nanosec) = now_stamp();
    Header {
        stamp: r2r::builtin_interfaces::msg::Time { sec, nanosec },
        frame_id: frame_id.to_string(),
    }
}

fn raw(width: u32, height: u32, encoding: &str, step: u32, data_len: usize) -> Image {
    Image {
        header: header_now("camera_optical"),
        height,
        width,
        encoding: encoding.to_string(),
        is_bigendian: 0,
        step,
        data: vec![128; data_len],
    }
}

/// One malformed raw image per kind the node must count, with the
/// `FrameError::kind` it must be counted under.
fn malformed_raw_images() -> Vec<(&'static str, Image)> {
    vec![
        // step 64 < 64 px * 3 bytes
        ("step_too_small", raw(64, 64, "rgb8", 64, 64 * 64 * 3)),
        // height * step = 12288 bytes needed, 100 sent
        ("buffer_too_short", raw(64, 64, "rgb8", 192, 100)),
        (
            "unsupported_encoding",
            raw(64, 64, "bayer_foo", 64, 64 * 64),
        ),
        ("empty_image", raw(0, 0, "rgb8", 0, 0)),
        // 400 megapixels announced, 1 kB sent: refused before any allocation
        ("too_many_pixels", raw(20_000, 20_000, "rgb8", 60_000, 1000)),
    ]
}

/// The good frame: the astronaut photo with a fresh stamp.
fn astronaut() -> Image {
    let mut msg = photo_message(ASTRONAUT, "camera_optical", 0, 0);
    msg.header = header_now("camera_optical");
    msg
}

type Store<T> = std::sync::Arc<std::sync::Mutex<Vec<(Instant, T)>>>;

fn answered_stamps(faces: &Store<FaceArray>) -> BTreeSet<(i32, u32)> {
    faces
        .lock()
        .unwrap()
        .iter()
        .map(|(_, f)| stamp_key(&f.header.stamp))
        .collect()
}

/// Publishes `publish_good` until the node answers once (start-up, discovery).
fn warm_up(node: &NodeProcess, faces: &Store<FaceArray>, mut publish_good: impl FnMut()) {
    let answered = wait_for(FIRST_ANSWER, || {
        publish_good();
        std::thread::sleep(Duration::from_millis(200));
        !faces.lock().unwrap().is_empty()
    });
    assert!(
        answered,
        "no FaceArray within {FIRST_ANSWER:?}; node log:\n{}",
        node.log_text()
    );
}

/// Checks the outcome of a run: the node is alive, every good frame was
/// answered, no bad one was, and `/diagnostics` counts each bad kind.
fn check(
    node: &mut NodeProcess,
    namespace: &str,
    faces: &Store<FaceArray>,
    diagnostics: &Store<DiagnosticArray>,
    good: &BTreeSet<(i32, u32)>,
    bad: &BTreeSet<(i32, u32)>,
    expected_kinds: &[&str],
) {
    let all_answered = wait_for(SETTLE, || good.is_subset(&answered_stamps(faces)));
    let answered = answered_stamps(faces);
    assert!(
        node.child.try_wait().expect("wait").is_none(),
        "the node exited; log:\n{}",
        node.log_text()
    );

    // A status made after the last frame was handled.
    let after = Instant::now();
    assert!(
        wait_for(SETTLE, || latest_status(
            diagnostics,
            namespace,
            Some(after)
        )
        .is_some()),
        "no /diagnostics from {namespace}"
    );
    let status = latest_status(diagnostics, namespace, Some(after)).unwrap();
    let value = |key: &str| {
        status_value(&status, key)
            .unwrap_or("(missing)")
            .to_string()
    };
    eprintln!(
        "{namespace}: received {} processed {} overrun drops {} stale drops {} bad_input_total {} ({:?})",
        value("frames_received"),
        value("frames_processed"),
        value("frames_dropped_overrun"),
        value("frames_dropped_stale"),
        value("bad_input_total"),
        status.values.iter().filter(|kv| kv.key.starts_with("bad_input.")).map(|kv| format!("{}={}", kv.key, kv.value)).collect::<Vec<_>>()
    );

    let missing: Vec<_> = good.difference(&answered).collect();
    assert!(
        all_answered,
        "{} of {} good frames unanswered: {missing:?}; diagnostics {:?}; node log:\n{}",
        missing.len(),
        good.len(),
        status.values,
        node.log_text()
    );
    let wrongly: Vec<_> = bad.intersection(&answered).collect();
    assert!(wrongly.is_empty(), "bad frames answered: {wrongly:?}");
    for kind in expected_kinds {
        assert_eq!(
            value(&format!("bad_input.{kind}")),
            "1",
            "bad_input.{kind}; status {:?}",
            status.values
        );
    }
    assert_eq!(
        value("bad_input_total"),
        expected_kinds.len().to_string(),
        "status {:?}",
        status.values
    );
    assert!(
        node.child.try_wait().expect("wait").is_none(),
        "the node exited; log:\n{}",
        node.log_text()
    );
}

#[test]
fn malformed_raw_images_are_counted_and_good_ones_answered() {
    const NS: &str = "/bad_input_raw";
    large_message_transport();
    let mut node = NodeProcess::start(NS, &[]);
    let test = TestNode::new("bad_input_raw_probe");
    let faces = collect::<FaceArray>(
        &test,
        &format!("{NS}/faces"),
        QosProfile::default().reliable(),
    );
    let diagnostics = collect::<DiagnosticArray>(&test, "/diagnostics", QosProfile::default());
    let publisher = test
        .node
        .lock()
        .unwrap()
        .create_publisher::<Image>(&format!("{NS}/image"), QosProfile::default().reliable())
        .expect("publisher");

    warm_up(&node, &faces, || {
        publisher.publish(&astronaut()).expect("publish")
    });
    std::thread::sleep(PAUSE);

    let (mut good, mut bad) = (BTreeSet::new(), BTreeSet::new());
    let mut kinds = Vec::new();
    for (kind, msg) in malformed_raw_images() {
        let ok = astronaut();
        good.insert(stamp_key(&ok.header.stamp));
        publisher.publish(&ok).expect("publish");
        std::thread::sleep(PAUSE);
        let mut msg = msg;
        msg.header = header_now("camera_optical");
        bad.insert(stamp_key(&msg.header.stamp));
        publisher.publish(&msg).expect("publish");
        kinds.push(kind);
        std::thread::sleep(PAUSE);
    }
    let ok = astronaut();
    good.insert(stamp_key(&ok.header.stamp));
    publisher.publish(&ok).expect("publish");

    check(&mut node, NS, &faces, &diagnostics, &good, &bad, &kinds);
}

#[test]
fn corrupt_jpeg_on_the_compressed_input_is_counted_and_good_ones_answered() {
    const NS: &str = "/bad_input_compressed";
    large_message_transport();
    let mut node = NodeProcess::start(NS, &["-p", "input_transport:=compressed"]);
    let test = TestNode::new("bad_input_compressed_probe");
    let faces = collect::<FaceArray>(
        &test,
        &format!("{NS}/faces"),
        QosProfile::default().reliable(),
    );
    let diagnostics = collect::<DiagnosticArray>(&test, "/diagnostics", QosProfile::default());
    let publisher = test
        .node
        .lock()
        .unwrap()
        .create_publisher::<CompressedImage>(
            &format!("{NS}/image/compressed"),
            QosProfile::default().reliable(),
        )
        .expect("publisher");
    let jpeg = std::fs::read(repo_path(ASTRONAUT)).expect("fixture photo");
    let compressed = |data: Vec<u8>| CompressedImage {
        header: header_now("camera_optical"),
        format: "jpeg".into(),
        data,
    };
    // A JPEG start-of-image and APP0 marker followed by garbage.
    let mut corrupt = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10];
    corrupt.extend((0..4000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));

    warm_up(&node, &faces, || {
        publisher
            .publish(&compressed(jpeg.clone()))
            .expect("publish")
    });
    std::thread::sleep(PAUSE);

    let (mut good, mut bad) = (BTreeSet::new(), BTreeSet::new());
    for data in [jpeg.clone(), corrupt, jpeg] {
        let msg = compressed(data);
        let is_good = msg.data.len() > 10_000;
        if is_good { &mut good } else { &mut bad }.insert(stamp_key(&msg.header.stamp));
        publisher.publish(&msg).expect("publish");
        std::thread::sleep(PAUSE);
    }

    check(
        &mut node,
        NS,
        &faces,
        &diagnostics,
        &good,
        &bad,
        &["decode_failed"],
    );
}
