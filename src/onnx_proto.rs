//! The subset of `onnx.proto` (ONNX IR 10) that the gradient transform
//! ([`crate::saliency`]) and the detector's byte-input rewrite
//! ([`crate::detect::byte_input`]) read and write, as hand-written `prost`
//! messages.
//!
//! Field tags follow `onnx/onnx.proto`. Fields not declared here (training
//! info, sparse initializers, local functions, device configurations) are
//! dropped on decode; the transform refuses a model whose graph would need
//! them (see `saliency::transform`). Proto2 `optional` scalars are declared as
//! plain fields: ONNX readers treat an absent scalar as its default, so
//! omitting zeros on encode round-trips.

#![allow(missing_docs)]

/// `TensorProto.DataType.FLOAT`.
pub const DT_FLOAT: i32 = 1;
/// `TensorProto.DataType.UINT8`.
pub const DT_UINT8: i32 = 2;
/// `TensorProto.DataType.INT8`.
pub const DT_INT8: i32 = 3;
/// `TensorProto.DataType.INT64`.
pub const DT_INT64: i32 = 7;
/// `TensorProto.DataType.BOOL`.
pub const DT_BOOL: i32 = 9;

/// `AttributeProto.AttributeType` values.
pub mod attr_type {
    pub const FLOAT: i32 = 1;
    pub const INT: i32 = 2;
    pub const STRING: i32 = 3;
    pub const TENSOR: i32 = 4;
    pub const FLOATS: i32 = 6;
    pub const INTS: i32 = 7;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(string, tag = "4")]
    pub domain: String,
    #[prost(int64, tag = "5")]
    pub model_version: i64,
    #[prost(string, tag = "6")]
    pub doc_string: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(string, tag = "10")]
    pub doc_string: String,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "13")]
    pub value_info: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    #[prost(string, tag = "6")]
    pub doc_string: String,
    #[prost(string, tag = "7")]
    pub domain: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(float, tag = "2")]
    pub f: f32,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(bytes = "vec", tag = "4")]
    pub s: Vec<u8>,
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    #[prost(float, repeated, tag = "7")]
    pub floats: Vec<f32>,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    #[prost(bytes = "vec", repeated, tag = "9")]
    pub strings: Vec<Vec<u8>>,
    #[prost(string, tag = "13")]
    pub doc_string: String,
    #[prost(int32, tag = "20")]
    pub r#type: i32,
    #[prost(string, tag = "21")]
    pub ref_attr_name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    #[prost(int32, repeated, tag = "5")]
    pub int32_data: Vec<i32>,
    #[prost(bytes = "vec", repeated, tag = "6")]
    pub string_data: Vec<Vec<u8>>,
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    #[prost(double, repeated, tag = "10")]
    pub double_data: Vec<f64>,
    #[prost(uint64, repeated, tag = "11")]
    pub uint64_data: Vec<u64>,
    #[prost(string, tag = "12")]
    pub doc_string: String,
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
    #[prost(string, tag = "3")]
    pub doc_string: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    #[prost(oneof = "type_proto::Value", tags = "1")]
    pub value: Option<type_proto::Value>,
    #[prost(string, tag = "6")]
    pub denotation: String,
}

/// Nested messages of [`TypeProto`].
pub mod type_proto {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(message, tag = "1")]
        TensorType(Tensor),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tensor {
        #[prost(int32, tag = "1")]
        pub elem_type: i32,
        #[prost(message, optional, tag = "2")]
        pub shape: Option<super::TensorShapeProto>,
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<tensor_shape_proto::Dimension>,
}

/// Nested messages of [`TensorShapeProto`].
pub mod tensor_shape_proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        #[prost(oneof = "dimension::Value", tags = "1, 2")]
        pub value: Option<dimension::Value>,
        #[prost(string, tag = "3")]
        pub denotation: String,
    }

    /// The oneof of [`Dimension`].
    pub mod dimension {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            #[prost(int64, tag = "1")]
            DimValue(i64),
            #[prost(string, tag = "2")]
            DimParam(String),
        }
    }
}

impl TensorProto {
    /// The tensor's values as `f32`, whichever field stores them.
    /// `None` for other element types or external data.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        if self.data_type != DT_FLOAT || self.data_location != 0 {
            return None;
        }
        if !self.raw_data.is_empty() {
            if !self.raw_data.len().is_multiple_of(4) {
                return None;
            }
            return Some(
                self.raw_data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            );
        }
        Some(self.float_data.clone())
    }

    /// The tensor's values as `i64` (from INT64 or INT32 storage).
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        if self.data_location != 0 {
            return None;
        }
        match self.data_type {
            DT_INT64 => {
                if !self.raw_data.is_empty() {
                    if !self.raw_data.len().is_multiple_of(8) {
                        return None;
                    }
                    let mut out = Vec::with_capacity(self.raw_data.len() / 8);
                    for c in self.raw_data.chunks_exact(8) {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(c);
                        out.push(i64::from_le_bytes(b));
                    }
                    return Some(out);
                }
                Some(self.int64_data.clone())
            }
            6 => {
                if !self.raw_data.is_empty() {
                    if !self.raw_data.len().is_multiple_of(4) {
                        return None;
                    }
                    return Some(
                        self.raw_data
                            .chunks_exact(4)
                            .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                            .collect(),
                    );
                }
                Some(self.int32_data.iter().map(|&v| i64::from(v)).collect())
            }
            _ => None,
        }
    }

    /// A float tensor named `name`.
    pub fn from_f32(name: &str, dims: &[i64], values: &[f32]) -> Self {
        TensorProto {
            name: name.to_string(),
            dims: dims.to_vec(),
            data_type: DT_FLOAT,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        }
    }

    /// An int64 tensor named `name`.
    pub fn from_i64(name: &str, dims: &[i64], values: &[i64]) -> Self {
        TensorProto {
            name: name.to_string(),
            dims: dims.to_vec(),
            data_type: DT_INT64,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        }
    }
}

impl AttributeProto {
    /// An INT attribute.
    pub fn int(name: &str, value: i64) -> Self {
        AttributeProto {
            name: name.to_string(),
            i: value,
            r#type: attr_type::INT,
            ..Default::default()
        }
    }

    /// An INTS attribute.
    pub fn ints(name: &str, values: &[i64]) -> Self {
        AttributeProto {
            name: name.to_string(),
            ints: values.to_vec(),
            r#type: attr_type::INTS,
            ..Default::default()
        }
    }

    /// A FLOAT attribute.
    pub fn float(name: &str, value: f32) -> Self {
        AttributeProto {
            name: name.to_string(),
            f: value,
            r#type: attr_type::FLOAT,
            ..Default::default()
        }
    }

    /// A STRING attribute.
    pub fn string(name: &str, value: &str) -> Self {
        AttributeProto {
            name: name.to_string(),
            s: value.as_bytes().to_vec(),
            r#type: attr_type::STRING,
            ..Default::default()
        }
    }

    /// A TENSOR attribute.
    pub fn tensor(name: &str, value: TensorProto) -> Self {
        AttributeProto {
            name: name.to_string(),
            t: Some(value),
            r#type: attr_type::TENSOR,
            ..Default::default()
        }
    }
}

impl ValueInfoProto {
    /// A tensor value info; `None` dimensions are symbolic (named `N` when first).
    pub fn tensor(name: &str, elem_type: i32, dims: &[Option<i64>]) -> Self {
        use tensor_shape_proto::{dimension::Value as D, Dimension};
        let dim = dims
            .iter()
            .enumerate()
            .map(|(i, d)| Dimension {
                value: Some(match d {
                    Some(v) => D::DimValue(*v),
                    None => D::DimParam(if i == 0 {
                        "N".to_string()
                    } else {
                        format!("d{i}")
                    }),
                }),
                denotation: String::new(),
            })
            .collect();
        ValueInfoProto {
            name: name.to_string(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type,
                    shape: Some(TensorShapeProto { dim }),
                })),
                denotation: String::new(),
            }),
            doc_string: String::new(),
        }
    }

    /// Element type and dimensions (`None` for symbolic or unknown), if this is a tensor.
    pub fn tensor_dims(&self) -> Option<(i32, Vec<Option<i64>>)> {
        use tensor_shape_proto::dimension::Value as D;
        let Some(type_proto::Value::TensorType(t)) = self.r#type.as_ref()?.value.as_ref() else {
            return None;
        };
        let dims = t
            .shape
            .as_ref()?
            .dim
            .iter()
            .map(|d| match d.value {
                Some(D::DimValue(v)) if v > 0 => Some(v),
                _ => None,
            })
            .collect();
        Some((t.elem_type, dims))
    }
}
