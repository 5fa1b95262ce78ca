//! Shared by the ROS tests: the node binary started as a child process on a
//! DDS domain of its own, and an r2r test node in this process spinning on a
//! background thread. Real middleware (Fast DDS over loopback), no mocks.
#![allow(dead_code)]

use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A DDS domain id of this test process, also given to the nodes it starts.
/// Set before the first ROS context of the process is created.
pub fn domain_id() -> u32 {
    static ID: OnceLock<u32> = OnceLock::new();
    *ID.get_or_init(|| {
        let id = 10 + std::process::id() % 90;
        std::env::set_var("ROS_DOMAIN_ID", id.to_string());
        std::env::set_var("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST");
        id
    })
}

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The node under test, killed when dropped.
pub struct NodeProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl NodeProcess {
    /// Starts `face_perception_node` with extra `--ros-args` arguments.
    pub fn start(namespace: &str, ros_args: &[&str]) -> NodeProcess {
        let domain = domain_id();
        let log = std::env::temp_dir().join(format!("face_perception_node_{}_{}.log", std::process::id(), namespace.replace('/', "_")));
        let file = std::fs::File::create(&log).expect("node log file");
        let mut args = vec!["--ros-args".to_string(), "-r".to_string(), format!("__ns:={namespace}")];
        args.extend(ros_args.iter().map(|s| s.to_string()));
        let child = Command::new(env!("CARGO_BIN_EXE_face_perception_node"))
            .args(&args)
            .env("ROS_DOMAIN_ID", domain.to_string())
            .env("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
            .env("FACE_PERCEPTION_MODELS", repo_path("models"))
            .stdout(Stdio::from(file.try_clone().expect("log")))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start face_perception_node");
        NodeProcess { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` and waits for the exit: (exit code, time taken).
    pub fn stop_with(&mut self, signal: i32, limit: Duration) -> (Option<i32>, Duration) {
        let started = Instant::now();
        unsafe_kill(self.child.id() as i32, signal);
        while started.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (status.code(), started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (None, started.elapsed())
    }

    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
    }
}

fn unsafe_kill(pid: i32, signal: i32) {
    // `kill` from the C library: std has no portable signal sending.
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    // SAFETY: plain syscall wrapper on a pid we started.
    unsafe {
        kill(pid, signal);
    }
}

pub const SIGINT: i32 = 2;
pub const SIGTERM: i32 = 15;

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test's own r2r node, spun on a background thread.
pub struct TestNode {
    pub node: Arc<Mutex<r2r::Node>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    spinner: Option<std::thread::JoinHandle<()>>,
}

impl TestNode {
    pub fn new(name: &str) -> TestNode {
        domain_id();
        let ctx = r2r::Context::create().expect("ROS context");
        let node = Arc::new(Mutex::new(r2r::Node::create(ctx, name, "").expect("test node")));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spinner = {
            let (node, stop) = (node.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    node.lock().unwrap().spin_once(Duration::from_millis(5));
                }
            })
        };
        TestNode { node, stop, spinner: Some(spinner) }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(s) = self.spinner.take() {
            let _ = s.join();
        }
    }
}

/// Collects every message of a subscription into a shared vector.
pub fn collect<T: r2r::WrappedTypesupport + Send + 'static>(
    test: &TestNode,
    topic: &str,
    qos: r2r::QosProfile,
) -> Arc<Mutex<Vec<(Instant, T)>>> {
    let mut sub = test.node.lock().unwrap().subscribe::<T>(topic, qos).expect("subscribe");
    let store = Arc::new(Mutex::new(Vec::new()));
    let s = store.clone();
    std::thread::spawn(move || {
        futures::executor::block_on(async move {
            while let Some(msg) = sub.next().await {
                s.lock().unwrap().push((Instant::now(), msg));
            }
        })
    });
    store
}

/// Waits until `cond` holds or `limit` passes; true if it held.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// A photo from the fixtures as an rgb8 `sensor_msgs/Image`.
pub fn photo_message(relative: &str, frame_id: &str, sec: i32, nanosec: u32) -> r2r::sensor_msgs::msg::Image {
    let img = image::open(repo_path(relative)).expect("fixture photo").to_rgb8();
    let (width, height) = img.dimensions();
    r2r::sensor_msgs::msg::Image {
        header: r2r::std_msgs::msg::Header {
            stamp: r2r::builtin_interfaces::msg::Time { sec, nanosec },
            frame_id: frame_id.to_string(),
        },
        height,
        width,
        encoding: "rgb8".into(),
        is_bigendian: 0,
        step: width * 3,
        data: img.into_raw(),
    }
}

/// Now on the system clock as a ROS time (the node's ROS clock is the system clock).
pub fn now_stamp() -> (i32, u32) {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() as i32, d.subsec_nanos())
}
