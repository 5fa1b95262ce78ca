//! A small f64 reference evaluator of forward ONNX classifier graphs, written
//! for the saliency tests only and independent of ONNX Runtime and of the
//! crate's gradient transform (it shares only the `prost` ONNX structs).
//!
//! It evaluates, in f64, exactly the operators of the emotion and gender
//! classifiers: `Conv` (groups, strides, explicit pads, dilations, bias),
//! `BatchNormalization` (inference), `Relu`, `MaxPool`, `AveragePool`,
//! `GlobalAveragePool`, `Add` and `Mul` (multidirectional broadcasting),
//! `Flatten` and `Gemm`, on NCHW tensors. Any other operator, any attribute
//! it does not read (`auto_pad` other than `NOTSET`, `ceil_mode` 1, a
//! `MaxPool` index output, ...) and any non-float initialiser is an error
//! naming it. Initialisers (`float_data`, `double_data` or little-endian
//! `raw_data`) are widened to f64.
//!
//! Besides the forward pass, [`ReferenceModel::directional`] propagates a
//! tangent (forward-mode derivative along one input direction) through the
//! linearisation at a point and returns the *kink margin*: the distance along
//! that direction to the nearest switch of a `Relu` (pre-activation crossing
//! zero) or of a `MaxPool` window (another element overtaking the maximum),
//! extrapolated linearly from the point. Every other operator is affine, so
//! the network is exactly affine along the direction on `(-margin, margin)`:
//! up to the first switch all pre-activations move linearly with the
//! tangents computed at the point, so no switch can happen before the
//! smallest linearly extrapolated one.

#![allow(dead_code)]

use face_perception::saliency::onnx_proto::{
    attr_type, AttributeProto, ModelProto, NodeProto, TensorProto,
};
use prost::Message;
use std::collections::{HashMap, HashSet};

/// `TensorProto.DataType.FLOAT` and `DOUBLE`.
const DT_FLOAT: i32 = 1;
const DT_DOUBLE: i32 = 11;

/// A dense row-major f64 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f64>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "tensor shape {shape:?}"
        );
        Tensor { shape, data }
    }

    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![0.0; n],
        }
    }

    fn map(&self, f: impl Fn(f64) -> f64) -> Tensor {
        Tensor {
            shape: self.shape.clone(),
            data: self.data.iter().map(|&v| f(v)).collect(),
        }
    }

    fn dims4(&self, what: &str) -> Result<[usize; 4], String> {
        match self.shape[..] {
            [n, c, h, w] => Ok([n, c, h, w]),
            _ => Err(format!(
                "{what}: expected an NCHW tensor, got shape {:?}",
                self.shape
            )),
        }
    }
}

/// A 2-D sliding window: kernel, strides, pads `[top, left, bottom, right]`, dilations.
#[derive(Clone, Debug)]
struct Window {
    kernel: [usize; 2],
    strides: [usize; 2],
    pads: [usize; 4],
    dilations: [usize; 2],
}

impl Window {
    /// Output extent (`ceil_mode` 0) for input extent `h, w`.
    fn output(&self, h: usize, w: usize, what: &str) -> Result<[usize; 2], String> {
        let mut out = [0; 2];
        for (a, len) in [h, w].into_iter().enumerate() {
            let span = (self.kernel[a] - 1) * self.dilations[a] + 1;
            let padded = len + self.pads[a] + self.pads[a + 2];
            if padded < span {
                return Err(format!(
                    "{what}: window {span} larger than padded input {padded}"
                ));
            }
            out[a] = (padded - span) / self.strides[a] + 1;
        }
        Ok(out)
    }

    /// Input coordinate of output `o`, kernel tap `k` on axis `a` (None: padding).
    fn input(&self, a: usize, o: usize, k: usize, len: usize) -> Option<usize> {
        let i = (o * self.strides[a] + k * self.dilations[a]) as isize - self.pads[a] as isize;
        (i >= 0 && (i as usize) < len).then_some(i as usize)
    }

    /// Outputs `o` in `0..out` whose input for tap `k` on axis `a` lies inside `0..len`.
    fn valid(&self, a: usize, k: usize, out: usize, len: usize) -> std::ops::Range<usize> {
        let s = self.strides[a] as isize;
        let off = (k * self.dilations[a]) as isize - self.pads[a] as isize;
        // o * s + off >= 0  and  o * s + off <= len - 1
        let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
        let hi = if (len as isize - 1 - off) < 0 {
            0
        } else {
            ((len as isize - 1 - off) / s + 1).min(out as isize)
        };
        (lo as usize)..(hi.max(lo) as usize)
    }
}

#[derive(Clone, Debug)]
enum Op {
    Conv {
        window: Window,
        group: usize,
    },
    BatchNormalization {
        epsilon: f64,
    },
    Relu,
    MaxPool {
        window: Window,
    },
    AveragePool {
        window: Window,
        count_include_pad: bool,
    },
    GlobalAveragePool,
    Add,
    Mul,
    Flatten {
        axis: i64,
    },
    Gemm {
        alpha: f64,
        beta: f64,
        trans_a: bool,
        trans_b: bool,
    },
}

#[derive(Clone, Debug)]
struct Node {
    op: Op,
    inputs: Vec<String>,
    output: String,
    label: String,
}

/// The forward graph up to one tensor, with f64 weights.
pub struct ReferenceModel {
    input: String,
    output: String,
    constants: HashMap<String, Tensor>,
    nodes: Vec<Node>,
}

/// All tensors of one forward pass.
pub struct Trace {
    values: HashMap<String, Tensor>,
    output: String,
}

impl Trace {
    /// The evaluated output tensor (the score).
    pub fn output(&self) -> &Tensor {
        &self.values[&self.output]
    }
}

/// The derivative of the output along one input direction, and how far the
/// network stays affine along it.
pub struct Directional {
    /// d output / d t at `t = 0`, output-shaped.
    pub tangent: Tensor,
    /// Distance (in units of `t`) to the nearest Relu / MaxPool switch; infinite if none.
    pub margin: f64,
    /// Which operator sets the margin.
    pub margin_at: String,
}

fn node_label(node: &NodeProto) -> String {
    if node.name.is_empty() {
        format!("{} -> {}", node.op_type, node.output.join(", "))
    } else {
        format!("{} ({})", node.name, node.op_type)
    }
}

fn tensor_to_f64(t: &TensorProto) -> Result<Tensor, String> {
    if t.data_location != 0 || !t.external_data.is_empty() {
        return Err(format!(
            "initialiser {}: external data not supported",
            t.name
        ));
    }
    let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let data: Vec<f64> = match t.data_type {
        DT_FLOAT if !t.raw_data.is_empty() => t
            .raw_data
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        DT_FLOAT => t.float_data.iter().map(|&v| f64::from(v)).collect(),
        DT_DOUBLE if !t.raw_data.is_empty() => t
            .raw_data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        DT_DOUBLE => t.double_data.clone(),
        other => {
            return Err(format!(
                "initialiser {}: element type {other} not supported (float or double only)",
                t.name
            ))
        }
    };
    if data.len() != shape.iter().product::<usize>() {
        return Err(format!(
            "initialiser {}: {} values for dims {:?}",
            t.name,
            data.len(),
            t.dims
        ));
    }
    Ok(Tensor { shape, data })
}

/// Reads a node's attributes; [`Attributes::finish`] rejects any attribute not read.
struct Attributes<'a> {
    node: &'a NodeProto,
    read: HashSet<&'a str>,
}

impl<'a> Attributes<'a> {
    fn new(node: &'a NodeProto) -> Self {
        Attributes {
            node,
            read: HashSet::new(),
        }
    }

    fn get(&mut self, name: &'a str, kind: i32) -> Result<Option<&'a AttributeProto>, String> {
        let Some(a) = self.node.attribute.iter().find(|a| a.name == name) else {
            return Ok(None);
        };
        self.read.insert(name);
        if a.r#type != kind {
            return Err(format!(
                "{}: attribute {name} has type {}, expected {kind}",
                node_label(self.node),
                a.r#type
            ));
        }
        Ok(Some(a))
    }

    fn int(&mut self, name: &'a str, default: i64) -> Result<i64, String> {
        Ok(self.get(name, attr_type::INT)?.map_or(default, |a| a.i))
    }

    fn float(&mut self, name: &'a str, default: f32) -> Result<f32, String> {
        Ok(self.get(name, attr_type::FLOAT)?.map_or(default, |a| a.f))
    }

    fn ints(&mut self, name: &'a str) -> Result<Option<Vec<i64>>, String> {
        Ok(self.get(name, attr_type::INTS)?.map(|a| a.ints.clone()))
    }

    fn string(&mut self, name: &'a str) -> Result<Option<String>, String> {
        Ok(self
            .get(name, attr_type::STRING)?
            .map(|a| String::from_utf8_lossy(&a.s).into_owned()))
    }

    /// An integer attribute that must have one value.
    fn require(&mut self, name: &'a str, default: i64, allowed: i64) -> Result<(), String> {
        let v = self.int(name, default)?;
        if v != allowed {
            return Err(format!(
                "{}: attribute {name} = {v} not supported (only {allowed})",
                node_label(self.node)
            ));
        }
        Ok(())
    }

    /// A 2-D window from `kernel_shape`, `strides`, `pads`, `dilations`, `auto_pad`.
    fn window(&mut self, kernel: Option<[usize; 2]>) -> Result<Window, String> {
        let label = node_label(self.node);
        if let Some(auto_pad) = self.string("auto_pad")? {
            if auto_pad != "NOTSET" {
                return Err(format!("{label}: auto_pad {auto_pad} not supported"));
            }
        }
        let pair = |v: Option<Vec<i64>>, what: &str, default: Option<[usize; 2]>| match v {
            Some(v) if v.len() == 2 && v.iter().all(|&x| x >= 1) => {
                Ok([v[0] as usize, v[1] as usize])
            }
            Some(v) => Err(format!(
                "{label}: {what} {v:?} not supported (2-D, positive)"
            )),
            None => default.ok_or_else(|| format!("{label}: {what} missing")),
        };
        let kernel = match (self.ints("kernel_shape")?, kernel) {
            (Some(k), Some(w)) => {
                let k = pair(Some(k), "kernel_shape", None)?;
                if k != w {
                    return Err(format!(
                        "{label}: kernel_shape {k:?} differs from the weights' {w:?}"
                    ));
                }
                k
            }
            (k, w) => pair(k, "kernel_shape", w)?,
        };
        let strides = pair(self.ints("strides")?, "strides", Some([1, 1]))?;
        let dilations = pair(self.ints("dilations")?, "dilations", Some([1, 1]))?;
        let pads = match self.ints("pads")? {
            None => [0; 4],
            Some(p) if p.len() == 4 && p.iter().all(|&x| x >= 0) => {
                [p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize]
            }
            Some(p) => return Err(format!("{label}: pads {p:?} not supported")),
        };
        Ok(Window {
            kernel,
            strides,
            pads,
            dilations,
        })
    }

    fn finish(self) -> Result<(), String> {
        for a in &self.node.attribute {
            if !self.read.contains(a.name.as_str()) {
                return Err(format!(
                    "{}: attribute {} not supported by the reference evaluator",
                    node_label(self.node),
                    a.name
                ));
            }
        }
        Ok(())
    }
}

impl ReferenceModel {
    /// Parses a forward model and keeps the nodes that `output` (e.g. the
    /// pre-softmax score) depends on.
    pub fn parse(bytes: &[u8], output: &str) -> Result<Self, String> {
        let model = ModelProto::decode(bytes).map_err(|e| format!("decode: {e}"))?;
        let graph = model.graph.as_ref().ok_or("model has no graph")?;
        let mut constants = HashMap::new();
        for t in &graph.initializer {
            constants.insert(t.name.clone(), tensor_to_f64(t)?);
        }
        let inputs: Vec<_> = graph
            .input
            .iter()
            .filter(|i| !constants.contains_key(&i.name))
            .collect();
        let [input] = inputs[..] else {
            return Err(format!("expected one graph input, found {}", inputs.len()));
        };

        // The nodes `output` depends on, in graph order (which ONNX requires
        // to be topological; checked below).
        let producer: HashMap<&str, &NodeProto> = graph
            .node
            .iter()
            .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
            .collect();
        let mut needed: HashSet<&str> = HashSet::new();
        let mut stack = vec![output];
        while let Some(name) = stack.pop() {
            if let Some(node) = producer.get(name) {
                if needed.insert(node.output[0].as_str()) {
                    stack.extend(
                        node.input
                            .iter()
                            .map(String::as_str)
                            .filter(|s| !s.is_empty()),
                    );
                }
            } else if name != input.name && !constants.contains_key(name) {
                return Err(format!("no node, initialiser or input provides {name:?}"));
            }
        }
        let mut available: HashSet<String> = constants.keys().cloned().collect();
        available.insert(input.name.clone());
        let mut nodes = Vec::new();
        for node in graph
            .node
            .iter()
            .filter(|n| needed.contains(n.output[0].as_str()))
        {
            let label = node_label(node);
            if !node.domain.is_empty() && node.domain != "ai.onnx" {
                return Err(format!("{label}: domain {} not supported", node.domain));
            }
            if node.output.len() != 1 {
                return Err(format!(
                    "{label}: {} outputs not supported (one only)",
                    node.output.len()
                ));
            }
            for i in &node.input {
                if !available.contains(i) {
                    return Err(format!(
                        "{label}: input {i:?} not yet computed (graph not topological)"
                    ));
                }
            }
            let op = Self::parse_op(node, &constants)?;
            available.insert(node.output[0].clone());
            nodes.push(Node {
                op,
                inputs: node.input.clone(),
                output: node.output[0].clone(),
                label,
            });
        }
        Ok(ReferenceModel {
            input: input.name.clone(),
            output: output.to_string(),
            constants,
            nodes,
        })
    }

    fn parse_op(node: &NodeProto, constants: &HashMap<String, Tensor>) -> Result<Op, String> {
        let label = node_label(node);
        let arity = |lo: usize, hi: usize| {
            if node.input.len() < lo
                || node.input.len() > hi
                || node.input.iter().any(String::is_empty)
            {
                Err(format!(
                    "{label}: {} inputs not supported",
                    node.input.len()
                ))
            } else {
                Ok(())
            }
        };
        let mut attrs = Attributes::new(node);
        let op = match node.op_type.as_str() {
            "Conv" => {
                arity(2, 3)?;
                let w = constants
                    .get(&node.input[1])
                    .ok_or_else(|| format!("{label}: weights must be an initialiser"))?;
                let [_, _, kh, kw] = w.dims4(&label)?;
                let window = attrs.window(Some([kh, kw]))?;
                let group = attrs.int("group", 1)?;
                if group < 1 {
                    return Err(format!("{label}: group {group}"));
                }
                Op::Conv {
                    window,
                    group: group as usize,
                }
            }
            "BatchNormalization" => {
                arity(5, 5)?;
                let epsilon = f64::from(attrs.float("epsilon", 1e-5)?);
                attrs.float("momentum", 0.9)?; // training only
                attrs.require("training_mode", 0, 0)?;
                attrs.require("spatial", 1, 1)?;
                for p in &node.input[1..] {
                    if !constants.contains_key(p) {
                        return Err(format!("{label}: parameter {p} must be an initialiser"));
                    }
                }
                Op::BatchNormalization { epsilon }
            }
            "Relu" => {
                arity(1, 1)?;
                Op::Relu
            }
            "MaxPool" => {
                arity(1, 1)?;
                attrs.require("ceil_mode", 0, 0)?;
                attrs.require("storage_order", 0, 0)?;
                Op::MaxPool {
                    window: attrs.window(None)?,
                }
            }
            "AveragePool" => {
                arity(1, 1)?;
                attrs.require("ceil_mode", 0, 0)?;
                let count_include_pad = attrs.int("count_include_pad", 0)? != 0;
                Op::AveragePool {
                    window: attrs.window(None)?,
                    count_include_pad,
                }
            }
            "GlobalAveragePool" => {
                arity(1, 1)?;
                Op::GlobalAveragePool
            }
            "Add" => {
                arity(2, 2)?;
                Op::Add
            }
            "Mul" => {
                arity(2, 2)?;
                Op::Mul
            }
            "Flatten" => {
                arity(1, 1)?;
                Op::Flatten {
                    axis: attrs.int("axis", 1)?,
                }
            }
            "Gemm" => {
                arity(2, 3)?;
                Op::Gemm {
                    alpha: f64::from(attrs.float("alpha", 1.0)?),
                    beta: f64::from(attrs.float("beta", 1.0)?),
                    trans_a: attrs.int("transA", 0)? != 0,
                    trans_b: attrs.int("transB", 0)? != 0,
                }
            }
            other => {
                return Err(format!(
                    "{label}: operator {other} not supported by the reference evaluator"
                ))
            }
        };
        attrs.finish()?;
        Ok(op)
    }

    /// The forward pass, keeping every tensor.
    pub fn trace(&self, input: &Tensor) -> Result<Trace, String> {
        let mut values: HashMap<String, Tensor> = HashMap::new();
        values.insert(self.input.clone(), input.clone());
        for node in &self.nodes {
            let args: Vec<&Tensor> = node
                .inputs
                .iter()
                .map(|i| {
                    values
                        .get(i)
                        .or_else(|| self.constants.get(i))
                        .expect("topological")
                })
                .collect();
            let out = eval(&node.op, &args).map_err(|e| format!("{}: {e}", node.label))?;
            values.insert(node.output.clone(), out);
        }
        Ok(Trace {
            values,
            output: self.output.clone(),
        })
    }

    /// The output tensor at `input`.
    pub fn output(&self, input: &Tensor) -> Result<Tensor, String> {
        let mut trace = self.trace(input)?;
        Ok(trace.values.remove(&self.output).expect("output evaluated"))
    }

    /// Forward-mode derivative of the output along `direction` at the point
    /// of `trace`, with the kink margin (see the module docs).
    pub fn directional(&self, trace: &Trace, direction: &Tensor) -> Result<Directional, String> {
        // None: identically zero (constants).
        let mut tangents: HashMap<&str, Option<Tensor>> = HashMap::new();
        tangents.insert(self.input.as_str(), Some(direction.clone()));
        let mut margin = f64::INFINITY;
        let mut margin_at = String::new();
        for node in &self.nodes {
            let args: Vec<&Tensor> = node
                .inputs
                .iter()
                .map(|i| {
                    trace
                        .values
                        .get(i)
                        .or_else(|| self.constants.get(i))
                        .expect("traced")
                })
                .collect();
            let dargs: Vec<Option<&Tensor>> = node
                .inputs
                .iter()
                .map(|i| tangents.get(i.as_str()).and_then(Option::as_ref))
                .collect();
            let out = &trace.values[&node.output];
            let (t, m) = tangent(&node.op, &args, &dargs, out)
                .map_err(|e| format!("{}: {e}", node.label))?;
            if m < margin {
                margin = m;
                margin_at.clone_from(&node.label);
            }
            tangents.insert(node.output.as_str(), t);
        }
        let shape = trace.output().shape.clone();
        let tangent = tangents
            .remove(self.output.as_str())
            .flatten()
            .unwrap_or_else(|| Tensor::zeros(shape));
        Ok(Directional {
            tangent,
            margin,
            margin_at,
        })
    }
}

/// One operator's output.
fn eval(op: &Op, x: &[&Tensor]) -> Result<Tensor, String> {
    match op {
        Op::Conv { window, group } => conv(x[0], x[1], x.get(2).copied(), window, *group),
        Op::BatchNormalization { epsilon } => {
            batch_norm(x[0], x[1], x[2], x[3], x[4], *epsilon, false)
        }
        Op::Relu => Ok(x[0].map(|v| v.max(0.0))),
        Op::MaxPool { window } => Ok(max_pool(x[0], window)?.0),
        Op::AveragePool {
            window,
            count_include_pad,
        } => average_pool(x[0], window, *count_include_pad),
        Op::GlobalAveragePool => global_average_pool(x[0]),
        Op::Add => broadcast(x[0], x[1], |a, b| a + b),
        Op::Mul => broadcast(x[0], x[1], |a, b| a * b),
        Op::Flatten { axis } => flatten(x[0], *axis),
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => gemm(
            x[0],
            x[1],
            x.get(2).copied(),
            *alpha,
            *beta,
            *trans_a,
            *trans_b,
        ),
    }
}

fn add_opt(a: Option<Tensor>, b: Option<Tensor>) -> Result<Option<Tensor>, String> {
    match (a, b) {
        (Some(a), Some(b)) => Ok(Some(broadcast(&a, &b, |x, y| x + y)?)),
        (a, None) => Ok(a),
        (None, b) => Ok(b),
    }
}

/// One operator's tangent from its inputs' values `x` and tangents `dx`
/// (None: zero), and the operator's kink margin.
fn tangent(
    op: &Op,
    x: &[&Tensor],
    dx: &[Option<&Tensor>],
    out: &Tensor,
) -> Result<(Option<Tensor>, f64), String> {
    let none = f64::INFINITY;
    Ok(match op {
        Op::Conv { window, group } => {
            let a = dx[0]
                .map(|d| conv(d, x[1], None, window, *group))
                .transpose()?;
            let b = dx[1]
                .map(|d| conv(x[0], d, None, window, *group))
                .transpose()?;
            let c = dx
                .get(2)
                .copied()
                .flatten()
                .map(|d| {
                    let per_channel = Tensor::new(vec![1, d.data.len(), 1, 1], d.data.clone());
                    broadcast(out, &per_channel, |_, b| b)
                })
                .transpose()?;
            (add_opt(add_opt(a, b)?, c)?, none)
        }
        Op::BatchNormalization { epsilon } => {
            if dx[1..].iter().any(Option::is_some) {
                return Err("non-constant BatchNormalization parameters".into());
            }
            (
                dx[0]
                    .map(|d| batch_norm(d, x[1], x[2], x[3], x[4], *epsilon, true))
                    .transpose()?,
                none,
            )
        }
        Op::Relu => match dx[0] {
            None => (None, none),
            Some(d) => {
                let mut margin = none;
                let mut t = d.clone();
                for ((tv, &z), &dz) in t.data.iter_mut().zip(&x[0].data).zip(&d.data) {
                    if dz != 0.0 {
                        margin = margin.min(z.abs() / dz.abs());
                    }
                    if z <= 0.0 {
                        *tv = 0.0;
                    }
                }
                (Some(t), margin)
            }
        },
        Op::MaxPool { window } => match dx[0] {
            None => (None, none),
            Some(d) => {
                let (values, arg) = max_pool(x[0], window)?;
                let mut margin = none;
                let mut t = Tensor::zeros(values.shape.clone());
                for (o, &a) in arg.iter().enumerate() {
                    t.data[o] = d.data[a];
                }
                // Competitors of each window: another element overtakes the
                // maximum at |t| = gap / |relative tangent|.
                max_pool_windows(x[0], window, |o, i| {
                    let a = arg[o];
                    if i != a {
                        let rel = d.data[i] - d.data[a];
                        if rel != 0.0 {
                            margin = margin.min((x[0].data[a] - x[0].data[i]) / rel.abs());
                        }
                    }
                })?;
                (Some(t), margin)
            }
        },
        Op::AveragePool {
            window,
            count_include_pad,
        } => (
            dx[0]
                .map(|d| average_pool(d, window, *count_include_pad))
                .transpose()?,
            none,
        ),
        Op::GlobalAveragePool => (dx[0].map(global_average_pool).transpose()?, none),
        Op::Add => {
            let a = dx[0].map(|d| broadcast(d, x[1], |a, _| a)).transpose()?;
            let b = dx[1].map(|d| broadcast(x[0], d, |_, b| b)).transpose()?;
            (add_opt(a, b)?, none)
        }
        Op::Mul => {
            let a = dx[0]
                .map(|d| broadcast(d, x[1], |a, b| a * b))
                .transpose()?;
            let b = dx[1]
                .map(|d| broadcast(x[0], d, |a, b| a * b))
                .transpose()?;
            (add_opt(a, b)?, none)
        }
        Op::Flatten { axis } => (dx[0].map(|d| flatten(d, *axis)).transpose()?, none),
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => {
            let a = dx[0]
                .map(|d| gemm(d, x[1], None, *alpha, 0.0, *trans_a, *trans_b))
                .transpose()?;
            let b = dx[1]
                .map(|d| gemm(x[0], d, None, *alpha, 0.0, *trans_a, *trans_b))
                .transpose()?;
            let c = dx
                .get(2)
                .copied()
                .flatten()
                .map(|d| broadcast(out, d, |_, c| beta * c))
                .transpose()?;
            (add_opt(add_opt(a, b)?, c)?, none)
        }
    })
}

/// `Conv`: NCHW input, `[M, C/group, kH, kW]` weights, optional `[M]` bias.
fn conv(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    win: &Window,
    group: usize,
) -> Result<Tensor, String> {
    let [n, c, h, wd] = x.dims4("Conv input")?;
    let [m, cg, kh, kw] = w.dims4("Conv weights")?;
    if c != cg * group || m % group != 0 || [kh, kw] != win.kernel {
        return Err(format!(
            "shapes: input {:?}, weights {:?}, group {group}, kernel {:?}",
            x.shape, w.shape, win.kernel
        ));
    }
    if let Some(b) = b {
        if b.shape != [m] {
            return Err(format!("bias shape {:?}, expected [{m}]", b.shape));
        }
    }
    let [oh, ow] = win.output(h, wd, "Conv")?;
    let mut out = Tensor::zeros(vec![n, m, oh, ow]);
    let m_per_group = m / group;
    for ni in 0..n {
        for oc in 0..m {
            let g = oc / m_per_group;
            let plane = &mut out.data[(ni * m + oc) * oh * ow..][..oh * ow];
            if let Some(b) = b {
                plane.fill(b.data[oc]);
            }
            for icg in 0..cg {
                let ic = g * cg + icg;
                let src = &x.data[(ni * c + ic) * h * wd..][..h * wd];
                for ky in 0..kh {
                    let rows = win.valid(0, ky, oh, h);
                    for kx in 0..kw {
                        let wv = w.data[((oc * cg + icg) * kh + ky) * kw + kx];
                        if wv == 0.0 {
                            continue;
                        }
                        let cols = win.valid(1, kx, ow, wd);
                        for oy in rows.clone() {
                            let iy = oy * win.strides[0] + ky * win.dilations[0] - win.pads[0];
                            let dst = &mut plane[oy * ow..][..ow];
                            let row = &src[iy * wd..][..wd];
                            let (s, off) = (win.strides[1], kx * win.dilations[1]);
                            if s == 1 {
                                // Contiguous: let the compiler vectorise.
                                let src_cols =
                                    cols.start + off - win.pads[1]..cols.end + off - win.pads[1];
                                for (d, &v) in dst[cols.clone()].iter_mut().zip(&row[src_cols]) {
                                    *d += wv * v;
                                }
                            } else {
                                for ox in cols.clone() {
                                    dst[ox] += wv * row[ox * s + off - win.pads[1]];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// `BatchNormalization` in inference; `linear_only` drops the offset (for tangents).
fn batch_norm(
    x: &Tensor,
    scale: &Tensor,
    bias: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    epsilon: f64,
    linear_only: bool,
) -> Result<Tensor, String> {
    let [n, c, h, w] = x.dims4("BatchNormalization input")?;
    for p in [scale, bias, mean, var] {
        if p.shape != [c] {
            return Err(format!("parameter shape {:?}, expected [{c}]", p.shape));
        }
    }
    let mut out = x.clone();
    for ni in 0..n {
        for ci in 0..c {
            let k = scale.data[ci] / (var.data[ci] + epsilon).sqrt();
            let offset = if linear_only {
                0.0
            } else {
                bias.data[ci] - mean.data[ci] * k
            };
            for v in &mut out.data[(ni * c + ci) * h * w..][..h * w] {
                *v = *v * k + offset;
            }
        }
    }
    Ok(out)
}

/// Calls `f(output index, input index)` for every non-padding element of every `MaxPool` window.
fn max_pool_windows(
    x: &Tensor,
    win: &Window,
    mut f: impl FnMut(usize, usize),
) -> Result<[usize; 4], String> {
    let [n, c, h, w] = x.dims4("MaxPool input")?;
    let [oh, ow] = win.output(h, w, "MaxPool")?;
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let o = (plane * oh + oy) * ow + ox;
                for ky in 0..win.kernel[0] {
                    let Some(iy) = win.input(0, oy, ky, h) else {
                        continue;
                    };
                    for kx in 0..win.kernel[1] {
                        let Some(ix) = win.input(1, ox, kx, w) else {
                            continue;
                        };
                        f(o, (plane * h + iy) * w + ix);
                    }
                }
            }
        }
    }
    Ok([n, c, oh, ow])
}

/// `MaxPool` (padding never wins) and the input index of each maximum (the first in a tie).
fn max_pool(x: &Tensor, win: &Window) -> Result<(Tensor, Vec<usize>), String> {
    let mut best: Vec<Option<usize>> = Vec::new();
    let [n, c, h, w] = x.dims4("MaxPool input")?;
    let [oh, ow] = win.output(h, w, "MaxPool")?;
    best.resize(n * c * oh * ow, None);
    max_pool_windows(x, win, |o, i| match best[o] {
        Some(b) if x.data[b] >= x.data[i] => {}
        _ => best[o] = Some(i),
    })?;
    let arg: Vec<usize> = best
        .into_iter()
        .map(|b| b.ok_or("a MaxPool window lies entirely in the padding"))
        .collect::<Result<_, _>>()?;
    let data = arg.iter().map(|&i| x.data[i]).collect();
    Ok((Tensor::new(vec![n, c, oh, ow], data), arg))
}

/// `AveragePool`; padding counts in the divisor only with `count_include_pad`.
fn average_pool(x: &Tensor, win: &Window, count_include_pad: bool) -> Result<Tensor, String> {
    let [n, c, h, w] = x.dims4("AveragePool input")?;
    let [oh, ow] = win.output(h, w, "AveragePool")?;
    let mut out = Tensor::zeros(vec![n, c, oh, ow]);
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut sum, mut count) = (0.0, 0usize);
                for ky in 0..win.kernel[0] {
                    for kx in 0..win.kernel[1] {
                        match (win.input(0, oy, ky, h), win.input(1, ox, kx, w)) {
                            (Some(iy), Some(ix)) => {
                                sum += x.data[(plane * h + iy) * w + ix];
                                count += 1;
                            }
                            _ if count_include_pad => {
                                // Padding inside the padded extent counts as a zero.
                                count += 1;
                            }
                            _ => {}
                        }
                    }
                }
                if count == 0 {
                    return Err("an AveragePool window lies entirely in the padding".into());
                }
                out.data[(plane * oh + oy) * ow + ox] = sum / count as f64;
            }
        }
    }
    Ok(out)
}

fn global_average_pool(x: &Tensor) -> Result<Tensor, String> {
    let [n, c, h, w] = x.dims4("GlobalAveragePool input")?;
    let data = x
        .data
        .chunks_exact(h * w)
        .map(|p| p.iter().sum::<f64>() / (h * w) as f64)
        .collect();
    Ok(Tensor::new(vec![n, c, 1, 1], data))
}

fn flatten(x: &Tensor, axis: i64) -> Result<Tensor, String> {
    let rank = x.shape.len() as i64;
    let axis = if axis < 0 { axis + rank } else { axis };
    if !(0..=rank).contains(&axis) {
        return Err(format!("Flatten axis {axis} for rank {rank}"));
    }
    let outer: usize = x.shape[..axis as usize].iter().product();
    Ok(Tensor::new(
        vec![outer, x.data.len() / outer.max(1)],
        x.data.clone(),
    ))
}

/// Multidirectional (numpy) broadcasting of `f` over `a` and `b`.
fn broadcast(a: &Tensor, b: &Tensor, f: impl Fn(f64, f64) -> f64) -> Result<Tensor, String> {
    if a.shape == b.shape {
        let data = a.data.iter().zip(&b.data).map(|(&x, &y)| f(x, y)).collect();
        return Ok(Tensor::new(a.shape.clone(), data));
    }
    let rank = a.shape.len().max(b.shape.len());
    let pad = |s: &[usize]| -> Vec<usize> {
        let mut v = vec![1; rank - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (sa, sb) = (pad(&a.shape), pad(&b.shape));
    let mut shape = Vec::with_capacity(rank);
    for (&x, &y) in sa.iter().zip(&sb) {
        shape.push(match (x, y) {
            _ if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(format!("cannot broadcast {:?} with {:?}", a.shape, b.shape)),
        });
    }
    // Element strides, 0 along broadcast axes.
    let strides = |s: &[usize]| -> Vec<usize> {
        let mut st = vec![0; rank];
        let mut acc = 1;
        for d in (0..rank).rev() {
            st[d] = if s[d] == 1 { 0 } else { acc };
            acc *= s[d];
        }
        st
    };
    let (ta, tb) = (strides(&sa), strides(&sb));
    let total: usize = shape.iter().product();
    let mut data = Vec::with_capacity(total);
    let mut index = vec![0usize; rank];
    for _ in 0..total {
        let ia: usize = index.iter().zip(&ta).map(|(i, s)| i * s).sum();
        let ib: usize = index.iter().zip(&tb).map(|(i, s)| i * s).sum();
        data.push(f(a.data[ia], b.data[ib]));
        for d in (0..rank).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(Tensor::new(shape, data))
}

/// `Gemm`: `alpha * op(A) op(B) + beta * C`, `C` broadcast to `[M, N]`.
fn gemm(
    a: &Tensor,
    b: &Tensor,
    c: Option<&Tensor>,
    alpha: f64,
    beta: f64,
    trans_a: bool,
    trans_b: bool,
) -> Result<Tensor, String> {
    let ([ar, ac], [br, bc]) = match (&a.shape[..], &b.shape[..]) {
        (&[ar, ac], &[br, bc]) => ([ar, ac], [br, bc]),
        _ => {
            return Err(format!(
                "Gemm operands {:?}, {:?} are not matrices",
                a.shape, b.shape
            ))
        }
    };
    let (m, k) = if trans_a { (ac, ar) } else { (ar, ac) };
    let (k2, n) = if trans_b { (bc, br) } else { (br, bc) };
    if k != k2 {
        return Err(format!("Gemm inner dimensions {k} and {k2}"));
    }
    let at = |i: usize, p: usize| {
        if trans_a {
            a.data[p * ac + i]
        } else {
            a.data[i * ac + p]
        }
    };
    let bt = |p: usize, j: usize| {
        if trans_b {
            b.data[j * bc + p]
        } else {
            b.data[p * bc + j]
        }
    };
    let mut out = Tensor::zeros(vec![m, n]);
    for i in 0..m {
        for j in 0..n {
            out.data[i * n + j] = alpha * (0..k).map(|p| at(i, p) * bt(p, j)).sum::<f64>();
        }
    }
    match c {
        Some(c) if beta != 0.0 => broadcast(&out, c, |o, c| o + beta * c),
        _ => Ok(out),
    }
}
