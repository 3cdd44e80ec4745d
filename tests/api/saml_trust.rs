//! What a SAML answer may vouch for, read strictly: look-alike attributes,
//! NUL bytes and trailing content, unknown conditions and OneTimeUse,
//! transient NameIDs, IssueInstant and AuthnInstant windows, auth_time and
//! the IdP session's end, `email_verified`, and the IdP URLs metadata may
//! give. Responses are crafted and signed by signxml (saml_crafted).

use crate::saml_common::*;
use crate::saml_crafted::*;
use chrono::Duration;
use portcullis::upstream::http::{OutboundConfig, OutboundHttp};
use portcullis::upstream::saml::{self, SamlConfig};
use portcullis::upstream::{SetupError, UpstreamContext};
use serde_json::json;

/// A StatusCode carrying only `samlp:Value="...Success"` has no status at
/// all: it must not count as Success.
#[tokio::test]
async fn namespaced_look_alike_status_value_is_not_success() {
    let x = xml("lookalike_status");
    assert!(
        x.contains("samlp:Value=\"urn:oasis:names:tc:SAML:2.0:status:Success\""),
        "{x}"
    );
    assert!(!x.contains(" Value="), "{x}");
    assert_eq!(code("lookalike_status").await, "saml.status_not_success");
}

#[tokio::test]
async fn namespaced_look_alike_version_is_not_a_version() {
    let x = xml("lookalike_version");
    assert!(x.contains("saml:Version=\"2.0\""), "{x}");
    assert_eq!(code("lookalike_version").await, "saml.malformed");
}

/// Any look-alike in a SAML or XML-DSig namespace, and a namespaced `ID`
/// in any namespace (which samael's id lookup would not tell apart), is refused.
#[tokio::test]
async fn namespaced_look_alike_attributes_are_refused() {
    let c = sp().await;
    let ok = xml("ok");
    for extra in [
        "xmlns:x=\"urn:x\" x:ID=\"_evil\"",
        "saml:Destination=\"https://sso.example.test/saml/acme/corp/acs\"",
        "samlp:InResponseTo=\"_req1\"",
    ] {
        let bad = ok.replacen("<samlp:Response ", &format!("<samlp:Response {extra} "), 1);
        assert_ne!(bad, ok);
        let e = complete_xml(&c, Some(&pending(REQ)), bad.as_bytes()).await.unwrap_err();
        assert_eq!(e.code, "saml.malformed", "{extra}: {}", e.detail);
        assert!(e.detail.contains("look-alike"), "{extra}: {}", e.detail);
    }
}

#[tokio::test]
async fn nul_bytes_and_trailing_content_are_refused() {
    let c = sp().await;
    let ok = xml("ok");
    for bad in [
        format!("{ok}\0<evil/>"),
        format!("{ok}\0"),
        ok.replacen("<saml:Issuer>", "<saml:Issuer>\0", 1),
        format!("{ok}<evil/>"),
    ] {
        let e = complete_xml(&c, Some(&pending(REQ)), bad.as_bytes()).await.unwrap_err();
        assert_eq!(e.code, "saml.malformed", "{}", e.detail);
    }
    // A NUL in the form value itself (after valid base64) is refused too.
    let mut params = form(ok.as_bytes());
    params.form.get_mut("SAMLResponse").unwrap().push('\0');
    let e = portcullis::upstream::Connector::complete(&c, Some(&pending(REQ)), &params)
        .await
        .unwrap_err();
    assert_eq!(e.code, "saml.malformed");
    // The same response without the extra bytes is fine.
    assert!(complete_xml(&c, Some(&pending(REQ)), ok.as_bytes()).await.is_ok());
}

#[tokio::test]
async fn unknown_conditions_make_the_assertion_invalid() {
    assert_eq!(code("condition_xsi_type").await, "saml.condition_unknown");
    assert_eq!(code("condition_foreign").await, "saml.condition_unknown");
    assert_eq!(code("condition_one_time_use_twice").await, "saml.malformed");
    assert_eq!(
        run("condition_proxy_restriction").await.unwrap().subject,
        "ada@example.test"
    );
}

/// OneTimeUse: the assertion id stays in the replay cache until the
/// assertion's own NotOnOrAfter (plus skew) has passed.
#[tokio::test]
async fn one_time_use_assertion_is_refused_again_until_it_expires() {
    let (ctx, clock) = ctx_at(now());
    let cfg = setup(&ctx, "acme", "corp", json!({ "metadata_xml": crafted().metadata })).await;
    let c = connector(&ctx, "acme", "corp", cfg);
    let x = xml("condition_one_time_use");
    assert!(x.contains("OneTimeUse"), "{x}");
    assert!(complete_xml(&c, Some(&pending(REQ)), x.as_bytes()).await.is_ok());
    // NotOnOrAfter is now + 5 min and the skew 60 s: still acceptable at +5:30.
    clock.advance(Duration::seconds(330));
    let e = complete_xml(&c, Some(&pending(REQ)), x.as_bytes()).await.unwrap_err();
    assert_eq!(e.code, "saml.replay");
}

/// A memory store that records the TTL of every replay entry written.
struct ReplayTtls(
    portcullis::store::memory::MemoryStore,
    std::sync::Arc<std::sync::Mutex<Vec<std::time::Duration>>>,
);

#[async_trait::async_trait]
impl portcullis::store::StoreLayer for ReplayTtls {
    fn inner(&self) -> &dyn portcullis::store::Store {
        &self.0
    }

    async fn put_if_absent(
        &self,
        key: &portcullis::store::Key,
        value: &[u8],
        ttl: Option<std::time::Duration>,
    ) -> Result<bool, portcullis::store::StoreError> {
        if key.tag().ends_with(":saml-replay") {
            self.1.lock().unwrap().extend(ttl);
        }
        portcullis::store::Store::put_if_absent(&self.0, key, value, ttl).await
    }
}

/// An accepted assertion's replay entry lives until the first of its
/// windows closes: a NotOnOrAfter in year 9999 does not keep an entry per
/// sign-in for 8,000 years, since the IssueInstant age limit refuses the
/// assertion after five minutes and the skew; until then a replay is
/// still refused as one.
#[tokio::test]
async fn a_far_not_on_or_after_keeps_the_replay_entry_no_longer_than_the_issue_age() {
    let (mut ctx, clock) = ctx_at(now());
    let ttls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    ctx.store = std::sync::Arc::new(ReplayTtls(
        portcullis::store::memory::MemoryStore::new(std::sync::Arc::new(clock.clone())),
        ttls.clone(),
    ));
    let cfg = setup(&ctx, "acme", "corp", json!({ "metadata_xml": crafted().metadata })).await;
    let c = connector(&ctx, "acme", "corp", cfg);
    let x = xml("valid_until_year_9999");
    complete_xml(&c, Some(&pending(REQ)), x.as_bytes()).await.unwrap();
    // IssueInstant is now: acceptable until now + 300 s + 60 s of skew,
    // kept a second more.
    assert_eq!(*ttls.lock().unwrap(), [std::time::Duration::from_secs(361)]);
    clock.advance(Duration::seconds(359));
    let e = complete_xml(&c, Some(&pending(REQ)), x.as_bytes()).await.unwrap_err();
    assert_eq!(e.code, "saml.replay");
    clock.advance(Duration::seconds(2));
    let e = complete_xml(&c, Some(&pending(REQ)), x.as_bytes()).await.unwrap_err();
    assert_eq!(e.code, "saml.issue_instant_too_old");
}

#[tokio::test]
async fn transient_name_id_is_never_the_subject() {
    assert_eq!(
        code("transient_without_stable_attribute").await,
        "saml.transient_subject"
    );
    let id = run("transient_with_eppn").await.unwrap();
    assert_eq!(id.subject, "ada@uni.test");
    assert_eq!(id.email.as_deref(), Some("ada.lovelace@uni.test"));
    // By default the first stable identifier present (uid here)...
    assert_eq!(run("transient_with_employee_id").await.unwrap().subject, "ada");
    // ...or the connection's subject attribute.
    let (c, _) = sp_with("acme", json!({ "attribute_mapping": { "subject": "employeeId" } })).await;
    let id = complete_xml(&c, Some(&pending(REQ)), xml("transient_with_employee_id").as_bytes())
        .await
        .unwrap();
    assert_eq!(id.subject, "E-42");
}

/// A NameID is the subject byte for byte: only the XML whitespace that
/// pretty-printing adds around it is trimmed (so today's identity links
/// hold), never a no-break or ideographic space, which would make
/// `ada@example.test\u{a0}` sign in as `ada@example.test`.
#[tokio::test]
async fn a_name_id_padded_with_unicode_space_is_a_subject_of_its_own() {
    let nbsp = run("name_id_no_break_space").await.unwrap();
    assert_eq!(nbsp.subject, "ada@example.test\u{a0}");
    let ideographic = run("name_id_ideographic_space").await.unwrap();
    assert_eq!(ideographic.subject, "\u{3000}ada@example.test");
    let pretty = run("name_id_pretty_printed").await.unwrap();
    assert_eq!(pretty.subject, "ada@example.test");
}

#[tokio::test]
async fn issue_instants_outside_the_window_are_refused() {
    assert_eq!(code("response_issued_in_future").await, "saml.issue_instant_in_future");
    assert_eq!(code("response_issued_long_ago").await, "saml.issue_instant_too_old");
    assert_eq!(code("assertion_issued_in_future").await, "saml.issue_instant_in_future");
    assert_eq!(code("assertion_issued_long_ago").await, "saml.issue_instant_too_old");
    assert_eq!(code("authn_instant_in_future").await, "saml.authn_instant_in_future");
}

/// An instant in another time zone is the same instant: its offset is
/// applied, not dropped (a `-05:00` ten minutes ahead is ahead).
#[tokio::test]
async fn instants_in_other_time_zones_are_read_as_the_same_instant() {
    run("instant_in_another_zone").await.unwrap();
    assert_eq!(code("issued_in_future_by_zone").await, "saml.issue_instant_in_future");
    run("instant_with_thirty_fraction_digits").await.unwrap();
}

/// The first and last instants a four-digit year holds are judged like any
/// other, with no overflow in the windows or the replay cache's lifetime:
/// year 0 is too old or expired, year 9999 is ahead, and an assertion valid
/// until 9999 is accepted with that session end.
#[tokio::test]
async fn instants_at_the_ends_of_the_calendar_are_judged_without_overflow() {
    assert_eq!(code("issued_in_year_zero").await, "saml.issue_instant_too_old");
    assert_eq!(code("issued_in_year_9999").await, "saml.issue_instant_in_future");
    assert_eq!(code("expired_in_year_zero").await, "saml.expired");
    let id = run("valid_until_year_9999").await.unwrap();
    assert_eq!(id.session_expires_at, Some(253_402_300_799));
}

/// An `AuthnInstant` before 1970 (year 0, or one second before the epoch)
/// is refused where the assertion is checked (`saml.authn_instant_invalid`),
/// never carried on as a negative `auth_time`; the epoch itself is a date
/// like any other.
#[tokio::test]
async fn an_authn_instant_before_1970_is_refused() {
    assert_eq!(code("authn_instant_in_year_zero").await, "saml.authn_instant_invalid");
    assert_eq!(code("authn_instant_before_epoch").await, "saml.authn_instant_invalid");
    let id = run("authn_instant_at_epoch").await.unwrap();
    assert_eq!(id.auth_time, Some(0));
}

/// What RFC 3339 does not define (no zone, a five-digit or negative year,
/// an offset of a day, bare Unix seconds) is malformed, not guessed at.
#[tokio::test]
async fn instants_outside_rfc_3339_are_malformed() {
    for name in [
        "instant_without_zone",
        "instant_with_five_digit_year",
        "instant_with_negative_year",
        "instant_with_offset_of_a_day",
        "instant_as_unix_seconds",
    ] {
        assert_eq!(code(name).await, "saml.malformed", "{name}");
    }
}

#[tokio::test]
async fn auth_time_and_session_end_come_from_the_authn_statement() {
    let id = run("ok").await.unwrap();
    assert_eq!(id.auth_time, Some(now().timestamp()));
    assert_eq!(id.session_expires_at, None);
    let id = run("authn_earlier_with_session_end").await.unwrap();
    assert_eq!(id.auth_time, Some((now() - Duration::minutes(30)).timestamp()));
    assert_eq!(id.session_expires_at, Some((now() + Duration::hours(8)).timestamp()));
}

/// SAML has no verified flag: the connection's `trust_email_verified`
/// decides (the broker then narrows it to the tenant's domains).
#[tokio::test]
async fn email_verified_follows_the_connection_setting() {
    assert_eq!(run("ok").await.unwrap().email_verified, Some(false));
    let (c, _) = sp_with("acme", json!({ "trust_email_verified": true })).await;
    let id = complete_xml(&c, Some(&pending(REQ)), xml("ok").as_bytes())
        .await
        .unwrap();
    assert_eq!(id.email_verified, Some(true));
    // A stored connection from before the setting loads with it off.
    let mut stored = serde_json::to_value(setup_ok(&ctx(false), json!({})).await).unwrap();
    stored.as_object_mut().unwrap().remove("trust_email_verified");
    let back: SamlConfig = serde_json::from_value(stored).unwrap();
    assert!(!back.trust_email_verified);
}

fn ctx(allow_private_networks: bool) -> UpstreamContext {
    let (mut ctx, _) = ctx_at(now());
    ctx.http = OutboundHttp::new(OutboundConfig {
        allow_private_networks,
        ..Default::default()
    })
    .unwrap();
    ctx
}

async fn try_setup(ctx: &UpstreamContext, body: serde_json::Value) -> Result<SamlConfig, SetupError> {
    saml::setup(
        body,
        ctx,
        &portcullis::ids::TenantId::parse("acme").unwrap(),
        &portcullis::ids::ConnectionId::parse("corp").unwrap(),
    )
    .await
}

async fn setup_ok(ctx: &UpstreamContext, extra: serde_json::Value) -> SamlConfig {
    let mut body = json!({ "metadata_xml": crafted().metadata });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    try_setup(ctx, body).await.unwrap()
}

/// The crafted metadata with its SSO location replaced and `extra` endpoints added.
fn metadata_with(sso: &str, extra: &str) -> String {
    let md = &crafted().metadata;
    let escaped = sso.replace('&', "&amp;").replace('<', "&lt;").replace('"', "&quot;");
    let md = md.replace("https://idp.example.test/sso", &escaped);
    md.replace("</md:IDPSSODescriptor>", &format!("{extra}</md:IDPSSODescriptor>"))
}

async fn metadata_error(ctx: &UpstreamContext, metadata: String) -> SetupError {
    try_setup(ctx, json!({ "metadata_xml": metadata })).await.unwrap_err()
}

#[tokio::test]
async fn idp_sso_and_slo_urls_must_be_https() {
    let public = ctx(false);
    let private_ok = ctx(true);
    for bad in [
        "javascript:alert(document.cookie)",
        "data:text/html,<script>alert(1)</script>",
        "http://idp.example.test/sso",
        "ftp://idp.example.test/sso",
        "http://127.0.0.1:8080/sso",
    ] {
        let e = metadata_error(&public, metadata_with(bad, "")).await;
        assert_eq!(e.field, "metadata_xml", "{bad}");
        assert!(e.message.contains("SingleSignOnService"), "{bad}: {}", e.message);
    }
    // http is for loopback and private hosts, and only when private networks are allowed.
    for bad in ["http://idp.example.test/sso", "javascript:alert(1)"] {
        let e = metadata_error(&private_ok, metadata_with(bad, "")).await;
        assert_eq!(e.field, "metadata_xml", "{bad}");
    }
    for ok in [
        "http://127.0.0.1:8080/sso",
        "http://localhost:8080/sso",
        "http://10.0.0.7/sso",
    ] {
        let cfg = try_setup(&private_ok, json!({ "metadata_xml": metadata_with(ok, "") }))
            .await
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert_eq!(cfg.sso_redirect_url.as_deref(), Some(ok));
    }
    let slo = |loc: &str| {
        format!(
            "<md:SingleLogoutService Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect\" Location=\"{loc}\"/>"
        )
    };
    let e = metadata_error(
        &public,
        metadata_with("https://idp.example.test/sso", &slo("javascript:x()")),
    )
    .await;
    assert_eq!(e.field, "metadata_xml");
    assert!(e.message.contains("SingleLogoutService"), "{}", e.message);
    assert!(try_setup(
        &public,
        json!({ "metadata_xml": metadata_with("https://idp.example.test/sso", &slo("https://idp.example.test/slo")) })
    )
    .await
    .is_ok());
}

#[tokio::test]
async fn metadata_url_must_be_https() {
    for (ctx, url) in [
        (ctx(false), "http://idp.example.test/metadata"),
        (ctx(true), "http://idp.example.test/metadata"),
        (ctx(false), "http://127.0.0.1:1/metadata"),
        (ctx(false), "file:///etc/passwd"),
        (ctx(false), "javascript:alert(1)"),
        (ctx(false), "data:text/xml,<x/>"),
    ] {
        let e = try_setup(&ctx, json!({ "metadata_url": url })).await.unwrap_err();
        assert_eq!(e.field, "metadata_url", "{url}");
        assert!(
            e.message.contains("https") || e.message.contains("host"),
            "{url}: {}",
            e.message
        );
    }
}

/// A stored connection whose SSO endpoint the rule refuses (stored before
/// the rule, or edited in the store) is not built: the browser is never sent there.
#[tokio::test]
async fn stored_connection_with_a_javascript_sso_url_is_not_built() {
    let ctx = ctx(false);
    let mut cfg = setup_ok(&ctx, json!({})).await;
    cfg.sso_redirect_url = Some("javascript:alert(1)".into());
    let conn = connection("acme", "corp", cfg.clone());
    let e = saml::SamlConnector::new(&conn, cfg, ctx).err().unwrap();
    assert_eq!(e.code, "saml.config_invalid");
}
