//! What the interleaved comparisons of `lenet.rs` and `zoo.rs` share: the PyTorch twins
//! (`scripts/zoo_twin.py --serve`) and one row of their tables.

use std::path::Path;
use std::time::Duration;

use convkit_conv::suite::{Interleaved, PeerTimer, interleaved, min_ms_after_warm_up};

/// The head of a comparison table; [`Twin::row`] writes its rows.
pub const TABLE_HEAD: &str = "| model | op | convkit ms | PyTorch ms | convkit images/s | \
                              PyTorch images/s | ratio |\n|---|---|---|---|---|---|---|\n";

/// Untimed calls before each timing, on both sides.
const WARM: Duration = Duration::from_millis(40);

/// Idle time before each timing, so that the other side's threads have gone to sleep.
const SETTLE: Duration = Duration::from_millis(100);

/// The PyTorch twins, running with as many threads as rayon's pool.
pub struct Twin {
    pub peer: PeerTimer,
    pub threads: usize,
    /// Rounds of each comparison: 5, or 2 with `CONVKIT_BENCH_QUICK=1`.
    pub rounds: usize,
}

impl Twin {
    /// The twins with the Python of `CONVKIT_VERSUS_PYTHON`; `None` without it, or (reported
    /// on stderr, prefixed by `bench`) when the script does not start.
    pub fn spawn(bench: &str) -> Option<Twin> {
        let python = std::env::var("CONVKIT_VERSUS_PYTHON").ok()?;
        let quick = std::env::var_os("CONVKIT_BENCH_QUICK").is_some_and(|v| v == "1");
        let threads = rayon::current_num_threads();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/zoo_twin.py");
        let script = script.to_string_lossy();
        match PeerTimer::spawn(&python, &[&script, "--serve", &threads.to_string()]) {
            Ok(peer) => Some(Twin { peer, threads, rounds: if quick { 2 } else { 5 } }),
            Err(e) => {
                eprintln!("{bench}: {e}");
                None
            }
        }
    }

    /// Times `f` (convkit's `op` of `model` at `batch`) against the twin's `peer_op`,
    /// interleaved, each side the fastest of `calls` calls, and returns the table row.
    pub fn row(
        &mut self,
        model: &str,
        (op, peer_op): (&str, &str),
        batch: usize,
        calls: usize,
        f: &mut dyn FnMut(),
    ) -> Result<String, String> {
        let req = format!("{peer_op} {model} {batch} {calls} {}", WARM.as_millis());
        let peer = &mut self.peer;
        let Interleaved { ours_ms: a, theirs_ms: b, ratio } = interleaved(
            self.rounds,
            SETTLE,
            || min_ms_after_warm_up(calls, WARM, &mut *f),
            || peer.time(&req),
        )?;
        let per_s = |ms: f64| batch as f64 / ms * 1e3;
        Ok(format!(
            "| {model} | {op}_b{batch} | {a:.3} | {b:.3} | {:.0} | {:.0} | {ratio:.2} |\n",
            per_s(a),
            per_s(b)
        ))
    }
}
