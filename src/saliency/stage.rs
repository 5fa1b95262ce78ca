//! The saliency stage of the pipeline: from the exact classifier batch of a
//! frame to the images users look at, one per classifier:
//! (a) the frame, dimmed, with each face's saliency as a heat map over it, and
//! (b) each face's raw saliency map as a grey image the size of its chip's
//! footprint in the frame.
//!
//! Gradient graphs are built on first use per (classifier, method) and kept:
//! a frame that asks for no saliency costs nothing.

use super::render::{
    map_from_gradient, overlay_heatmaps_on_chips, ChipPlacement, GreyImage, RgbImage,
};
use super::{GradientModel, SaliencyBatch, SaliencyError, SaliencyMethod};
use crate::classify::{ClassifierTask, FaceChip};
use crate::frame::Frame;
use crate::manifest::Manifest;
use ndarray::ArrayView4;
use std::collections::HashMap;

/// Saliency images of one frame for one classifier.
#[derive(Debug, Clone)]
pub struct FrameSaliency {
    /// The classifier explained.
    pub task: ClassifierTask,
    /// The method used.
    pub method: SaliencyMethod,
    /// Frame-sized RGB8 image: heat maps over the faces, the rest dimmed.
    pub overlay: Frame,
    /// Per face (id, grey map), in face order.
    pub face_maps: Vec<(String, GreyImage)>,
}

/// Gradient models per classifier and method, built on demand.
pub struct SaliencyStage {
    models: HashMap<(ClassifierTask, SaliencyMethod), GradientModel>,
    intra_threads: usize,
}

impl SaliencyStage {
    /// An empty stage; nothing is built until [`SaliencyStage::run`] needs it.
    pub fn new(intra_threads: usize) -> Self {
        Self {
            models: HashMap::new(),
            intra_threads,
        }
    }

    fn model(
        &mut self,
        manifest: &Manifest,
        task: ClassifierTask,
        method: SaliencyMethod,
    ) -> Result<&mut GradientModel, SaliencyError> {
        if !self.models.contains_key(&(task, method)) {
            let entry =
                manifest
                    .entry(task.model_name())
                    .map_err(|e| SaliencyError::InvalidModel {
                        reason: e.to_string(),
                    })?;
            let bytes = manifest
                .read_verified(entry)
                .map_err(|e| SaliencyError::InvalidModel {
                    reason: e.to_string(),
                })?;
            // The pre-softmax score: the manifest's output of kind "scores" if
            // there is one, else the input of the graph's final Softmax.
            let logits = entry
                .outputs
                .iter()
                .find(|o| o.kind == "scores")
                .map(|o| o.name.as_str());
            let model = GradientModel::new(&bytes, logits, method, self.intra_threads)?;
            log::info!(
                "saliency: built the {} gradient graph of {}",
                method,
                task.model_name()
            );
            self.models.insert((task, method), model);
        }
        self.models
            .get_mut(&(task, method))
            .ok_or(SaliencyError::InvalidModel {
                reason: "model cache".into(),
            })
    }

    /// Runs the gradient graph of `task` on a classifier batch `[N, C, H, W]`
    /// (`classes`: the class to explain per item, default each item's
    /// arg-max). The result also carries the class scores of the same forward
    /// pass, so the classifier need not run separately.
    pub fn run(
        &mut self,
        manifest: &Manifest,
        task: ClassifierTask,
        method: SaliencyMethod,
        batch: ArrayView4<'_, f32>,
        classes: Option<&[usize]>,
    ) -> Result<SaliencyBatch, SaliencyError> {
        self.model(manifest, task, method)?.run(batch, classes)
    }

    /// The saliency images of `frame` from the maps of [`SaliencyStage::run`]
    /// (`[N, C, H, W]` or `[N, 1, H, W]`), the chips they were computed on
    /// and the faces' ids, all in batch order.
    pub fn render(
        frame: &Frame,
        task: ClassifierTask,
        method: SaliencyMethod,
        maps: ArrayView4<'_, f32>,
        chips: &[FaceChip],
        face_ids: &[String],
    ) -> Result<FrameSaliency, SaliencyError> {
        let rgb = RgbImage::new(
            frame.width() as usize,
            frame.height() as usize,
            frame.data().to_vec(),
        )?;
        let n = face_ids.len().min(chips.len()).min(maps.shape()[0]);
        let maps: Vec<_> = maps
            .outer_iter()
            .take(n)
            .map(|g| map_from_gradient(g, method))
            .collect();
        let placements: Vec<ChipPlacement> = chips
            .iter()
            .take(n)
            .map(|c| ChipPlacement {
                chip_to_frame: c.chip_to_frame.0,
            })
            .collect();
        let face_maps = face_ids
            .iter()
            .zip(&maps)
            .zip(&placements)
            .map(|((id, map), placement)| (id.clone(), map.grey_for_chip(placement)))
            .collect();
        let faces: Vec<_> = placements.iter().copied().zip(maps.iter()).collect();
        let overlay = overlay_heatmaps_on_chips(&rgb, &faces)?;
        let overlay = Frame::from_rgb8(overlay.width as u32, overlay.height as u32, overlay.data)
            .map_err(|e| SaliencyError::ImageBuffer {
            reason: e.to_string(),
        })?;
        Ok(FrameSaliency {
            task,
            method,
            overlay,
            face_maps,
        })
    }
}
