//! The benchmark shape suite of the project (issue 3), shared by the criterion benches and the
//! `cargo xtask bench` report.
//!
//! ```
//! use convkit_conv::suite::SHAPES;
//! let g = SHAPES[3].geometry().unwrap();
//! assert_eq!(SHAPES[3].name, "res3x3_28b8");
//! assert_eq!(g.flops(), 2 * 8 * 128 * 128 * 9 * 28 * 28);
//! ```

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::params::{Conv2dParams, ConvGeometry};

/// One benchmark shape: input `[n, c_in, h, w]`, weight `[c_out, c_in/groups, kh, kw]`, params.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuiteShape {
    /// Short name used in bench ids and reports.
    pub name: &'static str,
    /// Input dims `[n, c_in, h, w]`.
    pub input: [usize; 4],
    /// Weight dims `[c_out, c_in/groups, kh, kw]`.
    pub weight: [usize; 4],
    /// Stride, padding, dilation, groups.
    pub params: Conv2dParams,
}

impl SuiteShape {
    /// The validated geometry of the shape.
    pub fn geometry(&self) -> Result<ConvGeometry> {
        ConvGeometry::new(self.input, self.weight, self.params)
    }
}

/// `len` pseudo-random values in `[-0.5, 0.5)`, the same for the same `seed` (an xorshift
/// sequence): operands for benchmarks, reproducible from run to run.
pub fn sample_data(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

/// The fastest of `calls` timed calls of `f`, in milliseconds, after calling `f` untimed for
/// at least `warm_up` (and at least twice).
///
/// The interleaved benches time one configuration right after another; the untimed calls let
/// caches, thread pools and the scheduler settle first, so the minimum is the steady speed a
/// loop of calls sees.
pub fn min_ms_after_warm_up(calls: usize, warm_up: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut warm = 0;
    while warm < 2 || start.elapsed() < warm_up {
        f();
        warm += 1;
    }
    (0..calls)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

/// The median of `v` (the mean of the two middle values for an even count); NaN when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Medians of an interleaved comparison: ours, theirs (ms) and the per-round ratio
/// `theirs ÷ ours` (> 1: ours is faster).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interleaved {
    /// Median of our timings, in milliseconds.
    pub ours_ms: f64,
    /// Median of the peer's timings, in milliseconds.
    pub theirs_ms: f64,
    /// Median over the rounds of `theirs ÷ ours` taken within each round.
    pub ratio: f64,
}

/// Times two sides `rounds` times, one right after the other, alternating which goes first,
/// each after `settle` of idleness (so that the other side's threads have gone to sleep),
/// and returns the medians. `ours` and `theirs` each return one timing in milliseconds
/// (e.g. [`min_ms_after_warm_up`] and [`PeerTimer::time`]); the first error of `theirs` ends
/// the comparison.
pub fn interleaved(
    rounds: usize,
    settle: Duration,
    mut ours: impl FnMut() -> f64,
    mut theirs: impl FnMut() -> std::result::Result<f64, String>,
) -> std::result::Result<Interleaved, String> {
    let (mut a, mut b, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        std::thread::sleep(settle);
        let (x, y) = if round % 2 == 0 {
            let x = ours();
            std::thread::sleep(settle);
            (x, theirs()?)
        } else {
            let y = theirs()?;
            std::thread::sleep(settle);
            (ours(), y)
        };
        a.push(x);
        b.push(y);
        r.push(y / x);
    }
    Ok(Interleaved { ours_ms: median(a), theirs_ms: median(b), ratio: median(r) })
}

/// The environment variable naming the folder where the interleaved benches leave their
/// tables for `cargo xtask bench --compare-peers`, which puts them into `docs/benchmarks.md`.
pub const VERSUS_MD_DIR: &str = "CONVKIT_VERSUS_MD_DIR";

/// Prints an interleaved bench's markdown table and, when [`VERSUS_MD_DIR`] is set, writes it
/// to `<dir>/<name>.md` for the bench report (a write failure is reported, not fatal).
pub fn publish_markdown(name: &str, md: &str) {
    println!("{md}");
    let Some(dir) = std::env::var_os(VERSUS_MD_DIR) else { return };
    let path = std::path::Path::new(&dir).join(format!("{name}.md"));
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, md)) {
        eprintln!("{name}: cannot write {}: {e}", path.display());
    }
}

/// A peer implementation timing operations in a child process, one request line on stdin,
/// one answer line on stdout: the protocol of the interleaved benches' Python timers
/// (`bn_timer.py`, `zoo_twin.py --serve`). The child prints `ready <version>` first; each
/// answer is a time in milliseconds or `error <message>`. Dropping it closes stdin, which ends
/// the child's loop, and waits for the child.
#[derive(Debug)]
pub struct PeerTimer {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    /// What the child printed after `ready` (its library's version).
    pub version: String,
}

impl PeerTimer {
    /// Starts `program args…` and waits for its `ready` line.
    pub fn spawn(program: &str, args: &[&str]) -> std::result::Result<PeerTimer, String> {
        use std::process::{Command, Stdio};
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("could not run {program}: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(format!("{program}: no pipes"));
        };
        let stdout = std::io::BufReader::new(stdout);
        let mut peer = PeerTimer { child, stdin: Some(stdin), stdout, version: String::new() };
        let ready = peer.read_line()?;
        peer.version = ready
            .strip_prefix("ready ")
            .ok_or_else(|| format!("{program} {args:?} did not start: {ready:?}"))?
            .to_owned();
        Ok(peer)
    }

    fn read_line(&mut self) -> std::result::Result<String, String> {
        use std::io::BufRead;
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err("the peer exited".to_owned()),
            Ok(_) => Ok(line.trim().to_owned()),
            Err(e) => Err(format!("reading from the peer: {e}")),
        }
    }

    /// Sends one request line and returns the peer's time for it, in milliseconds.
    pub fn time(&mut self, request: &str) -> std::result::Result<f64, String> {
        use std::io::Write;
        let stdin = self.stdin.as_mut().ok_or("the peer's stdin is closed")?;
        writeln!(stdin, "{request}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("writing to the peer: {e}"))?;
        let answer = self.read_line()?;
        answer.parse().map_err(|_| format!("the peer answered {answer:?} to {request:?}"))
    }
}

impl Drop for PeerTimer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

const fn params(stride: usize, pad: usize, dilation: usize, groups: usize) -> Conv2dParams {
    Conv2dParams {
        stride: (stride, stride),
        padding: (pad, pad),
        dilation: (dilation, dilation),
        groups,
    }
}

/// The suite, in the order of the reference tables.
pub const SHAPES: [SuiteShape; 9] = [
    SuiteShape {
        name: "lenet_c1",
        input: [64, 1, 32, 32],
        weight: [6, 1, 5, 5],
        params: params(1, 0, 1, 1),
    },
    SuiteShape {
        name: "lenet_c2",
        input: [64, 6, 14, 14],
        weight: [16, 6, 5, 5],
        params: params(1, 0, 1, 1),
    },
    SuiteShape {
        name: "res3x3_56",
        input: [1, 64, 56, 56],
        weight: [64, 64, 3, 3],
        params: params(1, 1, 1, 1),
    },
    SuiteShape {
        name: "res3x3_28b8",
        input: [8, 128, 28, 28],
        weight: [128, 128, 3, 3],
        params: params(1, 1, 1, 1),
    },
    SuiteShape {
        name: "vgg3x3_14",
        input: [1, 256, 14, 14],
        weight: [256, 256, 3, 3],
        params: params(1, 1, 1, 1),
    },
    SuiteShape {
        name: "strided",
        input: [8, 64, 56, 56],
        weight: [128, 64, 3, 3],
        params: params(2, 1, 1, 1),
    },
    SuiteShape {
        name: "pointwise",
        input: [8, 256, 14, 14],
        weight: [256, 256, 1, 1],
        params: params(1, 0, 1, 1),
    },
    SuiteShape {
        name: "depthwise",
        input: [8, 128, 28, 28],
        weight: [128, 1, 3, 3],
        params: params(1, 1, 1, 128),
    },
    SuiteShape {
        name: "dilated",
        input: [8, 64, 28, 28],
        weight: [64, 64, 3, 3],
        params: params(1, 2, 2, 1),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn min_ms_warms_up_then_times_each_call() {
        let mut n = 0;
        let t = min_ms_after_warm_up(3, Duration::ZERO, || n += 1);
        assert_eq!(n, 5, "two untimed calls, then three timed ones");
        assert!(t >= 0.0 && t.is_finite());
    }

    #[test]
    fn every_shape_is_valid() {
        for s in &SHAPES {
            assert!(s.geometry().is_ok(), "{}", s.name);
        }
    }
}
