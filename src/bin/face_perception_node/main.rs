//! `face_perception_node`: the ROS 2 layer over the perception core.
//!
//! Threads: the main thread spins the node (rcl); a small tokio runtime runs
//! the subscription, parameter services, diagnostics timer and signal
//! handlers; one worker thread runs inference. Between the subscription and
//! the worker sits a one-frame slot: a new frame replaces an unprocessed one
//! (counted as dropped), so the worker always takes the newest frame.

// The ROS layer needs the `ros` feature (on by default). The binary target
// has no `required-features` so that colcon's cargo-ament-build installs it.
#[cfg(feature = "ros")]
mod diagnostics;
#[cfg(feature = "ros")]
mod messages;
#[cfg(feature = "ros")]
mod node;
#[cfg(feature = "ros")]
mod params;

#[cfg(feature = "ros")]
fn main() -> std::process::ExitCode {
    node::main()
}

#[cfg(not(feature = "ros"))]
fn main() -> std::process::ExitCode {
    eprintln!(
        "face_perception_node was built without the `ros` feature: build it with default features"
    );
    std::process::ExitCode::FAILURE
}
