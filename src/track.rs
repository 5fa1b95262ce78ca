//! Tracking: stable face ids across frames, and temporal smoothing of class
//! probabilities per track so labels do not flicker on video.
//!
//! Matching is greedy and cheap (a few faces per frame): every track's box is
//! first moved by its estimated velocity, then detection-track pairs are
//! taken in order of decreasing IoU down to the configured minimum; what is
//! left is matched by centre distance (fast motion, where boxes no longer
//! overlap) within [`CENTRE_MATCH_FRACTION`] of the face size and with a
//! similar size. A track unseen for more than `max_missed` frames is retired
//! and its id never reused.
//!
//! Smoothing is an exponential moving average of each classifier's
//! probability vector per track, `p = alpha * p_frame + (1 - alpha) * p`. Unlike
//! the seed's mode over the last 10 frames, it reacts from the first frame
//! (no warm-up window), weights recent frames more, keeps a full probability
//! distribution (so confidences stay meaningful) and costs O(classes) per
//! face and frame. On a synthetic sequence where the classifier is wrong a
//! third of the time (tests/core_track.rs), the default alpha gets fewer
//! labels wrong than the mode over 10 frames and follows a real change
//! sooner.

use crate::classify::{Classification, ClassifierTask};
use crate::config::{Smoothing, TrackerConfig};
use crate::detect::FaceBox;

/// Centre-distance matching: at most this fraction of the larger box side.
pub const CENTRE_MATCH_FRACTION: f32 = 0.6;
/// Centre-distance matching: box sides may differ by at most this factor.
pub const MAX_SIZE_RATIO: f32 = 1.6;
/// Weight of the newest displacement in the velocity estimate.
const VELOCITY_ALPHA: f32 = 0.5;
/// Number of classifier tasks kept per track.
const TASKS: usize = 3;

fn task_slot(task: ClassifierTask) -> usize {
    match task {
        ClassifierTask::Gender => 0,
        ClassifierTask::Emotion => 1,
        ClassifierTask::Age => 2,
    }
}

#[derive(Debug, Clone)]
struct Track {
    id: u64,
    bbox: FaceBox,
    /// Centre displacement per frame.
    velocity: (f32, f32),
    missed: u32,
    smoothed: [Vec<f32>; TASKS],
}

impl Track {
    fn predicted(&self) -> FaceBox {
        let frames = (self.missed + 1) as f32;
        FaceBox {
            x: self.bbox.x + self.velocity.0 * frames,
            y: self.bbox.y + self.velocity.1 * frames,
            ..self.bbox
        }
    }
}

/// The result of matching one frame's faces: an id per face, in input order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The face's id: the track id when tracking, else its index in the frame.
    pub id: String,
    slot: Option<usize>,
}

/// Keeps tracks between frames.
#[derive(Debug, Clone)]
pub struct Tracker {
    config: TrackerConfig,
    tracks: Vec<Track>,
    next_id: u64,
}

impl Tracker {
    /// An empty tracker.
    pub fn new(config: &TrackerConfig) -> Self {
        Self {
            config: config.clone(),
            tracks: Vec::new(),
            next_id: 1,
        }
    }

    /// Applies new parameters on the next frame; tracks are kept unless
    /// tracking is switched off.
    pub fn reconfigure(&mut self, config: &TrackerConfig) {
        if !config.enabled {
            self.tracks.clear();
        }
        if config.smoothing == Smoothing::Off {
            self.tracks
                .iter_mut()
                .for_each(|t| t.smoothed.iter_mut().for_each(Vec::clear));
        }
        self.config = config.clone();
    }

    /// Forgets every track (ids continue from where they were).
    pub fn reset(&mut self) {
        self.tracks.clear();
    }

    /// Number of live tracks.
    pub fn len(&self) -> usize {
        self.tracks.len()
    }

    /// Whether there are no live tracks.
    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }

    /// Matches this frame's face boxes to tracks, starting tracks for new faces
    /// and retiring those unseen too long. Returns one assignment per box.
    pub fn assign(&mut self, boxes: &[FaceBox]) -> Vec<Assignment> {
        if !self.config.enabled {
            return (0..boxes.len())
                .map(|i| Assignment {
                    id: i.to_string(),
                    slot: None,
                })
                .collect();
        }
        let predicted: Vec<FaceBox> = self.tracks.iter().map(Track::predicted).collect();
        let mut track_of_box: Vec<Option<usize>> = vec![None; boxes.len()];
        let mut track_taken = vec![false; self.tracks.len()];

        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (b, face) in boxes.iter().enumerate() {
            for (t, track_box) in predicted.iter().enumerate() {
                let iou = face.iou(track_box);
                if iou >= self.config.iou {
                    pairs.push((iou, b, t));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        take_pairs(&pairs, &mut track_of_box, &mut track_taken);

        pairs.clear();
        for (b, face) in boxes
            .iter()
            .enumerate()
            .filter(|(b, _)| track_of_box[*b].is_none())
        {
            for (t, track_box) in predicted
                .iter()
                .enumerate()
                .filter(|(t, _)| !track_taken[*t])
            {
                if let Some(distance) = centre_match(face, track_box) {
                    // Negated so that the nearest sorts first with the same ordering.
                    pairs.push((-distance, b, t));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        take_pairs(&pairs, &mut track_of_box, &mut track_taken);

        for (t, track) in self.tracks.iter_mut().enumerate() {
            if !track_taken[t] {
                track.missed += 1;
            }
        }
        let mut assignments = Vec::with_capacity(boxes.len());
        for (b, face) in boxes.iter().enumerate() {
            let slot = match track_of_box[b] {
                Some(t) => {
                    let track = &mut self.tracks[t];
                    let (old, new) = (track.bbox.centre(), face.centre());
                    let steps = (track.missed + 1) as f32;
                    let velocity = ((new.x - old.x) / steps, (new.y - old.y) / steps);
                    track.velocity = (
                        VELOCITY_ALPHA * velocity.0 + (1.0 - VELOCITY_ALPHA) * track.velocity.0,
                        VELOCITY_ALPHA * velocity.1 + (1.0 - VELOCITY_ALPHA) * track.velocity.1,
                    );
                    track.bbox = *face;
                    track.missed = 0;
                    t
                }
                None => {
                    self.tracks.push(Track {
                        id: self.next_id,
                        bbox: *face,
                        velocity: (0.0, 0.0),
                        missed: 0,
                        smoothed: Default::default(),
                    });
                    self.next_id += 1;
                    self.tracks.len() - 1
                }
            };
            assignments.push(Assignment {
                id: self.tracks[slot].id.to_string(),
                slot: Some(slot),
            });
        }
        // Retire after the slots were handed out; the assignments must stay
        // valid until `smooth` is called, so remember which slots move.
        let max_missed = self.config.max_missed;
        let mut remap: Vec<Option<usize>> = Vec::with_capacity(self.tracks.len());
        let mut next = 0;
        for track in &self.tracks {
            if track.missed > max_missed {
                remap.push(None);
            } else {
                remap.push(Some(next));
                next += 1;
            }
        }
        self.tracks.retain(|t| t.missed <= max_missed);
        for a in &mut assignments {
            a.slot = a.slot.and_then(|s| remap[s]);
        }
        assignments
    }

    /// Smooths `classification` in place with its track's history (no-op when
    /// smoothing or tracking is off).
    pub fn smooth(
        &mut self,
        assignment: &Assignment,
        task: ClassifierTask,
        classification: &mut Classification,
    ) {
        let Smoothing::Ema { alpha } = self.config.smoothing else {
            return;
        };
        let Some(track) = assignment.slot.and_then(|s| self.tracks.get_mut(s)) else {
            return;
        };
        let history = &mut track.smoothed[task_slot(task)];
        if history.len() != classification.probabilities.len() {
            history.clear();
            history.extend_from_slice(&classification.probabilities);
        } else {
            for (h, p) in history.iter_mut().zip(&classification.probabilities) {
                *h = alpha * p + (1.0 - alpha) * *h;
            }
        }
        classification.set_probabilities(history);
    }
}

fn take_pairs(
    pairs: &[(f32, usize, usize)],
    track_of_box: &mut [Option<usize>],
    track_taken: &mut [bool],
) {
    for &(_, b, t) in pairs {
        if track_of_box[b].is_none() && !track_taken[t] {
            track_of_box[b] = Some(t);
            track_taken[t] = true;
        }
    }
}

/// Centre distance between two boxes if they are close and of similar size.
fn centre_match(a: &FaceBox, b: &FaceBox) -> Option<f32> {
    let (side_a, side_b) = (a.width.max(a.height), b.width.max(b.height));
    if side_a <= 0.0 || side_b <= 0.0 || side_a.max(side_b) / side_a.min(side_b) > MAX_SIZE_RATIO {
        return None;
    }
    let (ca, cb) = (a.centre(), b.centre());
    let distance = ((ca.x - cb.x).powi(2) + (ca.y - cb.y).powi(2)).sqrt();
    (distance <= CENTRE_MATCH_FRACTION * side_a.max(side_b)).then_some(distance)
}
