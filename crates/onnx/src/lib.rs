//! # convkit-onnx
#![allow(missing_docs)]
pub mod error;
pub mod export;
pub mod import;
pub mod proto;
pub use error::{OnnxError, Result};
pub use export::{ExportOptions, export, save};
pub use import::{import, load};
