//! Tests of the report: number formats, the LeNet-5 and conv tables, the peer sections and
//! the chart, on records made up in place.

#![allow(clippy::unwrap_used)]

use super::*;

fn rec(function: &str, median_ns: f64, elements: f64) -> Record {
    Record {
        group: LENET_GROUP.to_owned(),
        function: function.to_owned(),
        median_ns,
        elements: Some(elements),
    }
}

#[test]
fn counts_get_thousands_separators() {
    assert_eq!(fmt_count(0.4), "0");
    assert_eq!(fmt_count(999.6), "1,000");
    assert_eq!(fmt_count(12_345.6), "12,346");
    assert_eq!(fmt_count(1_234_567.0), "1,234,567");
}

#[test]
fn median_of_odd_even_and_empty() {
    assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
    assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
    assert_eq!(median(Vec::new()), None);
}

#[test]
fn lenet_peer_is_read_from_the_scripts_json() {
    let train = serde_json::json!({"median_train_img_s": 6517.0, "env": {"threads": 2}});
    let infer = serde_json::json!({"runs": {"2t": {
        "b1_latency_us": [{"median": 420.0}, {"median": 440.0}],
        "b256_throughput": [{"img_s_median": 40000.0}],
    }}});
    let p = parse_lenet_peer(Some(&train), Some(&infer));
    assert_eq!(p.train_images_per_sec, Some(6517.0));
    assert_eq!(p.train_threads, Some(2));
    assert_eq!(p.infer_threads, Some(2));
    assert_eq!(p.b1_latency_us, Some(430.0));
    assert_eq!(p.b256_images_per_sec, Some(40000.0));
    assert!(parse_lenet_peer(None, None).is_empty());
}

#[test]
fn lenet_section_converts_medians_to_images_per_second_and_ratios() {
    // 64 images in 8 ms: 8,000 images/s; 256 in 6.4 ms: 40,000 images/s.
    let records = vec![
        rec(LENET_TRAIN, 8e6, 64.0),
        rec(LENET_B1, 200e3, 1.0),
        rec(LENET_B256, 6.4e6, 256.0),
        Record { group: "other".into(), function: "x".into(), median_ns: 1.0, elements: None },
    ];
    let md = lenet_section(&records, &LenetPeer::default(), 2);
    assert!(md.starts_with("## LeNet-5, 2 threads"), "{md}");
    assert!(md.contains("| training, batch 64 (images/s) | 8,000 (8.00 ms per step) |"), "{md}");
    assert!(md.contains("| inference, batch 1 (latency) | 200.0 µs |"), "{md}");
    assert!(md.contains("| inference, batch 256 (images/s) | 40,000 |"), "{md}");
    assert!(!md.contains("PyTorch"), "{md}");

    let peer = LenetPeer {
        train_threads: Some(2),
        train_images_per_sec: Some(4000.0),
        infer_threads: Some(2),
        b1_latency_us: Some(400.0),
        b256_images_per_sec: None,
    };
    let md = lenet_section(&records, &peer, 2);
    assert!(
        md.contains("| training, batch 64 (images/s) | 8,000 (8.00 ms per step) | 4,000 | 2.00x |"),
        "{md}"
    );
    assert!(md.contains("| inference, batch 1 (latency) | 200.0 µs | 400.0 µs | 2.00x |"), "{md}");
    assert!(md.contains("| inference, batch 256 (images/s) | 40,000 | – | – |"), "{md}");
}

#[test]
fn collect_skips_results_older_than_the_run() {
    let dir = std::env::temp_dir().join(format!("xtask-criterion-{}", std::process::id()));
    let new = dir.join("lenet/infer_b1/new");
    fs::create_dir_all(&new).unwrap();
    let bench = r#"{"group_id":"lenet","function_id":"infer_b1","throughput":{"Elements":1}}"#;
    let by_param = dir.join("matmul_square/512/new");
    fs::create_dir_all(&by_param).unwrap();
    let param = r#"{"group_id":"matmul_square","function_id":null,"value_str":"512"}"#;
    fs::write(by_param.join("benchmark.json"), param).unwrap();
    fs::write(by_param.join("estimates.json"), r#"{"median":{"point_estimate":5.0}}"#).unwrap();
    fs::write(new.join("benchmark.json"), bench).unwrap();
    fs::write(new.join("estimates.json"), r#"{"median":{"point_estimate":2000.0}}"#).unwrap();
    let all = collect(&dir, None).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!((all[0].median_ns, all[0].elements), (2000.0, Some(1.0)));
    assert_eq!((all[1].group.as_str(), all[1].function.as_str()), ("matmul_square", "512"));
    let later = SystemTime::now() + std::time::Duration::from_secs(3600);
    assert!(collect(&dir, Some(later)).unwrap().is_empty());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn no_lenet_records_no_section() {
    assert_eq!(lenet_section(&[], &LenetPeer::default(), 2), "");
}

#[test]
fn ratios_section_lists_each_shape() {
    let v: Value = serde_json::from_str(
        r#"{"rounds": 15, "shapes": [{"name": "vgg3x3_14", "fwd_t1_ms": 2.2,
            "bwd_t1_ms": 4.62, "fwd_t2_ms": 1.3, "bwd_over_fwd": 2.1, "t1_over_t2": 1.7}]}"#,
    )
    .unwrap();
    let md = ratios_section(&v);
    assert!(md.contains("In each of 15 rounds"), "{md}");
    assert!(md.contains("| vgg3x3_14 | 2.20 ms | 4.62 ms | 2.10x | 1.30 ms | 1.70x |"), "{md}");
    assert_eq!(ratios_section(&Value::Null), "");
}

#[test]
fn versus_section_lists_each_shape_and_timing() {
    let torch_only: Value = serde_json::from_str(
        r#"{"rounds": 9, "torch": "2.15.0", "shapes": [{"name": "pointwise",
            "fwd_t1": {"ours_ms": 2.5, "torch_ms": 2.75, "speedup": 1.1},
            "fwd_t2": {"ours_ms": 1.3, "torch_ms": 1.3, "speedup": 1.0},
            "bwd_t1": {"ours_ms": 5.2, "torch_ms": 4.16, "speedup": 0.8}}]}"#,
    )
    .unwrap();
    let md = versus_section(&torch_only);
    assert!(md.contains("PyTorch 2.15.0") && md.contains("In each of 9 rounds"), "{md}");
    assert!(
        md.contains(
            "| pointwise | 2.50 ms / 2.75 ms | 1.10x | 1.30 ms / 1.30 ms | 1.00x | 5.20 ms / 4.16 ms | 0.80x | – / – | – |"
        ),
        "{md}"
    );
    let with_ort: Value = serde_json::from_str(
        r#"{"rounds": 3, "torch": "2.9.1", "torch_isa": "AVX512", "ort": "1.23.2",
            "convkit_isa": "avx512", "shapes": [{"name": "strided",
            "fwd_t1": {"ours_ms": 1.0, "torch_ms": 1.5, "speedup": 1.5, "prepared_ms": 1.0, "ort_ms": 1.2,
                       "speedup_ort": 1.2, "speedup_best": 1.2},
            "fwd_t2": {"ours_ms": 0.5, "torch_ms": 0.6, "speedup": 1.2, "prepared_ms": 0.5, "ort_ms": 0.7,
                       "speedup_ort": 1.4, "speedup_best": 1.2},
            "bwd_t1": {"ours_ms": 2.0, "torch_ms": 3.0, "speedup": 1.5},
            "bwd_t2": {"ours_ms": 1.0, "torch_ms": 1.3, "speedup": 1.3}}]}"#,
    )
    .unwrap();
    let md = versus_section(&with_ort);
    assert!(md.contains("ONNX Runtime 1.23.2") && md.contains("SIMD level avx512"), "{md}");
    assert!(md.contains("CPU capability AVX512"), "{md}");
    assert!(
        md.contains(
            "| strided | 1.00 ms / 1.50 ms | 1.50x | 1.00 ms / 1.20 ms | 1.20x | **1.20x** | 500.0 µs / 600.0 µs | 1.20x | 500.0 µs / 700.0 µs | 1.40x | **1.20x** |"
        ),
        "{md}"
    );
    assert!(
        md.contains("| strided | 2.00 ms / 3.00 ms | 1.50x | 1.00 ms / 1.30 ms | 1.30x |"),
        "{md}"
    );
    assert_eq!(versus_section(&Value::Null), "");
}

#[test]
fn a_new_algorithm_name_is_the_only_edit_the_report_needs() {
    // As if `ConvAlgo::ALL` gained a variant named `fake`: its bench records show up as a
    // table column and a chart bar with no other change to this module.
    let mut algos = algorithm_names();
    assert_eq!(algos.first(), Some(&"auto"));
    assert!(algos.contains(&"winograd4") && algos.contains(&"direct"));
    algos.push("fake");
    let conv = |function: &str, ns: f64| Record {
        group: "conv_fwd_t1/res3x3_56".to_owned(),
        function: function.to_owned(),
        median_ns: ns,
        elements: Some(1e6),
    };
    let records: Vec<Record> =
        algos.iter().enumerate().map(|(i, a)| conv(a, 1000.0 + i as f64)).collect();
    let ctx = ReportContext {
        peak: Peak {
            one_thread: 100.0,
            all_threads: 200.0,
            threads: 2,
            kind: "test",
            avx512: None,
        },
        auto_choice: BTreeMap::new(),
        machine: "test".to_owned(),
        command: "test".to_owned(),
        quick: true,
        threads: 2,
        ratios: None,
        versus: None,
        general: vec![(
            "zoo".to_owned(),
            "| model | ratio |\n|---|---|\n| vgg | 1.5 |\n".to_owned(),
        )],
        algos: algos.clone(),
    };
    let dir = std::env::temp_dir().join(format!("xtask-report-{}", std::process::id()));
    let (md, svg) = write(&dir, &records, &Peers::default(), &ctx).unwrap();
    let md = fs::read_to_string(md).unwrap();
    let svg = fs::read_to_string(svg).unwrap();
    let _ = fs::remove_dir_all(&dir);
    let header = md.lines().find(|l| l.starts_with("| shape | Auto picks |")).unwrap();
    for a in &algos {
        assert!(header.contains(&format!(" {a} |")), "{a} missing from {header}");
    }
    let row = md.lines().find(|l| l.starts_with("| res3x3_56 |")).unwrap();
    assert_eq!(row.matches(" · ").count(), algos.len(), "one timing per algorithm: {row}");
    assert!(svg.contains("res3x3_56 fake:"), "the chart has a bar for the new algorithm");
    assert!(md.contains("### zoo\n\n| model | ratio |"), "the published tables are in the report");
    assert!(!svg.contains("res3x3_56 naive:"), "the reference stays out of the chart");
}
