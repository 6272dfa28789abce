//! `TensorProto` decoding: dims are checked and compared with the data actually present
//! before anything is allocated.

use convkit_tensor::Tensor;

use crate::error::{OnnxError, Result};
use crate::proto::{DATA_TYPE_FLOAT, DATA_TYPE_INT64, TensorProto};

/// The dims of a tensor, checked: non-negative, and a product that fits. Returns the dims
/// and the element count.
fn checked_dims(t: &TensorProto) -> Result<(Vec<usize>, usize)> {
    let bad = |msg: String| OnnxError::Tensor { name: t.name.clone(), msg };
    if t.data_location != 0 || !t.external_data.is_empty() {
        return Err(bad("external data is not supported".into()));
    }
    let mut numel = 1usize;
    let mut dims = Vec::with_capacity(t.dims.len().min(16));
    for &d in &t.dims {
        let d = usize::try_from(d).map_err(|_| bad(format!("negative dim in {:?}", t.dims)))?;
        numel = numel.checked_mul(d).ok_or_else(|| bad(format!("dims {:?} overflow", t.dims)))?;
        dims.push(d);
    }
    Ok((dims, numel))
}

/// A float tensor from its proto. The data length is compared with the dims before anything
/// is allocated, so the allocation is what the file holds.
pub(super) fn to_tensor(t: &TensorProto) -> Result<Tensor> {
    let bad = |msg: String| OnnxError::Tensor { name: t.name.clone(), msg };
    if t.data_type != DATA_TYPE_FLOAT {
        return Err(bad(format!("element type {} is not float32 (1)", t.data_type)));
    }
    let (dims, numel) = checked_dims(t)?;
    let data = if !t.raw_data.is_empty() {
        let want = numel.checked_mul(4).ok_or_else(|| bad(format!("dims {dims:?} overflow")))?;
        if t.raw_data.len() != want {
            return Err(bad(format!(
                "dims {dims:?} need {want} bytes of raw data, the file has {}",
                t.raw_data.len()
            )));
        }
        t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    } else {
        if t.float_data.len() != numel {
            return Err(bad(format!(
                "dims {dims:?} need {numel} floats, the file has {}",
                t.float_data.len()
            )));
        }
        t.float_data.clone()
    };
    Ok(Tensor::from_vec(&dims, data)?)
}

/// An integer tensor (int64, int32 or bool-like) as `i64`s, length checked against dims.
pub(super) fn to_ints(t: &TensorProto) -> Result<Vec<i64>> {
    let bad = |msg: String| OnnxError::Tensor { name: t.name.clone(), msg };
    let (_, numel) = checked_dims(t)?;
    let width = match t.data_type {
        DATA_TYPE_INT64 => 8,
        6 => 4,     // INT32
        9 | 2 => 1, // BOOL, UINT8
        other => return Err(bad(format!("element type {other} is not an integer type"))),
    };
    if !t.raw_data.is_empty() {
        let want = numel.checked_mul(width).ok_or_else(|| bad("dims overflow".into()))?;
        if t.raw_data.len() != want {
            return Err(bad(format!(
                "needs {want} bytes of raw data, the file has {}",
                t.raw_data.len()
            )));
        }
        return Ok(t
            .raw_data
            .chunks_exact(width)
            .map(|b| match b {
                &[a, b, c, d, e, f, g, h] => i64::from_le_bytes([a, b, c, d, e, f, g, h]),
                &[a, b, c, d] => i64::from(i32::from_le_bytes([a, b, c, d])),
                bytes => i64::from(bytes.first().copied().unwrap_or(0)),
            })
            .collect());
    }
    let data: Vec<i64> = if t.data_type == DATA_TYPE_INT64 {
        t.int64_data.clone()
    } else {
        t.int32_data.iter().map(|&v| i64::from(v)).collect()
    };
    if data.len() != numel {
        return Err(bad(format!("needs {numel} values, the file has {}", data.len())));
    }
    Ok(data)
}
