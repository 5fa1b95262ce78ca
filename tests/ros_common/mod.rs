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
        let log = std::env::temp_dir().join(format!(
            "face_perception_node_{}_{}.log",
            std::process::id(),
            namespace.replace('/', "_")
        ));
        let file = std::fs::File::create(&log).expect("node log file");
        let mut args = vec![
            "--ros-args".to_string(),
            "-r".to_string(),
            format!("__ns:={namespace}"),
        ];
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
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
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
        let node = Arc::new(Mutex::new(
            r2r::Node::create(ctx, name, "").expect("test node"),
        ));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spinner = {
            let (node, stop) = (node.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    node.lock().unwrap().spin_once(Duration::from_millis(5));
                }
            })
        };
        TestNode {
            node,
            stop,
            spinner: Some(spinner),
        }
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
    let mut sub = test
        .node
        .lock()
        .unwrap()
        .subscribe::<T>(topic, qos)
        .expect("subscribe");
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
pub fn photo_message(
    relative: &str,
    frame_id: &str,
    sec: i32,
    nanosec: u32,
) -> r2r::sensor_msgs::msg::Image {
    let img = image::open(repo_path(relative))
        .expect("fixture photo")
        .to_rgb8();
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

/// The astronaut photo as an rgb8 `sensor_msgs/Image` stamped now, frame `camera_optical`.
pub fn astronaut_now() -> r2r::sensor_msgs::msg::Image {
    let (sec, nanosec) = now_stamp();
    photo_message(
        "tests/fixtures/models/photos/astronaut.jpg",
        "camera_optical",
        sec,
        nanosec,
    )
}

/// Now on the system clock as a ROS time (the node's ROS clock is the system clock).
pub fn now_stamp() -> (i32, u32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i32, d.subsec_nanos())
}

// ---- Helpers for the bad-input, parameter, load, shutdown and file tests ----

/// The stamp of a header as a map key.
pub fn stamp_key(stamp: &r2r::builtin_interfaces::msg::Time) -> (i32, u32) {
    (stamp.sec, stamp.nanosec)
}

/// The status `face_perception_node` in `namespace` put into one `/diagnostics` array.
pub fn node_status<'a>(
    array: &'a r2r::diagnostic_msgs::msg::DiagnosticArray,
    namespace: &str,
) -> Option<&'a r2r::diagnostic_msgs::msg::DiagnosticStatus> {
    let prefix = format!("{}/face_perception:", namespace.trim_end_matches('/'));
    array.status.iter().find(|s| s.name.starts_with(&prefix))
}

/// One value of a diagnostic status, by key.
pub fn status_value<'a>(
    status: &'a r2r::diagnostic_msgs::msg::DiagnosticStatus,
    key: &str,
) -> Option<&'a str> {
    status
        .values
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| kv.value.as_str())
}

/// The newest status of the node in `namespace` among collected `/diagnostics`
/// arrays received after `since` (if given).
pub fn latest_status(
    store: &Arc<Mutex<Vec<(Instant, r2r::diagnostic_msgs::msg::DiagnosticArray)>>>,
    namespace: &str,
    since: Option<Instant>,
) -> Option<r2r::diagnostic_msgs::msg::DiagnosticStatus> {
    let arrays = store.lock().unwrap();
    arrays
        .iter()
        .rev()
        .filter(|(t, _)| since.is_none_or(|s| *t >= s))
        .find_map(|(_, a)| node_status(a, namespace).cloned())
}

/// Runs `fut` to completion on a helper thread, giving up after `limit`.
pub fn block_on_timeout<T: Send + 'static>(
    fut: impl std::future::Future<Output = T> + Send + 'static,
    limit: Duration,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(futures::executor::block_on(fut));
    });
    rx.recv_timeout(limit).ok()
}

/// Calls a service of the node under test: waits until the server is
/// available, then sends the request (again, if no response came in time:
/// a request sent right after discovery can be lost).
pub fn call_service<S>(
    test: &TestNode,
    service: &str,
    request: &S::Request,
    limit: Duration,
) -> Result<S::Response, String>
where
    S: r2r::WrappedServiceTypeSupport + 'static,
    S::Response: Send + 'static,
{
    const ATTEMPT: Duration = Duration::from_secs(3);
    let client = test
        .node
        .lock()
        .unwrap()
        .create_client::<S>(service, r2r::QosProfile::default())
        .map_err(|e| format!("client for {service}: {e}"))?;
    let started = Instant::now();
    let available = r2r::Node::is_available(&client).map_err(|e| format!("{service}: {e}"))?;
    block_on_timeout(available, limit)
        .ok_or_else(|| format!("{service} not available within {limit:?}"))?
        .map_err(|e| e.to_string())?;
    while started.elapsed() < limit {
        let response = client
            .request(request)
            .map_err(|e| format!("{service} request: {e}"))?;
        if let Some(result) = block_on_timeout(
            response,
            ATTEMPT.min(limit.saturating_sub(started.elapsed())),
        ) {
            return result.map_err(|e| format!("{service} response: {e}"));
        }
    }
    Err(format!("{service}: no response within {limit:?}"))
}

/// A scalar parameter value as a `rcl_interfaces/ParameterValue` message
/// (r2r's own conversion is crate-private). Arrays are not used by the node.
pub fn param_value_msg(value: r2r::ParameterValue) -> r2r::rcl_interfaces::msg::ParameterValue {
    use r2r::rcl_interfaces::msg::{ParameterType, ParameterValue as Msg};
    let mut msg = Msg::default();
    match value {
        r2r::ParameterValue::Bool(b) => {
            (msg.type_, msg.bool_value) = (ParameterType::PARAMETER_BOOL as u8, b)
        }
        r2r::ParameterValue::Integer(i) => {
            (msg.type_, msg.integer_value) = (ParameterType::PARAMETER_INTEGER as u8, i)
        }
        r2r::ParameterValue::Double(d) => {
            (msg.type_, msg.double_value) = (ParameterType::PARAMETER_DOUBLE as u8, d)
        }
        r2r::ParameterValue::String(s) => {
            (msg.type_, msg.string_value) = (ParameterType::PARAMETER_STRING as u8, s)
        }
        other => panic!("array parameter {other:?} not supported by this helper"),
    }
    msg
}

/// A `rcl_interfaces/ParameterValue` message as r2r's value (scalars; arrays as not set).
pub fn param_value_from_msg(msg: r2r::rcl_interfaces::msg::ParameterValue) -> r2r::ParameterValue {
    use r2r::rcl_interfaces::msg::ParameterType;
    let t = msg.type_;
    if t == ParameterType::PARAMETER_BOOL as u8 {
        r2r::ParameterValue::Bool(msg.bool_value)
    } else if t == ParameterType::PARAMETER_INTEGER as u8 {
        r2r::ParameterValue::Integer(msg.integer_value)
    } else if t == ParameterType::PARAMETER_DOUBLE as u8 {
        r2r::ParameterValue::Double(msg.double_value)
    } else if t == ParameterType::PARAMETER_STRING as u8 {
        r2r::ParameterValue::String(msg.string_value)
    } else {
        r2r::ParameterValue::NotSet
    }
}

/// The parameter services of `face_perception` in `namespace`.
pub struct ParamClient<'a> {
    pub test: &'a TestNode,
    pub node: String,
}

/// Limit of one parameter service call (discovery included).
pub const PARAM_CALL_LIMIT: Duration = Duration::from_secs(15);

impl<'a> ParamClient<'a> {
    pub fn new(test: &'a TestNode, namespace: &str) -> Self {
        ParamClient {
            test,
            node: format!("{}/face_perception", namespace.trim_end_matches('/')),
        }
    }

    /// Sets one parameter: (successful, reason).
    pub fn set(&self, name: &str, value: r2r::ParameterValue) -> (bool, String) {
        use r2r::rcl_interfaces::{msg::Parameter, srv::SetParameters};
        let request = SetParameters::Request {
            parameters: vec![Parameter {
                name: name.to_string(),
                value: param_value_msg(value),
            }],
        };
        let response = call_service::<SetParameters::Service>(
            self.test,
            &format!("{}/set_parameters", self.node),
            &request,
            PARAM_CALL_LIMIT,
        )
        .expect("set_parameters");
        assert_eq!(response.results.len(), 1, "one result per parameter");
        (
            response.results[0].successful,
            response.results[0].reason.clone(),
        )
    }

    /// Current values, in the order of `names`.
    pub fn get(&self, names: &[&str]) -> Vec<r2r::ParameterValue> {
        use r2r::rcl_interfaces::srv::GetParameters;
        let request = GetParameters::Request {
            names: names.iter().map(|s| s.to_string()).collect(),
        };
        let response = call_service::<GetParameters::Service>(
            self.test,
            &format!("{}/get_parameters", self.node),
            &request,
            PARAM_CALL_LIMIT,
        )
        .expect("get_parameters");
        response
            .values
            .into_iter()
            .map(param_value_from_msg)
            .collect()
    }

    /// Every parameter name the node lists.
    pub fn list(&self) -> Vec<String> {
        use r2r::rcl_interfaces::srv::ListParameters;
        let request = ListParameters::Request {
            prefixes: vec![],
            depth: ListParameters::Request::DEPTH_RECURSIVE as u64,
        };
        let response = call_service::<ListParameters::Service>(
            self.test,
            &format!("{}/list_parameters", self.node),
            &request,
            PARAM_CALL_LIMIT,
        )
        .expect("list_parameters");
        response.result.names
    }

    /// Descriptors of `names`.
    pub fn describe(&self, names: &[String]) -> Vec<r2r::rcl_interfaces::msg::ParameterDescriptor> {
        use r2r::rcl_interfaces::srv::DescribeParameters;
        let request = DescribeParameters::Request {
            names: names.to_vec(),
        };
        call_service::<DescribeParameters::Service>(
            self.test,
            &format!("{}/describe_parameters", self.node),
            &request,
            PARAM_CALL_LIMIT,
        )
        .expect("describe_parameters")
        .descriptors
    }
}

/// Makes this process and the nodes it starts afterwards (they inherit the
/// environment) use the package's Fast DDS profile, `config/fastdds.xml`:
/// with the default 512 kB shared-memory segment a larger sample (640x480
/// rgb8 is 900 kB) goes over UDP in fragments, and a best-effort
/// (sensor-data) reader loses about half of them on loopback at 10 Hz.
/// Call before the first ROS context of the process; a profile chosen by the
/// caller (`FASTRTPS_DEFAULT_PROFILES_FILE`) is kept.
pub fn large_message_transport() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if std::env::var_os("FASTRTPS_DEFAULT_PROFILES_FILE").is_some() {
            return;
        }
        let path = repo_path("config/fastdds.xml");
        std::env::set_var("FASTRTPS_DEFAULT_PROFILES_FILE", &path);
        std::env::set_var("FASTDDS_DEFAULT_PROFILES_FILE", &path);
    });
}

/// The `ros__parameters` of a parameters file such as `config/params.yaml`,
/// read line by line (one `name: value` per line, `#` comments): name and
/// value as written, quotes removed from strings. Enough for the flat files
/// of this package; no YAML library is needed.
pub fn params_file_entries(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut entries = Vec::new();
    let mut in_params = false;
    let mut params_indent = 0;
    for (number, line) in text.lines().enumerate() {
        let code = strip_yaml_comment(line);
        if code.trim().is_empty() {
            continue;
        }
        let indent = code.len() - code.trim_start().len();
        let code = code.trim();
        if code == "ros__parameters:" {
            in_params = true;
            params_indent = indent;
            continue;
        }
        if !in_params {
            continue;
        }
        if indent <= params_indent {
            in_params = false;
            continue;
        }
        let (name, value) = code
            .split_once(':')
            .ok_or_else(|| format!("line {}: no `name: value` in {line:?}", number + 1))?;
        let value = value.trim();
        if value.is_empty() {
            return Err(format!(
                "line {}: nested or empty value for {name} (the node has flat parameters)",
                number + 1
            ));
        }
        let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Some(unquoted) => unquoted.to_string(),
            None => value.to_string(),
        };
        entries.push((name.trim().to_string(), value));
    }
    Ok(entries)
}

/// `line` up to a `#` that is outside double quotes.
fn strip_yaml_comment(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

/// The parameter names of the node, in declaration order, read from
/// `DESCRIPTIONS` in src/bin/face_perception_node/params.rs.
pub fn declared_parameter_names() -> Vec<String> {
    let source = std::fs::read_to_string(repo_path("src/bin/face_perception_node/params.rs"))
        .expect("params.rs");
    let start = source
        .find("pub const DESCRIPTIONS")
        .expect("DESCRIPTIONS in params.rs");
    let end = start + source[start..].find("];").expect("end of DESCRIPTIONS");
    source[start..end]
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("(\"")?
                .split_once('"')
                .map(|(name, _)| name.to_string())
        })
        .collect()
}
