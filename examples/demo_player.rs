//! The `make demo` camera: plays a bundled image sequence as a 30 Hz
//! `sensor_msgs/Image` stream to a running `face_perception_node`, prints the
//! faces of each frame as they arrive, and writes the last annotated and
//! saliency images to a folder.
//!
//! The sequence is a slow pan across `tests/fixtures/models/photos/group.jpg`
//! (public-domain and CC0 photos, see the LICENCES.md beside it), so the faces
//! move from frame to frame as they would in front of a robot.
//!
//! Usage: demo_player NAMESPACE OUTPUT_DIR [SECONDS]

use futures::StreamExt;
use r2r::face_perception_msgs::msg::FaceArray;
use r2r::sensor_msgs::msg::Image;
use r2r::QosProfile;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FPS: f64 = 30.0;
const PAN_PIXELS: f64 = 60.0;
const PAN_PERIOD_SECS: f64 = 4.0;

fn frame_at(photo: &image::RgbImage, t: f64) -> image::RgbImage {
    let (w, h) = photo.dimensions();
    // Shift the photo sideways on a grey canvas of the same size.
    let dx = (PAN_PIXELS * (2.0 * std::f64::consts::PI * t / PAN_PERIOD_SECS).sin()).round() as i64;
    let mut out = image::RgbImage::from_pixel(w, h, image::Rgb([90, 90, 90]));
    for y in 0..h {
        for x in 0..w {
            let sx = x as i64 - dx;
            if sx >= 0 && sx < w as i64 {
                out.put_pixel(x, y, *photo.get_pixel(sx as u32, y));
            }
        }
    }
    out
}

fn save(dir: &Path, name: &str, img: &Image) -> Option<PathBuf> {
    let rgb = image::RgbImage::from_raw(img.width, img.height, img.data.clone())?;
    let path = dir.join(name);
    rgb.save(&path).ok()?;
    Some(path)
}

fn describe(faces: &FaceArray) -> String {
    if faces.faces.is_empty() {
        return "no face".into();
    }
    faces
        .faces
        .iter()
        .map(|f| {
            format!(
                "[id {} at ({},{} {}x{}) {} {:.2}, {} {:.2}]",
                f.id,
                f.roi.x_offset,
                f.roi.y_offset,
                f.roi.width,
                f.roi.height,
                f.gender.label,
                f.gender.confidence,
                f.emotion.label,
                f.emotion.confidence
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let namespace = args.get(1).cloned().unwrap_or_else(|| "/demo".into());
    let out_dir = PathBuf::from(args.get(2).cloned().unwrap_or_else(|| "demo_output".into()));
    let seconds: f64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10.0);
    std::fs::create_dir_all(&out_dir)?;
    let photo_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/photos/group.jpg");
    let photo = image::open(&photo_path)?.to_rgb8();

    let ctx = r2r::Context::create()?;
    let mut node = r2r::Node::create(ctx, "demo_player", "")?;
    let topic = |t: &str| format!("{namespace}/{t}");
    let publisher = node.create_publisher::<Image>(&topic("image"), QosProfile::sensor_data())?;
    let mut faces_sub =
        node.subscribe::<FaceArray>(&topic("faces"), QosProfile::default().reliable())?;
    let last_images: Arc<Mutex<Vec<(String, Image)>>> = Arc::default();
    let mut image_subs = Vec::new();
    for name in ["annotated_image", "saliency/emotion", "saliency/gender"] {
        image_subs.push((
            name.replace('/', "_"),
            node.subscribe::<Image>(&topic(name), QosProfile::default())?,
        ));
    }
    let received = Arc::new(Mutex::new(0usize));
    let sent_at: Arc<Mutex<std::collections::HashMap<(i32, u32), Instant>>> = Arc::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    {
        let (received, sent_at) = (received.clone(), sent_at.clone());
        runtime.spawn(async move {
            while let Some(msg) = faces_sub.next().await {
                let key = (msg.header.stamp.sec, msg.header.stamp.nanosec);
                let latency = sent_at
                    .lock()
                    .ok()
                    .and_then(|m| m.get(&key).map(|t| t.elapsed()));
                let mut n = received.lock().unwrap_or_else(|e| e.into_inner());
                *n += 1;
                println!(
                    "frame {:>4}  latency {:>6.1} ms  {}",
                    *n,
                    latency.map(|d| d.as_secs_f64() * 1e3).unwrap_or(f64::NAN),
                    describe(&msg)
                );
            }
        });
    }
    for (name, mut sub) in image_subs {
        let last_images = last_images.clone();
        runtime.spawn(async move {
            while let Some(img) = sub.next().await {
                if let Ok(mut v) = last_images.lock() {
                    v.retain(|(n, _)| n != &name);
                    v.push((name.clone(), img));
                }
            }
        });
    }

    // Wait for the node's subscription to be matched, then play.
    let wait_start = Instant::now();
    while publisher
        .get_inter_process_subscription_count()
        .unwrap_or(0)
        == 0
    {
        node.spin_once(Duration::from_millis(20));
        if wait_start.elapsed() > Duration::from_secs(20) {
            return Err("face_perception_node did not subscribe within 20 s".into());
        }
    }
    println!("demo: playing {seconds:.0} s of 640x480 frames at {FPS:.0} Hz to {namespace}/image");
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / FPS);
    let mut sent = 0usize;
    while start.elapsed().as_secs_f64() < seconds {
        let due = start + period.mul_f64(sent as f64);
        while Instant::now() < due {
            node.spin_once(
                due.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(5)),
            );
        }
        let t = sent as f64 / FPS;
        let frame = frame_at(&photo, t);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let stamp = r2r::builtin_interfaces::msg::Time {
            sec: now.as_secs() as i32,
            nanosec: now.subsec_nanos(),
        };
        if let Ok(mut m) = sent_at.lock() {
            m.insert((stamp.sec, stamp.nanosec), Instant::now());
        }
        let (w, h) = frame.dimensions();
        publisher.publish(&Image {
            header: r2r::std_msgs::msg::Header {
                stamp,
                frame_id: "demo_camera".into(),
            },
            height: h,
            width: w,
            encoding: "rgb8".into(),
            is_bigendian: 0,
            step: w * 3,
            data: frame.into_raw(),
        })?;
        sent += 1;
    }
    // Let the last answers arrive.
    let tail = Instant::now();
    while tail.elapsed() < Duration::from_millis(800) {
        node.spin_once(Duration::from_millis(10));
    }
    let answered = *received.lock().unwrap_or_else(|e| e.into_inner());
    println!(
        "demo: sent {sent} frames in {:.1} s, received {answered} FaceArrays ({:.1} Hz)",
        start.elapsed().as_secs_f64(),
        answered as f64 / start.elapsed().as_secs_f64()
    );
    let images = last_images.lock().map(|v| v.clone()).unwrap_or_default();
    for (name, img) in &images {
        if let Some(path) = save(&out_dir, &format!("{name}.png"), img) {
            println!("demo: wrote {}", path.display());
        }
    }
    if answered == 0 {
        return Err("no FaceArray came back".into());
    }
    Ok(())
}
