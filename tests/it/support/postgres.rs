//! Fresh, empty PostgreSQL databases for integration tests.
//!
//! Every test that needs PostgreSQL calls [`fresh_database`] and gets a database nobody else uses,
//! so tests can run concurrently without seeing each other's rows. The database comes from one of
//! two places, in this order:
//!
//! 1. The server named by `BROBYGGER_TEST_POSTGRES_URL`, an admin URL such as
//!    `postgres://postgres@127.0.0.1:5432/postgres`. This is how CI or a developer points the
//!    tests at a real server.
//! 2. Otherwise one throwaway cluster per test process, built with the installed PostgreSQL
//!    binaries (`initdb`, `postgres`, `pg_ctl`) in a temporary directory and reachable only through
//!    a Unix socket in that directory, so it never clashes with a system server or another test
//!    process.
//!
//! If neither is possible the test panics with instructions: a test suite that silently skips its
//! PostgreSQL half would hide exactly the bugs the second storage engine is there to catch.

// The crate denies `expect_used` for library code; in test support a panic with a clear message
// is the desired way to report a broken environment, so it is allowed for this module.
#![allow(clippy::expect_used)]

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom as _, SystemRandom};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};

/// The environment variable naming an admin URL of an existing server to create databases on.
pub const ADMIN_URL_ENV: &str = "BROBYGGER_TEST_POSTGRES_URL";

/// How long the throwaway cluster may take to accept connections before we give up. It is generous
/// because a loaded two-core CI machine can be slow, and we poll, so a fast start is not delayed.
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

/// How long dropping a database may take before the test moves on without it.
const DROP_DEADLINE: Duration = Duration::from_secs(30);

/// A brand-new empty database for one test; dropped (best effort, `WITH (FORCE)`) when this value
/// is dropped.
pub struct TestDatabase {
    /// A URL for the new database that sqlx (and therefore Brobygger's configuration) accepts.
    pub url: String,
    /// The database's name, `brobygger_test_<16 hex digits>`.
    name: String,
    /// A URL of the server's `postgres` (or otherwise admin) database, used to drop this one.
    admin_url: String,
    /// A short human description of the engine and where it runs.
    label: String,
}

impl TestDatabase {
    /// A short human label of where the database came from, for tests to print, e.g.
    /// "PostgreSQL 15.19 via BROBYGGER_TEST_POSTGRES_URL" or
    /// "PostgreSQL 15.19 throwaway cluster in /tmp/brobygger-pg-XXXX".
    pub fn engine_label(&self) -> &str {
        &self.label
    }

    /// The database's name on its server.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDatabase")
            .field("url", &self.url)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop may run outside any runtime, or inside a test's current-thread runtime that must not
        // be blocked on from within, or while that runtime is shutting down. A separate thread with
        // its own small runtime works in all three cases; joining it keeps databases from piling up
        // while the rest of the suite runs.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let worker = std::thread::Builder::new()
            .name("brobygger-test-dropdb".to_owned())
            .spawn(move || drop_database(&admin_url, &name));
        let outcome = match worker {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|_| Err("the drop thread panicked".to_owned())),
            Err(error) => Err(format!("could not start the drop thread: {error}")),
        };
        // Failing to drop leaves only an orphaned test database behind, which must not turn a
        // passing test into a failing one (nor panic during unwinding), so it is only reported.
        if let Err(message) = outcome {
            eprintln!(
                "warning: could not drop test database {}: {message}",
                self.name
            );
        }
    }
}

/// Drops `name` on the server behind `admin_url`, forcibly disconnecting anything still attached
/// (for example a pool the test forgot to close).
fn drop_database(admin_url: &str, name: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("could not build a runtime: {error}"))?;
    runtime.block_on(async {
        let work = async {
            let mut conn = PgConnection::connect(admin_url).await?;
            let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
            sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await?;
            conn.close().await
        };
        match tokio::time::timeout(DROP_DEADLINE, work).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("timed out after {DROP_DEADLINE:?}")),
        }
    })
}

/// Returns a fresh, empty database. Order of sources:
///
/// 1. env `BROBYGGER_TEST_POSTGRES_URL` (an admin URL, e.g.
///    `postgres://postgres@127.0.0.1:5432/postgres`): a new database `brobygger_test_<16 hex>` is
///    created on that server.
/// 2. otherwise one throwaway cluster per test process, started from the installed PostgreSQL
///    binaries on first use and shared by every test in the binary.
/// 3. if neither is possible, this panics and says what to install or which variable to set.
pub async fn fresh_database() -> TestDatabase {
    let (admin_url, source) = match std::env::var(ADMIN_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => {
            (url.trim().to_owned(), format!("via {ADMIN_URL_ENV}"))
        }
        _ => {
            // Starting the cluster blocks for a second or two (and other tests wait for the first
            // one to finish it), so it runs on the blocking pool rather than stalling the runtime.
            let cluster = match tokio::task::spawn_blocking(shared_cluster).await {
                Ok(cluster) => cluster,
                // Re-raise the original panic so the test shows its message, not a JoinError.
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(error) => {
                    panic!("starting the throwaway PostgreSQL cluster was cancelled: {error}")
                }
            };
            (
                cluster.admin_url.clone(),
                format!("throwaway cluster in {}", cluster.dir.display()),
            )
        }
    };

    let name = format!("brobygger_test_{}", random_hex(8));
    let mut conn = PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|error| {
            panic!(
                "cannot connect to the PostgreSQL admin URL {admin_url} ({source}): {error}. \
             If {ADMIN_URL_ENV} is set, check that the server is running and that this user \
             may CREATE DATABASE; unset it to use a throwaway cluster instead."
            )
        });
    let version: String = sqlx::query_scalar("SELECT current_setting('server_version')")
        .fetch_one(&mut conn)
        .await
        .expect("the server reports its version");
    // Debian's version string reads "15.19 (Debian 15.19-0+deb12u1)"; the number is enough.
    let version = version
        .split_whitespace()
        .next()
        .unwrap_or("(unknown version)")
        .to_owned();
    // The name is only hex digits and underscores, so quoting it cannot be escaped out of.
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|error| panic!("cannot create test database {name} ({source}): {error}"));
    // A failed polite close only means the server hangs up on its own; the database exists.
    let _ = conn.close().await;

    TestDatabase {
        url: url_with_database(&admin_url, &name),
        name,
        admin_url,
        label: format!("PostgreSQL {version} {source}"),
    }
}

/// Returns `url` with its database replaced by `database`, keeping user, host, port and query
/// parameters (such as `host=/socket/dir` or `sslmode`). A `dbname` query parameter is removed
/// because sqlx would let it override the path.
fn url_with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let (scheme, rest) = base.split_once("://").unwrap_or_else(|| {
        panic!("{ADMIN_URL_ENV} must be a URL like postgres://user@host:5432/postgres, got {url}")
    });
    let authority = rest
        .split_once('/')
        .map_or(rest, |(authority, _)| authority);
    let mut out = format!("{scheme}://{authority}/{database}");
    let kept: Vec<&str> = query
        .into_iter()
        .flat_map(|query| query.split('&'))
        .filter(|pair| !pair.is_empty() && !pair.starts_with("dbname="))
        .collect();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    out
}

/// Returns `bytes` random bytes as lowercase hex, from the operating system's generator so that
/// concurrent test processes on one server never pick the same name.
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .expect("the operating system random number generator works");
    hex::encode(buf)
}

/// Percent-encodes a filesystem path for use as a URL query value.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The throwaway cluster shared by all tests of this process.
struct Cluster {
    /// URL of the cluster's `postgres` database, through the Unix socket.
    admin_url: String,
    /// The temporary directory holding the data directory, the socket and the server log.
    dir: PathBuf,
    /// The write end of the watchdog's stdin; see [`spawn_watchdog`]. It is never written to; it
    /// only has to stay open for as long as this process lives, which a static guarantees.
    _watchdog_stdin: ChildStdin,
}

/// Returns the process-wide cluster, starting it on first use. A failure is remembered, so every
/// test reports the same clear message instead of each retrying a broken setup.
fn shared_cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    let cluster = CLUSTER.get_or_init(|| {
        // The start-up polls with its own runtime; a plain thread guarantees it is not nested in
        // whichever runtime the first caller happens to run on.
        std::thread::Builder::new()
            .name("brobygger-test-postgres".to_owned())
            .spawn(start_cluster)
            .map_err(|error| format!("could not start a thread: {error}"))
            .and_then(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err("the start-up thread panicked".to_owned()))
            })
    });
    match cluster {
        Ok(cluster) => cluster,
        Err(message) => panic!(
            "no PostgreSQL available for the integration tests: {message}\n\
             Either set {ADMIN_URL_ENV} to an admin URL of a running server \
             (e.g. postgres://postgres@127.0.0.1:5432/postgres, a user that may CREATE DATABASE), \
             or install the PostgreSQL server binaries so a throwaway cluster can be started \
             (Debian/Ubuntu: `apt-get install postgresql`; initdb and postgres are looked up via \
             `pg_config --bindir`, /usr/lib/postgresql/*/bin and PATH)."
        ),
    }
}

/// Builds and starts the throwaway cluster.
///
/// Cleanup: statics are never dropped and Rust offers no portable exit hook, so the cluster is
/// stopped by a small watchdog process instead (see [`spawn_watchdog`]). The watchdog is started
/// before anything else touches the directory, so every failure below is cleaned up the same way:
/// returning an error drops the watchdog's stdin, which tells it to stop the server (if one
/// started) and delete the directory.
fn start_cluster() -> Result<Cluster, String> {
    let bindir = find_bindir()?;
    let as_root = running_as_root();
    let postgres_ids = if as_root {
        Some(postgres_user_ids()?)
    } else {
        None
    };

    let dir = tempfile::Builder::new()
        .prefix("brobygger-pg-")
        .tempdir()
        .map_err(|error| format!("could not create a temporary directory: {error}"))?
        // The watchdog, not this process, deletes the directory: it has to outlive us.
        .keep();
    let data = dir.join("data");

    let watchdog_stdin = match spawn_watchdog(&dir, &data, &bindir, as_root) {
        Ok(stdin) => stdin,
        Err(error) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!("could not start the cleanup watchdog: {error}"));
        }
    };

    if let Some((uid, gid)) = postgres_ids {
        // initdb and postgres refuse to run as root, so they run as the `postgres` user, which
        // must own the directory (tempfile creates it with mode 0700).
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .map_err(|error| format!("could not chown {} to postgres: {error}", dir.display()))?;
    }

    let initdb = as_postgres(as_root, &bindir.join("initdb"))
        .current_dir(&dir)
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("could not run {}: {error}", bindir.join("initdb").display()))?;
    if !initdb.status.success() {
        return Err(format!(
            "initdb failed ({}): {}{}",
            initdb.status,
            String::from_utf8_lossy(&initdb.stdout),
            String::from_utf8_lossy(&initdb.stderr)
        ));
    }

    // Later settings in postgresql.conf override earlier ones, so appending is enough.
    // No TCP listener at all: the socket lives in our private directory, so the cluster cannot
    // collide with a system server or a parallel test process on the same port. Durability is
    // switched off because the whole cluster is deleted when the tests end, and fsync-heavy
    // CREATE DATABASE calls are otherwise the slowest part of a test on a small machine. The
    // connection limit is raised because many concurrent tests each open pools.
    let socket_dir = dir.to_string_lossy().replace('\'', "''");
    let settings = format!(
        "\n# Added by Brobygger's test support.\n\
         listen_addresses = ''\n\
         unix_socket_directories = '{socket_dir}'\n\
         max_connections = 300\n\
         fsync = off\n\
         synchronous_commit = off\n\
         full_page_writes = off\n"
    );
    OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .and_then(|mut conf| conf.write_all(settings.as_bytes()))
        .map_err(|error| format!("could not configure the cluster: {error}"))?;

    // The server runs as our child (through runuser when root) rather than through `pg_ctl start`
    // so that we can notice at once if it exits during start-up. Its output goes to a log file,
    // never to our stdout/stderr: a server holding those open would keep `cargo test | tee` waiting
    // after the tests finish.
    let log_path = dir.join("server.log");
    let log = File::create(&log_path)
        .map_err(|error| format!("could not create {}: {error}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|error| format!("could not duplicate a file handle: {error}"))?;
    let mut server = as_postgres(as_root, &bindir.join("postgres"))
        .current_dir(&dir)
        .arg("-D")
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|error| {
            format!(
                "could not run {}: {error}",
                bindir.join("postgres").display()
            )
        })?;

    let admin_url = format!(
        "postgres://postgres@localhost/postgres?host={}",
        percent_encode(&dir.to_string_lossy())
    );
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // Poll until the server accepts a real connection, failing early if it exits and late only at
    // the deadline. Each failed attempt on a Unix socket returns immediately, so the short pause
    // between attempts is what keeps this from spinning.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("could not build a runtime: {error}"))?;
    let deadline = Instant::now() + STARTUP_DEADLINE;
    loop {
        if let Ok(Some(status)) = server.try_wait() {
            return Err(format!(
                "postgres exited during start-up ({status}); its log:\n{}",
                read_log()
            ));
        }
        let attempt = runtime.block_on(async {
            let mut conn = PgConnection::connect(&admin_url).await?;
            conn.ping().await?;
            conn.close().await
        });
        match attempt {
            Ok(()) => break,
            Err(error) if Instant::now() >= deadline => {
                return Err(format!(
                    "postgres did not accept connections within {STARTUP_DEADLINE:?} (last error: \
                     {error}); its log:\n{}",
                    read_log()
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }

    Ok(Cluster {
        admin_url,
        dir,
        _watchdog_stdin: watchdog_stdin,
    })
}

/// Starts the process that stops the cluster and deletes `dir` once this test process is gone.
///
/// The watchdog is `sh` blocked reading its stdin, a pipe whose only write end this process holds
/// (Rust opens every descriptor close-on-exec, so no other child inherits it). Whenever this
/// process ends — normal exit, panic, SIGKILL, or Ctrl-C — the kernel closes that end, the read
/// sees end-of-file, and the watchdog runs `pg_ctl stop -m immediate` and `rm -rf`. This reacts at
/// once, needs no polling, and does not depend on exit hooks that a killed process never runs.
/// The watchdog has its own process group so that Ctrl-C in a terminal, which signals the
/// foreground group, does not kill it along with the tests. Its stdout and stderr go nowhere so
/// that it never keeps a pipe of the caller's open.
fn spawn_watchdog(
    dir: &Path,
    data: &Path,
    bindir: &Path,
    as_root: bool,
) -> std::io::Result<ChildStdin> {
    // The directory comes first; the remaining arguments are the stop command, run verbatim.
    // Passing everything as positional parameters avoids quoting paths into the script.
    const SCRIPT: &str =
        r#"dir=$1; shift; cat >/dev/null 2>&1; "$@" >/dev/null 2>&1; rm -rf -- "$dir""#;
    let mut command = Command::new("sh");
    command
        .args(["-c", SCRIPT, "brobygger-pg-watchdog"])
        .arg(dir);
    if as_root {
        command.arg(runuser()).args(["-u", "postgres", "--"]);
    }
    command
        .arg(bindir.join("pg_ctl"))
        .arg("stop")
        .arg("-D")
        .arg(data)
        .args(["-m", "immediate"])
        .current_dir("/")
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = command.spawn()?;
    // The Child handle itself can be dropped: that neither kills nor waits for the process.
    child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("the watchdog has no stdin pipe"))
}

/// A command that runs `program` as the `postgres` user when we are root, or directly otherwise.
fn as_postgres(as_root: bool, program: &Path) -> Command {
    if as_root {
        let mut command = Command::new(runuser());
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// The `runuser` program; /usr/sbin is not on every PATH a test runs with.
fn runuser() -> PathBuf {
    ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from("runuser"))
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// The numeric user and group id of the `postgres` system user.
fn postgres_user_ids() -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    match (id("-u"), id("-g")) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => Err(
            "the tests run as root, where initdb and postgres refuse to run, and there is no \
                  `postgres` system user to run them as (installing the postgresql package \
                  creates it; or run the tests as an ordinary user)"
                .to_owned(),
        ),
    }
}

/// Finds a directory holding `initdb`, `postgres` and `pg_ctl`: the one `pg_config --bindir`
/// names, else the highest version under /usr/lib/postgresql (Debian's layout, where several
/// versions can be installed side by side and none is on PATH), else PATH.
fn find_bindir() -> Result<PathBuf, String> {
    let complete = |dir: &Path| {
        ["initdb", "postgres", "pg_ctl"]
            .iter()
            .all(|tool| dir.join(tool).is_file())
    };

    // pg_config can come from a client-only package, so its bindir must be checked too.
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if complete(&dir) {
            return Ok(dir);
        }
    }

    let mut versioned: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|part| part.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            let dir = entry.path().join("bin");
            complete(&dir).then_some((version, dir))
        })
        .collect();
    versioned.sort();
    if let Some((_, dir)) = versioned.pop() {
        return Ok(dir);
    }

    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|dir| complete(dir))
        .ok_or_else(|| {
            "no PostgreSQL server binaries (initdb, postgres, pg_ctl) were found".to_owned()
        })
}

mod tests {
    use super::*;

    /// Two fresh databases are different databases, both start empty, and a table created in one
    /// does not appear in the other; a dropped database is really gone.
    #[tokio::test]
    async fn fresh_databases_are_distinct_and_empty() {
        let first = fresh_database().await;
        let second = fresh_database().await;
        assert_ne!(first.url, second.url);
        assert_ne!(first.name(), second.name());

        let count_public_tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'";
        for db in [&first, &second] {
            let mut conn = PgConnection::connect(&db.url)
                .await
                .expect("connect to the fresh database");
            let current: String = sqlx::query_scalar("SELECT current_database()")
                .fetch_one(&mut conn)
                .await
                .expect("ask for the current database");
            assert_eq!(current, db.name(), "the URL must lead to the new database");
            let tables: i64 = sqlx::query_scalar(count_public_tables)
                .fetch_one(&mut conn)
                .await
                .expect("count tables");
            assert_eq!(tables, 0, "{} must start empty", db.name());
            conn.close().await.expect("close the connection");
        }

        let mut conn = PgConnection::connect(&first.url)
            .await
            .expect("connect to the first database");
        sqlx::raw_sql("CREATE TABLE only_in_first (id integer)")
            .execute(&mut conn)
            .await
            .expect("create a table");
        conn.close().await.expect("close the connection");
        let mut conn = PgConnection::connect(&second.url)
            .await
            .expect("connect to the second database");
        let tables: i64 = sqlx::query_scalar(count_public_tables)
            .fetch_one(&mut conn)
            .await
            .expect("count tables");
        assert_eq!(
            tables, 0,
            "a table in one test database must not appear in another"
        );
        conn.close().await.expect("close the connection");

        // Dropping one database while a connection to it is still open must still remove it.
        let first_name = first.name().to_owned();
        let _lingering = PgConnection::connect(&first.url)
            .await
            .expect("connect to the first database");
        drop(first);
        let mut admin = PgConnection::connect(&second.admin_url)
            .await
            .expect("connect as admin");
        let remaining: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
                .bind(&first_name)
                .fetch_one(&mut admin)
                .await
                .expect("look for the dropped database");
        assert_eq!(
            remaining, 0,
            "{first_name} must be gone once its TestDatabase is dropped"
        );
        admin.close().await.expect("close the connection");
    }

    /// The label says which engine and which source, so test output shows what was tested.
    #[tokio::test]
    async fn engine_label_names_postgresql() {
        let db = fresh_database().await;
        eprintln!("test database engine: {}", db.engine_label());
        assert!(
            db.engine_label().starts_with("PostgreSQL "),
            "unexpected label {:?}",
            db.engine_label()
        );
    }
}
