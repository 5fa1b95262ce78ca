//! Counters and timings of the node, published as
//! `diagnostic_msgs/DiagnosticArray` on `/diagnostics` once a second.
//!
//! Levels (stated in the README):
//! - ERROR: no frame processed for [`STALL_SECS`] while frames arrive, or the
//!   last frame failed in the pipeline;
//! - WARN: more than [`WARN_DROP_FRACTION`] of the frames of the last period
//!   dropped, any bad input in the last period, or processed frames older than
//!   [`WARN_FRAME_AGE_SECS`];
//! - OK otherwise.

use r2r::diagnostic_msgs::msg::{DiagnosticArray, DiagnosticStatus, KeyValue};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Seconds without output, while input arrives, before the status is ERROR.
pub const STALL_SECS: f64 = 5.0;
/// Fraction of dropped frames in a period above which the status is WARN.
pub const WARN_DROP_FRACTION: f64 = 0.5;
/// Age of processed frames (now - stamp) above which the status is WARN.
pub const WARN_FRAME_AGE_SECS: f64 = 0.5;
/// `diagnostic_msgs/DiagnosticStatus` levels (the generated constants are not `u8`).
const LEVEL_OK: u8 = 0;
const LEVEL_WARN: u8 = 1;
const LEVEL_ERROR: u8 = 2;
/// Minimum interval between two log lines of the same kind of bad input.
pub const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Running statistics, shared by the subscription task and the worker.
#[derive(Debug)]
pub struct Stats {
    pub received: u64,
    pub processed: u64,
    pub published_images: u64,
    pub dropped_overrun: u64,
    pub dropped_stale: u64,
    pub pipeline_errors: u64,
    pub bad_input: BTreeMap<&'static str, u64>,
    pub last_error: Option<String>,
    /// Milliseconds per stage of the last processed frame.
    pub stage_ms: BTreeMap<&'static str, f64>,
    /// Seconds between the header stamp and the start of processing, last frame.
    pub frame_age: f64,
    /// Largest `frame_age` of the current period.
    pub frame_age_max: f64,
    pub last_processed: Option<Instant>,
    pub last_received: Option<Instant>,
    pub models: Vec<String>,
    last_logged: BTreeMap<&'static str, Instant>,
    period_start: Instant,
    period_received: u64,
    period_processed: u64,
    period_dropped: u64,
    period_bad: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            received: 0,
            processed: 0,
            published_images: 0,
            dropped_overrun: 0,
            dropped_stale: 0,
            pipeline_errors: 0,
            bad_input: BTreeMap::new(),
            last_error: None,
            stage_ms: BTreeMap::new(),
            frame_age: 0.0,
            frame_age_max: 0.0,
            last_processed: None,
            last_received: None,
            models: Vec::new(),
            last_logged: BTreeMap::new(),
            period_start: Instant::now(),
            period_received: 0,
            period_processed: 0,
            period_dropped: 0,
            period_bad: 0,
        }
    }
}

impl Stats {
    pub fn on_received(&mut self) {
        self.received += 1;
        self.period_received += 1;
        self.last_received = Some(Instant::now());
    }

    pub fn on_overrun(&mut self) {
        self.dropped_overrun += 1;
        self.period_dropped += 1;
    }

    pub fn on_stale(&mut self) {
        self.dropped_stale += 1;
        self.period_dropped += 1;
    }

    /// Counts a bad input; true when it should be logged (rate limit per kind).
    pub fn on_bad_input(&mut self, kind: &'static str) -> bool {
        *self.bad_input.entry(kind).or_default() += 1;
        self.period_bad += 1;
        self.should_log(kind)
    }

    /// True when a log line of `kind` is due (at most one per [`LOG_INTERVAL`]).
    pub fn should_log(&mut self, kind: &'static str) -> bool {
        let now = Instant::now();
        match self.last_logged.get(kind) {
            Some(t) if now.duration_since(*t) < LOG_INTERVAL => false,
            _ => {
                self.last_logged.insert(kind, now);
                true
            }
        }
    }

    pub fn on_processed(&mut self, frame_age: f64, stage_ms: BTreeMap<&'static str, f64>) {
        self.processed += 1;
        self.period_processed += 1;
        self.frame_age = frame_age;
        self.frame_age_max = self.frame_age_max.max(frame_age);
        self.stage_ms = stage_ms;
        self.last_processed = Some(Instant::now());
        self.last_error = None;
    }

    /// Builds the status of the period since the last call and starts a new one.
    pub fn status(&mut self, node_name: &str, hardware_id: &str) -> DiagnosticStatus {
        let now = Instant::now();
        let secs = now
            .duration_since(self.period_start)
            .as_secs_f64()
            .max(1e-3);
        let in_rate = self.period_received as f64 / secs;
        let out_rate = self.period_processed as f64 / secs;
        let stalled = self
            .last_received
            .is_some_and(|t| now.duration_since(t).as_secs_f64() < STALL_SECS)
            && self
                .last_processed
                .is_none_or(|t| now.duration_since(t).as_secs_f64() > STALL_SECS);
        let drop_fraction = if self.period_received > 0 {
            self.period_dropped as f64 / self.period_received as f64
        } else {
            0.0
        };
        let (level, message) = if stalled {
            (
                LEVEL_ERROR,
                "frames arrive but none is processed".to_string(),
            )
        } else if let Some(e) = &self.last_error {
            (LEVEL_ERROR, format!("pipeline error: {e}"))
        } else if drop_fraction > WARN_DROP_FRACTION {
            (
                LEVEL_WARN,
                format!(
                    "{:.0}% of frames dropped (inference slower than the camera)",
                    drop_fraction * 100.0
                ),
            )
        } else if self.period_bad > 0 {
            (LEVEL_WARN, format!("{} bad input frames", self.period_bad))
        } else if self.frame_age_max > WARN_FRAME_AGE_SECS {
            (
                LEVEL_WARN,
                format!("processed frames up to {:.3} s old", self.frame_age_max),
            )
        } else {
            (LEVEL_OK, "ok".to_string())
        };
        let mut values = vec![
            kv("input_rate_hz", format!("{in_rate:.2}")),
            kv("output_rate_hz", format!("{out_rate:.2}")),
            kv("frames_received", self.received.to_string()),
            kv("frames_processed", self.processed.to_string()),
            kv("frames_dropped_overrun", self.dropped_overrun.to_string()),
            kv("frames_dropped_stale", self.dropped_stale.to_string()),
            kv("pipeline_errors", self.pipeline_errors.to_string()),
            kv(
                "bad_input_total",
                self.bad_input.values().sum::<u64>().to_string(),
            ),
            kv("frame_age_s", format!("{:.4}", self.frame_age)),
            kv("frame_age_max_s", format!("{:.4}", self.frame_age_max)),
            kv("images_published", self.published_images.to_string()),
            kv("models", self.models.join(", ")),
        ];
        values.extend(
            self.bad_input
                .iter()
                .map(|(k, v)| kv(&format!("bad_input.{k}"), v.to_string())),
        );
        values.extend(
            self.stage_ms
                .iter()
                .map(|(k, v)| kv(&format!("latency_ms.{k}"), format!("{v:.3}"))),
        );
        self.period_start = now;
        self.period_received = 0;
        self.period_processed = 0;
        self.period_dropped = 0;
        self.period_bad = 0;
        self.frame_age_max = 0.0;
        DiagnosticStatus {
            level,
            name: format!("{node_name}: face perception"),
            message,
            hardware_id: hardware_id.to_string(),
            values,
        }
    }
}

fn kv(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value,
    }
}

/// Wraps one status in an array stamped `stamp`.
pub fn array(
    stamp: r2r::builtin_interfaces::msg::Time,
    status: DiagnosticStatus,
) -> DiagnosticArray {
    DiagnosticArray {
        header: r2r::std_msgs::msg::Header {
            stamp,
            frame_id: String::new(),
        },
        status: vec![status],
    }
}
