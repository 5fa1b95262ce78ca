//! Load over the real middleware: 640x480 frames (group.jpg) at 30 Hz for
//! 60 s, then at 120 Hz for 10 s.
//!
//! - 30 Hz: output at 29 Hz or more; latency (FaceArray received minus frame
//!   published, matched by stamp) not growing: the median of the last 10 s at
//!   most [`LATENCY_GROWTH_FACTOR`] times the median of the first 10 s plus
//!   [`LATENCY_GROWTH_SLACK`]; RSS at 60 s within 10% of RSS at 10 s.
//! - 120 Hz: the age of processed frames (now minus stamp when processing
//!   starts, `frame_age_max_s` of every `/diagnostics` period) stays below 2
//!   frame periods plus the processing time (`latency_ms.total`).
//! - 1000 Hz for 2 s, well beyond what inference can take: overrun drops are
//!   counted (`frames_dropped_overrun`). At 120 Hz the node may or may not keep
//!   up (a 640x480 frame takes about 6 ms at int8, close to the 8.3 ms period),
//!   so drops are not required there; the burst makes sure they occur.
//! - Every frame received is accounted for: at the end, with nothing in flight,
//!   `frames_received` equals processed + dropped (overrun, stale) + bad
//!   inputs + pipeline errors.
//!
//! One test of about 80 s: the issue asks for 60 s of steady state. The
//! numbers are printed (`--nocapture`).

mod ros_common;
use r2r::diagnostic_msgs::msg::{DiagnosticArray, DiagnosticStatus};
use r2r::face_perception_msgs::msg::FaceArray;
use r2r::sensor_msgs::msg::Image;
use r2r::QosProfile;
use ros_common::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NS: &str = "/load";
const PHOTO: &str = "tests/fixtures/models/photos/group.jpg";
/// Limit for the first answer (node start-up and DDS discovery included).
const FIRST_ANSWER: Duration = Duration::from_secs(20);
const STEADY_HZ: f64 = 30.0;
const STEADY: Duration = Duration::from_secs(60);
const MIN_OUTPUT_HZ: f64 = 29.0;
/// The windows whose median latencies are compared, and where RSS is taken.
const WINDOW: Duration = Duration::from_secs(10);
const LATENCY_GROWTH_FACTOR: f64 = 1.5;
const LATENCY_GROWTH_SLACK: Duration = Duration::from_millis(5);
const RSS_TOLERANCE: f64 = 0.10;
const OVERLOAD_HZ: f64 = 120.0;
const OVERLOAD: Duration = Duration::from_secs(10);
const BURST_HZ: f64 = 1000.0;
const BURST: Duration = Duration::from_secs(2);
/// No frames between the 120 Hz phase and the burst: at least one
/// `/diagnostics` period, so the counters before the burst are taken with
/// nothing in flight.
const GAP: Duration = Duration::from_millis(1500);
/// Time for the last answers and one more `/diagnostics` period.
const TAIL: Duration = Duration::from_millis(2500);

type Store<T> = Arc<Mutex<Vec<(Instant, T)>>>;

/// Publishes `msg` at `hz` for `duration`, each frame with a fresh stamp,
/// recording when each stamp was published; calls `each_second` once a second.
fn stream(
    publisher: &r2r::Publisher<Image>,
    msg: &mut Image,
    hz: f64,
    duration: Duration,
    published: &mut HashMap<(i32, u32), Instant>,
    mut each_second: impl FnMut(Duration),
) -> u64 {
    let start = Instant::now();
    let mut sent = 0u64;
    let mut next_second = Duration::from_secs(1);
    while start.elapsed() < duration {
        let (sec, nanosec) = now_stamp();
        msg.header.stamp = r2r::builtin_interfaces::msg::Time { sec, nanosec };
        published.insert((sec, nanosec), Instant::now());
        publisher.publish(msg).expect("publish");
        sent += 1;
        if start.elapsed() >= next_second {
            each_second(start.elapsed());
            next_second += Duration::from_secs(1);
        }
        let next = start + Duration::from_secs_f64(sent as f64 / hz);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    sent
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

fn number(status: &DiagnosticStatus, key: &str) -> f64 {
    status_value(status, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The node's last status received before `instant`.
fn status_before(store: &Store<DiagnosticArray>, instant: Instant) -> Option<DiagnosticStatus> {
    store
        .lock()
        .unwrap()
        .iter()
        .rev()
        .filter(|(t, _)| *t < instant)
        .find_map(|(_, a)| node_status(a, NS).cloned())
}

/// The node's first status received after `instant`.
fn status_after(store: &Store<DiagnosticArray>, instant: Instant) -> Option<DiagnosticStatus> {
    store
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t >= instant)
        .find_map(|(_, a)| node_status(a, NS).cloned())
}

/// The node's statuses received in `[from, to)`.
fn statuses(store: &Store<DiagnosticArray>, from: Instant, to: Instant) -> Vec<DiagnosticStatus> {
    store
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .filter_map(|(_, a)| node_status(a, NS).cloned())
        .collect()
}

#[test]
fn load_30_hz_for_60_s_then_120_hz_for_10_s() {
    large_message_transport();
    let node = NodeProcess::start(NS, &[]);
    let test = TestNode::new("load_probe");
    let faces = collect::<FaceArray>(
        &test,
        &format!("{NS}/faces"),
        QosProfile::default().reliable().keep_last(100),
    );
    let diagnostics = collect::<DiagnosticArray>(&test, "/diagnostics", QosProfile::default());
    let publisher = test
        .node
        .lock()
        .unwrap()
        .create_publisher::<Image>(&format!("{NS}/image"), QosProfile::sensor_data())
        .expect("publisher");
    let mut msg = photo_message(PHOTO, "camera_optical", 0, 0);
    assert_eq!((msg.width, msg.height), (640, 480));

    let mut published = HashMap::new();
    let answered = wait_for(FIRST_ANSWER, || {
        stream(
            &publisher,
            &mut msg,
            10.0,
            Duration::from_millis(100),
            &mut published,
            |_| {},
        );
        !faces.lock().unwrap().is_empty()
    });
    assert!(
        answered,
        "no FaceArray within {FIRST_ANSWER:?}; node log:\n{}",
        node.log_text()
    );
    // A little steady stream before measuring: the node's first frames warm up.
    stream(
        &publisher,
        &mut msg,
        STEADY_HZ,
        Duration::from_secs(2),
        &mut published,
        |_| {},
    );
    published.clear();

    // Phase 1: 30 Hz for 60 s.
    let steady_start = Instant::now();
    let mut rss = Vec::new();
    let steady_sent = stream(
        &publisher,
        &mut msg,
        STEADY_HZ,
        STEADY,
        &mut published,
        |t| rss.push((t, node.rss_kib())),
    );
    let steady_end = Instant::now();
    let steady_published = published.clone();
    published.clear();

    // Phase 2: 120 Hz for 10 s.
    let overload_sent = stream(
        &publisher,
        &mut msg,
        OVERLOAD_HZ,
        OVERLOAD,
        &mut published,
        |_| {},
    );
    let overload_end = Instant::now();
    let overload_published = std::mem::take(&mut published);
    std::thread::sleep(GAP);

    // Phase 3: a burst at 1000 Hz for 2 s.
    let burst_start = Instant::now();
    let burst_sent = stream(
        &publisher,
        &mut msg,
        BURST_HZ,
        BURST,
        &mut published,
        |_| {},
    );
    std::thread::sleep(TAIL);

    // --- Phase 1 numbers.
    let received: HashMap<(i32, u32), Instant> = faces
        .lock()
        .unwrap()
        .iter()
        .map(|(t, f)| (stamp_key(&f.header.stamp), *t))
        .collect();
    let steady_secs = (steady_end - steady_start).as_secs_f64();
    let latencies: Vec<(f64, f64)> = steady_published
        .iter()
        .filter_map(|(stamp, sent)| {
            let got = received.get(stamp)?;
            Some((
                (*sent - steady_start).as_secs_f64(),
                (*got - *sent).as_secs_f64(),
            ))
        })
        .collect();
    let output_hz = latencies.len() as f64 / steady_secs;
    let window = WINDOW.as_secs_f64();
    let first = median(
        latencies
            .iter()
            .filter(|(t, _)| *t < window)
            .map(|(_, l)| *l)
            .collect(),
    );
    let last = median(
        latencies
            .iter()
            .filter(|(t, _)| *t >= steady_secs - window)
            .map(|(_, l)| *l)
            .collect(),
    );
    let all: Vec<f64> = latencies.iter().map(|(_, l)| *l).collect();
    let rss_at = |secs: u64| {
        rss.iter()
            .find(|(t, _)| t.as_secs() >= secs)
            .and_then(|(_, r)| *r)
    };
    let (rss_10, rss_60) = (rss_at(WINDOW.as_secs()), rss.last().and_then(|(_, r)| *r));
    let steady_status = statuses(
        &diagnostics,
        steady_start + Duration::from_secs(2),
        steady_end,
    );
    // Cumulative counters: phase 1 from the last status before it to the last
    // one within it (up to 1 s short), phase 2 from the first status after
    // phase 1 (which holds up to 1 s of phase 2) to the last one.
    let before_steady = status_before(&diagnostics, steady_start);
    let end_of_steady = status_before(&diagnostics, steady_end);
    let start_of_overload = status_after(&diagnostics, steady_end);
    let counter_delta = |key: &str, a: &Option<DiagnosticStatus>, b: &Option<DiagnosticStatus>| {
        let value =
            |s: &Option<DiagnosticStatus>| s.as_ref().map(|s| number(s, key)).unwrap_or(0.0);
        value(b) - value(a)
    };
    eprintln!(
        "== 30 Hz for {steady_secs:.1} s: {steady_sent} frames sent, {} answered",
        latencies.len()
    );
    eprintln!("   output rate {output_hz:.2} Hz (limit >= {MIN_OUTPUT_HZ})");
    eprintln!(
        "   latency publish->FaceArray: median {:.1} ms, p95 {:.1} ms, max {:.1} ms; first 10 s median {:.1} ms, last 10 s median {:.1} ms",
        median(all.clone()) * 1e3,
        percentile(all.clone(), 0.95) * 1e3,
        percentile(all, 1.0) * 1e3,
        first * 1e3,
        last * 1e3
    );
    eprintln!(
        "   node: pipeline total median {:.1} ms (per /diagnostics period), input {:.1} Hz, output {:.1} Hz",
        median(steady_status.iter().map(|s| number(s, "latency_ms.total")).collect()),
        median(steady_status.iter().map(|s| number(s, "input_rate_hz")).collect()),
        median(steady_status.iter().map(|s| number(s, "output_rate_hz")).collect()),
    );
    eprintln!(
        "   dropped: overrun {}, stale {}",
        counter_delta("frames_dropped_overrun", &before_steady, &end_of_steady),
        counter_delta("frames_dropped_stale", &before_steady, &end_of_steady)
    );
    eprintln!("   RSS: {rss_10:?} KiB at 10 s, {rss_60:?} KiB at 60 s");

    // --- Phase 2 numbers.
    let overload_status = statuses(
        &diagnostics,
        steady_end + Duration::from_millis(1100),
        overload_end + Duration::from_millis(1100),
    );
    let after_overload = status_before(&diagnostics, burst_start);
    let period = 1.0 / OVERLOAD_HZ;
    let processing_ms = median(
        overload_status
            .iter()
            .map(|s| number(s, "latency_ms.total"))
            .collect(),
    );
    let age_bound = 2.0 * period + processing_ms / 1e3;
    let ages: Vec<f64> = overload_status
        .iter()
        .map(|s| number(s, "frame_age_max_s"))
        .collect();
    let out_ages: Vec<f64> = overload_published
        .iter()
        .filter_map(|(stamp, sent)| received.get(stamp).map(|got| (*got - *sent).as_secs_f64()))
        .collect();
    let overrun = counter_delta(
        "frames_dropped_overrun",
        &start_of_overload,
        &after_overload,
    );
    eprintln!(
        "== 120 Hz for {:.1} s: {overload_sent} frames sent, {} answered ({:.1} Hz)",
        OVERLOAD.as_secs_f64(),
        out_ages.len(),
        out_ages.len() as f64 / OVERLOAD.as_secs_f64()
    );
    eprintln!(
        "   frame_age_max_s per period: {:?} s; bound 2 x {:.1} ms + {processing_ms:.1} ms = {:.1} ms",
        ages.iter().map(|a| format!("{:.4}", a)).collect::<Vec<_>>(),
        period * 1e3,
        age_bound * 1e3
    );
    eprintln!(
        "   publish->FaceArray: median {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        median(out_ages.clone()) * 1e3,
        percentile(out_ages.clone(), 0.95) * 1e3,
        percentile(out_ages, 1.0) * 1e3
    );
    eprintln!(
        "   dropped: overrun {overrun}, stale {}; input rate per period {:?} Hz",
        counter_delta("frames_dropped_stale", &start_of_overload, &after_overload),
        overload_status
            .iter()
            .map(|s| number(s, "input_rate_hz"))
            .collect::<Vec<_>>()
    );

    // --- Phase 3 numbers; the accounting over the whole run.
    let last_status = latest_status(&diagnostics, NS, None);
    let burst_overrun = counter_delta("frames_dropped_overrun", &after_overload, &last_status);
    let burst_processed = counter_delta("frames_processed", &after_overload, &last_status);
    let total = |key: &str| {
        last_status
            .as_ref()
            .map(|s| number(s, key))
            .unwrap_or(f64::NAN)
    };
    let accounted = total("frames_processed")
        + total("frames_dropped_overrun")
        + total("frames_dropped_stale")
        + total("bad_input_total")
        + total("pipeline_errors");
    eprintln!(
        "== {BURST_HZ} Hz for {:.1} s: {burst_sent} frames sent, {} received, {burst_processed} processed, overrun drops {burst_overrun}",
        BURST.as_secs_f64(),
        counter_delta("frames_received", &after_overload, &last_status),
    );
    eprintln!(
        "== whole run: frames_received {}, processed + dropped + bad + errors {accounted}",
        total("frames_received")
    );

    // --- Checks.
    let log = node.log_text();
    assert!(
        output_hz >= MIN_OUTPUT_HZ,
        "output {output_hz:.2} Hz < {MIN_OUTPUT_HZ} Hz at {STEADY_HZ} Hz input"
    );
    assert!(
        last <= first * LATENCY_GROWTH_FACTOR + LATENCY_GROWTH_SLACK.as_secs_f64(),
        "latency grows: median {:.1} ms in the first 10 s, {:.1} ms in the last 10 s",
        first * 1e3,
        last * 1e3
    );
    let (rss_10, rss_60) = (rss_10.expect("RSS at 10 s"), rss_60.expect("RSS at 60 s"));
    let change = (rss_60 as f64 - rss_10 as f64) / rss_10 as f64;
    assert!(
        change.abs() <= RSS_TOLERANCE,
        "RSS {rss_10} KiB at 10 s, {rss_60} KiB at 60 s ({:+.1}%)",
        change * 100.0
    );
    assert!(
        ages.len() >= 5,
        "too few /diagnostics during the 120 Hz phase: {}",
        ages.len()
    );
    assert!(
        processing_ms.is_finite(),
        "no latency_ms.total in /diagnostics"
    );
    for age in &ages {
        assert!(
            *age < age_bound,
            "processed frames {age:.4} s old at 120 Hz, bound {age_bound:.4} s; log:\n{log}"
        );
    }
    assert!(
        burst_overrun > 0.0,
        "no overrun drops counted at {BURST_HZ} Hz ({burst_processed} frames processed)"
    );
    assert!(
        burst_processed > 0.0,
        "no frame processed during the {BURST_HZ} Hz burst"
    );
    assert_eq!(
        total("frames_received"),
        accounted,
        "frames received but neither processed nor counted as dropped, bad or failed"
    );
}
