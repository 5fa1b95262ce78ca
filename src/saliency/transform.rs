//! Forward ONNX graph -> gradient graph.
//!
//! The transform is reverse-mode differentiation written out as ONNX nodes:
//! the forward nodes that lead from the image input to the class score are
//! kept, and for each of them, in reverse topological order, the nodes that
//! map the gradient of its output to the gradient of its input are appended
//! (`Conv` -> a convolution with flipped, transposed weights or `ConvTranspose`,
//! `MaxPool` -> scatter-add of the gradient at the pooling indices, and so on).
//! The resulting model has inputs `<image>` and [`CLASS_INPUT`] and outputs
//! [`SALIENCY_OUTPUT`], [`SCORES_OUTPUT`] and [`CLASS_OUTPUT`].
//!
//! Shapes that the backward nodes need as constants (output padding of
//! transposed convolutions, slice bounds, pooling divisors) come from a probe
//! run of the forward model ([`ForwardModel::probe_model`]) at batch sizes 1 and 2, so that
//! no shape inference has to be re-implemented here; the batch axis stays
//! dynamic in the gradient model.

use super::onnx_proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    ValueInfoProto, DT_FLOAT, DT_INT64,
};
use super::{SaliencyError, SaliencyMethod};
use prost::Message;
use std::collections::{HashMap, HashSet};

/// Name of the gradient model's output: the saliency tensor,
/// `[N, C, H, W]` like the image (plain, guided) or `[N, 1, H, W]` (Grad-CAM).
pub const SALIENCY_OUTPUT: &str = "saliency";
/// Name of the gradient model's output: the pre-softmax class scores `[N, K]`.
pub const SCORES_OUTPUT: &str = "scores";
/// Name of the gradient model's output: the class whose score was differentiated, int64 `[N]`.
pub const CLASS_OUTPUT: &str = "class";
/// Name of the gradient model's extra input: int64 `[N]`, the class per batch
/// item, or a negative value for the arg-max of the scores.
pub const CLASS_INPUT: &str = "class_index";

/// Lowest default-domain opset accepted: `ReduceSum` takes axes as an input
/// and `Softmax` works on one axis from 13 on.
const MIN_OPSET: i64 = 13;
/// Default-domain opset of the generated graph, at least: `ScatterElements`
/// accumulates duplicate indices (`reduction="add"`) from 16 on. Raising a
/// model from 13..15 to 16 keeps the meaning of its nodes: the op versions
/// introduced in 14..16 only add types and optional attributes whose defaults
/// are the old behaviour.
const GRADIENT_OPSET: i64 = 16;
/// Below this many input channels a convolution's input gradient uses
/// `ConvTranspose` rather than the flipped convolution (ONNX Runtime's
/// blocked convolution pads channels to blocks of 8).
const MIN_CHANNELS_FOR_FLIPPED_CONV: i64 = 8;
/// Prefix of every tensor the transform creates.
const PREFIX: &str = "saliency/";

/// A forward model, decoded and checked, with its image input and score tensor found.
#[derive(Debug, Clone)]
pub struct ForwardModel {
    model: ModelProto,
    /// Nodes in topological order.
    nodes: Vec<NodeProto>,
    /// Name of the image input.
    pub input_name: String,
    /// Image dimensions after the batch axis (`[C, H, W]` for images), as declared.
    pub input_dims: Vec<Option<i64>>,
    /// Name of the pre-softmax score tensor.
    pub score_name: String,
    /// Default-domain opset.
    pub opset: i64,
}

/// Shapes of the forward model's tensors at batch size 1, from a probe run.
pub type ProbeShapes = HashMap<String, Vec<i64>>;

fn invalid(reason: impl Into<String>) -> SaliencyError {
    SaliencyError::InvalidModel {
        reason: reason.into(),
    }
}

fn node_label(node: &NodeProto) -> String {
    if node.name.is_empty() {
        node.output.first().cloned().unwrap_or_default()
    } else {
        node.name.clone()
    }
}

fn unsupported_attr(node: &NodeProto, reason: impl Into<String>) -> SaliencyError {
    SaliencyError::UnsupportedAttribute {
        op: node.op_type.clone(),
        node: node_label(node),
        reason: reason.into(),
    }
}

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn attr_int(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map_or(default, |a| a.i)
}

fn attr_float(node: &NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).map_or(default, |a| a.f)
}

fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

fn attr_string(node: &NodeProto, name: &str, default: &str) -> String {
    attr(node, name).map_or(default.to_string(), |a| {
        String::from_utf8_lossy(&a.s).into_owned()
    })
}

/// Sorts nodes so that every node comes after the producers of its inputs.
fn topological_order(
    nodes: &[NodeProto],
    available: &HashSet<String>,
) -> Result<Vec<NodeProto>, SaliencyError> {
    let mut ready: HashSet<String> = available.clone();
    let mut done = vec![false; nodes.len()];
    let mut out = Vec::with_capacity(nodes.len());
    loop {
        let mut progressed = false;
        for (i, node) in nodes.iter().enumerate() {
            if done[i] {
                continue;
            }
            if node.input.iter().all(|x| x.is_empty() || ready.contains(x)) {
                done[i] = true;
                progressed = true;
                ready.extend(node.output.iter().filter(|o| !o.is_empty()).cloned());
                out.push(node.clone());
            }
        }
        if out.len() == nodes.len() {
            return Ok(out);
        }
        if !progressed {
            let stuck = nodes
                .iter()
                .zip(&done)
                .find(|(_, d)| !**d)
                .map(|(n, _)| node_label(n))
                .unwrap_or_default();
            return Err(invalid(format!(
                "graph has a cycle or a missing input at node {stuck}"
            )));
        }
    }
}

impl ForwardModel {
    /// Decodes `bytes` and finds the image input and the pre-softmax score
    /// tensor: `pre_softmax_output` if given, else the input of the `Softmax`
    /// that produces a graph output, else the only graph output.
    pub fn parse(bytes: &[u8], pre_softmax_output: Option<&str>) -> Result<Self, SaliencyError> {
        let model = ModelProto::decode(bytes).map_err(|e| SaliencyError::Decode {
            reason: e.to_string(),
        })?;
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| invalid("model has no graph"))?;
        let opset = model
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
            .ok_or_else(|| invalid("model imports no default-domain opset"))?;
        if opset < MIN_OPSET {
            return Err(SaliencyError::UnsupportedOpset {
                opset,
                minimum: MIN_OPSET,
            });
        }
        for node in &graph.node {
            if matches!(
                node.op_type.as_str(),
                "If" | "Loop" | "Scan" | "SequenceMap"
            ) {
                return Err(SaliencyError::UnsupportedOp {
                    op: node.op_type.clone(),
                    node: node_label(node),
                });
            }
        }
        let initializers: HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<&ValueInfoProto> = graph
            .input
            .iter()
            .filter(|i| !initializers.contains(i.name.as_str()))
            .collect();
        let [input] = inputs.as_slice() else {
            return Err(invalid(format!(
                "expected one image input, found {}",
                inputs.len()
            )));
        };
        let (elem, dims) = input
            .tensor_dims()
            .ok_or_else(|| invalid(format!("input {} is not a tensor", input.name)))?;
        if elem != DT_FLOAT {
            return Err(invalid(format!(
                "input {} is not float32 (element type {elem})",
                input.name
            )));
        }
        if dims.len() < 2 {
            return Err(invalid(format!(
                "input {} has rank {}, expected a batch axis and more",
                input.name,
                dims.len()
            )));
        }
        let mut available: HashSet<String> =
            graph.initializer.iter().map(|t| t.name.clone()).collect();
        available.extend(graph.input.iter().map(|i| i.name.clone()));
        let nodes = topological_order(&graph.node, &available)?;

        let producer: HashMap<&str, &NodeProto> = nodes
            .iter()
            .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
            .collect();
        let score_name = match pre_softmax_output {
            Some(name) => {
                if !producer.contains_key(name) {
                    return Err(SaliencyError::ScoreNotFound {
                        reason: format!("no node produces tensor {name:?}"),
                    });
                }
                name.to_string()
            }
            None => find_pre_softmax(graph, &producer)?,
        };
        Ok(ForwardModel {
            input_name: input.name.clone(),
            input_dims: dims[1..].to_vec(),
            model,
            nodes,
            score_name,
            opset,
        })
    }

    /// The forward model cut at the score: its only output is the pre-softmax
    /// score tensor (the function that the gradient model differentiates).
    pub fn score_model(&self) -> Vec<u8> {
        let mut model = self.model.clone();
        if let Some(graph) = model.graph.as_mut() {
            graph.output = vec![ValueInfoProto {
                name: self.score_name.clone(),
                ..Default::default()
            }];
            graph.node = self.nodes.clone();
            graph.value_info.clear();
            set_dynamic_batch(graph, &self.input_name);
        }
        model.encode_to_vec()
    }

    /// The model with every node output made a graph output, for [`ProbeShapes`].
    pub fn probe_model(&self) -> Vec<u8> {
        let mut model = self.model.clone();
        if let Some(graph) = model.graph.as_mut() {
            graph.output = self
                .nodes
                .iter()
                .flat_map(|n| n.output.iter())
                .filter(|o| !o.is_empty())
                .map(|o| ValueInfoProto {
                    name: o.clone(),
                    ..Default::default()
                })
                .collect();
            graph.node = self.nodes.clone();
            set_dynamic_batch(graph, &self.input_name);
        }
        model.encode_to_vec()
    }
}

/// Makes the first axis of the image input symbolic.
fn set_dynamic_batch(graph: &mut GraphProto, input_name: &str) {
    use super::onnx_proto::{tensor_shape_proto::dimension::Value as D, type_proto::Value as T};
    for input in graph.input.iter_mut().filter(|i| i.name == input_name) {
        if let Some(T::TensorType(t)) = input.r#type.as_mut().and_then(|t| t.value.as_mut()) {
            if let Some(first) = t.shape.as_mut().and_then(|s| s.dim.first_mut()) {
                first.value = Some(D::DimParam("N".to_string()));
            }
        }
    }
}

/// The input of the `Softmax` behind a graph output, looking through `Identity`.
fn find_pre_softmax(
    graph: &GraphProto,
    producer: &HashMap<&str, &NodeProto>,
) -> Result<String, SaliencyError> {
    let mut found = Vec::new();
    for output in &graph.output {
        let mut name = output.name.as_str();
        while let Some(node) = producer.get(name) {
            match node.op_type.as_str() {
                "Identity" => name = node.input.first().map(String::as_str).unwrap_or_default(),
                "Softmax" | "LogSoftmax" => {
                    if let Some(x) = node.input.first() {
                        if !found.contains(x) {
                            found.push(x.clone());
                        }
                    }
                    break;
                }
                _ => break,
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 if graph.output.len() == 1 => Ok(graph.output[0].name.clone()),
        0 => Err(SaliencyError::ScoreNotFound {
            reason: format!(
                "no Softmax behind the graph outputs and {} outputs to choose from; name the score tensor",
                graph.output.len()
            ),
        }),
        _ => Err(SaliencyError::ScoreNotFound {
            reason: format!("several Softmax inputs ({}); name the score tensor", found.join(", ")),
        }),
    }
}

/// Appends nodes and constants with fresh names.
struct Builder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    next: usize,
}

impl Builder {
    fn fresh(&mut self, hint: &str) -> String {
        self.next += 1;
        format!("{PREFIX}{hint}_{}", self.next)
    }

    fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh(&op.to_ascii_lowercase());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: out.clone(),
            op_type: op.to_string(),
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    fn f32s(&mut self, dims: &[i64], values: &[f32]) -> String {
        let name = self.fresh("const");
        self.initializers
            .push(TensorProto::from_f32(&name, dims, values));
        name
    }

    fn i64s(&mut self, dims: &[i64], values: &[i64]) -> String {
        let name = self.fresh("const");
        self.initializers
            .push(TensorProto::from_i64(&name, dims, values));
        name
    }

    fn reduce_sum(&mut self, x: &str, axes: &[i64]) -> String {
        let axes = self.i64s(&[axes.len() as i64], axes);
        self.op(
            "ReduceSum",
            &[x, &axes],
            vec![AttributeProto::int("keepdims", 1)],
        )
    }

    fn reshape_like(&mut self, g: &str, like: &str) -> String {
        let shape = self.op("Shape", &[like], vec![]);
        self.op("Reshape", &[g, &shape], vec![])
    }

    fn slice(&mut self, x: &str, starts: &[i64], ends: &[i64], axes: &[i64]) -> String {
        let n = [axes.len() as i64];
        let s = self.i64s(&n, starts);
        let e = self.i64s(&n, ends);
        let a = self.i64s(&n, axes);
        self.op("Slice", &[x, &s, &e, &a], vec![])
    }
}

/// Partial gradients per forward tensor, summed on first use.
#[derive(Default)]
struct Gradients {
    parts: HashMap<String, Vec<String>>,
}

impl Gradients {
    fn add(&mut self, tensor: &str, grad: String) {
        self.parts.entry(tensor.to_string()).or_default().push(grad);
    }

    fn take(&mut self, b: &mut Builder, tensor: &str) -> Option<String> {
        let parts = self.parts.remove(tensor)?;
        match parts.as_slice() {
            [one] => Some(one.clone()),
            _ => {
                let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
                Some(b.op("Sum", &refs, vec![]))
            }
        }
    }
}

/// Everything a backward rule may look up.
struct Context<'a> {
    shapes: &'a ProbeShapes,
    constants: HashMap<String, TensorProto>,
    active: HashSet<String>,
    method: SaliencyMethod,
    /// Per-channel scale nodes (inference batch norm, multiplication by a
    /// constant) folded into the backward pass of the convolution before
    /// them: output name of the scale node.
    folded_scales: HashSet<String>,
    /// Convolution output -> the per-output-channel factor folded into its
    /// backward weights.
    conv_scales: HashMap<String, Vec<f32>>,
}

impl Context<'_> {
    fn dims(&self, name: &str) -> Result<&[i64], SaliencyError> {
        self.shapes
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| invalid(format!("no probed shape for tensor {name}")))
    }

    fn is_active(&self, name: &str) -> bool {
        self.active.contains(name)
    }

    fn constant_i64(&self, name: &str) -> Option<Vec<i64>> {
        self.constants.get(name).and_then(TensorProto::to_i64)
    }

    fn constant_dims(&self, name: &str) -> Option<Vec<i64>> {
        self.constants.get(name).map(|t| t.dims.clone())
    }
}

/// Geometry of a sliding window (Conv, pooling) along its spatial axes, with
/// the padding a transposed convolution needs to map the output gradient back
/// onto exactly the input's size.
struct Window {
    kernel: Vec<i64>,
    strides: Vec<i64>,
    dilations: Vec<i64>,
    pads_begin: Vec<i64>,
    /// End padding of the transposed convolution (crops its output).
    back_pads_end: Vec<i64>,
    /// Output padding of the transposed convolution (extends its output).
    output_padding: Vec<i64>,
}

impl Window {
    fn extent(&self, axis: usize) -> i64 {
        self.dilations[axis] * (self.kernel[axis] - 1) + 1
    }

    fn new(
        node: &NodeProto,
        kernel: Vec<i64>,
        in_dims: &[i64],
        out_dims: &[i64],
    ) -> Result<Self, SaliencyError> {
        let r = kernel.len();
        if in_dims.len() != r + 2 || out_dims.len() != r + 2 {
            return Err(unsupported_attr(
                node,
                format!(
                    "kernel rank {r} does not match input rank {}",
                    in_dims.len()
                ),
            ));
        }
        let strides = attr_ints(node, "strides").unwrap_or_else(|| vec![1; r]);
        let dilations = attr_ints(node, "dilations").unwrap_or_else(|| vec![1; r]);
        if strides.len() != r
            || dilations.len() != r
            || strides.iter().chain(&dilations).any(|&v| v < 1)
        {
            return Err(unsupported_attr(
                node,
                "strides/dilations do not match the kernel",
            ));
        }
        let auto_pad = attr_string(node, "auto_pad", "NOTSET");
        let mut w = Window {
            kernel,
            strides,
            dilations,
            pads_begin: vec![0; r],
            back_pads_end: vec![0; r],
            output_padding: vec![0; r],
        };
        for a in 0..r {
            let (input, output, s, k) =
                (in_dims[a + 2], out_dims[a + 2], w.strides[a], w.extent(a));
            w.pads_begin[a] = match auto_pad.as_str() {
                "NOTSET" => match attr_ints(node, "pads") {
                    Some(p) if p.len() == 2 * r => p[a],
                    Some(_) => return Err(unsupported_attr(node, "pads do not match the kernel")),
                    None => 0,
                },
                "VALID" => 0,
                "SAME_UPPER" | "SAME_LOWER" => {
                    let total = ((output - 1) * s + k - input).max(0);
                    if auto_pad == "SAME_UPPER" {
                        total / 2
                    } else {
                        total - total / 2
                    }
                }
                other => return Err(unsupported_attr(node, format!("auto_pad {other}"))),
            };
            if w.pads_begin[a] < 0 {
                return Err(unsupported_attr(node, "negative pads"));
            }
            // Size the transposed convolution would produce with no end padding.
            let full = s * (output - 1) + k - w.pads_begin[a];
            if full >= input {
                w.back_pads_end[a] = full - input;
            } else {
                w.output_padding[a] = input - full;
                if w.output_padding[a] >= s.max(w.dilations[a]) {
                    return Err(unsupported_attr(
                        node,
                        "input rows/columns beyond the last window exceed the stride",
                    ));
                }
            }
        }
        Ok(w)
    }

    fn conv_transpose_attrs(&self, group: i64) -> Vec<AttributeProto> {
        let pads: Vec<i64> = self
            .pads_begin
            .iter()
            .chain(&self.back_pads_end)
            .copied()
            .collect();
        vec![
            AttributeProto::ints("kernel_shape", &self.kernel),
            AttributeProto::ints("strides", &self.strides),
            AttributeProto::ints("dilations", &self.dilations),
            AttributeProto::ints("pads", &pads),
            AttributeProto::ints("output_padding", &self.output_padding),
            AttributeProto::int("group", group),
        ]
    }
}

/// Per-input gradients of one node.
type InputGrads = Vec<(usize, String)>;

/// The backward rule of one forward node: given the gradient `g` of its first
/// output, the gradients of its active inputs.
fn backward_node(
    node: &mut NodeProto,
    g: &str,
    ctx: &Context<'_>,
    b: &mut Builder,
) -> Result<InputGrads, SaliencyError> {
    let x = node.input.first().cloned().unwrap_or_default();
    let y = node.output.first().cloned().unwrap_or_default();
    let active_inputs: Vec<usize> = node
        .input
        .iter()
        .enumerate()
        .filter(|(_, n)| ctx.is_active(n))
        .map(|(i, _)| i)
        .collect();
    let only_first = |node: &NodeProto| -> Result<(), SaliencyError> {
        if active_inputs.iter().any(|&i| i != 0) {
            Err(unsupported_attr(
                node,
                "gradient through a non-data input (e.g. input-dependent weights)",
            ))
        } else {
            Ok(())
        }
    };
    let zero = || -> Vec<AttributeProto> { vec![] };
    if ctx.folded_scales.contains(&y) {
        // Applied by the convolution before it (see `fold_channel_scales`).
        return Ok(vec![(0, g.to_string())]);
    }
    match node.op_type.as_str() {
        "Identity" | "Dropout" => Ok(vec![(0, g.to_string())]),
        "Flatten" | "Reshape" | "Squeeze" | "Unsqueeze" => {
            only_first(node)?;
            Ok(vec![(0, b.reshape_like(g, &x))])
        }
        "Relu" => {
            // x > 0 exactly where the ReLU output is > 0. (Greater + Where is
            // 2x faster in ONNX Runtime than Sign + Mul: Sign is not vectorised.)
            let zero_f = b.f32s(&[], &[0.0]);
            let positive = b.op("Greater", &[&y, &zero_f], zero());
            let passed = match ctx.method {
                SaliencyMethod::Guided => b.op("Relu", &[g], zero()),
                SaliencyMethod::Plain | SaliencyMethod::GradCam => g.to_string(),
            };
            Ok(vec![(
                0,
                b.op("Where", &[&positive, &passed, &zero_f], zero()),
            )])
        }
        "Conv" => {
            only_first(node)?;
            let w_name = node.input.get(1).cloned().unwrap_or_default();
            let w_dims = ctx.constant_dims(&w_name);
            let kernel = match (attr_ints(node, "kernel_shape"), &w_dims) {
                (Some(k), _) => k,
                (None, Some(d)) if d.len() > 2 => d[2..].to_vec(),
                _ => {
                    return Err(unsupported_attr(
                        node,
                        "kernel shape neither given nor constant",
                    ))
                }
            };
            let window = Window::new(node, kernel, ctx.dims(&x)?, ctx.dims(&y)?)?;
            let group = attr_int(node, "group", 1);
            let scale = ctx.conv_scales.get(&y).map(Vec::as_slice);
            Ok(vec![(
                0,
                conv_input_gradient(g, &w_name, scale, &window, group, ctx, b)?,
            )])
        }
        "BatchNormalization" => {
            only_first(node)?;
            if attr_int(node, "training_mode", 0) != 0 {
                return Err(unsupported_attr(node, "training_mode=1"));
            }
            let rank = ctx.dims(&x)?.len();
            let eps = b.f32s(&[], &[attr_float(node, "epsilon", 1e-5)]);
            let scale = node.input.get(1).cloned().unwrap_or_default();
            let var = node.input.get(4).cloned().unwrap_or_default();
            let var_eps = b.op("Add", &[&var, &eps], zero());
            let std = b.op("Sqrt", &[&var_eps], zero());
            let factor = b.op("Div", &[&scale, &std], zero());
            let mut shape = vec![-1i64];
            shape.extend(std::iter::repeat_n(1, rank.saturating_sub(2)));
            let shape = b.i64s(&[shape.len() as i64], &shape);
            let factor = b.op("Reshape", &[&factor, &shape], zero());
            Ok(vec![(0, b.op("Mul", &[g, &factor], zero()))])
        }
        "MaxPool" => {
            only_first(node)?;
            let kernel = attr_ints(node, "kernel_shape")
                .ok_or_else(|| unsupported_attr(node, "no kernel_shape"))?;
            if attr_int(node, "storage_order", 0) != 0 {
                return Err(unsupported_attr(node, "storage_order=1"));
            }
            let in_dims = ctx.dims(&x)?.to_vec();
            let out_dims = ctx.dims(&y)?.to_vec();
            let window = Window::new(node, kernel, &in_dims, &out_dims)?;
            let grad = match max_pool_input_gradient_by_phase(
                &x, &y, g, &window, &in_dims, &out_dims, b,
            ) {
                Some(grad) => grad,
                None => max_pool_input_gradient(&x, g, &window, &in_dims, &out_dims, b),
            };
            Ok(vec![(0, grad)])
        }
        "AveragePool" => {
            only_first(node)?;
            let kernel = attr_ints(node, "kernel_shape")
                .ok_or_else(|| unsupported_attr(node, "no kernel_shape"))?;
            let in_dims = ctx.dims(&x)?.to_vec();
            let out_dims = ctx.dims(&y)?.to_vec();
            let window = Window::new(node, kernel, &in_dims, &out_dims)?;
            let r = window.kernel.len();
            let pads_end: Vec<i64> = (0..r)
                .map(|a| {
                    let (s, k) = (window.strides[a], window.extent(a));
                    (out_dims[a + 2] - 1) * s + k - window.pads_begin[a] - in_dims[a + 2]
                })
                .collect();
            if attr_int(node, "ceil_mode", 0) != 0
                && (0..r).any(|a| {
                    let floor_out = (in_dims[a + 2] + window.pads_begin[a] + pads_end[a].max(0)
                        - window.extent(a))
                        / window.strides[a]
                        + 1;
                    floor_out != out_dims[a + 2]
                })
            {
                return Err(unsupported_attr(
                    node,
                    "ceil_mode=1 with a partial last window",
                ));
            }
            let padded = window.pads_begin.iter().chain(&pads_end).any(|&p| p > 0);
            let scaled = if padded && attr_int(node, "count_include_pad", 0) == 0 {
                // Each output divides by the number of real (unpadded) inputs in its window.
                let inv = inverse_window_counts(&window, &in_dims, &out_dims);
                let mut dims = vec![1, 1];
                dims.extend_from_slice(&out_dims[2..]);
                let inv = b.f32s(&dims, &inv);
                b.op("Mul", &[g, &inv], zero())
            } else {
                let count: i64 = window.kernel.iter().product();
                let inv = b.f32s(&[], &[1.0 / count as f32]);
                b.op("Mul", &[g, &inv], zero())
            };
            let channels = in_dims[1];
            let mut w_dims = vec![channels, 1];
            w_dims.extend_from_slice(&window.kernel);
            let ones = vec![1.0f32; w_dims.iter().product::<i64>() as usize];
            let w = b.f32s(&w_dims, &ones);
            Ok(vec![(
                0,
                b.op(
                    "ConvTranspose",
                    &[&scaled, &w],
                    window.conv_transpose_attrs(channels),
                ),
            )])
        }
        "GlobalAveragePool" => {
            let in_dims = ctx.dims(&x)?;
            let count: i64 = in_dims.get(2..).unwrap_or_default().iter().product();
            let inv = b.f32s(&[], &[1.0 / count as f32]);
            let scaled = b.op("Mul", &[g, &inv], zero());
            let shape = b.op("Shape", &[&x], zero());
            Ok(vec![(0, b.op("Expand", &[&scaled, &shape], zero()))])
        }
        "GlobalMaxPool" => {
            let is_max = b.op("Equal", &[&x, &y], zero());
            let zero_f = b.f32s(&[], &[0.0]);
            Ok(vec![(0, b.op("Where", &[&is_max, g, &zero_f], zero()))])
        }
        "Add" | "Sub" | "Sum" => {
            if node.op_type != "Sum" && node.input.len() != 2 {
                return Err(unsupported_attr(node, "expected two inputs"));
            }
            let out_dims = ctx.dims(&y)?.to_vec();
            let mut grads = Vec::new();
            for &i in &active_inputs {
                let mut gi = g.to_string();
                if node.op_type == "Sub" && i == 1 {
                    gi = b.op("Neg", &[&gi], zero());
                }
                let in_dims = ctx.dims(&node.input[i])?.to_vec();
                grads.push((i, unbroadcast(node, &gi, &out_dims, &in_dims, b)?));
            }
            Ok(grads)
        }
        "Mul" => {
            if node.input.len() != 2 {
                return Err(unsupported_attr(node, "expected two inputs"));
            }
            let out_dims = ctx.dims(&y)?.to_vec();
            let mut grads = Vec::new();
            for &i in &active_inputs {
                let other = node.input[1 - i].clone();
                let gi = b.op("Mul", &[g, &other], zero());
                let in_dims = ctx.dims(&node.input[i])?.to_vec();
                grads.push((i, unbroadcast(node, &gi, &out_dims, &in_dims, b)?));
            }
            Ok(grads)
        }
        "Div" => {
            if node.input.len() != 2 {
                return Err(unsupported_attr(node, "expected two inputs"));
            }
            let out_dims = ctx.dims(&y)?.to_vec();
            let divisor = node.input[1].clone();
            let mut grads = Vec::new();
            for &i in &active_inputs {
                // d(a/b)/da = 1/b, d(a/b)/db = -(a/b)/b.
                let gi = if i == 0 {
                    b.op("Div", &[g, &divisor], zero())
                } else {
                    let gy = b.op("Mul", &[g, &y], zero());
                    let q = b.op("Div", &[&gy, &divisor], zero());
                    b.op("Neg", &[&q], zero())
                };
                let in_dims = ctx.dims(&node.input[i])?.to_vec();
                grads.push((i, unbroadcast(node, &gi, &out_dims, &in_dims, b)?));
            }
            Ok(grads)
        }
        "Neg" => Ok(vec![(0, b.op("Neg", &[g], zero()))]),
        "Pad" => {
            only_first(node)?;
            let mode = attr_string(node, "mode", "constant");
            if mode != "constant" {
                return Err(unsupported_attr(node, format!("mode {mode}")));
            }
            let in_dims = ctx.dims(&x)?.to_vec();
            let rank = in_dims.len();
            let pads = node
                .input
                .get(1)
                .filter(|s| !s.is_empty())
                .and_then(|p| ctx.constant_i64(p))
                .ok_or_else(|| unsupported_attr(node, "pads are not a constant"))?;
            let axes: Vec<i64> = match node.input.get(3).filter(|s| !s.is_empty()) {
                Some(a) => ctx
                    .constant_i64(a)
                    .ok_or_else(|| unsupported_attr(node, "axes are not a constant"))?
                    .into_iter()
                    .map(|a| if a < 0 { a + rank as i64 } else { a })
                    .collect(),
                None => (0..rank as i64).collect(),
            };
            if pads.len() != 2 * axes.len() {
                return Err(unsupported_attr(node, "pads do not match the axes"));
            }
            let (mut starts, mut ends, mut slice_axes) = (vec![], vec![], vec![]);
            for (j, &a) in axes.iter().enumerate() {
                let (pb, pe) = (pads[j], pads[j + axes.len()]);
                if pb < 0 || pe < 0 {
                    return Err(unsupported_attr(node, "negative pads (cropping)"));
                }
                if pb == 0 && pe == 0 {
                    continue;
                }
                if a == 0 {
                    return Err(unsupported_attr(node, "padding along the batch axis"));
                }
                let size = *in_dims
                    .get(a as usize)
                    .ok_or_else(|| unsupported_attr(node, "axis out of range"))?;
                starts.push(pb);
                ends.push(pb + size);
                slice_axes.push(a);
            }
            if slice_axes.is_empty() {
                return Ok(vec![(0, g.to_string())]);
            }
            Ok(vec![(0, b.slice(g, &starts, &ends, &slice_axes))])
        }
        "Gemm" => {
            only_first(node)?;
            let w = node.input.get(1).cloned().unwrap_or_default();
            let alpha = attr_float(node, "alpha", 1.0);
            let trans_a = attr_int(node, "transA", 0) != 0;
            let trans_b = attr_int(node, "transB", 0) != 0;
            let constant = ctx
                .constants
                .get(&w)
                .and_then(|t| t.to_f32().map(|v| (t.dims.clone(), v)));
            if let (false, Some((dims, values))) = (trans_a, constant) {
                let complete = values.len() as i64 == dims.iter().product::<i64>();
                if let (&[rows, cols], true) = (dims.as_slice(), complete) {
                    // dL/dA = alpha g B'^T, with B'^T stored ready-made (ORT's
                    // Gemm with transB re-packs the matrix on every run).
                    let b_prime_t = if trans_b {
                        b.f32s(&[rows, cols], &values)
                    } else {
                        b.f32s(
                            &[cols, rows],
                            &transposed(&values, rows as usize, cols as usize),
                        )
                    };
                    let product = b.op("MatMul", &[g, &b_prime_t], zero());
                    if alpha == 1.0 {
                        return Ok(vec![(0, product)]);
                    }
                    let alpha = b.f32s(&[], &[alpha]);
                    return Ok(vec![(0, b.op("Mul", &[&product, &alpha], zero()))]);
                }
            }
            // dL/dA' = alpha g B'^T; with transA, dL/dA = (dL/dA')^T = alpha B' g^T.
            let attrs = if trans_a {
                vec![
                    AttributeProto::float("alpha", alpha),
                    AttributeProto::int("transA", i64::from(trans_b)),
                    AttributeProto::int("transB", 1),
                ]
            } else {
                vec![
                    AttributeProto::float("alpha", alpha),
                    AttributeProto::int("transB", i64::from(!trans_b)),
                ]
            };
            let inputs: [&str; 2] = if trans_a { [&w, g] } else { [g, &w] };
            Ok(vec![(0, b.op("Gemm", &inputs, attrs))])
        }
        "MatMul" => {
            only_first(node)?;
            let w = node.input.get(1).cloned().unwrap_or_default();
            let w_rank = ctx.constant_dims(&w).map(|d| d.len());
            if w_rank != Some(2) {
                return Err(unsupported_attr(
                    node,
                    "second operand is not a constant matrix",
                ));
            }
            let wt = b.op(
                "Transpose",
                &[&w],
                vec![AttributeProto::ints("perm", &[1, 0])],
            );
            Ok(vec![(0, b.op("MatMul", &[g, &wt], zero()))])
        }
        "Transpose" => {
            let rank = ctx.dims(&x)?.len();
            let perm = attr_ints(node, "perm").unwrap_or_else(|| (0..rank as i64).rev().collect());
            let mut inverse = vec![0i64; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                let slot = usize::try_from(p)
                    .ok()
                    .and_then(|p| inverse.get_mut(p))
                    .ok_or_else(|| unsupported_attr(node, "invalid perm"))?;
                *slot = i as i64;
            }
            Ok(vec![(
                0,
                b.op(
                    "Transpose",
                    &[g],
                    vec![AttributeProto::ints("perm", &inverse)],
                ),
            )])
        }
        "Concat" => {
            let rank = ctx.dims(&y)?.len() as i64;
            let mut axis = attr_int(node, "axis", 0);
            if axis < 0 {
                axis += rank;
            }
            if axis == 0 {
                return Err(unsupported_attr(node, "concatenation along the batch axis"));
            }
            let mut offset = 0i64;
            let mut grads = Vec::new();
            for (i, name) in node.input.iter().enumerate() {
                let size = ctx
                    .dims(name)
                    .ok()
                    .map(<[i64]>::to_vec)
                    .or_else(|| ctx.constant_dims(name))
                    .and_then(|d| d.get(axis as usize).copied())
                    .ok_or_else(|| {
                        unsupported_attr(node, format!("unknown size of input {name}"))
                    })?;
                if active_inputs.contains(&i) {
                    grads.push((i, b.slice(g, &[offset], &[offset + size], &[axis])));
                }
                offset += size;
            }
            Ok(grads)
        }
        "Softmax" => {
            // dx = y * (g - sum(g * y, axis)).
            let rank = ctx.dims(&y)?.len() as i64;
            let mut axis = attr_int(node, "axis", -1);
            if axis < 0 {
                axis += rank;
            }
            let gy = b.op("Mul", &[g, &y], zero());
            let s = b.reduce_sum(&gy, &[axis]);
            let d = b.op("Sub", &[g, &s], zero());
            Ok(vec![(0, b.op("Mul", &[&y, &d], zero()))])
        }
        _ => Err(SaliencyError::UnsupportedOp {
            op: node.op_type.clone(),
            node: node_label(node),
        }),
    }
}

/// A row-major `rows x cols` matrix transposed.
fn transposed(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// Gradient of a 2-D max pool with equal strides `s <= kernel` and no
/// dilation, with respect to its input, computed by stride phase: the padded
/// input is split by `SpaceToDepth` into its `s * s` phases (rows and columns
/// with the same remainder mod `s`); an input cell of phase `r` at cell index
/// `q` lies in the windows `q - m` for `m < ceil((k - r) / s)` on each axis,
/// so its gradient is the sum, over those windows, of the window's incoming
/// gradient where the cell equals the window's maximum (the pool's output,
/// shifted by `m`). [`interleave_phases`] puts the phases back together.
/// Faster in ONNX Runtime than unfolding every window
/// ([`max_pool_input_gradient`], the fallback for other pools): the emotion
/// network's guided graph for 5 faces went from 17.8 to 14.3 ms (1 thread,
/// loaded machine), with identical output. Where a window's maximum occurs more than once (a measure-zero
/// event for real-valued activations) every copy receives the gradient.
/// `None` when the pool is not of this kind.
fn max_pool_input_gradient_by_phase(
    x: &str,
    y: &str,
    g: &str,
    window: &Window,
    in_dims: &[i64],
    out_dims: &[i64],
    b: &mut Builder,
) -> Option<String> {
    let s = *window.strides.first()?;
    if window.kernel.len() != 2
        || in_dims.len() != 4
        || out_dims.len() != 4
        || window.strides.iter().any(|&v| v != s)
        || window.dilations.iter().any(|&d| d != 1)
        || window.kernel.iter().any(|&k| k < s)
    {
        return None;
    }
    let (k, pb) = (&window.kernel, &window.pads_begin);
    let channels = in_dims[1];
    let input = [in_dims[2], in_dims[3]];
    let output = [out_dims[2], out_dims[3]];
    // Cells per axis after padding by pads_begin and up to a multiple of s.
    let cells = [0, 1].map(|a| (pb[a] + input[a] + s - 1) / s);
    // Pad to whole cells (with the lowest float, as max pooling pads with
    // minus infinity); no node when nothing is to be padded.
    let pads_end = [0, 1].map(|a| cells[a] * s - pb[a] - input[a]);
    let padded = if pb.iter().chain(&pads_end).all(|&p| p == 0) {
        x.to_string()
    } else {
        let lowest = b.f32s(&[], &[f32::MIN]);
        let pads = b.i64s(&[8], &[0, 0, pb[0], pb[1], 0, 0, pads_end[0], pads_end[1]]);
        b.op("Pad", &[x, &pads, &lowest], vec![])
    };
    let phases = if s == 1 {
        padded
    } else {
        b.op(
            "SpaceToDepth",
            &[&padded],
            vec![AttributeProto::int("blocksize", s)],
        )
    };
    // `t` (the pool's output or its gradient) moved by `m` cells down and
    // right, zero-filled, cut to the phase planes' size: `t` padded once by
    // the largest move (and up to the planes' size; negative end pads crop),
    // then one `Slice` per move (about 2.5 times cheaper than a `Pad` per
    // move in ONNX Runtime); none for no move.
    let most = [0, 1].map(|a| (k[a] + s - 1) / s - 1);
    let ends = [0, 1].map(|a| cells[a] - output[a]);
    let mut padded_once: HashMap<bool, String> = HashMap::new();
    let mut shifted: HashMap<(bool, i64, i64), String> = HashMap::new();
    let mut shift = |b: &mut Builder, is_output: bool, m: [i64; 2]| -> String {
        shifted
            .entry((is_output, m[0], m[1]))
            .or_insert_with(|| {
                let t = if is_output { y } else { g };
                if m == [0, 0] && ends == [0, 0] {
                    return t.to_string();
                }
                let source = padded_once
                    .entry(is_output)
                    .or_insert_with(|| {
                        let pads = b.i64s(&[8], &[0, 0, most[0], most[1], 0, 0, ends[0], ends[1]]);
                        b.op("Pad", &[t, &pads], vec![])
                    })
                    .clone();
                if most == [0, 0] {
                    return source;
                }
                let starts = [0, 1].map(|a| most[a] - m[a]);
                b.slice(
                    &source,
                    &starts,
                    &[starts[0] + cells[0], starts[1] + cells[1]],
                    &[2, 3],
                )
            })
            .clone()
    };
    let zero = b.f32s(&[], &[0.0]);
    let mut planes = Vec::with_capacity((s * s) as usize);
    for ry in 0..s {
        for rx in 0..s {
            let phase = if s == 1 {
                phases.clone()
            } else {
                let first = (ry * s + rx) * channels;
                b.slice(&phases, &[first], &[first + channels], &[1])
            };
            let mut terms = Vec::new();
            for my in 0..(k[0] - ry + s - 1) / s {
                for mx in 0..(k[1] - rx + s - 1) / s {
                    let maximum = shift(b, true, [my, mx]);
                    let gradient = shift(b, false, [my, mx]);
                    let is_max = b.op("Equal", &[&phase, &maximum], vec![]);
                    terms.push(b.op("Where", &[&is_max, &gradient, &zero], vec![]));
                }
            }
            let refs: Vec<&str> = terms.iter().map(String::as_str).collect();
            planes.push(match refs.as_slice() {
                [one] => one.to_string(),
                _ => b.op("Sum", &refs, vec![]),
            });
        }
    }
    let full = if s == 1 {
        planes.remove(0)
    } else {
        interleave_phases(&planes, s, cells[1], b)
    };
    if pb.iter().chain(&pads_end).all(|&p| p == 0) {
        return Some(full);
    }
    Some(b.slice(
        &full,
        &[pb[0], pb[1]],
        &[pb[0] + input[0], pb[1] + input[1]],
        &[2, 3],
    ))
}

/// The inverse of `SpaceToDepth` for `s * s` phase planes `[N, C, h, w]`
/// (row phase major): `[N, C, h * s, w * s]` with plane `ry * s + rx` at rows
/// `ry mod s` and columns `rx mod s`. Built from concatenations along new
/// inner axes and free reshapes: 2 to 4 times faster in ONNX Runtime than
/// `Concat` + `DepthToSpace` (measured 0.27 vs 0.61 ms for four
/// `[5, 16, 31, 31]` planes, 1 thread; `DepthToSpace` was slower still with
/// 2 threads).
fn interleave_phases(planes: &[String], s: i64, width: i64, b: &mut Builder) -> String {
    // [N, C, h, w] -> [N, C, h, w, 1]; "0" keeps a dimension.
    let column = b.i64s(&[5], &[0, 0, 0, 0, 1]);
    // [N, C, h, w, s] -> [N, C, h, 1, w * s].
    let row = b.i64s(&[5], &[0, 0, 0, 1, width * s]);
    // [N, C, h, s, w * s] -> [N, C, h * s, w * s].
    let image = b.i64s(&[4], &[0, 0, -1, width * s]);
    let rows: Vec<String> = planes
        .chunks(s as usize)
        .map(|same_row_phase| {
            let columns: Vec<String> = same_row_phase
                .iter()
                .map(|p| b.op("Reshape", &[p, &column], vec![]))
                .collect();
            let refs: Vec<&str> = columns.iter().map(String::as_str).collect();
            let joined = b.op("Concat", &refs, vec![AttributeProto::int("axis", 4)]);
            b.op("Reshape", &[&joined, &row], vec![])
        })
        .collect();
    let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
    let joined = b.op("Concat", &refs, vec![AttributeProto::int("axis", 3)]);
    b.op("Reshape", &[&joined, &image], vec![])
}

/// Gradient of a max pool with respect to its input, without the pool's
/// `Indices` output (whose ONNX Runtime kernel is single-threaded and slow):
/// every window is unfolded into `K = prod(kernel)` channels by a convolution
/// with one-hot kernels (padding with the lowest float, as max pooling pads
/// with minus infinity), `ArgMax` picks the winner of each window, the
/// gradient goes to that channel only, and the transposed one-hot convolution
/// folds the windows back, summing where they overlap.
fn max_pool_input_gradient(
    x: &str,
    g: &str,
    window: &Window,
    in_dims: &[i64],
    out_dims: &[i64],
    b: &mut Builder,
) -> String {
    let r = window.kernel.len();
    let k: i64 = window.kernel.iter().product();
    let mut one_hot_dims = vec![k, 1];
    one_hot_dims.extend_from_slice(&window.kernel);
    let mut one_hot = vec![0.0f32; (k * k) as usize];
    for t in 0..k as usize {
        one_hot[t * k as usize + t] = 1.0;
    }
    let one_hot = b.f32s(&one_hot_dims, &one_hot);

    let mut planes_shape = vec![-1i64, 1];
    planes_shape.extend_from_slice(&in_dims[2..]);
    let planes_shape = b.i64s(&[r as i64 + 2], &planes_shape);
    let planes = b.op("Reshape", &[x, &planes_shape], vec![]);
    let pads_end: Vec<i64> = (0..r)
        .map(|a| {
            ((out_dims[a + 2] - 1) * window.strides[a] + window.extent(a)
                - window.pads_begin[a]
                - in_dims[a + 2])
                .max(0)
        })
        .collect();
    let padded = if window.pads_begin.iter().chain(&pads_end).any(|&p| p > 0) {
        let mut pads = vec![0i64; 2 * (r + 2)];
        for a in 0..r {
            pads[a + 2] = window.pads_begin[a];
            pads[r + 2 + a + 2] = pads_end[a];
        }
        let pads = b.i64s(&[pads.len() as i64], &pads);
        let lowest = b.f32s(&[], &[f32::MIN]);
        b.op("Pad", &[&planes, &pads, &lowest], vec![])
    } else {
        planes
    };
    let unfold_attrs = vec![
        AttributeProto::ints("kernel_shape", &window.kernel),
        AttributeProto::ints("strides", &window.strides),
        AttributeProto::ints("dilations", &window.dilations),
    ];
    let patches = b.op("Conv", &[&padded, &one_hot], unfold_attrs);
    let winner = b.op(
        "ArgMax",
        &[&patches],
        vec![
            AttributeProto::int("axis", 1),
            AttributeProto::int("keepdims", 1),
        ],
    );
    let mut range_dims = vec![1i64, k];
    range_dims.extend(std::iter::repeat_n(1, r));
    let range: Vec<i64> = (0..k).collect();
    let range = b.i64s(&range_dims, &range);
    let is_winner = b.op("Equal", &[&winner, &range], vec![]);
    let mask = b.op(
        "Cast",
        &[&is_winner],
        vec![AttributeProto::int("to", i64::from(DT_FLOAT))],
    );
    let mut g_planes_shape = vec![-1i64, 1];
    g_planes_shape.extend_from_slice(&out_dims[2..]);
    let g_planes_shape = b.i64s(&[r as i64 + 2], &g_planes_shape);
    let g_planes = b.op("Reshape", &[g, &g_planes_shape], vec![]);
    let columns = b.op("Mul", &[&mask, &g_planes], vec![]);
    let folded = b.op(
        "ConvTranspose",
        &[&columns, &one_hot],
        window.conv_transpose_attrs(1),
    );
    b.reshape_like(&folded, x)
}

/// Gradient of a convolution with respect to its input: for stride 1 and
/// constant weights a plain convolution with flipped, transposed weights (the
/// fast path in ONNX Runtime), else `ConvTranspose` with the same weights.
fn conv_input_gradient(
    g: &str,
    w_name: &str,
    output_scale: Option<&[f32]>,
    window: &Window,
    group: i64,
    ctx: &Context<'_>,
    b: &mut Builder,
) -> Result<String, SaliencyError> {
    let r = window.kernel.len();
    let unit_stride = window.strides.iter().all(|&s| s == 1);
    let back_pads: Vec<i64> = (0..r)
        .map(|a| window.extent(a) - 1 - window.pads_begin[a])
        .chain((0..r).map(|a| window.extent(a) - 1 - window.back_pads_end[a]))
        .collect();
    let mut weights = ctx
        .constants
        .get(w_name)
        .and_then(|t| t.to_f32().map(|v| (t.dims.clone(), v)));
    if let (Some(scale), Some((dims, values))) = (output_scale, weights.as_mut()) {
        // Fold the per-output-channel factor of the following scale node.
        let per_channel = values.len() / scale.len().max(1);
        if dims.first() == Some(&(scale.len() as i64))
            && per_channel > 0
            && values.len() == per_channel * scale.len()
        {
            for (chunk, f) in values.chunks_mut(per_channel).zip(scale) {
                chunk.iter_mut().for_each(|v| *v *= f);
            }
        }
    }
    if let (true, true, Some((dims, values))) =
        (unit_stride, back_pads.iter().all(|&p| p >= 0), &weights)
    {
        let complete = values.len() as i64 == dims.iter().product::<i64>();
        // Fewer input channels than one NCHWc block (e.g. the image's 1 or 3)
        // make the convolution mostly padding: ConvTranspose is faster there.
        let wide = dims
            .get(1)
            .is_some_and(|&c| c * group >= MIN_CHANNELS_FOR_FLIPPED_CONV);
        if complete
            && wide
            && dims.len() == r + 2
            && group >= 1
            && dims[0] % group == 0
            && dims[1] > 0
        {
            let flipped = flipped_transposed_weights(dims, values, group);
            let (m, c_per_group) = (dims[0], dims[1]);
            let mut new_dims = vec![c_per_group * group, m / group];
            new_dims.extend_from_slice(&dims[2..]);
            let w = b.f32s(&new_dims, &flipped);
            let attrs = vec![
                AttributeProto::ints("kernel_shape", &window.kernel),
                AttributeProto::ints("dilations", &window.dilations),
                AttributeProto::ints("pads", &back_pads),
                AttributeProto::int("group", group),
            ];
            return Ok(b.op("Conv", &[g, &w], attrs));
        }
    }
    let w = match (output_scale, weights) {
        (Some(_), Some((dims, values))) => b.f32s(&dims, &values),
        _ => w_name.to_string(),
    };
    Ok(b.op(
        "ConvTranspose",
        &[g, &w],
        window.conv_transpose_attrs(group),
    ))
}

/// The constant per-channel factor of a node that scales a convolution's
/// `channels` output channels: inference `BatchNormalization` (`scale /
/// sqrt(var + eps)`) or `Mul` by a constant of one value per channel (or one
/// value). `None` for anything else.
fn channel_scale(
    node: &NodeProto,
    conv_output: &str,
    channels: usize,
    rank: usize,
    ctx: &Context<'_>,
) -> Option<Vec<f32>> {
    let constant = |name: &String| ctx.constants.get(name).and_then(TensorProto::to_f32);
    match node.op_type.as_str() {
        "BatchNormalization" if node.input.first().map(String::as_str) == Some(conv_output) => {
            if attr_int(node, "training_mode", 0) != 0
                || node.output.iter().skip(1).any(|o| !o.is_empty())
            {
                return None;
            }
            let eps = attr_float(node, "epsilon", 1e-5);
            let scale = constant(node.input.get(1)?)?;
            let var = constant(node.input.get(4)?)?;
            (scale.len() == channels && var.len() == channels).then(|| {
                scale
                    .iter()
                    .zip(&var)
                    .map(|(s, v)| s / (v + eps).sqrt())
                    .collect()
            })
        }
        "Mul" => {
            let other = match node.input.as_slice() {
                [a, b] if a == conv_output => b,
                [a, b] if b == conv_output => a,
                _ => return None,
            };
            let dims = ctx.constant_dims(other)?;
            let values = constant(other)?;
            if values.len() == 1 {
                return Some(vec![values[0]; channels]);
            }
            // One value per channel, broadcast along the spatial axes: [1, C, 1, 1] or [C, 1, 1].
            let spatial = rank.checked_sub(2)?;
            let channel_axis = dims.len().checked_sub(spatial + 1)?;
            let per_channel = values.len() == channels
                && dims[channel_axis] as usize == channels
                && dims
                    .iter()
                    .enumerate()
                    .all(|(i, &d)| i == channel_axis || d == 1)
                && dims.len() <= rank;
            per_channel.then_some(values)
        }
        _ => None,
    }
}

/// Weights `[M, C/g, k...]` of a grouped convolution turned into the weights
/// `[C, M/g, k...]` of the convolution that computes its input gradient:
/// output and input channels swapped within each group, kernel flipped.
fn flipped_transposed_weights(dims: &[i64], values: &[f32], group: i64) -> Vec<f32> {
    let (m, cg) = (dims[0] as usize, dims[1] as usize);
    let k: usize = dims[2..].iter().product::<i64>() as usize;
    let g = group as usize;
    let mg = m / g;
    let mut out = vec![0.0f32; values.len()];
    for gi in 0..g {
        for mo in 0..mg {
            for ci in 0..cg {
                let src = ((gi * mg + mo) * cg + ci) * k;
                let dst = ((gi * cg + ci) * mg + mo) * k;
                for t in 0..k {
                    out[dst + t] = values[src + k - 1 - t];
                }
            }
        }
    }
    out
}

/// `1 / count` per output position of an average pool that excludes padding.
fn inverse_window_counts(window: &Window, in_dims: &[i64], out_dims: &[i64]) -> Vec<f32> {
    let r = window.kernel.len();
    let per_axis: Vec<Vec<i64>> = (0..r)
        .map(|a| {
            (0..out_dims[a + 2])
                .map(|o| {
                    (0..window.kernel[a])
                        .filter(|t| {
                            let pos = o * window.strides[a] - window.pads_begin[a]
                                + t * window.dilations[a];
                            (0..in_dims[a + 2]).contains(&pos)
                        })
                        .count() as i64
                })
                .collect()
        })
        .collect();
    let total: usize = out_dims[2..].iter().product::<i64>() as usize;
    let mut out = Vec::with_capacity(total);
    for flat in 0..total {
        let mut rest = flat;
        let mut count = 1i64;
        for a in (0..r).rev() {
            let n = out_dims[a + 2] as usize;
            count *= per_axis[a][rest % n];
            rest /= n;
        }
        out.push(if count > 0 { 1.0 / count as f32 } else { 0.0 });
    }
    out
}

/// Sums a gradient over the axes along which an input was broadcast.
fn unbroadcast(
    node: &NodeProto,
    g: &str,
    out_dims: &[i64],
    in_dims: &[i64],
    b: &mut Builder,
) -> Result<String, SaliencyError> {
    if out_dims == in_dims {
        return Ok(g.to_string());
    }
    if out_dims.len() != in_dims.len() {
        return Err(unsupported_attr(
            node,
            "broadcast of an image-dependent input across ranks",
        ));
    }
    let axes: Vec<i64> = (1..out_dims.len())
        .filter(|&a| in_dims[a] == 1 && out_dims[a] != 1)
        .map(|a| a as i64)
        .collect();
    if axes.is_empty() {
        return Ok(g.to_string());
    }
    Ok(b.reduce_sum(g, &axes))
}

/// Finds `Conv -> per-channel scale` pairs whose scale can be folded into
/// the convolution's backward weights (one multiplication fewer over a whole
/// activation per pair): the convolution's output feeds only the scale node
/// and both the weights and the factor are constants.
fn fold_channel_scales(fwd: &ForwardModel, graph: &GraphProto, ctx: &mut Context<'_>) {
    let mut consumers: HashMap<&str, Vec<&NodeProto>> = HashMap::new();
    for node in &fwd.nodes {
        for input in &node.input {
            consumers.entry(input.as_str()).or_default().push(node);
        }
    }
    let graph_outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    for conv in fwd.nodes.iter().filter(|n| n.op_type == "Conv") {
        let Some(y) = conv.output.first() else {
            continue;
        };
        let weights_constant = conv
            .input
            .get(1)
            .is_some_and(|w| ctx.constants.contains_key(w));
        let (Some([scale_node]), Some(dims), true, false) = (
            consumers.get(y.as_str()).map(Vec::as_slice),
            ctx.shapes.get(y),
            weights_constant,
            graph_outputs.contains(y.as_str()) || y == &fwd.score_name,
        ) else {
            continue;
        };
        let channels = dims.get(1).copied().unwrap_or(0) as usize;
        if let Some(factor) = channel_scale(scale_node, y, channels, dims.len(), ctx) {
            if let Some(out) = scale_node.output.first() {
                ctx.folded_scales.insert(out.clone());
                ctx.conv_scales.insert(y.clone(), factor);
            }
        }
    }
}

/// Builds the gradient model from a parsed forward model and its probed shapes.
///
/// Grad-CAM uses `gradcam_layer` (a tensor name: the first output of a node
/// before the score) if given, else the output of the last convolution with
/// a spatial output, or that convolution's input if it is a class-map
/// convolution (one output channel per class, as in mini-Xception).
///
/// With `relu_taps`, every ReLU on the gradient path also exposes, as extra
/// outputs `tap/<node>/x` (forward input), `tap/<node>/grad_out` (incoming
/// gradient) and `tap/<node>/grad_in` (gradient passed on), so that tests
/// can check the guided rule inside a real network.
pub fn gradient_model(
    fwd: &ForwardModel,
    shapes: &ProbeShapes,
    method: SaliencyMethod,
    gradcam_layer: Option<&str>,
    relu_taps: bool,
) -> Result<Vec<u8>, SaliencyError> {
    let graph = fwd
        .model
        .graph
        .as_ref()
        .ok_or_else(|| invalid("model has no graph"))?;
    let mut constants: HashMap<String, TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    for node in fwd.nodes.iter().filter(|n| n.op_type == "Constant") {
        if let (Some(out), Some(t)) = (
            node.output.first(),
            attr(node, "value").and_then(|a| a.t.clone()),
        ) {
            constants.insert(out.clone(), t);
        }
    }

    // Tensors that depend on the image; integer-valued ones carry no gradient.
    let mut active: HashSet<String> = HashSet::from([fwd.input_name.clone()]);
    for node in &fwd.nodes {
        if matches!(
            node.op_type.as_str(),
            "Shape" | "Size" | "ArgMax" | "ArgMin" | "NonZero"
        ) {
            continue;
        }
        if node.input.iter().any(|i| active.contains(i)) {
            let outputs = if node.op_type == "MaxPool" {
                &node.output[..1.min(node.output.len())]
            } else {
                &node.output[..]
            };
            active.extend(outputs.iter().filter(|o| !o.is_empty()).cloned());
        }
    }
    if !active.contains(&fwd.score_name) {
        return Err(SaliencyError::ScoreNotFound {
            reason: format!(
                "score tensor {} does not depend on the input {}",
                fwd.score_name, fwd.input_name
            ),
        });
    }
    for name in &active {
        let dims = shapes
            .get(name)
            .ok_or_else(|| invalid(format!("no probed shape for tensor {name}")))?;
        if dims.first() != Some(&1) {
            return Err(invalid(format!(
                "tensor {name} does not have the batch on its first axis"
            )));
        }
    }
    let score_dims = shapes.get(&fwd.score_name).cloned().unwrap_or_default();
    let num_classes = match score_dims.as_slice() {
        [_, k] if *k > 0 => *k,
        other => {
            return Err(SaliencyError::ScoreNotFound {
                reason: format!(
                    "score tensor {} has shape {other:?}, expected [N, classes]",
                    fwd.score_name
                ),
            })
        }
    };
    let mut ctx = Context {
        shapes,
        constants,
        active,
        method,
        folded_scales: HashSet::new(),
        conv_scales: HashMap::new(),
    };
    fold_channel_scales(fwd, graph, &mut ctx);

    // Forward nodes between the input and the score.
    let producer_index: HashMap<&str, usize> = fwd
        .nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let score_node = *producer_index
        .get(fwd.score_name.as_str())
        .ok_or_else(|| invalid("score tensor has no producer"))?;
    let mut forward: Vec<NodeProto> = fwd.nodes[..=score_node].to_vec();

    let spatial = |o: &String| {
        shapes
            .get(o)
            .is_some_and(|d| d.len() > 2 && d[2..].iter().product::<i64>() > 1)
    };
    let gradcam_target = match (method, gradcam_layer) {
        (SaliencyMethod::GradCam, Some(layer)) => {
            let index = forward
                .iter()
                .position(|n| n.output.first().is_some_and(|o| o == layer))
                .filter(|_| ctx.is_active(layer) && spatial(&layer.to_string()))
                .ok_or_else(|| {
                    invalid(format!(
                        "Grad-CAM layer {layer} is not an image-dependent feature map before the score"
                    ))
                })?;
            Some((index, layer.to_string()))
        }
        (SaliencyMethod::GradCam, None) => {
            let found = forward.iter().rposition(|n| {
                n.op_type == "Conv"
                    && n.output
                        .first()
                        .is_some_and(|o| ctx.is_active(o) && spatial(o))
            });
            let index = found
                .ok_or_else(|| invalid("Grad-CAM needs a convolution with a spatial output"))?;
            let conv = &forward[index];
            let output = conv.output[0].clone();
            // A last convolution with one output channel per class is the
            // classifier itself (class maps, then global pooling): explain the
            // features it reads instead, as Grad-CAM intends.
            let is_class_map = shapes.get(&output).and_then(|d| d.get(1)) == Some(&num_classes);
            let features = conv
                .input
                .first()
                .filter(|f| ctx.is_active(f) && spatial(f))
                .and_then(|f| {
                    forward
                        .iter()
                        .position(|n| n.output.first() == Some(f))
                        .map(|i| (i, f.clone()))
                });
            match (is_class_map, features) {
                (true, Some(target)) => Some(target),
                _ => Some((index, output)),
            }
        }
        _ => None,
    };

    let mut b = Builder {
        nodes: Vec::new(),
        initializers: Vec::new(),
        next: 0,
    };
    // Seed: one-hot of the chosen class on the scores.
    let zero_i = b.i64s(&[], &[0]);
    let no_choice = b.op("Less", &[CLASS_INPUT, &zero_i], vec![]);
    let argmax = b.op(
        "ArgMax",
        &[&fwd.score_name],
        vec![
            AttributeProto::int("axis", 1),
            AttributeProto::int("keepdims", 0),
        ],
    );
    let class = b.op("Where", &[&no_choice, &argmax, CLASS_INPUT], vec![]);
    let depth = b.i64s(&[], &[num_classes]);
    let on_off = b.f32s(&[2], &[0.0, 1.0]);
    let seed = b.op(
        "OneHot",
        &[&class, &depth, &on_off],
        vec![AttributeProto::int("axis", -1)],
    );

    let mut taps: Vec<(String, String)> = Vec::new();
    let mut grads = Gradients::default();
    grads.add(&fwd.score_name, seed);
    let stop = gradcam_target.as_ref().map_or(0, |(i, _)| *i + 1);
    for index in (stop..forward.len()).rev() {
        let node = &mut forward[index];
        let outputs_with_grad: Vec<String> = node
            .output
            .iter()
            .filter(|o| grads.parts.contains_key(o.as_str()))
            .cloned()
            .collect();
        if outputs_with_grad.is_empty() {
            continue;
        }
        if !node.input.iter().any(|i| ctx.is_active(i)) {
            continue;
        }
        if outputs_with_grad.len() > 1 || outputs_with_grad[0] != node.output[0] {
            return Err(unsupported_attr(
                node,
                "gradient through a secondary output",
            ));
        }
        if !node.domain.is_empty() && node.domain != "ai.onnx" {
            return Err(SaliencyError::UnsupportedOp {
                op: format!("{}:{}", node.domain, node.op_type),
                node: node_label(node),
            });
        }
        let Some(g) = grads.take(&mut b, &node.output[0]) else {
            continue;
        };
        let input_grads = backward_node(node, &g, &ctx, &mut b)?;
        if relu_taps && node.op_type == "Relu" {
            if let Some((_, gi)) = input_grads.first() {
                let label = node_label(node);
                taps.push((format!("tap/{label}/x"), node.input[0].clone()));
                taps.push((format!("tap/{label}/grad_out"), g.clone()));
                taps.push((format!("tap/{label}/grad_in"), gi.clone()));
            }
        }
        for (i, gi) in input_grads {
            let input = node.input[i].clone();
            if ctx.is_active(&input) {
                grads.add(&input, gi);
            }
        }
    }

    let saliency = match &gradcam_target {
        Some((_, target)) => {
            let g = grads
                .take(&mut b, target)
                .ok_or_else(|| invalid("no gradient reaches the Grad-CAM layer"))?;
            let weights = b.op("GlobalAveragePool", &[&g], vec![]);
            let weighted = b.op("Mul", &[&weights, target], vec![]);
            let summed = b.reduce_sum(&weighted, &[1]);
            let cam = b.op("Relu", &[&summed], vec![]);
            let spatial: Vec<i64> = fwd.input_dims[1..].iter().map(|d| d.unwrap_or(0)).collect();
            let in_shape = shapes.get(&fwd.input_name).cloned().unwrap_or_default();
            let spatial = if spatial.iter().all(|&d| d > 0) {
                spatial
            } else {
                in_shape[2..].to_vec()
            };
            let cam_shape = b.op("Shape", &[&cam], vec![]);
            let head = b.slice(&cam_shape, &[0], &[2], &[0]);
            let tail = b.i64s(&[spatial.len() as i64], &spatial);
            let sizes = b.op(
                "Concat",
                &[&head, &tail],
                vec![AttributeProto::int("axis", 0)],
            );
            b.op(
                "Resize",
                &[&cam, "", "", &sizes],
                vec![AttributeProto::string("mode", "linear")],
            )
        }
        None => grads
            .take(&mut b, &fwd.input_name)
            .ok_or_else(|| invalid("no gradient reaches the input"))?,
    };

    // Name the outputs.
    let mut outputs = Vec::new();
    for (name, from) in [
        (SALIENCY_OUTPUT, saliency.as_str()),
        (SCORES_OUTPUT, fwd.score_name.as_str()),
        (CLASS_OUTPUT, class.as_str()),
    ] {
        b.nodes.push(NodeProto {
            input: vec![from.to_string()],
            output: vec![name.to_string()],
            name: format!("{PREFIX}output_{name}"),
            op_type: "Identity".to_string(),
            ..Default::default()
        });
        outputs.push(name.to_string());
    }
    for (name, from) in &taps {
        b.nodes.push(NodeProto {
            input: vec![from.clone()],
            output: vec![name.clone()],
            name: name.clone(),
            op_type: "Identity".to_string(),
            ..Default::default()
        });
    }

    // Keep only what the outputs need.
    let mut all_nodes = forward;
    all_nodes.append(&mut b.nodes);
    let mut needed: HashSet<String> = outputs
        .iter()
        .cloned()
        .chain(taps.iter().map(|(n, _)| n.clone()))
        .collect();
    let mut keep = vec![false; all_nodes.len()];
    for (i, node) in all_nodes.iter().enumerate().rev() {
        if node.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(node.input.iter().filter(|s| !s.is_empty()).cloned());
        }
    }
    let nodes: Vec<NodeProto> = all_nodes
        .into_iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(n, _)| n)
        .collect();
    let mut initializers: Vec<TensorProto> = graph
        .initializer
        .iter()
        .filter(|t| needed.contains(&t.name))
        .cloned()
        .collect();
    initializers.extend(
        b.initializers
            .into_iter()
            .filter(|t| needed.contains(&t.name)),
    );

    let mut input_dims: Vec<Option<i64>> = vec![None];
    input_dims.extend(
        shapes
            .get(&fwd.input_name)
            .map(|d| d[1..].iter().map(|&v| Some(v)).collect::<Vec<_>>())
            .unwrap_or_default(),
    );
    let saliency_dims: Vec<Option<i64>> = match method {
        SaliencyMethod::GradCam => {
            let mut d = vec![None, Some(1)];
            d.extend(input_dims[2..].iter().copied());
            d
        }
        _ => input_dims.clone(),
    };
    let new_graph = GraphProto {
        node: nodes,
        name: format!("{}_{}", graph.name, method.as_str()),
        initializer: initializers,
        doc_string: format!(
            "{} saliency of {} (generated by face_perception)",
            method.as_str(),
            graph.name
        ),
        input: vec![
            ValueInfoProto::tensor(&fwd.input_name, DT_FLOAT, &input_dims),
            ValueInfoProto::tensor(CLASS_INPUT, DT_INT64, &[None]),
        ],
        output: [
            ValueInfoProto::tensor(SALIENCY_OUTPUT, DT_FLOAT, &saliency_dims),
            ValueInfoProto::tensor(SCORES_OUTPUT, DT_FLOAT, &[None, Some(num_classes)]),
            ValueInfoProto::tensor(CLASS_OUTPUT, DT_INT64, &[None]),
        ]
        .into_iter()
        .chain(taps.iter().map(|(name, _)| ValueInfoProto {
            name: name.clone(),
            ..Default::default()
        }))
        .collect(),
        value_info: Vec::new(),
    };
    let mut opset_import: Vec<OperatorSetIdProto> = fwd
        .model
        .opset_import
        .iter()
        .filter(|o| !(o.domain.is_empty() || o.domain == "ai.onnx"))
        .cloned()
        .collect();
    opset_import.push(OperatorSetIdProto {
        domain: String::new(),
        version: fwd.opset.max(GRADIENT_OPSET),
    });
    let model = ModelProto {
        ir_version: fwd.model.ir_version,
        producer_name: "face_perception".to_string(),
        producer_version: env!("CARGO_PKG_VERSION").to_string(),
        graph: Some(new_graph),
        opset_import,
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}
