//! ONNX Runtime, loaded once per process from a shared library.
//!
//! The library is never downloaded: it comes from the `onnxruntime` wheel that
//! `make setup` installs (or any `libonnxruntime.so` 1.31 a user has). It is
//! looked up, in order, at `$ORT_DYLIB_PATH`, next to the executable
//! (`./libonnxruntime.so*`, `../lib/libonnxruntime.so*`) and at the path the
//! build recorded (`FACE_PERCEPTION_ORT_DYLIB`, set by `scripts/env.sh`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Why ONNX Runtime could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No candidate file exists.
    #[error("ONNX Runtime library not found (looked at: {looked_at}); set ORT_DYLIB_PATH to libonnxruntime.so.1.31.x or run `make setup`")]
    NotFound {
        /// The candidates that were tried, separated by commas.
        looked_at: String,
    },
    /// The file exists but could not be loaded or initialised.
    #[error("ONNX Runtime library {path} could not be loaded: {reason}")]
    Load {
        /// The library file.
        path: PathBuf,
        /// What ort reported.
        reason: String,
    },
}

static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();
static LIBRARY: OnceLock<PathBuf> = OnceLock::new();

/// Candidate locations of `libonnxruntime.so`, most specific first.
fn library_candidates() -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        candidates.push(PathBuf::from(path));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        for sub in [dir.clone(), dir.join("../lib")] {
            if let Ok(entries) = std::fs::read_dir(&sub) {
                let mut found: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("libonnxruntime.so"))
                    })
                    .collect();
                found.sort();
                candidates.extend(found);
            }
        }
    }
    if let Some(path) = option_env!("FACE_PERCEPTION_ORT_DYLIB") {
        candidates.push(PathBuf::from(path));
    }
    candidates
}

/// The process-wide ONNX Runtime environment, loading the library on first use.
pub fn environment() -> Result<&'static ort::environment::Environment, RuntimeError> {
    let result = ENVIRONMENT.get_or_init(|| {
        let candidates = library_candidates();
        let Some(path) = candidates.iter().find(|p| p.is_file()).cloned() else {
            let looked_at = candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(format!("NOTFOUND:{looked_at}"));
        };
        let _ = LIBRARY.set(path.clone());
        ort::init_from(&path)
            .map_err(|e| e.to_string())
            .and_then(|builder| {
                builder
                    .with_name("face_perception")
                    .build()
                    .map_err(|e| e.to_string())
            })
    });
    match result {
        Ok(env) => Ok(env),
        Err(message) => match message.strip_prefix("NOTFOUND:") {
            Some(looked_at) => Err(RuntimeError::NotFound {
                looked_at: looked_at.to_string(),
            }),
            None => Err(RuntimeError::Load {
                path: LIBRARY.get().cloned().unwrap_or_default(),
                reason: message.clone(),
            }),
        },
    }
}

/// The library file that was loaded, once [`environment`] succeeded.
pub fn library_path() -> Option<&'static Path> {
    LIBRARY.get().map(PathBuf::as_path)
}

/// A session over an in-memory model with the crate's threading policy:
/// graph optimisations up to level 3, `intra_op_threads` threads inside each
/// operator, one thread across operators.
///
/// The pool's workers spin while a run is under way and are stopped as soon
/// as it returns (`session.force_spinning_stop`). Spinning inside a run saves
/// a wake-up per parallel operator: CenterFace at 320x256 with 2 threads, in
/// one process, 8.45 ms with sleeping workers and 6.79 ms with this policy
/// (int8: 4.87 and 4.10 ms). Spinning after the run is what must not happen:
/// each session has its own pool, and a pool still spinning takes the core
/// the next session's run needs (spinning left on made CenterFace 26.7 ms).
///
/// With `cores` pinned, the workers go to the cores after the caller's
/// ([`crate::parallel::Cores::worker_affinities`]).
pub fn session_from_memory(
    env: &ort::environment::Environment,
    model: &[u8],
    intra_op_threads: usize,
    cores: &crate::parallel::Cores,
) -> Result<ort::session::Session, ort::Error> {
    let threads = intra_op_threads.max(1);
    let mut builder = ort::session::Session::builder(env)?
        .with_optimization_level(ort::session::builder::GraphOptimizationLevel::Level3)?
        .with_intra_threads(threads)?
        .with_inter_threads(1)?
        .with_intra_op_spinning(true)?
        .with_config_entry("session.force_spinning_stop", "1")?;
    if let Some(affinities) = cores.worker_affinities(threads) {
        builder = builder.with_config_entry("session.intra_op_thread_affinities", affinities)?;
    }
    builder.commit_from_memory(model)
}
