//! The internals this workspace's tests and benches reach (feature `testing`): each
//! algorithm's own entry points (and their explicit-SIMD-level twins), the GEMM, and the
//! selection rule's pieces. Not part of the stable API: use [`conv2d_forward`](crate::conv2d_forward)
//! and [`conv2d_backward`](crate::conv2d_backward) with a [`ConvAlgo`](crate::ConvAlgo).

pub use crate::algo::{backward_kernel, parse_env_algo, resolve_with};
pub use crate::direct::backward::{conv2d_backward_direct, conv2d_backward_direct_with};
pub use crate::direct::{conv2d_direct, conv2d_direct_with, direct_supports};
pub use crate::gemm::{
    MR, MatRef, NR, PackedA, PackedARef, SMALL_DIM, gemm_abt_dots, gemm_rows, kblock, packed_a_len,
    packed_a_position, packed_b_len, sgemm, sgemm_matrixmultiply, sgemm_packed_a,
    sgemm_packed_a_with, sgemm_packed_ab, sgemm_with,
};
pub use crate::im2col::{conv2d_backward_im2col, conv2d_im2col};
pub use crate::params::{WEIGHT_GRAD_PARTIALS, check_len};
/// Each algorithm's tolerance against the f64 reference, as convkit-tensor's
/// [`Tolerance`](convkit_tensor::testing::Tolerance).
pub mod tolerance {
    pub use crate::tolerance::{F32_SUM, WINOGRAD_F2, WINOGRAD_F4, for_sum};
}
pub use crate::winograd::{
    conv2d_input_grad_winograd, conv2d_weight_grad_winograd, conv2d_winograd, conv2d_winograd_with,
    winograd_supports,
};
