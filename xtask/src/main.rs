//! `cargo xtask` — the workflow of the convkit workspace, in Rust rather than shell.
//!
//! ```text
//! cargo xtask test-all [--no-release]     every check CI runs, with a summary line
//! cargo xtask bench [--quick] [FILTER] [--compare-peers[=DIR]]
//!                                         the criterion benches of every crate, then the
//!                                         report docs/benchmarks.md
//! cargo xtask train [-- ARGS]             train LeNet-5 (ARGS go to `lenet train`)
//! ```
//!
//! The alias lives in `.cargo/config.toml`. The task finds the repository root from its own
//! manifest, runs `$CARGO` (the cargo that invoked it) and prints each command before running it.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};

mod probe;
mod report;

const USAGE: &str = "\
usage: cargo xtask <task> [options]

tasks:
  test-all [--no-release]   fmt check, clippy (-D warnings), tests (debug, then release),
                            tests with CONVKIT_SIMD=off (and =avx2 on an AVX-512 CPU),
                            rustdoc (-D warnings); prints 'test-all: N passed, M failed'
                            and fails if any step failed.
                            --no-release skips the release-mode test steps.
  bench [--quick] [FILTER] [--compare-peers[=DIR]] [--python PY] [--no-report]
                            measure this machine's FMA peak, run the criterion benches of
                            every crate (FILTER selects benchmarks by name, e.g.
                            'conv_fwd_t1/res3x3'), then write docs/benchmarks.md and
                            docs/bench-chart.svg from criterion's estimates.
                            --quick: criterion's quick mode, each benchmark capped at 0.5 s
                            (the benches read CONVKIT_BENCH_QUICK=1) and the naive conv only
                            on shapes under 20 MFLOP.
                            --compare-peers also runs PyTorch/ONNX Runtime (conv_bench.py and
                            lenet_torch.py from DIR, $CONVKIT_PEERS_DIR or ../shared/peers) with
                            PY ($CONVKIT_PEERS_PYTHON or python3) and adds ratio columns measured
                            in the same run, and times convkit and PyTorch interleaved, shape by
                            shape (the versus bench of convkit-conv, with PY).
  peak                      measure this machine's f32 FMA throughput (the bench report's peak).
  train [-- ARGS]           train LeNet-5 on Fashion-MNIST (installing Debian's
                            dataset-fashion-mnist with apt-get when no data is found);
                            ARGS go to `lenet train` and override the defaults.
  help                      this text.";

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode> {
    let mut args = env::args().skip(1);
    let task = args.next().unwrap_or_else(|| "help".to_owned());
    let rest: Vec<String> = args.collect();
    match task.as_str() {
        "test-all" => test_all(&rest),
        "bench" => bench(&rest),
        "train" => train(&rest),
        "peak" => {
            let threads = std::thread::available_parallelism().map_or(1, usize::from);
            let p = probe::measure(threads);
            println!(
                "f32 FMA peak: {:.1} GFLOP/s (1 thread), {:.1} GFLOP/s ({threads} threads), {}",
                p.one_thread, p.all_threads, p.kind
            );
            if let Some((one, all)) = p.avx512 {
                println!(
                    "f32 FMA peak: {one:.1} GFLOP/s (1 thread), {all:.1} GFLOP/s ({threads} threads), AVX-512F, 16 f32 lanes"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unknown task '{other}'\n\n{USAGE}"),
    }
}

/// The repository root: the parent of this crate's manifest directory.
fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The cargo that invoked us (so `cargo +toolchain xtask` stays on that toolchain).
fn cargo() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// A command running the cargo that invoked us, without the variables `cargo run` set for
/// this binary (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, …). Build scripts that watch them
/// (ring's, through `rerun-if-env-changed`) would otherwise see them change between a plain
/// `cargo bench` and one started from here, and rebuild — with the bench profile's LTO, minutes
/// of compiling before `cargo xtask bench` measures anything.
fn cargo_command() -> Command {
    let mut cmd = Command::new(cargo());
    for (key, _) in env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || matches!(k, "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE")
        {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// One step of a task: a cargo command with extra environment variables.
struct Step {
    name: &'static str,
    args: Vec<String>,
    envs: Vec<(&'static str, String)>,
}

impl Step {
    fn new(name: &'static str, args: &[&'static str]) -> Self {
        Self { name, args: args.iter().map(|a| (*a).to_owned()).collect(), envs: Vec::new() }
    }

    fn env(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.envs.push((key, value.into()));
        self
    }

    /// Runs the step in the repository root, printing the command line first.
    fn run(&self) -> Result<bool> {
        let shown_env: String = self.envs.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        println!("\n==> [{}] {shown_env}cargo {}", self.name, self.args.join(" "));
        let start = Instant::now();
        let status = cargo_command()
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .current_dir(root())
            .status()
            .with_context(|| format!("could not start cargo for step '{}'", self.name))?;
        let secs = start.elapsed().as_secs_f64();
        let ok = status.success();
        println!("<== [{}] {} in {secs:.1} s", self.name, if ok { "ok" } else { "FAILED" });
        Ok(ok)
    }
}

/// The optimized test pass: the numeric crates and the packed LeNet-5 of convkit-models.
const RELEASE_TESTS: &[&str] =
    &["test", "--release", "-p", "convkit-tensor", "-p", "convkit-conv", "-p", "convkit-models"];

fn test_all(args: &[String]) -> Result<ExitCode> {
    let mut release = true;
    for a in args {
        match a.as_str() {
            "--no-release" => release = false,
            other => bail!("test-all: unknown option '{other}'\n\n{USAGE}"),
        }
    }
    let mut steps = vec![
        Step::new("fmt", &["fmt", "--all", "--", "--check"]),
        Step::new("clippy", &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]),
        Step::new("test (debug)", &["test", "--workspace"]),
    ];
    if release {
        // The numeric suites again with optimizations: the kernels take other code paths
        // (vectorized loops, fused multiply-adds) and the property tests run more cases. The
        // same package set as the two passes below, which then reuse this build.
        steps.push(Step::new("test (release)", RELEASE_TESTS));
        // The portable fallback of every SIMD kernel, which an AVX2 machine never takes, and
        // LeNet-5 trained on it. The same package set again: a smaller one would change the
        // unified features and rebuild (two minutes, against 15 s to run these tests).
        steps.push(
            Step::new("test (release, CONVKIT_SIMD=off)", RELEASE_TESTS).env("CONVKIT_SIMD", "off"),
        );
        // On an AVX-512 machine the default run takes the AVX-512 level; the AVX2 level gets
        // its own pass through the kernels and the packed LeNet-5.
        if avx512_cpu() {
            steps.push(
                Step::new("test (release, CONVKIT_SIMD=avx2)", RELEASE_TESTS)
                    .env("CONVKIT_SIMD", "avx2"),
            );
        }
    }
    steps.push(
        Step::new("doc", &["doc", "--workspace", "--no-deps"]).env("RUSTDOCFLAGS", "-D warnings"),
    );

    let start = Instant::now();
    let mut failed = Vec::new();
    for step in &steps {
        if !step.run()? {
            failed.push(step.name);
        }
    }
    if !library_dependencies()? {
        failed.push("library dependencies");
    }
    let passed = steps.len() + 1 - failed.len();
    println!("\ntest-all finished in {:.0} s", start.elapsed().as_secs_f64());
    if !failed.is_empty() {
        println!("failed steps: {}", failed.join(", "));
    }
    println!("test-all: {passed} passed, {} failed", failed.len());
    Ok(if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Most crates a program depending on one library crate may compile (normal dependencies,
/// the crate itself included): the tools' weight belongs in `convkit-cli`.
const LIBRARY_CRATE_LIMIT: usize = 60;

/// Counts the distinct crates `cargo tree -e normal` lists for each library crate and fails
/// when one exceeds [`LIBRARY_CRATE_LIMIT`].
fn library_dependencies() -> Result<bool> {
    println!(
        "\n==> [library dependencies] cargo tree -e normal, at most {LIBRARY_CRATE_LIMIT} crates"
    );
    let mut ok = true;
    for krate in [
        "convkit-tensor",
        "convkit-conv",
        "convkit-autograd",
        "convkit-nn",
        "convkit-onnx",
        "convkit-data",
        "convkit-train",
        "convkit-models",
    ] {
        let out = cargo_command()
            .args(["tree", "-p", krate, "-e", "normal", "--prefix", "none"])
            .current_dir(root())
            .output()
            .context("could not start cargo tree")?;
        if !out.status.success() {
            println!("cargo tree -p {krate} failed:\n{}", String::from_utf8_lossy(&out.stderr));
            ok = false;
            continue;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let crates: std::collections::BTreeSet<&str> =
            text.lines().map(|l| l.trim_end_matches(" (*)")).filter(|l| !l.is_empty()).collect();
        let within = crates.len() <= LIBRARY_CRATE_LIMIT;
        println!("    {krate}: {} crates{}", crates.len(), if within { "" } else { "  TOO MANY" });
        ok &= within;
    }
    println!("<== [library dependencies] {}", if ok { "ok" } else { "FAILED" });
    Ok(ok)
}

fn bench(args: &[String]) -> Result<ExitCode> {
    let mut quick = false;
    let mut filter = None;
    let mut peers_dir: Option<PathBuf> = None;
    let mut python = env::var("CONVKIT_PEERS_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let mut write_report = true;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--no-report" => write_report = false,
            "--compare-peers" => peers_dir = Some(default_peers_dir()),
            s if s.starts_with("--compare-peers=") => {
                peers_dir = Some(PathBuf::from(&s["--compare-peers=".len()..]));
            }
            "--python" => {
                python = it.next().context("bench: --python needs a path")?.clone();
            }
            s if s.starts_with('-') => bail!("bench: unknown option '{s}'\n\n{USAGE}"),
            s if filter.is_none() => filter = Some(s.to_owned()),
            s => bail!("bench: only one FILTER is accepted, got a second: '{s}'"),
        }
    }
    let start = Instant::now();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    println!("==> [probe] f32 FMA peak, 1 and {threads} threads");
    let peak = probe::measure(threads);
    println!(
        "<== [probe] {:.1} GFLOP/s (1 thread), {:.1} GFLOP/s ({threads} threads), {}",
        peak.one_thread, peak.all_threads, peak.kind
    );
    if let Some((one, all)) = peak.avx512 {
        println!(
            "<== [probe] {one:.1} GFLOP/s (1 thread), {all:.1} GFLOP/s ({threads} threads), AVX-512F"
        );
    }

    // `--bench '*'` selects only the `[[bench]]` targets (criterion); `--benches` would also
    // run the libraries' unit tests in bench mode, whose libtest harness rejects criterion's
    // options such as `--quick`.
    let mut cargo_args = vec!["bench", "--workspace", "--bench", "*", "--"];
    if quick {
        cargo_args.push("--quick");
    }
    // The report lists what this run measures: criterion results written before it (other
    // filters, or benches quick mode skips) are left out.
    let bench_start = std::time::SystemTime::now();
    let ratios_path = root().join("target/ratios.json");
    // A stale file from an earlier run must not be reported as this run's.
    let _ = std::fs::remove_file(&ratios_path);
    let versus_path = root().join("target/versus.json");
    let _ = std::fs::remove_file(&versus_path);
    // The tables of the other interleaved benches (zoo, batch norm), one file each.
    let general_dir = root().join("target/versus-md");
    let _ = std::fs::remove_dir_all(&general_dir);
    let mut step = Step::new("bench", &cargo_args)
        .env("CONVKIT_RATIOS_OUT", ratios_path.display().to_string());
    if peers_dir.is_some() {
        // `benches/versus.rs` times PyTorch beside convkit, interleaved, with this Python.
        step = step
            .env("CONVKIT_VERSUS_PYTHON", python.clone())
            .env("CONVKIT_VERSUS_OUT", versus_path.display().to_string())
            .env("CONVKIT_VERSUS_MD_DIR", general_dir.display().to_string());
    }
    if quick {
        // The benches read this to cap each measurement at 0.5 s (criterion's quick mode stops
        // there) and to skip the naive convolution on shapes above 20 MFLOP.
        step = step.env(QUICK_ENV, "1");
    }
    if let Some(f) = &filter {
        step.args.push(f.clone());
    }
    if !step.run()? {
        return Ok(ExitCode::FAILURE);
    }

    let mut peers = report::Peers::default();
    if let Some(dir) = &peers_dir {
        let out = root().join("target/peers");
        for t in ["1", "2"] {
            let script = dir.join("conv_bench.py");
            let out_s = out.display().to_string();
            let mut cmd = vec![
                script.display().to_string(),
                "--threads".into(),
                t.into(),
                "--out".into(),
                out_s,
            ];
            if quick {
                cmd.extend(["--rounds".into(), "1".into(), "--reps".into(), "5".into()]);
            }
            println!("\n==> [peers] {python} {}", cmd.join(" "));
            let status =
                Command::new(&python).args(&cmd).current_dir(root()).status().with_context(
                    || format!("could not run {python} (set --python or $CONVKIT_PEERS_PYTHON)"),
                )?;
            if !status.success() {
                bail!(
                    "peers: conv_bench.py --threads {t} failed (is PyTorch importable by {python}?)"
                );
            }
        }
        lenet_peers(dir, &python, &out, bench_threads(), quick)?;
        peers = report::read_peers(&out)?;
    }

    if write_report {
        let records = report::collect(&root().join("target/criterion"), Some(bench_start))?;
        let ctx = report::ReportContext {
            peak,
            auto_choice: auto_choices(),
            machine: machine(),
            command: format!("cargo xtask bench {}", args.join(" ")).trim_end().to_owned(),
            quick,
            threads: bench_threads(),
            ratios: read_json(&ratios_path),
            versus: read_json(&versus_path),
            general: read_tables(&general_dir),
            algos: report::algorithm_names(),
        };
        let (md, svg) = report::write(&root().join("docs"), &records, &peers, &ctx)?;
        println!("\nwrote {} and {} ({} benchmarks)", md.display(), svg.display(), records.len());
    }
    println!("bench finished in {:.0} s", start.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

/// The markdown tables the interleaved benches left in `dir` (`<name>.md`), by name.
fn read_tables(dir: &Path) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut tables: Vec<(String, String)> = entries
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path.file_stem()?.to_str()?.to_owned();
            let text = std::fs::read_to_string(&path).ok()?;
            (path.extension()? == "md").then_some((name, text))
        })
        .collect();
    tables.sort();
    tables
}

/// The JSON a bench wrote to `path`, if it ran and wrote valid JSON.
fn read_json(path: &Path) -> Option<serde_json::Value> {
    std::fs::read_to_string(path).ok().and_then(|t| serde_json::from_str(&t).ok())
}

/// The environment variable `cargo xtask bench --quick` sets for the criterion benches.
const QUICK_ENV: &str = "CONVKIT_BENCH_QUICK";

/// The size of rayon's global pool in the benches: `RAYON_NUM_THREADS` when it is set to a
/// positive number, otherwise every hardware thread.
fn bench_threads() -> usize {
    env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// PyTorch's LeNet-5 on the same number of threads as the `lenet/*` benches:
/// `lenet_torch.py train` for one epoch of Fashion-MNIST (training images/s) and
/// `lenet_torch.py infer` (batch-1 latency, batch-256 images/s), writing their JSON into
/// `out`. Skipped, with a note, when Fashion-MNIST is not installed where the script looks.
fn lenet_peers(dir: &Path, python: &str, out: &Path, threads: usize, quick: bool) -> Result<()> {
    if !has_idx_files(Path::new(DEBIAN_FASHION_DIR)) {
        println!(
            "\npeers: no Fashion-MNIST in {DEBIAN_FASHION_DIR}; the LeNet-5 section has no PyTorch column"
        );
        return Ok(());
    }
    let script = dir.join("lenet_torch.py").display().to_string();
    let (t, out_s) = (threads.to_string(), out.display().to_string());
    let data = DEBIAN_FASHION_DIR.to_owned();
    let mut train = vec![script.clone(), "train".into(), "--name".into(), "fashion".into()];
    train.extend(["--data".into(), data.clone(), "--epochs".into(), "1".into()]);
    train.extend(["--threads".into(), t.clone(), "--out".into(), out_s.clone()]);
    let mut infer = vec![script, "infer".into(), "--data".into(), data];
    infer.extend(["--threads-list".into(), t, "--out".into(), out_s]);
    // The script waits (up to 20–30 s) for other processes to go quiet before it measures:
    // PyTorch's OpenMP threads slow down several times when another process holds a core.
    if quick {
        infer.extend(["--rounds".into(), "1".into(), "--reps".into(), "3".into()]);
    }
    for cmd in [train, infer] {
        println!("\n==> [peers] {python} {}", cmd.join(" "));
        let status = Command::new(python)
            .args(&cmd)
            .current_dir(root())
            .status()
            .with_context(|| format!("could not run {python}"))?;
        if !status.success() {
            bail!("peers: `{}` failed", cmd.join(" "));
        }
    }
    Ok(())
}

fn default_peers_dir() -> PathBuf {
    env::var_os("CONVKIT_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/peers"))
}

/// The algorithm `ConvAlgo::Auto` picks for each suite shape, as printed by the
/// `auto_choice` example of convkit-conv (`shape algo` per line); empty if it cannot run.
fn auto_choices() -> std::collections::BTreeMap<String, String> {
    let out = cargo_command()
        .args(["run", "--release", "--quiet", "-p", "convkit-conv", "--example", "auto_choice"])
        .current_dir(root())
        .output();
    let Ok(out) = out else { return Default::default() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(a, b)| (a.to_owned(), b.trim().to_owned())))
        .collect()
}

/// CPU model and core count, from /proc/cpuinfo where available.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    format!("{cpu}, {threads} hardware threads available to this process, {}", env::consts::ARCH)
}

/// The recipe `cargo xtask train` passes before the user's arguments, which override its
/// options (clap keeps the last value of an option): `lenet train --recipe fashion-mnist`,
/// defined once in `convkit_models::train::Recipe` (Adam, cosine schedule, 15 epochs, random
/// left-right flips; about 91.7% on Fashion-MNIST).
const TRAIN_DEFAULTS: &[&str] = &["--recipe", "fashion-mnist"];

/// The four standard file names of an MNIST-format dataset (each raw or `.gz`).
const IDX_NAMES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// Where Debian's `dataset-fashion-mnist` installs the data.
const DEBIAN_FASHION_DIR: &str = "/usr/share/datasets/fashion-mnist";

fn has_idx_files(dir: &Path) -> bool {
    IDX_NAMES.iter().all(|n| dir.join(n).is_file() || dir.join(format!("{n}.gz")).is_file())
}

/// The value of `--name VALUE` or `--name=VALUE` in `args` (the last one wins, as in clap).
fn arg_value(args: &[String], name: &str) -> Option<String> {
    let mut found = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == name {
            found = it.next().cloned();
        } else if let Some(v) = a.strip_prefix(&format!("{name}=")) {
            found = Some(v.to_owned());
        }
    }
    found
}

/// Runs a command, printing it first; fails when it does.
fn run_cmd(cmd: &mut Command) -> Result<()> {
    let shown: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    println!("==> {}", shown.join(" "));
    let status = cmd.status().with_context(|| format!("could not start {}", shown[0]))?;
    if !status.success() {
        bail!("`{}` failed ({status})", shown.join(" "));
    }
    Ok(())
}

/// Whether we run as root and apt-get exists (then installing a package works).
fn apt_usable() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    root && Command::new("apt-get").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Makes sure `lenet train` will find its data: `--data`, `$CONVKIT_DATA`, `data/<dataset>/`,
/// Debian's Fashion-MNIST — and when none has it, installs `dataset-fashion-mnist` with
/// apt-get (Fashion-MNIST) or downloads with `lenet fetch` (MNIST).
fn ensure_data(args: &[String]) -> Result<()> {
    if arg_value(args, "--data").is_some() || arg_value(args, "--resume").is_some() {
        return Ok(());
    }
    let dataset = arg_value(args, "--dataset").unwrap_or_else(|| "fashion-mnist".to_owned());
    let mut places: Vec<PathBuf> = Vec::new();
    if let Some(d) = env::var_os("CONVKIT_DATA") {
        places.push(PathBuf::from(d));
    }
    places.push(root().join("data").join(&dataset));
    let fashion = dataset == "fashion-mnist";
    if fashion {
        places.push(PathBuf::from(DEBIAN_FASHION_DIR));
    }
    if let Some(found) = places.iter().find(|p| has_idx_files(p)) {
        println!("train: {dataset} found in {}", found.display());
        return Ok(());
    }
    if fashion {
        if !apt_usable() {
            bail!(
                "train: Fashion-MNIST not found (looked in {}); install it with                  `sudo apt-get install dataset-fashion-mnist`, or pass `-- --data DIR`",
                places.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            );
        }
        println!(
            "train: Fashion-MNIST not found; installing Debian's dataset-fashion-mnist with apt-get"
        );
        run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "dataset-fashion-mnist"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        if !has_idx_files(Path::new(DEBIAN_FASHION_DIR)) {
            bail!(
                "train: dataset-fashion-mnist is installed but {DEBIAN_FASHION_DIR} lacks the IDX files"
            );
        }
        return Ok(());
    }
    println!("train: {dataset} not found; downloading it into data/{dataset}/");
    run_cmd(
        cargo_command()
            .args(["run", "--release", "-p", "convkit-cli", "--bin", "lenet", "--", "fetch"])
            .arg(&dataset)
            .current_dir(root()),
    )
}

fn train(args: &[String]) -> Result<ExitCode> {
    // `cargo xtask train -- ARGS` and `cargo xtask train ARGS` mean the same.
    let args: Vec<String> = args.iter().skip_while(|a| a.as_str() == "--").cloned().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "cargo xtask train [-- LENET_TRAIN_ARGS]\n\nRuns `lenet train` with the defaults {}\n             and --out runs/lenet-<dataset>.safetensors; later arguments override them.\n",
            TRAIN_DEFAULTS.join(" ")
        );
    }
    ensure_data(&args)?;
    let dataset = arg_value(&args, "--dataset").unwrap_or_else(|| "fashion-mnist".to_owned());
    let out = match arg_value(&args, "--out") {
        Some(o) => PathBuf::from(o),
        None => {
            let dir = root().join("runs");
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir.join(format!("lenet-{dataset}.safetensors"))
        }
    };
    let mut cmd = cargo_command();
    cmd.args(["run", "--release", "-p", "convkit-cli", "--bin", "lenet", "--", "train"])
        .args(TRAIN_DEFAULTS)
        .arg("--out")
        .arg(&out)
        .args(&args)
        .current_dir(root());
    run_cmd(&mut cmd)?;
    let out = if out.is_absolute() { out } else { root().join(out) };
    println!("\ntrain: the checkpoint is {}", out.display());
    println!(
        "train: evaluate it with `cargo run --release -p convkit-cli --bin lenet -- eval --weights {}`",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Whether this CPU reports AVX-512F (and VL), the features of convkit's AVX-512 level.
fn avx512_cpu() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn arg_value_takes_the_last_occurrence_in_both_spellings() {
        let args: Vec<String> =
            ["--epochs", "3", "--data=/a", "--dataset", "mnist", "--data", "/b"]
                .map(String::from)
                .to_vec();
        assert_eq!(arg_value(&args, "--data").as_deref(), Some("/b"));
        assert_eq!(arg_value(&args, "--dataset").as_deref(), Some("mnist"));
        assert_eq!(arg_value(&args, "--out"), None);
    }

    #[test]
    fn idx_files_are_found_raw_or_gzipped() {
        let dir = env::temp_dir().join(format!("xtask-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!has_idx_files(&dir));
        for (i, n) in IDX_NAMES.iter().enumerate() {
            let name = if i % 2 == 0 { format!("{n}.gz") } else { (*n).to_owned() };
            std::fs::write(dir.join(name), b"").unwrap();
        }
        assert!(has_idx_files(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
