//! Mutual TLS between nodes: identity in both directions, membership on every request.

use crate::support::{self, Engine, TestFederation};
use brobygger::domain::OrgKind;
use brobygger::jwt::Role;
use brobygger::pki::LeafSpec;
use rustls::AlertDescription;
use serde_json::Value;
use time::{Duration, OffsetDateTime};

const TWO: &[(&str, OrgKind)] = &[
    ("herning-kommune", OrgKind::Municipality),
    ("red-barnet", OrgKind::Ngo),
];

async fn ping_via_local_api(fed: &TestFederation, from: &str, to: &str) -> (u16, Value) {
    let response = fed
        .local_client()
        .post(fed.local_url(from, &format!("/api/v1/peers/{to}/ping")))
        .bearer_auth(fed.token(from, &[Role::Admin]))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn two_nodes_ping_each_other(engine: Engine) {
    let fed = TestFederation::start(TWO, engine).await;
    for (from, to) in [
        ("herning-kommune", "red-barnet"),
        ("red-barnet", "herning-kommune"),
    ] {
        let (status, body) = ping_via_local_api(&fed, from, to).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["peer_answered_as"], to);
        assert_eq!(body["peer_saw_us_as"], from);
    }
    fed.stop().await;
}

#[tokio::test]
async fn two_nodes_ping_each_other_over_mtls_on_sqlite() {
    two_nodes_ping_each_other(Engine::Sqlite).await;
}

#[tokio::test]
async fn two_nodes_ping_each_other_over_mtls_on_postgres() {
    two_nodes_ping_each_other(Engine::Postgres).await;
}

#[tokio::test]
async fn server_refuses_bad_client_certificates_with_the_matching_alert() {
    let fed = TestFederation::start(TWO, Engine::Sqlite).await;
    let addr = fed.node("herning-kommune").federation_addr;
    let now = OffsetDateTime::now_utc();
    let federation = fed.pki.federation.clone();
    let red_barnet = "red-barnet".parse().unwrap();

    // No client certificate at all.
    let error = support::first_tls_error(addr, support::raw_client_config(None)).await;
    assert_eq!(
        error,
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired)
    );

    // A member's identity, but issued by another CA.
    let foreign = brobygger::pki::CertificateAuthority::generate(
        "foreign CA",
        now - Duration::hours(1),
        now + Duration::days(30),
    )
    .unwrap();
    let cert = foreign
        .issue(&LeafSpec::node(&federation, &red_barnet, now, 30))
        .unwrap();
    let error = support::first_tls_error(
        addr,
        support::raw_client_config(Some(support::chain_and_key(&cert.cert_pem, &cert.key_pem))),
    )
    .await;
    assert_eq!(
        error,
        rustls::Error::AlertReceived(AlertDescription::UnknownCA)
    );

    // The federation CA, but expired.
    let mut spec = LeafSpec::node(&federation, &red_barnet, now, 30);
    spec.not_before = now - Duration::days(30);
    spec.not_after = now - Duration::days(1);
    let cert = fed.pki.ca_issue(&spec);
    let error = support::first_tls_error(
        addr,
        support::raw_client_config(Some(support::chain_and_key(&cert.cert_pem, &cert.key_pem))),
    )
    .await;
    assert_eq!(
        error,
        rustls::Error::AlertReceived(AlertDescription::CertificateExpired)
    );

    // The federation CA, but not valid yet (TLS reports both as certificate_expired).
    let mut spec = LeafSpec::node(&federation, &red_barnet, now, 30);
    spec.not_before = now + Duration::days(1);
    spec.not_after = now + Duration::days(30);
    let cert = fed.pki.ca_issue(&spec);
    let error = support::first_tls_error(
        addr,
        support::raw_client_config(Some(support::chain_and_key(&cert.cert_pem, &cert.key_pem))),
    )
    .await;
    assert_eq!(
        error,
        rustls::Error::AlertReceived(AlertDescription::CertificateExpired)
    );
    fed.stop().await;
}

#[tokio::test]
async fn a_federation_certificate_for_a_non_member_gets_403_problem() {
    let fed = TestFederation::start(TWO, Engine::Sqlite).await;
    let now = OffsetDateTime::now_utc();
    let stranger = "ukendt-forening".parse().unwrap();
    let cert = fed
        .pki
        .ca_issue(&LeafSpec::node(&fed.pki.federation, &stranger, now, 30));
    let config =
        support::raw_client_config(Some(support::chain_and_key(&cert.cert_pem, &cert.key_pem)));
    let mut stream = support::raw_connect(fed.node("herning-kommune").federation_addr, config)
        .await
        .unwrap();
    let (status, body) = support::raw_get(&mut stream, "/fed/v1/ping").await.unwrap();
    assert_eq!(status, 403, "{body}");
    let problem: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["reason"], "peer-not-member");
    assert_eq!(problem["status"], 403);
    fed.stop().await;
}

#[tokio::test]
async fn a_member_removed_by_a_newer_manifest_is_refused_on_its_open_connection() {
    let fed = TestFederation::start(TWO, Engine::Sqlite).await;
    let dir = fed.pki.path();
    let chain_key = support::chain_and_key(
        &std::fs::read_to_string(dir.join("red-barnet/node.pem")).unwrap(),
        &std::fs::read_to_string(dir.join("red-barnet/node.key")).unwrap(),
    );
    let mut stream = support::raw_connect(
        fed.node("herning-kommune").federation_addr,
        support::raw_client_config(Some(chain_key)),
    )
    .await
    .unwrap();
    let (status, body) = support::raw_get(&mut stream, "/fed/v1/ping").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["caller"], "red-barnet");

    // The operator removes red-barnet; herning-kommune picks it up without a restart.
    let mut doc = fed.pki.manifest_doc();
    doc.serial += 1;
    doc.members.retain(|m| m.org_id != "red-barnet");
    fed.pki.write_manifest(&doc);
    let herning = fed.node("herning-kommune");
    support::wait_until(
        "herning-kommune reloads the manifest",
        std::time::Duration::from_secs(10),
        || async { herning.state.manifest.snapshot().serial == doc.serial },
    )
    .await;

    // Same TLS connection, next request: refused.
    let (status, body) = support::raw_get(&mut stream, "/fed/v1/ping").await.unwrap();
    assert_eq!(status, 403, "{body}");
    let problem: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["reason"], "peer-not-member");
    fed.stop().await;
}

#[tokio::test]
async fn the_client_refuses_a_server_presenting_another_members_certificate() {
    let fed = TestFederation::start(
        &[
            ("herning-kommune", OrgKind::Municipality),
            ("fredericia-kommune", OrgKind::Municipality),
            ("red-barnet", OrgKind::Ngo),
        ],
        Engine::Sqlite,
    )
    .await;
    // red-barnet's address now answers with fredericia-kommune's (valid) certificate.
    let mut doc = fed.pki.manifest_doc();
    doc.serial += 1;
    let fredericia = format!("https://{}", fed.node("fredericia-kommune").federation_addr);
    for member in &mut doc.members {
        if member.org_id == "red-barnet" {
            member.endpoint = fredericia.clone();
        }
    }
    fed.install_manifest(&doc).await;

    let herning = &fed.node("herning-kommune").state;
    let error = brobygger::federation::ping_peer(herning, &"red-barnet".parse().unwrap())
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("NotValidForName")
            || error.to_string().contains("not valid for name"),
        "{error}"
    );
    let (status, body) = ping_via_local_api(&fed, "herning-kommune", "red-barnet").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["reason"], "peer-unreachable");
    // The real fredericia-kommune is still reachable under its own name.
    let (status, body) = ping_via_local_api(&fed, "herning-kommune", "fredericia-kommune").await;
    assert_eq!(status, 200, "{body}");
    fed.stop().await;
}
