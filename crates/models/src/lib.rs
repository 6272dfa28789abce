//! # convkit-models — LeNet-5, MNIST-format datasets and the `lenet` tool
//!
//! This crate will provide `LeNet5` (conv 6@5x5 → ReLU → avg-pool → conv 16@5x5 → ReLU →
//! avg-pool → 120 → 84 → 10, 61,706 parameters), readers for the IDX files of MNIST and
//! Fashion-MNIST, and the `lenet` command-line tool (train, eval, predict, info).
//!
//! The crate is a placeholder until its own issue lands; it builds on `convkit-nn`.
