//! Saliency: which pixels drove a classifier's decision.
//!
//! ONNX Runtime only runs forward graphs, so the backward pass is itself
//! turned into a graph: at load time, [`GradientModel::new`] rewrites a
//! classifier's forward ONNX graph (any classifier built from the supported
//! ops, not only the shipped ones) into one whose output is the gradient of a
//! chosen class's pre-softmax score with respect to the input image
//! ([`transform`]). Three methods ([`SaliencyMethod`]):
//!
//! - guided back-propagation (Springenberg et al. 2015, as used by Arriaga &
//!   Valdenegro-Toro 2017): at every ReLU the gradient passes only where the
//!   forward input was positive and the incoming gradient is positive;
//! - the plain gradient (no guided rule), which the tests compare with finite
//!   differences to prove the transform;
//! - Grad-CAM (Selvaraju et al. 2017) at the last convolution with a spatial
//!   output, upsampled (bilinear) to the input size.
//!
//! The class is chosen per face (`classes`), or is each face's arg-max. The
//! score is the input of the `Softmax` behind the graph outputs (or a named
//! tensor). All faces of a frame go through one call (dynamic batch), and
//! the call also returns the class scores of the same forward pass
//! ([`SaliencyBatch::scores`]), so a caller that wants saliency need not run
//! the classifier separately. Nothing runs unless asked: a [`GradientModel`]
//! is only built when saliency is wanted (building it takes a probe run and
//! a session: 15 to 90 ms for the shipped models), and [`render`] turns its
//! output into per-face maps and a frame-sized heat-map image.
//!
//! Supported ops on the path from the image to the score: `Conv` (grouped,
//! depthwise, pads, strides, dilations, `auto_pad`), `BatchNormalization`
//! (inference), `Relu`, `MaxPool`, `AveragePool`, `GlobalAveragePool`,
//! `GlobalMaxPool`, `Add`, `Sub`, `Sum`, `Mul`, `Div`, `Neg`, `Pad`
//! (constant), `Flatten`, `Reshape`, `Squeeze`, `Unsqueeze`, `Gemm`, `MatMul`
//! (constant matrix), `Transpose`, `Concat`, `Identity`, `Dropout`,
//! `Softmax`; ops that do not depend on the image (`Constant`, shape
//! arithmetic) may be anything. Anything else gives
//! [`SaliencyError::UnsupportedOp`] naming the op and the node; supported
//! ops with unsupported attributes (e.g. `Pad` in reflect mode, `MaxPool`
//! with `storage_order=1`) give [`SaliencyError::UnsupportedAttribute`].
//! Models need default-domain opset 13 or later; the generated graph uses
//! opset 16 or the model's, whichever is higher.
//!
//! Cost: the gradient graph recomputes the forward pass and adds a backward
//! pass of roughly the forward's convolution work plus masks (ReLU) and
//! unfold/fold steps (max pooling); `benches/saliency.rs` measures it. On a
//! busy 2-core machine one intra-op thread per model is faster than two.

pub use crate::onnx_proto;
pub mod render;
pub mod stage;
pub mod transform;

use ndarray::{Array2, Array4, ArrayView4};
use ort::session::Session;
use ort::value::TensorRef;
use std::collections::HashMap;

pub use transform::{CLASS_INPUT, CLASS_OUTPUT, SALIENCY_OUTPUT, SCORES_OUTPUT};

/// Which saliency to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SaliencyMethod {
    /// Guided back-propagation (the seed paper's images).
    #[default]
    Guided,
    /// The true gradient of the class score.
    Plain,
    /// Grad-CAM at the last convolution, upsampled to the input size.
    GradCam,
}

impl SaliencyMethod {
    /// The name used on the command line and in parameters.
    pub fn as_str(self) -> &'static str {
        match self {
            SaliencyMethod::Guided => "guided",
            SaliencyMethod::Plain => "plain",
            SaliencyMethod::GradCam => "gradcam",
        }
    }
}

impl std::str::FromStr for SaliencyMethod {
    type Err = SaliencyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "guided" => Ok(SaliencyMethod::Guided),
            "plain" => Ok(SaliencyMethod::Plain),
            "gradcam" | "grad-cam" => Ok(SaliencyMethod::GradCam),
            other => Err(SaliencyError::UnknownMethod {
                name: other.to_string(),
            }),
        }
    }
}

impl std::fmt::Display for SaliencyMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why saliency cannot be built or computed.
#[derive(Debug, thiserror::Error)]
pub enum SaliencyError {
    /// The bytes are not an ONNX model.
    #[error("cannot decode the ONNX model: {reason}")]
    Decode {
        /// What the protobuf decoder reported.
        reason: String,
    },
    /// The model is structurally unusable (no single image input, cycles...).
    #[error("ONNX model unusable for saliency: {reason}")]
    InvalidModel {
        /// What is wrong.
        reason: String,
    },
    /// The model's default-domain opset is too old.
    #[error("ONNX model uses opset {opset}; saliency needs at least {minimum}")]
    UnsupportedOpset {
        /// The model's opset.
        opset: i64,
        /// The lowest supported.
        minimum: i64,
    },
    /// An op on the path from the image to the score has no backward rule.
    #[error("saliency: op {op} (node {node}) is not supported")]
    UnsupportedOp {
        /// Op type, with its domain if not the default.
        op: String,
        /// Node name (or its first output).
        node: String,
    },
    /// An op is supported, but not with these attributes or inputs.
    #[error("saliency: op {op} (node {node}) is not supported here: {reason}")]
    UnsupportedAttribute {
        /// Op type.
        op: String,
        /// Node name (or its first output).
        node: String,
        /// What is not supported.
        reason: String,
    },
    /// The pre-softmax score tensor cannot be found or has the wrong shape.
    #[error("saliency: class score tensor not found: {reason}")]
    ScoreNotFound {
        /// Why.
        reason: String,
    },
    /// A method name that is none of `guided`, `plain`, `gradcam`.
    #[error("unknown saliency method {name:?} (expected guided, plain or gradcam)")]
    UnknownMethod {
        /// The name given.
        name: String,
    },
    /// The batch does not match the model's input.
    #[error("saliency input has shape {actual:?}, the model expects [N, {expected:?}]")]
    InputShape {
        /// Expected dimensions after the batch axis.
        expected: Vec<usize>,
        /// Shape given.
        actual: Vec<usize>,
    },
    /// Per-item classes do not fit the batch or the model.
    #[error("saliency classes invalid: {reason}")]
    Classes {
        /// What is wrong.
        reason: String,
    },
    /// An image buffer does not match its stated size.
    #[error("image buffer invalid: {reason}")]
    ImageBuffer {
        /// What is wrong.
        reason: String,
    },
    /// ONNX Runtime is unavailable.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    /// ONNX Runtime failed.
    #[error("ONNX Runtime failed while {context}: {source}")]
    Ort {
        /// What was being done.
        context: &'static str,
        /// The error.
        source: ort::Error,
    },
}

fn ort_err(context: &'static str) -> impl FnOnce(ort::Error) -> SaliencyError {
    move |source| SaliencyError::Ort { context, source }
}

/// One batch of saliency results.
#[derive(Debug, Clone)]
pub struct SaliencyBatch {
    /// Gradients `[N, C, H, W]` (plain, guided) or Grad-CAM maps `[N, 1, H, W]`.
    pub maps: Array4<f32>,
    /// Pre-softmax class scores `[N, K]`, from the same forward pass.
    pub scores: Array2<f32>,
    /// Class whose score was differentiated, per item.
    pub classes: Vec<usize>,
}

/// A classifier turned into a saliency model, with its ONNX Runtime session.
pub struct GradientModel {
    session: Session,
    method: SaliencyMethod,
    input_name: String,
    /// Input dimensions after the batch axis.
    input_dims: Vec<usize>,
    num_classes: usize,
}

impl std::fmt::Debug for GradientModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GradientModel")
            .field("method", &self.method)
            .field("input_name", &self.input_name)
            .field("input_dims", &self.input_dims)
            .field("num_classes", &self.num_classes)
            .finish()
    }
}

/// Builds a session for `bytes` with `threads` intra-op threads.
fn session_from_bytes(
    bytes: &[u8],
    threads: usize,
    cores: &crate::parallel::Cores,
    context: &'static str,
) -> Result<Session, SaliencyError> {
    let env = crate::runtime::environment()?;
    crate::runtime::session_from_memory(env, bytes, threads, cores).map_err(ort_err(context))
}

/// Shapes of every node output of the forward model at batch size 1, checked
/// against a batch-2 run so that the batch axis is known to be the first.
fn probe_shapes(fwd: &transform::ForwardModel) -> Result<transform::ProbeShapes, SaliencyError> {
    const CONTEXT: &str = "probing the classifier's tensor shapes";
    let dims: Vec<usize> = fwd
        .input_dims
        .iter()
        .map(|d| d.and_then(|v| usize::try_from(v).ok()))
        .collect::<Option<_>>()
        .ok_or_else(|| SaliencyError::InvalidModel {
            reason: format!(
                "input {} has symbolic dimensions after the batch axis",
                fwd.input_name
            ),
        })?;
    let mut session = session_from_bytes(
        &fwd.probe_model(),
        1,
        &crate::parallel::Cores::unpinned(),
        CONTEXT,
    )?;
    let mut runs: Vec<HashMap<String, Vec<i64>>> = Vec::new();
    for batch in [1usize, 2] {
        let mut shape = vec![batch];
        shape.extend(&dims);
        // A smooth, non-constant probe image: no op sees a degenerate input.
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|i| 0.25 * ((i as f32) * 0.37).sin()).collect();
        let input = ndarray::ArrayD::from_shape_vec(shape.clone(), values).map_err(|e| {
            SaliencyError::InvalidModel {
                reason: format!("probe input: {e}"),
            }
        })?;
        let tensor = TensorRef::from_array_view(input.view()).map_err(ort_err(CONTEXT))?;
        let outputs = session
            .run(ort::inputs![fwd.input_name.as_str() => tensor])
            .map_err(ort_err(CONTEXT))?;
        let mut shapes: HashMap<String, Vec<i64>> = HashMap::new();
        for (name, value) in outputs.iter() {
            if let Some(s) = value.dtype().tensor_shape() {
                shapes.insert(name.to_string(), s.iter().copied().collect());
            }
        }
        shapes.insert(
            fwd.input_name.clone(),
            shape.iter().map(|&d| d as i64).collect(),
        );
        runs.push(shapes);
    }
    let batch2 = runs.pop().unwrap_or_default();
    let mut batch1 = runs.pop().unwrap_or_default();
    // A tensor whose first axis does not follow the batch is not per-item;
    // drop it so that the transform refuses it if it lies on the gradient path.
    batch1.retain(|name, d1| {
        batch2.get(name).is_some_and(|d2| {
            d1.len() == d2.len() && !d1.is_empty() && d1[0] == 1 && d2[0] == 2 && d1[1..] == d2[1..]
        }) || batch2.get(name) == Some(d1)
    });
    Ok(batch1)
}

/// The gradient model's ONNX bytes for a classifier, without creating a
/// session for it: useful to inspect or save the generated graph.
pub fn gradient_model_bytes(
    model_bytes: &[u8],
    pre_softmax_output: Option<&str>,
    method: SaliencyMethod,
) -> Result<Vec<u8>, SaliencyError> {
    let fwd = transform::ForwardModel::parse(model_bytes, pre_softmax_output)?;
    let shapes = probe_shapes(&fwd)?;
    transform::gradient_model(&fwd, &shapes, method, None, false)
}

/// Like [`gradient_model_bytes`], with every ReLU's forward input, incoming
/// and passed-on gradient as extra outputs `tap/<node>/{x,grad_out,grad_in}`:
/// for verifying the guided rule inside a real network.
pub fn gradient_model_bytes_with_relu_taps(
    model_bytes: &[u8],
    pre_softmax_output: Option<&str>,
    method: SaliencyMethod,
) -> Result<Vec<u8>, SaliencyError> {
    let fwd = transform::ForwardModel::parse(model_bytes, pre_softmax_output)?;
    let shapes = probe_shapes(&fwd)?;
    transform::gradient_model(&fwd, &shapes, method, None, true)
}

/// The classifier cut at its pre-softmax score (the score tensor is the only
/// output), e.g. for finite-difference checks of the gradient model.
pub fn score_model_bytes(
    model_bytes: &[u8],
    pre_softmax_output: Option<&str>,
) -> Result<Vec<u8>, SaliencyError> {
    Ok(transform::ForwardModel::parse(model_bytes, pre_softmax_output)?.score_model())
}

/// Everything [`GradientModel::with_options`] can be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaliencyOptions<'a> {
    /// Which saliency.
    pub method: SaliencyMethod,
    /// The class-score tensor; `None`: the input of the `Softmax` behind the
    /// graph outputs (or the only output).
    pub pre_softmax_output: Option<&'a str>,
    /// Grad-CAM only: the feature-map tensor to explain; `None`: the output
    /// of the last convolution with a spatial output.
    pub gradcam_layer: Option<&'a str>,
    /// ONNX Runtime intra-op threads.
    pub intra_threads: usize,
    /// Where ONNX Runtime's workers run (the caller is pinned by whoever
    /// calls); default: unpinned.
    pub cores: crate::parallel::Cores,
}

impl Default for SaliencyOptions<'_> {
    fn default() -> Self {
        SaliencyOptions {
            method: SaliencyMethod::Guided,
            pre_softmax_output: None,
            gradcam_layer: None,
            intra_threads: 1,
            cores: crate::parallel::Cores::unpinned(),
        }
    }
}

impl GradientModel {
    /// Transforms the classifier `model_bytes` and opens a session on the
    /// result. `pre_softmax_output` names the class-score tensor; `None`
    /// takes the input of the `Softmax` behind the graph outputs.
    pub fn new(
        model_bytes: &[u8],
        pre_softmax_output: Option<&str>,
        method: SaliencyMethod,
        intra_threads: usize,
    ) -> Result<Self, SaliencyError> {
        Self::with_options(
            model_bytes,
            &SaliencyOptions {
                method,
                pre_softmax_output,
                gradcam_layer: None,
                intra_threads,
                cores: crate::parallel::Cores::unpinned(),
            },
        )
    }

    /// Like [`GradientModel::new`], with every option.
    pub fn with_options(
        model_bytes: &[u8],
        options: &SaliencyOptions<'_>,
    ) -> Result<Self, SaliencyError> {
        let method = options.method;
        let fwd = transform::ForwardModel::parse(model_bytes, options.pre_softmax_output)?;
        let shapes = probe_shapes(&fwd)?;
        let bytes = transform::gradient_model(&fwd, &shapes, method, options.gradcam_layer, false)?;
        let num_classes = shapes
            .get(&fwd.score_name)
            .and_then(|d| d.get(1))
            .and_then(|&k| usize::try_from(k).ok())
            .ok_or_else(|| SaliencyError::ScoreNotFound {
                reason: "score tensor has no class axis".to_string(),
            })?;
        let input_dims = shapes
            .get(&fwd.input_name)
            .map(|d| d[1..].iter().map(|&v| v as usize).collect())
            .unwrap_or_default();
        let session = session_from_bytes(
            &bytes,
            options.intra_threads,
            &options.cores,
            "loading the generated saliency graph",
        )?;
        Ok(GradientModel {
            session,
            method,
            input_name: fwd.input_name,
            input_dims,
            num_classes,
        })
    }

    /// The method this model computes.
    pub fn method(&self) -> SaliencyMethod {
        self.method
    }

    /// Input dimensions after the batch axis (`[C, H, W]`).
    pub fn input_dims(&self) -> &[usize] {
        &self.input_dims
    }

    /// Number of classes of the score.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Saliency for a batch `[N, C, H, W]` of preprocessed face crops;
    /// `classes` gives the class per item (default: each item's arg-max).
    /// Returns `[N, C, H, W]` gradients, or `[N, 1, H, W]` for Grad-CAM.
    pub fn gradients(
        &mut self,
        batch: ArrayView4<'_, f32>,
        classes: Option<&[usize]>,
    ) -> Result<Array4<f32>, SaliencyError> {
        Ok(self.run(batch, classes)?.maps)
    }

    /// Like [`GradientModel::gradients`], also returning the class scores
    /// and the classes used, so that a caller needs no separate forward run.
    pub fn run(
        &mut self,
        batch: ArrayView4<'_, f32>,
        classes: Option<&[usize]>,
    ) -> Result<SaliencyBatch, SaliencyError> {
        const CONTEXT: &str = "computing saliency";
        let shape = batch.shape().to_vec();
        if shape[1..] != self.input_dims[..] {
            return Err(SaliencyError::InputShape {
                expected: self.input_dims.clone(),
                actual: shape,
            });
        }
        let n = shape[0];
        let class_index: Vec<i64> = match classes {
            None => vec![-1; n],
            Some(c) if c.len() != n => {
                return Err(SaliencyError::Classes {
                    reason: format!("{} classes for a batch of {n}", c.len()),
                })
            }
            Some(c) => c
                .iter()
                .map(|&k| {
                    if k < self.num_classes {
                        Ok(k as i64)
                    } else {
                        Err(SaliencyError::Classes {
                            reason: format!(
                                "class {k} out of range (model has {})",
                                self.num_classes
                            ),
                        })
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        if n == 0 {
            let mut dims = shape.clone();
            if self.method == SaliencyMethod::GradCam {
                dims[1] = 1;
            }
            return Ok(SaliencyBatch {
                maps: Array4::zeros((dims[0], dims[1], dims[2], dims[3])),
                scores: Array2::zeros((0, self.num_classes)),
                classes: Vec::new(),
            });
        }
        let owned;
        let batch = if batch.is_standard_layout() {
            batch
        } else {
            owned = batch.as_standard_layout().into_owned();
            owned.view()
        };
        let classes_array = ndarray::Array1::from_vec(class_index);
        let image = TensorRef::from_array_view(batch).map_err(ort_err(CONTEXT))?;
        let class_tensor =
            TensorRef::from_array_view(classes_array.view()).map_err(ort_err(CONTEXT))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => image, CLASS_INPUT => class_tensor])
            .map_err(ort_err(CONTEXT))?;
        let maps = outputs[SALIENCY_OUTPUT]
            .try_extract_array::<f32>()
            .map_err(ort_err(CONTEXT))?
            .into_dimensionality::<ndarray::Ix4>()
            .map_err(|e| SaliencyError::InvalidModel {
                reason: format!("saliency output: {e}"),
            })?
            .to_owned();
        let scores = outputs[SCORES_OUTPUT]
            .try_extract_array::<f32>()
            .map_err(ort_err(CONTEXT))?
            .into_dimensionality::<ndarray::Ix2>()
            .map_err(|e| SaliencyError::InvalidModel {
                reason: format!("scores output: {e}"),
            })?
            .to_owned();
        let classes = outputs[CLASS_OUTPUT]
            .try_extract_array::<i64>()
            .map_err(ort_err(CONTEXT))?
            .iter()
            .map(|&c| usize::try_from(c).unwrap_or(0))
            .collect();
        Ok(SaliencyBatch {
            maps,
            scores,
            classes,
        })
    }
}
