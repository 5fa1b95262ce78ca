//! Shutdown under load: SIGINT or SIGTERM while frames are flowing (and one
//! is being processed) ends the node with exit code 0 within 2 s.

mod ros_common;
use r2r::face_perception_msgs::msg::FaceArray;
use r2r::sensor_msgs::msg::Image;
use r2r::QosProfile;
use ros_common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Limit for the first answer (node start-up and DDS discovery included).
const FIRST_ANSWER: Duration = Duration::from_secs(20);
/// The limit from the signal to the exit.
const EXIT_LIMIT: Duration = Duration::from_secs(2);
/// Camera rate of the stream kept flowing during the shutdown.
const STREAM_HZ: f64 = 30.0;

fn stop_while_streaming(namespace: &str, signal: i32, signal_name: &str) {
    large_message_transport();
    let mut node = NodeProcess::start(namespace, &[]);
    let test = TestNode::new(&format!("{}_probe", namespace.trim_start_matches('/')));
    let faces = collect::<FaceArray>(
        &test,
        &format!("{namespace}/faces"),
        QosProfile::default().reliable(),
    );
    let publisher = test
        .node
        .lock()
        .unwrap()
        .create_publisher::<Image>(&format!("{namespace}/image"), QosProfile::sensor_data())
        .expect("publisher");

    // A 30 Hz stream of the group photo, until the test ends.
    let streaming = Arc::new(AtomicBool::new(true));
    let stream = {
        let streaming = streaming.clone();
        std::thread::spawn(move || {
            let mut msg = photo_message(
                "tests/fixtures/models/photos/group.jpg",
                "camera_optical",
                0,
                0,
            );
            while streaming.load(Ordering::Relaxed) {
                let (sec, nanosec) = now_stamp();
                msg.header.stamp = r2r::builtin_interfaces::msg::Time { sec, nanosec };
                publisher.publish(&msg).expect("publish");
                std::thread::sleep(Duration::from_secs_f64(1.0 / STREAM_HZ));
            }
        })
    };

    let flowing = wait_for(FIRST_ANSWER, || faces.lock().unwrap().len() >= 10);
    assert!(
        flowing,
        "fewer than 10 FaceArrays within {FIRST_ANSWER:?}; node log:\n{}",
        node.log_text()
    );
    let answered_before = faces.lock().unwrap().len();

    let (code, took) = node.stop_with(signal, EXIT_LIMIT + Duration::from_secs(3));
    streaming.store(false, Ordering::Relaxed);
    let _ = stream.join();
    eprintln!("{signal_name}: exit code {code:?} after {took:?} ({answered_before} frames answered before)");
    let log = node.log_text();
    assert_eq!(
        code,
        Some(0),
        "{signal_name}: exit code {code:?} after {took:?}; node log:\n{log}"
    );
    assert!(
        took <= EXIT_LIMIT,
        "{signal_name}: exit took {took:?} > {EXIT_LIMIT:?}; node log:\n{log}"
    );
    assert!(
        log.contains("shut down"),
        "no orderly shutdown logged:\n{log}"
    );
}

#[test]
fn sigint_while_frames_flow_exits_0_within_2_s() {
    stop_while_streaming("/shutdown_sigint", SIGINT, "SIGINT");
}

#[test]
fn sigterm_while_frames_flow_exits_0_within_2_s() {
    stop_while_streaming("/shutdown_sigterm", SIGTERM, "SIGTERM");
}
