//! The family's transparency report for one consent (DESIGN §7): in plain Danish (or English),
//! what was shared, with whom, for which purpose, when, and how to withdraw.
//!
//! It is built from the audit log, so it survives the purge of the data itself: the entries
//! that name the consent (by its HMAC) become lines of the report, with organisations by their
//! names and purposes by their titles from the manifest. It contains no identifiers, hashes or
//! HMACs: a family reads it, not a machine. A caseworker or consent-admin fetches it (as an HTML
//! page or as JSON) to hand it to the family; the read is audited.

use super::Actor;
use super::scope::Reach;
use crate::audit::entry::{Decision as AuditDecision, DecodedEntry};
use crate::audited::{self, Audited};
use crate::consent::{self, in_denmark};
use crate::domain::{ConsentId, MessageType, OrgId, PurposeRef};
use crate::jwt::Role;
use crate::manifest::Manifest;
use crate::node::NodeState;
use crate::policy::ConsentStatus;
use crate::problem::Problem;
use crate::storage::{self, StoredConsent};
use crate::wire::{ConsentGrantedV1, WithdrawalV1};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Entries read per page while scanning the log for a consent's lines.
const SCAN_PAGE: u32 = 2_000;

/// The report's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Da,
    En,
}

/// `?lang=da|en&format=html|json`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TransparencyQuery {
    /// `da` (default) or `en`.
    pub lang: Option<String>,
    /// `html` (default) or `json`.
    pub format: Option<String>,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportLineV1 {
    /// When, in Danish local time, in words.
    pub when: String,
    /// What kind of information, or what happened to the consent.
    pub what: String,
    pub from: String,
    pub to: String,
    /// The purpose in plain words, if the line is about information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// Shared, received, or refused (and so not shared).
    pub outcome: String,
}

/// A purpose of the consent, as the family reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurposeTextV1 {
    pub title: String,
    pub description: String,
}

/// The transparency report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransparencyReportV1 {
    pub lang: String,
    pub title: String,
    /// The two organisations of the consent, by name.
    pub parties: Vec<String>,
    pub status: String,
    pub valid_from: String,
    pub valid_until: String,
    pub purposes: Vec<PurposeTextV1>,
    pub retention: String,
    pub lines: Vec<ReportLineV1>,
    pub how_to_withdraw: String,
    pub made_at: String,
}

const MONTHS_DA: [&str; 12] = [
    "januar",
    "februar",
    "marts",
    "april",
    "maj",
    "juni",
    "juli",
    "august",
    "september",
    "oktober",
    "november",
    "december",
];
const MONTHS_EN: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

fn month_name(lang: Lang, month: time::Month) -> &'static str {
    let names = match lang {
        Lang::Da => &MONTHS_DA,
        Lang::En => &MONTHS_EN,
    };
    names
        .get(usize::from(u8::from(month)).saturating_sub(1))
        .copied()
        .unwrap_or_default()
}

/// A date in words, e.g. "22. november 2026" or "22 November 2026".
fn date_words(lang: Lang, at: OffsetDateTime) -> String {
    let local = in_denmark(at);
    match lang {
        Lang::Da => format!(
            "{}. {} {}",
            local.day(),
            month_name(lang, local.month()),
            local.year()
        ),
        Lang::En => format!(
            "{} {} {}",
            local.day(),
            month_name(lang, local.month()),
            local.year()
        ),
    }
}

/// A date and time in words, Danish local time.
fn when_words(lang: Lang, at: OffsetDateTime) -> String {
    let local = in_denmark(at);
    match lang {
        Lang::Da => format!(
            "{} kl. {:02}.{:02}",
            date_words(lang, at),
            local.hour(),
            local.minute()
        ),
        Lang::En => format!(
            "{} at {:02}:{:02}",
            date_words(lang, at),
            local.hour(),
            local.minute()
        ),
    }
}

fn message_words(lang: Lang, message_type: MessageType) -> &'static str {
    match (lang, message_type) {
        (Lang::Da, MessageType::ActivitySummary) => "Opsummering af fremmøde i klubben",
        (Lang::En, MessageType::ActivitySummary) => "Summary of attendance at the club",
        (Lang::Da, MessageType::Referral) => "Henvisning til et tilbud",
        (Lang::En, MessageType::Referral) => "Referral to an activity",
        (Lang::Da, MessageType::ReferralResponse) => "Svar på en henvisning",
        (Lang::En, MessageType::ReferralResponse) => "Reply to a referral",
        (Lang::Da, MessageType::ConsentGranted) => "Besked om jeres samtykke",
        (Lang::En, MessageType::ConsentGranted) => "Notice of your consent",
        (Lang::Da, MessageType::ConsentWithdrawn) => "Besked om at samtykket er ophørt",
        (Lang::En, MessageType::ConsentWithdrawn) => "Notice that the consent ended",
        (Lang::Da, MessageType::Ack) => "Kvittering",
        (Lang::En, MessageType::Ack) => "Acknowledgement",
    }
}

fn status_words(lang: Lang, status: Option<ConsentStatus>, active_now: bool) -> &'static str {
    match (lang, status) {
        (Lang::Da, Some(ConsentStatus::Given | ConsentStatus::Renewed)) if active_now => {
            "Samtykket gælder"
        }
        (Lang::En, Some(ConsentStatus::Given | ConsentStatus::Renewed)) if active_now => {
            "The consent is in force"
        }
        (Lang::Da, Some(ConsentStatus::WithdrawnBySubject)) => "I har trukket samtykket tilbage",
        (Lang::En, Some(ConsentStatus::WithdrawnBySubject)) => "You withdrew the consent",
        (Lang::Da, Some(ConsentStatus::Revoked)) => "Samtykket er tilbagekaldt",
        (Lang::En, Some(ConsentStatus::Revoked)) => "The consent was revoked",
        (Lang::Da, Some(ConsentStatus::Invalidated)) => "Samtykket er erklæret ugyldigt",
        (Lang::En, Some(ConsentStatus::Invalidated)) => "The consent was declared invalid",
        (Lang::Da, _) => "Samtykket gælder ikke længere",
        (Lang::En, _) => "The consent is no longer in force",
    }
}

/// The manifest's name of an organisation (its id only if it left the federation).
fn org_name(manifest: &Manifest, org: &str) -> String {
    org.parse::<OrgId>()
        .ok()
        .and_then(|id| manifest.member(&id).map(|m| m.name.clone()))
        .unwrap_or_else(|| org.replace('-', " "))
}

fn purpose_title(manifest: &Manifest, lang: Lang, purpose: &str) -> Option<String> {
    let (id, version) = purpose.split_once('@')?;
    let reference = PurposeRef::new(id.parse().ok()?, version.parse().ok()?).ok()?;
    let purpose = manifest.purposes.get(&reference)?;
    Some(match lang {
        Lang::Da => purpose.title_da.clone(),
        Lang::En => purpose.title_en.clone(),
    })
}

/// The lines of the report from the log's entries about this consent.
fn lines(lang: Lang, manifest: &Manifest, me: &str, entries: &[DecodedEntry]) -> Vec<ReportLineV1> {
    let my_name = org_name(manifest, me);
    let words = |da: &str, en: &str| match lang {
        Lang::Da => da.to_owned(),
        Lang::En => en.to_owned(),
    };
    let mut lines = Vec::new();
    for entry in entries {
        let record = &entry.record;
        let Ok(at) =
            OffsetDateTime::parse(&record.time, &time::format_description::well_known::Rfc3339)
        else {
            continue;
        };
        let peer = record
            .peer
            .as_deref()
            .map(|p| org_name(manifest, p))
            .unwrap_or_default();
        let permitted = record.decision == Some(AuditDecision::Permit);
        let message_type = record
            .message_type
            .as_deref()
            .and_then(|t| t.parse::<MessageType>().ok());
        let purpose = record
            .purpose
            .as_deref()
            .and_then(|p| purpose_title(manifest, lang, p));
        let line = match (record.action.as_str(), message_type) {
            ("federation.envelope", Some(kind)) => ReportLineV1 {
                when: when_words(lang, at),
                what: message_words(lang, kind).to_owned(),
                from: peer,
                to: my_name.clone(),
                purpose: purpose.filter(|_| kind.carries_child_data()),
                outcome: if permitted {
                    words("Modtaget", "Received")
                } else {
                    words("Afvist ved modtagelsen", "Refused on arrival")
                },
            },
            ("local.message.submit", Some(kind)) => ReportLineV1 {
                when: when_words(lang, at),
                what: message_words(lang, kind).to_owned(),
                from: my_name.clone(),
                to: peer,
                purpose,
                // The log records the decision to send; a message later cancelled by a withdrawal
                // was accepted but not delivered, so the line says what is certain.
                outcome: if permitted {
                    words("Godkendt til afsendelse", "Accepted for sending")
                } else {
                    words("Ikke sendt (afvist)", "Not sent (refused)")
                },
            },
            ("local.consent.record", _) if permitted => ReportLineV1 {
                when: when_words(lang, at),
                what: words("Samtykket blev registreret", "The consent was recorded"),
                from: my_name.clone(),
                to: peer,
                purpose: None,
                outcome: words("Registreret", "Recorded"),
            },
            ("local.consent.withdraw", _) if permitted => ReportLineV1 {
                when: when_words(lang, at),
                what: words(
                    "Samtykket blev trukket tilbage",
                    "The consent was withdrawn",
                ),
                from: my_name.clone(),
                to: peer,
                purpose: None,
                outcome: words("Registreret", "Recorded"),
            },
            ("local.consent.bind", _) if permitted => ReportLineV1 {
                when: when_words(lang, at),
                what: words(
                    "Samtykket blev knyttet til jeres sag med koden fra jeres kopi",
                    "The consent was linked to your case with the code from your copy",
                ),
                from: my_name.clone(),
                to: my_name.clone(),
                purpose: None,
                outcome: words("Registreret", "Recorded"),
            },
            _ => continue,
        };
        lines.push(line);
    }
    lines
}

fn how_to_withdraw(
    lang: Lang,
    terms: Option<&ConsentGrantedV1>,
    recording: &str,
    other: &str,
) -> String {
    let whom = match terms.map(|t| t.withdrawal) {
        Some(WithdrawalV1::ContactRecordingOrg) => recording.to_owned(),
        _ => match lang {
            Lang::Da => format!("{recording} eller {other}"),
            Lang::En => format!("{recording} or {other}"),
        },
    };
    match lang {
        Lang::Da => format!(
            "I kan trække samtykket tilbage når som helst og uden begrundelse ved at kontakte \
             {whom}. Så sendes der ikke flere oplysninger, beskeder der venter bliver annulleret, \
             og foreningen sletter det, den har modtaget. Kommunen gemmer det, den har modtaget, \
             efter arkivloven."
        ),
        Lang::En => format!(
            "You can withdraw the consent at any time, without giving a reason, by contacting \
             {whom}. Nothing more is then shared, messages waiting to be sent are cancelled, and \
             the association deletes what it received. The municipality keeps what it received, \
             as the Danish archives act requires."
        ),
    }
}

/// Builds the report from the consent, the manifest and the log.
async fn build(
    state: &NodeState,
    consent: &StoredConsent,
    lang: Lang,
) -> Result<TransparencyReportV1, Problem> {
    let manifest = state.manifest.snapshot();
    let record = &consent.record;
    let wanted = state.hmac.pseudonymise("consent", record.id.as_str());
    let mut matching = Vec::new();
    let mut start = 0;
    loop {
        let page = storage::audit_entry_range(&state.db, start, i64::MAX.unsigned_abs(), SCAN_PAGE)
            .await
            .map_err(|e| Problem::unavailable(&e))?;
        let Some(last) = page.last() else { break };
        start = last.idx + 1;
        for stored in &page {
            if let Ok(entry) = crate::audit::entry::decode(&stored.entry)
                && entry.record.consent_hmac.as_deref() == Some(wanted.as_str())
            {
                matching.push(entry);
            }
        }
    }
    let terms: Option<ConsentGrantedV1> = serde_json::from_str(&consent.terms).ok();
    let recording = org_name(&manifest, record.recording_org.as_str());
    let counterpart = org_name(&manifest, record.counterpart.as_str());
    let now = state.clock.now();
    let status = consent::derived_status(&record.events);
    let active_now = status.is_some_and(ConsentStatus::permits_processing)
        && now >= record.valid_from
        && now < record.valid_until;
    let purposes = record
        .purposes
        .iter()
        .filter_map(|p| manifest.purposes.get(p))
        .map(|p| match lang {
            Lang::Da => PurposeTextV1 {
                title: p.title_da.clone(),
                description: p.description_da.clone(),
            },
            Lang::En => PurposeTextV1 {
                title: p.title_en.clone(),
                description: p.description_en.clone(),
            },
        })
        .collect();
    let last_valid_day = record.valid_until - time::Duration::seconds(1);
    let retention = match lang {
        Lang::Da => format!(
            "Den, der modtager oplysninger, må højst gemme dem i {} dage.",
            record.retention_at_recipient_days
        ),
        Lang::En => format!(
            "Whoever receives information may keep it for at most {} days.",
            record.retention_at_recipient_days
        ),
    };
    Ok(TransparencyReportV1 {
        lang: match lang {
            Lang::Da => "da".into(),
            Lang::En => "en".into(),
        },
        title: match lang {
            Lang::Da => "Hvad er delt om jeres barn".into(),
            Lang::En => "What has been shared about your child".into(),
        },
        parties: vec![recording.clone(), counterpart.clone()],
        status: status_words(lang, status, active_now).to_owned(),
        valid_from: date_words(lang, record.valid_from),
        valid_until: date_words(lang, last_valid_day),
        purposes,
        retention,
        lines: lines(lang, &manifest, state.identity.org.as_str(), &matching),
        how_to_withdraw: how_to_withdraw(lang, terms.as_ref(), &recording, &counterpart),
        made_at: when_words(lang, now),
    })
}

/// Escapes text for HTML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// The report as a self-contained HTML page (no scripts, no external resources).
pub fn render_html(report: &TransparencyReportV1) -> String {
    let da = report.lang == "da";
    let t = |da_text: &'static str, en_text: &'static str| if da { da_text } else { en_text };
    let mut html = String::new();
    html.push_str(&format!(
        "<!DOCTYPE html>\n<html lang=\"{}\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>\n\
         body {{ font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.5; color: #1a1a1a; }}\n\
         table {{ border-collapse: collapse; width: 100%; }}\n\
         th, td {{ text-align: left; padding: 0.4rem 0.6rem; border-bottom: 1px solid #ccc; vertical-align: top; }}\n\
         .status {{ font-weight: bold; }}\n\
         .withdraw {{ background: #f3f6f9; padding: 1rem; border-left: 4px solid #2a5d8f; }}\n\
         </style>\n</head>\n<body>\n",
        escape(&report.lang),
        escape(&report.title)
    ));
    html.push_str(&format!("<h1>{}</h1>\n", escape(&report.title)));
    html.push_str(&format!(
        "<p>{} <strong>{}</strong> {} <strong>{}</strong>.</p>\n",
        t(
            "Jeres samtykke gælder udveksling af oplysninger mellem",
            "Your consent covers sharing information between"
        ),
        escape(
            report
                .parties
                .first()
                .map(String::as_str)
                .unwrap_or_default()
        ),
        t("og", "and"),
        escape(
            report
                .parties
                .get(1)
                .map(String::as_str)
                .unwrap_or_default()
        ),
    ));
    html.push_str(&format!(
        "<p class=\"status\" id=\"status\">{}</p>\n<p>{} {} {} {}.</p>\n",
        escape(&report.status),
        t("Gyldigt fra", "Valid from"),
        escape(&report.valid_from),
        t("til og med", "up to and including"),
        escape(&report.valid_until),
    ));
    html.push_str(&format!(
        "<h2>{}</h2>\n<ul id=\"purposes\">\n",
        t("Hvad samtykket gælder", "What the consent is for")
    ));
    for purpose in &report.purposes {
        html.push_str(&format!(
            "<li><strong>{}</strong>: {}</li>\n",
            escape(&purpose.title),
            escape(&purpose.description)
        ));
    }
    html.push_str(&format!("</ul>\n<p>{}</p>\n", escape(&report.retention)));
    html.push_str(&format!(
        "<h2>{}</h2>\n",
        t("Hvad er sket", "What has happened")
    ));
    if report.lines.is_empty() {
        html.push_str(&format!(
            "<p>{}</p>\n",
            t(
                "Der er endnu ikke delt noget.",
                "Nothing has been shared yet."
            )
        ));
    } else {
        html.push_str(&format!(
            "<table id=\"lines\">\n<thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead>\n<tbody>\n",
            t("Hvornår", "When"),
            t("Hvad", "What"),
            t("Fra", "From"),
            t("Til", "To"),
            t("Formål", "Purpose"),
            t("Udfald", "Outcome"),
        ));
        for line in &report.lines {
            html.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                escape(&line.when),
                escape(&line.what),
                escape(&line.from),
                escape(&line.to),
                escape(line.purpose.as_deref().unwrap_or("")),
                escape(&line.outcome),
            ));
        }
        html.push_str("</tbody>\n</table>\n");
    }
    html.push_str(&format!(
        "<h2>{}</h2>\n<p class=\"withdraw\" id=\"withdraw\">{}</p>\n<p><small>{} {}.</small></p>\n</body>\n</html>\n",
        t("Sådan trækker I samtykket tilbage", "How to withdraw"),
        escape(&report.how_to_withdraw),
        t("Udskrevet", "Made"),
        escape(&report.made_at),
    ));
    html
}

/// `GET /api/v1/consents/{id}/transparency` (caseworker or consent-admin): the report as HTML
/// (default) or JSON (`?format=json` or `Accept: application/json`), Danish unless `?lang=en`.
#[utoipa::path(
    get,
    path = "/api/v1/consents/{id}/transparency",
    tag = "consents",
    operation_id = "consent_transparency",
    summary = "The family's transparency report for one consent",
    params(("id" = String, Path, description = "The consent id"), TransparencyQuery),
    responses(
        (status = 200, description = "The report as an HTML page (text/html) or as JSON", body = TransparencyReportV1),
        (status = 400, description = "Malformed request", body = crate::problem::ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = crate::problem::ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Role not allowed, consent unknown, or out of the caseworker's scope", body = crate::problem::ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "The read could not be audited", body = crate::problem::ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn transparency(
    actor: Actor,
    state: web::Data<NodeState>,
    path: web::Path<String>,
    query: web::Query<TransparencyQuery>,
    req: HttpRequest,
) -> Result<Audited<HttpResponse>, Problem> {
    let route = "/api/v1/consents/{id}/transparency";
    actor
        .require(&state, route, &[Role::Caseworker, Role::ConsentAdmin])
        .await?;
    let id: ConsentId = path
        .parse()
        .map_err(|e: crate::domain::ParseError| Problem::malformed_request(e.to_string()))?;
    let lang = match query.lang.as_deref() {
        None | Some("da") => Lang::Da,
        Some("en") => Lang::En,
        Some(_) => return Err(Problem::malformed_request("lang is `da` or `en`")),
    };
    let accept_json = req
        .headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    let json = match query.format.as_deref() {
        None => accept_json,
        Some("json") => true,
        Some("html") => false,
        Some(_) => return Err(Problem::malformed_request("format is `html` or `json`")),
    };
    let mut record = audited::record(
        &state,
        "local.transparency.read",
        AuditDecision::Permit,
        None,
    );
    record.actor = Some(actor.audit_actor(&state));
    record.route = Some(route.to_owned());
    record.consent_hmac = Some(state.hmac.pseudonymise("consent", id.as_str()));
    let reach = Reach::of(&state, &actor);
    let consent = match storage::consent(&state.db, &id).await {
        Ok(Some(consent)) => consent,
        // A caseworker limited to a unit learns nothing of what exists outside it.
        Ok(None) if reach != Reach::Organisation => {
            return Err(audited::deny(&state, record, Problem::out_of_scope()).await);
        }
        Ok(None) => {
            let problem = Problem::refused(
                "consent-unknown",
                "this node holds no consent with that id",
                None,
            );
            return Err(audited::deny(&state, record, problem).await);
        }
        Err(e) => return Err(Problem::unavailable(&e)),
    };
    record.subject_hmac = Some(
        state
            .hmac
            .pseudonymise("subject", &consent.record.subject.to_string()),
    );
    if !reach.covers(&consent) {
        return Err(audited::deny(&state, record, Problem::out_of_scope()).await);
    }
    let report = build(&state, &consent, lang).await?;
    let receipt = audited::permit(&state, record).await?;
    let response = if json {
        HttpResponse::Ok().json(report)
    } else {
        HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .body(render_html(&report))
    };
    Ok(Audited::new(receipt, response))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn dates_read_as_words_in_danish_time() {
        let at = datetime!(2026-11-22 10:05 UTC);
        assert_eq!(when_words(Lang::Da, at), "22. november 2026 kl. 11.05");
        assert_eq!(when_words(Lang::En, at), "22 November 2026 at 11:05");
        assert_eq!(
            date_words(Lang::Da, datetime!(2026-07-01 22:30 UTC)),
            "2. juli 2026"
        );
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(escape("<b>&\"'"), "&lt;b&gt;&amp;&quot;&#39;");
    }
}
