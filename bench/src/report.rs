//! The report: JSON for machines, a table for people.

use std::fmt::Write as _;

use serde::Serialize;

use crate::catchup::W5Report;
use crate::fleet::PhaseResult;
use crate::idle::W4Report;
use crate::media::W6Report;
use crate::storm::W3Report;
use crate::target::{load_average, round_ms, Environment};
use crate::RunArgs;

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// The machine and build.
    pub(crate) environment: Environment,
    /// The address of the ternd under test.
    pub(crate) target: String,
    /// The started ternd's metrics address.
    pub(crate) metrics: Option<String>,
    /// The started ternd binary: path, size and modification time (seconds since the epoch).
    pub(crate) ternd_binary: Option<String>,
    /// The flags the started ternd got (empty for an external one).
    pub(crate) ternd_flags: Vec<String>,
    /// One to one.
    pub(crate) w1: Option<W1Report>,
    /// Group fan-out.
    pub(crate) w2: Option<W2Report>,
    /// Connection storm.
    pub(crate) w3: Option<W3Report>,
    /// Idle connections.
    pub(crate) w4: Option<W4Report>,
    /// Idle connections over WebSocket, on a fresh ternd of their own.
    pub(crate) w4_ws: Option<W4Report>,
    /// ternd's RSS per idle WebSocket connection minus per idle TCP connection (target: at most
    /// 1,024 bytes).
    pub(crate) w4_ws_extra_bytes_per_connection: Option<f64>,
    /// Catch-up.
    pub(crate) w5: Option<W5Report>,
    /// Chat beside a big download.
    pub(crate) w6: Option<W6Report>,
    /// Every workload that ran completed and lost nothing.
    pub(crate) all_complete: bool,
}

/// W1: one to one.
#[derive(Debug, Serialize)]
pub(crate) struct W1Report {
    /// Users, one connection each.
    pub(crate) users: usize,
    /// Direct conversations each user opened.
    pub(crate) peers: usize,
    /// Body size.
    pub(crate) body_bytes: usize,
    /// Live updates per `Ack`.
    pub(crate) ack_every: u64,
    /// Closed loop, the maximum throughput.
    pub(crate) closed: PhaseResult,
    /// Open-loop steps.
    pub(crate) open: Vec<PhaseResult>,
    /// The same closed loop against the null server.
    pub(crate) null_closed: Option<PhaseResult>,
    /// The open-loop steps again against the null server, at the same offered rates: what any
    /// server could reach at those rates on this machine with this load generator.
    pub(crate) null_open: Vec<PhaseResult>,
    /// ternd's closed-loop delivered rate over the null server's.
    pub(crate) ratio_to_null: Option<f64>,
    /// The same closed loop over WebSocket (its own users).
    pub(crate) ws_closed: Option<PhaseResult>,
    /// The TCP closed loop again, run right before the WebSocket one: the reference for
    /// `ws_ratio_to_tcp`, as both then run on a database of about the same size.
    pub(crate) tcp_beside_ws: Option<PhaseResult>,
    /// The WebSocket closed loop's delivered rate over that of the TCP one right before it
    /// (target: at least 0.8).
    pub(crate) ws_ratio_to_tcp: Option<f64>,
    /// Every phase completed.
    pub(crate) completed: bool,
    /// Deliveries equal sends in every phase.
    pub(crate) delivered_equals_sent: bool,
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| round_ms(a / b))
}

impl W1Report {
    /// A W1 report from its phases.
    pub(crate) fn new(args: &RunArgs, closed: PhaseResult, open: Vec<PhaseResult>) -> W1Report {
        let phases = std::iter::once(&closed).chain(open.iter());
        let completed = phases.clone().all(|p| p.complete);
        let delivered_equals_sent = phases.clone().all(|p| p.lost == 0 && p.delivered == p.sent);
        W1Report {
            users: args.users,
            peers: args.peers,
            body_bytes: args.body_bytes,
            ack_every: args.ack_every,
            closed,
            open,
            null_closed: None,
            null_open: Vec::new(),
            ratio_to_null: None,
            ws_closed: None,
            tcp_beside_ws: None,
            ws_ratio_to_tcp: None,
            completed,
            delivered_equals_sent,
        }
    }

    /// Adds the closed loop over WebSocket and the TCP one run right before it.
    pub(crate) fn set_ws(&mut self, tcp: PhaseResult, ws: PhaseResult) {
        self.ws_ratio_to_tcp = ratio(ws.delivered_per_s, tcp.delivered_per_s);
        for p in [&tcp, &ws] {
            self.completed &= p.complete;
            self.delivered_equals_sent &= p.lost == 0 && p.delivered == p.sent;
        }
        self.tcp_beside_ws = Some(tcp);
        self.ws_closed = Some(ws);
    }

    /// Adds the null server's closed loop.
    pub(crate) fn set_null(&mut self, null: PhaseResult) {
        self.ratio_to_null = ratio(self.closed.delivered_per_s, null.delivered_per_s);
        self.null_closed = Some(null);
    }

    /// Adds the null server's open-loop steps.
    pub(crate) fn set_null_open(&mut self, open: Vec<PhaseResult>) {
        self.null_open = open;
    }

    /// The open-loop step nearest half the closed-loop rate (the target's rate), with the null
    /// server's step at the same rate when it ran.
    pub(crate) fn half_rate(&self) -> Option<(&PhaseResult, Option<&PhaseResult>)> {
        let half = self.closed.sent_per_s / 2.0;
        let off = |p: &PhaseResult| (p.offered_rate.unwrap_or(0.0) - half).abs();
        let step = self.open.iter().min_by(|a, b| off(a).total_cmp(&off(b)))?;
        let null = self
            .null_open
            .iter()
            .find(|n| n.offered_rate == step.offered_rate);
        Some((step, null))
    }
}

/// W2: group fan-out.
#[derive(Debug, Serialize)]
pub(crate) struct W2Report {
    /// It ran on a ternd started for it, not on the one W1 ran on.
    pub(crate) fresh_server: bool,
    /// One entry per group size.
    pub(crate) groups: Vec<W2Group>,
}

/// W2 for one group size.
#[derive(Debug, Serialize)]
pub(crate) struct W2Group {
    /// Members per group.
    pub(crate) size: usize,
    /// Against ternd.
    pub(crate) ternd: PhaseResult,
    /// Against the null server.
    pub(crate) null: Option<PhaseResult>,
    /// ternd's deliveries per second over the null server's.
    pub(crate) ratio_to_null: Option<f64>,
    /// The phase completed.
    pub(crate) completed: bool,
    /// Deliveries equal sends × (size − 1).
    pub(crate) delivered_equals_sent: bool,
}

impl W2Group {
    /// A W2 entry from its ternd phase.
    pub(crate) fn new(size: usize, ternd: PhaseResult) -> W2Group {
        W2Group {
            size,
            completed: ternd.complete,
            delivered_equals_sent: ternd.lost == 0 && ternd.delivered == ternd.expected_deliveries,
            ternd,
            null: None,
            ratio_to_null: None,
        }
    }

    /// Adds the null server's phase.
    pub(crate) fn set_null(&mut self, null: PhaseResult) {
        self.ratio_to_null = ratio(self.ternd.delivered_per_s, null.delivered_per_s);
        self.null = Some(null);
    }
}

impl Report {
    /// An empty report.
    pub(crate) fn new(environment: Environment) -> Report {
        Report {
            environment,
            target: String::new(),
            metrics: None,
            ternd_binary: None,
            ternd_flags: Vec::new(),
            w1: None,
            w2: None,
            w3: None,
            w4: None,
            w4_ws: None,
            w4_ws_extra_bytes_per_connection: None,
            w5: None,
            w6: None,
            all_complete: false,
        }
    }

    /// Records the end of the run.
    pub(crate) fn finish(&mut self) {
        self.environment.load_average_end = load_average();
        let w1 = self
            .w1
            .as_ref()
            .is_none_or(|w| w.completed && w.delivered_equals_sent);
        let w2 = self.w2.as_ref().is_none_or(|w| {
            w.groups
                .iter()
                .all(|g| g.completed && g.delivered_equals_sent)
        });
        let w3 = self.w3.as_ref().is_none_or(|w| w.completed);
        let w4 = self.w4.as_ref().is_none_or(|w| w.completed)
            && self.w4_ws.as_ref().is_none_or(|w| w.completed);
        let w5 = self
            .w5
            .as_ref()
            .is_none_or(|w| w.completed && w.delivered_equals_sent);
        let w6 = self
            .w6
            .as_ref()
            .is_none_or(|w| w.completed && w.download_intact);
        self.all_complete = w1 && w2 && w3 && w4 && w5 && w6;
    }

    /// The human-readable table.
    pub(crate) fn table(&self) -> String {
        let e = &self.environment;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "\ntern-bench on {} ({} cores), kernel {}, io engine {}, fsync {}, revision {}{}, load {:?} → {:?}",
            e.cpu_model,
            e.cores,
            e.kernel,
            e.io_engine,
            if e.fsync { "on" } else { "off" },
            e.git_revision,
            if e.git_dirty == Some(true) { " (dirty)" } else { "" },
            e.load_average_start.unwrap_or(0.0),
            e.load_average_end.unwrap_or(0.0),
        );
        let _ = writeln!(
            t,
            "{:<28} {:>10} {:>12} {:>12} {:>10} {:>24} {:>24} {:>8} {:>20}",
            "phase",
            "offered/s",
            "sent/s",
            "delivered/s",
            "lost",
            "e2e p50/p99/max",
            "ack p50/p99/max",
            "errors",
            "cpu s srv/bench/other"
        );
        let cpu = |s: Option<f64>| s.map_or("-".into(), |s| format!("{s:.1}"));
        let mut row = |p: &PhaseResult| {
            let _ = writeln!(
                t,
                "{:<28} {:>10} {:>12} {:>12} {:>10} {:>24} {:>24} {:>8} {:>20}",
                p.name,
                p.offered_rate.map_or("-".into(), |r| format!("{r:.0}")),
                format!("{:.0}", p.sent_per_s),
                format!("{:.0}", p.delivered_per_s),
                p.lost,
                p.e2e_latency.short(),
                p.ack_latency.short(),
                p.errors,
                format!(
                    "{}/{}/{}",
                    cpu(p.server_cpu_s),
                    cpu(p.bench_cpu_s),
                    cpu(p.other_cpu_s)
                ),
            );
        };
        if let Some(w1) = &self.w1 {
            row(&w1.closed);
            w1.open.iter().for_each(&mut row);
            if let (Some(tcp), Some(ws)) = (&w1.tcp_beside_ws, &w1.ws_closed) {
                row(tcp);
                row(ws);
            }
            if let Some(n) = &w1.null_closed {
                row(n);
            }
            w1.null_open.iter().for_each(&mut row);
        }
        if let Some(w2) = &self.w2 {
            for g in &w2.groups {
                row(&g.ternd);
                if let Some(n) = &g.null {
                    row(n);
                }
            }
        }
        if let Some(w1) = &self.w1 {
            if let Some(r) = w1.ratio_to_null {
                let _ = writeln!(
                    t,
                    "W1 ternd / null server (closed loop, delivered/s): {r:.3}"
                );
            }
            if let Some((step, null)) = w1.half_rate() {
                let p99 = |p: &PhaseResult| p.e2e_latency.p99_us as f64 / 1000.0;
                let _ = writeln!(
                    t,
                    "W1 open loop at {:.0}/s (nearest half the closed rate), e2e p99: ternd {:.2} ms{} (target at most 5 ms)",
                    step.offered_rate.unwrap_or(0.0),
                    p99(step),
                    null.map_or(String::new(), |n| format!(", null server {:.2} ms", p99(n))),
                );
            }
            if let Some(r) = w1.ws_ratio_to_tcp {
                let _ = writeln!(
                    t,
                    "W1 WebSocket / TCP (closed loops one after the other, delivered/s): {r:.3} (target at least 0.8)"
                );
            }
        }
        if let Some(w2) = &self.w2 {
            for g in &w2.groups {
                if let Some(r) = g.ratio_to_null {
                    let _ = writeln!(t, "W2 groups of {}: ternd / null server: {r:.3}", g.size);
                }
            }
        }
        if let Some(w3) = &self.w3 {
            let _ = writeln!(t, "{}", w3.summary());
        }
        if let Some(w4) = &self.w4 {
            let _ = writeln!(t, "{}", w4.summary());
        }
        if let Some(w4) = &self.w4_ws {
            let _ = writeln!(t, "{}", w4.summary());
        }
        if let Some(extra) = self.w4_ws_extra_bytes_per_connection {
            let _ = writeln!(
                t,
                "W4 WebSocket − TCP, ternd RSS per idle connection: {extra:.0} bytes (target at most 1024)"
            );
        }
        if let Some(w5) = &self.w5 {
            let _ = writeln!(t, "{}", w5.summary());
        }
        if let Some(w6) = &self.w6 {
            let _ = writeln!(t, "{}", w6.summary());
        }
        let _ = writeln!(
            t,
            "all workloads complete, nothing lost: {}",
            self.all_complete
        );
        t
    }
}
