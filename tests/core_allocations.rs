//! Issue 4, "start-up once, not per frame": once a pipeline has run a few
//! frames of a size, the next frames of that size allocate no large buffer,
//! in our code or in the libraries under it (ONNX Runtime, OpenCV).
//!
//! The test binary defines the C allocation functions itself. The dynamic
//! linker then binds every caller in the process to them (Rust's allocator,
//! ONNX Runtime and OpenCV alike), and they count each request before passing
//! it on to glibc's own `__libc_*` functions. A buffer counts as large from
//! [`LARGE`] bytes on: about half the smallest per-frame buffer the pipeline
//! holds, the gender batch of 5 chips (5 x 3 x 32 x 32 floats, 61,440
//! bytes); frames, detector inputs and ONNX Runtime's activations are tens
//! of times larger. Small requests (ONNX Runtime's bookkeeping of each run)
//! are counted too and printed, not limited.

#![cfg(all(target_os = "linux", target_env = "gnu"))]

use face_perception::config::{Config, RawConfig};
use face_perception::frame::{Frame, FrameLimits, RawImage};
use face_perception::pipeline::{FrameRequest, Pipeline};
use std::ffi::{c_int, c_void};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Requests of this many bytes or more count as large buffers.
const LARGE: usize = 32 * 1024;
/// Frames run before counting: sessions, arenas and buffers grow to the
/// frame size on the first ones.
const WARM_UP_FRAMES: usize = 10;
/// Frames counted.
const COUNTED_FRAMES: usize = 30;

extern "C" {
    fn __libc_malloc(size: usize) -> *mut c_void;
    fn __libc_calloc(count: usize, size: usize) -> *mut c_void;
    fn __libc_realloc(ptr: *mut c_void, size: usize) -> *mut c_void;
    fn __libc_memalign(alignment: usize, size: usize) -> *mut c_void;
}

static COUNTING: AtomicBool = AtomicBool::new(false);
static REQUESTS: AtomicUsize = AtomicUsize::new(0);
static LARGE_REQUESTS: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

/// Counts one request of `size` bytes while counting is on. Allocates
/// nothing (it runs inside the allocator).
fn count(size: usize) {
    if COUNTING.load(Ordering::Relaxed) {
        REQUESTS.fetch_add(1, Ordering::Relaxed);
        LARGEST.fetch_max(size, Ordering::Relaxed);
        if size >= LARGE {
            LARGE_REQUESTS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// # Safety
/// As C's `malloc`.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    count(size);
    __libc_malloc(size)
}

/// # Safety
/// As C's `calloc`.
#[no_mangle]
pub unsafe extern "C" fn calloc(count_: usize, size: usize) -> *mut c_void {
    count(count_.saturating_mul(size));
    __libc_calloc(count_, size)
}

/// # Safety
/// As C's `realloc`.
#[no_mangle]
pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    count(size);
    __libc_realloc(ptr, size)
}

/// # Safety
/// As C's `memalign`.
#[no_mangle]
pub unsafe extern "C" fn memalign(alignment: usize, size: usize) -> *mut c_void {
    count(size);
    __libc_memalign(alignment, size)
}

/// # Safety
/// As C's `aligned_alloc` (glibc's is its `memalign`).
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(alignment: usize, size: usize) -> *mut c_void {
    count(size);
    __libc_memalign(alignment, size)
}

/// # Safety
/// As C's `posix_memalign`: `out` must be valid for a write.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(
    out: *mut *mut c_void,
    alignment: usize,
    size: usize,
) -> c_int {
    count(size);
    let pointer_size = std::mem::size_of::<*mut c_void>();
    if !alignment.is_power_of_two() || !alignment.is_multiple_of(pointer_size) {
        return libc::EINVAL;
    }
    let p = __libc_memalign(alignment, size);
    if p.is_null() {
        return libc::ENOMEM;
    }
    *out = p;
    0
}

/// What the counted frames asked of the allocator.
#[derive(Debug)]
struct Requests {
    all: usize,
    large: usize,
    largest: usize,
}

/// Counting is process-wide: each test holds this while it runs, so that
/// no other test's allocations are counted with its own.
static ONE_TEST_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_TEST_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn counted(run: impl FnOnce()) -> Requests {
    REQUESTS.store(0, Ordering::SeqCst);
    LARGE_REQUESTS.store(0, Ordering::SeqCst);
    LARGEST.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    run();
    COUNTING.store(false, Ordering::SeqCst);
    Requests {
        all: REQUESTS.load(Ordering::SeqCst),
        large: LARGE_REQUESTS.load(Ordering::SeqCst),
        largest: LARGEST.load(Ordering::SeqCst),
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn pipeline(precision: &str, threads: i64) -> Pipeline {
    let config = Config::from_raw(RawConfig {
        models_dir: repo().join("models").to_string_lossy().into_owned(),
        precision: precision.into(),
        intra_op_threads: threads,
        ..RawConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    Pipeline::new(&config).unwrap_or_else(|e| panic!("{e}"))
}

/// The benchmark frame of `width` x `height` with 5 faces, as packed
/// YUV 4:2:2 (yuyv) bytes the way a camera driver sends them.
fn yuyv_frame(width: u32, height: u32) -> Vec<u8> {
    let path = repo().join(format!(
        "tests/fixtures/core/frame_{width}x{height}_5faces.jpg"
    ));
    let jpeg = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rgb = Frame::from_compressed("jpeg", &jpeg, &FrameLimits::default()).unwrap();
    // BT.601 limited range, two pixels (Y0 U Y1 V) at a time.
    let yuv = |p: &[u8]| {
        let (r, g, b) = (f32::from(p[0]), f32::from(p[1]), f32::from(p[2]));
        (
            16.0 + 0.257 * r + 0.504 * g + 0.098 * b,
            128.0 - 0.148 * r - 0.291 * g + 0.439 * b,
            128.0 + 0.439 * r - 0.368 * g - 0.071 * b,
        )
    };
    rgb.data()
        .chunks_exact(6)
        .flat_map(|pair| {
            let (y0, u0, v0) = yuv(&pair[..3]);
            let (y1, u1, v1) = yuv(&pair[3..]);
            [y0, (u0 + u1) / 2.0, y1, (v0 + v1) / 2.0].map(|v| v.round().clamp(0.0, 255.0) as u8)
        })
        .collect()
}

/// Converts the camera bytes into a reused frame and runs the pipeline on
/// it, frame after frame; counts the allocations of the frames after the
/// warm-up.
fn requests_per_run(precision: &str, threads: i64, width: u32, height: u32) -> Requests {
    let bytes = yuyv_frame(width, height);
    let raw = RawImage {
        width,
        height,
        encoding: "yuv422_yuy2",
        is_bigendian: false,
        step: width * 2,
        data: &bytes,
    };
    let limits = FrameLimits::default();
    let mut pipeline = pipeline(precision, threads);
    let mut frame = Frame::empty();
    let mut one_frame = || {
        frame.assign_from_raw(&raw, &limits).unwrap();
        let result = pipeline.process(&frame, &FrameRequest::default()).unwrap();
        assert_eq!(result.faces.len(), 5, "{width}x{height}: every face found");
    };
    for _ in 0..WARM_UP_FRAMES {
        one_frame();
    }
    counted(|| {
        for _ in 0..COUNTED_FRAMES {
            one_frame();
        }
    })
}

fn assert_no_large_buffers(precision: &str, threads: i64) {
    for (width, height) in [(640, 480), (1920, 1080)] {
        let requests = requests_per_run(precision, threads, width, height);
        println!(
            "{precision}, {threads} thread(s), {width}x{height}, 5 faces: {:.0} requests a frame, \
             {} of {LARGE} bytes or more in {COUNTED_FRAMES} frames, largest {} bytes",
            requests.all as f64 / COUNTED_FRAMES as f64,
            requests.large,
            requests.largest
        );
        assert_eq!(
            requests.large, 0,
            "{precision}, {threads} thread(s), {width}x{height}: large buffers allocated per frame: {requests:?}"
        );
    }
}

#[test]
fn default_pipeline_allocates_no_large_buffer_per_frame() {
    let _serial = serial();
    assert_no_large_buffers("int8", 2);
}

#[test]
fn fp32_pipeline_on_one_thread_allocates_no_large_buffer_per_frame() {
    let _serial = serial();
    assert_no_large_buffers("fp32", 1);
}

#[test]
fn the_counter_sees_allocations_of_rust_and_of_the_libraries() {
    let _serial = serial();
    // Rust's own allocator, OpenCV (a Mat's pixels) and a large one of each.
    let requests = counted(|| {
        let v = std::hint::black_box(vec![0u8; 3 * LARGE]);
        drop(v);
        let m = opencv::core::Mat::new_rows_cols_with_default(
            256,
            256,
            opencv::core::CV_8UC3,
            opencv::core::Scalar::all(0.0),
        )
        .unwrap();
        drop(std::hint::black_box(m));
    });
    assert!(requests.large >= 2, "{requests:?}");
    assert!(requests.largest >= 3 * LARGE, "{requests:?}");
}
