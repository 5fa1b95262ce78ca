//! The node: subscription, latest-frame slot, inference worker, publishers.

use crate::diagnostics::{self, Stats};
use crate::messages;
use crate::params::{InputTransport, NodeParams, Settings};
use anyhow::Context as _;
use face_perception::classify::ClassifierTask;
use face_perception::frame::Frame;
use face_perception::pipeline::{Explain, FrameRequest, Pipeline};
use futures::StreamExt;
use r2r::face_perception_msgs::msg::FaceArray;
use r2r::sensor_msgs::msg::{CompressedImage, Image};
use r2r::std_msgs::msg::Header;
use r2r::QosProfile;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const NODE_NAME: &str = "face_perception";
/// How long the worker may take to finish its frame at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);
/// rcl wait timeout of one spin.
const SPIN_PERIOD: Duration = Duration::from_millis(10);

/// A frame as it arrived.
enum Incoming {
    Raw(Image),
    Compressed(CompressedImage),
}

impl Incoming {
    fn header(&self) -> &Header {
        match self {
            Incoming::Raw(m) => &m.header,
            Incoming::Compressed(m) => &m.header,
        }
    }
}

/// The newest unprocessed frame.
#[derive(Default)]
struct LatestFrame {
    slot: Mutex<Option<Incoming>>,
    ready: Condvar,
}

impl LatestFrame {
    /// Stores `frame`; true when it replaced one that was never processed.
    fn put(&self, frame: Incoming) -> bool {
        let replaced = match self.slot.lock() {
            Ok(mut slot) => slot.replace(frame).is_some(),
            Err(_) => false,
        };
        self.ready.notify_one();
        replaced
    }

    /// Takes the newest frame, waiting at most `timeout`.
    fn take(&self, timeout: Duration) -> Option<Incoming> {
        let slot = self.slot.lock().ok()?;
        let (mut slot, _) = self
            .ready
            .wait_timeout_while(slot, timeout, |s| s.is_none())
            .ok()?;
        slot.take()
    }
}

struct Outputs {
    faces: r2r::Publisher<FaceArray>,
    annotated: r2r::Publisher<Image>,
    saliency_emotion: r2r::Publisher<Image>,
    saliency_gender: r2r::Publisher<Image>,
}

fn subscribed(p: &r2r::Publisher<Image>) -> bool {
    p.get_inter_process_subscription_count().unwrap_or(0) > 0
}

fn stamp_secs(h: &Header) -> f64 {
    h.stamp.sec as f64 + h.stamp.nanosec as f64 * 1e-9
}

fn lock_stats(stats: &Mutex<Stats>) -> std::sync::MutexGuard<'_, Stats> {
    stats
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The inference loop: newest frame -> checks -> pipeline -> publishers.
fn worker(
    mut pipeline: Pipeline,
    latest: Arc<LatestFrame>,
    settings: Arc<Mutex<Settings>>,
    stats: Arc<Mutex<Stats>>,
    outputs: Outputs,
    clock: Arc<Mutex<r2r::Clock>>,
    running: Arc<AtomicBool>,
) {
    let mut generation = settings.lock().map(|s| s.generation).unwrap_or_default();
    let mut frame = Frame::empty();
    // Start of the last frame that computed saliency.
    let mut last_saliency: Option<Instant> = None;
    while running.load(Ordering::Acquire) {
        let Some(incoming) = latest.take(Duration::from_millis(100)) else {
            continue;
        };
        let started = Instant::now();
        let current = match settings.lock() {
            Ok(s) => s.clone(),
            Err(_) => continue,
        };
        if current.generation != generation {
            if let Err(e) = pipeline.reconfigure(&current.config) {
                log::error!("new parameters not applied: {e}");
            }
            generation = current.generation;
        }
        let header = incoming.header().clone();
        let now = clock
            .lock()
            .ok()
            .and_then(|mut c| c.get_now().ok())
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let age = now - stamp_secs(&header);
        if current.max_frame_age > 0.0 && age > current.max_frame_age {
            lock_stats(&stats).on_stale();
            continue;
        }
        let limits = current.config.frame_limits();
        let converted = match &incoming {
            Incoming::Raw(m) => frame.assign_from_raw(&messages::raw_image(m), limits),
            Incoming::Compressed(m) => {
                Frame::from_compressed(&m.format, &m.data, limits).map(|f| frame = f)
            }
        };
        if let Err(e) = converted {
            if lock_stats(&stats).on_bad_input(e.kind()) {
                log::warn!("bad input frame ({}): {e} (further ones of this kind are counted in /diagnostics)", e.kind());
            }
            continue;
        }
        // Saliency only for the classifiers whose topic is watched, and at
        // most saliency_max_rate times per second.
        let saliency_due = current.saliency_max_rate <= 0.0
            || last_saliency.is_none_or(|t| {
                started.duration_since(t).as_secs_f64() * current.saliency_max_rate >= 1.0
            });
        let tasks: Vec<ClassifierTask> = [
            (ClassifierTask::Emotion, &outputs.saliency_emotion),
            (ClassifierTask::Gender, &outputs.saliency_gender),
        ]
        .into_iter()
        .filter(|(_, publisher)| saliency_due && subscribed(publisher))
        .map(|(task, _)| task)
        .collect();
        if !tasks.is_empty() {
            last_saliency = Some(started);
        }
        let request = FrameRequest {
            annotated: subscribed(&outputs.annotated),
            saliency: None,
            explain: (!tasks.is_empty()).then_some(Explain {
                method: current.saliency_method,
                tasks,
            }),
        };
        let convert_ms = started.elapsed().as_secs_f64() * 1e3;
        let result = match pipeline.process(&frame, &request) {
            Ok(r) => r,
            Err(e) => {
                let mut s = lock_stats(&stats);
                s.pipeline_errors += 1;
                if s.should_log("pipeline_error") {
                    log::error!("frame failed in the pipeline: {e}");
                }
                s.last_error = Some(e.to_string());
                continue;
            }
        };
        let msg = messages::face_array(&header, &result, frame.width(), frame.height());
        if let Err(e) = outputs.faces.publish(&msg) {
            log::error!("publishing faces failed: {e}");
        }
        let mut images = 0;
        if let Some(annotated) = result.annotated {
            images += usize::from(
                outputs
                    .annotated
                    .publish(&messages::image_from_frame(&header, annotated))
                    .is_ok(),
            );
        }
        for explained in result.saliency_images {
            let publisher = match explained.task {
                ClassifierTask::Emotion => &outputs.saliency_emotion,
                ClassifierTask::Gender => &outputs.saliency_gender,
                ClassifierTask::Age => continue,
            };
            images += usize::from(
                publisher
                    .publish(&messages::image_from_frame(&header, explained.overlay))
                    .is_ok(),
            );
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mut stages = BTreeMap::new();
        stages.insert("convert", convert_ms);
        stages.insert("detect", ms(result.timings.detect));
        stages.insert("classify", ms(result.timings.classify));
        stages.insert("track", ms(result.timings.track));
        stages.insert("render", ms(result.timings.render));
        stages.insert("saliency", ms(result.timings.saliency));
        stages.insert("total", ms(started.elapsed()));
        let mut s = lock_stats(&stats);
        s.published_images += images as u64;
        s.on_processed(age, stages);
    }
}

/// The detector, the enabled classifiers' files and the precision, for logs
/// and diagnostics.
fn describe_models(pipeline: &Pipeline) -> Vec<String> {
    let mut models = vec![format!("detector: {}", pipeline.detector_name())];
    for task in [
        ClassifierTask::Gender,
        ClassifierTask::Emotion,
        ClassifierTask::Age,
    ] {
        if let Some(classifier) = pipeline.classifier(task) {
            models.push(format!(
                "{}: {}",
                task.model_name(),
                classifier.model_file()
            ));
        }
    }
    models.push(format!("precision: {}", pipeline.config().precision()));
    models
}

fn run() -> anyhow::Result<()> {
    let ctx = r2r::Context::create().context("ROS 2 context")?;
    let mut node = r2r::Node::create(ctx, NODE_NAME, "").context("creating the node")?;
    let (params, settings) = NodeParams::new().map_err(anyhow::Error::msg)?;
    let params = Arc::new(Mutex::new(params));
    let (param_services, _param_events) = node
        .make_derived_parameter_handler(params)
        .context("parameter services")?;
    let initial = settings
        .lock()
        .map_err(|_| anyhow::anyhow!("settings lock"))?
        .clone();

    let started = Instant::now();
    let pipeline = Pipeline::new(&initial.config).context("loading the perception pipeline")?;
    let models = describe_models(&pipeline);
    log::info!(
        "models loaded in {:.0} ms: {}",
        started.elapsed().as_secs_f64() * 1e3,
        models.join(", ")
    );

    let mut stats = Stats::default();
    stats.models = models;
    let stats = Arc::new(Mutex::new(stats));
    let outputs = Outputs {
        faces: node.create_publisher::<FaceArray>("faces", QosProfile::default().reliable())?,
        annotated: node.create_publisher::<Image>("annotated_image", QosProfile::default())?,
        saliency_emotion: node
            .create_publisher::<Image>("saliency/emotion", QosProfile::default())?,
        saliency_gender: node
            .create_publisher::<Image>("saliency/gender", QosProfile::default())?,
    };
    let diagnostics_pub = node.create_publisher::<r2r::diagnostic_msgs::msg::DiagnosticArray>(
        "/diagnostics",
        QosProfile::default(),
    )?;
    let latest = Arc::new(LatestFrame::default());
    let running = Arc::new(AtomicBool::new(true));
    let qos = QosProfile::sensor_data().keep_last(1);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.spawn(param_services);
    match initial.input_transport {
        InputTransport::Raw => {
            let mut sub = node.subscribe::<Image>("image", qos)?;
            let (latest, stats) = (latest.clone(), stats.clone());
            runtime.spawn(async move {
                while let Some(msg) = sub.next().await {
                    lock_stats(&stats).on_received();
                    if latest.put(Incoming::Raw(msg)) {
                        lock_stats(&stats).on_overrun();
                    }
                }
            });
        }
        InputTransport::Compressed => {
            let mut sub = node.subscribe::<CompressedImage>("image/compressed", qos)?;
            let (latest, stats) = (latest.clone(), stats.clone());
            runtime.spawn(async move {
                while let Some(msg) = sub.next().await {
                    lock_stats(&stats).on_received();
                    if latest.put(Incoming::Compressed(msg)) {
                        lock_stats(&stats).on_overrun();
                    }
                }
            });
        }
    }
    {
        let mut timer = node.create_wall_timer(Duration::from_secs(1))?;
        let (stats, clock) = (stats.clone(), node.get_ros_clock());
        let name = node
            .fully_qualified_name()
            .unwrap_or_else(|_| NODE_NAME.to_string());
        runtime.spawn(async move {
            while timer.tick().await.is_ok() {
                let stamp = clock
                    .lock()
                    .ok()
                    .and_then(|mut c| c.get_now().ok())
                    .map(|d| r2r::Clock::to_builtin_time(&d))
                    .unwrap_or_default();
                let status = lock_stats(&stats).status(&name, NODE_NAME);
                let _ = diagnostics_pub.publish(&diagnostics::array(stamp, status));
            }
        });
    }
    {
        let running = running.clone();
        let _guard = runtime.enter();
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        runtime.spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = sigterm.recv() => {}
            }
            running.store(false, Ordering::Release);
        });
    }

    let worker = {
        let (latest, settings, stats, running) = (
            latest.clone(),
            settings.clone(),
            stats.clone(),
            running.clone(),
        );
        let clock = node.get_ros_clock();
        std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || worker(pipeline, latest, settings, stats, outputs, clock, running))?
    };
    log::info!(
        "ready in {:.0} ms: subscribed to {}",
        started.elapsed().as_secs_f64() * 1e3,
        if initial.input_transport == InputTransport::Raw {
            "image"
        } else {
            "image/compressed"
        }
    );

    while running.load(Ordering::Acquire) && !worker.is_finished() {
        node.spin_once(SPIN_PERIOD);
    }
    // Stop taking frames; give the frame in flight a bounded time to finish.
    latest.ready.notify_all();
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while !worker.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if worker.is_finished() {
        let _ = worker.join();
    } else {
        log::warn!("inference still running at shutdown; exiting without it");
    }
    runtime.shutdown_timeout(Duration::from_millis(200));
    log::info!("shut down");
    Ok(())
}

/// Runs the node until SIGINT or SIGTERM.
pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
