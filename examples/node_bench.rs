//! `make bench`, node part: measures `face_perception_node` over the real
//! middleware (Fast DDS on loopback).
//!
//! - start-up to first result: from spawning the process to the first FaceArray
//!   (frames are published from the moment the node subscribes);
//! - node overhead: publish-to-FaceArray latency minus the node's own
//!   processing time (conversion + pipeline, `latency_ms.total` of
//!   /diagnostics), medians over frames sent at 10 Hz (no queueing);
//! - steady-state RSS of the node after the run.
//!
//! Usage: node_bench [SECONDS]   (expects scripts/env.sh sourced; the
//! environment variables NODE_BENCH_THREADS and NODE_BENCH_PIN set the node's
//! `intra_op_threads` and `pin_threads`)

use futures::StreamExt;
use r2r::diagnostic_msgs::msg::DiagnosticArray;
use r2r::face_perception_msgs::msg::FaceArray;
use r2r::sensor_msgs::msg::Image;
use r2r::QosProfile;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20.0);
    let domain = 150 + std::process::id() % 80;
    std::env::set_var("ROS_DOMAIN_ID", domain.to_string());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let photo = image::open(root.join("tests/fixtures/models/photos/group.jpg"))?.to_rgb8();
    let (width, height) = photo.dimensions();
    let data = photo.into_raw();

    let ctx = r2r::Context::create()?;
    let mut node = r2r::Node::create(ctx, "node_bench", "")?;
    let publisher = node.create_publisher::<Image>("/bench/image", QosProfile::sensor_data())?;
    let mut faces =
        node.subscribe::<FaceArray>("/bench/faces", QosProfile::default().reliable())?;
    let mut diagnostics =
        node.subscribe::<DiagnosticArray>("/diagnostics", QosProfile::default())?;
    let sent_at: Arc<Mutex<HashMap<(i32, u32), Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<(Instant, f64)>>> = Arc::default();
    // Per stage of the node's own timing (`latency_ms.<stage>` of /diagnostics).
    let totals: Arc<Mutex<BTreeMap<String, Vec<f64>>>> = Arc::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    {
        let (sent_at, latencies) = (sent_at.clone(), latencies.clone());
        runtime.spawn(async move {
            while let Some(msg) = faces.next().await {
                let now = Instant::now();
                let key = (msg.header.stamp.sec, msg.header.stamp.nanosec);
                if let Some(t) = sent_at.lock().ok().and_then(|m| m.get(&key).copied()) {
                    if let Ok(mut l) = latencies.lock() {
                        l.push((now, now.duration_since(t).as_secs_f64() * 1e3));
                    }
                }
            }
        });
    }
    {
        let totals = totals.clone();
        runtime.spawn(async move {
            while let Some(msg) = diagnostics.next().await {
                let stages = msg
                    .status
                    .iter()
                    .flat_map(|s| s.values.iter())
                    .filter_map(|kv| {
                        let stage = kv.key.strip_prefix("latency_ms.")?;
                        Some((stage.to_string(), kv.value.parse::<f64>().ok()?))
                    });
                if let Ok(mut v) = totals.lock() {
                    for (stage, ms) in stages {
                        v.entry(stage).or_default().push(ms);
                    }
                }
            }
        });
    }

    // NODE_BENCH_THREADS sets the node's intra_op_threads (default: the node's).
    let threads = std::env::var("NODE_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map(|n| format!("intra_op_threads:={n}"));
    // NODE_BENCH_PIN=false turns the node's pin_threads off.
    let pin = std::env::var("NODE_BENCH_PIN")
        .ok()
        .map(|v| format!("pin_threads:={v}"));
    let mut args: Vec<String> = [
        "--ros-args",
        "-r",
        "__ns:=/bench",
        "-p",
        "max_frame_age:=0.0",
    ]
    .map(String::from)
    .to_vec();
    for value in [threads, pin].into_iter().flatten() {
        args.extend(["-p".to_string(), value]);
    }
    let spawned = Instant::now();
    let mut child = Command::new(root.join("target/release/face_perception_node"))
        .args(&args)
        .env("ROS_DOMAIN_ID", domain.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let publish = |node: &mut r2r::Node| -> Result<(), Box<dyn std::error::Error>> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let stamp = r2r::builtin_interfaces::msg::Time {
            sec: now.as_secs() as i32,
            nanosec: now.subsec_nanos(),
        };
        let msg = Image {
            header: r2r::std_msgs::msg::Header {
                stamp: stamp.clone(),
                frame_id: "bench".into(),
            },
            height,
            width,
            encoding: "rgb8".into(),
            is_bigendian: 0,
            step: width * 3,
            data: data.clone(),
        };
        if let Ok(mut m) = sent_at.lock() {
            m.insert((stamp.sec, stamp.nanosec), Instant::now());
        }
        publisher.publish(&msg)?;
        node.spin_once(Duration::from_millis(1));
        Ok(())
    };
    // Start-up: publish every 20 ms until the first answer.
    let first_result = loop {
        publish(&mut node)?;
        let deadline = Instant::now() + Duration::from_millis(20);
        while Instant::now() < deadline {
            node.spin_once(Duration::from_millis(2));
        }
        if let Some((t, _)) = latencies.lock().ok().and_then(|l| l.first().copied()) {
            break t.duration_since(spawned);
        }
        if spawned.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            return Err("no FaceArray within 30 s".into());
        }
    };
    // Steady state: 10 Hz, so that every frame finds the node idle.
    latencies.lock().map(|mut l| l.clear()).ok();
    totals.lock().map(|mut t| t.clear()).ok();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        publish(&mut node)?;
        let deadline = Instant::now() + Duration::from_millis(100);
        while Instant::now() < deadline {
            node.spin_once(Duration::from_millis(2));
        }
    }
    let rss = rss_mib(child.id());
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let mut lat: Vec<f64> = latencies
        .lock()
        .map(|l| l.iter().map(|(_, v)| *v).collect())
        .unwrap_or_default();
    let mut stages = totals.lock().map(|t| t.clone()).unwrap_or_default();
    let mut tot = stages.remove("total").unwrap_or_default();
    let (lat_median, tot_median) = (median(&mut lat), median(&mut tot));
    println!(
        "node_bench: {} frames at 10 Hz, 640x480, 3 faces (group.jpg)",
        lat.len()
    );
    println!(
        "node_bench: start-up to first result      {:8.0} ms",
        first_result.as_secs_f64() * 1e3
    );
    println!("node_bench: publish -> FaceArray, median  {lat_median:8.2} ms");
    println!("node_bench: in-node processing, median    {tot_median:8.2} ms");
    println!(
        "node_bench: node overhead (difference)    {:8.2} ms",
        lat_median - tot_median
    );
    for (stage, values) in &mut stages {
        println!(
            "node_bench:   of which {stage:<12} median  {:8.2} ms",
            median(values)
        );
    }
    println!("node_bench: steady-state RSS              {rss:8.1} MiB");
    Ok(())
}
