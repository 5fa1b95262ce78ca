//! The saliency stage of the pipeline: from the exact classifier batch of a
//! frame to the images users look at, one per classifier:
//! (a) the frame, dimmed, with each face's saliency as a heat map over it, and
//! (b) each face's raw saliency map as a grey image the size of its chip's
//! footprint in the frame.
//!
//! Gradient graphs are built on first use per (classifier, method, intra-op
//! threads) and kept: a frame that asks for no saliency costs nothing. Two or
//! more classifiers explained on the same frame run side by side, sharing the
//! stage's threads ([`SaliencyStage::run_each`]).

use super::render::{
    map_from_gradient, overlay_heatmaps_on_chips, ChipPlacement, GreyImage, RgbImage,
};
use super::{GradientModel, SaliencyBatch, SaliencyError, SaliencyMethod, SaliencyOptions};
use crate::classify::{ClassifierTask, FaceChip};
use crate::frame::Frame;
use crate::manifest::Manifest;
use crate::parallel::Cores;
use ndarray::ArrayView4;
use std::collections::hash_map::Entry;
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

/// Gradient models per classifier, method and thread count, built on demand.
pub struct SaliencyStage {
    models: HashMap<(ClassifierTask, SaliencyMethod, usize), GradientModel>,
    intra_threads: usize,
    /// Where the threads run: the pipeline's plan for `intra_threads`.
    cores: Cores,
}

/// One classifier batch to explain: the classifier and its batch `[N, C, H, W]`.
pub type SaliencyJob<'a> = (ClassifierTask, ArrayView4<'a, f32>);

impl SaliencyStage {
    /// An empty stage; nothing is built until [`SaliencyStage::run`] needs it.
    /// `cores`: where the caller and ONNX Runtime's workers run with
    /// `intra_threads` threads ([`Cores::plan`]).
    pub fn new(intra_threads: usize, cores: Cores) -> Self {
        Self {
            models: HashMap::new(),
            intra_threads,
            cores,
        }
    }

    /// The cores of a gradient graph run with `threads` threads
    /// ([`Cores::for_runs_of`]).
    fn cores_for(&self, threads: usize) -> Cores {
        self.cores.for_runs_of(threads, self.intra_threads)
    }

    /// The model of `(task, method)` with `threads` intra-op threads, built
    /// on first use.
    fn model(
        &mut self,
        manifest: &Manifest,
        task: ClassifierTask,
        method: SaliencyMethod,
        threads: usize,
    ) -> Result<&mut GradientModel, SaliencyError> {
        let cores = self.cores_for(threads);
        let slot = match self.models.entry((task, method, threads)) {
            Entry::Occupied(built) => return Ok(built.into_mut()),
            Entry::Vacant(slot) => slot,
        };
        let invalid = |e: crate::manifest::ManifestError| SaliencyError::InvalidModel {
            reason: e.to_string(),
        };
        let entry = manifest.entry(task.model_name()).map_err(invalid)?;
        let bytes = manifest.read_verified(entry).map_err(invalid)?;
        // The pre-softmax score: the manifest's output of kind "scores" if
        // there is one, else the input of the graph's final Softmax.
        let logits = entry
            .outputs
            .iter()
            .find(|o| o.kind == "scores")
            .map(|o| o.name.as_str());
        let model = GradientModel::with_options(
            &bytes,
            &SaliencyOptions {
                method,
                pre_softmax_output: logits,
                gradcam_layer: None,
                intra_threads: threads,
                cores,
            },
        )?;
        log::info!(
            "saliency: built the {} gradient graph of {} ({threads} intra-op thread(s))",
            method,
            task.model_name()
        );
        Ok(slot.insert(model))
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
        let threads = self.intra_threads;
        self.model(manifest, task, method, threads)?
            .run(batch, classes)
    }

    /// Runs the gradient graphs of several classifiers on their batches
    /// (each item's top class explained), results in the order of `jobs`.
    /// With two or more jobs and two or more threads they run side by side,
    /// each on its own thread with its share of the threads (measured with
    /// 2 threads and 5 faces, guided: 8.4 ms for emotion and gender side by
    /// side at 1 thread each, against 11.7 ms one after the other at 2).
    pub fn run_each(
        &mut self,
        manifest: &Manifest,
        method: SaliencyMethod,
        jobs: &[SaliencyJob<'_>],
    ) -> Result<Vec<SaliencyBatch>, SaliencyError> {
        if jobs.len() < 2 || self.intra_threads < 2 {
            return jobs
                .iter()
                .map(|&(task, batch)| self.run(manifest, task, method, batch, None))
                .collect();
        }
        let threads = (self.intra_threads / jobs.len()).max(1);
        let cores = self.cores_for(threads);
        for &(task, _) in jobs {
            self.model(manifest, task, method, threads)?;
        }
        // Disjoint models, one per job (a classifier named twice runs once
        // per naming, one after the other on its thread).
        let mut models: Vec<(ClassifierTask, &mut GradientModel)> = self
            .models
            .iter_mut()
            .filter(|((task, m, t), _)| {
                *m == method && *t == threads && jobs.iter().any(|(j, _)| j == task)
            })
            .map(|((task, _, _), model)| (*task, model))
            .collect();
        let work: Vec<_> = models
            .iter_mut()
            .map(|(task, model)| {
                let task = *task;
                move || {
                    jobs.iter()
                        .enumerate()
                        .filter(|(_, (t, _))| *t == task)
                        .map(|(i, &(_, batch))| model.run(batch, None).map(|r| (i, r)))
                        .collect::<Result<Vec<_>, _>>()
                }
            })
            .collect();
        let results = crate::parallel::side_by_side(work, &cores)
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        let mut ordered: Vec<Option<SaliencyBatch>> = (0..jobs.len()).map(|_| None).collect();
        for (i, batch) in results.into_iter().flatten() {
            ordered[i] = Some(batch);
        }
        ordered
            .into_iter()
            .map(|b| {
                b.ok_or(SaliencyError::InvalidModel {
                    reason: "model cache".into(),
                })
            })
            .collect()
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
