//! `CONVKIT_CONV_ALGO` end to end. The variable is read once per process, so the test re-runs
//! this binary with the variable set and checks what the child saw.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use convkit_conv::{Conv2dParams, ConvAlgo, ConvGeometry, conv2d_forward, select};

const CHILD: &str = "CONVKIT_TEST_ENV_CHILD";

fn forward(g: &ConvGeometry, algo: ConvAlgo) -> ConvAlgo {
    let x = vec![1.0; g.input_len()];
    let w = vec![1.0; g.weight_len()];
    let mut out = vec![0.0; g.output_len()];
    let ran = conv2d_forward(g, &x, &w, None, &mut out, algo).unwrap();
    assert_eq!(out, vec![18.0; g.output_len()]);
    ran
}

#[test]
fn env_forces_auto_only() {
    let g = ConvGeometry::new([1, 2, 5, 5], [2, 2, 3, 3], Conv2dParams::default()).unwrap();
    match std::env::var(CHILD).as_deref() {
        Ok("naive") => {
            assert_eq!(forward(&g, ConvAlgo::Auto), ConvAlgo::Naive);
            // An explicit request is never overridden.
            assert_eq!(forward(&g, ConvAlgo::Im2col), ConvAlgo::Im2col);
        }
        Ok("bogus") => {
            // Ignored (with a warning printed once, checked by the parent).
            assert_eq!(forward(&g, ConvAlgo::Auto), select(&g));
            assert_eq!(forward(&g, ConvAlgo::Auto), select(&g));
        }
        Ok(other) => panic!("unexpected child mode {other}"),
        Err(_) => {
            let exe = std::env::current_exe().unwrap();
            for mode in ["naive", "bogus"] {
                let out = Command::new(&exe)
                    .args(["--exact", "env_forces_auto_only", "--test-threads=1", "--nocapture"])
                    .env(CHILD, mode)
                    .env("CONVKIT_CONV_ALGO", mode)
                    .output()
                    .unwrap();
                let stderr = String::from_utf8_lossy(&out.stderr);
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert!(out.status.success(), "child {mode} failed:\n{stdout}\n{stderr}");
                assert!(stdout.contains("1 passed"), "child {mode} ran no test:\n{stdout}");
                let warnings = stderr.matches("warning: CONVKIT_CONV_ALGO").count();
                assert_eq!(warnings, usize::from(mode == "bogus"), "{mode}: {stderr}");
            }
        }
    }
}
