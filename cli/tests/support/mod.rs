//! Test support: a real `ternd` on a loopback port with a temporary data directory, and `tern`
//! users, each with a config file of their own, run as child processes with a deadline.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub mod pty;

/// The password every test user has.
pub const PASSWORD: &str = "password123";

/// How long one `tern` command may take before the test fails.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(30);

/// `ternd`, found next to the test executable: `cargo test` builds every package's binaries into
/// the directory above `deps/`.
pub fn ternd_path() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps dir");
    let path = deps.parent().expect("target dir").join("ternd");
    assert!(
        path.exists(),
        "{} is missing; build it first: cargo build -p tern-server --bin ternd",
        path.display()
    );
    path
}

/// A `ternd` child process, killed when dropped.
pub struct Ternd {
    child: Child,
    /// Its plain TCP address.
    pub addr: SocketAddr,
    /// Its TLS address, when started with TLS.
    pub tls_addr: Option<SocketAddr>,
    data: tempfile::TempDir,
}

impl Ternd {
    /// Starts `ternd` on a fresh data directory and waits for its `listening` line.
    pub fn start() -> Ternd {
        Ternd::start_with(&[])
    }

    /// Starts `ternd` with extra flags.
    pub fn start_with(extra: &[&str]) -> Ternd {
        let data = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(ternd_path())
            .args(["--listen", "127.0.0.1:0", "--cores", "2"])
            .args(["--password-iterations", "1000"])
            .args([
                "--metrics-listen",
                "127.0.0.1:0",
                "--ws-listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(data.path())
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ternd");
        let stdout = child.stdout.take().expect("stdout");
        // The first line arrives once every core serves; a ternd that dies closes the pipe, so
        // the read ends either way.
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read ternd's first line");
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix(name))
                .map(|addr| addr.parse::<SocketAddr>().expect("an address"))
        };
        let addr =
            field("tcp=").unwrap_or_else(|| panic!("no tcp= in ternd's first line: {line:?}"));
        Ternd {
            child,
            addr,
            tls_addr: field("tls="),
            data,
        }
    }
}

impl Ternd {
    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }
}

impl Drop for Ternd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a finished `tern` command left.
#[derive(Debug)]
pub struct Output {
    /// Its exit code.
    pub code: i32,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Output {
    /// Panics unless the command succeeded; returns stdout.
    pub fn ok(self) -> String {
        assert_eq!(self.code, 0, "tern failed: {self:?}");
        self.stdout
    }

    /// Stdout parsed as JSON, after checking success.
    pub fn json(self) -> serde_json::Value {
        let stdout = self.ok();
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout:?}"))
    }
}

/// A person using `tern` with their own config file.
pub struct User {
    /// Their username.
    pub name: String,
    /// Their config file.
    pub config: PathBuf,
    /// The server's address.
    pub server: SocketAddr,
    _dir: tempfile::TempDir,
}

impl User {
    /// A user of this server who has no account yet.
    pub fn new(ternd: &Ternd, name: &str) -> User {
        let dir = tempfile::tempdir().expect("temp dir");
        User {
            name: name.to_owned(),
            config: dir.path().join("tern").join("config.toml"),
            server: ternd.addr,
            _dir: dir,
        }
    }

    /// A user who has registered.
    pub fn registered(ternd: &Ternd, name: &str) -> User {
        let user = User::new(ternd, name);
        user.tern(&["register", name]).ok();
        user
    }

    /// The command, ready to run: the server, the config file and the password set.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tern"));
        command
            .arg("--server")
            .arg(self.server.to_string())
            .args(args)
            .env("TERN_CONFIG", &self.config)
            .env("TERN_PASSWORD", PASSWORD)
            .env_remove("XDG_CONFIG_HOME");
        command
    }

    /// Runs `tern ARGS` to the end.
    pub fn tern(&self, args: &[&str]) -> Output {
        run(self.command(args), None)
    }

    /// Runs `tern ARGS` with this standard input.
    pub fn tern_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut command = self.command(args);
        command.env_remove("TERN_PASSWORD");
        run(command, Some(stdin))
    }

    /// Runs `tern --json ARGS` and parses its output.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        self.tern(&all).json()
    }

    /// The config file's directory.
    pub fn dir(&self) -> &Path {
        self.config.parent().expect("config dir")
    }
}

/// Runs a command with a deadline, collecting its output.
pub fn run(mut command: Command, stdin: Option<&str>) -> Output {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn tern");
    if let Some(text) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    let stdout = reader(child.stdout.take().expect("stdout"));
    let stderr = reader(child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + COMMAND_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tern {command:?} did not finish within {COMMAND_DEADLINE:?}");
        }
        thread::sleep(Duration::from_millis(5));
    };
    Output {
        code: status.code().unwrap_or(-1),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn reader(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}
