//! Run-time SIMD selection for the fast kernels.
//!
//! # Model
//!
//! Kernels are written once, as `#[inline(always)]` bodies generic over a [`Simd`] type: an
//! instruction set represented by a zero-sized *token*. The token carries the proof that the
//! CPU supports its instructions, so its methods are safe to call; the only way to obtain the
//! AVX2 token is [`Avx2Fma::new`], which checks the CPU. Each kernel then has two entry points
//! that differ only by the type parameter:
//!
//! - a `#[target_feature(enable = "avx2,fma")]` wrapper that calls the body with [`Avx2Fma`],
//!   so the whole body (and every intrinsic it uses) is compiled for AVX2+FMA;
//! - a `#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]` wrapper that calls it with
//!   [`Avx512`]: the same 8-lane operations with 32 registers, and [`Simd::avx512`] returns the
//!   token so that a body can branch to 16-lane kernels (the GEMM micro-kernel does);
//! - a plain function that calls the body with [`Fallback`], whose vectors are `[f32; 8]`
//!   arrays that the compiler turns into whatever the baseline target offers (SSE2 on x86-64).
//!
//! The arithmetic lives in [`Lanes`], which every level implements for its 8-lane vectors.
//! [`Simd::wide`] gives the widest vectors of a level as another [`Lanes`]: [`Avx512Wide`]
//! (16 lanes of `__m512`) at AVX-512, the level itself elsewhere. Element-wise bodies written
//! over `L: Lanes` (the Winograd transforms) therefore run 16 lanes at a time at AVX-512 and
//! 8 elsewhere, with [`Simd::join`] and [`Simd::split`] converting at the edges.
//!
//! # Detection
//!
//! [`active`] runs one detection ladder the first time it is called and caches the answer in
//! a [`OnceLock`]: the best of [`SimdLevel::ALL`] that the CPU runs (`is_x86_feature_detected!`;
//! AVX-512 needs F and VL besides AVX2 and FMA), capped by the environment variable
//! `CONVKIT_SIMD`: `avx512`, `avx2`, or `off` (also `0`, `false`) for the portable fallback.
//! Tests and benchmarks can name a level explicitly (`conv2d_direct_with(level, ..)`); asking
//! for a level the CPU lacks is an error, never undefined behaviour.
//!
//! # Rounding across levels
//!
//! Every level adds each output's products in the same order with fused multiply-adds, so the
//! AVX2 and AVX-512 levels give bit-identical results; the fallback uses `f32::mul_add`, which
//! is also fused, and matches them except where a kernel documents otherwise. Within a level
//! results never depend on the number of threads.

use std::sync::OnceLock;

mod avx2;
mod avx512;
mod fallback;

pub use avx2::Avx2Fma;
#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::transpose16;
pub use avx512::{Avx512, Avx512Wide};
pub use fallback::Fallback;

/// Number of `f32` lanes in one vector of every [`Simd`] implementation.
pub const LANES: usize = 8;

/// Sum of `v` in f64, in a fixed order: eight running sums (element `i` goes to sum `i mod 8`)
/// added at the end. Independent sums let the compiler vectorize the additions; a single
/// running f64 sum is bound by the latency of one addition per element. Used for bias
/// gradients and for the lanes of batch normalization's partial sums.
pub(crate) fn sum_f64(v: &[f32]) -> f64 {
    let mut acc = [0f64; LANES];
    let mut it = v.chunks_exact(LANES);
    for ch in &mut it {
        for (a, &x) in acc.iter_mut().zip(ch) {
            *a += f64::from(x);
        }
    }
    for (a, &x) in acc.iter_mut().zip(it.remainder()) {
        *a += f64::from(x);
    }
    acc.iter().sum()
}

/// `out[c] += sum_f64(v[c·plane..][..plane])` for every `c` (`v` holds `out.len()` planes),
/// with the bits of [`sum_f64`]: four planes at a time (then two, then one), whose running
/// sums are independent, so the additions of one plane do not wait on each other's latency.
/// Inlined into the kernels, so that it runs with their instruction set.
#[inline(always)]
pub(crate) fn add_plane_sums_f64(v: &[f32], plane: usize, out: &mut [f64]) {
    assert_eq!(v.len(), plane * out.len(), "add_plane_sums_f64: lengths");
    if plane == 0 {
        return;
    }
    let whole = plane - plane % LANES;
    /// `a[l] += x[l]` in f64, for the eight lanes.
    #[inline(always)]
    fn add8(a: &mut [f64; LANES], x: &[f32]) {
        let x: &[f32; LANES] = x.try_into().expect("eight floats");
        for (a, &x) in a.iter_mut().zip(x) {
            *a += f64::from(x);
        }
    }
    /// The end of [`sum_f64`] for one plane: its remainder, then the lanes' total.
    #[inline(always)]
    fn finish(mut a: [f64; LANES], rest: &[f32]) -> f64 {
        for (a, &x) in a.iter_mut().zip(rest) {
            *a += f64::from(x);
        }
        a.iter().sum()
    }
    // The planes `$k` of a block each get their own local accumulators (registers; an array
    // of them indexed in a loop stays in memory).
    macro_rules! block {
        ($c:expr, $($k:literal $a:ident),+) => {{
            $(let mut $a = [0f64; LANES];)+
            for j in (0..whole).step_by(LANES) {
                $(add8(&mut $a, &v[($c + $k) * plane + j..][..LANES]);)+
            }
            $(out[$c + $k] += finish($a, &v[($c + $k) * plane + whole..($c + $k + 1) * plane]);)+
        }};
    }
    let mut c = 0;
    while c + 4 <= out.len() {
        block!(c, 0 a0, 1 a1, 2 a2, 3 a3);
        c += 4;
    }
    if c + 2 <= out.len() {
        block!(c, 0 a0, 1 a1);
        c += 2;
    }
    if c < out.len() {
        block!(c, 0 a0);
    }
}

/// The arithmetic of one vector width: what a kernel body written over a width needs. Every
/// [`Simd`] level is one (8 lanes); [`Simd::Wide`] names the widest of its level (16 lanes at
/// AVX-512), so that element-wise work (the Winograd transforms) is written once and runs on
/// either width.
pub trait Lanes: Copy {
    /// A vector of [`Lanes::N`] `f32`s.
    type V: Copy;
    /// Lanes per vector.
    const N: usize;
    /// All lanes zero.
    fn zero(self) -> Self::V;
    /// All lanes `x`.
    fn splat(self, x: f32) -> Self::V;
    /// Loads the first [`Lanes::N`] elements of `s` (panics if `s` is shorter: a kernel bug).
    fn load(self, s: &[f32]) -> Self::V;
    /// Stores `v` into the first [`Lanes::N`] elements of `s` (panics if `s` is shorter).
    fn store(self, v: Self::V, s: &mut [f32]);
    /// Loads [`Lanes::N`] consecutive floats from `p`, without bounds checks (for the hottest
    /// loops).
    ///
    /// # Safety
    /// `p .. p + N` must be readable `f32`s of one allocation.
    unsafe fn load_ptr(self, p: *const f32) -> Self::V;
    /// `a + b`.
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a − b`.
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a · b`.
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a · b + c` (fused on FMA hardware).
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// The lanes of `a` and `b` alternated, `[a0, b0, a1, b1, …]`, as two vectors (the first
    /// [`Lanes::N`] of the sequence, then the rest).
    fn interleave(self, a: Self::V, b: Self::V) -> (Self::V, Self::V);
    /// Stores lanes `start..start + len` of the `2·N` lanes of `a` followed by `b` into
    /// `dst[..len]`, and nothing else (`len ≤ N`, `start + len ≤ 2·N`; panics otherwise, or
    /// when `dst` is shorter). Through a buffer here; a register permute and a masked store at
    /// AVX-512.
    #[inline(always)]
    fn store_window(self, a: Self::V, b: Self::V, start: usize, len: usize, dst: &mut [f32]) {
        let n = Self::N;
        assert!(n <= 2 * LANES && len <= n && start + len <= 2 * n);
        let mut buf = [0f32; 4 * LANES];
        self.store(a, &mut buf);
        self.store(b, &mut buf[n..]);
        dst[..len].copy_from_slice(&buf[start..start + len]);
    }
    /// Row `r` of the patches of `runs` in the planes from `src[at..]`: lane `l` of `out[q]`
    /// is float `q` of the row of lane `l`'s patch, zero where that lies outside the plane and
    /// in lanes outside the runs (or past [`Lanes::N`]). Float by float here; at AVX-512 by
    /// masked loads and two-source permutes ([`StepRuns`] says how). Panics when a plane read
    /// would leave `src`.
    #[inline(always)]
    fn gather_runs<const A: usize>(
        self,
        runs: &StepRuns,
        src: &[f32],
        at: usize,
        r: usize,
        out: &mut [Self::V; A],
    ) {
        assert!(A == runs.width && at + runs.end <= src.len());
        let mut cols = [[0f32; 2 * LANES]; A];
        for j in 0..runs.n {
            let Some(row) = runs.row(j, r) else { continue };
            let (l0, l1) = runs.lanes[j];
            for l in l0..l1.min(Self::N) {
                for (q, col) in cols.iter_mut().enumerate() {
                    let x = runs.x[j] + (runs.step * (l - l0) + q) as isize;
                    if (0..runs.w as isize).contains(&x) {
                        col[l] = src[at + row + x as usize];
                    }
                }
            }
        }
        for (o, col) in out.iter_mut().zip(&cols) {
            *o = self.load(col);
        }
    }
}

/// Bits `i` of the 16 with `lo ≤ 16k + i < hi`.
fn span_mask(lo: isize, hi: isize, k: usize) -> u16 {
    let base = 16 * k as isize;
    let (a, b) = ((lo - base).clamp(0, 16), (hi - base).clamp(0, 16));
    if a >= b { 0 } else { (((1u32 << b) - 1) & !((1u32 << a) - 1)) as u16 }
}

/// Where the patches of a vector of (at most 16) tiles lie in `h × w` planes, for
/// [`Lanes::gather_runs`]: the lanes as runs of tiles side by side, within a run each patch
/// starting `step` floats right of the one before, every patch `width` floats wide and its
/// rows `dh` plane rows apart. Patches may reach past the plane's edges, which read as zeros:
/// a convolution's padding, with no padded copy of the input. Built once for a group of
/// tiles, then gathered for every channel and patch row.
///
/// At AVX-512 a run of lanes `l0..l1` is `step` masked loads of the span of its patches'
/// first `step` floats (lane `l`'s at float `step · l` of the span) and `step` more of the
/// span from float `step` on, merged into the same vectors run by run; two-source permutes
/// split them into the columns. The masks keep exactly the floats of the patches that lie in
/// the plane, so a gather reads nothing else.
#[derive(Debug, Clone, Copy)]
pub struct StepRuns {
    step: usize,
    width: usize,
    /// Plane width and the rows between patch rows.
    w: usize,
    h: usize,
    dh: usize,
    /// Runs in use.
    n: usize,
    /// Lanes `l0..l1` of each run.
    lanes: [(usize, usize); Self::MAX_RUNS],
    /// Each run's plane (its offset) and the plane row and column of its first patch's
    /// top-left float.
    plane: [usize; Self::MAX_RUNS],
    y: [isize; Self::MAX_RUNS],
    x: [isize; Self::MAX_RUNS],
    /// The masks of each run: floats `16k..16k + 16` of the span of its patches' first
    /// `step` floats (`k < step`), then of the span from float `step`.
    masks: [[u16; 8]; Self::MAX_RUNS],
    /// One past the end of the farthest plane.
    end: usize,
}

impl StepRuns {
    /// More runs than this gather the patches one by one instead.
    pub const MAX_RUNS: usize = 4;

    /// The runs of the patches whose top-left floats are `starts` (one per lane, at most 16,
    /// in lane order): `(plane offset, row, column)`, the row and column counted from the
    /// plane's top-left and possibly outside it. Lanes are side by side where they share the
    /// plane and row and one starts `step` floats after the one before.
    ///
    /// `None` where the gather does not apply: a `step` other than 2 or 4, `width` not in
    /// `step + 1 ..= 2 · step`, more than 16 lanes or more than [`StepRuns::MAX_RUNS`] runs.
    pub fn new(
        starts: &[(usize, isize, isize)],
        step: usize,
        width: usize,
        (h, w): (usize, usize),
        dh: usize,
    ) -> Option<StepRuns> {
        let fits = matches!(step, 2 | 4) && (step + 1..=2 * step).contains(&width);
        if !fits || starts.is_empty() || starts.len() > 2 * LANES {
            return None;
        }
        // Bit `i` set where float `i` of a tail chunk is one of its lane's last
        // `width − step` (the same for every chunk and run: 16 is a multiple of `step`).
        let pattern = (0..16).filter(|i| i % step < width - step).fold(0u16, |m, i| m | 1 << i);
        let mut runs = StepRuns {
            step,
            width,
            w,
            h,
            dh,
            n: 0,
            lanes: [(0, 0); Self::MAX_RUNS],
            plane: [0; Self::MAX_RUNS],
            y: [0; Self::MAX_RUNS],
            x: [0; Self::MAX_RUNS],
            masks: [[0; 8]; Self::MAX_RUNS],
            end: 0,
        };
        let mut l0 = 0;
        for l in 1..=starts.len() {
            let (a, b) = (starts[l - 1], starts.get(l));
            if b.is_some_and(|&b| b == (a.0, a.1, a.2 + step as isize)) {
                continue;
            }
            if runs.n == Self::MAX_RUNS {
                return None;
            }
            let j = runs.n;
            let (plane, y, x) = starts[l0];
            (runs.lanes[j], runs.plane[j], runs.y[j], runs.x[j]) = ((l0, l), plane, y, x);
            // Float `f` of a span is column `f − step · l0 + x` (head) or `step` more (tail)
            // of lane `f / step`; the tail keeps the first `width − step` of every `step`.
            let first = (step * l0) as isize;
            let head = (first.max(first - x), ((step * l) as isize).min(first - x + w as isize));
            let tail_lo = first.max(first - x - step as isize);
            let tail_hi = ((step * l) as isize).min(first - x - step as isize + w as isize);
            for k in 0..step {
                runs.masks[j][k] = span_mask(head.0, head.1, k);
                runs.masks[j][4 + k] = span_mask(tail_lo, tail_hi, k) & pattern;
            }
            runs.end = runs.end.max(plane + h * w);
            runs.n += 1;
            l0 = l;
        }
        Some(runs)
    }

    /// The offset of patch row `r` of run `j` in the planes, `None` where it lies outside.
    #[inline(always)]
    fn row(&self, j: usize, r: usize) -> Option<usize> {
        let y = self.y[j] + (r * self.dh) as isize;
        (0..self.h as isize).contains(&y).then(|| self.plane[j] + y as usize * self.w)
    }
}

/// `dst[..src.len()] = src` with vector copies (the last one overlapping) when the row holds a
/// vector: rows of a plane are short, and a slice copy of unknown length is a `memcpy` call
/// each, which costs more than the copy.
#[inline(always)]
pub(crate) fn copy_interior<S: Simd>(s: S, dst: &mut [f32], src: &[f32]) {
    let n = src.len();
    if n < LANES {
        // Element by element: a slice copy of unknown length is a `memcpy` call.
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = v;
        }
        return;
    }
    let mut j = 0;
    while j + LANES <= n {
        s.store(s.load(&src[j..]), &mut dst[j..]);
        j += LANES;
    }
    if j < n {
        s.store(s.load(&src[n - LANES..]), &mut dst[n - LANES..]);
    }
}

/// Whether the widest vectors of level `S` hold two of its 8-lane vectors (AVX-512): where a
/// kernel's tile spans an even number of 8-lane vectors whose lanes are independent sums, it
/// can run half as many wide ones with the same bits.
#[inline(always)]
pub(crate) fn wide_pairs<S: Simd>() -> bool {
    <S::Wide as Lanes>::N == 2 * LANES
}

/// An instruction set for the kernels: 8-lane `f32` vectors ([`Lanes`] with `N` = [`LANES`])
/// and the few operations the convolution kernels need.
///
/// Implementations are zero-sized tokens; a value of the type is the proof that its
/// instructions can run on this CPU, which is why the methods are safe.
pub trait Simd: Lanes + Send + Sync + 'static {
    /// Which level this is, for reports.
    const LEVEL: SimdLevel;
    /// The widest vectors of this level: 16 lanes at AVX-512, the level itself elsewhere.
    /// Lane for lane, its arithmetic rounds as the 8-lane one does.
    type Wide: Lanes;
    /// The wide token (a proof of the same CPU features).
    fn wide(self) -> Self::Wide;
    /// The wide vector whose lanes are those of `parts` in order (`Wide::N / 8` of them).
    fn join(self, parts: &[Self::V]) -> <Self::Wide as Lanes>::V;
    /// The `Wide::N / 8` 8-lane parts of `w`, in order, into `parts`.
    fn split(self, w: <Self::Wide as Lanes>::V, parts: &mut [Self::V]);
    /// Lane-wise maximum (`max(x, 0)` is a ReLU); where either lane is NaN the result is `b`'s.
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    /// Lanes of `v` where the same lane of `z` is above zero, `+0.0` elsewhere (also where
    /// `z` is NaN): the gradient a ReLU passes back, `z` being its input or its output.
    fn keep_where_positive(self, z: Self::V, v: Self::V) -> Self::V;
    /// A masked gather: lane `l` is `*base.add(idx[l])` where bit `l` of `valid` is set, and
    /// zero (nothing read) where it is clear.
    ///
    /// # Safety
    /// For every set bit `l`, `idx[l] ≥ 0` and `base + idx[l]` is a readable `f32` of the
    /// allocation `base` points into.
    unsafe fn gather_ptr(self, base: *const f32, idx: &[i32; LANES], valid: u8) -> Self::V;
    /// The lanes as an array.
    #[inline(always)]
    fn to_array(self, v: Self::V) -> [f32; LANES] {
        let mut out = [0.0; LANES];
        self.store(v, &mut out);
        out
    }
    /// The AVX-512 token when this level is AVX-512, so that a generic body can take a 16-lane
    /// path; `None` at every other level.
    #[inline(always)]
    fn avx512(self) -> Option<Avx512> {
        None
    }
    /// The 8×8 transpose: lane `j` of result `i` is lane `i` of input `j`.
    #[inline(always)]
    fn transpose8(self, rows: [Self::V; LANES]) -> [Self::V; LANES] {
        let a = rows.map(|v| self.to_array(v));
        std::array::from_fn(|i| {
            let col: [f32; LANES] = std::array::from_fn(|j| a[j][i]);
            self.load(&col)
        })
    }
}

/// Which instruction set a kernel ran with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimdLevel {
    /// x86-64 AVX-512 F and VL (with AVX2 and FMA): 32 vector registers, 16-lane kernels.
    Avx512,
    /// x86-64 AVX2 with FMA: 8-lane vectors, fused multiply-add.
    Avx2Fma,
    /// Portable code: `[f32; 8]` arrays, vectorized by the compiler for the baseline target.
    Fallback,
}

impl SimdLevel {
    /// `Ok` when this CPU can run `self`, else the [`ConvError::Unsupported`] of `op`
    /// (running `algo`) that names the level.
    ///
    /// [`ConvError::Unsupported`]: crate::ConvError::Unsupported
    pub(crate) fn require(self, op: &'static str, algo: &'static str) -> crate::Result<()> {
        if self.available() {
            Ok(())
        } else {
            Err(crate::ConvError::Unsupported {
                op,
                algo,
                msg: format!("SIMD level {self} on this CPU"),
            })
        }
    }

    /// Every level, best first: the detection ladder.
    pub const ALL: [SimdLevel; 3] = [SimdLevel::Avx512, SimdLevel::Avx2Fma, SimdLevel::Fallback];

    /// The levels this CPU can run, best first (always ends with the fallback).
    pub fn available_levels() -> Vec<SimdLevel> {
        SimdLevel::ALL.into_iter().filter(|l| l.available()).collect()
    }

    /// Whether this CPU can run the level (the fallback always can).
    pub fn available(self) -> bool {
        match self {
            SimdLevel::Avx512 => Avx512::new().is_some(),
            SimdLevel::Avx2Fma => Avx2Fma::new().is_some(),
            SimdLevel::Fallback => true,
        }
    }

    /// Short lowercase name (`"avx512"`, `"avx2+fma"`, `"fallback"`).
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Avx512 => "avx512",
            SimdLevel::Avx2Fma => "avx2+fma",
            SimdLevel::Fallback => "fallback",
        }
    }
}

impl std::fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A kernel body that can run with any [`Simd`] level; see [`dispatch`].
///
/// Implementations must mark `with_simd` (and everything it calls that does vector work)
/// `#[inline(always)]`, so that it is compiled inside the `#[target_feature]` wrapper.
pub trait WithSimd {
    /// What the kernel returns.
    type Output;
    /// Runs the kernel with the instruction set `s`.
    fn with_simd<S: Simd>(self, s: S) -> Self::Output;
}

/// Runs `kernel` with the instruction set `level`, or returns `None` when this CPU cannot run
/// that level.
pub fn dispatch<W: WithSimd>(level: SimdLevel, kernel: W) -> Option<W::Output> {
    level.available().then(|| run_at(level, kernel))
}

/// Runs `kernel` with [`Simd`] level [`active`].
pub fn dispatch_active<W: WithSimd>(kernel: W) -> W::Output {
    run_at(active(), kernel)
}

/// Runs `kernel` at `level` when the CPU has it, else with the portable fallback. The one
/// place a kernel is instantiated at every level: [`dispatch`] and [`dispatch_active`] share
/// it and it is never inlined, so each kernel body is compiled once per level (with the
/// portable body inlined into every arm that could fall back, in both dispatchers, the packed
/// LeNet-5 of convkit-models was 1 MB of code and a 110 s release build; 23 s now).
#[inline(never)]
fn run_at<W: WithSimd>(level: SimdLevel, kernel: W) -> W::Output {
    #[cfg(target_arch = "x86_64")]
    match level {
        SimdLevel::Avx512 => {
            if let Some(token) = Avx512::new() {
                // SAFETY: `token` exists, so the CPU supports AVX-512F/VL, AVX2 and FMA, the
                // features the wrapper is compiled for.
                return unsafe { run_avx512(token, kernel) };
            }
        }
        SimdLevel::Avx2Fma => {
            if let Some(token) = Avx2Fma::new() {
                // SAFETY: `token` exists, so the CPU supports AVX2 and FMA, the features the
                // wrapper is compiled for.
                return unsafe { run_avx2(token, kernel) };
            }
        }
        SimdLevel::Fallback => {}
    }
    // Off x86-64 no level but the fallback exists (the tokens are never made).
    #[cfg(not(target_arch = "x86_64"))]
    let _ = level;
    kernel.with_simd(Fallback)
}

/// The AVX2+FMA wrapper: the inlined kernel body is compiled with those features enabled.
///
/// # Safety
/// The CPU must support AVX2 and FMA (guaranteed by the caller holding `token`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<W: WithSimd>(token: Avx2Fma, kernel: W) -> W::Output {
    kernel.with_simd(token)
}

/// The AVX-512 wrapper: the inlined kernel body is compiled with AVX-512F/VL, AVX2 and FMA.
///
/// # Safety
/// The CPU must support those features (guaranteed by the caller holding `token`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn run_avx512<W: WithSimd>(token: Avx512, kernel: W) -> W::Output {
    kernel.with_simd(token)
}

/// The highest level `CONVKIT_SIMD` allows: `avx512` (or unset: no cap), `avx2`, or `off`,
/// `0`, `false` for the fallback, any case. Any other value is reported on stderr once and
/// ignored.
pub fn cap_from_env() -> SimdLevel {
    let Ok(v) = std::env::var("CONVKIT_SIMD") else {
        return SimdLevel::Avx512;
    };
    match parse_cap(&v) {
        Some(level) => level,
        None => {
            eprintln!(
                "convkit: ignoring CONVKIT_SIMD={v:?} (expected avx512, avx2, or off/0/false)"
            );
            SimdLevel::Avx512
        }
    }
}

/// The level a `CONVKIT_SIMD` value names, `None` when it names none.
fn parse_cap(v: &str) -> Option<SimdLevel> {
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "avx512" | "avx-512" | "on" | "auto" => Some(SimdLevel::Avx512),
        "avx2" | "avx2+fma" => Some(SimdLevel::Avx2Fma),
        "off" | "0" | "false" | "fallback" => Some(SimdLevel::Fallback),
        _ => None,
    }
}

/// Whether `CONVKIT_SIMD` asks to disable SIMD (`off`, `0`, `false` or `fallback`, any case).
pub fn disabled_by_env() -> bool {
    std::env::var("CONVKIT_SIMD").is_ok_and(|v| parse_cap(&v) == Some(SimdLevel::Fallback))
}

/// The level the kernels use by default: detected once, then cached.
pub fn active() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(detect)
}

/// Whether the CPU's vector gathers are microcoded and slow: AMD and Hygon (Zen) cores, read
/// once from the CPUID vendor string and cached. Gathers and copies build the same matrices,
/// so this only picks the faster of two equal paths (see `im2col::gather_max_width`).
pub(crate) fn slow_gathers() -> bool {
    static SLOW: OnceLock<bool> = OnceLock::new();
    *SLOW.get_or_init(|| cpu_vendor().is_some_and(|v| vendor_has_slow_gathers(&v)))
}

/// Whether a CPU of this CPUID vendor string has slow gathers (Zen: AMD and Hygon).
pub(crate) fn vendor_has_slow_gathers(vendor: &[u8; 12]) -> bool {
    vendor == b"AuthenticAMD" || vendor == b"HygonGenuine"
}

/// The CPUID vendor string (leaf 0: EBX, EDX, ECX), or `None` off x86-64.
fn cpu_vendor() -> Option<[u8; 12]> {
    #[cfg(target_arch = "x86_64")]
    {
        #[allow(unused_unsafe)] // `__cpuid` is a safe function on newer compilers
        // SAFETY: the CPUID instruction exists on every x86-64 CPU, and leaf 0 is always valid.
        let r = unsafe { std::arch::x86_64::__cpuid(0) };
        let mut v = [0u8; 12];
        v[..4].copy_from_slice(&r.ebx.to_le_bytes());
        v[4..8].copy_from_slice(&r.edx.to_le_bytes());
        v[8..].copy_from_slice(&r.ecx.to_le_bytes());
        Some(v)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// The detection ladder: the best available level at or below the environment's cap.
fn detect() -> SimdLevel {
    let cap = cap_from_env();
    let rank = |l: SimdLevel| SimdLevel::ALL.iter().position(|&x| x == l);
    SimdLevel::ALL
        .into_iter()
        .find(|&l| rank(l) >= rank(cap) && l.available())
        .unwrap_or(SimdLevel::Fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plane_sums_have_the_bits_of_one_plane_at_a_time() {
        // Values of many magnitudes, so that the order of the additions shows in the bits.
        let value = |i: usize| ((i * 7919 % 1009) as f32 - 500.0) * 10f32.powi((i % 9) as i32 - 4);
        for planes in 0..=9 {
            for plane in [1, 3, 7, 8, 9, 16, 17, 100, 784] {
                let v: Vec<f32> = (0..planes * plane).map(value).collect();
                let start: Vec<f64> = (0..planes).map(|c| c as f64 * 0.1).collect();
                let mut got = start.clone();
                add_plane_sums_f64(&v, plane, &mut got);
                for (c, (&g, &s0)) in got.iter().zip(&start).enumerate() {
                    let want = s0 + sum_f64(&v[c * plane..][..plane]);
                    assert_eq!(
                        g.to_bits(),
                        want.to_bits(),
                        "{planes} planes of {plane}, plane {c}"
                    );
                }
            }
        }
    }

    #[test]
    fn slow_gathers_by_vendor() {
        assert!(vendor_has_slow_gathers(b"AuthenticAMD"));
        assert!(vendor_has_slow_gathers(b"HygonGenuine"));
        assert!(!vendor_has_slow_gathers(b"GenuineIntel"));
        assert!(!vendor_has_slow_gathers(&[0; 12]));
        // The cached answer agrees with the vendor string read again.
        assert_eq!(slow_gathers(), cpu_vendor().is_some_and(|v| vendor_has_slow_gathers(&v)));
        #[cfg(target_arch = "x86_64")]
        assert!(cpu_vendor().is_some_and(|v| v.iter().all(u8::is_ascii_graphic)));
    }

    fn ops<S: Simd>(s: S) {
        let a: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let b = [2.0f32; 8];
        let (va, vb) = (s.load(&a), s.load(&b));
        let r = s.to_array(s.fma(va, vb, s.splat(1.0)));
        assert_eq!(r, [1., 3., 5., 7., 9., 11., 13., 15.]);
        assert_eq!(s.to_array(s.sub(va, vb))[0], -2.0);
        assert_eq!(s.to_array(s.add(va, vb))[7], 9.0);
        assert_eq!(s.to_array(s.mul(va, vb))[3], 6.0);
        assert_eq!(s.to_array(s.zero()), [0.0; 8]);
        assert_eq!(
            s.to_array(s.max(s.sub(va, s.splat(3.0)), s.zero())),
            [0., 0., 0., 0., 1., 2., 3., 4.]
        );
        let z = s.load(&[1.0, 0.0, -0.0, -2.0, f32::NAN, 3.0, f32::INFINITY, -f32::INFINITY]);
        let kept = s.to_array(s.keep_where_positive(z, vb));
        assert_eq!(kept, [2., 0., 0., 0., 0., 2., 2., 0.]);
        assert!(kept.iter().all(|x| x.is_sign_positive()));
        let rows: [S::V; LANES] = std::array::from_fn(|i| {
            let r: [f32; LANES] = std::array::from_fn(|j| (10 * i + j) as f32);
            s.load(&r)
        });
        for (i, v) in s.transpose8(rows).into_iter().enumerate() {
            let want: [f32; LANES] = std::array::from_fn(|j| (10 * j + i) as f32);
            assert_eq!(s.to_array(v), want);
        }
        // Lanes 0, 2, 5 and 7 read (out of order, one element twice); the others are zero
        // and read nothing (their offsets point far outside `src`).
        let src: Vec<f32> = (0..20).map(|i| i as f32 + 0.5).collect();
        let idx = [19, i32::MAX, 3, -7, 1 << 30, 3, i32::MIN, 0];
        // SAFETY: every lane whose bit is set (0, 2, 5, 7) has an offset inside `src`.
        let v = unsafe { s.gather_ptr(src.as_ptr(), &idx, 0b1010_0101) };
        assert_eq!(s.to_array(v), [19.5, 0., 3.5, 0., 0., 3.5, 0., 0.5]);
    }

    /// The wide vectors: arithmetic lane by lane, and `join`/`split` keep the lanes in order.
    fn wide_ops<S: Simd>(s: S) {
        let w = s.wide();
        let n = <S::Wide as Lanes>::N;
        assert_eq!(n % LANES, 0);
        let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..n).map(|i| 0.5 - i as f32).collect();
        let (va, vb) = (w.load(&a), w.load(&b));
        let mut out = vec![0.0; n];
        w.store(w.fma(va, vb, w.splat(1.0)), &mut out);
        let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x.mul_add(*y, 1.0)).collect();
        assert_eq!(out, want);
        for (f, op) in [(0, "add"), (1, "sub"), (2, "mul")] {
            let v = [w.add(va, vb), w.sub(va, vb), w.mul(va, vb)][f];
            w.store(v, &mut out);
            for i in 0..n {
                let want = [a[i] + b[i], a[i] - b[i], a[i] * b[i]][f];
                assert_eq!(out[i], want, "{op} lane {i}");
            }
        }
        w.store(w.zero(), &mut out);
        assert!(out.iter().all(|&x| x == 0.0));
        let (lo, hi) = w.interleave(va, vb);
        let mut pair = vec![0.0; 2 * n];
        w.store(lo, &mut pair);
        w.store(hi, &mut pair[n..]);
        let want: Vec<f32> = a.iter().zip(&b).flat_map(|(&x, &y)| [x, y]).collect();
        assert_eq!(pair, want);
        // Every window of `a` then `b`: exactly `len` floats written, the rest untouched.
        let ab: Vec<f32> = a.iter().chain(&b).copied().collect();
        for start in 0..2 * n {
            for len in 0..=n.min(2 * n - start) {
                let mut dst = vec![f32::NAN; n + 1];
                w.store_window(va, vb, start, len, &mut dst);
                assert_eq!(&dst[..len], &ab[start..start + len], "window {start}+{len}");
                assert!(dst[len..].iter().all(|x| x.is_nan()), "window {start}+{len}");
            }
        }
        // Parts 0..n/8 hold lanes 8p..8p+8.
        let parts: Vec<S::V> = a.chunks(LANES).map(|c| s.load(c)).collect();
        let joined = s.join(&parts);
        w.store(joined, &mut out);
        assert_eq!(out, a);
        let mut back = vec![s.zero(); n / LANES];
        s.split(joined, &mut back);
        for (p, chunk) in back.iter().zip(a.chunks(LANES)) {
            assert_eq!(s.to_array(*p).as_slice(), chunk);
        }
        gather_runs_cases(w);
    }

    /// Row `r` of `runs` by [`Lanes::gather_runs`], column by column.
    fn gather<W: Lanes, const A: usize>(
        w: W,
        runs: &StepRuns,
        src: &[f32],
        at: usize,
        r: usize,
    ) -> Vec<[f32; 2 * LANES]> {
        let mut out = [w.zero(); A];
        w.gather_runs(runs, src, at, r, &mut out);
        out.iter()
            .map(|&v| {
                let mut col = [0f32; 2 * LANES];
                w.store(v, &mut col);
                col
            })
            .collect()
    }

    /// [`Lanes::gather_runs`] against the definition, on random runs of patches in and around
    /// three 5x11 planes of two channels: every lane of every row, zeros outside the planes.
    fn gather_runs_cases<W: Lanes>(w: W) {
        let (h, wd) = (5usize, 11usize);
        let plane = h * wd;
        let src: Vec<f32> = (0..6 * plane).map(|i| i as f32 + 1.0).collect();
        let mut seed = 12345u64;
        let mut rand = |n: usize| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        for case in 0..400 {
            let step = [2, 4][case % 2];
            let width = step + 1 + rand(step);
            let dh = 1 + rand(2);
            // 1 to 4 runs of random lengths, 1 to 16 lanes in all.
            let mut starts = Vec::new();
            for _ in 0..1 + rand(4) {
                let (pl, y) = (rand(3) * plane, rand(h + 4) as isize - 2);
                let x0 = rand(wd + width + 2) as isize - width as isize - 1;
                for i in 0..1 + rand(6) {
                    if starts.len() < 16 {
                        starts.push((pl, y, x0 + (step * i) as isize));
                    }
                }
            }
            let Some(runs) = StepRuns::new(&starts, step, width, (h, wd), dh) else {
                // Consecutive runs never merge into more than four.
                panic!("case {case}: no runs for {starts:?}");
            };
            for at in [0, 3 * plane] {
                for r in 0..width {
                    let out = match width {
                        3 => gather::<W, 3>(w, &runs, &src, at, r),
                        4 => gather::<W, 4>(w, &runs, &src, at, r),
                        5 => gather::<W, 5>(w, &runs, &src, at, r),
                        6 => gather::<W, 6>(w, &runs, &src, at, r),
                        7 => gather::<W, 7>(w, &runs, &src, at, r),
                        _ => gather::<W, 8>(w, &runs, &src, at, r),
                    };
                    for (q, got) in out.iter().enumerate() {
                        for (l, &got) in got.iter().enumerate().take(W::N) {
                            let want = starts.get(l).map_or(0.0, |&(pl, y, x)| {
                                let (y, x) = (y + (r * dh) as isize, x + q as isize);
                                let inside =
                                    (0..h as isize).contains(&y) && (0..wd as isize).contains(&x);
                                if inside {
                                    src[at + pl + y as usize * wd + x as usize]
                                } else {
                                    0.0
                                }
                            });
                            assert_eq!(got, want, "case {case} at {at} row {r} col {q} lane {l}");
                        }
                    }
                }
            }
        }
        // Where the gather does not apply.
        let run = |n: usize, gap: usize| -> Vec<(usize, isize, isize)> {
            (0..n).map(|i| (0, 0, (i * gap) as isize)).collect()
        };
        assert!(StepRuns::new(&run(4, 3), 3, 5, (h, wd), 1).is_none());
        assert!(StepRuns::new(&run(4, 4), 4, 4, (h, wd), 1).is_none());
        assert!(StepRuns::new(&run(4, 4), 4, 9, (h, wd), 1).is_none());
        assert!(StepRuns::new(&run(17, 4), 4, 5, (h, wd), 1).is_none());
        assert!(StepRuns::new(&run(5, 5), 4, 5, (h, wd), 1).is_none());
        assert!(StepRuns::new(&run(4, 5), 4, 5, (h, wd), 1).is_some());
        assert!(StepRuns::new(&[], 4, 5, (h, wd), 1).is_none());
    }

    #[test]
    fn fallback_ops() {
        ops(Fallback);
        wide_ops(Fallback);
    }

    #[test]
    fn avx512_ops() {
        match Avx512::new() {
            Some(t) => {
                assert!(t.avx512().is_some());
                ops(t);
                // SAFETY: the token proves the CPU runs AVX-512F, which the wrapper enables.
                unsafe { wide_avx512(t) }
            }
            None => eprintln!("skipping: no avx512f"),
        }
    }

    /// [`wide_ops`] at AVX-512, compiled with the features its 16-lane methods need.
    ///
    /// # Safety
    /// The CPU must support AVX-512F/VL, AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    unsafe fn wide_avx512(t: Avx512) {
        assert_eq!(<Avx512Wide as Lanes>::N, 16);
        wide_ops(t);
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn wide_avx512(t: Avx512) {
        wide_ops(t);
    }

    #[test]
    fn env_values() {
        assert_eq!(parse_cap("AVX512"), Some(SimdLevel::Avx512));
        assert_eq!(parse_cap(" avx2 "), Some(SimdLevel::Avx2Fma));
        for off in ["off", "0", "False", "fallback"] {
            assert_eq!(parse_cap(off), Some(SimdLevel::Fallback));
        }
        assert_eq!(parse_cap("sse9"), None);
        assert_eq!(SimdLevel::available_levels().last(), Some(&SimdLevel::Fallback));
    }

    #[test]
    fn avx2_ops() {
        match Avx2Fma::new() {
            Some(t) => {
                ops(t);
                wide_ops(t);
            }
            None => eprintln!("skipping: no avx2"),
        }
    }
}
