//! # convkit-autograd — reverse-mode automatic differentiation
//!
//! This crate will hold the tape that records operations on [`convkit_tensor`] tensors and
//! [`convkit_conv`] convolutions and replays them backwards to compute gradients, together with
//! a finite-difference gradient checker.
//!
//! ## Layout (planned)
//! - `tape`: the graph of recorded operations and `backward()`.
//! - `ops`: one backward rule per differentiable operation.
//! - `check`: `check_gradients`, central differences in f64 against the analytic gradient.
//!
//! The crate is a placeholder until its own issue lands; it depends only on the crates below it
//! (`convkit-conv`, `convkit-tensor`).
