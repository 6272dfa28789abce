//! The shapes the packed kernels share: the micro-tile ([`MR`] × [`NR`]), the depth of the
//! packed blocks ([`kblock`]), the B panels of one block ([`BPanels`]) and where a block's
//! tiles land in `C` ([`Dest`]).
//!
//! A leaf: the packing loops (`pack.rs`), the 8-lane driver (`packed.rs`) and the AVX-512
//! kernel (`wide.rs`) all read it, and it reads none of them, so the imports between the three
//! point one way.

use crate::simd::LANES;

/// Rows of a micro-tile (elements of A broadcast per step).
pub const MR: usize = 6;
/// Columns of a micro-tile (two 8-lane vectors of B per step).
pub const NR: usize = 2 * LANES;
/// Largest depth of a packed block: a 6x256 A panel (6 KiB) and a 256x16 B panel (16 KiB) stay
/// in L1.
const KC: usize = 256;

/// The depth of the blocks of a product of depth `k` (and of the packed layouts): as even as
/// possible and at most `KC` = 256 (depth 576 runs three blocks of 192, not 256 + 256 + 64: a short
/// block costs a full pass over `C`). Every block but the last has exactly this depth.
pub fn kblock(k: usize) -> usize {
    if k == 0 { KC } else { k.div_ceil(k.div_ceil(KC)) }
}

/// The B panels of one depth block: panel `pj` starts at `pj · stride + offset` of `data` and
/// holds `kcb` steps of 16 floats.
#[derive(Clone, Copy)]
pub(super) struct BPanels<'a> {
    pub(super) data: &'a [f32],
    pub(super) stride: usize,
    pub(super) offset: usize,
    pub(super) count: usize,
    pub(super) kcb: usize,
}

impl<'a> BPanels<'a> {
    /// Panel `pj`.
    #[inline(always)]
    pub(super) fn panel(&self, pj: usize) -> &'a [f32] {
        &self.data[pj * self.stride + self.offset..][..self.kcb * NR]
    }
}

/// One product of a depth block of a sum `C = Σ_q A_q · B_q`: the A panels (`MR` rows of
/// `kcb` steps each, one after another) and the B panels it multiplies.
#[derive(Clone, Copy)]
pub(super) struct Piece<'a> {
    pub(super) a: &'a [f32],
    pub(super) b: BPanels<'a>,
}

/// Most products [`Piece`]s of one sum: the stride-2 Winograd variant sums up to four.
pub const MAX_PIECES: usize = 4;

/// Where products land in `C` and how they are combined with it: the first row and column
/// `(i, j)` of a block of tiles, or of one micro-tile ([`Dest::at`]); the size `m × n` of `C`,
/// which clips the tiles at its edges; and `C ← alpha · product + bias + beta · C`, `C`
/// row-major with row stride `ldc`, `bias` (when given) one value per row of `C`, added by the
/// first depth block only.
#[derive(Clone, Copy)]
pub(super) struct Dest<'a> {
    pub(super) i: usize,
    pub(super) j: usize,
    pub(super) m: usize,
    pub(super) n: usize,
    pub(super) alpha: f32,
    pub(super) beta: f32,
    pub(super) bias: Option<&'a [f32]>,
    pub(super) ldc: usize,
}

impl<'a> Dest<'a> {
    /// The micro-tile at row `i`, column `j` of `C`.
    #[inline(always)]
    pub(super) fn at(self, i: usize, j: usize) -> Dest<'a> {
        Dest { i, j, ..self }
    }

    /// The bias of row `r` of the micro-tile (`None` without a bias).
    #[inline(always)]
    pub(super) fn row_bias(&self, r: usize) -> Option<f32> {
        self.bias.map(|b| b[self.i + r])
    }

    /// Rows of the micro-tile here: [`MR`], fewer at the bottom edge of `C`.
    #[inline(always)]
    pub(super) fn rows(&self) -> usize {
        MR.min(self.m - self.i)
    }

    /// Columns of a tile `width` wide here: `width`, fewer at the right edge of `C`.
    #[inline(always)]
    pub(super) fn cols(&self, width: usize) -> usize {
        width.min(self.n - self.j)
    }
}

/// Evaluates `$body` with the constant `$r` set to `rows`, the rows of `C` an A panel holds
/// (1 to [`MR`]; larger counts give [`MR`]). The last panel of a product whose row count is not
/// a multiple of 6 holds padding rows (128 rows are 21 panels and 2 rows), and the micro-kernels,
/// generic over the rows they compute, skip them: `with_rows!(t.rows(), R => micro::<R>(..))`.
macro_rules! with_rows {
    ($rows:expr, $r:ident => $body:expr) => {
        match $rows {
            1 => {
                const $r: usize = 1;
                $body
            }
            2 => {
                const $r: usize = 2;
                $body
            }
            3 => {
                const $r: usize = 3;
                $body
            }
            4 => {
                const $r: usize = 4;
                $body
            }
            5 => {
                const $r: usize = 5;
                $body
            }
            _ => {
                const $r: usize = $crate::gemm::MR;
                $body
            }
        }
    };
}
pub(super) use with_rows;
