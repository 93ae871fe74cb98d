//! End-to-end load driver (issue 7): real `brobygger serve` processes under load, measured
//! beside the bare mTLS transport (the ceiling) in the same run, for BENCHMARKS.md.
//!
//! ```sh
//! cargo build --release --bin brobygger
//! cargo run --release --example load -- [--seconds N] [--json out.json] [--only d,a1,a2,e,b,c]
//! ```
//!
//! Build the binary on its own: built in one command with an example, it would get the
//! `failpoints` feature that the dev-dependency on this package turns on. The binary is
//! `BROBYGGER_BIN`, or `brobygger` beside this example's directory, or in
//! `$CARGO_TARGET_DIR/release`. For diagnosis, `LOAD_NODE_RUST_LOG` sets the nodes' `RUST_LOG`
//! and `LOAD_KEEP_DIR=1` keeps the temporary directory (PKI, databases, the nodes' logs).
//!
//! It generates a fresh development PKI (`pki::init`: herning-kommune, a municipality, and
//! red-barnet, an NGO), starts both nodes as `target/release/brobygger serve` processes with
//! their listeners on port 0, publishes a manifest with their real endpoints (the next serial,
//! signed with the operator key), records a consent at herning for red-barnet and waits until
//! the club holds it. The ceiling is this very program, re-executed with the hidden argument
//! `--echo-server CERT KEY CA WORKERS`: a bare actix-web + rustls (ring) server with the node's
//! TLS shape (TLS 1.3, client certificate required and verified against the federation CA,
//! HTTP/1.1) that answers `POST /fed/v1/envelopes` with the body it got.
//!
//! Then, each for `--seconds` (default 10), gateway and ceiling interleaved, with the same
//! client (a minimal HTTP/1.1 client over tokio-rustls presenting red-barnet's certificate and
//! checking that the server is herning), the same 32 kept-alive connections and the same bodies:
//! a. inbound boundary throughput, one envelope per request, and 100 envelopes per request;
//! b. end to end: batches submitted at red-barnet's local API until red-barnet holds herning's
//!    verified receipts (red-barnet's outbox counts, read-only);
//! c. batch ingestion: 1,000 messages per request at red-barnet's local API (with herning
//!    stopped, so that delivery does not share the CPU; see BENCHMARKS.md);
//! d. new mTLS connections per second (full handshakes, client certificates, no resumption);
//! e. latency at fixed offered loads (open loop: latency = completion - intended send time), and
//!    the disk's fsync latency in herning's data directory;
//! f. CPU time (utime+stime from /proc) of every process per item, and resident memory.
//!
//! After the measurements every receipt the client got is checked with `receipt::verify`
//! (herning's audit key from the manifest) and against herning's database (its inbox row and
//! the admitting audit entry, read-only), every end-to-end message against red-barnet's stored
//! receipt, and `brobygger audit verify` must pass on both nodes. A run that fails a check
//! prints what it measured and exits 1; every process it started is stopped with SIGTERM.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "a benchmark driver: a panic is a failed run, with its location"
)]

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use base64::Engine as _;
use brobygger::audit::entry::{self, Decision};
use brobygger::config::Config;
use brobygger::domain::{FederationName, MessageId, NodeIdentity, OrgKind};
use brobygger::federation::BatchAnswerV1;
use brobygger::jwt::{DevIssuer, Role};
use brobygger::manifest::ManifestDocV1;
use brobygger::pki::{self, InitOptions, OrgSpec};
use brobygger::signed_note::VerifierKey;
use brobygger::storage::{self, Database};
use brobygger::wire::ReceiptV1;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const USAGE: &str = "usage: load [--seconds N] [--json FILE] [--only d,a1,a2,e,b,c]";
/// The measurements, in the order they run.
const PHASES: [&str; 6] = ["d", "a1", "a2", "e", "b", "c"];
const FEDERATION: &str = "brobygger.test";
const KOMMUNE: &str = "herning-kommune";
const NGO: &str = "red-barnet";
const PURPOSE: &str = "smaaboernsklub-fremmoede";
const UNIT: &str = "familieafdelingen";
/// Kept-alive connections of the inbound and latency measurements (and concurrent handshakes).
const CONNECTIONS: usize = 32;
/// Envelopes per request in the batched inbound measurement.
const BATCH_ENVELOPES: usize = 100;
/// Messages per request in the ingestion measurement (the local API's maximum).
const INGEST_BATCH: usize = 1_000;
/// Concurrent submitters in the ingestion measurement.
const INGEST_SUBMITTERS: usize = 4;
/// The end-to-end submitter keeps at most this many messages queued at red-barnet.
const E2E_BACKLOG: u64 = 4_000;
/// Offered loads of the latency measurement, envelopes per second.
const RATES: [u64; 3] = [1_000, 2_000, 4_000];
const ENVELOPES_PATH: &str = "/fed/v1/envelopes";
/// No route on either server: the handshake measurement's one request per connection (404).
const PROBE_PATH: &str = "/fed/v1/load-probe";
/// Stands for the message id in body templates.
const SENTINEL: &str = "00000000-0000-7000-8000-000000000000";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const LOG_LINES: usize = 200;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--echo-server") {
        return match echo_server(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("echo server: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let options = match parse_options(&args) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(2);
        }
    };
    brobygger::identity::install_default_crypto_provider();
    if brobygger::jwt::install_crypto_provider().is_err() {
        eprintln!("load: another JWT crypto provider is installed");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("load: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("\nload: no result: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Options {
    seconds: u64,
    json: Option<PathBuf>,
    /// Which measurements run (all by default; a subset is for profiling one of them).
    only: Vec<String>,
}

impl Options {
    fn runs(&self, phase: &str) -> bool {
        self.only.iter().any(|p| p == phase)
    }
}

fn parse_options(args: &[String]) -> Result<Options> {
    let mut options = Options {
        seconds: 10,
        json: None,
        only: PHASES.iter().map(|p| p.to_string()).collect(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                let value = args.next().context(USAGE)?;
                options.seconds = value
                    .parse()
                    .with_context(|| format!("--seconds {value}: not a whole number"))?;
            }
            "--json" => options.json = Some(PathBuf::from(args.next().context(USAGE)?)),
            "--only" => {
                options.only = args
                    .next()
                    .context(USAGE)?
                    .split(',')
                    .map(|p| p.trim().to_owned())
                    .collect();
                if let Some(unknown) = options.only.iter().find(|p| !PHASES.contains(&p.as_str())) {
                    bail!("unknown measurement `{unknown}`\n{USAGE}");
                }
            }
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    ensure!(options.seconds >= 1, "--seconds must be at least 1");
    Ok(options)
}

// ----- The ceiling: a bare actix-web + rustls mTLS echo server, in a process of its own. -----

fn echo_server(args: &[String]) -> Result<()> {
    use actix_web::{App, HttpResponse, HttpServer, web};
    let [cert, key, ca, workers] = args else {
        bail!("usage: --echo-server CERT KEY CA WORKERS");
    };
    let workers: usize = workers.parse().context("WORKERS")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).context("CA")? {
        roots.add(cert?)?;
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .context("CERT")?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key).context("KEY")?;
    // The node's federation listener, without the node: TLS 1.3 only, a client certificate is
    // required and verified against the federation CA, HTTP/1.1 by ALPN.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(|| {
            App::new()
                .app_data(web::PayloadConfig::new(8 * 1024 * 1024))
                .route(
                    ENVELOPES_PATH,
                    web::post().to(|body: web::Bytes| async move {
                        HttpResponse::Ok()
                            .content_type("application/json")
                            .body(body)
                    }),
                )
                .default_service(web::to(|| async { HttpResponse::NotFound().finish() }))
        })
        .workers(workers)
        .keep_alive(Duration::from_secs(75))
        .shutdown_timeout(2)
        .listen_rustls_0_23(listener, tls)?
        .run();
        println!("echo is running on https://{addr}");
        server.await
    })?;
    Ok(())
}

// ----- Processes. -----

/// A child process with the tail of its stderr; stopped with SIGTERM when dropped.
struct Proc {
    name: String,
    child: tokio::process::Child,
    pid: u32,
    log: Arc<Mutex<Log>>,
    stopped: bool,
}

/// A process's resident memory (KiB): VmRSS, VmHWM, and RSS's anonymous, file-backed and
/// shared-memory parts (SQLite's WAL index is shared memory).
struct Memory {
    label: String,
    rss: u64,
    peak: u64,
    anon: u64,
    file: u64,
    shmem: u64,
}

fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

/// What a process wrote on stderr: the last lines, and its warnings and errors.
#[derive(Default)]
struct Log {
    tail: VecDeque<String>,
    warnings: u64,
    errors: u64,
    first: Vec<String>,
}

impl Proc {
    /// Starts `command`; returns it with the first line it printed on stdout.
    /// With `log_file`, everything it writes on stderr is also kept there.
    async fn start(
        name: &str,
        mut command: tokio::process::Command,
        log_file: Option<PathBuf>,
    ) -> Result<(Proc, String)> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let pid = child.id().context("the child has no pid")?;
        let log = Arc::new(Mutex::new(Log::default()));
        let stderr = child.stderr.take().context("no stderr")?;
        let sink = log.clone();
        let mut file = match log_file {
            Some(path) => Some(std::io::BufWriter::new(std::fs::File::create(path)?)),
            None => None,
        };
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(file) = &mut file {
                    let _ = writeln!(file, "{line}");
                }
                let mut log = sink.lock().unwrap();
                let warning = line.contains(" WARN ");
                let error = line.contains(" ERROR ");
                log.warnings += u64::from(warning);
                log.errors += u64::from(error);
                if (warning || error) && log.first.len() < 3 {
                    log.first.push(line.clone());
                }
                if log.tail.len() == LOG_LINES {
                    log.tail.pop_front();
                }
                log.tail.push_back(line);
            }
        });
        let stdout = child.stdout.take().context("no stdout")?;
        let proc = Proc {
            name: name.to_owned(),
            child,
            pid,
            log,
            stopped: false,
        };
        let mut stdout = BufReader::new(stdout).lines();
        let line = match tokio::time::timeout(Duration::from_secs(60), stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            _ => {
                // Give stderr a moment to arrive before showing it.
                tokio::time::sleep(Duration::from_millis(200)).await;
                bail!("{name} did not start:\n{}", proc.log_tail());
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        Ok((proc, line))
    }

    fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap();
        log.tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// "N warnings, M errors" and the first of them.
    fn log_summary(&self) -> (String, Vec<String>) {
        let log = self.log.lock().unwrap();
        (
            format!("{} warnings, {} errors", log.warnings, log.errors),
            log.first.clone(),
        )
    }

    /// Resident memory now, at its peak, and its parts (KiB), labelled.
    fn memory(&self, label: String) -> Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no {name} in /proc/{}/status", self.pid))
        };
        Ok(Memory {
            label,
            rss: field("VmRSS:")?,
            peak: field("VmHWM:")?,
            anon: field("RssAnon:")?,
            file: field("RssFile:")?,
            shmem: field("RssShmem:")?,
        })
    }

    /// SIGTERM, then waits for the exit.
    async fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        signal_term(self.pid)?;
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .map_err(|_| anyhow!("{} did not stop within 30 s of SIGTERM", self.name))??;
        self.stopped = true;
        Ok(status)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.stopped || matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = signal_term(self.pid);
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Still running 15 s after SIGTERM: kill_on_drop sends SIGKILL.
        eprintln!("{} ignored SIGTERM; killing it", self.name);
    }
}

fn signal_term(pid: u32) -> Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -TERM {pid} failed");
    Ok(())
}

/// A `brobygger serve` process and where it listens.
struct Node {
    proc: Proc,
    config_path: PathBuf,
    config: Config,
    federation_addr: SocketAddr,
    local_addr: SocketAddr,
}

/// A command without the caller's `BROBYGGER_*` overrides and `RUST_LOG`, so that the nodes run
/// with their generated configuration and default logging.
fn clean_command(program: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    for (name, _) in std::env::vars() {
        if name.starts_with("BROBYGGER_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command
}

/// Starts a node. Diagnostics: `LOAD_NODE_RUST_LOG` sets the nodes' `RUST_LOG`; with
/// `LOAD_KEEP_DIR` their stderr is also kept as `ORG.log` beside their configs.
async fn start_node(binary: &Path, config_path: &Path, org: &str) -> Result<Node> {
    let mut command = clean_command(binary);
    if let Some(filter) = std::env::var_os("LOAD_NODE_RUST_LOG") {
        command.env("RUST_LOG", filter);
    }
    let log_file = std::env::var_os("LOAD_KEEP_DIR")
        .and(config_path.parent())
        .map(|dir| dir.join(format!("{org}.log")));
    command
        .arg("serve")
        .arg("--config")
        .arg(config_path)
        .env("BROBYGGER_FEDERATION__LISTEN", "127.0.0.1:0")
        .env("BROBYGGER_LOCAL_API__LISTEN", "127.0.0.1:0")
        .env("BROBYGGER_FEDERATION__MANIFEST_POLL_INTERVAL_MS", "50");
    let (proc, line) = Proc::start(org, command, log_file).await?;
    // "<org> is running: federation on https://ADDR, local API on https://ADDR"
    let federation_addr = line
        .split("federation on https://")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("{org}: no federation address in `{line}`"))?;
    let local_addr = line
        .rsplit("://")
        .next()
        .and_then(|a| a.trim().parse().ok())
        .with_context(|| format!("{org}: no local API address in `{line}`"))?;
    let config = Config::load_with_overrides(config_path, &[])
        .map_err(|e| anyhow!("{}: {e}", config_path.display()))?;
    Ok(Node {
        proc,
        config_path: config_path.to_owned(),
        config,
        federation_addr,
        local_addr,
    })
}

async fn start_echo(exe: &Path, pki_dir: &Path, workers: usize) -> Result<(Proc, SocketAddr)> {
    let mut command = clean_command(exe);
    command
        .arg("--echo-server")
        .arg(pki_dir.join(KOMMUNE).join("node.pem"))
        .arg(pki_dir.join(KOMMUNE).join("node.key"))
        .arg(pki_dir.join("federation/ca.pem"))
        .arg(workers.to_string());
    let (proc, line) = Proc::start("echo", command, None).await?;
    let addr = line
        .rsplit("https://")
        .next()
        .and_then(|a| a.trim().parse().ok())
        .with_context(|| format!("echo: no address in `{line}`"))?;
    Ok((proc, addr))
}

/// The `brobygger` binary: `BROBYGGER_BIN`, else next to this example's directory
/// (`target/release/examples/load` → `target/release/brobygger`), else in `$CARGO_TARGET_DIR`.
fn find_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("BROBYGGER_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let mut candidates = Vec::new();
    if let Some(profile) = exe.parent().and_then(Path::parent) {
        candidates.push(profile.join("brobygger"));
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(Path::new(&target).join("release").join("brobygger"));
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        anyhow!(
            "no brobygger binary next to {} or in $CARGO_TARGET_DIR/release; \
             run `cargo build --release --bin brobygger` first",
            exe.display()
        )
    })
}

/// Which code the binary is: the checkout's commit, whether `src/` has uncommitted changes, and
/// whether the binary is older than the newest file under `src/` or `migrations/` (stale).
fn provenance(binary: &Path) -> (String, bool) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = !git(&[
        "status",
        "--porcelain",
        "--",
        "src",
        "migrations",
        "Cargo.toml",
    ])
    .is_empty();
    fn newest(dir: &Path) -> Option<std::time::SystemTime> {
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .filter_map(|e| {
                let path = e.path();
                if path.is_dir() {
                    newest(&path)
                } else {
                    e.metadata().ok()?.modified().ok()
                }
            })
            .max()
    }
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).ok();
    let source = [root.join("src"), root.join("migrations")]
        .iter()
        .filter_map(|d| newest(d))
        .max();
    let stale = matches!((built, source), (Some(b), Some(s)) if s > b);
    let when = built
        .map(time::OffsetDateTime::from)
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    (
        format!(
            "checkout {commit}{}; binary built {when}{}",
            if dirty {
                " with uncommitted changes in src/"
            } else {
                ""
            },
            if stale {
                " (OLDER than the newest source file: rebuild it)"
            } else {
                ""
            }
        ),
        stale,
    )
}

// ----- CPU accounting from /proc. -----

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process, in seconds; `None` once it has gone.
fn process_cpu(pid: u32, ticks: f64) -> Option<f64> {
    process_stat(pid, ticks).map(|(_, cpu)| cpu)
}

/// The command name and utime + stime (seconds) of a process, from `/proc/PID/stat`.
fn process_stat(pid: u32, ticks: f64) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, tail) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1;
    let fields: Vec<&str> = tail.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((comm.to_owned(), (utime + stime) / ticks))
}

/// Every process's command name and CPU seconds.
fn all_processes(ticks: f64) -> HashMap<u32, (String, f64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, process_stat(pid, ticks)?)))
        .collect()
}

/// CPU seconds of the whole machine (all CPUs) from /proc/stat: busy (user, nice, system, irq,
/// softirq, steal), of which steal, and of which irq + softirq.
fn machine_cpu(ticks: f64) -> (f64, f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let sum = |fields: &[usize]| fields.iter().filter_map(|&i| v.get(i)).sum::<f64>() / ticks;
    // user nice system idle iowait irq softirq steal
    (sum(&[0, 1, 2, 5, 6, 7]), sum(&[7]), sum(&[5, 6]))
}

/// The processes whose CPU time is reported.
#[derive(Clone)]
struct Watch {
    procs: Vec<(String, u32)>,
    ticks: f64,
    cpus: f64,
}

struct Snap {
    at: Instant,
    cpu: Vec<Option<f64>>,
    machine: (f64, f64, f64),
    all: HashMap<u32, (String, f64)>,
}

/// CPU seconds per process over a measurement, and the rest of the machine's busy CPU.
#[derive(Clone, Debug, Default)]
struct CpuUse {
    elapsed: f64,
    per: Vec<(String, f64)>,
    /// Busy CPU outside the watched processes, as a share of all CPUs over the measurement:
    /// the kernel's own threads (the journal, block I/O, softirqs: partly work done for the
    /// nodes), time stolen by the hypervisor, and other users' work.
    other_share: f64,
    /// Of that: steal, interrupts, and the busiest other processes by name.
    steal_share: f64,
    irq_share: f64,
    others: Vec<(String, f64)>,
}

impl Watch {
    fn snap(&self) -> Snap {
        Snap {
            at: Instant::now(),
            cpu: self
                .procs
                .iter()
                .map(|(_, pid)| process_cpu(*pid, self.ticks))
                .collect(),
            machine: machine_cpu(self.ticks),
            all: all_processes(self.ticks),
        }
    }

    fn since(&self, before: &Snap) -> CpuUse {
        let after = self.snap();
        let elapsed = after.at.duration_since(before.at).as_secs_f64();
        let capacity = (elapsed * self.cpus).max(1e-9);
        let mut per = Vec::new();
        for (i, (name, _)) in self.procs.iter().enumerate() {
            if let (Some(Some(a)), Some(Some(b))) = (before.cpu.get(i), after.cpu.get(i)) {
                per.push((name.clone(), b - a));
            }
        }
        let ours: f64 = per.iter().map(|(_, s)| s).sum();
        let other = (after.machine.0 - before.machine.0 - ours).max(0.0);
        // Other processes by name (kworker/1:2 → kworker), busiest first.
        let mut by_name: HashMap<String, f64> = HashMap::new();
        for (pid, (comm, cpu)) in &after.all {
            if self.procs.iter().any(|(_, p)| p == pid) {
                continue;
            }
            let was = before.all.get(pid).map_or(0.0, |(_, c)| *c);
            if cpu - was > 0.0 {
                let name = comm.split('/').next().unwrap_or(comm).to_owned();
                *by_name.entry(name).or_default() += cpu - was;
            }
        }
        let mut others: Vec<(String, f64)> = by_name
            .into_iter()
            .map(|(name, cpu)| (name, cpu / capacity))
            .filter(|(_, share)| *share >= 0.005)
            .collect();
        others.sort_by(|a, b| b.1.total_cmp(&a.1));
        others.truncate(4);
        CpuUse {
            elapsed,
            per,
            other_share: other / capacity,
            steal_share: (after.machine.1 - before.machine.1) / capacity,
            irq_share: (after.machine.2 - before.machine.2) / capacity,
            others,
        }
    }
}

impl CpuUse {
    /// Microseconds of CPU per item, per process.
    fn per_item(&self, items: u64) -> Vec<(String, f64)> {
        self.per
            .iter()
            .map(|(name, s)| (name.clone(), s * 1e6 / items.max(1) as f64))
            .collect()
    }

    /// "steal 1%, irq 4%, jbd2 6%, cargo 20%".
    fn other_breakdown(&self) -> String {
        let mut parts = vec![
            format!("steal {:.0}%", self.steal_share * 100.0),
            format!("irq {:.0}%", self.irq_share * 100.0),
        ];
        parts.extend(
            self.others
                .iter()
                .map(|(name, share)| format!("{name} {:.0}%", share * 100.0)),
        );
        parts.join(", ")
    }

    fn other_json(&self) -> Value {
        json!({
            "share": self.other_share,
            "steal_share": self.steal_share,
            "irq_share": self.irq_share,
            "busiest_other_processes": self.others.iter().map(|(n, s)| json!({"name": n, "share": s})).collect::<Vec<_>>(),
        })
    }
}

// ----- Bodies. -----

/// Message ids that are unique in this run and cheap to make: a UUIDv7 of the run's start, with
/// 20 random bits of the run and a 56-bit counter.
struct Ids {
    millis: u64,
    run: [u8; 3],
    next: AtomicU64,
}

impl Ids {
    fn new() -> Result<Self> {
        let now = time::OffsetDateTime::now_utc();
        Ok(Self {
            millis: u64::try_from(now.unix_timestamp_nanos() / 1_000_000)?,
            run: brobygger::consent::random_bytes::<3>().map_err(|e| anyhow!("{e:?}"))?,
            next: AtomicU64::new(1),
        })
    }

    fn take(&self, n: usize) -> u64 {
        self.next.fetch_add(n as u64, Ordering::Relaxed)
    }

    fn id(&self, n: u64) -> String {
        let c = n.to_be_bytes();
        let [r0, r1, r2] = self.run;
        MessageId::v7(
            self.millis,
            [r0, r1, r2, c[1], c[2], c[3], c[4], c[5], c[6], c[7]],
        )
        .to_string()
    }
}

/// A JSON document with its message id left open.
struct Template {
    head: String,
    tail: String,
}

impl Template {
    fn new(doc: &Value) -> Result<Self> {
        let text = serde_json::to_string(doc)?;
        let (head, tail) = text
            .split_once(SENTINEL)
            .context("the template has no message id")?;
        Ok(Self {
            head: head.to_owned(),
            tail: tail.to_owned(),
        })
    }

    fn render(&self, id: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(self.head.as_bytes());
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(self.tail.as_bytes());
    }
}

/// What the load sends: ids and the two templates (an envelope from red-barnet to herning, a
/// local submission at red-barnet).
struct Work {
    ids: Ids,
    envelope: Template,
    submission: Template,
}

impl Work {
    /// One envelope (`n == 1`), or a JSON array of `n`, with ids `first..first + n`.
    fn envelopes(&self, first: u64, n: usize, out: &mut Vec<u8>) {
        out.clear();
        if n == 1 {
            self.envelope.render(&self.ids.id(first), out);
            return;
        }
        out.push(b'[');
        for k in 0..n as u64 {
            if k > 0 {
                out.push(b',');
            }
            self.envelope.render(&self.ids.id(first + k), out);
        }
        out.push(b']');
    }

    /// A batch of `n` local submissions; returns their ids.
    fn submissions(&self, n: usize, out: &mut Vec<u8>) -> Vec<String> {
        let first = self.ids.take(n);
        out.clear();
        out.push(b'[');
        let mut ids = Vec::with_capacity(n);
        for k in 0..n as u64 {
            if k > 0 {
                out.push(b',');
            }
            let id = self.ids.id(first + k);
            self.submission.render(&id, out);
            ids.push(id);
        }
        out.push(b']');
        ids
    }
}

fn activity_body() -> Value {
    json!({
        "month": "2026-11",
        "programme": "smaaboernsklub",
        "enrolment_status": "enrolled",
        "sessions_offered": 4,
        "sessions_attended": 3,
        "next_step": "continue"
    })
}

// ----- A minimal HTTP/1.1 client over tokio-rustls: one connection, one request at a time. -----

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

struct Conn {
    tls: TlsStream,
    buf: Vec<u8>,
    request: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> Result<Conn> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::IpAddress(addr.ip().into());
        let tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await?;
        Ok(Conn {
            tls,
            buf: Vec::with_capacity(64 * 1024),
            request: Vec::with_capacity(64 * 1024),
        })
    }

    /// Sends one request and reads its answer: status and body.
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
        close: bool,
    ) -> Result<(u16, Vec<u8>)> {
        self.request.clear();
        write!(
            self.request,
            "{method} {path} HTTP/1.1\r\nHost: {FEDERATION}\r\n"
        )?;
        if method == "POST" {
            write!(
                self.request,
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            )?;
        }
        if close {
            self.request.extend_from_slice(b"Connection: close\r\n");
        }
        self.request.extend_from_slice(b"\r\n");
        self.request.extend_from_slice(body);
        self.tls.write_all(&self.request).await?;
        self.tls.flush().await?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> Result<(u16, Vec<u8>)> {
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status line")?;
        let mut length = None;
        for line in head.lines().skip(1) {
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.trim().parse::<usize>()?);
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    bail!("the server sent a body of unknown length ({line})");
                }
            }
        }
        let total = head_end + length.unwrap_or(0);
        while self.buf.len() < total {
            self.fill().await?;
        }
        let body = self.buf[head_end..total].to_vec();
        self.buf.drain(..total);
        Ok((status, body))
    }

    async fn fill(&mut self) -> Result<()> {
        if self.buf.capacity() - self.buf.len() < 16 * 1024 {
            self.buf.reserve(64 * 1024);
        }
        let n = self.tls.read_buf(&mut self.buf).await?;
        ensure!(n > 0, "the server closed the connection");
        Ok(())
    }
}

/// Presents red-barnet's node certificate and accepts only a server whose certificate names
/// herning (the node's own client-side verifier); no session resumption.
fn client_tls(pki_dir: &Path, federation: &FederationName) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki_dir.join("federation/ca.pem"))? {
        roots.add(cert?)?;
    }
    let chain = CertificateDer::pem_file_iter(pki_dir.join(NGO).join("node.pem"))?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(pki_dir.join(NGO).join("node.key"))?;
    let expected = NodeIdentity {
        federation: federation.clone(),
        org: KOMMUNE.parse()?,
    };
    let mut config =
        brobygger::identity::peer_client_config(Arc::new(roots), expected, chain, key)?;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// A server to measure: a node's federation listener or the echo server.
#[derive(Clone)]
struct Target {
    name: &'static str,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    /// Keep the answers, to verify the receipts afterwards (the gateway).
    keep: bool,
}

async fn open_connections(target: &Target, n: usize) -> Result<Vec<Conn>> {
    let opened =
        futures_util::future::join_all((0..n).map(|_| Conn::open(target.addr, &target.tls))).await;
    opened
        .into_iter()
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("connecting to {}", target.name))
}

/// An answer kept for verification: the first id of the request, its envelope count, the body.
struct Answer {
    first: u64,
    count: usize,
    body: Vec<u8>,
}

#[derive(Default)]
struct TaskOut {
    ok: u64,
    bad: u64,
    first_bad: Option<String>,
    answers: Vec<Answer>,
    latency: Vec<f64>,
    lag: Vec<f64>,
    unsent: u64,
}

impl TaskOut {
    fn answer(&mut self, keep: bool, first: u64, count: usize, status: u16, body: Vec<u8>) {
        if status == 200 {
            self.ok += 1;
            if keep {
                self.answers.push(Answer { first, count, body });
            }
        } else {
            self.bad += 1;
            if self.first_bad.is_none() {
                let text = String::from_utf8_lossy(&body);
                self.first_bad = Some(format!(
                    "{status}: {}",
                    text.chars().take(300).collect::<String>()
                ));
            }
        }
    }

    fn merge(&mut self, other: TaskOut) {
        self.ok += other.ok;
        self.bad += other.bad;
        self.first_bad = self.first_bad.take().or(other.first_bad);
        self.answers.extend(other.answers);
        self.latency.extend(other.latency);
        self.lag.extend(other.lag);
        self.unsent += other.unsent;
    }
}

async fn join_tasks(tasks: Vec<tokio::task::JoinHandle<Result<TaskOut>>>) -> Result<TaskOut> {
    let mut total = TaskOut::default();
    for task in tasks {
        total.merge(task.await??);
    }
    Ok(total)
}

/// Closed loop over 32 kept-alive connections for `duration`: each connection sends its next
/// request as soon as the previous one is answered.
async fn closed_loop(
    target: &Target,
    work: &Arc<Work>,
    per_request: usize,
    duration: Duration,
    watch: &Watch,
) -> Result<(TaskOut, CpuUse)> {
    let conns = open_connections(target, CONNECTIONS).await?;
    let before = watch.snap();
    let deadline = Instant::now() + duration;
    let tasks = conns
        .into_iter()
        .map(|mut conn| {
            let (work, keep) = (work.clone(), target.keep);
            tokio::spawn(async move {
                let mut out = TaskOut::default();
                let mut body = Vec::new();
                while Instant::now() < deadline {
                    let first = work.ids.take(per_request);
                    work.envelopes(first, per_request, &mut body);
                    let (status, answer) = tokio::time::timeout(
                        REQUEST_TIMEOUT,
                        conn.send("POST", ENVELOPES_PATH, &body, false),
                    )
                    .await??;
                    out.answer(keep, first, per_request, status, answer);
                }
                anyhow::Ok(out)
            })
        })
        .collect();
    let out = join_tasks(tasks).await?;
    Ok((out, watch.since(&before)))
}

/// Open loop at `rate` requests per second (one envelope each) for `duration`: request `i` is
/// due at `start + i / rate`, whatever happened to earlier ones, on whichever of the 32
/// connections is free; its latency runs from when it was due (coordinated omission
/// corrected). Requests still unsent at 3 × `duration` count with their wait so far.
async fn open_loop(
    target: &Target,
    work: &Arc<Work>,
    rate: u64,
    duration: Duration,
    watch: &Watch,
) -> Result<(TaskOut, CpuUse)> {
    let conns = open_connections(target, CONNECTIONS).await?;
    let total = rate * duration.as_secs();
    let next = Arc::new(AtomicU64::new(0));
    let before = watch.snap();
    let start = Instant::now() + Duration::from_millis(20);
    let hard_stop = start + duration * 3;
    let tasks = conns
        .into_iter()
        .map(|mut conn| {
            let (work, next, keep) = (work.clone(), next.clone(), target.keep);
            tokio::spawn(async move {
                let mut out = TaskOut::default();
                let mut body = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
                    let now = Instant::now();
                    if now > hard_stop {
                        out.unsent += 1;
                        out.latency.push(ms(now.duration_since(due)));
                        continue;
                    }
                    tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
                    let sent = Instant::now();
                    out.lag.push(ms(sent.saturating_duration_since(due)));
                    let first = work.ids.take(1);
                    work.envelopes(first, 1, &mut body);
                    let (status, answer) = tokio::time::timeout(
                        REQUEST_TIMEOUT,
                        conn.send("POST", ENVELOPES_PATH, &body, false),
                    )
                    .await??;
                    out.latency.push(ms(Instant::now().duration_since(due)));
                    out.answer(keep, first, 1, status, answer);
                }
                anyhow::Ok(out)
            })
        })
        .collect();
    let mut out = join_tasks(tasks).await?;
    out.latency.sort_by(f64::total_cmp);
    out.lag.sort_by(f64::total_cmp);
    Ok((out, watch.since(&before)))
}

/// New connections for `duration` from 32 concurrent connectors: TCP, a full TLS 1.3
/// handshake with the client certificate (no resumption), one request (404) and close.
async fn handshakes(target: &Target, duration: Duration, watch: &Watch) -> Result<(u64, CpuUse)> {
    let before = watch.snap();
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let mut conn =
                        tokio::time::timeout(REQUEST_TIMEOUT, Conn::open(target.addr, &target.tls))
                            .await??;
                    let (status, _) = tokio::time::timeout(
                        REQUEST_TIMEOUT,
                        conn.send("GET", PROBE_PATH, &[], true),
                    )
                    .await??;
                    ensure!(status == 404, "{}: the probe got {status}", target.name);
                    n += 1;
                }
                anyhow::Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok((total, watch.since(&before)))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// p50 and p99 of 200 × (4 KiB write + fdatasync) in `dir`, in ms.
fn fsync_latency(dir: &Path) -> Result<(f64, f64)> {
    let path = dir.join("load-fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let mut samples = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        file.write_all(&[0u8; 4096])?;
        file.sync_data()?;
        samples.push(ms(t.elapsed()));
    }
    drop(file);
    std::fs::remove_file(&path)?;
    samples.sort_by(f64::total_cmp);
    Ok((percentile(&samples, 0.5), percentile(&samples, 0.99)))
}

// ----- The local API. -----

struct LocalApi {
    client: reqwest::Client,
    issuers: HashMap<String, DevIssuer>,
}

impl LocalApi {
    fn new(ca_pem: &[u8], nodes: &[&Node]) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(cert?)?;
        }
        let mut config =
            rustls::ClientConfig::builder_with_provider(brobygger::identity::crypto_provider())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .http1_only()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .build()?;
        let mut issuers = HashMap::new();
        for node in nodes {
            let local = &node.config.local_api;
            let key = local
                .dev_token_key
                .as_ref()
                .context("the generated config has no dev_token_key")?;
            let pem = std::fs::read_to_string(key)?;
            let issuer =
                DevIssuer::from_pem(&pem, &local.dev_token_kid, &local.issuer, &local.audience)
                    .map_err(|e| anyhow!("dev issuer: {e}"))?;
            issuers.insert(node.config.org.to_string(), issuer);
        }
        Ok(Self { client, issuers })
    }

    fn token(&self, org: &str, roles: &[Role]) -> Result<String> {
        let issuer = self.issuers.get(org).context("no issuer")?;
        Ok(issuer.mint(
            "load-driver",
            roles,
            Some(UNIT),
            3600,
            time::OffsetDateTime::now_utc().unix_timestamp(),
        ))
    }

    async fn call(
        &self,
        node: &Node,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Value)> {
        let mut request = self
            .client
            .request(method, format!("https://{}{path}", node.local_addr))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }
}

async fn wait_until<F, Fut>(what: &str, within: Duration, mut condition: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !condition().await {
        ensure!(start.elapsed() < within, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Publishes the next manifest serial with the nodes' real endpoints; returns herning's audit
/// verifier key as the manifest names it.
fn publish_manifest(
    pki_dir: &Path,
    federation: &FederationName,
    nodes: &[&Node],
) -> Result<VerifierKey> {
    let path = pki_dir.join("federation/manifest.note");
    let note = std::fs::read_to_string(&path)?;
    let text = note.rsplit_once("\n\n").context("not a signed note")?.0;
    let mut doc: ManifestDocV1 = serde_json::from_str(text)?;
    doc.serial += 1;
    for member in &mut doc.members {
        if let Some(node) = nodes
            .iter()
            .find(|n| n.config.org.as_str() == member.org_id)
        {
            member.endpoint = format!("https://{}", node.federation_addr);
        }
    }
    let signer = pki::load_note_signer(
        &pki_dir.join("federation/operator.key"),
        &pki::operator_key_name(federation),
    )?;
    let signed = pki::sign_manifest_text(&serde_json::to_string_pretty(&doc)?, &signer)?;
    std::fs::write(&path, signed)?;
    let kommune = doc
        .members
        .iter()
        .find(|m| m.org_id == KOMMUNE)
        .context("herning is not in the manifest")?;
    kommune
        .audit_verifier_key
        .parse()
        .map_err(|e| anyhow!("herning's audit key: {e}"))
}

// ----- End to end and ingestion, through red-barnet's local API. -----

/// Red-barnet's outbox: (queued, delivered, anything else).
async fn outbox_counts(db: &Database) -> Result<(u64, u64, u64)> {
    let mut counts = (0, 0, 0);
    for (status, n) in storage::outbox_status_counts(db).await? {
        match status.as_str() {
            "queued" => counts.0 += n,
            "delivered" => counts.1 += n,
            _ => counts.2 += n,
        }
    }
    Ok(counts)
}

/// Submits a batch; returns the number accepted (202) and the first refusal, if any.
async fn submit_batch(
    local: &LocalApi,
    club: &Node,
    token: &str,
    body: Vec<u8>,
) -> Result<(usize, Option<String>)> {
    let (status, answer) = local
        .call(
            club,
            reqwest::Method::POST,
            "/api/v1/messages",
            token,
            Some(body),
        )
        .await?;
    ensure!(status == 200, "a submission batch got {status}: {answer}");
    let results = answer["results"].as_array().context("no results")?;
    let accepted = results.iter().filter(|r| r["status"] == 202).count();
    let refused = results
        .iter()
        .find(|r| r["status"] != 202)
        .map(|r| r.to_string());
    Ok((accepted, refused))
}

struct EndToEnd {
    delivered: u64,
    elapsed: f64,
    cpu: CpuUse,
    ids: Vec<String>,
    drain_seconds: f64,
}

/// Keeps up to [`E2E_BACKLOG`] messages queued at red-barnet (batches of 1,000 at its local
/// API) and counts, in red-barnet's outbox, how many its delivery worker had verified
/// receipts for over `duration` (after the backlog first formed). Then stops submitting and
/// waits until everything is delivered.
async fn end_to_end(
    local: &Arc<LocalApi>,
    club: &Arc<Node>,
    work: &Arc<Work>,
    duration: Duration,
    watch: &Watch,
) -> Result<EndToEnd> {
    let db = Database::open_read_only(&club.config.database)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let queued = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let submitter = {
        let (local, club, work, queued, stop) = (
            local.clone(),
            club.clone(),
            work.clone(),
            queued.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let token = local.token(NGO, &[Role::Submitter])?;
            let mut accepted_ids = Vec::new();
            let mut body = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if queued.load(Ordering::Relaxed) >= E2E_BACKLOG {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                let ids = work.submissions(INGEST_BATCH, &mut body);
                let (accepted, refused) =
                    submit_batch(&local, &club, &token, std::mem::take(&mut body)).await?;
                ensure!(
                    refused.is_none(),
                    "red-barnet refused a submission: {refused:?}"
                );
                ensure!(accepted == ids.len());
                queued.fetch_add(accepted as u64, Ordering::Relaxed);
                accepted_ids.extend(ids);
            }
            anyhow::Ok(accepted_ids)
        })
    };
    let poll = |db: &Database| {
        let db = db.clone();
        let queued = queued.clone();
        async move {
            let counts = outbox_counts(&db).await?;
            queued.store(counts.0, Ordering::Relaxed);
            anyhow::Ok((Instant::now(), counts))
        }
    };
    // Warm-up: the first delivered batch, with a backlog behind it.
    let warm = Instant::now();
    let (mut t0, mut c0) = poll(&db).await?;
    while c0.1 == 0 || c0.0 < INGEST_BATCH as u64 {
        ensure!(
            warm.elapsed() < Duration::from_secs(60),
            "nothing was delivered within 60 s"
        );
        ensure!(!submitter.is_finished(), "the submitter stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
        (t0, c0) = poll(&db).await?;
    }
    let before = watch.snap();
    let (t1, c1) = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ensure!(!submitter.is_finished(), "the submitter stopped");
        let (t, c) = poll(&db).await?;
        if t.duration_since(t0) >= duration {
            break (t, c);
        }
    };
    let cpu = watch.since(&before);
    stop.store(true, Ordering::Relaxed);
    let ids = submitter.await??;
    ensure!(
        c1.2 == 0,
        "red-barnet refused or cancelled {} messages",
        c1.2
    );
    let drain = Instant::now();
    wait_until(
        "red-barnet's backlog is delivered",
        Duration::from_secs(300),
        || async { poll(&db).await.is_ok_and(|(_, c)| c.0 == 0) },
    )
    .await?;
    let (_, end) = poll(&db).await?;
    db.close().await;
    ensure!(
        end.2 == 0,
        "red-barnet holds {} refused or cancelled",
        end.2
    );
    ensure!(
        end.1 == ids.len() as u64,
        "{} delivered, {} accepted",
        end.1,
        ids.len()
    );
    Ok(EndToEnd {
        delivered: c1.1 - c0.1,
        elapsed: t1.duration_since(t0).as_secs_f64(),
        cpu,
        ids,
        drain_seconds: drain.elapsed().as_secs_f64(),
    })
}

/// Batches of 1,000 from [`INGEST_SUBMITTERS`] concurrent submitters for `duration`; the
/// accepted count.
async fn ingest(
    local: &Arc<LocalApi>,
    club: &Arc<Node>,
    work: &Arc<Work>,
    duration: Duration,
    watch: &Watch,
) -> Result<(u64, CpuUse)> {
    let token = Arc::new(local.token(NGO, &[Role::Submitter])?);
    let before = watch.snap();
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..INGEST_SUBMITTERS)
        .map(|_| {
            let (local, club, work, token) =
                (local.clone(), club.clone(), work.clone(), token.clone());
            tokio::spawn(async move {
                let mut accepted = 0u64;
                let mut body = Vec::new();
                while Instant::now() < deadline {
                    work.submissions(INGEST_BATCH, &mut body);
                    let (n, refused) =
                        submit_batch(&local, &club, &token, std::mem::take(&mut body)).await?;
                    ensure!(
                        refused.is_none(),
                        "red-barnet refused a submission: {refused:?}"
                    );
                    accepted += n as u64;
                }
                anyhow::Ok(accepted)
            })
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        accepted += task.await??;
    }
    Ok((accepted, watch.since(&before)))
}

// ----- Correctness. -----

/// A receipt that verified, reduced to what the database check needs.
struct Verified {
    message_id: String,
    leaf_index: u64,
    entry_sha: [u8; 32],
    envelope_sha: [u8; 32],
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn verify_answers(answers: &[Answer], work: &Work, key: &VerifierKey) -> Result<Vec<Verified>> {
    let mut out = Vec::new();
    let mut sent = Vec::new();
    for answer in answers {
        let receipts: Vec<ReceiptV1> = if answer.count == 1 {
            vec![serde_json::from_slice(&answer.body).context("an answer is not a receipt")?]
        } else {
            let batch: BatchAnswerV1 = serde_json::from_slice(&answer.body)?;
            ensure!(
                batch.results.len() == answer.count,
                "{} results for {} envelopes",
                batch.results.len(),
                answer.count
            );
            batch
                .results
                .iter()
                .map(|r| {
                    ensure!(
                        r.status == 200 && !r.replayed,
                        "an envelope of a batch got {}: {}",
                        r.status,
                        r.answer.get()
                    );
                    Ok(serde_json::from_str(r.answer.get())?)
                })
                .collect::<Result<_>>()?
        };
        for (k, receipt) in receipts.iter().enumerate() {
            let id = work.ids.id(answer.first + k as u64);
            sent.clear();
            work.envelope.render(&id, &mut sent);
            brobygger::receipt::verify(receipt, &id, &sent, key)
                .map_err(|e| anyhow!("the receipt of {id} does not verify: {e}"))?;
            let entry = base64::engine::general_purpose::STANDARD.decode(&receipt.entry)?;
            out.push(Verified {
                message_id: id,
                leaf_index: receipt.leaf_index,
                entry_sha: sha256(&entry),
                envelope_sha: sha256(&sent),
            });
        }
    }
    Ok(out)
}

/// Verifies the receipts on both cores.
async fn verify_all(
    answers: Vec<Answer>,
    work: &Arc<Work>,
    key: &VerifierKey,
) -> Result<Vec<Verified>> {
    let answers = Arc::new(answers);
    let half = answers.len() / 2;
    let mut tasks = Vec::new();
    for (lo, hi) in [(0, half), (half, answers.len())] {
        let (answers, work, key) = (answers.clone(), work.clone(), key.clone());
        tasks.push(tokio::task::spawn_blocking(move || {
            verify_answers(&answers[lo..hi], &work, &key)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}

/// Herning's database against the receipts: each verified receipt has its inbox row (same
/// bytes, same leaf index) and, at that index, exactly the audit entry the receipt carries (an
/// admitting `federation.envelope` entry); each end-to-end message has its row and admitting
/// entry; and the inbox holds nothing else. Returns the end-to-end envelopes as herning stored
/// them.
async fn check_receiver(
    config: &Config,
    verified: &[Verified],
    e2e: &[String],
) -> Result<HashMap<String, Vec<u8>>> {
    let db = Database::open_read_only(&config.database)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let inbox = storage::inbox_messages(&db).await?;
    let entries = storage::audit_entries(&db).await?;
    db.close().await;
    let mut rows = HashMap::with_capacity(inbox.len());
    for message in &inbox {
        ensure!(
            rows.insert(message.message_id.as_str(), message).is_none(),
            "{} is in the inbox twice",
            message.message_id
        );
    }
    let by_index: HashMap<u64, &[u8]> = entries
        .iter()
        .map(|e| (e.idx, e.entry.as_slice()))
        .collect();
    let admitting = |index: u64, envelope: &[u8]| -> Result<()> {
        let bytes = by_index
            .get(&index)
            .with_context(|| format!("no audit entry at {index}"))?;
        let record = entry::decode(bytes)?.record;
        ensure!(
            record.action == "federation.envelope"
                && record.decision == Some(Decision::Permit)
                && record.envelope_sha256.as_deref()
                    == Some(hex::encode(sha256(envelope)).as_str()),
            "the audit entry at {index} does not admit that envelope"
        );
        Ok(())
    };
    let mut seen = HashSet::with_capacity(verified.len());
    for v in verified {
        ensure!(
            seen.insert(v.message_id.as_str()),
            "two receipts for {}",
            v.message_id
        );
        let row = rows
            .get(v.message_id.as_str())
            .with_context(|| format!("lost: no inbox row for {}", v.message_id))?;
        ensure!(
            row.audit_idx == v.leaf_index,
            "{}: inbox row at audit index {}, receipt at {}",
            v.message_id,
            row.audit_idx,
            v.leaf_index
        );
        ensure!(
            sha256(&row.envelope) == v.envelope_sha,
            "{}: stored bytes differ",
            v.message_id
        );
        let stored = by_index
            .get(&v.leaf_index)
            .with_context(|| format!("no audit entry at {}", v.leaf_index))?;
        ensure!(
            sha256(stored) == v.entry_sha,
            "the audit entry at {} is not the one in the receipt",
            v.leaf_index
        );
        admitting(v.leaf_index, &row.envelope)?;
    }
    let mut envelopes = HashMap::with_capacity(e2e.len());
    for id in e2e {
        ensure!(seen.insert(id.as_str()), "{id} twice");
        let row = rows
            .get(id.as_str())
            .with_context(|| format!("lost: no inbox row for delivered {id}"))?;
        admitting(row.audit_idx, &row.envelope)?;
        envelopes.insert(id.clone(), row.envelope.clone());
    }
    ensure!(
        inbox.len() == verified.len() + e2e.len(),
        "herning's inbox holds {} messages, {} expected",
        inbox.len(),
        verified.len() + e2e.len()
    );
    Ok(envelopes)
}

/// Red-barnet's stored receipts of the end-to-end messages verify against what herning stored.
async fn check_sender(
    config: &Config,
    envelopes: &HashMap<String, Vec<u8>>,
    key: &VerifierKey,
) -> Result<()> {
    let db = Database::open_read_only(&config.database)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    for (id, bytes) in envelopes {
        let message_id: MessageId = id.parse().map_err(|e| anyhow!("{e}"))?;
        let message = storage::outbox_message(&db, &message_id)
            .await?
            .with_context(|| format!("{id} is not in red-barnet's outbox"))?;
        ensure!(message.status == "delivered", "{id} is {}", message.status);
        let receipt: ReceiptV1 =
            serde_json::from_str(message.receipt.as_deref().context("no receipt")?)?;
        brobygger::receipt::verify(&receipt, id, bytes, key)
            .map_err(|e| anyhow!("red-barnet's receipt of {id}: {e}"))?;
    }
    db.close().await;
    Ok(())
}

/// `brobygger audit verify --config FILE`; its exit code and output.
async fn audit_verify(binary: &Path, config: &Path) -> Result<(i32, String)> {
    let output = clean_command(binary)
        .args(["audit", "verify", "--config"])
        .arg(config)
        .output()
        .await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.code().unwrap_or(-1), text.trim().to_owned()))
}

// ----- The run. -----

/// One throughput figure, the gateway's beside the ceiling's.
struct Row {
    key: &'static str,
    what: String,
    unit: &'static str,
    gateway: f64,
    ceiling: Option<f64>,
    ceiling_what: &'static str,
    gateway_cpu: Vec<(String, f64)>,
    ceiling_cpu: Vec<(String, f64)>,
    gateway_use: CpuUse,
    ceiling_use: Option<CpuUse>,
    count: u64,
}

struct Latency {
    rate: u64,
    gateway: LatencyFigures,
    ceiling: LatencyFigures,
}

#[derive(Default)]
struct LatencyFigures {
    requests: u64,
    achieved: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    lag_p50: f64,
    lag_p99: f64,
    unsent: u64,
    cpu: Vec<(String, f64)>,
    cpu_use: CpuUse,
}

impl LatencyFigures {
    fn new(out: &TaskOut, cpu: &CpuUse) -> Self {
        Self {
            requests: out.ok,
            achieved: out.ok as f64 / cpu.elapsed,
            p50: percentile(&out.latency, 0.5),
            p99: percentile(&out.latency, 0.99),
            p999: percentile(&out.latency, 0.999),
            max: out.latency.last().copied().unwrap_or(f64::NAN),
            lag_p50: percentile(&out.lag, 0.5),
            lag_p99: percentile(&out.lag, 0.99),
            unsent: out.unsent,
            cpu: cpu.per_item(out.ok),
            cpu_use: cpu.clone(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "requests": self.requests, "achieved_per_s": self.achieved,
            "p50_ms": self.p50, "p99_ms": self.p99, "p999_ms": self.p999, "max_ms": self.max,
            "send_lag_p50_ms": self.lag_p50, "send_lag_p99_ms": self.lag_p99,
            "unsent_at_deadline": self.unsent,
            "cpu_us_per_request": cpu_json(&self.cpu), "other_cpu": self.cpu_use.other_json(),
        })
    }
}

fn cpu_json(cpu: &[(String, f64)]) -> Value {
    Value::Object(
        cpu.iter()
            .map(|(name, us)| (name.clone(), json!((us * 10.0).round() / 10.0)))
            .collect(),
    )
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    latency: Vec<Latency>,
    fsync: (f64, f64),
    memory: Vec<Memory>,
    checks: Vec<(String, bool, String)>,
    failures: Vec<String>,
    provenance: String,
    e2e_drain_seconds: f64,
    /// Per process: warnings and errors it logged, and the first of them.
    logs: Vec<(String, String, Vec<String>)>,
}

fn fmt_int(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let digits = format!("{:.0}", v.round());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 && c != '-' {
            out.push(',');
        }
        out.push(c);
    }
    out
}

async fn run(options: Options) -> Result<bool> {
    let seconds = Duration::from_secs(options.seconds);
    let binary = find_binary()?;
    let exe = std::env::current_exe()?;
    let ticks = clock_ticks();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let started = time::OffsetDateTime::now_utc();
    println!("brobygger end-to-end load (issue 7)");
    let (provenance, stale) = provenance(&binary);
    println!("{provenance}");
    if stale {
        println!("WARNING: the binary is older than the source: these figures are of older code");
    }
    println!(
        "binary {}; {} s per measurement; {CONNECTIONS} connections; {cpus} CPUs; load average {}",
        binary.display(),
        options.seconds,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

    // A fresh development federation.
    let mut dir = tempfile::tempdir()?;
    if std::env::var_os("LOAD_KEEP_DIR").is_some() {
        dir.disable_cleanup(true);
        println!("keeping {}", dir.path().display());
    }
    let pki_dir = dir.path().to_path_buf();
    let federation: FederationName = FEDERATION.parse()?;
    pki::init(&InitOptions {
        dir: pki_dir.clone(),
        federation: federation.clone(),
        orgs: vec![
            OrgSpec {
                org: KOMMUNE.parse()?,
                kind: OrgKind::Municipality,
            },
            OrgSpec {
                org: NGO.parse()?,
                kind: OrgKind::Ngo,
            },
        ],
        force: false,
        base_port: 7100,
        now: started,
    })?;
    let kommune = start_node(&binary, &pki_dir.join(format!("{KOMMUNE}.toml")), KOMMUNE).await?;
    let club = start_node(&binary, &pki_dir.join(format!("{NGO}.toml")), NGO).await?;
    let audit_key = publish_manifest(&pki_dir, &federation, &[&kommune, &club])?;
    let (echo, echo_addr) = start_echo(&exe, &pki_dir, kommune.config.server.workers).await?;
    println!(
        "herning-kommune pid {} (federation {}), red-barnet pid {} (local API {}), echo pid {} ({}); \
         {} server workers each",
        kommune.proc.pid,
        kommune.federation_addr,
        club.proc.pid,
        club.local_addr,
        echo.pid,
        echo_addr,
        kommune.config.server.workers
    );
    let mut kommune = kommune;
    let club = Arc::new(club);
    let local = Arc::new(LocalApi::new(
        &std::fs::read(pki_dir.join("federation/ca.pem"))?,
        &[&kommune, &*club],
    )?);

    // Both nodes reach each other under the new manifest.
    for (from, to) in [(&kommune, NGO), (&*club, KOMMUNE)] {
        let token = local.token(from.config.org.as_str(), &[Role::Admin])?;
        let path = format!("/api/v1/peers/{to}/ping");
        wait_until(
            &format!("{} reaches {to}", from.config.org),
            Duration::from_secs(60),
            || async {
                local
                    .call(from, reqwest::Method::POST, &path, &token, None)
                    .await
                    .is_ok_and(|(status, _)| status == 200)
            },
        )
        .await?;
    }
    // A consent at herning for red-barnet, held by the club.
    let consent_request = json!({
        "counterpart": NGO,
        "purposes": [{"id": PURPOSE, "version": 1}],
        "consented_by": ["custody-holder-1", "custody-holder-2"],
        "policy": "all-custody-holders",
        "evidence": "paper-witnessed",
        "valid_from": (started.date() - time::Duration::days(1)).to_string(),
        "valid_until": (started.date() + time::Duration::days(30)).to_string(),
        "retention_at_recipient_days": 365,
        "withdrawal": "contact-either-party",
        "local_subject_key": "sag-load-0001",
    });
    let admin = local.token(KOMMUNE, &[Role::ConsentAdmin, Role::Submitter])?;
    let (status, consent) = local
        .call(
            &kommune,
            reqwest::Method::POST,
            "/api/v1/consents",
            &admin,
            Some(serde_json::to_vec(&consent_request)?),
        )
        .await?;
    ensure!(
        status == 201,
        "recording the consent got {status}: {consent}"
    );
    let notice = consent["notice_message_id"]
        .as_str()
        .context("no notice id")?;
    let notice_path = format!("/api/v1/messages/{notice}");
    wait_until(
        "red-barnet holds the consent",
        Duration::from_secs(60),
        || async {
            local
                .call(&kommune, reqwest::Method::GET, &notice_path, &admin, None)
                .await
                .is_ok_and(|(_, s)| s["status"] == "delivered")
        },
    )
    .await?;
    println!(
        "consent {} recorded at herning and held by red-barnet",
        consent["consent_id"]
    );

    let work = Arc::new(Work {
        ids: Ids::new()?,
        envelope: Template::new(&json!({
            "v": 1,
            "message_id": SENTINEL,
            "type": "activity-summary",
            "sender": NGO,
            "recipient": KOMMUNE,
            "purpose": {"id": PURPOSE, "version": 1},
            "consent_id": consent["consent_id"],
            "subject_ref": consent["subject_ref"],
            "sent_at": brobygger::admission::sent_at(time::OffsetDateTime::now_utc()),
            "body": activity_body(),
        }))?,
        submission: Template::new(&json!({
            "message_id": SENTINEL,
            "type": "activity-summary",
            "recipient": KOMMUNE,
            "purpose": {"id": PURPOSE, "version": 1},
            "consent_id": consent["consent_id"],
            "body": activity_body(),
        }))?,
    });
    let tls = client_tls(&pki_dir, &federation)?;
    let gateway = Target {
        name: "gateway",
        addr: kommune.federation_addr,
        tls: tls.clone(),
        keep: true,
    };
    let ceiling = Target {
        name: "echo",
        addr: echo_addr,
        tls,
        keep: false,
    };
    let watch = Watch {
        procs: vec![
            (KOMMUNE.to_owned(), kommune.proc.pid),
            (NGO.to_owned(), club.proc.pid),
            ("echo".to_owned(), echo.pid),
            ("driver".to_owned(), std::process::id()),
        ],
        ticks,
        cpus,
    };
    let mut report = Report {
        provenance: provenance.clone(),
        ..Report::default()
    };

    let mut verified: Vec<Verified> = Vec::new();

    // Warm-up (not reported; the gateway's receipts are checked like the rest).
    let warm = Duration::from_secs(1);
    let (out, _) = closed_loop(&gateway, &work, 1, warm, &watch).await?;
    bad_answers(&gateway, &out, "warm-up", &mut report);
    verified.extend(verify_all(out.answers, &work, &audit_key).await?);
    closed_loop(&ceiling, &work, 1, warm, &watch).await?;

    // e (part): the disk under herning's data directory, now, between measurements.
    let data_dir = kommune.config.data_dir.clone();
    report.fsync = tokio::task::spawn_blocking(move || fsync_latency(&data_dir)).await??;
    println!(
        "fsync (4 KiB write + fdatasync in herning's data dir): p50 {:.2} ms, p99 {:.2} ms",
        report.fsync.0, report.fsync.1
    );

    // d. New connections.
    if options.runs("d") {
        print_progress("d. handshakes");
        let (g, g_cpu) = handshakes(&gateway, seconds, &watch).await?;
        let (c, c_cpu) = handshakes(&ceiling, seconds, &watch).await?;
        report.rows.push(Row {
            key: "d",
            what: "new mTLS connections (full handshake + 1 request)".into(),
            unit: "conn/s",
            gateway: g as f64 / g_cpu.elapsed,
            ceiling: Some(c as f64 / c_cpu.elapsed),
            ceiling_what: "echo",
            gateway_cpu: g_cpu.per_item(g),
            ceiling_cpu: c_cpu.per_item(c),
            gateway_use: g_cpu,
            ceiling_use: Some(c_cpu),
            count: g,
        });
    }

    // a. Inbound, one envelope per request, then 100 per request.
    for (per_request, key, what, unit) in [
        (1, "a1", "inbound, 1 envelope/request", "req/s"),
        (
            BATCH_ENVELOPES,
            "a2",
            "inbound, 100 envelopes/request",
            "env/s",
        ),
    ] {
        if !options.runs(key) {
            continue;
        }
        print_progress(&format!("{key}. {what}"));
        let (g, g_cpu) = closed_loop(&gateway, &work, per_request, seconds, &watch).await?;
        let (c, c_cpu) = closed_loop(&ceiling, &work, per_request, seconds, &watch).await?;
        bad_answers(&gateway, &g, what, &mut report);
        bad_answers(&ceiling, &c, what, &mut report);
        let items = |out: &TaskOut| out.ok * per_request as u64;
        report.rows.push(Row {
            key,
            what: what.into(),
            unit,
            gateway: items(&g) as f64 / g_cpu.elapsed,
            ceiling: Some(items(&c) as f64 / c_cpu.elapsed),
            ceiling_what: "echo",
            gateway_cpu: g_cpu.per_item(items(&g)),
            ceiling_cpu: c_cpu.per_item(items(&c)),
            gateway_use: g_cpu,
            ceiling_use: Some(c_cpu),
            count: items(&g),
        });
        verified.extend(verify_all(g.answers, &work, &audit_key).await?);
    }

    // e. Latency at fixed offered loads.
    for rate in RATES {
        if !options.runs("e") {
            break;
        }
        print_progress(&format!("e. latency at {rate}/s"));
        let (g, g_cpu) = open_loop(&gateway, &work, rate, seconds, &watch).await?;
        let (c, c_cpu) = open_loop(&ceiling, &work, rate, seconds, &watch).await?;
        bad_answers(&gateway, &g, "latency", &mut report);
        bad_answers(&ceiling, &c, "latency", &mut report);
        report.latency.push(Latency {
            rate,
            gateway: LatencyFigures::new(&g, &g_cpu),
            ceiling: LatencyFigures::new(&c, &c_cpu),
        });
        verified.extend(verify_all(g.answers, &work, &audit_key).await?);
    }

    // b. End to end.
    let batched_echo = report
        .rows
        .iter()
        .find(|r| r.key == "a2")
        .and_then(|r| r.ceiling);
    let mut e2e_ids = Vec::new();
    if options.runs("b") {
        print_progress("b. end to end");
        let e2e = end_to_end(&local, &club, &work, seconds, &watch).await?;
        report.e2e_drain_seconds = e2e.drain_seconds;
        report.rows.push(Row {
            key: "b",
            what: "end to end, delivered with verified receipt".into(),
            unit: "exch/s",
            gateway: e2e.delivered as f64 / e2e.elapsed,
            ceiling: batched_echo,
            ceiling_what: "echo, 100/request",
            gateway_cpu: e2e.cpu.per_item(e2e.delivered),
            ceiling_cpu: Vec::new(),
            gateway_use: e2e.cpu,
            ceiling_use: None,
            count: e2e.delivered,
        });
        report
            .memory
            .push(club.proc.memory(format!("{NGO} after b"))?);
        e2e_ids = e2e.ids;
    }

    // herning's part ends: memory, a graceful stop, its database and log checked.
    report
        .memory
        .push(kommune.proc.memory(format!("{KOMMUNE} at its end"))?);
    println!("stopping herning; checking its receipts, database and log ...");
    let status = kommune.proc.terminate().await?;
    report.checks.push((
        "herning stops on SIGTERM with exit 0".into(),
        status.success(),
        format!("{status}"),
    ));
    let receipts = verified.len();
    let e2e_envelopes = match check_receiver(&kommune.config, &verified, &e2e_ids).await {
        Ok(envelopes) => {
            report.checks.push((
                format!(
                    "{receipts} receipts verify (receipt::verify, herning's key from the manifest), \
                     each with its inbox row and admitting audit entry; {} end-to-end messages \
                     in herning's inbox with admitting entries; nothing else in the inbox",
                    e2e_ids.len()
                ),
                true,
                String::new(),
            ));
            Some(envelopes)
        }
        Err(e) => {
            report.checks.push((
                "herning's database matches the receipts".into(),
                false,
                format!("{e:#}"),
            ));
            None
        }
    };
    drop(verified);
    let (code, text) = audit_verify(&binary, &kommune.config_path).await?;
    report.checks.push((
        "brobygger audit verify --config herning-kommune.toml exits 0".into(),
        code == 0,
        text,
    ));

    // c. Ingestion at red-barnet, with herning stopped (delivery waits behind its breaker).
    if options.runs("c") {
        print_progress("c. batch ingestion");
        let (accepted, cpu) = ingest(&local, &club, &work, seconds, &watch).await?;
        report.rows.push(Row {
            key: "c",
            what: "batch ingestion, 1,000/request (local API)".into(),
            unit: "msg/s",
            gateway: accepted as f64 / cpu.elapsed,
            ceiling: batched_echo,
            ceiling_what: "echo, 100/request",
            gateway_cpu: cpu.per_item(accepted),
            ceiling_cpu: Vec::new(),
            gateway_use: cpu,
            ceiling_use: None,
            count: accepted,
        });
    }
    report
        .memory
        .push(club.proc.memory(format!("{NGO} at its end"))?);

    // Stop everything; check red-barnet's receipts and log.
    let mut club = Arc::into_inner(club).context("red-barnet is still shared")?;
    let status = club.proc.terminate().await?;
    report.checks.push((
        "red-barnet stops on SIGTERM with exit 0".into(),
        status.success(),
        format!("{status}"),
    ));
    let mut echo = echo;
    echo.terminate().await?;
    if let Some(envelopes) = &e2e_envelopes {
        let result = check_sender(&club.config, envelopes, &audit_key).await;
        report.checks.push((
            format!(
                "red-barnet's {} stored receipts of the end-to-end messages verify against herning's stored bytes",
                envelopes.len()
            ),
            result.is_ok(),
            result.err().map(|e| format!("{e:#}")).unwrap_or_default(),
        ));
    }
    let (code, text) = audit_verify(&binary, &club.config_path).await?;
    report.checks.push((
        "brobygger audit verify --config red-barnet.toml exits 0".into(),
        code == 0,
        text,
    ));

    for (name, proc) in [(KOMMUNE, &kommune.proc), (NGO, &club.proc), ("echo", &echo)] {
        let (summary, first) = proc.log_summary();
        report.logs.push((name.to_owned(), summary, first));
    }
    let valid = report.failures.is_empty() && report.checks.iter().all(|(_, ok, _)| *ok);
    print_report(&report, valid);
    if let Some(path) = &options.json {
        let doc = report_json(&report, &options, valid, started);
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)?;
        println!("\nJSON written to {}", path.display());
    }
    Ok(valid)
}

/// Records answers other than 200 as a failure of the run.
fn bad_answers(target: &Target, out: &TaskOut, what: &str, report: &mut Report) {
    if out.bad > 0 {
        report.failures.push(format!(
            "{what}: {} of {} answers from the {} were not 200 (first: {})",
            out.bad,
            out.ok + out.bad,
            target.name,
            out.first_bad.as_deref().unwrap_or("")
        ));
    }
}

fn print_progress(what: &str) {
    println!("measuring {what} ...");
}

/// The issue's targets: (name, measured text, met).
fn targets(report: &Report) -> Vec<(String, String, bool)> {
    let row = |key: &str| report.rows.iter().find(|r| r.key == key);
    let mut out = Vec::new();
    if let Some(r) = row("a1") {
        let ratio = r.ceiling.map_or(f64::NAN, |c| r.gateway / c);
        out.push((
            "inbound one-per-request >= 0.5 x echo".into(),
            format!(
                "{ratio:.2} x ({} / {} req/s)",
                fmt_int(r.gateway),
                fmt_int(r.ceiling.unwrap_or(f64::NAN))
            ),
            ratio >= 0.5,
        ));
    }
    if let Some(r) = row("b") {
        out.push((
            "end to end >= 5,000 exchanges/s".into(),
            format!("{}/s", fmt_int(r.gateway)),
            r.gateway >= 5_000.0,
        ));
    }
    if let Some(r) = row("c") {
        out.push((
            "batch ingestion >= 50,000 summaries/s".into(),
            format!("{}/s", fmt_int(r.gateway)),
            r.gateway >= 50_000.0,
        ));
    }
    if let Some(l) = report.latency.iter().find(|l| l.rate == 1_000) {
        out.push((
            "p99 at 1,000/s < 25 ms".into(),
            format!("{:.2} ms", l.gateway.p99),
            l.gateway.p99 < 25.0 && l.gateway.unsent == 0,
        ));
    }
    for m in &report.memory {
        out.push((
            format!("RSS {} < 150 MB", m.label),
            format!("{:.1} MB", mb(m.rss)),
            mb(m.rss) < 150.0,
        ));
    }
    out
}

fn print_report(report: &Report, valid: bool) {
    println!();
    println!(
        "{:<4}{:<52}{:>8}{:>12}{:>12}{:>8}  ceiling",
        "", "measurement", "unit", "gateway", "ceiling", "ratio"
    );
    for r in &report.rows {
        let ratio = r
            .ceiling
            .map_or(String::from("-"), |c| format!("{:.3}", r.gateway / c));
        println!(
            "{:<4}{:<52}{:>8}{:>12}{:>12}{:>8}  {}",
            r.key,
            r.what,
            r.unit,
            fmt_int(r.gateway),
            r.ceiling.map_or("-".into(), fmt_int),
            ratio,
            r.ceiling_what
        );
    }
    println!();
    println!(
        "{:<4}{:<22}{:>12}{:>28}{:>22}{:>10}{:>18}",
        "",
        "latency, open loop",
        "gateway /s",
        "gateway p50/p99/p99.9",
        "echo p50/p99/p99.9",
        "p99 ratio",
        "send lag p99"
    );
    for l in &report.latency {
        let fig = |f: &LatencyFigures| format!("{:.2}/{:.2}/{:.2}", f.p50, f.p99, f.p999);
        println!(
            "{:<4}{:<22}{:>12}{:>28}{:>22}{:>10.1}{:>18}",
            "e",
            format!("offered {}/s (ms)", fmt_int(l.rate as f64)),
            fmt_int(l.gateway.achieved),
            fig(&l.gateway),
            fig(&l.ceiling),
            l.gateway.p99 / l.ceiling.p99,
            format!("{:.2}/{:.2}", l.gateway.lag_p99, l.ceiling.lag_p99),
        );
        if l.gateway.achieved < 0.95 * l.rate as f64 {
            println!(
                "    the gateway cannot take {}/s (it completed {}/s): requests queue for the whole \
                 measurement, so latency is the age of the queue",
                fmt_int(l.rate as f64),
                fmt_int(l.gateway.achieved)
            );
        }
        if l.gateway.unsent > 0 {
            println!(
                "    saturated: {} requests were still unsent at 3 x the measurement; their wait counts (max {:.0} ms)",
                l.gateway.unsent, l.gateway.max
            );
        }
    }
    println!(
        "    fsync, 4 KiB write + fdatasync in herning's data dir: p50 {:.2} ms, p99 {:.2} ms",
        report.fsync.0, report.fsync.1
    );
    println!();
    println!(
        "f   CPU time per item (µs, utime+stime from /proc); other = the rest of the machine's busy CPU"
    );
    println!(
        "    {:<36}{:>16}{:>11}{:>8}{:>8}{:>8}  (of which)",
        "measurement", KOMMUNE, NGO, "echo", "driver", "other"
    );
    let cell = |cpu: &[(String, f64)], name: &str| {
        cpu.iter()
            .find(|(n, _)| n == name)
            .map_or("-".into(), |(_, us)| format!("{us:.1}"))
    };
    let line = |what: String, cpu: &[(String, f64)], used: &CpuUse| {
        println!(
            "    {:<36}{:>16}{:>11}{:>8}{:>8}{:>7.0}%  ({})",
            what,
            cell(cpu, KOMMUNE),
            cell(cpu, NGO),
            cell(cpu, "echo"),
            cell(cpu, "driver"),
            used.other_share * 100.0,
            used.other_breakdown()
        );
    };
    for r in &report.rows {
        line(
            format!("{} gateway, per {}", r.key, r.unit.trim_end_matches("/s")),
            &r.gateway_cpu,
            &r.gateway_use,
        );
        if let Some(ceiling_use) = &r.ceiling_use {
            line(
                format!("{} echo, per {}", r.key, r.unit.trim_end_matches("/s")),
                &r.ceiling_cpu,
                ceiling_use,
            );
        }
    }
    for l in &report.latency {
        line(
            format!("e gateway at {}/s, per req", l.rate),
            &l.gateway.cpu,
            &l.gateway.cpu_use,
        );
        line(
            format!("e echo at {}/s, per req", l.rate),
            &l.ceiling.cpu,
            &l.ceiling.cpu_use,
        );
    }
    for m in &report.memory {
        println!(
            "    resident memory (VmRSS) of {}: {:.1} MB (peak {:.1} MB; anonymous {:.1}, file {:.1}, shared {:.1})",
            m.label,
            mb(m.rss),
            mb(m.peak),
            mb(m.anon),
            mb(m.file),
            mb(m.shmem)
        );
    }
    println!(
        "    end-to-end backlog (at most {E2E_BACKLOG} queued) drained in {:.1} s after the measurement",
        report.e2e_drain_seconds
    );
    println!();
    println!("checks");
    for (what, ok, detail) in &report.checks {
        println!("  [{}] {what}", if *ok { "ok" } else { "FAILED" });
        if !detail.is_empty() && (!ok || detail.lines().count() <= 3) {
            for line in detail.lines().take(20) {
                println!("        {line}");
            }
        }
    }
    for failure in &report.failures {
        println!("  [FAILED] {failure}");
    }
    println!("logs (stderr)");
    for (name, summary, first) in &report.logs {
        println!("  {name}: {summary}");
        for line in first {
            println!("        {}", line.chars().take(240).collect::<String>());
        }
    }
    println!();
    println!("targets of issue 7");
    for (what, measured, met) in targets(report) {
        println!(
            "  {:<44}{:>32}   {}",
            what,
            measured,
            if met { "met" } else { "not met" }
        );
    }
    println!();
    println!(
        "{}",
        if valid {
            "result: valid (every check passed)"
        } else {
            "result: NO RESULT (a check failed; the figures above do not count)"
        }
    );
}

fn report_json(
    report: &Report,
    options: &Options,
    valid: bool,
    started: time::OffsetDateTime,
) -> Value {
    json!({
        "benchmark": "brobygger end-to-end load (issue 7)",
        "started": started.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "seconds_per_measurement": options.seconds,
        "provenance": report.provenance,
        "connections": CONNECTIONS,
        "valid": valid,
        "throughput": report.rows.iter().map(|r| json!({
            "key": r.key, "measurement": r.what, "unit": r.unit,
            "gateway": r.gateway, "ceiling": r.ceiling, "ceiling_is": r.ceiling_what,
            "ratio": r.ceiling.map(|c| r.gateway / c), "count": r.count,
            "gateway_cpu_us_per_item": cpu_json(&r.gateway_cpu),
            "ceiling_cpu_us_per_item": cpu_json(&r.ceiling_cpu),
            "gateway_other_cpu": r.gateway_use.other_json(),
            "ceiling_other_cpu": r.ceiling_use.as_ref().map(CpuUse::other_json),
        })).collect::<Vec<_>>(),
        "latency": report.latency.iter().map(|l| json!({
            "offered_per_s": l.rate, "gateway": l.gateway.json(), "ceiling": l.ceiling.json(),
        })).collect::<Vec<_>>(),
        "fsync_ms": {"p50": report.fsync.0, "p99": report.fsync.1},
        "memory_kib": report.memory.iter().map(|m| json!({"node": m.label, "rss": m.rss, "peak": m.peak, "anon": m.anon, "file": m.file, "shmem": m.shmem})).collect::<Vec<_>>(),
        "e2e_drain_seconds": report.e2e_drain_seconds,
        "checks": report.checks.iter().map(|(what, ok, detail)| json!({"check": what, "ok": ok, "detail": detail})).collect::<Vec<_>>(),
        "failures": report.failures,
        "logs": report.logs.iter().map(|(name, summary, first)| json!({"process": name, "summary": summary, "first": first})).collect::<Vec<_>>(),
        "targets": targets(report).into_iter().map(|(what, measured, met)| json!({"target": what, "measured": measured, "met": met})).collect::<Vec<_>>(),
    })
}
