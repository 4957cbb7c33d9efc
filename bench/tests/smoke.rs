//! A short run of every workload at tiny sizes, against a `ternd` the harness starts itself and the
//! null server: each workload must complete and lose nothing. No speed is asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;

fn run_smoke(extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("results.json");
    let status = Command::new(env!("CARGO_BIN_EXE_tern-bench"))
        .args([
            "--users",
            "20",
            "--peers",
            "2",
            "--group-sizes",
            "5,10",
            "--duration-ms",
            "400",
            "--rates",
            "200,500",
            "--drain-ms",
            "10000",
            "--resumes",
            "200",
            "--storm-concurrency",
            "8",
            "--logins",
            "4",
            "--login-iterations",
            "1000",
            "--idle",
            "200",
            "--idle-hold-ms",
            "300",
            "--catchup",
            "2000",
            "--catchup-senders",
            "2",
            "--quiet",
            "--out",
        ])
        .arg(&out)
        .args(extra)
        .status()
        .expect("run tern-bench");
    assert!(status.success(), "tern-bench failed: {status}");
    let text = std::fs::read_to_string(&out).expect("the JSON report");
    serde_json::from_str(&text).expect("valid JSON")
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} missing in {v:#}"))
}

fn b(v: &Value, path: &str) -> bool {
    v.pointer(path)
        .and_then(Value::as_bool)
        .unwrap_or_else(|| panic!("{path} missing in {v:#}"))
}

fn check_phase(p: &Value) {
    assert!(b(p, "/complete"), "phase incomplete: {p:#}");
    assert!(u(p, "/sent") > 0, "nothing sent: {p:#}");
    assert_eq!(u(p, "/lost"), 0, "{p:#}");
    assert_eq!(u(p, "/errors"), 0, "{p:#}");
    assert_eq!(u(p, "/delivered"), u(p, "/sent") * u(p, "/fanout"), "{p:#}");
}

// Proves every workload runs to completion against ternd and the null server, and that every
// message sent was delivered: W1 (over TCP and WebSocket) and W2 to every recipient, W5 to the
// device that catches up; W4 holds its idle connections over TCP and over WebSocket.
#[test]
fn every_workload_completes_and_loses_nothing() {
    let r = run_smoke(&[]);
    let env = &r["environment"];
    for field in ["cpu_model", "kernel", "io_engine", "git_revision"] {
        assert!(env[field].is_string(), "environment.{field}: {env:#}");
    }
    assert!(env["cores"].as_u64().unwrap() >= 1);
    assert!(env["fsync"].is_boolean());

    let w1 = &r["w1"];
    check_phase(&w1["closed"]);
    // The server's CPU by thread: its core threads (busy in a closed loop) and committer by name.
    let closed = &w1["closed"];
    let threads = closed["server_cpu_us_per_delivery_by_thread"]
        .as_object()
        .unwrap_or_else(|| panic!("no CPU by thread: {closed:#}"));
    for kind in ["ternd-core", "ternd-commit"] {
        assert!(
            threads[kind].as_f64().unwrap() >= 0.0,
            "{kind}: {threads:?}"
        );
    }
    assert!(threads["ternd-core"].as_f64().unwrap() > 0.0, "{threads:?}");
    let open = w1["open"].as_array().unwrap();
    assert_eq!(open.len(), 2);
    open.iter().for_each(check_phase);
    check_phase(&w1["null_closed"]);
    // The open-loop steps ran against the null server too, at the same offered rates.
    let null_open = w1["null_open"].as_array().unwrap();
    assert_eq!(null_open.len(), open.len());
    for (n, o) in null_open.iter().zip(open) {
        check_phase(n);
        assert_eq!(n["offered_rate"], o["offered_rate"]);
    }
    assert!(w1["ratio_to_null"].as_f64().unwrap() > 0.0);
    check_phase(&w1["ws_closed"]);
    check_phase(&w1["tcp_beside_ws"]);
    assert!(w1["ws_ratio_to_tcp"].as_f64().unwrap() > 0.0);
    assert!(b(w1, "/delivered_equals_sent"));

    // Started here after W1, W2 gets a ternd of its own.
    assert!(b(&r["w2"], "/fresh_server"), "{:#}", r["w2"]);
    let groups = r["w2"]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    for g in groups {
        check_phase(&g["ternd"]);
        check_phase(&g["null"]);
        assert!(b(g, "/delivered_equals_sent"));
    }

    let w3 = &r["w3"];
    assert!(b(w3, "/completed"), "{w3:#}");
    assert_eq!(u(w3, "/resumes/ok"), 200);
    assert_eq!(u(w3, "/logins/ok"), u(w3, "/logins/attempted"));
    assert_eq!(u(w3, "/null_resumes/ok"), 200);

    let w4 = &r["w4"];
    assert!(b(w4, "/completed"), "{w4:#}");
    assert_eq!(u(w4, "/established"), 200);
    assert!(w4["rss_per_connection_bytes"].is_number(), "{w4:#}");
    let w4_ws = &r["w4_ws"];
    assert!(b(w4_ws, "/completed"), "{w4_ws:#}");
    assert_eq!(u(w4_ws, "/established"), 200);
    assert!(r["w4_ws_extra_bytes_per_connection"].is_number(), "{r:#}");

    let w5 = &r["w5"];
    assert!(b(w5, "/completed"), "{w5:#}");
    assert!(b(w5, "/delivered_equals_sent"), "{w5:#}");
    assert_eq!(u(w5, "/synced_messages"), 2000);
    // Again after a restart with the data dropped from the page cache: the same log, read back
    // from the tables, and the core's stretches counted from its histograms.
    assert!(u(w5, "/cold/files_evicted") > 0, "{w5:#}");
    assert!(
        w5["cold"]["restart_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{w5:#}"
    );
    assert_eq!(u(w5, "/cold/synced_messages"), 2000);
    assert_eq!(u(w5, "/cold/pages"), u(w5, "/pages"));
    assert!(u(w5, "/cold/reads/count") >= u(w5, "/cold/pages"), "{w5:#}");

    assert!(b(&r, "/all_complete"));
}
