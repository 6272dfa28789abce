//! Prints the algorithm `ConvAlgo::Auto` runs for each shape of the benchmark suite, one
//! `shape algorithm` pair per line (read by `cargo xtask bench` for its report).
//!
//! `cargo run --release -p convkit-conv --example auto_choice`

use convkit_conv::resolve;
use convkit_conv::suite::SHAPES;
use convkit_conv::{ConvAlgo, simd};

fn main() {
    eprintln!("SIMD: {}", simd::active().name());
    for shape in &SHAPES {
        match shape.geometry().and_then(|g| resolve(ConvAlgo::Auto, &g)) {
            Ok(algo) => println!("{} {}", shape.name, algo.name()),
            Err(e) => eprintln!("{}: {e}", shape.name),
        }
    }
}
