//! Splitting a frame's classification work among side-by-side lanes.
//!
//! With two cores and two classifiers, the pipeline runs the classifiers
//! side by side, one ONNX Runtime thread each, in one of two ways
//! (`classifier_split`):
//!
//! - by model ([`by_model`], the default): each classifier takes every face
//!   of the frame in one batched call, the classifiers spread over the
//!   lanes, the longest lane on the calling thread. For 5 faces, int8
//!   emotion (about 1.35 ms with its chips) is then the critical path while
//!   gender (about 0.85 ms) leaves its core idle for the rest.
//! - by face ([`share`]): both classifiers cost about the same per face
//!   whatever the batch size (int8 emotion 0.29 ms for one face, 1.52 ms
//!   for five, in ONNX Runtime at one thread, before its stem was widened),
//!   so the work can be cut at a face instead of at a classifier: the faces
//!   of every classifier, one after the other, are cut into one contiguous
//!   stretch per lane of about equal estimated time. A classifier whose
//!   faces fall into two lanes runs as two instances (sessions of the same
//!   model) at the same time, each a batched call; [`Replicas`] keeps them,
//!   made when a cut first needs them. About 0.2 ms faster for 5 faces.
//!
//! Either way each classifier's time per face is learned from the frames
//! it runs.

use crate::classify::{Classification, Classifier, ClassifierTask, ClassifyError, FaceChip};
use crate::config::ClassifierSplit;
use crate::detect::Detection;
use crate::frame::Frame;
use crate::parallel::{side_by_side, Cores};
use ndarray::{Array4, Axis};
use std::ops::Range;
use std::time::Instant;

/// Weight of the newest frame in a classifier's time-per-face estimate.
const COST_SMOOTHING: f64 = 0.1;

/// A classifier's share of one lane: the faces it runs there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Index of the classifier in the list given to [`share`].
    pub classifier: usize,
    /// The faces, by index in the frame's face list.
    pub faces: Range<usize>,
}

/// Cuts the work of `costs.len()` classifiers on `faces` faces into at most
/// `lanes` lanes of about equal estimated time, `costs[j]` being classifier
/// `j`'s time per face (any positive unit; a non-positive or non-finite
/// cost counts as the mean of the others, or 1 when none is usable).
///
/// The work is the faces of classifier 0, then those of classifier 1, and
/// so on; lane `l` gets the stretch whose cumulative cost starts nearest to
/// `l / lanes` of the total. So each lane's pieces are contiguous, a
/// classifier is split between consecutive lanes only, and the lower faces
/// of a split classifier go to the lower lane. Lanes may be empty.
pub fn share(costs: &[f64], faces: usize, lanes: usize) -> Vec<Vec<Piece>> {
    let lanes = lanes.max(1);
    let mut out: Vec<Vec<Piece>> = vec![Vec::new(); lanes];
    if faces == 0 || costs.is_empty() {
        return out;
    }
    let cost = usable_costs(costs);
    let cost_of = |j: usize| cost[j];
    let units = costs.len() * faces;
    // prefix[u]: cost of the units before unit u.
    let mut prefix = Vec::with_capacity(units + 1);
    prefix.push(0.0);
    for u in 0..units {
        prefix.push(prefix[u] + cost_of(u / faces));
    }
    let total = prefix[units];
    // bounds[l]..bounds[l + 1]: the units of lane l.
    let mut bounds = vec![0usize; lanes + 1];
    bounds[lanes] = units;
    for l in 1..lanes {
        let target = total * l as f64 / lanes as f64;
        let mut b = bounds[l - 1];
        while b < units && (prefix[b + 1] - target).abs() <= (prefix[b] - target).abs() {
            b += 1;
        }
        bounds[l] = b;
    }
    for (l, lane) in out.iter_mut().enumerate() {
        let (start, end) = (bounds[l], bounds[l + 1]);
        for j in 0..costs.len() {
            let first = start.max(j * faces);
            let last = end.min((j + 1) * faces);
            if first < last {
                lane.push(Piece {
                    classifier: j,
                    faces: first - j * faces..last - j * faces,
                });
            }
        }
    }
    out
}

/// Gives each of `costs.len()` classifiers all `faces` faces in one piece,
/// so that each runs them in one batched call, the classifiers spread over
/// at most `lanes` lanes: dearest first, each to the lane with the least
/// estimated time so far (costs read as in [`share`]; ties go to the
/// lower classifier and the lower lane). Lanes are ordered by estimated
/// time, longest first: [`run_plan`] runs lane 0 on the calling thread,
/// which starts at once, while the others wait for a worker to wake.
/// Lanes may be empty.
pub fn by_model(costs: &[f64], faces: usize, lanes: usize) -> Vec<Vec<Piece>> {
    let lanes = lanes.max(1);
    let mut out: Vec<(f64, Vec<Piece>)> = vec![(0.0, Vec::new()); lanes];
    if faces == 0 || costs.is_empty() {
        return out.into_iter().map(|(_, lane)| lane).collect();
    }
    let cost = usable_costs(costs);
    let mut order: Vec<usize> = (0..costs.len()).collect();
    // Stable: equal costs keep the classifiers' order.
    order.sort_by(|&a, &b| cost[b].total_cmp(&cost[a]));
    for j in order {
        let lane = (0..lanes)
            .min_by(|&a, &b| out[a].0.total_cmp(&out[b].0))
            .expect("at least one lane");
        out[lane].0 += cost[j];
        out[lane].1.push(Piece {
            classifier: j,
            faces: 0..faces,
        });
    }
    out.sort_by(|a, b| b.0.total_cmp(&a.0));
    out.into_iter().map(|(_, lane)| lane).collect()
}

/// `costs` with each non-positive or non-finite entry replaced by the mean
/// of the usable ones (1 when none is usable).
fn usable_costs(costs: &[f64]) -> Vec<f64> {
    let usable: Vec<f64> = costs
        .iter()
        .copied()
        .filter(|c| c.is_finite() && *c > 0.0)
        .collect();
    let fallback = if usable.is_empty() {
        1.0
    } else {
        usable.iter().sum::<f64>() / usable.len() as f64
    };
    costs
        .iter()
        .map(|&c| {
            if c.is_finite() && c > 0.0 {
                c
            } else {
                fallback
            }
        })
        .collect()
}

/// Number of lanes in which `plan` has a piece of `classifier`: the
/// instances of it that must run at the same time.
pub fn lanes_of(plan: &[Vec<Piece>], classifier: usize) -> usize {
    plan.iter()
        .filter(|lane| lane.iter().any(|p| p.classifier == classifier))
        .count()
}

/// A learned time per face: an exponential moving average of the frames'.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TimePerFace(Option<f64>);

impl TimePerFace {
    /// Seconds per face, 0 while nothing was measured (which [`share`]
    /// reads as "like the others").
    pub fn seconds(&self) -> f64 {
        self.0.unwrap_or(0.0)
    }

    /// Takes in one frame's `seconds` for `faces` faces.
    pub fn learn(&mut self, seconds: f64, faces: usize) {
        if faces == 0 || !seconds.is_finite() {
            return;
        }
        let sample = seconds / faces as f64;
        self.0 = Some(match self.0 {
            None => sample,
            Some(c) => c + COST_SMOOTHING * (sample - c),
        });
    }
}

/// What [`run_plan`] gives for one classifier.
pub struct Ran<T> {
    /// What running each of its pieces gave, in face order.
    pub pieces: Vec<T>,
    /// The pieces' wall times added up, in seconds.
    pub seconds: f64,
}

/// Runs the pieces of `plan` with `run`, the lanes side by side on `cores`
/// ([`side_by_side`]), each lane's pieces in order on its thread. Each
/// piece runs on the next unused one of its classifier's `instances`
/// (`instances[j]` must hold [`lanes_of`]`(plan, j)` of them). One result
/// per classifier, its pieces in face order: a split classifier's lower
/// faces are in the lower lane, and lanes come back in order.
pub fn run_plan<W, T, F>(
    plan: Vec<Vec<Piece>>,
    instances: Vec<Vec<&mut W>>,
    cores: &Cores,
    run: F,
) -> Vec<Ran<T>>
where
    W: Send,
    T: Send,
    F: Fn(&Piece, &mut W) -> T + Sync,
{
    let mut ran: Vec<Ran<T>> = instances
        .iter()
        .map(|_| Ran {
            pieces: Vec::new(),
            seconds: 0.0,
        })
        .collect();
    let mut free: Vec<_> = instances.into_iter().map(Vec::into_iter).collect();
    let run = &run;
    let jobs: Vec<_> = plan
        .into_iter()
        .filter(|lane| !lane.is_empty())
        .map(|lane| {
            let work: Vec<(Piece, &mut W)> = lane
                .into_iter()
                .map(|piece| {
                    let instance = free[piece.classifier]
                        .next()
                        .expect("an instance for every lane of each classifier");
                    (piece, instance)
                })
                .collect();
            move || {
                work.into_iter()
                    .map(|(piece, instance)| {
                        let started = Instant::now();
                        let output = run(&piece, instance);
                        (piece.classifier, output, started.elapsed().as_secs_f64())
                    })
                    .collect::<Vec<_>>()
            }
        })
        .collect();
    for (classifier, output, seconds) in side_by_side(jobs, cores).into_iter().flatten() {
        ran[classifier].pieces.push(output);
        ran[classifier].seconds += seconds;
    }
    ran
}

/// One classifier as one or more instances of the same model, so that its
/// faces can be classified in several lanes at once. Instance 0 is the
/// classifier proper (labels, explained runs); the others are made on
/// demand and kept.
pub struct Replicas {
    instances: Vec<Classifier>,
    /// Time per face (chip cutting and inference).
    time_per_face: TimePerFace,
    /// How many instances hold faces of the last [`classify_side_by_side`] call
    /// (instance `i` the `i`-th stretch in face order); 0 when the
    /// classifier proper was prepared directly.
    last_parts: usize,
}

impl Replicas {
    /// The classifier `first` as the only instance so far.
    pub fn new(first: Classifier) -> Self {
        Self {
            instances: vec![first],
            time_per_face: TimePerFace::default(),
            last_parts: 0,
        }
    }

    /// The classifier proper.
    pub fn main(&self) -> &Classifier {
        &self.instances[0]
    }

    /// The classifier proper, mutably. A call that prepares it directly
    /// (rather than through [`classify_side_by_side`]) makes it the holder of the
    /// last batch.
    pub fn main_mut(&mut self) -> &mut Classifier {
        self.last_parts = 0;
        &mut self.instances[0]
    }

    /// Number of instances loaded.
    pub fn instances(&self) -> usize {
        self.instances.len()
    }

    /// Runs every instance that has never classified as many as `faces`
    /// at once on all of them, so that ONNX Runtime's memory of each holds
    /// whatever share of this many faces a later cut gives it. Otherwise
    /// an instance's arena grows (by 4 MiB at a time here) in the middle of
    /// a stream, on the frame whose cut first hands it more faces than
    /// before; the cut moves with the measured times. Costs one extra run
    /// per instance the first time a frame has more faces than any before.
    fn size_for(
        &mut self,
        frame: &Frame,
        faces: &[Detection],
        align: bool,
    ) -> Result<(), ClassifyError> {
        for instance in &mut self.instances {
            if instance.largest_run() < faces.len() {
                instance.classify(frame, faces, align)?;
            }
        }
        Ok(())
    }

    /// Unloads every instance but the classifier proper (for a split by
    /// model, which needs one).
    pub fn drop_extra_instances(&mut self) {
        self.instances.truncate(1);
        self.last_parts = self.last_parts.min(1);
    }

    /// Grows every instance's preallocated batch to `capacity` faces.
    pub fn reserve(&mut self, capacity: usize) {
        for c in &mut self.instances {
            c.reserve(capacity);
        }
    }

    /// The normalised input batch of the last call, all faces in order,
    /// gathered from the instances that classified them.
    pub fn last_batch(&self) -> Array4<f32> {
        if self.last_parts <= 1 {
            return self.main().last_batch().to_owned();
        }
        let parts: Vec<_> = self.instances[..self.last_parts]
            .iter()
            .map(Classifier::last_batch)
            .collect();
        ndarray::concatenate(Axis(0), &parts)
            .expect("instances of one model have batches of one chip shape")
    }

    /// Where each chip of the last batch came from, all faces in order.
    pub fn last_chips(&self) -> Vec<FaceChip> {
        if self.last_parts <= 1 {
            return self.main().last_chips().to_vec();
        }
        self.instances[..self.last_parts]
            .iter()
            .flat_map(|c| c.last_chips().iter().cloned())
            .collect()
    }
}

/// Classifies `faces` with every one of `classifiers`, the work split
/// among `lanes` side-by-side lanes on `cores` ([`run_plan`]) as `split`
/// says: by model ([`by_model`]) or by face ([`share`]), either by each
/// classifier's measured time per face (equal until measured). Missing
/// instances are made with `new_instance` first. Results per classifier,
/// in the order of `classifiers`, faces in order.
#[allow(clippy::too_many_arguments)]
pub fn classify_side_by_side<E: From<ClassifyError>>(
    classifiers: &mut [&mut Replicas],
    frame: &Frame,
    faces: &[Detection],
    align: bool,
    lanes: usize,
    split: ClassifierSplit,
    cores: &Cores,
    mut new_instance: impl FnMut(ClassifierTask) -> Result<Classifier, E>,
) -> Result<Vec<Vec<Classification>>, E> {
    if faces.is_empty() {
        // Through the classifier proper, so that its last batch is empty too.
        return classifiers
            .iter_mut()
            .map(|r| Ok(r.main_mut().classify(frame, faces, align)?))
            .collect();
    }
    let costs: Vec<f64> = classifiers
        .iter()
        .map(|r| r.time_per_face.seconds())
        .collect();
    let plan = match split {
        ClassifierSplit::Model => by_model(&costs, faces.len(), lanes),
        ClassifierSplit::Face => share(&costs, faces.len(), lanes),
    };
    for (j, replicas) in classifiers.iter_mut().enumerate() {
        let needed = lanes_of(&plan, j);
        while replicas.instances.len() < needed {
            let task = replicas.main().task();
            log::debug!(
                "classifier {task:?}: loading instance {} to share its faces between cores",
                replicas.instances.len() + 1
            );
            let mut extra = new_instance(task)?;
            extra.reserve(faces.len());
            replicas.instances.push(extra);
        }
        // By face, the cut moves with the measured times; by model, each
        // classifier's one instance always takes every face.
        if lanes > 1 && split == ClassifierSplit::Face {
            replicas.size_for(frame, faces, align)?;
        }
        replicas.last_parts = needed;
    }
    let instances = classifiers
        .iter_mut()
        .map(|r| r.instances.iter_mut().collect())
        .collect();
    let ran = run_plan(
        plan,
        instances,
        cores,
        |piece, classifier: &mut Classifier| {
            classifier.classify(frame, &faces[piece.faces.clone()], align)
        },
    );
    let mut results = Vec::with_capacity(ran.len());
    for (replicas, ran) in classifiers.iter_mut().zip(ran) {
        replicas.time_per_face.learn(ran.seconds, faces.len());
        let mut classified = Vec::with_capacity(faces.len());
        for piece in ran.pieces {
            classified.extend(piece?);
        }
        results.push(classified);
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(classifier: usize, faces: Range<usize>) -> Piece {
        Piece { classifier, faces }
    }

    #[test]
    fn equal_costs_give_each_classifier_its_own_lane() {
        assert_eq!(
            share(&[1.0, 1.0], 5, 2),
            vec![vec![piece(0, 0..5)], vec![piece(1, 0..5)]]
        );
        // Unmeasured classifiers count as equal.
        assert_eq!(share(&[0.0, f64::NAN], 5, 2), share(&[1.0, 1.0], 5, 2));
    }

    #[test]
    fn the_slower_classifier_is_split_at_a_face() {
        // int8 gender 0.19 ms a face, emotion 0.33: total 2.6 ms, half 1.3;
        // gender's 0.95 plus one emotion face is nearest.
        assert_eq!(
            share(&[0.19, 0.33], 5, 2),
            vec![vec![piece(0, 0..5), piece(1, 0..1)], vec![piece(1, 1..5)]]
        );
        // fp32: gender 0.46, emotion 0.35: half of 4.05 is in gender's faces.
        assert_eq!(
            share(&[0.46, 0.35], 5, 2),
            vec![vec![piece(0, 0..4)], vec![piece(0, 4..5), piece(1, 0..5)]]
        );
    }

    #[test]
    fn every_face_of_every_classifier_is_covered_once() {
        for lanes in 1..5 {
            for faces in 0..7 {
                for costs in [vec![1.0], vec![0.2, 0.3, 3.0], vec![5.0, 0.1]] {
                    let plan = share(&costs, faces, lanes);
                    assert_eq!(plan.len(), lanes);
                    for j in 0..costs.len() {
                        let mut covered: Vec<usize> = plan
                            .iter()
                            .flatten()
                            .filter(|p| p.classifier == j)
                            .flat_map(|p| p.faces.clone())
                            .collect();
                        covered.sort_unstable();
                        let want: Vec<usize> = if faces == 0 {
                            Vec::new()
                        } else {
                            (0..faces).collect()
                        };
                        assert_eq!(covered, want, "{costs:?} {faces} faces {lanes} lanes");
                    }
                }
            }
        }
    }

    #[test]
    fn no_lane_is_much_longer_than_the_even_share() {
        let costs = [0.46, 0.35, 2.1];
        let plan = share(&costs, 5, 2);
        let load = |lane: &Vec<Piece>| {
            lane.iter()
                .map(|p| costs[p.classifier] * p.faces.len() as f64)
                .sum::<f64>()
        };
        let even = costs.iter().sum::<f64>() * 5.0 / 2.0;
        let largest = costs.iter().cloned().fold(0.0, f64::max);
        for lane in &plan {
            // Rounding to whole faces costs at most half a face of the
            // dearest classifier.
            assert!(load(lane) <= even + largest / 2.0 + 1e-9, "{plan:?}");
        }
    }

    #[test]
    fn time_per_face_starts_at_the_first_frame_and_then_moves_slowly() {
        let mut t = TimePerFace::default();
        assert_eq!(t.seconds(), 0.0);
        t.learn(0.0, 0);
        t.learn(f64::NAN, 5);
        assert_eq!(t.seconds(), 0.0, "no faces or no time teach nothing");
        t.learn(1.0e-3, 5);
        assert!((t.seconds() - 2.0e-4).abs() < 1e-12);
        // One frame twice as slow moves the estimate by a tenth of the gap.
        t.learn(2.0e-3, 5);
        assert!((t.seconds() - 2.2e-4).abs() < 1e-12, "{}", t.seconds());
    }

    #[test]
    fn by_model_gives_each_classifier_every_face_in_one_piece() {
        // int8 gender 0.17 ms a face, emotion 0.27: emotion on lane 0 (the
        // calling thread), gender on lane 1.
        assert_eq!(
            by_model(&[0.17, 0.27], 5, 2),
            vec![vec![piece(1, 0..5)], vec![piece(0, 0..5)]]
        );
        // Unmeasured: equal, in the classifiers' order.
        assert_eq!(
            by_model(&[0.0, f64::NAN], 5, 2),
            vec![vec![piece(0, 0..5)], vec![piece(1, 0..5)]]
        );
        // Three on two lanes: the dearest alone, the other two together,
        // and that pair, being longer, first.
        assert_eq!(
            by_model(&[0.17, 0.27, 0.3], 4, 2),
            vec![vec![piece(1, 0..4), piece(0, 0..4)], vec![piece(2, 0..4)]]
        );
        // One lane: all of them, dearest first; more lanes than
        // classifiers: empty lanes last.
        assert_eq!(
            by_model(&[0.1, 0.3], 3, 1),
            vec![vec![piece(1, 0..3), piece(0, 0..3)]]
        );
        assert_eq!(
            by_model(&[0.1, 0.3], 3, 3),
            vec![vec![piece(1, 0..3)], vec![piece(0, 0..3)], vec![]]
        );
        assert_eq!(by_model(&[0.1, 0.3], 0, 2), vec![vec![], vec![]]);
        for lanes in 1..4 {
            for costs in [vec![1.0], vec![0.2, 0.3, 3.0], vec![5.0, 0.1]] {
                let plan = by_model(&costs, 4, lanes);
                for j in 0..costs.len() {
                    assert_eq!(lanes_of(&plan, j), 1, "{costs:?} {lanes} lanes");
                }
            }
        }
    }

    #[test]
    fn one_lane_runs_everything_in_order() {
        assert_eq!(
            share(&[0.3, 0.1], 3, 1),
            vec![vec![piece(0, 0..3), piece(1, 0..3)]]
        );
    }
}
