//! Link settings for the ROS 2 layer when it is built against the PyPI ROS 2
//! wheels (see `scripts/env.sh`); nothing is added for a system ROS 2.
//!
//! - `FACE_PERCEPTION_LIBPYTHON_DIR`: libpython, needed by the
//!   `*__rosidl_generator_py.so` libraries that the wheels' `librcl.so` loads.
//! - `FACE_PERCEPTION_ORT_DYLIB`: the ONNX Runtime library found at build
//!   time, a last-resort default for `runtime::environment()`.

fn main() {
    for var in ["FACE_PERCEPTION_LIBPYTHON_DIR", "FACE_PERCEPTION_ORT_DYLIB"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if let Ok(path) = std::env::var("FACE_PERCEPTION_ORT_DYLIB") {
        println!("cargo:rustc-env=FACE_PERCEPTION_ORT_DYLIB={path}");
    }
    if std::env::var_os("CARGO_FEATURE_ROS").is_none() {
        return;
    }
    if let Ok(dir) = std::env::var("FACE_PERCEPTION_LIBPYTHON_DIR") {
        println!("cargo:rustc-link-search=native={dir}");
        // Every linked target: binaries, tests, examples and benches.
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-lpython3.11,--as-needed");
    }
}
