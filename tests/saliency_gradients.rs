//! The plain-gradient graph against central finite differences of the
//! forward model's pre-softmax class score, on real face crops (the golden
//! crops of `tests/fixtures/models/golden`: 12 emotion crops, 6 gender
//! chips), for the emotion and the gender classifier (issue 5).
//!
//! ONNX Runtime has no f64 `Conv`, and f32 finite differences are too noisy
//! pointwise, so the finite differences come from an independent f64
//! evaluator of the forward graph written for the tests
//! (`tests/saliency_reference`). Per model the test asserts:
//!
//! 1. **Reference forward**: on every golden crop the f64 evaluator's scores
//!    equal ONNX Runtime's f32 scores of the crate's score model
//!    ([`score_model_bytes`], the forward graph cut at the pre-softmax
//!    tensor): `|s64 - s32| <= FORWARD_TOLERANCE * max_k |s32_k|` for every
//!    class.
//! 2. **Pointwise gradient**: for `SAMPLES_PER_FACE` random pixels per face,
//!    `fd = (s(x + eps e_i) - s(x - eps e_i)) / (2 eps)` in f64 (`s` the score
//!    of the class the gradient graph explains, `eps` in normalised input
//!    units) and `g` the gradient graph's f32 output at `x` itself; the
//!    relative error `|g - fd| / max(|g|, |fd|, floor)`, with
//!    `floor = FLOOR_FRACTION * max |g|` over that face (2 % of the face's
//!    largest gradient, so that pixels whose gradient is at noise level are
//!    held to an absolute bound of 2e-4 of that maximum rather than a
//!    relative one), is at most `MAX_RELATIVE_ERROR` (1e-2) for **every**
//!    sampled pixel that is not excluded (below). Median, p95 and worst are
//!    reported.
//!
//! Kinks: both networks are piecewise linear (`Relu`, `MaxPool`). For each
//! pixel the evaluator propagates the exact f64 derivative along `e_i`
//! through the linearisation at `x` and the *kink margin*, the distance along
//! `e_i` to the nearest switch of a ReLU or a max-pool window. The score is
//! exactly affine on `(-margin, margin)`, so `eps = min(EPS, margin / 2)`
//! never crosses a kink; the step is shrunk for pixels with a margin below
//! `2 * EPS`, and a pixel is excluded (and counted) only if that would need
//! `eps < MIN_EPS` (a kink at `x` itself, where the gradient is not defined).
//! As a check of the reference itself, `fd` must equal that f64 derivative
//! to `FD_TANGENT_TOLERANCE` relative (same floor) plus the f64 rounding of
//! the scores amplified by the step (`FD_ROUNDING * max_k |s_k| / eps`).
//!
//! Reported, not asserted: for each pixel with an error above
//! `EXPLAIN_ABOVE`, the f64 derivative just across the nearest kink on
//! either side. A pixel within about 1e-6 (normalised units) of a ReLU kink
//! can see the f32 forward inside the gradient graph land on the other side
//! of it; `g` is then the (correct) derivative of the neighbouring linear
//! piece, and the output says so. On the golden crops this happens for three
//! emotion pixels (errors 1e-3 to 5e-3, all under the bound); every other
//! sampled pixel agrees to a few 1e-6.

mod saliency_common;
mod saliency_reference;

use face_perception::saliency::onnx_proto::ModelProto;
use face_perception::saliency::{score_model_bytes, GradientModel, SaliencyMethod};
use ndarray::{s, Axis};
use ort::session::Session;
use ort::value::TensorRef;
use prost::Message;
use saliency_common::{golden_batch, model, ort_ready, Lcg};
use saliency_reference::{ReferenceModel, Tensor};

/// Acceptance bound of issue 5, per sampled pixel.
const MAX_RELATIVE_ERROR: f64 = 1e-2;
/// Finite-difference step, normalised input units.
const EPS: f64 = 1e-5;
/// Smallest step used; a pixel needing a smaller one is excluded.
const MIN_EPS: f64 = 1e-8;
/// Pixels sampled per face.
const SAMPLES_PER_FACE: usize = 24;
/// The error floor, as a fraction of the face's largest gradient magnitude.
const FLOOR_FRACTION: f64 = 0.02;
/// f64 reference scores against ONNX Runtime's f32 scores, relative to the
/// face's largest score magnitude.
const FORWARD_TOLERANCE: f64 = 1e-4;
/// f64 finite differences against the f64 forward-mode derivative, relative
/// (with the floor), on top of the scores' f64 rounding amplified by the step:
/// `FD_ROUNDING * max_k |s_k| / eps`.
const FD_TANGENT_TOLERANCE: f64 = 1e-6;
const FD_ROUNDING: f64 = 1e-13;
/// Pixels whose error exceeds this are explained in the output: is `g` the
/// derivative just across the nearest kink (the f32 forward of the gradient
/// graph on the other side of it)?
const EXPLAIN_ABOVE: f64 = 1e-4;

/// What one model's check measured.
#[derive(Debug)]
struct Report {
    pixels: usize,
    excluded: usize,
    shrunk: usize,
    median: f64,
    p95: f64,
    worst: f64,
    worst_pixel: String,
    /// Pixels with an error above `EXPLAIN_ABOVE`, and how many of them have
    /// `g` equal (to `EXPLAIN_ABOVE`) to the derivative across the nearest kink.
    above: usize,
    across_kink: usize,
}

fn finite_difference_check(name: &str) -> Option<Report> {
    if !ort_ready() {
        return None;
    }
    let (bytes, _) = model(name)?;
    let (batch, crops) = golden_batch(name)?;
    let mut gradient_model =
        GradientModel::new(&bytes, None, SaliencyMethod::Plain, 2).expect("gradient model");
    let result = gradient_model.run(batch.view(), None).expect("gradients");
    assert_eq!(result.maps.shape(), batch.shape());

    // The crate's score function: the forward graph cut at the pre-softmax tensor.
    let score_bytes = score_model_bytes(&bytes, None).expect("score model");
    let score_name = ModelProto::decode(score_bytes.as_slice())
        .expect("score model decodes")
        .graph
        .expect("graph")
        .output[0]
        .name
        .clone();
    let env = face_perception::runtime::environment().expect("ort");
    let mut scorer = Session::builder(env)
        .expect("builder")
        .commit_from_memory(&score_bytes)
        .expect("session");
    let outputs = scorer
        .run(ort::inputs![
            TensorRef::from_array_view(batch.view()).expect("tensor")
        ])
        .expect("forward run");
    let ort_scores = outputs[0]
        .try_extract_array::<f32>()
        .expect("scores")
        .into_owned();
    drop(outputs);

    let started = std::time::Instant::now();
    let reference = ReferenceModel::parse(&bytes, &score_name).expect("reference model");
    let (_, c, h, w) = batch.dim();
    let mut rng = Lcg(0x5a11_e4c7);
    let mut rel = Vec::new();
    let (mut excluded, mut shrunk) = (0, 0);
    let (mut forward_worst, mut fd_tangent_worst) = (0f64, 0f64);
    let (mut worst, mut worst_pixel) = (-1f64, String::new());
    let (mut above, mut across_kink) = (0, 0);
    for (i, crop) in crops.iter().enumerate() {
        let class = result.classes[i];
        let x = Tensor::new(
            vec![1, c, h, w],
            batch
                .slice(s![i, .., .., ..])
                .iter()
                .map(|&v| f64::from(v))
                .collect(),
        );
        let trace = reference.trace(&x).expect("reference forward");
        let s64 = &trace.output().data;
        let s32 = ort_scores.index_axis(Axis(0), i);
        assert_eq!(s64.len(), s32.len(), "{name} {crop}: score sizes");
        let scale = s32.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
        for (k, (&a, &b)) in s64.iter().zip(s32.iter()).enumerate() {
            let err = (a - f64::from(b)).abs() / scale;
            forward_worst = forward_worst.max(err);
            assert!(
                err <= FORWARD_TOLERANCE,
                "{name} {crop}: f64 reference score {a} against ONNX Runtime {b} (class {k}), relative {err:.2e}"
            );
        }

        let g_face = result.maps.index_axis(Axis(0), i);
        let floor = FLOOR_FRACTION * g_face.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
        let mut face_worst = 0f64;
        for _ in 0..SAMPLES_PER_FACE {
            let (ci, yi, xi) = (rng.below(c), rng.below(h), rng.below(w));
            let idx = (ci * h + yi) * w + xi;
            let mut direction = Tensor::zeros(vec![1, c, h, w]);
            direction.data[idx] = 1.0;
            let d = reference
                .directional(&trace, &direction)
                .expect("reference derivative");
            let eps = EPS.min(d.margin / 2.0);
            if eps < MIN_EPS {
                excluded += 1;
                eprintln!(
                    "{name} {crop}: pixel ({ci}, {yi}, {xi}) excluded: kink margin {:.1e} at {}",
                    d.margin, d.margin_at
                );
                continue;
            }
            if eps < EPS {
                shrunk += 1;
            }
            let score_at = |step: f64| {
                let mut xs = x.clone();
                xs.data[idx] += step;
                reference.output(&xs).expect("reference forward").data[class]
            };
            let fd = (score_at(eps) - score_at(-eps)) / (2.0 * eps);
            let tangent = d.tangent.data[class];
            let fd_tangent = (fd - tangent).abs() / tangent.abs().max(floor);
            fd_tangent_worst = fd_tangent_worst.max(fd_tangent);
            let rounding = FD_ROUNDING * scale / eps / tangent.abs().max(floor);
            assert!(
                fd_tangent <= FD_TANGENT_TOLERANCE + rounding,
                "{name} {crop}: pixel ({ci}, {yi}, {xi}): f64 fd {fd} against f64 derivative {tangent} \
                 (eps {eps:e}, margin {:e}): the reference is inconsistent",
                d.margin
            );
            let g = f64::from(g_face[[ci, yi, xi]]);
            let err = (g - fd).abs() / g.abs().max(fd.abs()).max(floor);
            face_worst = face_worst.max(err);
            if err > EXPLAIN_ABOVE {
                above += 1;
            }
            if err > EXPLAIN_ABOVE && d.margin.is_finite() {
                // The derivative just across the nearest kink, on either side.
                let across: Vec<f64> = [-1.5, 1.5]
                    .into_iter()
                    .map(|side| {
                        let mut xs = x.clone();
                        xs.data[idx] += side * d.margin;
                        let trace = reference.trace(&xs).expect("reference forward");
                        let d = reference
                            .directional(&trace, &direction)
                            .expect("reference derivative");
                        d.tangent.data[class]
                    })
                    .collect();
                let explained = across
                    .iter()
                    .any(|&a| (g - a).abs() / g.abs().max(floor) <= EXPLAIN_ABOVE);
                if explained {
                    across_kink += 1;
                }
                eprintln!(
                    "{name} {crop}: pixel ({ci}, {yi}, {xi}): relative error {err:.2e}, g {g:.6e}, fd {fd:.6e}, \
                     kink margin {:.1e} at {}, derivative across it {:.6e} / {:.6e}{}",
                    d.margin,
                    d.margin_at,
                    across[0],
                    across[1],
                    if explained { ": g is the derivative across the kink" } else { "" }
                );
            }
            if err > worst {
                worst = err;
                worst_pixel = format!(
                    "{crop} ({ci}, {yi}, {xi}): g {g:.6e}, fd {fd:.6e}, floor {floor:.2e}, eps {eps:.1e}, margin {:.1e}",
                    d.margin
                );
            }
            rel.push(err);
        }
        eprintln!(
            "{name} {crop}: class {class}, floor {floor:.2e}, worst relative error {face_worst:.2e}"
        );
    }
    rel.sort_by(f64::total_cmp);
    let report = Report {
        pixels: rel.len(),
        excluded,
        shrunk,
        median: rel[rel.len() / 2],
        p95: rel[rel.len() * 95 / 100],
        worst: rel[rel.len() - 1],
        worst_pixel,
        above,
        across_kink,
    };
    eprintln!(
        "{name}: {} faces, {} pixels compared, {} excluded (kink at x), {} with eps shrunk below {EPS:e}; \
         reference forward vs ONNX Runtime worst {forward_worst:.1e}; fd vs f64 derivative worst \
         {fd_tangent_worst:.1e}; gradient graph vs fd: median {:.2e}, p95 {:.2e}, worst {:.2e} at {}; \
         {} above {EXPLAIN_ABOVE:e}, {} of them with g the derivative across the nearest kink; {:.1} s",
        crops.len(),
        report.pixels,
        report.excluded,
        report.shrunk,
        report.median,
        report.p95,
        report.worst,
        report.worst_pixel,
        report.above,
        report.across_kink,
        started.elapsed().as_secs_f64()
    );
    Some(report)
}

fn assert_pointwise(report: &Report) {
    assert!(report.pixels > 0, "no pixel compared: {report:?}");
    assert!(
        report.worst <= MAX_RELATIVE_ERROR,
        "pointwise relative error above {MAX_RELATIVE_ERROR}: {report:?}"
    );
}

#[test]
fn emotion_plain_gradient_matches_finite_differences() {
    if let Some(report) = finite_difference_check("emotion") {
        assert_pointwise(&report);
    }
}

#[test]
fn gender_plain_gradient_matches_finite_differences() {
    if let Some(report) = finite_difference_check("gender") {
        assert_pointwise(&report);
    }
}
