//! The documentation is tested like code.
//!
//! 1. `docs/configuration.md` is generated from `brobygger::config_reference` (rewrite it with
//!    `BROBYGGER_UPDATE_DOCS=1 cargo test --test it docs_examples`), and the reference's table of
//!    fields is checked against the real parser: it names exactly the fields the parser knows
//!    (the parser lists them when it refuses an unknown one), every field is accepted with its
//!    example, as required or with its default, within its range, by its environment variable,
//!    and refused in production where the table says so; and every key of the example
//!    configurations (`config/*.toml`, and what `pki init` writes) is in the table.
//! 2. The examples of the guides run against a real `brobygger demo` process. In every
//!    `docs/*.md`, a ```` ```sh ```` block runs if it contains `curl`, or a line starting
//!    `brobygger audit ` or `brobygger check `. The blocks of one guide run in order, each with
//!    `bash` under `set -euo pipefail`, with the variables "Before you start" defines (`DEMO_DIR`,
//!    `HERNING`, `RED_BARNET`, `FREDERICIA`, taken from what the demo prints) and the variables
//!    earlier blocks of the same guide set; each must exit 0. A ```` ```text ```` block right
//!    after a runnable block (only blank lines between) lists what its standard output must
//!    contain, in order: each line, trimmed, is a substring of the output after the previous
//!    one. A `curl` in any other kind of block fails the test, so that no curl example escapes
//!    it.
//!
//! The demo is read through what it prints: the lines with `local API https://…` (one per
//! organisation, named as the manifest names it) and the outcome line
//! `✓ the story is complete`, after which the nodes keep running until SIGTERM.

use brobygger::config::{CaseworkerScope, Config, ConfigError, DatabaseUrl, LocalTransport};
use brobygger::config_reference::{FIELDS, FieldDoc, InProduction, Presence, SECTIONS};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// -------------------------------------------------------------------------------------------
// 1. The configuration reference.
// -------------------------------------------------------------------------------------------

/// Where the parsed example pretends to live (paths resolve against its directory).
const CONFIG_PATH: &str = "/srv/brobygger/config/herning-kommune.toml";

#[test]
fn the_committed_configuration_reference_is_current() {
    let path = repo().join("docs/configuration.md");
    let generated = brobygger::config_reference::reference_markdown();
    if std::env::var("BROBYGGER_UPDATE_DOCS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/configuration.md is not what brobygger::config_reference generates: run \
         `BROBYGGER_UPDATE_DOCS=1 cargo test --test it docs_examples` and commit the file"
    );
}

/// A complete, valid configuration: `config/herning-kommune.toml` without the development
/// token key, so that `server.production = true` is possible.
fn base() -> toml::Table {
    let text = std::fs::read_to_string(repo().join("config/herning-kommune.toml")).unwrap();
    let mut table: toml::Table = text.parse().unwrap();
    table
        .get_mut("local_api")
        .and_then(toml::Value::as_table_mut)
        .unwrap()
        .remove("dev_token_key");
    table
}

fn parse(table: &toml::Table, env: &[(String, String)]) -> Result<Config, ConfigError> {
    Config::parse(
        Path::new(CONFIG_PATH),
        &toml::to_string(table).unwrap(),
        env,
    )
}

fn section_mut<'a>(table: &'a mut toml::Table, section: &str) -> &'a mut toml::Table {
    if section.is_empty() {
        table
    } else {
        table
            .entry(section.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap()
    }
}

fn set(table: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    section_mut(table, section).insert(key.to_owned(), value);
}

fn remove(table: &mut toml::Table, field: &FieldDoc) {
    section_mut(table, field.section).remove(field.key);
}

/// A TOML value written as text.
fn toml_value(text: &str) -> toml::Value {
    let table: toml::Table = format!("v = {text}").parse().unwrap();
    table.get("v").unwrap().clone()
}

/// A value as [`rendered`] writes it: strings quoted, numbers and booleans bare.
fn normalised(text: &str) -> String {
    match toml_value(text) {
        toml::Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

fn quoted(text: impl std::fmt::Display) -> String {
    format!("\"{text}\"")
}

/// What the parsed configuration holds for a field, written as its TOML value would be.
fn rendered(config: &Config, dotted: &str) -> String {
    let path = |p: &Path| quoted(p.display());
    let tls = |which: usize| match &config.local_api.transport {
        LocalTransport::Tls { cert, key } => path(if which == 0 { cert } else { key }),
        LocalTransport::DangerousPlaintext => "(plaintext)".to_owned(),
    };
    match dotted {
        "org_id" => quoted(&config.org),
        "data_dir" => path(&config.data_dir),
        "federation.name" => quoted(&config.federation_name),
        "federation.listen" => quoted(config.federation.listen),
        "federation.ca_cert" => path(&config.federation.ca_cert),
        "federation.cert" => path(&config.federation.cert),
        "federation.key" => path(&config.federation.key),
        "federation.manifest" => path(&config.federation.manifest),
        "federation.operator_key" => quoted(&config.federation.operator_key),
        "federation.manifest_poll_interval_ms" => config
            .federation
            .manifest_poll_interval
            .as_millis()
            .to_string(),
        "federation.manifest_expiry_warning_days" => {
            (config.federation.manifest_expiry_warning.as_secs() / 86_400).to_string()
        }
        "local_api.listen" => quoted(config.local_api.listen),
        "local_api.cert" => tls(0),
        "local_api.key" => tls(1),
        "local_api.dangerous_plaintext_local_api" => matches!(
            config.local_api.transport,
            LocalTransport::DangerousPlaintext
        )
        .to_string(),
        "local_api.jwks" => path(&config.local_api.jwks),
        "local_api.issuer" => quoted(&config.local_api.issuer),
        "local_api.audience" => quoted(&config.local_api.audience),
        "local_api.dev_token_key" => config
            .local_api
            .dev_token_key
            .as_deref()
            .map_or_else(|| "(none)".to_owned(), path),
        "local_api.dev_token_kid" => quoted(&config.local_api.dev_token_kid),
        "local_api.caseworker_scope" => quoted(match config.local_api.caseworker_scope {
            CaseworkerScope::Unit => "unit",
            CaseworkerScope::Organisation => "organisation",
        }),
        "database.url" => match &config.database.url {
            DatabaseUrl::Sqlite(file) => format!("sqlite {}", file.display()),
            DatabaseUrl::Postgres(url) => quoted(url),
        },
        "database.max_connections" => config.database.max_connections.to_string(),
        "audit.signing_key" => path(&config.audit.signing_key),
        "audit.hmac_key" => path(&config.audit.hmac_key),
        "audit.hmac_key_version" => config.audit.hmac_key_version.to_string(),
        "server.workers" => config.server.workers.to_string(),
        "server.shutdown_timeout_secs" => config.server.shutdown_timeout.as_secs().to_string(),
        "server.production" => config.server.production.to_string(),
        other => panic!("the test cannot read `{other}` from a Config: add it to `rendered`"),
    }
}

/// Checks the default of an optional field that was left out.
fn check_default(field: &FieldDoc, config: &Config) {
    let name = field.dotted();
    let Presence::Optional { default, literal } = field.presence else {
        return;
    };
    if literal {
        assert_eq!(
            rendered(config, &name),
            normalised(default),
            "the default of {name}"
        );
        return;
    }
    let data_dir = Path::new(CONFIG_PATH)
        .parent()
        .unwrap()
        .join("data/herning-kommune");
    match name.as_str() {
        "data_dir" => assert_eq!(config.data_dir, data_dir, "{name}"),
        "database.url" => assert_eq!(
            config.database.url,
            DatabaseUrl::Sqlite(config.data_dir.join("brobygger.db")),
            "{name}"
        ),
        "local_api.dev_token_key" => assert!(config.local_api.dev_token_key.is_none(), "{name}"),
        other => panic!("the default of `{other}` is described in words: add a check here"),
    }
}

/// The names a serde "unknown field" message lists after "expected" (on its first line; the
/// toml crate adds the section's name on a line of its own).
fn expected_names(problem: &str) -> BTreeSet<String> {
    let after = problem
        .lines()
        .next()
        .and_then(|line| line.split_once("expected"))
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no list of fields in {problem:?}"));
    after
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_reference_names_exactly_the_fields_the_parser_knows() {
    let mut seen = BTreeSet::new();
    for field in FIELDS {
        assert!(seen.insert(field.dotted()), "{} twice", field.dotted());
        assert!(
            SECTIONS.iter().any(|s| s.name == field.section),
            "{}: no such section in SECTIONS",
            field.dotted()
        );
    }
    assert!(parse(&base(), &[]).is_ok(), "the base configuration parses");
    for section in SECTIONS {
        let mut table = base();
        set(
            &mut table,
            section.name,
            "zz_unknown_probe",
            toml::Value::Integer(1),
        );
        let error = parse(&table, &[]).unwrap_err();
        assert!(
            error.problem.contains("unknown field `zz_unknown_probe`"),
            "{error}"
        );
        let known = expected_names(&error.problem);
        let mut documented: BTreeSet<String> = FIELDS
            .iter()
            .filter(|f| f.section == section.name)
            .map(|f| f.key.to_owned())
            .collect();
        if section.name.is_empty() {
            documented.extend(
                SECTIONS
                    .iter()
                    .filter(|s| !s.name.is_empty())
                    .map(|s| s.name.to_owned()),
            );
        }
        assert_eq!(
            known, documented,
            "section `{}`: the parser knows these fields, the reference documents those",
            section.name
        );
    }
}

#[test]
fn every_field_of_the_reference_behaves_as_documented() {
    for section in SECTIONS.iter().filter(|s| !s.name.is_empty()) {
        let mut table = base();
        table.remove(section.name);
        assert_eq!(
            parse(&table, &[]).is_ok(),
            !section.required,
            "section `{}` is documented as {}",
            section.name,
            if section.required {
                "required"
            } else {
                "optional"
            }
        );
    }
    for field in FIELDS {
        let name = field.dotted();
        let example = toml_value(field.example);

        // The example is accepted, and is what the parsed configuration then holds.
        let mut table = base();
        set(&mut table, field.section, field.key, example.clone());
        let config =
            parse(&table, &[]).unwrap_or_else(|e| panic!("{name} = {}: {e}", field.example));
        assert_eq!(
            rendered(&config, &name),
            normalised(field.example),
            "{name}"
        );

        // Required, or optional with its default.
        let mut without = base();
        remove(&mut without, field);
        match field.presence {
            Presence::Required => {
                let error = parse(&without, &[]).unwrap_err();
                assert!(
                    error.field == name
                        || error
                            .problem
                            .contains(&format!("missing field `{}`", field.key)),
                    "{name} is documented as required: {error}"
                );
            }
            Presence::RequiredUnless(condition) => {
                let error = parse(&without, &[]).unwrap_err();
                assert_eq!(
                    error.field, name,
                    "{name} is documented as required: {error}"
                );
                // The condition reads "`key = value`", a key of the same section.
                let (key, value) = condition.trim_matches('`').split_once(" = ").unwrap();
                let mut relaxed = without.clone();
                set(&mut relaxed, field.section, key, toml_value(value));
                parse(&relaxed, &[]).unwrap_or_else(|e| {
                    panic!("{name} is documented as optional when {condition}: {e}")
                });
            }
            Presence::Optional { .. } => {
                let config = parse(&without, &[])
                    .unwrap_or_else(|e| panic!("{name} is documented as optional: {e}"));
                check_default(field, &config);
            }
        }

        // The environment variable sets the field (here, one the file leaves out).
        let wrong_type = [(field.env_var(), "[1]".to_owned())];
        let error = parse(&without, &wrong_type).unwrap_err();
        assert_eq!(error.field, name, "{}=[1]: {error}", field.env_var());
        let from_env = [(field.env_var(), field.env_example().to_owned())];
        let config = parse(&without, &from_env)
            .unwrap_or_else(|e| panic!("{}={}: {e}", field.env_var(), field.env_example()));
        assert_eq!(
            rendered(&config, &name),
            normalised(field.example),
            "{}",
            field.env_var()
        );

        // The range of an integer.
        if let Some((low, high)) = field.range {
            let mut cases = vec![(low, true), (high, true), (high + 1, false)];
            if low > 0 {
                cases.push((low - 1, false));
            }
            for (value, ok) in cases {
                let mut table = base();
                set(
                    &mut table,
                    field.section,
                    field.key,
                    toml::Value::Integer(i64::try_from(value).unwrap()),
                );
                match parse(&table, &[]) {
                    Ok(_) => assert!(ok, "{name} = {value} is outside the documented range"),
                    Err(e) => {
                        assert!(!ok, "{name} = {value} is inside the documented range: {e}");
                        assert_eq!(e.field, name, "{e}");
                    }
                }
            }
        }

        // Production.
        assert!(
            !field.key.starts_with("dangerous_") || field.in_production == InProduction::Refused,
            "{name}: every dangerous_* option is refused in production"
        );
        let mut table = base();
        set(&mut table, field.section, field.key, example);
        set(
            &mut table,
            "server",
            "production",
            toml::Value::Boolean(true),
        );
        match (field.in_production, parse(&table, &[])) {
            (InProduction::Allowed, Ok(_)) => {}
            (InProduction::Allowed, Err(e)) => {
                panic!("{name} is documented as allowed in production: {e}")
            }
            (InProduction::Refused, Ok(_)) => {
                panic!("{name} is documented as refused in production, and was accepted")
            }
            (InProduction::Refused, Err(e)) => assert_eq!(e.field, name, "{e}"),
        }
    }
}

/// The (section, key) pairs of a configuration file.
fn keys_of(text: &str) -> Vec<(String, String)> {
    let table: toml::Table = text.parse().unwrap();
    let mut keys = Vec::new();
    for (key, value) in &table {
        match value {
            toml::Value::Table(section) => {
                for inner in section.keys() {
                    keys.push((key.clone(), inner.clone()));
                }
            }
            _ => keys.push((String::new(), key.clone())),
        }
    }
    keys
}

#[test]
fn every_key_of_the_example_configurations_is_in_the_reference() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("config"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    assert!(!files.is_empty());
    let pki = crate::support::TestPki::new(&[(
        "herning-kommune",
        brobygger::domain::OrgKind::Municipality,
    )]);
    files.push(pki.path().join("herning-kommune.toml"));
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (section, key) in keys_of(&text) {
            assert!(
                FIELDS.iter().any(|f| f.section == section && f.key == key),
                "{}: `{}` is not in the configuration reference (src/config_reference.rs)",
                file.display(),
                if section.is_empty() {
                    key
                } else {
                    format!("{section}.{key}")
                }
            );
        }
    }
}

// -------------------------------------------------------------------------------------------
// 2. The guides' examples against a running demo.
// -------------------------------------------------------------------------------------------

/// The line the demo prints when its story is done; the nodes then keep running.
const STORY_DONE: &str = "✓ the story is complete";
/// How long the demo may take to get there (a debug build on a busy machine).
const DEMO_DEADLINE: Duration = Duration::from_secs(240);
/// How long one example may run.
const BLOCK_DEADLINE: Duration = Duration::from_secs(180);
/// The variables the guides ask the reader to set from what the demo printed.
const PROVIDED: [&str; 4] = ["DEMO_DIR", "HERNING", "RED_BARNET", "FREDERICIA"];

/// A fenced block of a Markdown file.
#[derive(Debug, Clone)]
struct Fence {
    info: String,
    /// The line of the opening fence, 1-based.
    line: usize,
    /// The line of the closing fence, 1-based.
    end: usize,
    code: String,
}

fn fences(markdown: &str) -> Vec<Fence> {
    let mut out = Vec::new();
    let mut open: Option<Fence> = None;
    for (index, line) in markdown.lines().enumerate() {
        let number = index + 1;
        let trimmed = line.trim_start();
        match open.as_mut() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some(Fence {
                        info: info.trim().to_owned(),
                        line: number,
                        end: number,
                        code: String::new(),
                    });
                }
            }
            Some(fence) => {
                if trimmed.trim_end() == "```" {
                    fence.end = number;
                    out.extend(open.take());
                } else {
                    fence.code.push_str(line);
                    fence.code.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "an unclosed code block");
    out
}

fn is_runnable(fence: &Fence) -> bool {
    fence.info == "sh"
        && (fence.code.contains("curl ")
            || fence.code.lines().any(|line| {
                let line = line.trim_start();
                line.starts_with("brobygger audit ") || line.starts_with("brobygger check ")
            }))
}

/// Whether `code` uses `$name` (or `${name`), as a whole variable name.
fn uses_variable(code: &str, name: &str) -> bool {
    let braced = format!("${{{name}");
    if code.contains(&braced) {
        return true;
    }
    let plain = format!("${name}");
    code.match_indices(&plain).any(|(at, _)| {
        code[at + plain.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
    })
}

/// A runnable example and what its output must contain.
#[derive(Debug, Clone)]
struct Example {
    line: usize,
    code: String,
    expected: Vec<String>,
}

/// The runnable examples of one guide, checking the rules of the module comment.
fn examples(name: &str, markdown: &str) -> Vec<Example> {
    let all = fences(markdown);
    let lines: Vec<&str> = markdown.lines().collect();
    let mut out = Vec::new();
    for (index, fence) in all.iter().enumerate() {
        if !is_runnable(fence) {
            assert!(
                !(fence.info != "sh" && fence.code.contains("curl ")),
                "{name}:{}: a curl example in a ```{} block would not be run; use ```sh",
                fence.line,
                fence.info
            );
            continue;
        }
        let expected = all
            .get(index + 1)
            .filter(|next| next.info == "text")
            .filter(|next| {
                lines[fence.end..next.line - 1]
                    .iter()
                    .all(|line| line.trim().is_empty())
            })
            .map(|next| {
                next.code
                    .lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        out.push(Example {
            line: fence.line,
            code: fence.code.clone(),
            expected,
        });
    }
    // What the test provides, the guide must tell the reader to set.
    let defined: BTreeSet<&str> = all
        .iter()
        .filter(|fence| fence.info == "sh")
        .flat_map(|fence| fence.code.lines())
        .filter_map(|line| {
            let line = line.trim_start();
            let line = line.strip_prefix("export ").unwrap_or(line);
            line.split_once('=').map(|(name, _)| name)
        })
        .collect();
    for variable in PROVIDED {
        if out.iter().any(|e| uses_variable(&e.code, variable)) {
            assert!(
                defined.contains(variable),
                "{name}: the examples use ${variable}, but the guide does not say to set it"
            );
        }
    }
    out
}

/// `brobygger demo --dir DIR` as a child process, stopped (SIGKILL) if the test panics.
struct Demo {
    child: Child,
    output: Arc<Mutex<String>>,
    errors: Arc<Mutex<String>>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Demo {
    /// Starts the demo and waits until its story is done; returns it with the local API
    /// addresses by variable name (`HERNING`, `RED_BARNET`, `FREDERICIA`).
    fn start(dir: &Path) -> (Demo, BTreeMap<String, String>) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_brobygger"));
        command
            .args(["demo", "--dir", dir.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, _) in std::env::vars() {
            if name.starts_with("BROBYGGER_") {
                command.env_remove(name);
            }
        }
        let mut child = command.spawn().unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let errors = Arc::new(Mutex::new(String::new()));
        let (lines_tx, lines_rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().unwrap();
        let sink = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
                // The receiver stops listening once the story is done; keep draining.
                let _ = lines_tx.send(line);
            }
        });
        let stderr = child.stderr.take().unwrap();
        let sink = errors.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let demo = Demo {
            child,
            output,
            errors,
        };
        let started = Instant::now();
        let mut addresses = BTreeMap::new();
        loop {
            let left = DEMO_DEADLINE.saturating_sub(started.elapsed());
            match lines_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some((name, url)) = local_api_line(&line) {
                        addresses.insert(name, url);
                    }
                    if line.contains(STORY_DONE) {
                        break;
                    }
                }
                Err(e) => panic!(
                    "the demo did not reach `{STORY_DONE}` ({e}):\n{}\n{}",
                    demo.output.lock().unwrap(),
                    demo.errors.lock().unwrap()
                ),
            }
        }
        (demo, addresses)
    }

    /// SIGTERM, as Ctrl-C would; the demo stops its nodes and exits 0.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the demo did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "the demo exited with {status} after SIGTERM:\n{}\n{}",
            self.output.lock().unwrap(),
            self.errors.lock().unwrap()
        );
    }
}

/// `   Herning Kommune  (municipality)  federation https://…   local API https://HOST:PORT`
/// → (`HERNING`, `https://HOST:PORT`); "Kommune" is left out of the variable's name.
fn local_api_line(line: &str) -> Option<(String, String)> {
    let (_, rest) = line.split_once("local API https://")?;
    let address = rest.split_whitespace().next()?;
    let name = line.split_once('(')?.0.trim();
    let variable = name
        .trim_end_matches(" Kommune")
        .to_ascii_uppercase()
        .replace(' ', "_");
    Some((variable, format!("https://{address}")))
}

/// Runs one example in `work` with bash; the variables earlier examples exported are in
/// `state`. Returns the standard output.
fn run_example(
    guide: &str,
    example: &Example,
    work: &Path,
    state: &Path,
    env: &[(String, String)],
) -> String {
    let script = work.join(format!(".example-{}.sh", example.line));
    std::fs::write(
        &script,
        format!(
            "set -euo pipefail\nset -a\nsource {state}\n{code}\nexport -p > {state}\n",
            state = state.display(),
            code = example.code
        ),
    )
    .unwrap();
    let stdout_file = work.join(format!(".example-{}.out", example.line));
    let stderr_file = work.join(format!(".example-{}.err", example.line));
    let mut command = Command::new("bash");
    command
        .arg(&script)
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_file).unwrap())
        .stderr(std::fs::File::create(&stderr_file).unwrap());
    for (name, _) in std::env::vars() {
        if name.starts_with("BROBYGGER_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > BLOCK_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = std::fs::read_to_string(&stdout_file).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_file).unwrap_or_default();
    let report = || {
        format!(
            "docs/{guide}:{}:\n{}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}",
            example.line, example.code
        )
    };
    match status {
        None => panic!(
            "the example ran longer than {BLOCK_DEADLINE:?}: {}",
            report()
        ),
        Some(status) => assert!(
            status.success(),
            "the example failed ({status}): {}",
            report()
        ),
    }
    let mut from = 0;
    for wanted in &example.expected {
        let found = stdout[from..].find(wanted.as_str()).unwrap_or_else(|| {
            panic!(
                "the output lacks `{wanted}` (after what the lines before it matched): {}",
                report()
            )
        });
        from += found + wanted.len();
    }
    stdout
}

#[test]
fn the_examples_of_the_guides_run_against_the_demo() {
    let docs = repo().join("docs");
    let mut guides: Vec<(String, Vec<Example>)> = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(&docs)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .collect();
    names.sort();
    for name in names {
        let markdown = std::fs::read_to_string(docs.join(&name)).unwrap();
        let found = examples(&name, &markdown);
        if !found.is_empty() {
            guides.push((name, found));
        }
    }
    for guide in [
        "operator-guide.md",
        "integrator-guide.md",
        "auditor-guide.md",
    ] {
        assert!(
            guides.iter().any(|(name, _)| name == guide),
            "docs/{guide} has no runnable example"
        );
    }

    let temp = tempfile::tempdir().unwrap();
    let demo_dir = temp.path().join("demo");
    let (demo, addresses) = Demo::start(&demo_dir);
    let mut env: Vec<(String, String)> = vec![("DEMO_DIR".into(), demo_dir.display().to_string())];
    for variable in ["HERNING", "RED_BARNET", "FREDERICIA"] {
        let url = addresses.get(variable).unwrap_or_else(|| {
            panic!("the demo printed no local API address for {variable}: {addresses:?}")
        });
        env.push((variable.to_owned(), url.clone()));
    }
    let binary_dir = Path::new(env!("CARGO_BIN_EXE_brobygger")).parent().unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    env.push(("PATH".into(), format!("{}:{path}", binary_dir.display())));

    let mut summary = Vec::new();
    let (mut blocks, mut with_curl) = (0, 0);
    for (guide, found) in &guides {
        let work = temp.path().join(guide.trim_end_matches(".md"));
        std::fs::create_dir_all(&work).unwrap();
        let state = work.join(".state.sh");
        std::fs::write(&state, "").unwrap();
        let curls = found.iter().filter(|e| e.code.contains("curl ")).count();
        for example in found {
            run_example(guide, example, &work, &state, &env);
        }
        blocks += found.len();
        with_curl += curls;
        summary.push(format!(
            "docs/{guide}: {} examples ran, {curls} of them with curl",
            found.len()
        ));
    }
    demo.stop();
    println!("{}", summary.join("\n"));
    println!("{blocks} examples ran against the demo, {with_curl} of them with curl");
}
