//! convkit against PyTorch and ONNX Runtime on the shape suite, measured interleaved: for every
//! shape, in each round, the `Auto` forward and the `Auto` backward (input + weight + bias
//! gradients) on 1 and 2 threads are timed in this process, and the same operations are timed
//! by PyTorch (and the forward by ONNX Runtime, when the Python has it) in a child process
//! (`torch_timer.py`, one per thread count), one right after the other. PyTorch's `F.conv2d`
//! is stateless and is compared with convkit's stateless `Auto` call; an ONNX Runtime session
//! prepacks its constant weights once, and is compared with the forward a layer at inference
//! runs, which keeps its Winograd filter transformed (the same call where Winograd is not
//! chosen). Each speed ratio (`peer time ÷ convkit time`, and the smaller of the two) is taken
//! within the round, and the report quotes its median over the rounds, with the instruction
//! set each side ran. The host's speed drifts by tens of percent over
//! minutes; a ratio of two timings taken a second apart does not drift with it, where the
//! criterion groups and PyTorch's own script, minutes apart, can.
//!
//! Both sides time alike: untimed calls for at least [`WARM_UP`], then the fastest of a few
//! single calls (PyTorch's forward allocates its output, as `F.conv2d` always does; its
//! backward is `y.backward(dy)` with the forward outside the timer). Neither side runs while
//! the other is timed: each timing starts [`SETTLE`] after the other side's last call, which
//! leaves PyTorch's OpenMP threads and rayon's workers time to stop spinning and sleep. The
//! order alternates from round to round. convkit's pools pin each worker to a CPU of its own
//! (`convkit_tensor::parallel::pinned_pool`; why in `ratios.rs`); PyTorch's OpenMP threads
//! spin between calls instead of sleeping, which keeps them apart.
//!
//! Run by `cargo xtask bench --compare-peers` (which writes the results into
//! `docs/benchmarks.md`); by hand: `CONVKIT_VERSUS_PYTHON=<python with torch> cargo bench -p
//! convkit-conv --bench versus [-- FILTER]`, where `FILTER` keeps the shapes whose id
//! `versus/<shape>` contains it. Without `CONVKIT_VERSUS_PYTHON` it does nothing.
//! `CONVKIT_BENCH_QUICK=1` runs 3 rounds instead of 9; `CONVKIT_VERSUS_OUT=<path>` also writes
//! the results as JSON.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use convkit_conv::ConvGeometry;
use convkit_conv::suite::{median, min_ms_after_warm_up};

mod common;
use common::Operands;

/// Untimed calls before each timing, on both sides.
const WARM_UP: Duration = Duration::from_millis(40);
/// Pause before each timing, so that the side timed before has gone idle.
const SETTLE: Duration = Duration::from_millis(100);
/// Timed calls per timing: forward and backward.
const CALLS: [usize; 2] = [10, 5];

/// The timings of a shape, in report order: forward and backward on 1 and 2 threads.
const TIMINGS: [(&str, usize, &str); 4] =
    [("fwd", 1, "fwd_t1"), ("fwd", 2, "fwd_t2"), ("bwd", 1, "bwd_t1"), ("bwd", 2, "bwd_t2")];

/// A `torch_timer.py` child process with a fixed number of PyTorch threads.
struct Torch {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// PyTorch's version.
    version: String,
    /// PyTorch's CPU capability (`AVX512`, `AVX2`, …).
    isa: String,
    /// ONNX Runtime's version, `None` when the Python lacks it.
    ort: Option<String>,
}

impl Torch {
    fn spawn(python: &str, threads: usize) -> Result<Torch, String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/torch_timer.py");
        let mut child = Command::new(python)
            .arg(&script)
            .arg(threads.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("could not run {python}: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut torch =
            Torch { child, stdin, stdout, version: String::new(), isa: String::new(), ort: None };
        let ready = torch.read_line()?;
        let words: Vec<&str> = ready.split_whitespace().collect();
        let [ready_word, version, isa, ort] = words[..] else {
            return Err(format!("{} did not start: {ready:?}", script.display()));
        };
        if ready_word != "ready" {
            return Err(format!("{} did not start: {ready:?}", script.display()));
        }
        torch.version = version.to_owned();
        torch.isa = isa.to_owned();
        torch.ort = (ort != "none").then(|| ort.to_owned());
        Ok(torch)
    }

    fn read_line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err("torch_timer.py exited (is PyTorch importable?)".to_owned()),
            Ok(_) => Ok(line.trim().to_owned()),
            Err(e) => Err(format!("reading from torch_timer.py: {e}")),
        }
    }

    /// The peer's fastest of `calls` calls of `op` on `g`, in milliseconds: PyTorch's forward
    /// (`fwd`) or backward (`bwd`), or ONNX Runtime's forward (`ort`).
    fn time(&mut self, op: &str, g: &ConvGeometry, calls: usize) -> Result<f64, String> {
        let p = g.params;
        let request = format!(
            "{op} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {calls} {}\n",
            g.n,
            g.c_in,
            g.h,
            g.w,
            g.c_out,
            g.kh,
            g.kw,
            p.stride.0,
            p.stride.1,
            p.padding.0,
            p.padding.1,
            p.dilation.0,
            p.dilation.1,
            p.groups,
            WARM_UP.as_millis()
        );
        let stdin = self.stdin.as_mut().expect("stdin is open until drop");
        stdin
            .write_all(request.as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("writing to torch_timer.py: {e}"))?;
        let answer = self.read_line()?;
        answer.parse().map_err(|_| format!("torch_timer.py answered {answer:?} to {request:?}"))
    }
}

impl Drop for Torch {
    fn drop(&mut self) {
        // Closing stdin ends the script's loop.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// convkit's fastest of `calls` calls of `op` on `pool`, in milliseconds: the stateless
/// forward (`fwd`), the forward with the weights prepared once (`prep`), or the backward
/// (`bwd`).
fn ours(pool: &rayon::ThreadPool, op: &str, d: &mut Operands, calls: usize) -> f64 {
    pool.install(|| {
        min_ms_after_warm_up(calls, WARM_UP, || match op {
            "fwd" => d.forward(),
            "prep" => d.forward_prepared(),
            _ => d.backward(),
        })
    })
}

fn main() {
    let Some(python) = std::env::var("CONVKIT_VERSUS_PYTHON").ok().filter(|p| !p.is_empty()) else {
        println!("versus: skipped (set CONVKIT_VERSUS_PYTHON to a Python that imports torch)");
        return;
    };
    let (shapes, quick) = common::selection("versus");
    if shapes.is_empty() {
        return;
    }
    let rounds = if quick { 3 } else { 9 };
    let spawn = |t| Torch::spawn(&python, t).unwrap_or_else(|e| panic!("versus: {e}"));
    let mut torch = [spawn(1), spawn(2)];
    let pools = [common::pool(1), common::pool(2)];
    let ort = torch[0].ort.clone();
    let isa = convkit_conv::simd::active().name();
    println!(
        "versus: {rounds} rounds over {} shapes, convkit Auto ({isa}) against PyTorch {} ({}){}",
        shapes.len(),
        torch[0].version,
        torch[0].isa,
        ort.as_deref().map_or(" (no onnxruntime in this Python)".to_owned(), |v| format!(
            " and ONNX Runtime {v}"
        ))
    );
    /// Per timing, per round: convkit's milliseconds (stateless, and with the weights
    /// prepared once where that differs), PyTorch's and ONNX Runtime's.
    struct Case {
        op: Operands,
        ours: [Vec<f64>; 4],
        prep: [Vec<f64>; 4],
        torch: [Vec<f64>; 4],
        ort: [Vec<f64>; 4],
    }
    let mut cases: Vec<Case> = shapes
        .iter()
        .map(|s| Case {
            op: Operands::new(s),
            ours: Default::default(),
            prep: Default::default(),
            torch: Default::default(),
            ort: Default::default(),
        })
        .collect();
    for round in 0..rounds {
        for c in &mut cases {
            for (i, &(op, threads, _)) in TIMINGS.iter().enumerate() {
                let calls = CALLS[usize::from(op == "bwd")];
                let (g, name) = (c.op.g, c.op.name);
                let mut peers = vec![op];
                if op == "fwd" && ort.is_some() {
                    peers.push("ort");
                }
                let mut time_peers = |c: &mut Case| {
                    for &peer in &peers {
                        std::thread::sleep(SETTLE);
                        let ms = torch[threads - 1]
                            .time(peer, &g, calls)
                            .unwrap_or_else(|e| panic!("versus/{name} ({peer}): {e}"));
                        if peer == "ort" { &mut c.ort[i] } else { &mut c.torch[i] }.push(ms);
                    }
                };
                let time_ours = |c: &mut Case| {
                    std::thread::sleep(SETTLE);
                    let ms = ours(&pools[threads - 1], op, &mut c.op, calls);
                    c.ours[i].push(ms);
                    // ONNX Runtime prepacks a session's constant weights once; the layer-side
                    // equivalent is the forward with the Winograd filter kept transformed.
                    if op == "fwd" && ort.is_some() && c.op.prepared_differs() {
                        std::thread::sleep(SETTLE);
                        let ms = ours(&pools[threads - 1], "prep", &mut c.op, calls);
                        c.prep[i].push(ms);
                    }
                };
                if round % 2 == 0 {
                    time_ours(c);
                    time_peers(c);
                } else {
                    time_peers(c);
                    time_ours(c);
                }
            }
        }
        println!("versus: round {} of {rounds} done", round + 1);
    }
    println!(
        "{:<12} {:>38} {:>38} {:>22} {:>22}",
        "shape",
        "fwd 1t ours/torch/prep/ort ms",
        "fwd 2t ours/torch/prep/ort ms",
        "bwd 1t ours/torch ms",
        "bwd 2t ours/torch ms"
    );
    let mut json = format!(
        "{{\"rounds\": {rounds}, \"torch\": \"{}\", \"torch_isa\": \"{}\", \"ort\": {}, \
         \"convkit_isa\": \"{isa}\", \"shapes\": [",
        torch[0].version,
        torch[0].isa,
        ort.as_deref().map_or("null".to_owned(), |v| format!("\"{v}\""))
    );
    for (k, c) in cases.iter().enumerate() {
        let mut line = format!("{:<12}", c.op.name);
        let _ = write!(json, "{}{{\"name\": \"{}\"", if k == 0 { "" } else { ", " }, c.op.name);
        for (i, &(_, _, key)) in TIMINGS.iter().enumerate() {
            let ratio = |peer: &[f64]| -> Vec<f64> {
                peer.iter().zip(&c.ours[i]).map(|(p, o)| p / o).collect()
            };
            let (o, t) = (median(c.ours[i].clone()), median(c.torch[i].clone()));
            let s = median(ratio(&c.torch[i]));
            let _ = write!(
                json,
                ", \"{key}\": {{\"ours_ms\": {o}, \"torch_ms\": {t}, \"speedup\": {s}"
            );
            if c.ort[i].is_empty() {
                let _ = write!(line, " {o:>7.3}/{t:>7.3} {s:>5.2}x");
            } else {
                // Against ONNX Runtime: the prepared forward where it differs.
                let prep = if c.prep[i].is_empty() { &c.ours[i] } else { &c.prep[i] };
                let (r, op) = (median(c.ort[i].clone()), median(prep.clone()));
                let vs_ort: Vec<f64> = c.ort[i].iter().zip(prep).map(|(r, p)| r / p).collect();
                let vs_torch = ratio(&c.torch[i]);
                let best: Vec<f64> = vs_torch.iter().zip(&vs_ort).map(|(a, b)| a.min(*b)).collect();
                let (sr, sb) = (median(vs_ort), median(best));
                let _ = write!(line, " {o:>7.3}/{t:>7.3}/{op:>7.3}/{r:>7.3} {sb:>5.2}x");
                let _ = write!(
                    json,
                    ", \"prepared_ms\": {op}, \"ort_ms\": {r}, \"speedup_ort\": {sr}, \
                     \"speedup_best\": {sb}"
                );
            }
            json.push('}');
        }
        json.push('}');
        println!("{line}");
    }
    json.push_str("]}\n");
    if let Some(path) = std::env::var_os("CONVKIT_VERSUS_OUT") {
        std::fs::write(&path, json).expect("could not write CONVKIT_VERSUS_OUT");
    }
}
