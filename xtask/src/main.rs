//! `cargo xtask` — the workflow of the convkit workspace, in Rust rather than shell.
//!
//! ```text
//! cargo xtask test-all [--no-release]     every check CI runs, with a summary line
//! cargo xtask bench [--quick] [FILTER]    the criterion benches of every crate
//! cargo xtask train [-- ARGS]             train LeNet-5 (lands with convkit-models)
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

const USAGE: &str = "\
usage: cargo xtask <task> [options]

tasks:
  test-all [--no-release]   fmt check, clippy (-D warnings), tests (debug, then release),
                            tests with CONVKIT_SIMD=off, rustdoc (-D warnings); prints
                            'test-all: N passed, M failed' and fails if any step failed.
                            --no-release skips the two release-mode test steps.
  bench [--quick] [FILTER]  run the criterion benches of every crate (FILTER selects
                            benchmarks by name, e.g. 'matmul/512').
  train [-- ARGS]           train LeNet-5 (available once convkit-models lands).
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

/// One step of a task: a cargo command with extra environment variables.
struct Step {
    name: &'static str,
    args: Vec<String>,
    envs: Vec<(&'static str, &'static str)>,
}

impl Step {
    fn new(name: &'static str, args: &[&'static str]) -> Self {
        Self { name, args: args.iter().map(|a| (*a).to_owned()).collect(), envs: Vec::new() }
    }

    fn env(mut self, key: &'static str, value: &'static str) -> Self {
        self.envs.push((key, value));
        self
    }

    /// Runs the step in the repository root, printing the command line first.
    fn run(&self) -> Result<bool> {
        let shown_env: String = self.envs.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        println!("\n==> [{}] {shown_env}cargo {}", self.name, self.args.join(" "));
        let start = Instant::now();
        let status = Command::new(cargo())
            .args(&self.args)
            .envs(self.envs.iter().copied())
            .current_dir(root())
            .status()
            .with_context(|| format!("could not start cargo for step '{}'", self.name))?;
        let secs = start.elapsed().as_secs_f64();
        let ok = status.success();
        println!("<== [{}] {} in {secs:.1} s", self.name, if ok { "ok" } else { "FAILED" });
        Ok(ok)
    }
}

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
        // (vectorized loops, fused multiply-adds) and the property tests run more cases.
        steps.push(Step::new(
            "test (release)",
            &["test", "--release", "-p", "convkit-tensor", "-p", "convkit-conv"],
        ));
        // The portable fallback of every SIMD kernel, which an AVX2 machine never takes.
        steps.push(
            Step::new(
                "test (release, CONVKIT_SIMD=off)",
                &["test", "--release", "-p", "convkit-conv"],
            )
            .env("CONVKIT_SIMD", "off"),
        );
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
    let passed = steps.len() - failed.len();
    println!("\ntest-all finished in {:.0} s", start.elapsed().as_secs_f64());
    if !failed.is_empty() {
        println!("failed steps: {}", failed.join(", "));
    }
    println!("test-all: {passed} passed, {} failed", failed.len());
    Ok(if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn bench(args: &[String]) -> Result<ExitCode> {
    let mut quick = false;
    let mut filter = None;
    for a in args {
        match a.as_str() {
            "--quick" => quick = true,
            s if s.starts_with('-') => bail!("bench: unknown option '{s}'\n\n{USAGE}"),
            s if filter.is_none() => filter = Some(s),
            s => bail!("bench: only one FILTER is accepted, got a second: '{s}'"),
        }
    }
    // `--benches` runs only the criterion targets; the libtest harness of the library targets
    // would reject criterion's options.
    let mut cargo_args = vec!["bench", "--workspace", "--benches", "--"];
    if quick {
        cargo_args.push("--quick");
    }
    let mut step = Step::new("bench", &cargo_args);
    if let Some(f) = filter {
        step.args.push(f.to_owned());
    }
    Ok(if step.run()? { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn train(_args: &[String]) -> Result<ExitCode> {
    bail!(
        "train: LeNet-5 training arrives with the convkit-models crate; \
         until then the main job is `cargo xtask bench --quick`"
    )
}
