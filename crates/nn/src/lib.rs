//! # convkit-nn — layers, losses, optimizers and checkpoints
//!
//! This crate will provide the layer API a PyTorch user expects: a `Module` trait, `Conv2d`,
//! `Linear`, pooling, activations, `BatchNorm2d`, `Sequential`; PyTorch-default initialization;
//! cross-entropy, NLL and MSE losses; SGD, Adam and AdamW with learning-rate schedules; and
//! safetensors checkpoints with PyTorch `state_dict` names, so weights move between the two.
//!
//! The crate is a placeholder until its own issue lands; it builds on `convkit-autograd`.
