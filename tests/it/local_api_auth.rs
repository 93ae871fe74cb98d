//! The local API's bearer-token authentication and per-route roles.

use crate::support::{Engine, TestFederation};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use brobygger::domain::OrgKind;
use brobygger::jwt::Role;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

const ORG: &str = "red-barnet";

fn issuer_key(fed: &TestFederation) -> Ed25519KeyPair {
    let pem = std::fs::read(fed.pki.path().join("red-barnet/jwt-issuer.key")).unwrap();
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem).unwrap();
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der()).unwrap()
}

fn encode(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        B64URL.encode(serde_json::to_vec(header).unwrap()),
        B64URL.encode(serde_json::to_vec(claims).unwrap())
    )
}

fn sign_eddsa(key: &Ed25519KeyPair, header: &Value, claims: &Value) -> String {
    let signing_input = encode(header, claims);
    let signature = key.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", B64URL.encode(signature.as_ref()))
}

fn good_claims(now: i64) -> Value {
    json!({
        "iss": "https://idp.red-barnet.brobygger.test",
        "aud": "brobygger:red-barnet",
        "sub": "caseworker-7",
        "roles": ["caseworker"],
        "iat": now,
        "exp": now + 600,
    })
}

async fn call(fed: &TestFederation, token: Option<&str>) -> (u16, Value) {
    let mut request = fed.local_client().get(fed.local_url(ORG, "/api/v1/whoami"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    if status == 401 {
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        assert!(response.headers().contains_key("www-authenticate"));
    }
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn tokens_are_verified_and_every_bad_one_gets_401() {
    let fed = TestFederation::start(&[(ORG, OrgKind::Ngo)], Engine::Sqlite).await;
    let key = issuer_key(&fed);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": "dev-1"});

    // The well-formed token is accepted, so the refusals below are about their one defect.
    let (status, body) = call(&fed, Some(&sign_eddsa(&key, &header, &good_claims(now)))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["subject"], "caseworker-7");
    assert_eq!(body["roles"], json!(["caseworker"]));

    let (status, body) = call(&fed, None).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("unauthenticated"))
    );

    let mut cases: Vec<(&str, String)> = Vec::new();
    let mut claims = good_claims(now);
    claims["exp"] = json!(now - 120);
    cases.push(("expired", sign_eddsa(&key, &header, &claims)));
    let mut claims = good_claims(now);
    claims["iss"] = json!("https://idp.someone-else.test");
    cases.push(("wrong issuer", sign_eddsa(&key, &header, &claims)));
    let mut claims = good_claims(now);
    claims["aud"] = json!("brobygger:herning-kommune");
    cases.push(("wrong audience", sign_eddsa(&key, &header, &claims)));
    cases.push((
        "alg none",
        format!(
            "{}.",
            encode(
                &json!({"alg": "none", "typ": "JWT", "kid": "dev-1"}),
                &good_claims(now)
            )
        ),
    ));
    // HS256 keyed with the public key, raw bytes and as the JWK's `x` string.
    let public = key.public_key().as_ref().to_vec();
    for secret in [public.clone(), B64URL.encode(&public).into_bytes()] {
        let hs_header = json!({"alg": "HS256", "typ": "JWT", "kid": "dev-1"});
        let input = encode(&hs_header, &good_claims(now));
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
            input.as_bytes(),
        );
        cases.push((
            "HS256 with the public key",
            format!("{input}.{}", B64URL.encode(tag.as_ref())),
        ));
    }
    cases.push((
        "unknown key id",
        sign_eddsa(
            &key,
            &json!({"alg": "EdDSA", "typ": "JWT", "kid": "dev-9"}),
            &good_claims(now),
        ),
    ));
    let stranger = Ed25519KeyPair::from_pkcs8(
        brobygger::signed_note::generate_ed25519_pkcs8()
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    cases.push((
        "signed by another key",
        sign_eddsa(&stranger, &header, &good_claims(now)),
    ));
    let mut claims = good_claims(now);
    claims["exp"] = json!((now + 600).to_string());
    cases.push(("exp as a string", sign_eddsa(&key, &header, &claims)));

    for (what, token) in cases {
        let (status, body) = call(&fed, Some(&token)).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["reason"], "unauthenticated", "{what}");
    }
    fed.stop().await;
}

#[tokio::test]
async fn a_valid_token_without_the_routes_role_gets_403() {
    let fed = TestFederation::start(&[(ORG, OrgKind::Ngo)], Engine::Sqlite).await;
    let response = fed
        .local_client()
        .post(fed.local_url(ORG, "/api/v1/peers/red-barnet/ping"))
        .bearer_auth(fed.token(ORG, &[Role::Submitter, Role::Caseworker]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "forbidden-role");
    fed.stop().await;
}

#[tokio::test]
async fn health_needs_no_token_and_readiness_reports_its_checks() {
    let fed = TestFederation::start(&[(ORG, OrgKind::Ngo)], Engine::Sqlite).await;
    let client = fed.local_client();
    let response = client
        .get(fed.local_url(ORG, "/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = client
        .get(fed.local_url(ORG, "/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["database"]["engine"], "sqlite");
    assert_eq!(body["database"]["ok"], true);
    assert_eq!(body["manifest"]["serial"], 2);
    assert!(body["certificate"]["not_after"].is_string());
    let response = client
        .get(fed.local_url(ORG, "/no/such/route"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    fed.stop().await;
}

#[tokio::test]
async fn the_openapi_document_is_served_without_a_token() {
    let fed = TestFederation::start(&[(ORG, OrgKind::Ngo)], Engine::Sqlite).await;
    let response = fed
        .local_client()
        .get(fed.local_url(ORG, "/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert!(body["openapi"].as_str().unwrap().starts_with("3."));
    for path in ["/api/v1/messages", "/api/v1/consents/{id}/bind"] {
        assert!(
            body["paths"].get(path).is_some(),
            "the document lacks {path}"
        );
    }
    assert_eq!(
        body,
        serde_json::from_str::<Value>(&brobygger::api::openapi_json()).unwrap()
    );
    fed.stop().await;
}
