//! `saliency_max_rate` over the real middleware: while both saliency topics
//! are watched, saliency images come at most at that rate and `faces` keeps
//! the input rate; at 0, every processed frame gets its saliency images.

mod ros_common;
use r2r::face_perception_msgs::msg::FaceArray;
use r2r::sensor_msgs::msg::Image;
use r2r::{ParameterValue, QosProfile};
use ros_common::*;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NAMESPACE: &str = "/saliency_rate";
/// Limit for the first answer (node start-up, discovery, graph building).
const FIRST_ANSWER: Duration = Duration::from_secs(30);
/// Input rate of the measured windows.
const INPUT_HZ: f64 = 10.0;
/// Length of each measured window.
const WINDOW: Duration = Duration::from_secs(5);
/// The limit set for the first window.
const SALIENCY_HZ: f64 = 2.0;

type Store<T> = Arc<Mutex<Vec<(Instant, T)>>>;

fn stamps<T>(store: &Store<T>, header: impl Fn(&T) -> (i32, u32)) -> HashSet<(i32, u32)> {
    store
        .lock()
        .unwrap()
        .iter()
        .map(|(_, m)| header(m))
        .collect()
}

/// Publishes the astronaut at `INPUT_HZ` for `WINDOW`, then waits for the
/// node to drain; the stamps sent.
fn publish_window(publisher: &r2r::Publisher<Image>) -> HashSet<(i32, u32)> {
    let mut sent = HashSet::new();
    let period = Duration::from_secs_f64(1.0 / INPUT_HZ);
    let start = Instant::now();
    let mut next = start;
    while start.elapsed() < WINDOW {
        let msg = astronaut_now();
        publisher.publish(&msg).expect("publish");
        sent.insert(stamp_key(&msg.header.stamp));
        next += period;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    std::thread::sleep(Duration::from_millis(500));
    sent
}

#[test]
fn saliency_images_are_rate_limited_and_faces_keep_the_input_rate() {
    let rate = format!("saliency_max_rate:={SALIENCY_HZ:.1}");
    let node = NodeProcess::start(NAMESPACE, &["-p", &rate]);
    let test = TestNode::new("saliency_rate_probe");
    let faces = collect::<FaceArray>(
        &test,
        &format!("{NAMESPACE}/faces"),
        QosProfile::default().reliable(),
    );
    let emotion = collect::<Image>(
        &test,
        &format!("{NAMESPACE}/saliency/emotion"),
        QosProfile::default(),
    );
    let gender = collect::<Image>(
        &test,
        &format!("{NAMESPACE}/saliency/gender"),
        QosProfile::default(),
    );
    let publisher = test
        .node
        .lock()
        .unwrap()
        .create_publisher::<Image>(&format!("{NAMESPACE}/image"), QosProfile::sensor_data())
        .expect("publisher");

    // Warm up until both saliency topics have answered (graphs built).
    let warm = wait_for(FIRST_ANSWER, || {
        let msg = astronaut_now();
        publisher.publish(&msg).expect("publish");
        std::thread::sleep(Duration::from_millis(100));
        !emotion.lock().unwrap().is_empty() && !gender.lock().unwrap().is_empty()
    });
    assert!(warm, "no saliency images; node log:\n{}", node.log_text());

    let face_stamps = |s: &Store<FaceArray>| stamps(s, |m| stamp_key(&m.header.stamp));
    let image_stamps = |s: &Store<Image>| stamps(s, |m| stamp_key(&m.header.stamp));

    // Window 1: limited to SALIENCY_HZ.
    let sent = publish_window(&publisher);
    let answered = face_stamps(&faces).intersection(&sent).count();
    let most = (SALIENCY_HZ * WINDOW.as_secs_f64()).ceil() as usize + 1;
    for (topic, store) in [("emotion", &emotion), ("gender", &gender)] {
        let explained: HashSet<_> = image_stamps(store).intersection(&sent).copied().collect();
        eprintln!(
            "limit {SALIENCY_HZ} Hz: sent {}, faces {answered}, saliency/{topic} {}",
            sent.len(),
            explained.len()
        );
        assert!(
            (2..=most).contains(&explained.len()),
            "saliency/{topic}: {} images in {WINDOW:?} at a limit of {SALIENCY_HZ} Hz",
            explained.len()
        );
        // Each saliency image belongs to a frame whose faces were published.
        let published = face_stamps(&faces);
        assert!(explained.iter().all(|s| published.contains(s)));
    }
    // faces keeps up with the input (90 %: DDS and a shared machine).
    assert!(
        answered as f64 >= 0.9 * sent.len() as f64,
        "faces for {answered} of {} frames; node log:\n{}",
        sent.len(),
        node.log_text()
    );

    // Window 2: no limit, every processed frame is explained.
    let params = ParamClient::new(&test, NAMESPACE);
    let (ok, reason) = params.set("saliency_max_rate", ParameterValue::Double(0.0));
    assert!(ok, "saliency_max_rate := 0.0 refused: {reason}");
    std::thread::sleep(Duration::from_millis(300));
    let sent = publish_window(&publisher);
    let answered: HashSet<_> = face_stamps(&faces).intersection(&sent).copied().collect();
    for (topic, store) in [("emotion", &emotion), ("gender", &gender)] {
        let explained: HashSet<_> = image_stamps(store).intersection(&sent).copied().collect();
        eprintln!(
            "no limit: sent {}, faces {}, saliency/{topic} {}",
            sent.len(),
            answered.len(),
            explained.len()
        );
        assert!(
            explained.len() as f64 >= 0.9 * answered.len() as f64 && answered.len() >= 10,
            "saliency/{topic}: {} images for {} answered frames",
            explained.len(),
            answered.len()
        );
    }
}
