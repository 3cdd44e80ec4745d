//! A tenant's hook receiver, as a customer would run it: a small axum server
//! on loopback that verifies every call's `Portcullis-Signature` (the
//! receiver's side of the scheme, `portcullis::audit::webhook::verify`),
//! records the calls, and answers as the test says: a fixed answer, a
//! status, a delay, or (for `user_migration`) by looking the credentials up
//! in its legacy user list.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use portcullis::clock::SharedClock;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use url::Url;

/// How the receiver answers calls to one path.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// 200 with this JSON.
    Answer(Value),
    /// This status with an empty JSON object.
    Status(u16),
    /// 200 with this body, not JSON.
    Garbage(&'static str),
    /// Waits this long, then answers `{}`.
    Slow(Duration),
    /// Waits until the test adds a permit to the semaphore (one per call),
    /// then answers `{}`: holds calls in flight for as long as a test needs.
    Hold(Arc<tokio::sync::Semaphore>),
    /// The legacy user base: 200 with the user's profile when the email and
    /// password match an entry, else 200 `{"outcome": "refuse"}`.
    Legacy,
    /// [`Behavior::Legacy`] answering after this wait.
    SlowLegacy(Duration),
    /// A scripted `custom_challenge`: `define` asks the challenge
    /// `arithmetic` until an answer is right (then `issue_tokens`); `create`
    /// asks "What is 2+3?" with a hint and keeps the answer and
    /// [`PRIVATE_MARKER`] private; `verify` compares the answer.
    Arithmetic,
    /// [`Behavior::Arithmetic`] whose `verify` answers after this wait.
    SlowArithmetic(Duration),
}

/// How the receiver signs its answers (a hook configured with
/// `sign_answers`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AnswerSigning {
    /// Not at all (the default).
    #[default]
    No,
    /// As it should: its secret, over the call's id and the answer.
    Yes,
    /// With another secret.
    WrongSecret,
    /// For another call's id (an answer replayed from elsewhere).
    AnotherCall,
}

/// A private challenge parameter that must never reach a page.
pub const PRIVATE_MARKER: &str = "private-marker-7f3a9c";

/// One recorded call.
#[derive(Clone, Debug)]
pub struct Call {
    /// The path's last segment (the hook's name in its URL).
    pub path: String,
    /// The `Portcullis-Hook` header.
    pub kind: Option<String>,
    /// Whether the signature verified under the current secret.
    pub signed: bool,
    /// The body.
    pub body: Value,
    /// The URL's query, as received.
    pub query: Option<String>,
}

/// A legacy user.
#[derive(Clone, Debug)]
pub struct LegacyUser {
    pub password: String,
    pub profile: Value,
}

#[derive(Default)]
struct Inner {
    secret: Option<String>,
    signing: AnswerSigning,
    calls: Vec<Call>,
    behaviors: HashMap<String, Behavior>,
    legacy: HashMap<String, LegacyUser>,
}

/// The running receiver.
#[derive(Clone)]
pub struct HookServer {
    /// Its base URL (`http://127.0.0.1:<port>/`).
    pub base: Url,
    inner: Arc<Mutex<Inner>>,
    clock: SharedClock,
}

impl HookServer {
    /// Starts a receiver on loopback; signatures are checked against
    /// `clock` (the gateway's, so a manual clock works) with 300 s tolerance.
    pub async fn start(clock: SharedClock) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = Self {
            base: Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap(),
            inner: Arc::new(Mutex::new(Inner::default())),
            clock,
        };
        let app = Router::new()
            .route("/hook/{name}", post(handle))
            .with_state(server.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        server
    }

    /// The URL of the hook named `name`.
    pub fn url(&self, name: &str) -> String {
        self.base.join(&format!("hook/{name}")).unwrap().to_string()
    }

    /// The secret signatures must verify under (the one the gateway gave).
    pub fn set_secret(&self, secret: &str) {
        self.inner.lock().unwrap().secret = Some(secret.to_owned());
    }

    /// How answers are signed from now on.
    pub fn sign_answers(&self, signing: AnswerSigning) {
        self.inner.lock().unwrap().signing = signing;
    }

    /// How calls to `name` are answered from now on.
    pub fn behave(&self, name: &str, behavior: Behavior) {
        self.inner.lock().unwrap().behaviors.insert(name.to_owned(), behavior);
    }

    /// Adds a user to the legacy user base.
    pub fn add_legacy_user(&self, email: &str, password: &str, profile: Value) {
        self.inner.lock().unwrap().legacy.insert(
            email.to_owned(),
            LegacyUser {
                password: password.to_owned(),
                profile,
            },
        );
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().unwrap().calls.clone()
    }

    /// The calls to `name` so far.
    pub fn calls_to(&self, name: &str) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.path == name).collect()
    }
}

async fn handle(
    State(s): State<HookServer>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = headers
        .get("portcullis-call-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let answer = answer(&s, &name, query, &headers, body).await;
    let (signing, secret) = {
        let inner = s.inner.lock().unwrap();
        (inner.signing, inner.secret.clone().unwrap_or_default())
    };
    if signing == AnswerSigning::No || !answer.status().is_success() {
        return answer;
    }
    let (mut parts, body) = answer.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let (secret, call) = match signing {
        AnswerSigning::WrongSecret => ("another-secret-of-thirty-two-chars-or-more".to_owned(), call),
        AnswerSigning::AnotherCall => (secret, format!("{call}-other")),
        _ => (secret, call),
    };
    let payload = portcullis::hooks::answer_payload(&call, &bytes);
    let header = portcullis::audit::webhook::signature_header(secret.as_bytes(), s.clock.unix(), &payload).unwrap();
    parts.headers.insert("portcullis-signature", header.parse().unwrap());
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// The answer to one call, before any signature.
async fn answer(s: &HookServer, name: &str, query: Option<String>, headers: &HeaderMap, body: Bytes) -> Response {
    let name = name.to_owned();
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (secret, behavior) = {
        let inner = s.inner.lock().unwrap();
        (inner.secret.clone(), inner.behaviors.get(&name).cloned())
    };
    let signed = match (&secret, header("portcullis-signature")) {
        (Some(secret), Some(sig)) => {
            portcullis::audit::webhook::verify(secret.as_bytes(), &sig, &body, s.clock.unix(), 300)
        }
        _ => false,
    };
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    s.inner.lock().unwrap().calls.push(Call {
        path: name.clone(),
        kind: header("portcullis-hook"),
        signed,
        body: value.clone(),
        query,
    });
    if !signed {
        // A real receiver refuses what it cannot verify.
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    let behavior = behavior.unwrap_or(Behavior::Answer(json!({})));
    let verify_delay = match &behavior {
        Behavior::SlowArithmetic(d) => Some(*d),
        _ => None,
    };
    match behavior {
        Behavior::Answer(v) => axum::Json(v).into_response(),
        Behavior::Status(code) => (StatusCode::from_u16(code).unwrap(), axum::Json(json!({}))).into_response(),
        Behavior::Garbage(text) => (StatusCode::OK, text).into_response(),
        Behavior::Slow(d) => {
            tokio::time::sleep(d).await;
            axum::Json(json!({})).into_response()
        }
        Behavior::Hold(gate) => {
            gate.acquire().await.unwrap().forget();
            axum::Json(json!({})).into_response()
        }
        Behavior::Arithmetic | Behavior::SlowArithmetic(_) => match value["step"].as_str().unwrap_or_default() {
            "define" => {
                let passed = value["session"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r["challenge_result"] == true));
                if passed {
                    axum::Json(json!({"issue_tokens": true})).into_response()
                } else {
                    axum::Json(json!({"challenge_name": "arithmetic"})).into_response()
                }
            }
            "create" => axum::Json(json!({
                "public_challenge_parameters": {"question": "What is 2+3?", "hint": "A number between 1 and 9.", "note": "Ask <b>us</b>"},
                "private_challenge_parameters": {"answer": "5", "marker": PRIVATE_MARKER},
            }))
            .into_response(),
            "verify" => {
                if let Some(d) = verify_delay {
                    tokio::time::sleep(d).await;
                }
                let correct = value["challenge_answer"].as_str().map(str::trim)
                    == value["private_challenge_parameters"]["answer"].as_str();
                axum::Json(json!({"answer_correct": correct})).into_response()
            }
            _ => (StatusCode::BAD_REQUEST, axum::Json(json!({}))).into_response(),
        },
        Behavior::Legacy | Behavior::SlowLegacy(_) => {
            if let Behavior::SlowLegacy(d) = behavior {
                tokio::time::sleep(d).await;
            }
            let email = value["email"].as_str().unwrap_or_default();
            let password = value["password"].as_str().unwrap_or_default();
            let user = s.inner.lock().unwrap().legacy.get(email).cloned();
            match user {
                Some(u) if u.password == password => {
                    axum::Json(json!({"outcome": "migrate", "profile": u.profile})).into_response()
                }
                _ => axum::Json(json!({"outcome": "refuse"})).into_response(),
            }
        }
    }
}
