//! Turns criterion's saved estimates (and optionally the peer scripts' results) into
//! `docs/benchmarks.md` and an SVG chart.
//!
//! Criterion writes, for every benchmark, `target/criterion/<dir>/new/benchmark.json` (its group
//! id, function id and throughput) and `estimates.json` (median time in ns). The report reads
//! every such pair, so it needs no list of benchmark names; it knows the naming conventions of
//! the conv suite (`conv_fwd_t{threads}/{shape}` and `conv_bwd_t{threads}/{shape}`, one
//! function per algorithm) to lay those out as tables, the LeNet-5 benches of convkit-models
//! (`lenet/train_step_b64`, `lenet/infer_b1`, `lenet/infer_b256`) as their own section, and
//! lists everything else as is.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::probe::Peak;

/// One benchmark's result.
#[derive(Debug, Clone)]
pub struct Record {
    /// Criterion group id, e.g. `conv_fwd_t1/res3x3_28b8`.
    pub group: String,
    /// Function id, e.g. `winograd4`.
    pub function: String,
    /// Median time per iteration, in nanoseconds.
    pub median_ns: f64,
    /// Elements (FLOPs, by our convention) per iteration, if the bench declared a throughput.
    pub elements: Option<f64>,
}

impl Record {
    /// GFLOP/s at the median, for benches whose throughput counts FLOPs.
    pub fn gflops(&self) -> Option<f64> {
        self.elements.map(|e| e / self.median_ns)
    }
}

/// Reads every `new/benchmark.json` + `new/estimates.json` pair under `dir` whose estimates
/// were written at or after `since` (all of them when `None`), so that a report lists only
/// what its own run measured, not results left over from earlier runs.
pub fn collect(dir: &Path, since: Option<SystemTime>) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    if dir.is_dir() {
        walk(dir, since, &mut out)?;
    }
    out.sort_by(|a, b| (&a.group, &a.function).cmp(&(&b.group, &b.function)));
    Ok(out)
}

fn walk(dir: &Path, since: Option<SystemTime>, out: &mut Vec<Record>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "new") {
            let fresh = since.is_none_or(|t| {
                fs::metadata(path.join("estimates.json"))
                    .and_then(|m| m.modified())
                    .is_ok_and(|m| m >= t)
            });
            if fresh && let Some(r) = read_record(&path)? {
                out.push(r);
            }
        } else {
            walk(&path, since, out)?;
        }
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn read_record(new_dir: &Path) -> Result<Option<Record>> {
    let (bench, est) = (new_dir.join("benchmark.json"), new_dir.join("estimates.json"));
    if !bench.is_file() || !est.is_file() {
        return Ok(None);
    }
    let b = read_json(&bench)?;
    let e = read_json(&est)?;
    let (Some(group), Some(median_ns)) =
        (b["group_id"].as_str(), e["median"]["point_estimate"].as_f64())
    else {
        return Ok(None);
    };
    Ok(Some(Record {
        group: group.to_owned(),
        // `BenchmarkId::from_parameter` leaves the function id null and names the bench by
        // its parameter (`matmul_square/512`).
        function: b["function_id"].as_str().or(b["value_str"].as_str()).unwrap_or("").to_owned(),
        median_ns,
        elements: b["throughput"]["Elements"].as_f64(),
    }))
}

/// The peers' (PyTorch / ONNX Runtime) medians per shape, in ms, read from `conv_<T>t.json`.
#[derive(Debug, Default, Clone)]
pub struct Peers {
    /// `(threads, shape) → (torch fwd, ort fwd, torch bwd)` medians in ms.
    pub ms: BTreeMap<(usize, String), [Option<f64>; 3]>,
    /// PyTorch's LeNet-5, from `lenet_torch.py`.
    pub lenet: LenetPeer,
}

/// PyTorch's LeNet-5 numbers, read from the JSON `lenet_torch.py train` and `infer` write.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct LenetPeer {
    /// Threads PyTorch ran on in the training run.
    pub train_threads: Option<usize>,
    /// Training images/s at batch 64 (median over the epochs run).
    pub train_images_per_sec: Option<f64>,
    /// Threads of the inference run.
    pub infer_threads: Option<usize>,
    /// Batch-1 latency in µs (median over rounds of the per-round medians).
    pub b1_latency_us: Option<f64>,
    /// Batch-256 images/s (median over rounds of the per-round medians).
    pub b256_images_per_sec: Option<f64>,
}

impl LenetPeer {
    /// Whether any number is present.
    pub fn is_empty(&self) -> bool {
        self.train_images_per_sec.is_none()
            && self.b1_latency_us.is_none()
            && self.b256_images_per_sec.is_none()
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// The LeNet-5 numbers of `lenet_torch.py train` (`train`, the `lenet_fashion_sgd.json` it
/// writes) and `lenet_torch.py infer` (`infer`, `lenet_infer_torch.json`, its first run).
pub fn parse_lenet_peer(train: Option<&Value>, infer: Option<&Value>) -> LenetPeer {
    let mut p = LenetPeer::default();
    if let Some(t) = train {
        p.train_images_per_sec = t["median_train_img_s"].as_f64();
        p.train_threads = t["env"]["threads"].as_u64().map(|n| n as usize);
    }
    if let Some((name, run)) =
        infer.and_then(|v| v["runs"].as_object()).and_then(|r| r.iter().next())
    {
        p.infer_threads = name.strip_suffix('t').and_then(|n| n.parse().ok());
        let rounds = |key: &str, field: &str| {
            median(
                run[key]
                    .as_array()
                    .map(|a| a.iter().filter_map(|r| r[field].as_f64()).collect())
                    .unwrap_or_default(),
            )
        };
        p.b1_latency_us = rounds("b1_latency_us", "median");
        p.b256_images_per_sec = rounds("b256_throughput", "img_s_median");
    }
    p
}

/// Reads the peer results written by `conv_bench.py --out DIR`.
pub fn read_peers(dir: &Path) -> Result<Peers> {
    let mut peers = Peers::default();
    for threads in [1, 2] {
        let path = dir.join(format!("conv_{threads}t.json"));
        if !path.is_file() {
            continue;
        }
        let v = read_json(&path)?;
        let Some(results) = v["results"].as_object() else { continue };
        for (shape, rec) in results {
            let s = &rec["summary"];
            let ms = |k: &str| s[k]["median_ms"].as_f64();
            peers.ms.insert(
                (threads, shape.clone()),
                [ms("torch_fwd"), ms("ort_fwd"), ms("torch_bwd")],
            );
        }
    }
    let optional = |name: &str| -> Result<Option<Value>> {
        let path = dir.join(name);
        if path.is_file() { read_json(&path).map(Some) } else { Ok(None) }
    };
    let train = optional("lenet_fashion_sgd.json")?;
    let infer = optional("lenet_infer_torch.json")?;
    peers.lenet = parse_lenet_peer(train.as_ref(), infer.as_ref());
    Ok(peers)
}

/// What the report says about the run besides the numbers.
pub struct ReportContext {
    /// The FMA probe.
    pub peak: Peak,
    /// `shape → algorithm` picked by `ConvAlgo::Auto`, per thread count if known.
    pub auto_choice: BTreeMap<String, String>,
    /// Machine description (CPU model, cores).
    pub machine: String,
    /// How the numbers were produced.
    pub command: String,
    /// Whether criterion ran in `--quick` mode.
    pub quick: bool,
    /// Threads of rayon's global pool, which the benches without a pool of their own use.
    pub threads: usize,
    /// The interleaved ratios (`benches/ratios.rs` in `convkit-conv`), when they ran.
    pub ratios: Option<Value>,
    /// The interleaved comparison with PyTorch (`benches/versus.rs`), when it ran.
    pub versus: Option<Value>,
    /// The tables the other interleaved benches published (`suite::publish_markdown`: the
    /// zoo's networks, `BatchNorm2d`), by name, when they ran.
    pub general: Vec<(String, String)>,
    /// The convolution algorithms, one table column and chart bar each, in order: the bench
    /// function names, [`algorithm_names`] in the real report.
    pub algos: Vec<&'static str>,
}

/// Every convolution algorithm's name, from `ConvAlgo::ALL` (`auto` first): the one list the
/// report's tables and chart are built from, so a new algorithm needs no edit here.
pub fn algorithm_names() -> Vec<&'static str> {
    convkit_conv::ConvAlgo::ALL.iter().map(|a| a.name()).collect()
}

/// The section of the general stack against PyTorch: each table an interleaved bench
/// published (see [`ReportContext::general`]), in name order; empty when none ran.
pub fn general_section(tables: &[(String, String)]) -> String {
    if tables.is_empty() {
        return String::new();
    }
    let mut md =
        "## Your own CNN: the general stack against PyTorch, measured interleaved\n\n".to_owned();
    for (name, table) in tables {
        let _ = writeln!(md, "### {name}\n\n{}\n", table.trim_end());
    }
    md
}

/// The section of the interleaved ratios: per shape, median timings and median per-round
/// ratios, with the targets they are checked against.
pub fn ratios_section(ratios: &Value) -> String {
    let mut md = String::new();
    let Some(shapes) = ratios["shapes"].as_array() else { return md };
    let rounds = ratios["rounds"].as_u64().unwrap_or(0);
    let _ = writeln!(
        md,
        "## Backward ÷ forward and 1 ÷ 2 threads, measured interleaved
"
    );
    let _ = writeln!(
        md,
        "`Auto` only. In each of {rounds} rounds every shape's forward on 1 thread, backward on 1 \
         thread and forward on 2 threads are timed back to back (each the minimum of a few \
         calls after 40 ms of untimed ones, so that a thread pool that sat idle has settled; \
         each pool's workers pinned to CPUs of their own), \
         and the ratios are taken within the round: the tables above time each group \
         minutes apart, and this machine's speed drifts by tens of percent over minutes. \
         Medians over the rounds (`cargo bench -p convkit-conv --bench ratios`). Targets: \
         backward ≤ 2.5x forward; 2 threads ≥ 1.7x 1 thread on the large shapes.\n"
    );
    let _ = writeln!(
        md,
        "| shape | forward, 1 thread | backward, 1 thread | backward ÷ forward | forward, 2 threads | 1 thread ÷ 2 threads |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for s in shapes {
        let ms = |k: &str| s[k].as_f64().map_or("–".to_owned(), |v| fmt_time(v * 1e6));
        let x = |k: &str| s[k].as_f64().map_or("–".to_owned(), |v| format!("{v:.2}x"));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            s["name"].as_str().unwrap_or("?"),
            ms("fwd_t1_ms"),
            ms("bwd_t1_ms"),
            x("bwd_over_fwd"),
            ms("fwd_t2_ms"),
            x("t1_over_t2"),
        );
    }
    md.push('\n');
    md
}

/// The section of the interleaved comparison with PyTorch and ONNX Runtime: per shape and
/// timing, median milliseconds of each side and the median per-round speed ratios.
pub fn versus_section(versus: &Value) -> String {
    let mut md = String::new();
    let Some(shapes) = versus["shapes"].as_array() else { return md };
    let rounds = versus["rounds"].as_u64().unwrap_or(0);
    let torch = versus["torch"].as_str().unwrap_or("?");
    let torch_isa = versus["torch_isa"].as_str().unwrap_or("?");
    let ours_isa = versus["convkit_isa"].as_str().unwrap_or("?");
    let ort = versus["ort"].as_str();
    let peers = match ort {
        Some(v) => format!("PyTorch {torch} and ONNX Runtime {v}"),
        None => format!("PyTorch {torch}"),
    };
    let _ = writeln!(md, "## convkit against {peers}, measured interleaved\n");
    let _ = writeln!(
        md,
        "`Auto` (SIMD level {ours_isa}) against PyTorch's `F.conv2d` (CPU capability \
         {torch_isa}; its backward is `y.backward(dy)`){}. In each of {rounds} rounds every \
         timing below is taken by convkit and by the peers (in a child process) one right after \
         the other, each the fastest of a few calls after 40 ms of untimed calls, with a pause \
         before each so that the other side is idle; the order alternates by round. convkit's \
         pools pin each worker to a CPU of its own (`convkit_tensor::parallel::pinned_pool`; \
         PyTorch's OpenMP threads spin between calls instead). Speed = the \
         peer's time ÷ convkit's, taken within the round (\"vs best\": the faster peer of that \
         round); the tables give medians over the rounds (`cargo bench -p convkit-conv --bench \
         versus`). Unlike the PyTorch columns above, which come from a separate script minutes \
         away from our groups, these ratios do not move with the host's drift.\n",
        if ort.is_some() {
            " and an ONNX Runtime session of one `Conv` node (its MLAS kernels pick their ISA at \
             run time). A session prepacks its constant weights once, so ORT is compared with \
             the forward a layer runs at inference (\"prepared\": the Winograd filter kept \
             transformed where Winograd is chosen, otherwise the same call), PyTorch's \
             stateless `F.conv2d` with the stateless call"
        } else {
            ""
        }
    );
    let name = |s: &Value| s["name"].as_str().unwrap_or("?").to_owned();
    let ms = |t: &Value, k: &str| t[k].as_f64().map_or("–".to_owned(), |v| fmt_time(v * 1e6));
    let x = |t: &Value, k: &str| t[k].as_f64().map_or("–".to_owned(), |v| format!("{v:.2}x"));
    if ort.is_some() {
        let _ = writeln!(
            md,
            "| shape | forward 1 thread: convkit / PyTorch | vs PyTorch | convkit prepared / ORT | vs ORT | vs best | forward 2 threads: convkit / PyTorch | vs PyTorch | convkit prepared / ORT | vs ORT | vs best |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
        for s in shapes {
            let mut row = format!("| {} |", name(s));
            for key in ["fwd_t1", "fwd_t2"] {
                let t = &s[key];
                let _ = write!(
                    row,
                    " {} / {} | {} | {} / {} | {} | **{}** |",
                    ms(t, "ours_ms"),
                    ms(t, "torch_ms"),
                    x(t, "speedup"),
                    ms(t, "prepared_ms"),
                    ms(t, "ort_ms"),
                    x(t, "speedup_ort"),
                    x(t, "speedup_best")
                );
            }
            let _ = writeln!(md, "{row}");
        }
        md.push('\n');
    }
    let keys: &[&str] = if ort.is_some() {
        &["bwd_t1", "bwd_t2"]
    } else {
        &["fwd_t1", "fwd_t2", "bwd_t1", "bwd_t2"]
    };
    let mut header = "| shape |".to_owned();
    for key in keys {
        let what = if key.starts_with("fwd") { "forward" } else { "backward" };
        let threads = if key.ends_with("t1") { "1 thread" } else { "2 threads" };
        let _ = write!(header, " {what} {threads}: convkit / PyTorch | speed |");
    }
    let _ = writeln!(md, "{header}");
    let _ = writeln!(md, "|---|{}", "---|---|".repeat(keys.len()));
    for s in shapes {
        let mut row = format!("| {} |", name(s));
        for key in keys {
            let t = &s[*key];
            let _ = write!(
                row,
                " {} / {} | {} |",
                ms(t, "ours_ms"),
                ms(t, "torch_ms"),
                x(t, "speedup")
            );
        }
        let _ = writeln!(md, "{row}");
    }
    md.push('\n');
    md
}

/// The group id of the LeNet-5 benches and their function ids.
const LENET_GROUP: &str = "lenet";
const LENET_TRAIN: &str = "train_step_b64";
const LENET_B1: &str = "infer_b1";
const LENET_B256: &str = "infer_b256";

/// Images per second of a bench whose throughput counts images.
fn images_per_sec(r: &Record) -> Option<f64> {
    r.elements.map(|e| e * 1e9 / r.median_ns)
}

/// Thousands separated by commas: 12345.6 → "12,346".
fn fmt_count(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The "LeNet-5" section: the `lenet/*` benches, and PyTorch's numbers beside them when the
/// peers ran. Empty when the run has no LeNet-5 bench.
pub fn lenet_section(records: &[Record], peer: &LenetPeer, threads: usize) -> String {
    let find = |f: &str| records.iter().find(|r| r.group == LENET_GROUP && r.function == f);
    let (train, b1, b256) = (find(LENET_TRAIN), find(LENET_B1), find(LENET_B256));
    if train.is_none() && b1.is_none() && b256.is_none() {
        return String::new();
    }
    let mut md = String::new();
    let _ = writeln!(md, "## LeNet-5, {threads} thread{}\n", if threads == 1 { "" } else { "s" });
    let _ = writeln!(
        md,
        "The `lenet/*` benches of convkit-models (`crates/models/benches/lenet.rs`) on rayon's \
         global pool of {threads} thread{} (`RAYON_NUM_THREADS` changes it), on synthetic \
         seeded images: one training step of `lenet train` at batch 64 (forward, backward, SGD \
         update) and `LeNet5::logits` at batch 1 and 256. Accuracy per epoch on the real data \
         is in [training.md](training.md).\n",
        if threads == 1 { "" } else { "s" }
    );
    let with_peer = !peer.is_empty();
    if with_peer {
        let th = |t: Option<usize>| t.map_or("?".to_owned(), |t| t.to_string());
        let _ = writeln!(
            md,
            "PyTorch: `lenet_torch.py train` (one epoch of Fashion-MNIST, {} threads: its \
             images/s cover the whole epoch, batching included) and `lenet_torch.py infer` ({} \
             threads), run by `--compare-peers` in the same session. \
             \"Speed ratio\" is convkit's speed over PyTorch's (above 1: convkit is faster).\n",
            th(peer.train_threads),
            th(peer.infer_threads)
        );
        let _ = writeln!(md, "| measurement | convkit | PyTorch | speed ratio |");
        let _ = writeln!(md, "|---|---|---|---|");
    } else {
        let _ = writeln!(md, "| measurement | convkit |");
        let _ = writeln!(md, "|---|---|");
    }
    let rows = [
        (
            "training, batch 64 (images/s)",
            train.and_then(|r| {
                images_per_sec(r)
                    .map(|v| format!("{} ({} per step)", fmt_count(v), fmt_time(r.median_ns)))
            }),
            peer.train_images_per_sec,
            train.and_then(images_per_sec).zip(peer.train_images_per_sec).map(|(a, b)| a / b),
        ),
        (
            "inference, batch 1 (latency)",
            b1.map(|r| fmt_time(r.median_ns)),
            peer.b1_latency_us,
            b1.zip(peer.b1_latency_us).map(|(r, us)| us * 1e3 / r.median_ns),
        ),
        (
            "inference, batch 256 (images/s)",
            b256.and_then(images_per_sec).map(fmt_count),
            peer.b256_images_per_sec,
            b256.and_then(images_per_sec).zip(peer.b256_images_per_sec).map(|(a, b)| a / b),
        ),
    ];
    for (i, (name, ours, theirs, ratio)) in rows.into_iter().enumerate() {
        let ours = ours.unwrap_or_else(|| "–".to_owned());
        if with_peer {
            let theirs = theirs.map_or("–".to_owned(), |v| {
                if i == 1 { format!("{v:.1} µs") } else { fmt_count(v) }
            });
            let ratio = ratio.map_or("–".to_owned(), |r| format!("{r:.2}x"));
            let _ = writeln!(md, "| {name} | {ours} | {theirs} | {ratio} |");
        } else {
            let _ = writeln!(md, "| {name} | {ours} |");
        }
    }
    let _ = writeln!(md);
    md
}

fn fmt_time(ns: f64) -> String {
    if ns >= 1e6 { format!("{:.2} ms", ns / 1e6) } else { format!("{:.1} µs", ns / 1e3) }
}

/// The conv suite's shapes in table order, as found in the records.
fn conv_shapes(records: &[Record], prefix: &str) -> Vec<String> {
    const ORDER: [&str; 9] = [
        "lenet_c1",
        "lenet_c2",
        "res3x3_56",
        "res3x3_28b8",
        "vgg3x3_14",
        "strided",
        "pointwise",
        "depthwise",
        "dilated",
    ];
    let mut shapes: Vec<String> =
        records.iter().filter_map(|r| r.group.strip_prefix(prefix).map(str::to_owned)).collect();
    shapes.sort_by_key(|s| ORDER.iter().position(|o| o == s).unwrap_or(ORDER.len()));
    shapes.dedup();
    shapes
}

/// Writes the markdown report and the SVG chart; returns the paths written.
pub fn write(
    docs: &Path,
    records: &[Record],
    peers: &Peers,
    ctx: &ReportContext,
) -> Result<(PathBuf, PathBuf)> {
    let mut md = String::new();
    let p = &ctx.peak;
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Generated by `{}`{}. Every number below is a criterion median measured in that run; \
         rerun the command to regenerate this page and `docs/bench-chart.svg`.\n",
        ctx.command,
        if ctx.quick {
            " in quick mode: criterion's `--quick` (each benchmark measured until its estimate \
             settles or 0.5 s have passed) and `naive` convolution only on shapes under 20 MFLOP, so \
             fewer samples and wider error bars than a full run"
        } else {
            ""
        }
    );
    let _ = writeln!(md, "## Machine\n");
    let _ = writeln!(md, "- {}", ctx.machine);
    let _ = writeln!(
        md,
        "- Measured f32 FMA peak ({}): **{:.1} GFLOP/s on 1 thread, {:.1} GFLOP/s on {} threads** \
         (`cargo xtask bench` probe: independent FMA chains, best of 5).\n",
        p.kind, p.one_thread, p.all_threads, p.threads
    );
    if let Some((one, all)) = p.avx512 {
        let _ = writeln!(
            md,
            "- The same probe with 16-lane AVX-512F FMAs: {one:.1} GFLOP/s on 1 thread, {all:.1} \
             GFLOP/s on {} threads.\n",
            p.threads
        );
    }
    let (one, all) = p.best();
    let _ = writeln!(
        md,
        "- \"% peak\" below divides by the machine's peak: {one:.1} GFLOP/s on 1 thread, {all:.1} \
         on {} (the faster probe).\n",
        p.threads
    );

    for (title, kind, mult) in
        [("forward", "fwd", 1.0), ("backward (input + weight + bias gradients)", "bwd", 2.0)]
    {
        for threads in [1, 2] {
            let prefix = format!("conv_{kind}_t{threads}/");
            let shapes = conv_shapes(records, &prefix);
            if shapes.is_empty() {
                continue;
            }
            let (one, all) = p.best();
            let peak = if threads == 1 { one } else { all };
            let _ = writeln!(
                md,
                "## conv2d {title}, {threads} thread{}\n",
                if threads == 1 { "" } else { "s" }
            );
            let _ = writeln!(
                md,
                "GFLOP/s counts {} per call. Best of the algorithms in bold; `auto` is what `ConvAlgo::Auto` runs.\n",
                if mult == 1.0 {
                    "2·N·K·(C/g)·R·S·OH·OW"
                } else {
                    "twice the forward FLOPs"
                }
            );
            let algos = &ctx.algos;
            let with_peers = !peers.ms.is_empty();
            let mut header = String::from("| shape | Auto picks |");
            for &a in algos {
                let _ = write!(header, " {a} |");
            }
            header.push_str(" best % peak |");
            if with_peers {
                header.push_str(if kind == "fwd" {
                    " PyTorch | ONNX RT | auto ÷ PyTorch speed |"
                } else {
                    " PyTorch | auto ÷ PyTorch speed |"
                });
            }
            let _ = writeln!(md, "{header}");
            let cols = header.matches('|').count() - 1;
            let _ = writeln!(md, "|{}", "---|".repeat(cols));
            for shape in &shapes {
                let group = format!("{prefix}{shape}");
                let find = |a: &str| records.iter().find(|r| r.group == group && r.function == a);
                let best = algos
                    .iter()
                    .filter(|&&a| a != "auto")
                    .filter_map(|a| find(a))
                    .map(|r| r.median_ns)
                    .fold(f64::INFINITY, f64::min);
                let mut row = format!(
                    "| {shape} | {} |",
                    ctx.auto_choice.get(shape).map_or("–", String::as_str)
                );
                for &a in algos {
                    match find(a) {
                        Some(r) => {
                            let cell = format!(
                                "{} · {:.1}",
                                fmt_time(r.median_ns),
                                r.gflops().unwrap_or(f64::NAN)
                            );
                            if a != "auto" && r.median_ns == best {
                                let _ = write!(row, " **{cell}** |");
                            } else {
                                let _ = write!(row, " {cell} |");
                            }
                        }
                        None => row.push_str(" – |"),
                    }
                }
                let best_gflops = records
                    .iter()
                    .filter(|r| r.group == group && r.function != "naive")
                    .filter_map(Record::gflops)
                    .fold(0.0, f64::max);
                let _ = write!(row, " {:.0}% |", 100.0 * best_gflops / peak);
                if with_peers {
                    let pm = peers.ms.get(&(threads, shape.clone()));
                    let torch = pm.and_then(|v| if kind == "fwd" { v[0] } else { v[2] });
                    let cell =
                        |v: Option<f64>| v.map_or("–".to_owned(), |ms| format!("{ms:.2} ms"));
                    let _ = write!(row, " {} |", cell(torch));
                    if kind == "fwd" {
                        let _ = write!(row, " {} |", cell(pm.and_then(|v| v[1])));
                    }
                    let ratio = match (torch, find("auto")) {
                        (Some(t), Some(a)) => format!("{:.2}x", t * 1e6 / a.median_ns),
                        _ => "–".to_owned(),
                    };
                    let _ = write!(row, " {ratio} |");
                }
                let _ = writeln!(md, "{row}");
            }
            let _ = writeln!(md);
        }
    }

    if let Some(v) = &ctx.versus {
        md.push_str(&versus_section(v));
    }
    md.push_str(&general_section(&ctx.general));
    if let Some(r) = &ctx.ratios {
        md.push_str(&ratios_section(r));
    }
    md.push_str(&lenet_section(records, &peers.lenet, ctx.threads));

    let others: Vec<&Record> = records
        .iter()
        .filter(|r| !r.group.starts_with("conv_fwd_t") && !r.group.starts_with("conv_bwd_t"))
        .filter(|r| r.group != LENET_GROUP)
        .collect();
    if !others.is_empty() {
        let _ = writeln!(md, "## Other benchmarks\n");
        let _ = writeln!(md, "| benchmark | median | GFLOP/s (if the bench counts FLOPs) |");
        let _ = writeln!(md, "|---|---|---|");
        for r in others {
            let g = r.gflops().map_or("–".to_owned(), |g| format!("{g:.1}"));
            let _ =
                writeln!(md, "| {}/{} | {} | {g} |", r.group, r.function, fmt_time(r.median_ns));
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "![GFLOP/s by shape and algorithm](bench-chart.svg)\n");

    fs::create_dir_all(docs)?;
    let md_path = docs.join("benchmarks.md");
    let svg_path = docs.join("bench-chart.svg");
    fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
    fs::write(&svg_path, chart(records, &ctx.algos))
        .with_context(|| format!("writing {}", svg_path.display()))?;
    Ok((md_path, svg_path))
}

/// A grouped bar chart of forward GFLOP/s (1 thread) by shape and algorithm, as SVG: one bar
/// per algorithm of `algos` but the `naive` reference, `auto` last in black.
fn chart(records: &[Record], algos: &[&str]) -> String {
    const PALETTE: [&str; 8] =
        ["#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#76b7b2", "#edc948", "#b07aa1", "#9c755f"];
    let mut bars: Vec<(&str, &str)> = algos
        .iter()
        .filter(|&&a| a != "auto" && a != "naive")
        .zip(PALETTE.iter().cycle())
        .map(|(&a, &c)| (a, c))
        .collect();
    if algos.contains(&"auto") {
        bars.push(("auto", "#222222"));
    }
    let prefix = "conv_fwd_t1/";
    let shapes = conv_shapes(records, prefix);
    let value = |shape: &str, algo: &str| {
        records
            .iter()
            .find(|r| r.group == format!("{prefix}{shape}") && r.function == algo)
            .and_then(Record::gflops)
    };
    let max = shapes
        .iter()
        .flat_map(|s| bars.iter().filter_map(move |(a, _)| value(s, a)))
        .fold(1.0, f64::max);
    let top = (max / 20.0).ceil() * 20.0;
    let (w, h, left, bottom, plot_h) = (980.0, 420.0, 60.0, 70.0, 300.0);
    let group_w = (w - left - 20.0) / shapes.len().max(1) as f64;
    let bar_w = group_w * 0.8 / bars.len() as f64;
    let y = |v: f64| h - bottom - plot_h * v / top;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="15">conv2d forward, 1 thread: GFLOP/s by shape and algorithm</text>"#,
        w / 2.0
    );
    let mut tick = 0.0;
    while tick <= top {
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{tick:.0}</text>"##,
            w - 20.0,
            left - 6.0,
            y(tick) + 4.0,
            y = y(tick)
        );
        tick += 20.0;
    }
    for (i, shape) in shapes.iter().enumerate() {
        let x0 = left + i as f64 * group_w + group_w * 0.1;
        for (j, (algo, color)) in bars.iter().enumerate() {
            if let Some(v) = value(shape, algo) {
                let x = x0 + j as f64 * bar_w;
                let _ = writeln!(
                    s,
                    r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{shape} {algo}: {v:.1} GFLOP/s</title></rect>"#,
                    y(v),
                    bar_w * 0.9,
                    h - bottom - y(v)
                );
            }
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{shape}</text>"#,
            x0 + group_w * 0.4,
            h - bottom + 16.0
        );
    }
    for (j, (algo, color)) in bars.iter().enumerate() {
        let x = left + j as f64 * 120.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{color}"/><text x="{}" y="{}">{algo}</text>"#,
            h - 30.0,
            x + 16.0,
            h - 20.0
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests;
