//! The saliency stage of the pipeline: from the exact classifier batch of a
//! frame to the images users look at, one per classifier:
//! (a) the frame, dimmed, with each face's saliency as a heat map over it, and
//! (b) each face's raw saliency map as a grey image the size of its chip's
//! footprint in the frame.
//!
//! Gradient graphs are built on first use per (classifier, method, intra-op
//! threads) and kept: a frame that asks for no saliency costs nothing. With
//! two or more threads, the faces of two or more classifiers explained on a
//! frame are shared evenly among the threads, one graph run per thread at a
//! time ([`SaliencyStage::run_each`], [`crate::balance`]).

use super::render::{
    map_from_gradient, overlay_heatmaps_on_chips, ChipPlacement, GreyImage, RgbImage,
};
use super::{GradientModel, SaliencyBatch, SaliencyError, SaliencyMethod, SaliencyOptions};
use crate::balance::{lanes_of, run_plan, share, TimePerFace};
use crate::classify::{ClassifierTask, FaceChip};
use crate::frame::Frame;
use crate::manifest::Manifest;
use crate::parallel::Cores;
use ndarray::{s, ArrayView4, Axis};
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

/// Gradient models, built on demand.
pub struct SaliencyStage {
    /// Per classifier, method and thread count, the instances built so far
    /// (several when one classifier's faces run on several threads at once).
    models: HashMap<(ClassifierTask, SaliencyMethod, usize), Vec<GradientModel>>,
    /// Time per face of each classifier's gradient graph at one thread.
    time_per_face: HashMap<(ClassifierTask, SaliencyMethod), TimePerFace>,
    intra_threads: usize,
    /// Where the threads run: the pipeline's plan for `intra_threads`.
    cores: Cores,
}

/// One classifier batch to explain.
#[derive(Debug, Clone, Copy)]
pub struct SaliencyJob<'a> {
    /// The classifier.
    pub task: ClassifierTask,
    /// Its batch `[N, C, H, W]`.
    pub batch: ArrayView4<'a, f32>,
    /// The class to explain per face; `None`: each face's top class in the
    /// gradient graph's own forward pass.
    pub classes: Option<&'a [usize]>,
}

impl SaliencyStage {
    /// An empty stage; nothing is built until [`SaliencyStage::run`] needs it.
    /// `cores`: where the caller and ONNX Runtime's workers run with
    /// `intra_threads` threads ([`Cores::plan`]).
    pub fn new(intra_threads: usize, cores: Cores) -> Self {
        Self {
            models: HashMap::new(),
            time_per_face: HashMap::new(),
            intra_threads,
            cores,
        }
    }

    /// The cores of a gradient graph run with `threads` threads
    /// ([`Cores::for_runs_of`]).
    fn cores_for(&self, threads: usize) -> Cores {
        self.cores.for_runs_of(threads, self.intra_threads)
    }

    /// Instance `instance` of the model of `(task, method)` with `threads`
    /// intra-op threads, built on first use.
    fn model(
        &mut self,
        manifest: &Manifest,
        task: ClassifierTask,
        method: SaliencyMethod,
        threads: usize,
        instance: usize,
    ) -> Result<&mut GradientModel, SaliencyError> {
        let cores = self.cores_for(threads);
        let built = self.models.entry((task, method, threads)).or_default();
        while built.len() <= instance {
            built.push(build(manifest, task, method, threads, &cores)?);
            log::info!(
                "saliency: built the {} gradient graph of {} ({threads} intra-op thread(s), instance {})",
                method,
                task.model_name(),
                built.len()
            );
        }
        Ok(&mut built[instance])
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
        self.model(manifest, task, method, threads, 0)?
            .run(batch, classes)
    }

    /// Runs the gradient graphs of several classifiers on their batches,
    /// results in the order of `jobs`.
    /// With two or more jobs and two or more threads, the faces of all jobs
    /// are shared evenly among the threads by each graph's measured time per
    /// face ([`share`]), one thread per run; a classifier whose faces fall
    /// on two threads runs as two instances of its graph. (5 faces, 2
    /// threads: side by side at 1 thread each beat one after the other at 2,
    /// 8.4 against 11.7 ms, guided. Against one classifier per thread,
    /// sharing the faces measured 7.2, 8.0 and 8.9 ms against 7.7, 8.2 and
    /// 7.5 ms in three bench runs (guided; Grad-CAM 2.6 to 2.7 against 2.5 to
    /// 3.5 ms), within the machine's noise: with both cores busy each graph
    /// ran slower per face than alone (emotion 2.0 to 2.2 ms a face against
    /// 1.3 to 1.5), so the even cut gained less than the single-core times
    /// predict (about 6.7 ms). A single job keeps all the threads: emotion
    /// alone, guided, 5.8 ms at 2 threads against 6.4 ms shared.) Jobs that
    /// name a classifier twice or differ in batch size also run one after
    /// the other with all the threads.
    pub fn run_each(
        &mut self,
        manifest: &Manifest,
        method: SaliencyMethod,
        jobs: &[SaliencyJob<'_>],
    ) -> Result<Vec<SaliencyBatch>, SaliencyError> {
        let faces = jobs.first().map_or(0, |job| job.batch.shape()[0]);
        let distinct = jobs
            .iter()
            .enumerate()
            .all(|(i, job)| jobs[..i].iter().all(|other| other.task != job.task));
        let same_faces = jobs.iter().all(|job| job.batch.shape()[0] == faces);
        if jobs.len() < 2 || self.intra_threads < 2 || faces == 0 || !distinct || !same_faces {
            return jobs
                .iter()
                .map(|job| self.run(manifest, job.task, method, job.batch, job.classes))
                .collect();
        }
        let costs: Vec<f64> = jobs
            .iter()
            .map(|job| {
                self.time_per_face
                    .get(&(job.task, method))
                    .map_or(0.0, TimePerFace::seconds)
            })
            .collect();
        let plan = share(&costs, faces, self.intra_threads);
        let cores = self.cores_for(1);
        for (j, job) in jobs.iter().enumerate() {
            for instance in 0..lanes_of(&plan, j) {
                self.model(manifest, job.task, method, 1, instance)?;
            }
        }
        let mut instances: Vec<Vec<&mut GradientModel>> = jobs.iter().map(|_| Vec::new()).collect();
        for ((task, m, threads), built) in self.models.iter_mut() {
            if *m != method || *threads != 1 {
                continue;
            }
            if let Some(j) = jobs.iter().position(|job| job.task == *task) {
                instances[j] = built.iter_mut().collect();
            }
        }
        let ran = run_plan(
            plan,
            instances,
            &cores,
            |piece, model: &mut GradientModel| {
                let job = &jobs[piece.classifier];
                model.run(
                    job.batch.slice(s![piece.faces.clone(), .., .., ..]),
                    job.classes.map(|c| &c[piece.faces.clone()]),
                )
            },
        );
        let mut batches = Vec::with_capacity(jobs.len());
        for (job, ran) in jobs.iter().zip(ran) {
            self.time_per_face
                .entry((job.task, method))
                .or_default()
                .learn(ran.seconds, faces);
            batches.push(concatenate(
                ran.pieces.into_iter().collect::<Result<_, _>>()?,
            )?);
        }
        Ok(batches)
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

/// The gradient graph of `task`'s classifier for `method`, with `threads`
/// intra-op threads on `cores`.
fn build(
    manifest: &Manifest,
    task: ClassifierTask,
    method: SaliencyMethod,
    threads: usize,
    cores: &Cores,
) -> Result<GradientModel, SaliencyError> {
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
    GradientModel::with_options(
        &bytes,
        &SaliencyOptions {
            method,
            pre_softmax_output: logits,
            gradcam_layer: None,
            intra_threads: threads,
            cores: cores.clone(),
        },
    )
}

/// The pieces of one classifier's batch, in face order, as one batch.
fn concatenate(mut parts: Vec<SaliencyBatch>) -> Result<SaliencyBatch, SaliencyError> {
    if parts.len() == 1 {
        return Ok(parts.remove(0));
    }
    let mismatch = |e: ndarray::ShapeError| SaliencyError::InvalidModel {
        reason: format!("gradient graph outputs of one model differ in shape: {e}"),
    };
    let maps: Vec<_> = parts.iter().map(|p| p.maps.view()).collect();
    let scores: Vec<_> = parts.iter().map(|p| p.scores.view()).collect();
    Ok(SaliencyBatch {
        maps: ndarray::concatenate(Axis(0), &maps).map_err(mismatch)?,
        scores: ndarray::concatenate(Axis(0), &scores).map_err(mismatch)?,
        classes: parts
            .iter()
            .flat_map(|p| p.classes.iter().copied())
            .collect(),
    })
}
