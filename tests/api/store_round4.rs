//! The fourth store-traffic pass keeps its semantics: provisioning skips
//! writing a returning user only when nothing would change (a user changed
//! at the IdP is still updated, the latest sign-in is still recorded to
//! within `LAST_SIGN_IN_RESOLUTION`, a disabled user stays refused), and the
//! sealing layer forwards the one-round-trip reads with values opened and
//! fingerprints of the bytes as stored.

use crate::support::app::{spawn_app, AppOptions};
use portcullis::clock::{ManualClock, SharedClock};
use portcullis::directory::{Inactive, Provisioned, LAST_SIGN_IN_RESOLUTION};
use portcullis::ids::{ConnectionId, TenantId};
use portcullis::secrets::sealed::SealedStore;
use portcullis::secrets::{Cipher, StaticKeys};
use portcullis::store::memory::MemoryStore;
use portcullis::store::{fingerprint_of, IfChanged, Key, Read, SharedStore, Store};
use portcullis::upstream::Identity;
use serde_json::{json, Value};
use std::sync::Arc;

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339("2026-03-01T09:00:00Z")
        .unwrap()
        .to_utc()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_writes_a_returning_user_only_when_something_changed() {
    let clock = ManualClock::at(now());
    let app = spawn_app(AppOptions {
        clock: Some(clock.clone()),
        dev: true,
        ..AppOptions::default()
    })
    .await;
    app.create_tenant("acme", "Acme", &[]).await;
    app.admin_create(
        "/admin/v1/tenants/acme/connections",
        json!({"id": "main", "kind": "dev"}),
    )
    .await;
    let (t, c) = (TenantId::parse("acme").unwrap(), ConnectionId::parse("main").unwrap());
    let directory = &app.state.provider.directory;
    let alice = Identity {
        subject: "alice".into(),
        email: Some("alice@acme.test".into()),
        name: Some("Alice".into()),
        groups: vec!["eng".into()],
        ..Default::default()
    };
    let (first, outcome) = directory.provision(&t, &c, &alice).await.unwrap();
    assert_eq!(outcome, Provisioned::Created);
    assert_eq!(first.updated_at, now());

    // Ten minutes later, the same answer: the record is not written again.
    clock.advance(chrono::Duration::minutes(10));
    let (again, outcome) = directory.provision(&t, &c, &alice).await.unwrap();
    assert_eq!(outcome, Provisioned::Updated);
    assert_eq!(again, first, "the stored user, unchanged");
    let stored = directory.get(&t, &first.sub).await.unwrap().unwrap();
    assert_eq!(stored.updated_at, now(), "no write: the recorded sign-in stays");

    // Changed at the IdP: written at once, same stable sub.
    clock.advance(chrono::Duration::minutes(1));
    let renamed = Identity {
        name: Some("Alice Liddell".into()),
        groups: vec!["eng".into(), "ops".into()],
        ..alice.clone()
    };
    let (updated, outcome) = directory.provision(&t, &c, &renamed).await.unwrap();
    assert_eq!(outcome, Provisioned::Updated);
    assert_eq!(updated.sub, first.sub, "stable sub");
    assert_eq!(updated.created_at, first.created_at);
    let stored = directory.get(&t, &first.sub).await.unwrap().unwrap();
    assert_eq!(stored.name.as_deref(), Some("Alice Liddell"));
    assert_eq!(stored.groups, vec!["eng".to_owned(), "ops".to_owned()]);
    assert_eq!(stored.updated_at, now() + chrono::Duration::minutes(11));

    // Unchanged again, but the recorded sign-in is older than the
    // resolution: written, so `updated_at` stays the latest sign-in to
    // within it.
    clock.advance(LAST_SIGN_IN_RESOLUTION + chrono::Duration::seconds(1));
    directory.provision(&t, &c, &renamed).await.unwrap();
    let stored = directory.get(&t, &first.sub).await.unwrap().unwrap();
    assert_eq!(
        stored.updated_at,
        now() + chrono::Duration::minutes(11) + LAST_SIGN_IN_RESOLUTION + chrono::Duration::seconds(1)
    );

    // A disabled user is refused whatever provisioning skipped (the flag
    // lives apart from the profile), and enabled again it is accepted.
    assert!(directory
        .set_disabled(&t, &first.sub, true, portcullis::directory::DisabledBy::Admin)
        .await
        .unwrap());
    directory.provision(&t, &c, &renamed).await.unwrap();
    assert_eq!(
        directory.active(&t, &first.sub).await.unwrap().unwrap_err(),
        Inactive::UserDisabled
    );
    assert!(directory
        .set_disabled(&t, &first.sub, false, portcullis::directory::DisabledBy::Admin)
        .await
        .unwrap());
    assert_eq!(directory.active(&t, &first.sub).await.unwrap().unwrap().sub, first.sub);

    // Another tenant's identical identity is another user.
    app.create_tenant("globex", "Globex", &[]).await;
    app.admin_create(
        "/admin/v1/tenants/globex/connections",
        json!({"id": "main", "kind": "dev"}),
    )
    .await;
    let g = TenantId::parse("globex").unwrap();
    let (other, outcome) = directory.provision(&g, &c, &renamed).await.unwrap();
    assert_eq!(outcome, Provisioned::Created);
    assert_ne!(other.sub, first.sub);
    assert_eq!(
        directory.active(&t, &other.sub).await.unwrap().unwrap_err(),
        Inactive::UserGone,
        "a sub is only a lookup key within its tenant"
    );
}

#[tokio::test]
async fn the_sealing_layer_opens_what_it_forwards_and_fingerprints_the_stored_bytes() {
    let clock: SharedClock = Arc::new(ManualClock::at(now()));
    let raw: SharedStore = Arc::new(MemoryStore::new(clock));
    let cipher = Cipher::new(Arc::new(
        StaticKeys::parse("k1 = AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", "test").unwrap(),
    ));
    let sealed = SealedStore::new(raw.clone(), Some(cipher), false);
    // An upstream session record: its refresh token is a sealed field.
    let k = Key::tenant("acme", "sso", "upstream:s1");
    let record = json!({"connection": "main", "refresh_token": "upstream-secret", "refreshed_at": 1});
    sealed.put(&k, record.to_string().as_bytes(), None).await.unwrap();
    let stored = raw.get(&k).await.unwrap().unwrap();
    assert!(
        !String::from_utf8_lossy(&stored).contains("upstream-secret"),
        "sealed at rest"
    );

    let IfChanged::Value { value, fingerprint } = sealed.get_if_changed(&k, None).await.unwrap() else {
        panic!("a value")
    };
    assert_eq!(serde_json::from_slice::<Value>(&value).unwrap(), record, "opened");
    assert_eq!(fingerprint, fingerprint_of(&stored), "of the sealed bytes as stored");
    assert_eq!(
        sealed.fingerprint(&k).await.unwrap().as_deref(),
        Some(fingerprint.as_str())
    );
    assert_eq!(
        sealed.get_if_changed(&k, Some(&fingerprint)).await.unwrap(),
        IfChanged::Unchanged
    );

    let answers = sealed
        .read_many(&[(&k, Read::Value), (&k, Read::Presence)])
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(answers[0].as_ref().unwrap()).unwrap(),
        record,
        "opened"
    );
    assert_eq!(answers[1], Some(Vec::new()), "presence: nothing to open");
}

#[test]
fn records_from_before_the_upstream_flag_still_check_the_upstream_session() {
    use portcullis::broker::session::SsoSession;
    use portcullis::provider::codes::Authorization;
    // A code or refresh family stored before the flag existed: `None`,
    // which reads the upstream session as before (only `Some(false)` skips).
    let authz: Authorization = serde_json::from_value(json!({
        "tenant": "acme", "connection": "main", "client_id": "app",
        "redirect_uri": "https://app.test/cb", "scope": ["openid"], "nonce": null,
        "code_challenge": null, "sub": "u_1", "sid": "s1", "auth_time": 1, "amr": []
    }))
    .unwrap();
    assert_eq!(authz.upstream_session, None);
    let session: SsoSession = serde_json::from_value(json!({
        "sid": "s1", "tenant": "acme", "connection": "main", "sub": "u_1",
        "auth_time": 1, "amr": []
    }))
    .unwrap();
    assert_eq!(session.upstream, None);
}
