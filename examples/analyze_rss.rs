//! Peak resident memory of `face_perception analyze` on one image, as the
//! kernel counts it for the finished process (`ru_maxrss` from `wait4`), for
//! the default settings and with more models loaded (fp32; saliency, age).
//! Part of `make bench`; issue 4's target is 200 MB for one image.
//!
//! Usage: analyze_rss [CLI_BINARY]   (default: target/release/face_perception)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs per setting; the median is reported (page-cache and allocator
/// effects make single runs differ by a few MB).
const RUNS: usize = 5;
/// Issue 4's bound on the peak RSS of `analyze` on one image.
const TARGET_MB: f64 = 200.0;

/// Peak RSS in KiB of `command` run to completion, or why it could not be had.
fn peak_rss_kib(command: &mut Command) -> Result<i64, String> {
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own unreaped child, the pointers are valid for the call.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if reaped != pid {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!("{command:?} failed (wait status {status})"));
    }
    // Linux reports ru_maxrss in KiB.
    Ok(usage.ru_maxrss)
}

fn median(mut values: Vec<i64>) -> i64 {
    values.sort_unstable();
    values[values.len() / 2]
}

fn main() -> Result<(), String> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let binary = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target/release/face_perception"));
    if !binary.is_file() {
        return Err(format!(
            "{} not found (cargo build --release --bin face_perception)",
            binary.display()
        ));
    }
    let photo = repo.join("tests/fixtures/models/photos/astronaut.jpg");
    let scratch = std::env::temp_dir().join(format!("analyze_rss_{}", std::process::id()));
    let scratch_arg = scratch.to_string_lossy().into_owned();
    let settings: [(&str, Vec<&str>); 4] = [
        ("default (int8)", vec![]),
        ("--precision fp32", vec!["--precision", "fp32"]),
        (
            "--age --saliency DIR",
            vec!["--age", "--saliency", &scratch_arg],
        ),
        (
            "--precision fp32 --age --saliency DIR",
            vec!["--precision", "fp32", "--age", "--saliency", &scratch_arg],
        ),
    ];
    println!(
        "analyze_rss: peak RSS of `face_perception analyze` on {} (median of {RUNS} runs; target {TARGET_MB} MB)",
        photo.file_name().and_then(|n| n.to_str()).unwrap_or("?")
    );
    for (name, extra) in &settings {
        let runs = (0..RUNS)
            .map(|_| {
                peak_rss_kib(
                    Command::new(&binary)
                        .arg("analyze")
                        .args(extra)
                        .arg(&photo)
                        .env("FACE_PERCEPTION_MODELS", repo.join("models")),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let kib = median(runs);
        let mb = kib as f64 * 1024.0 / 1e6;
        println!(
            "  {name:<40} {mb:7.1} MB ({:.1} MiB){}",
            kib as f64 / 1024.0,
            if mb <= TARGET_MB { "" } else { "  over target" }
        );
    }
    remove(&scratch);
    Ok(())
}

fn remove(dir: &Path) {
    if dir.exists() {
        let _ = std::fs::remove_dir_all(dir);
    }
}
