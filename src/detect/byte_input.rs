//! Byte input for the int8 CenterFace: pixels go to ONNX Runtime as bytes in
//! 2 x 2 blocks instead of as float planes.
//!
//! The int8 detector (`centerface.int8.onnx`, QDQ) takes raw RGB values as
//! floats and quantises them at once with scale 1 and zero point 0, which
//! gives back the bytes; its first convolution (3 x 3, stride 2, padded by 1)
//! then runs in ONNX Runtime's int8 kernels over 3 channels, NHWC. So every
//! frame paid for the float planes, the QuantizeLinear, a transpose to NHWC
//! and an im2col copied in 3-byte pieces.
//!
//! [`rewrite`] changes the graph, at load time, so that it takes the bytes
//! directly, NHWC, with each 2 x 2 pixel block as one position of 12 channels
//! (`(row in block * 2 + column in block) * 3 + colour`, SpaceToDepth's
//! order), and runs the first convolution as the same convolution over
//! blocks: 2 x 2, stride 1, padded by one block at the top and left, its int8
//! weights moved to the block channels they read (the other taps zero). The
//! integer products and sums are the same, so the outputs are identical (see
//! `tests/detect_byte_input.rs`); the model file and its manifest entry are
//! unchanged. Measured with ONNX Runtime 1.31.1 at 320 x 256: 6.50 -> 6.03 ms
//! at 1 thread, 4.26 -> 3.91 ms at 2 (medians of 8 interleaved runs).
//!
//! A graph that does not have exactly this shape (fp32 models, other
//! detectors) is left alone: [`rewrite`] returns `None`.

use crate::onnx_proto::{
    AttributeProto, ModelProto, NodeProto, TensorProto, ValueInfoProto, DT_FLOAT, DT_INT8, DT_UINT8,
};
use prost::Message;

/// Side of a pixel block.
pub const BLOCK: usize = 2;
/// Colour channels per pixel.
const COLOURS: usize = 3;
/// Channels of the byte input: one pixel block.
pub const BLOCK_CHANNELS: usize = BLOCK * BLOCK * COLOURS;

/// The graph of `model` rewritten to take bytes in 2 x 2 blocks on the input
/// named `input`, or `None` when the graph is not a float input quantised
/// with scale 1 and zero point 0 straight into a 3 x 3, stride-2, padding-1
/// int8 convolution over 3 channels.
pub fn rewrite(model: &[u8], input: &str) -> Option<Vec<u8>> {
    let mut model = ModelProto::decode(model).ok()?;
    let graph = model.graph.as_mut()?;
    let (elem_type, dims) = graph
        .input
        .iter()
        .find(|v| v.name == input)?
        .tensor_dims()?;
    if elem_type != DT_FLOAT || dims.len() != 4 || dims[1] != Some(COLOURS as i64) {
        return None;
    }
    let only_consumer = |nodes: &[NodeProto], name: &str, op: &str| -> Option<usize> {
        let mut found = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.input.iter().any(|i| i == name));
        let (index, node) = found.next()?;
        (found.next().is_none() && node.op_type == op).then_some(index)
    };
    let nodes = &graph.node;
    let quantize = only_consumer(nodes, input, "QuantizeLinear")?;
    let quantized = nodes[quantize].output.first()?.clone();
    let dequantize = only_consumer(nodes, &quantized, "DequantizeLinear")?;
    let conv = only_consumer(nodes, nodes[dequantize].output.first()?, "Conv")?;
    if graph.output.iter().any(|o| o.name == quantized) {
        return None;
    }
    let initializer = |name: &str| graph.initializer.iter().position(|t| t.name == name);
    // Quantising with scale 1 and zero point 0 gives back the bytes.
    let q = &nodes[quantize];
    let scale = graph.initializer[initializer(q.input.get(1)?)?].to_f32()?;
    let zero_point = &graph.initializer[initializer(q.input.get(2)?)?];
    if scale != [1.0] || !is_uint8_zero(zero_point) {
        return None;
    }
    // Dequantising per tensor reads blocks as it read planes.
    let dq_scale = &graph.initializer[initializer(nodes[dequantize].input.get(1)?)?];
    if dq_scale.dims.iter().product::<i64>() != 1 {
        return None;
    }
    if !is_stem_convolution(&nodes[conv]) {
        return None;
    }
    let weights_dq = nodes
        .iter()
        .position(|n| n.output.first() == nodes[conv].input.get(1))?;
    if nodes[weights_dq].op_type != "DequantizeLinear" {
        return None;
    }
    let weights = initializer(nodes[weights_dq].input.first()?)?;
    let blocked = weights_over_blocks(&graph.initializer[weights])?;
    let stale = [
        quantized.clone(),
        nodes[dequantize].output[0].clone(),
        nodes[weights_dq].output[0].clone(),
    ];

    // The bytes, NHWC blocks, transposed to the NCHW the DequantizeLinear
    // reads (ONNX Runtime's layout pass cancels this transpose against the
    // one it puts before its NHWC int8 convolution).
    let as_nchw = format!("{input}_blocks_nchw");
    graph.initializer[weights] = blocked;
    graph.node[dequantize].input[0] = as_nchw.clone();
    let stem = &mut graph.node[conv];
    stem.attribute
        .retain(|a| !matches!(a.name.as_str(), "kernel_shape" | "strides" | "pads"));
    stem.attribute.extend([
        AttributeProto::ints("kernel_shape", &[2, 2]),
        AttributeProto::ints("strides", &[1, 1]),
        AttributeProto::ints("pads", &[1, 1, 0, 0]),
    ]);
    graph.node[quantize] = NodeProto {
        input: vec![input.to_string()],
        output: vec![as_nchw],
        name: format!("{input}_blocks_to_nchw"),
        op_type: "Transpose".into(),
        attribute: vec![AttributeProto::ints("perm", &[0, 3, 1, 2])],
        ..Default::default()
    };
    graph.value_info.retain(|v| !stale.contains(&v.name));
    let slot = graph.input.iter().position(|v| v.name == input)?;
    graph.input[slot] = ValueInfoProto::tensor(
        input,
        DT_UINT8,
        &[None, None, None, Some(BLOCK_CHANNELS as i64)],
    );
    Some(model.encode_to_vec())
}

/// Whether `tensor` is a uint8 zero (a scalar or one value).
fn is_uint8_zero(tensor: &TensorProto) -> bool {
    tensor.data_type == DT_UINT8
        && tensor.dims.iter().product::<i64>() == 1
        && (tensor.raw_data == [0] || (tensor.raw_data.is_empty() && tensor.int32_data == [0]))
}

fn ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.ints.clone())
}

/// A 3 x 3 convolution with stride 2, padding 1 on every side, one group,
/// no dilation and explicit padding.
fn is_stem_convolution(node: &NodeProto) -> bool {
    let int = |name: &str, default: i64| {
        node.attribute
            .iter()
            .find(|a| a.name == name)
            .map_or(default, |a| a.i)
    };
    let auto_pad = node
        .attribute
        .iter()
        .find(|a| a.name == "auto_pad")
        .map_or(&b"NOTSET"[..], |a| a.s.as_slice());
    ints(node, "kernel_shape").as_deref() == Some(&[3, 3])
        && ints(node, "strides").as_deref() == Some(&[2, 2])
        && ints(node, "pads").as_deref() == Some(&[1, 1, 1, 1])
        && ints(node, "dilations").is_none_or(|d| d == [1, 1])
        && int("group", 1) == 1
        && auto_pad == b"NOTSET"
}

/// The int8 weights `[out, 3, 3, 3]` of the stride-2 stem as the weights
/// `[out, 12, 2, 2]` of the same convolution over 2 x 2 pixel blocks.
///
/// Output row `i` reads input rows `2i - 1`, `2i`, `2i + 1`: the second row
/// of block `i - 1` (block tap 0) and both rows of block `i` (block tap 1);
/// likewise for columns.
fn weights_over_blocks(weights: &TensorProto) -> Option<TensorProto> {
    let dims = &weights.dims;
    if weights.data_type != DT_INT8 || weights.data_location != 0 || dims.len() != 4 {
        return None;
    }
    if dims[1..] != [COLOURS as i64, 3, 3] || dims[0] <= 0 {
        return None;
    }
    let out = dims[0] as usize;
    let source = &weights.raw_data;
    if source.len() != out * COLOURS * 9 {
        return None;
    }
    // Kernel tap -> (block tap, row or column inside the block).
    const PLACE: [(usize, usize); 3] = [(0, 1), (1, 0), (1, 1)];
    let mut blocked = vec![0u8; out * BLOCK_CHANNELS * 4];
    for o in 0..out {
        for c in 0..COLOURS {
            for (dy, &(by, ry)) in PLACE.iter().enumerate() {
                for (dx, &(bx, rx)) in PLACE.iter().enumerate() {
                    let channel = (ry * BLOCK + rx) * COLOURS + c;
                    let to = ((o * BLOCK_CHANNELS + channel) * 2 + by) * 2 + bx;
                    blocked[to] = source[((o * COLOURS + c) * 3 + dy) * 3 + dx];
                }
            }
        }
    }
    Some(TensorProto {
        name: weights.name.clone(),
        dims: vec![out as i64, BLOCK_CHANNELS as i64, 2, 2],
        data_type: DT_INT8,
        raw_data: blocked,
        ..Default::default()
    })
}

/// Writes an interleaved RGB8 image (`width * height * 3` bytes) into the
/// byte input `blocks` (`[rows, columns, 12]` row-major, `columns` 2 x 2 blocks
/// a row), which must be zero where the image does not reach.
pub fn fill_blocks(rgb: &[u8], width: usize, blocks: &mut [u8], columns: usize) {
    let row_bytes = width * COLOURS;
    for (y, row) in rgb.chunks_exact(row_bytes).enumerate() {
        let start = (y / BLOCK) * columns * BLOCK_CHANNELS + (y % BLOCK) * BLOCK * COLOURS;
        let Some(out) = blocks.get_mut(start..) else {
            return;
        };
        // Two pixels of a row are 6 consecutive bytes of their block.
        for (pair, block) in row
            .chunks(BLOCK * COLOURS)
            .zip(out.chunks_mut(BLOCK_CHANNELS))
        {
            block[..pair.len()].copy_from_slice(pair);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_hold_each_pixel_where_space_to_depth_puts_it() {
        let (width, height, columns, rows) = (5usize, 3usize, 4usize, 2usize);
        let rgb: Vec<u8> = (0..width * height * 3)
            .map(|v| (v % 251) as u8 + 1)
            .collect();
        let mut blocks = vec![0u8; rows * columns * BLOCK_CHANNELS];
        fill_blocks(&rgb, width, &mut blocks, columns);
        for y in 0..rows * 2 {
            for x in 0..columns * 2 {
                for c in 0..3 {
                    let at = ((y / 2) * columns + x / 2) * BLOCK_CHANNELS
                        + ((y % 2) * 2 + x % 2) * 3
                        + c;
                    let expected = if x < width && y < height {
                        rgb[(y * width + x) * 3 + c]
                    } else {
                        0
                    };
                    assert_eq!(blocks[at], expected, "pixel ({x}, {y}) colour {c}");
                }
            }
        }
    }

    #[test]
    fn stem_weights_move_to_the_block_channels_they_read() {
        let values: Vec<u8> = (0..2 * 27).map(|v| v as u8 + 1).collect();
        let weights = TensorProto {
            name: "w".into(),
            dims: vec![2, 3, 3, 3],
            data_type: DT_INT8,
            raw_data: values.clone(),
            ..Default::default()
        };
        let blocked = weights_over_blocks(&weights).expect("int8 3x3x3 weights");
        assert_eq!(blocked.dims, [2, 12, 2, 2]);
        // Every source weight appears exactly once; the 7 other taps per
        // (out, colour) are zero.
        let mut seen: Vec<u8> = blocked
            .raw_data
            .iter()
            .copied()
            .filter(|&v| v != 0)
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, values);
        // Tap (dy, dx) = (1, 1), the centre, reads pixel (2i, 2j): block tap
        // (1, 1), block channel (0 * 2 + 0) * 3 + c.
        let at = |o: usize, ch: usize, by: usize, bx: usize| {
            blocked.raw_data[((o * 12 + ch) * 2 + by) * 2 + bx]
        };
        for o in 0..2 {
            for c in 0..3 {
                assert_eq!(at(o, c, 1, 1), values[((o * 3 + c) * 3 + 1) * 3 + 1]);
                // Tap (0, 0) reads pixel (2i - 1, 2j - 1): block (i - 1, j - 1), its (1, 1).
                assert_eq!(at(o, 9 + c, 0, 0), values[(o * 3 + c) * 9]);
                // Block (i - 1, j - 1) pixel (0, 0) is read by no tap.
                assert_eq!(at(o, c, 0, 0), 0);
            }
        }
    }
}
