//! `face_perception`: a ROS-free perception core for real-time face analysis.
//!
//! Data flows one way through one module per stage:
//! raw image buffer -> [`frame`] -> [`detect`] (face boxes) -> [`classify`]
//! (gender, emotion, age per face) -> [`track`] (stable ids, smoothing) ->
//! [`render`] (annotated image) and [`saliency`] (guided back-propagation).
//! [`pipeline`] composes the stages ([`balance`] shares the classifiers' work
//! among the cores); [`manifest`] describes the models in
//! `models/`; [`runtime`] loads ONNX Runtime once per process;
//! [`onnx_proto`] holds the ONNX messages that the load-time graph rewrites
//! (saliency graphs, the int8 detector's byte input) read and write.
//!
//! Nothing here imports ROS: the ROS 2 node (`src/bin/face_perception_node`)
//! is a thin layer over [`pipeline`].

pub mod balance;
pub mod classify;
pub mod config;
pub mod detect;
pub mod frame;
pub mod manifest;
pub mod onnx_proto;
pub mod parallel;
pub mod pipeline;
pub mod render;
pub mod runtime;
pub mod saliency;
pub mod track;
