//! The servers under test: a `ternd` or null server this process starts (and stops), or one already
//! running; and facts about the machine for every report.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde::Serialize;

/// A server process started by the benchmark; killed when dropped.
#[derive(Debug)]
pub(crate) struct Spawned {
    child: Child,
    /// The plain TCP address.
    pub(crate) addr: SocketAddr,
    /// The metrics address, when the server has one.
    pub(crate) metrics: Option<SocketAddr>,
    /// The WebSocket address, when the server has one.
    pub(crate) ws: Option<SocketAddr>,
    data: Option<tempfile::TempDir>,
    /// For a `ternd`: the binary and its extra flags, to start it again on the same data.
    ternd: Option<(PathBuf, Vec<String>)>,
}

impl Spawned {
    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn start(
        mut cmd: Command,
        data: Option<tempfile::TempDir>,
        ternd: Option<(PathBuf, Vec<String>)>,
    ) -> io::Result<Spawned> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let field = |name: &str| -> Option<SocketAddr> {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .and_then(|v| v.parse().ok())
        };
        let Some(addr) = field("tcp=") else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other(format!(
                "unexpected first line from the server: {line:?}"
            )));
        };
        Ok(Spawned {
            addr,
            metrics: field("metrics="),
            ws: field("ws="),
            child,
            data,
            ternd,
        })
    }

    /// Starts `ternd` on a fresh temporary data directory with these extra flags.
    pub(crate) fn ternd(path: &Path, flags: &[String]) -> io::Result<Spawned> {
        let data = tempfile::Builder::new().prefix("tern-bench-").tempdir()?;
        let cmd = ternd_command(path, flags, data.path());
        Spawned::start(cmd, Some(data), Some((path.to_owned(), flags.to_vec())))
    }

    /// Kills a `ternd` started here (SIGKILL, as a crash) and starts it again on the same data
    /// directory and flags; it listens on new ports.
    pub(crate) fn restart(&mut self) -> io::Result<()> {
        let (Some(ternd), Some(data)) = (self.ternd.take(), self.data.take()) else {
            return Err(io::Error::other(
                "only a ternd started here can be restarted",
            ));
        };
        self.stop();
        let cmd = ternd_command(&ternd.0, &ternd.1, data.path());
        *self = Spawned::start(cmd, Some(data), Some(ternd))?;
        Ok(())
    }

    /// Writes back and then drops from the kernel's page cache every file of the data directory,
    /// so that what the server reads next comes from the device. Returns the files dropped.
    pub(crate) fn evict_data_from_page_cache(&self) -> io::Result<u64> {
        let Some(data) = &self.data else {
            return Ok(0);
        };
        let mut files = 0;
        let mut dirs = vec![data.path().to_owned()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    dirs.push(entry.path());
                } else if kind.is_file() {
                    let file = std::fs::File::open(entry.path())?;
                    // Dirty pages are not dropped: write them back first.
                    file.sync_all()?;
                    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)?;
                    files += 1;
                }
            }
        }
        Ok(files)
    }

    /// Starts this executable's null server.
    pub(crate) fn null_server(threads: usize) -> io::Result<Spawned> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args([
            "null-server",
            "--listen",
            "127.0.0.1:0",
            "--threads",
            &threads.to_string(),
        ]);
        Spawned::start(cmd, None, None)
    }

    /// Stops the process (SIGKILL) and waits for it.
    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The command that runs `ternd` on `data` with these extra flags, on loopback ports of its own.
fn ternd_command(path: &Path, flags: &[String], data: &Path) -> Command {
    let mut cmd = Command::new(path);
    cmd.args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--ws-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data)
        .args(flags)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
    cmd
}

/// Where `ternd` is: the given path, else next to this executable.
pub(crate) fn find_ternd(given: Option<&Path>) -> io::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_owned());
    }
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| io::Error::other("executable has no directory"))?;
    // Integration tests run from `deps/`; binaries sit one level up.
    for candidate in [dir.join("ternd"), dir.join("../ternd")] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    Err(io::Error::other(format!(
        "no ternd next to {} (build it with `cargo build -p tern-server --bin ternd`, or pass --ternd)",
        exe.display()
    )))
}

/// A process's resident memory in bytes (`VmRSS` of `/proc/<pid>/status`).
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes a process has had read from storage devices (`read_bytes` of `/proc/<pid>/io`): reads
/// the page cache answered do not count.
pub(crate) fn device_read_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let line = text.lines().find(|l| l.starts_with("read_bytes:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// TCP socket figures from `/proc/net/sockstat`: (sockets in use, memory in bytes).
pub(crate) fn tcp_sockstat() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let get = |name: &str| -> Option<u64> {
        let i = fields.iter().position(|f| *f == name)?;
        fields.get(i + 1)?.parse().ok()
    };
    // `mem` is in pages.
    Some((get("inuse")?, get("mem")? * 4096))
}

/// Kernel slab memory in bytes (`Slab` of `/proc/meminfo`): socket structures live there.
pub(crate) fn slab_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("Slab:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The machine and build a report was measured on.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Environment {
    /// CPU model name.
    pub(crate) cpu_model: String,
    /// Logical CPUs.
    pub(crate) cores: usize,
    /// `uname -r`-style kernel release.
    pub(crate) kernel: String,
    /// The io engine `ternd` was asked for (`external` when not started here).
    pub(crate) io_engine: String,
    /// Whether `ternd` synced its log on every commit.
    pub(crate) fsync: bool,
    /// `git rev-parse HEAD` of the working directory, or `unknown`.
    pub(crate) git_revision: String,
    /// Whether the working tree had uncommitted changes.
    pub(crate) git_dirty: Option<bool>,
    /// The open files limit of this process (soft, hard), which a started ternd inherits.
    pub(crate) open_files_limit: Option<(u64, u64)>,
    /// The 1-minute load average when the run started.
    pub(crate) load_average_start: Option<f64>,
    /// The 1-minute load average when the run ended.
    pub(crate) load_average_end: Option<f64>,
    /// Seconds since the Unix epoch when the run started.
    pub(crate) started_unix: u64,
    /// The command line.
    pub(crate) command: String,
}

/// The 1-minute load average.
pub(crate) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Runs git in the working directory, or else in the source tree this binary was built from.
fn git(args: &[&str]) -> Option<String> {
    let run = |dir: Option<&str>| -> Option<String> {
        let mut cmd = Command::new("git");
        if let Some(d) = dir {
            cmd.args(["-C", d]);
        }
        let out = cmd.args(args).stderr(Stdio::null()).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    run(None).or_else(|| run(Some(env!("CARGO_MANIFEST_DIR"))))
}

impl Environment {
    /// Facts about this machine now.
    pub(crate) fn probe(io_engine: &str, fsync: bool) -> Environment {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let git_revision = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
        let git_dirty =
            git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty());
        Environment {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel,
            io_engine: io_engine.into(),
            fsync,
            git_revision,
            git_dirty,
            open_files_limit: rlimit::getrlimit(rlimit::Resource::NOFILE).ok(),
            load_average_start: load_average(),
            load_average_end: None,
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            command: std::env::args().collect::<Vec<_>>().join(" "),
        }
    }
}

/// CPU time (user + system) a process has used, in seconds, from `/proc/<pid>/stat`.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The CPU time (user + system) in seconds of a `/proc/.../stat` line.
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here (0-based 11, 12).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux architecture that matters here.
    Some(ticks as f64 / 100.0)
}

/// CPU time (user + system) in seconds that each live thread of a process has used, by thread
/// id, with the thread's kind ([`thread_kind`]); from `/proc/<pid>/task/*/`.
fn thread_cpu_seconds(pid: u32) -> Option<ThreadTimes> {
    let mut out = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(task) = task else {
            continue;
        };
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = task.path();
        // A thread that ended between the listing and these reads is left out.
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("stat")),
        ) else {
            continue;
        };
        let Some(seconds) = stat_cpu_seconds(&stat) else {
            continue;
        };
        out.insert(tid, (thread_kind(name.trim()).to_owned(), seconds));
    }
    Some(out)
}

/// Each thread's kind and CPU seconds, by thread id.
type ThreadTimes = BTreeMap<u32, (String, f64)>;

/// A thread's name without a trailing number and the `-` before it. Names are cut at 15 bytes,
/// so `ternd-blocking-0` reads `ternd-blocking-`.
fn thread_kind(name: &str) -> &str {
    let kind = name
        .trim_end_matches(|c: char| c.is_ascii_digit())
        .trim_end_matches('-');
    if kind.is_empty() {
        name
    } else {
        kind
    }
}

/// CPU seconds used so far by the server, by this process and by the whole machine (busy), at one
/// instant; two of them tell how much each used in between.
#[derive(Clone, Debug)]
pub(crate) struct CpuSample {
    server: Option<f64>,
    server_threads: Option<ThreadTimes>,
    bench: Option<f64>,
    busy: Option<f64>,
}

/// CPU seconds used between two [`CpuSample`]s: by the server, this process, the whole machine.
#[derive(Clone, Debug)]
pub(crate) struct CpuUsed {
    pub(crate) server: Option<f64>,
    /// The server's, summed by thread kind ([`thread_kind`]: `ternd-core-0` and `ternd-core-1`
    /// are `ternd-core`). Threads that ended in between are not in it.
    pub(crate) server_threads: Option<BTreeMap<String, f64>>,
    pub(crate) bench: Option<f64>,
    pub(crate) busy: Option<f64>,
}

impl CpuSample {
    /// Now, for the server process `server_pid` (none: no server figure).
    pub(crate) fn now(server_pid: Option<u32>) -> CpuSample {
        CpuSample {
            server: server_pid.and_then(cpu_seconds),
            server_threads: server_pid.and_then(thread_cpu_seconds),
            bench: cpu_seconds(std::process::id()),
            busy: machine_busy_seconds(),
        }
    }

    /// What was used from `earlier` to this sample.
    pub(crate) fn since(&self, earlier: &CpuSample) -> CpuUsed {
        let delta = |b: Option<f64>, a: Option<f64>| Some(b? - a?);
        let threads = |b: &Option<ThreadTimes>, a: &Option<ThreadTimes>| {
            let (b, a) = (b.as_ref()?, a.as_ref()?);
            let mut by_kind = BTreeMap::<String, f64>::new();
            for (tid, (kind, seconds)) in b {
                // A thread that started in between used all its time in between.
                let before = a.get(tid).map_or(0.0, |(_, s)| *s);
                *by_kind.entry(kind.clone()).or_insert(0.0) += seconds - before;
            }
            Some(by_kind)
        };
        CpuUsed {
            server: delta(self.server, earlier.server),
            server_threads: threads(&self.server_threads, &earlier.server_threads),
            bench: delta(self.bench, earlier.bench),
            busy: delta(self.busy, earlier.busy),
        }
    }
}

/// `x` rounded to thousandths, for reports.
pub(crate) fn round_ms(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The Prometheus text at `http://addr/metrics`, each series summed over its labels (histogram
/// buckets left out).
pub(crate) async fn scrape_metrics(addr: SocketAddr) -> Option<BTreeMap<String, f64>> {
    let text = metrics_text(addr).await?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        if name.ends_with("_bucket") {
            continue;
        }
        if let Ok(v) = value.parse::<f64>() {
            *out.entry(name.to_owned()).or_insert(0.0) += v;
        }
    }
    Some(out)
}

/// The cumulative buckets of the histogram `name` in the Prometheus `text`, summed over its other
/// labels: (upper bound, observations at most that), by bound, `+Inf` last as infinity.
pub(crate) fn histogram_buckets(text: &str, name: &str) -> Option<Vec<(f64, f64)>> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        let Some(bound) = labels
            .split("le=\"")
            .nth(1)
            .and_then(|b| b.split('"').next())
        else {
            continue;
        };
        let bound = if bound == "+Inf" {
            f64::INFINITY
        } else {
            bound.parse().ok()?
        };
        let count: f64 = value.parse().ok()?;
        match buckets.iter_mut().find(|(b, _)| *b == bound) {
            Some((_, c)) => *c += count,
            None => buckets.push((bound, count)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Some(buckets)
}

/// The body of `http://addr/metrics`.
pub(crate) async fn metrics_text(addr: SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .ok()?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await.ok()?;
        Some(body)
    };
    let body = tokio::time::timeout(std::time::Duration::from_secs(5), fetch)
        .await
        .ok()??;
    let text = String::from_utf8_lossy(&body);
    let (_, text) = text.split_once("\r\n\r\n")?;
    Some(text.to_owned())
}

/// CPU time all CPUs of the machine spent busy (everything but idle and iowait), in seconds, from
/// `/proc/stat`: with the server's and this process's own, it tells how much other processes took.
pub(crate) fn machine_busy_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle) as f64 / 100.0)
}
