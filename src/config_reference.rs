//! The configuration reference (`docs/configuration.md`), generated from one table of field
//! descriptors.
//!
//! The parser lives in `config`; this module only describes what it reads. The integration test
//! `docs_examples` keeps the two together: every field here is accepted by the parser with its
//! stated presence, default, range, production rule and environment variable, every field the
//! parser knows (it names them when it refuses an unknown one) is here, and every key of the
//! example files in `config/` is here. The committed `docs/configuration.md` must equal
//! [`reference_markdown`].

/// One section of the file: `""` is the top level (keys before the first `[section]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionDoc {
    pub name: &'static str,
    /// Whether the file must contain the section.
    pub required: bool,
    pub meaning: &'static str,
}

/// Whether a field must be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// The file (or an environment variable) must give it.
    Required,
    /// Required unless the named condition holds.
    RequiredUnless(&'static str),
    /// May be left out; then `default` applies (a TOML value, or a description in words when
    /// `literal` is false).
    Optional {
        default: &'static str,
        literal: bool,
    },
}

/// What `server.production = true` does to a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InProduction {
    Allowed,
    /// The node refuses to start when the field is set (to `true`, for a boolean).
    Refused,
}

/// One field of the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldDoc {
    /// The section's name, `""` for the top level.
    pub section: &'static str,
    pub key: &'static str,
    /// The kind of value, in words.
    pub ty: &'static str,
    pub presence: Presence,
    /// A valid value, written as TOML.
    pub example: &'static str,
    /// The accepted range of an integer, inclusive.
    pub range: Option<(u64, u64)>,
    pub in_production: InProduction,
    pub meaning: &'static str,
}

impl FieldDoc {
    /// The dotted name, e.g. `federation.listen` (the name errors use).
    pub fn dotted(&self) -> String {
        if self.section.is_empty() {
            self.key.to_owned()
        } else {
            format!("{}.{}", self.section, self.key)
        }
    }

    /// The environment variable that overrides the field, e.g. `BROBYGGER_FEDERATION__LISTEN`.
    pub fn env_var(&self) -> String {
        let key = self.key.to_ascii_uppercase();
        if self.section.is_empty() {
            format!("{}{key}", crate::config::ENV_PREFIX)
        } else {
            format!(
                "{}{}__{key}",
                crate::config::ENV_PREFIX,
                self.section.to_ascii_uppercase()
            )
        }
    }

    /// The example as an environment variable's value: TOML strings without their quotes.
    pub fn env_example(&self) -> &'static str {
        self.example
            .strip_prefix('"')
            .and_then(|rest| rest.strip_suffix('"'))
            .unwrap_or(self.example)
    }

    fn is_dangerous(&self) -> bool {
        self.key.starts_with("dangerous_")
    }
}

/// The sections, in the order the reference lists them.
pub const SECTIONS: &[SectionDoc] = &[
    SectionDoc {
        name: "",
        required: true,
        meaning: "Keys before the first `[section]`: who this node is and where its local data lives.",
    },
    SectionDoc {
        name: "federation",
        required: true,
        meaning: "The federation listener (mutual TLS 1.3, for other members' nodes), this node's \
                  certificate, and the operator-signed manifest.",
    },
    SectionDoc {
        name: "local_api",
        required: true,
        meaning: "The local API for the organisation's own systems: its listener, its TLS \
                  certificate, and the bearer tokens it accepts.",
    },
    SectionDoc {
        name: "database",
        required: false,
        meaning: "SQLite (the default, one file) or PostgreSQL (for several replicas on one \
                  database). Pending migrations are applied when the node starts (and by \
                  `brobygger check`).",
    },
    SectionDoc {
        name: "audit",
        required: true,
        meaning: "The keys of the tamper-evident audit log.",
    },
    SectionDoc {
        name: "server",
        required: false,
        meaning: "Process settings.",
    },
];

/// Every field the configuration parser reads, in the order the reference lists them.
pub const FIELDS: &[FieldDoc] = &[
    // ----- top level -----
    FieldDoc {
        section: "",
        key: "org_id",
        ty: "organisation id",
        presence: Presence::Required,
        example: "\"herning-kommune\"",
        range: None,
        in_production: InProduction::Allowed,
        meaning: "This node's organisation id: a lowercase slug (letters a-z, digits and single \
                  hyphens, starting with a letter, at most 63 characters). It must be the org \
                  named by the node certificate's URI SAN and a member of the manifest.",
    },
    FieldDoc {
        section: "",
        key: "data_dir",
        ty: "path",
        presence: Presence::Optional {
            default: "`data/<org_id>`, relative to the configuration file's directory",
            literal: false,
        },
        example: "\"/var/lib/brobygger\"",
        range: None,
        in_production: InProduction::Allowed,
        meaning: "Where the SQLite database lives when `database.url` is not set \
                  (`<data_dir>/brobygger.db`, with SQLite's `-wal` and `-shm` files beside it). \
                  Nothing else is kept here.",
    },
    // ----- [federation] -----
    FieldDoc {
        section: "federation",
        key: "name",
        ty: "federation name",
        presence: Presence::Required,
        example: "\"brobygger.test\"",
        range: None,
        in_production: InProduction::Allowed,
        meaning: "The federation's name: dot-separated lowercase labels such as `brobygger.test`. \
                  It is the `<federation>` of every member certificate's URI SAN \
                  `spiffe://<federation>/org/<org-id>`, the first part of audit log origins \
                  (`<federation>/<org-id>/audit`) and of the operator's key name \
                  (`<federation>/operator`).",
    },
    FieldDoc {
        section: "federation",
        key: "listen",
        ty: "IP address and port",
        presence: Presence::Required,
        example: "\"0.0.0.0:7101\"",
        range: None,
        in_production: InProduction::Allowed,
        meaning: "Where the federation listener (mutual TLS 1.3, client certificate required) \
                  accepts other members' nodes, e.g. `0.0.0.0:7101`. An IP address, not a host \
                  name. Port 0 lets the system choose. The manifest lists the URL at which \
                  members reach it.",
    },
    FieldDoc {
        section: "federation",
        key: "ca_cert",
        ty: "path (PEM)",
        presence: Presence::Required,
        example: "\"/etc/brobygger/federation-ca.pem\"",
        range: None,
        in_production: InProduction::Allowed,
        meaning: "The federation CA certificate(s), PEM. Client certificates of calling members, \
                  server certificates of members this node calls, and this node's own \
                  certificate must chain to it.",
    },
    FieldDoc {
        section: "federation",
        key: "cert",
        ty: "path (PEM)",
        presence: Presence::Required,
        example: "\"/etc/brobygger/node.pem\"",
        range: None,
        in_production: InProduction::Allowed,
        meaning: "This node's certificate, PEM, leaf first and then any intermediate CA \
                  certificates. It must chain to `ca_cert`, carry exactly one URI SAN \
                  `spiffe://<federation.name>/org/<org_id>`, and allow both TLS server and \
                  client authentication: the node presents it as a server to callers and as a \
                  client when it calls. Read at start: restart the node after renewing it.",
    },
    FieldDoc {
        section: "federation",
        key: "key",
        ty: "path (PEM)",
        presence: Presence::Required,
        example: "\"/etc/brobygger/node.key\"",
        range: None,
        in_production: InProduction::Allowed,
        meaning: "The private key of `cert`, PEM (PKCS#8, SEC1 or PKCS#1). Readable by the node \
                  only.",
    },
    FieldDoc {
        section: "federation",
        key: "manifest",
        ty: "path",
        presence: Presence::Required,
        example: "\"/etc/brobygger/manifest.note\"",
        range: None,
        in_production: InProduction::Allowed,
        meaning: "The federation manifest signed by the operator (a C2SP signed note, as \
                  `brobygger federation sign` writes it). The node polls the file every \
                  `manifest_poll_interval_ms` and re-reads it on SIGHUP; a newer valid manifest \
                  replaces the current one without a restart, anything else is logged and kept \
                  out.",
    },
    FieldDoc {
        section: "federation",
        key: "operator_key",
        ty: "C2SP note verifier key",
        presence: Presence::Required,
        example: "\"brobygger.test/operator+8d3965cc+AfUwdPWks114ViKY0BS/KgE3hOLtCgD1JIdfFO/E4Kl0\"",
        range: None,
        in_production: InProduction::Allowed,
        meaning: "The federation operator's verifier key, `<federation>/operator+<hash>+<key>`, \
                  as the operator publishes it (`federation/operator.pub` after `pki init`). The \
                  manifest must be signed by it.",
    },
    FieldDoc {
        section: "federation",
        key: "manifest_poll_interval_ms",
        ty: "integer (milliseconds)",
        presence: Presence::Optional {
            default: "5000",
            literal: true,
        },
        example: "2000",
        range: Some((10, 3_600_000)),
        in_production: InProduction::Allowed,
        meaning: "How often the node checks the manifest file for a new version.",
    },
    FieldDoc {
        section: "federation",
        key: "manifest_expiry_warning_days",
        ty: "integer (days)",
        presence: Presence::Optional {
            default: "14",
            literal: true,
        },
        example: "30",
        range: None,
        in_production: InProduction::Allowed,
        meaning: "How long before the manifest or the node certificate expires `/readyz` starts \
                  to warn about it.",
    },
    // ----- [local_api] -----
    FieldDoc {
        section: "local_api",
        key: "listen",
        ty: "IP address and port",
        presence: Presence::Required,
        example: "\"127.0.0.1:7201\"",
        range: None,
        in_production: InProduction::Allowed,
        meaning: "Where the local API (TLS, bearer tokens) listens, e.g. `127.0.0.1:7201`. An IP \
                  address, not a host name. Only the organisation's own systems should be able \
                  to reach it.",
    },
    FieldDoc {
        section: "local_api",
        key: "cert",
        ty: "path (PEM)",
        presence: Presence::RequiredUnless("`dangerous_plaintext_local_api = true`"),
        example: "\"/etc/brobygger/local-api.pem\"",
        range: None,
        in_production: InProduction::Allowed,
        meaning: "The certificate (chain, PEM) the local API presents: any certificate the \
                  organisation's own clients trust for the name they use. It needs no URI SAN \
                  and need not come from the federation CA. TLS 1.3 only.",
    },
    FieldDoc {
        section: "local_api",
        key: "key",
        ty: "path (PEM)",
        presence: Presence::RequiredUnless("`dangerous_plaintext_local_api = true`"),
        example: "\"/etc/brobygger/local-api.key\"",
        range: None,
        in_production: InProduction::Allowed,
        meaning: "The private key of `local_api.cert`, PEM.",
    },
    FieldDoc {
        section: "local_api",
        key: "dangerous_plaintext_local_api",
        ty: "boolean",
        presence: Presence::Optional {
            default: "false",
            literal: true,
        },
        example: "true",
        range: None,
        in_production: InProduction::Refused,
        meaning: "Serve the local API as plain HTTP instead of TLS, for development. Allowed only \
                  when `local_api.listen` is a loopback address; logged as a warning at start. \
                  Tokens and data then cross the connection unencrypted.",
    },
    FieldDoc {
        section: "local_api",
        key: "jwks",
        ty: "path (JSON)",
        presence: Presence::Required,
        example: "\"/etc/brobygger/jwks.json\"",
        range: None,
        in_production: InProduction::Allowed,
        meaning: "The public keys of the organisation's token issuer as a JWKS file. Only EdDSA \
                  (Ed25519) and ES256 (P-256) keys, each with a unique `kid`; a key with private \
                  material is refused. Read at start: restart the node to rotate keys.",
    },
    FieldDoc {
        section: "local_api",
        key: "issuer",
        ty: "string",
        presence: Presence::Required,
        example: "\"https://idp.herning-kommune.brobygger.test\"",
        range: None,
        in_production: InProduction::Allowed,
        meaning: "The `iss` every token must carry. Must not be empty.",
    },
    FieldDoc {
        section: "local_api",
        key: "audience",
        ty: "string",
        presence: Presence::Required,
        example: "\"brobygger:herning-kommune\"",
        range: None,
        in_production: InProduction::Allowed,
        meaning: "The `aud` every token must carry (as a string, or in an array of strings). \
                  Must not be empty.",
    },
    FieldDoc {
        section: "local_api",
        key: "dev_token_key",
        ty: "path (PEM)",
        presence: Presence::Optional {
            default: "none: `brobygger token` is unavailable",
            literal: false,
        },
        example: "\"/etc/brobygger/jwt-issuer.key\"",
        range: None,
        in_production: InProduction::Refused,
        meaning: "The private key of a development token issuer (as `pki init` makes it), used \
                  only by `brobygger token` to mint tokens; its public key must be in `jwks`. \
                  In production, tokens come from the organisation's identity provider.",
    },
    FieldDoc {
        section: "local_api",
        key: "dev_token_kid",
        ty: "string",
        presence: Presence::Optional {
            default: "\"dev-1\"",
            literal: true,
        },
        example: "\"dev-1\"",
        range: None,
        in_production: InProduction::Allowed,
        meaning: "The `kid` that `brobygger token` writes into the tokens it mints; it must name \
                  the `dev_token_key`'s public key in `jwks`.",
    },
    FieldDoc {
        section: "local_api",
        key: "caseworker_scope",
        ty: "`\"unit\"` or `\"organisation\"`",
        presence: Presence::Optional {
            default: "\"unit\"",
            literal: true,
        },
        example: "\"organisation\"",
        range: None,
        in_production: InProduction::Allowed,
        meaning: "What a caseworker may read of children's data (inbox, timeline, consents, \
                  transparency reports). `unit`: only consents that the caseworker's own unit \
                  (the token's `unit` claim) recorded or bound; a caseworker token without a \
                  unit reads nothing. `organisation`: every consent of the organisation. \
                  Consent-admins and admins always read the whole organisation.",
    },
    // ----- [database] -----
    FieldDoc {
        section: "database",
        key: "url",
        ty: "URL",
        presence: Presence::Optional {
            default: "SQLite in `<data_dir>/brobygger.db`",
            literal: false,
        },
        example: "\"postgres://brobygger@db.example.internal/brobygger\"",
        range: None,
        in_production: InProduction::Allowed,
        meaning: "`sqlite://PATH` (relative to the configuration file's directory; `:memory:` \
                  is refused) or `postgres://USER:PASSWORD@HOST:PORT/DB` (also \
                  `postgresql://`; add `?host=/var/run/postgresql` to use a Unix socket). The \
                  URL is never printed, since it may hold a password; prefer passing it as \
                  `BROBYGGER_DATABASE__URL` over writing the password into the file.",
    },
    FieldDoc {
        section: "database",
        key: "max_connections",
        ty: "integer",
        presence: Presence::Optional {
            default: "8",
            literal: true,
        },
        example: "16",
        range: Some((1, 256)),
        in_production: InProduction::Allowed,
        meaning: "The size of the node's database connection pool.",
    },
    // ----- [audit] -----
    FieldDoc {
        section: "audit",
        key: "signing_key",
        ty: "path (PEM)",
        presence: Presence::Required,
        example: "\"/var/lib/brobygger/audit/audit-signing.key\"",
        range: None,
        in_production: InProduction::Allowed,
        meaning: "The Ed25519 private key (PKCS#8 PEM) that signs the audit log's checkpoints. \
                  Its verifier key (`brobygger audit key`) must be the `audit_verifier_key` the \
                  manifest publishes for this org, or the node does not start. The node keeps \
                  the last checkpoint it published in `<signing_key>.published-checkpoint`, in \
                  the same directory, so that directory must be writable by the node; never \
                  delete that file (see the operator guide, \"Backups\").",
    },
    FieldDoc {
        section: "audit",
        key: "hmac_key",
        ty: "path",
        presence: Presence::Required,
        example: "\"/etc/brobygger/audit-hmac.key\"",
        range: None,
        in_production: InProduction::Allowed,
        meaning: "At least 32 random bytes, written as hex: the key that turns identifiers \
                  (consent ids, subject references, local case keys, message ids, token \
                  subjects) into keyed HMACs before they enter the audit log. Secret, and separate from every other \
                  key. Auditors search by identifier through the node's API; the key never \
                  leaves the node.",
    },
    FieldDoc {
        section: "audit",
        key: "hmac_key_version",
        ty: "integer",
        presence: Presence::Optional {
            default: "1",
            literal: true,
        },
        example: "2",
        range: None,
        in_production: InProduction::Allowed,
        meaning: "The version of `hmac_key`, recorded with every audit entry. A search by \
                  identifier hashes with the current key only, so after a key change it finds \
                  only entries made with the new key.",
    },
    // ----- [server] -----
    FieldDoc {
        section: "server",
        key: "workers",
        ty: "integer",
        presence: Presence::Optional {
            default: "2",
            literal: true,
        },
        example: "4",
        range: Some((1, 64)),
        in_production: InProduction::Allowed,
        meaning: "HTTP worker threads per listener (the federation listener and the local API \
                  each get this many).",
    },
    FieldDoc {
        section: "server",
        key: "shutdown_timeout_secs",
        ty: "integer (seconds)",
        presence: Presence::Optional {
            default: "10",
            literal: true,
        },
        example: "30",
        range: None,
        in_production: InProduction::Allowed,
        meaning: "On SIGTERM or Ctrl-C, how long requests in flight may take to finish before \
                  the listeners close them.",
    },
    FieldDoc {
        section: "server",
        key: "production",
        ty: "boolean",
        presence: Presence::Optional {
            default: "false",
            literal: true,
        },
        example: "true",
        range: None,
        in_production: InProduction::Allowed,
        meaning: "Declares a production node: every `dangerous_*` option and \
                  `local_api.dev_token_key` are then refused, and the node does not start with \
                  them.",
    },
];

fn section_heading(section: &SectionDoc) -> String {
    if section.name.is_empty() {
        "Top level".to_owned()
    } else {
        format!("`[{}]`", section.name)
    }
}

fn table_cell(text: &str) -> String {
    // Table cells must not break the table.
    text.replace('|', "\\|")
}

fn presence_text(field: &FieldDoc) -> String {
    match field.presence {
        Presence::Required => "**required**".to_owned(),
        Presence::RequiredUnless(condition) => format!("**required** unless {condition}"),
        Presence::Optional {
            default,
            literal: true,
        } => format!("`{default}`"),
        Presence::Optional {
            default,
            literal: false,
        } => default.to_owned(),
    }
}

fn range_text(field: &FieldDoc) -> String {
    match field.range {
        Some((low, high)) => format!("{low} to {high}"),
        None => String::new(),
    }
}

/// The whole reference as Markdown: what `docs/configuration.md` holds.
pub fn reference_markdown() -> String {
    let mut out = String::new();
    out.push_str(
        "<!-- Generated from src/config_reference.rs; do not edit. Regenerate with \
         `BROBYGGER_UPDATE_DOCS=1 cargo test --test it docs_examples`. -->\n\n",
    );
    out.push_str("# Configuration reference\n\n");
    out.push_str(
        "A node reads one TOML file, named by `--config` (`brobygger serve`, `check`, `token`, \
         `audit key`, `audit verify`, `audit export`). The examples in `config/` and the files \
         `brobygger pki init` writes are complete, commented configurations.\n\n",
    );
    out.push_str("Rules that hold for every field:\n\n");
    out.push_str(
        "- The file is closed: an unknown section or key is an error, as is a value of the wrong \
         type. Every error names the file, the field (e.g. `federation.listen`) and the problem, \
         and `serve` and `check` exit with code 2.\n",
    );
    out.push_str(
        "- Relative paths are relative to the directory of the configuration file, not to the \
         working directory.\n",
    );
    out.push_str(
        "- Any field can be set or overridden from the environment: `BROBYGGER_<KEY>` for a top \
         level key, `BROBYGGER_<SECTION>__<KEY>` (two underscores) for a key in a section, e.g. \
         `BROBYGGER_FEDERATION__LISTEN=0.0.0.0:7101`. A value that replaces a string in the file \
         stays a string; any other value is read as TOML if it parses as a TOML value (`8` is a \
         number, `true` a boolean) and as text otherwise.\n",
    );
    out.push_str(
        "- Every environment variable whose name starts with `BROBYGGER_` is read as an \
         override, except those starting with `BROBYGGER_TEST_`, so an unrelated variable with \
         that prefix (say `BROBYGGER_DEMO_DIR`) makes every command that reads the \
         configuration fail with \"unknown field\". Do not name your own variables that way.\n",
    );
    out.push_str(
        "- With `server.production = true`, the options marked \"refused in production\" below \
         stop the node from starting.\n",
    );
    out.push_str(
        "- `brobygger check --config FILE` loads the file, the certificates and keys, the token \
         keys, the database (applying pending migrations) and the manifest, and reports the \
         first problem.\n\n",
    );
    out.push_str("Sections:\n\n");
    for section in SECTIONS {
        let fields: Vec<&FieldDoc> = FIELDS
            .iter()
            .filter(|f| f.section == section.name)
            .collect();
        let keys: Vec<String> = fields.iter().map(|f| format!("`{}`", f.key)).collect();
        out.push_str(&format!(
            "- {}{}: {}\n",
            section_heading(section),
            if section.required {
                " (required)"
            } else {
                " (optional)"
            },
            keys.join(", ")
        ));
    }
    out.push('\n');
    for section in SECTIONS {
        out.push_str(&format!("## {}\n\n", section_heading(section)));
        out.push_str(section.meaning);
        if !section.name.is_empty() {
            out.push_str(if section.required {
                " The section is required."
            } else {
                " The section may be left out; then every field has its default."
            });
        }
        out.push_str("\n\n");
        out.push_str("| key | type | default | range | environment variable |\n");
        out.push_str("| --- | --- | --- | --- | --- |\n");
        let fields: Vec<&FieldDoc> = FIELDS
            .iter()
            .filter(|f| f.section == section.name)
            .collect();
        for field in &fields {
            out.push_str(&format!(
                "| `{}` | {} | {} | {} | `{}` |\n",
                field.key,
                table_cell(field.ty),
                table_cell(&presence_text(field)),
                range_text(field),
                field.env_var()
            ));
        }
        out.push('\n');
        for field in &fields {
            out.push_str(&format!("**`{}`**: {}", field.dotted(), field.meaning));
            if field.in_production == InProduction::Refused {
                out.push_str(if field.is_dangerous() {
                    " **Dangerous; refused in production** (`server.production = true`)."
                } else {
                    " **Refused in production** (`server.production = true`)."
                });
            }
            out.push_str(&format!(
                " Example: `{} = {}`.\n\n",
                field.key, field.example
            ));
        }
    }
    // One trailing newline, as editors leave it.
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}
