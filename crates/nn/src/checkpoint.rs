//! Checkpoints: a model's parameters and buffers as safetensors, with PyTorch `state_dict`
//! names and layouts, so weights move between convkit and PyTorch in both directions.
//!
//! - Names are the dotted paths of [`Module::visit_params`] / [`Module::visit_buffers`]
//!   (`conv1.weight`, `fc3.bias`, `bn1.running_mean` …); layouts are PyTorch's.
//! - Free-form metadata (model name, epoch, optimizer …) goes into the safetensors header.
//! - Writes are atomic: a temporary file in the same directory, fsync, rename. A crash leaves
//!   the old checkpoint or the new one, never half of one.
//! - Strict loading checks everything before changing anything, and reports every missing
//!   key, unexpected key and shape mismatch in one error.
//! - Optimizer state goes to its own file ([`save_optimizer`]), so the model file stays a
//!   plain `state_dict` that `torch.load`-style tools read as is.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use convkit_tensor::{Tensor, load_safetensors_with_metadata, save_safetensors};

use crate::error::{NnError, Result};
use crate::module::{Module, named_buffers, named_params};
use crate::optim::OptimizerState;

/// Metadata stored in a checkpoint's header.
pub type Metadata = BTreeMap<String, String>;

/// The parameters and buffers of a module by name (shared, not copied).
pub fn state_dict(m: &dyn Module) -> BTreeMap<String, Tensor> {
    named_params(m).into_iter().chain(named_buffers(m)).map(|(name, p)| (name, p.value())).collect()
}

/// Loads named tensors into a module. With `strict`, every parameter and buffer must be
/// present and no other key may be; shapes must always match, and every value must be finite
/// (a NaN or infinity is an error naming the tensor, never a model that silently predicts
/// one class). Either every tensor is loaded or, on error, none is.
pub fn load_state_dict(
    m: &dyn Module,
    tensors: &BTreeMap<String, Tensor>,
    strict: bool,
    source: &str,
) -> Result<()> {
    let targets: Vec<_> = named_params(m).into_iter().chain(named_buffers(m)).collect();
    let mut problems = Vec::new();
    let mut updates = Vec::new();
    for (name, p) in &targets {
        match tensors.get(name) {
            None if strict => problems.push(format!("missing key {name} {:?}", p.dims())),
            None => {}
            Some(t) if t.dims() != p.dims().as_slice() => problems.push(format!(
                "shape mismatch for {name}: checkpoint {:?}, model {:?}",
                t.dims(),
                p.dims()
            )),
            Some(t) => match t.as_slice().iter().position(|v| !v.is_finite()) {
                Some(i) => problems.push(format!(
                    "{name} {:?} holds a non-finite value ({} at flat index {i})",
                    t.dims(),
                    t.as_slice()[i]
                )),
                None => updates.push((p, t.clone())),
            },
        }
    }
    if strict {
        for (name, t) in tensors {
            if !targets.iter().any(|(n, _)| n == name) {
                problems.push(format!("unexpected key {name} {:?}", t.dims()));
            }
        }
    }
    if !problems.is_empty() {
        return Err(NnError::Checkpoint { path: source.to_owned(), problems });
    }
    for (p, t) in updates {
        p.set_value(t)?;
    }
    Ok(())
}

/// Saves a module's `state_dict` with metadata, atomically.
pub fn save(path: impl AsRef<Path>, m: &dyn Module, metadata: &Metadata) -> Result<()> {
    let sd = state_dict(m);
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    save_safetensors(path.as_ref(), &sd, Some(meta))?;
    Ok(())
}

/// Loads a checkpoint into a module (see [`load_state_dict`]) and returns its metadata.
/// A file that cannot be read or parsed gives a [`NnError::Checkpoint`] naming it.
pub fn load(path: impl AsRef<Path>, m: &dyn Module, strict: bool) -> Result<Metadata> {
    let (tensors, meta) = read(path.as_ref())?;
    load_state_dict(m, &tensors, strict, &path.as_ref().display().to_string())?;
    Ok(meta)
}

/// Reads a checkpoint's tensors and metadata without a model.
pub fn read(path: &Path) -> Result<(BTreeMap<String, Tensor>, Metadata)> {
    let (tensors, meta) = load_safetensors_with_metadata(path).map_err(|e| {
        NnError::Checkpoint { path: path.display().to_string(), problems: vec![e.to_string()] }
    })?;
    Ok((tensors, meta.into_iter().collect()))
}

/// A metadata value for an `f32`: the shortest decimal that reads back to the same bits
/// (`0.002`, `1e-8`, `inf`; Rust's `Debug` form, which always has a `.` or an `e` when finite).
pub fn format_f32(x: f32) -> String {
    format!("{x:?}")
}

/// A metadata value for an `f64`, as [`format_f32`].
pub fn format_f64(x: f64) -> String {
    format!("{x:?}")
}

/// Reads a metadata `f32` written by [`format_f32`], or by earlier versions as the 8 hex
/// digits of its bits (`3b03126f`). A value of exactly 8 hex digits is read as bits: no
/// decimal [`format_f32`] writes has that form.
pub fn parse_f32(s: &str) -> Option<f32> {
    if s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return u32::from_str_radix(s, 16).ok().map(f32::from_bits);
    }
    s.parse().ok()
}

/// Reads a metadata `f64` written by [`format_f64`], or by earlier versions as the 16 hex
/// digits of its bits.
pub fn parse_f64(s: &str) -> Option<f64> {
    if s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return u64::from_str_radix(s, 16).ok().map(f64::from_bits);
    }
    s.parse().ok()
}

/// Saves an optimizer's state (buffers as tensors, numbers in the header as decimals that
/// read back bit for bit).
pub fn save_optimizer(
    path: impl AsRef<Path>,
    state: &OptimizerState,
    metadata: &Metadata,
) -> Result<()> {
    let mut meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    for (k, v) in &state.scalars {
        meta.insert(format!("scalar.{k}"), format_f64(*v));
    }
    save_safetensors(path.as_ref(), &state.tensors, Some(meta))?;
    Ok(())
}

/// Reads an optimizer state written by [`save_optimizer`], with the other metadata.
pub fn load_optimizer(path: impl AsRef<Path>) -> Result<(OptimizerState, Metadata)> {
    let path = path.as_ref();
    let (tensors, meta) = read(path)?;
    let mut state = OptimizerState { tensors, scalars: BTreeMap::new() };
    let mut rest = Metadata::new();
    for (k, v) in meta {
        match k.strip_prefix("scalar.") {
            Some(name) => {
                let x = parse_f64(&v).ok_or_else(|| NnError::Checkpoint {
                    path: path.display().to_string(),
                    problems: vec![format!("metadata {k} = {v:?} is not a number")],
                })?;
                state.scalars.insert(name.to_owned(), x);
            }
            None => {
                rest.insert(k, v);
            }
        }
    }
    Ok((state, rest))
}
