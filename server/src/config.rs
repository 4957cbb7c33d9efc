//! Configuration: built-in defaults, then an optional TOML file, then command-line flags.
//!
//! `ternd --data-dir ./data` needs nothing else. Every setting has a flag; the TOML file takes the
//! same names in snake_case (`idle_timeout_ms = 60000`). Unknown keys in the file are an error, so a
//! typo does not silently fall back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Parser, ValueEnum};
use serde::Deserialize;
use tern_protocol::limits::{
    DEVICES_PER_USER_MAX, GROUP_MEMBERS_MAX, HISTORY_PAGE_MESSAGES_MAX, SYNC_PAGE_UPDATES_MAX,
};

/// Size of one memtable of the update logs, in MiB, unless configured.
pub(crate) const UPDATE_LOG_MEMTABLE_MIB_DEFAULT: u32 = 64;
/// The sizes accepted.
const UPDATE_LOG_MEMTABLE_MIB: std::ops::RangeInclusive<u32> = 16..=1024;

/// Which I/O engine the core threads run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoEngine {
    /// io_uring when the kernel allows it, epoll otherwise.
    Auto,
    /// io_uring (tokio-uring); fails to start when io_uring is unavailable.
    Uring,
    /// epoll (tokio current-thread runtime).
    Epoll,
}

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line.
    Json,
}

/// `ternd`: the Tern chat server.
#[derive(Debug, Parser)]
#[command(name = "ternd", version, about, long_about = None, args_override_self = true)]
pub struct Cli {
    /// Address for plain TCP clients [default: 127.0.0.1:7400]. Use 0.0.0.0:7400 to accept
    /// connections from other machines; port 0 picks a free port (logged at start).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Address for TLS clients [default: 127.0.0.1:7401]. TLS is served only with a certificate
    /// (`--tls-cert` and `--tls-key`) or `--tls-self-signed`.
    #[arg(long)]
    pub tls_listen: Option<SocketAddr>,
    /// Address for WebSocket clients (browsers) [default: 127.0.0.1:7402]; `wss://` when TLS is
    /// configured, `ws://` otherwise.
    #[arg(long)]
    pub ws_listen: Option<SocketAddr>,
    /// Origins whose pages may open a WebSocket, comma-separated: `scheme://host[:port]`, port `*`
    /// for any, or `*` for all. Requests without `Origin` (non-browser clients) are always allowed
    /// [default: http and https on localhost, 127.0.0.1 and [::1], any port].
    #[arg(long, value_delimiter = ',')]
    pub ws_allowed_origins: Option<Vec<String>>,
    /// A started frame, the first Hello and a WebSocket upgrade must each arrive whole within
    /// this long, in ms [default: 30000].
    #[arg(long)]
    pub frame_timeout_ms: Option<u64>,
    /// The server's certificate chain, PEM (leaf first).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert`, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// For development: serve TLS with a self-signed certificate for localhost, 127.0.0.1 and ::1,
    /// created on first use in `<data-dir>/tls/` and kept there (clients trust
    /// `<data-dir>/tls/self-signed.pem`).
    #[arg(long, conflicts_with = "tls_cert")]
    pub tls_self_signed: bool,
    /// Serve TLS only: no plain TCP listener.
    #[arg(long)]
    pub tls_only: bool,
    /// A TLS handshake not finished within this long is cut, in ms [default: 10000].
    #[arg(long)]
    pub tls_handshake_timeout_ms: Option<u64>,
    /// Directory of the database; created when missing [default: ./data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Core threads, one per CPU [default: the number of available CPUs].
    #[arg(long)]
    pub cores: Option<usize>,
    /// I/O engine of the core threads [default: auto].
    #[arg(long, value_enum)]
    pub io_engine: Option<IoEngine>,
    /// Sync the write-ahead log to disk on every group commit, so acknowledged messages also
    /// survive power loss (without it they survive a crash of the process).
    #[arg(long)]
    pub fsync: bool,
    /// A TOML file with any of these settings; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Log format [default: human]. The level comes from RUST_LOG (default: info).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// PBKDF2-HMAC-SHA256 iterations for new password hashes [default: 600000].
    #[arg(long)]
    pub password_iterations: Option<u32>,
    /// Most devices per user [default: 10; at most 64].
    #[arg(long)]
    pub devices_per_user_max: Option<u32>,
    /// Most members of a group [default: 100; at most 1000].
    #[arg(long)]
    pub group_members_max: Option<u32>,
    /// Interval at which clients are asked to send Ping, in ms [default: 15000].
    #[arg(long)]
    pub heartbeat_interval_ms: Option<u32>,
    /// A connection silent for this long is closed, in ms [default: 45000].
    #[arg(long)]
    pub idle_timeout_ms: Option<u32>,
    /// Bytes queued for one slow connection before it is closed [default: 4194304].
    #[arg(long)]
    pub outbound_queue_bytes_max: Option<usize>,
    /// Connections one core accepts before refusing more [default: 100000].
    #[arg(long)]
    pub connections_per_core_max: Option<usize>,
    /// Authenticated connections one user may have at once [default: 32].
    #[arg(long)]
    pub connections_per_user_max: Option<usize>,
    /// How long a graceful shutdown may take before connections are cut, in ms [default: 10000].
    #[arg(long)]
    pub shutdown_timeout_ms: Option<u64>,
    /// The push gateway's notify URL (Matrix Push Gateway API), such as
    /// `https://push.example.com/_matrix/push/v1/notify` [default: none, no push].
    #[arg(long)]
    pub push_gateway_url: Option<String>,
    /// Time-out of one request to the push gateway, in ms [default: 5000].
    #[arg(long)]
    pub push_timeout_ms: Option<u64>,
    /// Messages to an offline user within this window share one notification, in ms [default: 1000].
    #[arg(long)]
    pub push_coalesce_ms: Option<u64>,
    /// A notification not delivered within this long is dropped, in ms [default: 86400000].
    #[arg(long)]
    pub push_max_age_ms: Option<u64>,
    /// Include a preview of the message text in notifications [default: off].
    #[arg(long)]
    pub push_include_preview: bool,
    /// Largest media upload, in bytes [default: 104857600, 100 MiB].
    #[arg(long)]
    pub media_bytes_max: Option<u64>,
    /// A completed upload no message attaches within this long is discarded, in ms [default: 86400000].
    #[arg(long)]
    pub media_unreferenced_ttl_ms: Option<u64>,
    /// How often each core looks for uploads to discard, in ms [default: 60000].
    #[arg(long)]
    pub media_sweep_interval_ms: Option<u64>,
    /// Address of the Prometheus `/metrics` and `/healthz` endpoint [default: 127.0.0.1:7410].
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// `Send`s per second one connection keeps, after a burst of twice that; 0 switches the limit
    /// off [default: 50].
    #[arg(long)]
    pub send_rate_per_connection: Option<u32>,
    /// `Send`s per second one user keeps over all their devices, after a burst of twice that; 0
    /// switches the limit off [default: 100].
    #[arg(long)]
    pub send_rate_per_user: Option<u32>,
    /// How long `Send` idempotency keys are kept, in ms [default: 604800000, 7 days; the spec
    /// promises clients at least that].
    #[arg(long)]
    pub idempotency_retention_ms: Option<u64>,
    /// Size of one memtable of the update logs, in MiB [default: 64; 16..=1024]. Larger ones
    /// compact less under heavy fan-out, for up to twice this in memory.
    #[arg(long)]
    pub update_log_memtable_mib: Option<u32>,
}

/// The same settings, as read from a TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    tls_listen: Option<SocketAddr>,
    ws_listen: Option<SocketAddr>,
    ws_allowed_origins: Option<Vec<String>>,
    frame_timeout_ms: Option<u64>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_self_signed: Option<bool>,
    tls_only: Option<bool>,
    tls_handshake_timeout_ms: Option<u64>,
    data_dir: Option<PathBuf>,
    cores: Option<usize>,
    io_engine: Option<IoEngine>,
    fsync: Option<bool>,
    log_format: Option<LogFormat>,
    password_iterations: Option<u32>,
    devices_per_user_max: Option<u32>,
    group_members_max: Option<u32>,
    heartbeat_interval_ms: Option<u32>,
    idle_timeout_ms: Option<u32>,
    outbound_queue_bytes_max: Option<usize>,
    connections_per_core_max: Option<usize>,
    connections_per_user_max: Option<usize>,
    shutdown_timeout_ms: Option<u64>,
    push_gateway_url: Option<String>,
    push_timeout_ms: Option<u64>,
    push_coalesce_ms: Option<u64>,
    push_max_age_ms: Option<u64>,
    push_include_preview: Option<bool>,
    idempotency_retention_ms: Option<u64>,
    update_log_memtable_mib: Option<u32>,
    metrics_listen: Option<SocketAddr>,
    media_bytes_max: Option<u64>,
    media_unreferenced_ttl_ms: Option<u64>,
    media_sweep_interval_ms: Option<u64>,
    send_rate_per_connection: Option<u32>,
    send_rate_per_user: Option<u32>,
}

/// The resolved configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Plain TCP listen address.
    pub listen: SocketAddr,
    /// TLS listen address.
    pub tls_listen: SocketAddr,
    /// WebSocket listen address (`wss://` with TLS).
    pub ws_listen: SocketAddr,
    /// Origins allowed to open a WebSocket.
    pub ws_allowed_origins: Vec<String>,
    /// Bound on a started frame, the first `Hello` and a WebSocket upgrade.
    pub frame_timeout_ms: u64,
    /// Certificate chain file (PEM); TLS is served with this and `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// Private key file (PEM).
    pub tls_key: Option<PathBuf>,
    /// Serve TLS with a generated self-signed certificate.
    pub tls_self_signed: bool,
    /// No plain TCP listener.
    pub tls_only: bool,
    /// Bound on a TLS handshake.
    pub tls_handshake_timeout_ms: u64,
    /// Database directory.
    pub data_dir: PathBuf,
    /// Core threads.
    pub cores: usize,
    /// I/O engine.
    pub io_engine: IoEngine,
    /// Sync every commit.
    pub fsync: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// PBKDF2 iterations for new hashes.
    pub password_iterations: u32,
    /// Most devices per user.
    pub devices_per_user_max: u32,
    /// Most members per group.
    pub group_members_max: u32,
    /// Most updates per sync page.
    pub sync_page_updates_max: u32,
    /// Most messages per history page.
    pub history_page_messages_max: u32,
    /// Heartbeat interval announced to clients.
    pub heartbeat_interval_ms: u32,
    /// Idle time-out.
    pub idle_timeout_ms: u32,
    /// Outbound queue bound per connection, in bytes.
    pub outbound_queue_bytes_max: usize,
    /// Connections per core.
    pub connections_per_core_max: usize,
    /// Authenticated connections per user.
    pub connections_per_user_max: usize,
    /// Graceful shutdown bound.
    pub shutdown_timeout_ms: u64,
    /// The push gateway's notify URL; no push without one.
    pub push_gateway_url: Option<String>,
    /// Time-out of one gateway request.
    pub push_timeout_ms: u64,
    /// Coalescing window of notifications per user.
    pub push_coalesce_ms: u64,
    /// Age past which an undelivered notification is dropped.
    pub push_max_age_ms: u64,
    /// Whether notifications carry a preview of the text.
    pub push_include_preview: bool,
    /// Retention of idempotency keys.
    pub idempotency_retention_ms: u64,
    /// Size of one memtable of the update logs, in MiB.
    pub update_log_memtable_mib: u32,
    /// Metrics and health endpoint address.
    pub metrics_listen: SocketAddr,
    /// Largest upload.
    pub media_bytes_max: u64,
    /// Lifetime of completed uploads no message attaches.
    pub media_unreferenced_ttl_ms: u64,
    /// Interval of the upload expiry sweep.
    pub media_sweep_interval_ms: u64,
    /// `Send`s per second per connection (0: unlimited).
    pub send_rate_per_connection: u32,
    /// `Send`s per second per user (0: unlimited).
    pub send_rate_per_user: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            tls_listen: SocketAddr::from(([127, 0, 0, 1], 7401)),
            ws_listen: SocketAddr::from(([127, 0, 0, 1], 7402)),
            ws_allowed_origins: crate::runtime::ws::ALLOWED_ORIGINS_DEFAULT
                .map(String::from)
                .to_vec(),
            frame_timeout_ms: 30_000,
            tls_cert: None,
            tls_key: None,
            tls_self_signed: false,
            tls_only: false,
            tls_handshake_timeout_ms: 10_000,
            data_dir: PathBuf::from("./data"),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            io_engine: IoEngine::Auto,
            fsync: false,
            log_format: LogFormat::Human,
            password_iterations: 600_000,
            devices_per_user_max: 10,
            group_members_max: 100,
            sync_page_updates_max: SYNC_PAGE_UPDATES_MAX,
            history_page_messages_max: HISTORY_PAGE_MESSAGES_MAX,
            heartbeat_interval_ms: 15_000,
            idle_timeout_ms: 45_000,
            outbound_queue_bytes_max: 4 << 20,
            connections_per_core_max: 100_000,
            connections_per_user_max: 32,
            shutdown_timeout_ms: 10_000,
            push_gateway_url: None,
            push_timeout_ms: 5_000,
            push_coalesce_ms: 1_000,
            push_max_age_ms: 86_400_000,
            push_include_preview: false,
            idempotency_retention_ms: 7 * 24 * 3600 * 1000,
            update_log_memtable_mib: UPDATE_LOG_MEMTABLE_MIB_DEFAULT,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 7410)),
            media_bytes_max: 100 << 20,
            media_unreferenced_ttl_ms: 24 * 3600 * 1000,
            media_sweep_interval_ms: 60_000,
            send_rate_per_connection: crate::core::limits::SENDS_PER_CONNECTION_PER_SECOND,
            send_rate_per_user: crate::core::limits::SENDS_PER_USER_PER_SECOND,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("parsing {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

macro_rules! layer {
    ($config:ident, $source:expr, $($field:ident),*) => {
        $( if let Some(v) = $source.$field { $config.$field = v; } )*
    };
}

/// Layers every setting that the file and the flags both carry as `Option<T>`.
macro_rules! layer_settings {
    ($config:ident, $source:expr) => {
        layer!(
            $config,
            $source,
            listen,
            tls_listen,
            ws_listen,
            ws_allowed_origins,
            frame_timeout_ms,
            tls_handshake_timeout_ms,
            data_dir,
            cores,
            io_engine,
            log_format,
            password_iterations,
            devices_per_user_max,
            group_members_max,
            heartbeat_interval_ms,
            idle_timeout_ms,
            outbound_queue_bytes_max,
            connections_per_core_max,
            connections_per_user_max,
            shutdown_timeout_ms,
            push_timeout_ms,
            push_coalesce_ms,
            push_max_age_ms,
            idempotency_retention_ms,
            update_log_memtable_mib,
            metrics_listen,
            media_bytes_max,
            media_unreferenced_ttl_ms,
            media_sweep_interval_ms,
            send_rate_per_connection,
            send_rate_per_user
        )
    };
}

impl Config {
    /// Defaults, overridden by the file named by `--config`, overridden by flags.
    pub fn resolve(cli: Cli) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        if let Some(path) = &cli.config {
            let file = read_file(path)?;
            layer_settings!(config, file);
            layer!(
                config,
                file,
                fsync,
                push_include_preview,
                tls_self_signed,
                tls_only
            );
            if file.push_gateway_url.is_some() {
                config.push_gateway_url = file.push_gateway_url;
            }
            if file.tls_cert.is_some() || file.tls_key.is_some() {
                (config.tls_cert, config.tls_key) = (file.tls_cert, file.tls_key);
            }
        }
        layer_settings!(config, cli);
        if cli.push_gateway_url.is_some() {
            config.push_gateway_url = cli.push_gateway_url;
        }
        if cli.tls_cert.is_some() {
            (config.tls_cert, config.tls_key) = (cli.tls_cert, cli.tls_key);
            config.tls_self_signed = false;
        }
        config.tls_self_signed |= cli.tls_self_signed;
        config.tls_only |= cli.tls_only;
        config.fsync |= cli.fsync;
        config.push_include_preview |= cli.push_include_preview;
        config.validate()?;
        Ok(config)
    }

    /// Whether a TLS listener is configured.
    pub fn tls_enabled(&self) -> bool {
        self.tls_self_signed || self.tls_cert.is_some()
    }

    /// Checks every value's range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return invalid("tls_cert and tls_key go together".into());
        }
        if self.tls_self_signed && self.tls_cert.is_some() {
            return invalid("tls_self_signed and tls_cert exclude each other".into());
        }
        if self.tls_only && !self.tls_enabled() {
            return invalid(
                "tls_only needs a certificate (tls_cert and tls_key) or tls_self_signed".into(),
            );
        }
        if self.tls_handshake_timeout_ms == 0 {
            return invalid("tls_handshake_timeout_ms must be above 0".into());
        }
        if self.frame_timeout_ms == 0 {
            return invalid("frame_timeout_ms must be above 0".into());
        }
        for entry in &self.ws_allowed_origins {
            crate::runtime::ws::check_origin_entry(entry).map_err(ConfigError::Invalid)?;
        }
        if self.cores == 0 || self.cores > crate::ids::CORES_MAX {
            return invalid(format!("cores must be 1..={}", crate::ids::CORES_MAX));
        }
        if self.devices_per_user_max == 0 || self.devices_per_user_max > DEVICES_PER_USER_MAX {
            return invalid(format!(
                "devices_per_user_max must be 1..={DEVICES_PER_USER_MAX}"
            ));
        }
        if !UPDATE_LOG_MEMTABLE_MIB.contains(&self.update_log_memtable_mib) {
            return invalid(format!(
                "update_log_memtable_mib must be {}..={}",
                UPDATE_LOG_MEMTABLE_MIB.start(),
                UPDATE_LOG_MEMTABLE_MIB.end()
            ));
        }
        if self.group_members_max < 2 || self.group_members_max > GROUP_MEMBERS_MAX {
            return invalid(format!("group_members_max must be 2..={GROUP_MEMBERS_MAX}"));
        }
        if self.media_bytes_max == 0 || self.media_sweep_interval_ms == 0 {
            return invalid("media_bytes_max and media_sweep_interval_ms must be above 0".into());
        }
        // The burst is twice the rate and must fit a u32.
        if self.send_rate_per_connection > u32::MAX / 2 || self.send_rate_per_user > u32::MAX / 2 {
            return invalid("send rates must be at most 2147483647 per second".into());
        }
        if self.password_iterations == 0 {
            return invalid("password_iterations must be at least 1".into());
        }
        if self.heartbeat_interval_ms == 0 || self.idle_timeout_ms < 2 * self.heartbeat_interval_ms
        {
            return invalid("idle_timeout_ms must be at least twice heartbeat_interval_ms, which must be above 0".into());
        }
        if self.outbound_queue_bytes_max < tern_protocol::limits::FRAME_BYTES_MAX as usize {
            return invalid(
                "outbound_queue_bytes_max must hold at least one largest frame (1 MiB)".into(),
            );
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves flags override the file, the file overrides defaults, and unknown keys are refused.
    #[test]
    fn layering_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ternd.toml");
        std::fs::write(
            &path,
            "cores = 3\nidle_timeout_ms = 60000\nio_engine = \"epoll\"\n",
        )
        .unwrap();
        let cli = Cli::parse_from(["ternd", "--config", path.to_str().unwrap(), "--cores", "2"]);
        let config = Config::resolve(cli).unwrap();
        assert_eq!(config.cores, 2);
        assert_eq!(config.idle_timeout_ms, 60_000);
        assert_eq!(config.io_engine, IoEngine::Epoll);
        assert_eq!(config.heartbeat_interval_ms, 15_000);

        std::fs::write(&path, "corez = 3\n").unwrap();
        let cli = Cli::parse_from(["ternd", "--config", path.to_str().unwrap()]);
        assert!(matches!(
            Config::resolve(cli),
            Err(ConfigError::Parse { .. })
        ));
    }

    // Proves out-of-range values are refused with a message.
    #[test]
    fn ranges() {
        let cli = Cli::parse_from(["ternd", "--cores", "0"]);
        assert!(matches!(Config::resolve(cli), Err(ConfigError::Invalid(_))));
        for bad in ["8", "2048"] {
            let cli = Cli::parse_from(["ternd", "--update-log-memtable-mib", bad]);
            assert!(matches!(Config::resolve(cli), Err(ConfigError::Invalid(_))));
        }
        let cli = Cli::parse_from(["ternd", "--update-log-memtable-mib", "256"]);
        assert_eq!(Config::resolve(cli).unwrap().update_log_memtable_mib, 256);
        let cli = Cli::parse_from([
            "ternd",
            "--heartbeat-interval-ms",
            "5000",
            "--idle-timeout-ms",
            "5000",
        ]);
        assert!(matches!(Config::resolve(cli), Err(ConfigError::Invalid(_))));
    }

    // Proves the WebSocket settings: the listener and the frame time-out have defaults, the
    // allow-list takes a comma-separated list (from flags or the file), and an origin without a
    // scheme or with a path is refused, as is a frame time-out of 0.
    #[test]
    fn websocket_settings() {
        let config = Config::resolve(Cli::parse_from(["ternd"])).unwrap();
        assert_eq!(config.ws_listen.port(), 7402);
        assert_eq!(config.frame_timeout_ms, 30_000);
        assert!(config
            .ws_allowed_origins
            .contains(&"http://localhost:*".to_owned()));
        let cli = Cli::parse_from([
            "ternd",
            "--ws-allowed-origins",
            "https://chat.example.com,http://localhost:*",
        ]);
        let config = Config::resolve(cli).unwrap();
        assert_eq!(config.ws_allowed_origins.len(), 2);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ternd.toml");
        std::fs::write(
            &path,
            "ws_allowed_origins = [\"*\"]\nframe_timeout_ms = 5000\n",
        )
        .unwrap();
        let cli = Cli::parse_from(["ternd", "--config", path.to_str().unwrap()]);
        let config = Config::resolve(cli).unwrap();
        assert_eq!(config.ws_allowed_origins, vec!["*".to_owned()]);
        assert_eq!(config.frame_timeout_ms, 5_000);
        for bad in ["chat.example.com", "https://chat.example.com/app"] {
            let cli = Cli::parse_from(["ternd", "--ws-allowed-origins", bad]);
            assert!(matches!(Config::resolve(cli), Err(ConfigError::Invalid(_))));
        }
        let cli = Cli::parse_from(["ternd", "--frame-timeout-ms", "0"]);
        assert!(matches!(Config::resolve(cli), Err(ConfigError::Invalid(_))));
    }

    // Proves TLS settings go together: TLS-only needs a certificate, a certificate needs its key
    // (refused by the flag parser), and the file's certificate gives way to the flags' dev mode.
    #[test]
    fn tls_settings() {
        let cli = Cli::parse_from(["ternd", "--tls-only"]);
        assert!(matches!(Config::resolve(cli), Err(ConfigError::Invalid(_))));
        assert!(Cli::try_parse_from(["ternd", "--tls-cert", "c.pem"]).is_err());
        let cli = Cli::parse_from(["ternd", "--tls-self-signed", "--tls-only"]);
        let config = Config::resolve(cli).unwrap();
        assert!(config.tls_enabled() && config.tls_only);
        let cli = Cli::parse_from(["ternd", "--tls-cert", "c.pem", "--tls-key", "k.pem"]);
        let config = Config::resolve(cli).unwrap();
        assert_eq!(config.tls_key.as_deref(), Some(Path::new("k.pem")));
        assert!(!config.tls_self_signed);
    }
}
