//! The guarded client as the token endpoint's requests (the code exchange
//! and the upstream refresh) use it, with one allowance: an answer whose
//! `expires_in` is a string of ASCII digits that fits a `u64` (Azure AD v1
//! sends `"expires_in": "3599"`) has it made the number it spells before
//! `openidconnect` reads the answer, which types it as a `u64` and would
//! otherwise refuse the whole sign-in.
//!
//! Nothing else changes: any other `expires_in` that is not a `u64` (a
//! negative, a fraction, an exponent, digits with spaces or a sign, beyond
//! `u64`) is left as it came and refused by the typed parse
//! (`oidc.token_response_invalid`), and so is an answer naming a member
//! twice. `expires_in` is not read anyway: the ID token's `exp` counts.

use super::super::http::{HttpRequest, HttpResponse, OutboundHttp};
use super::super::UpstreamError;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};
use std::future::Future;
use std::pin::Pin;

/// The guarded client for token requests (a clone: cheap, and a borrow
/// would not meet the `Send` bounds of the connector's futures).
pub(super) struct TokenEndpoint(pub(super) OutboundHttp);

impl<'c> openidconnect::AsyncHttpClient<'c> for TokenEndpoint {
    type Error = UpstreamError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, UpstreamError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let mut response = self.0.execute(request).await?;
            if response.status().is_success() {
                if let Some(body) = expires_in_as_number(response.body()) {
                    response.headers_mut().remove(http::header::CONTENT_LENGTH);
                    *response.body_mut() = body;
                }
            }
            Ok(response)
        })
    }
}

/// Whether `body` may have `"expires_in"` followed by a string: a cheap
/// look so that the usual answer, with a number, is parsed only once.
fn may_have_text_expires_in(body: &[u8]) -> bool {
    memchr::memmem::find_iter(body, b"\"expires_in\"").any(|at| {
        let mut rest = body
            .get(at.saturating_add(12)..)
            .unwrap_or_default()
            .iter()
            .skip_while(|b| b.is_ascii_whitespace());
        rest.next() == Some(&b':') && rest.find(|b| !b.is_ascii_whitespace()) == Some(&b'"')
    })
}

/// The members of a JSON object in the order given, duplicates kept.
struct Members(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Collect;
        impl<'de> Visitor<'de> for Collect {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Value>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Collect)
    }
}

/// The body again with a text `expires_in` of ASCII digits made a number,
/// or `None` when it is to be left as it came: not a JSON object, a member
/// named twice, no `expires_in`, or one that is not such a text.
fn expires_in_as_number(body: &[u8]) -> Option<Vec<u8>> {
    if !may_have_text_expires_in(body) {
        return None;
    }
    let Members(members) = serde_json::from_slice(body).ok()?;
    let count = members.len();
    let mut object = Map::with_capacity(count);
    for (name, value) in members {
        object.insert(name, value);
    }
    if object.len() != count {
        // Named twice: the typed parse refuses it as it came.
        return None;
    }
    let seconds = match object.get("expires_in") {
        Some(Value::String(text)) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            text.parse::<u64>().ok()?
        }
        _ => return None,
    };
    object.insert("expires_in".to_owned(), Value::from(seconds));
    serde_json::to_vec(&Value::Object(object)).ok()
}

#[cfg(test)]
mod tests {
    use super::expires_in_as_number;
    use serde_json::{json, Value};

    fn rewritten(body: &str) -> Option<Value> {
        expires_in_as_number(body.as_bytes()).and_then(|b| serde_json::from_slice(&b).ok())
    }

    #[test]
    fn digits_in_a_string_become_the_number_and_nothing_else_changes() {
        let body = r#"{"access_token":"a\"b","token_type":"Bearer","expires_in" : "3599","id_token":"x.y.z","n":1.5}"#;
        assert_eq!(
            rewritten(body),
            Some(json!({"access_token":"a\"b","token_type":"Bearer","expires_in":3599,"id_token":"x.y.z","n":1.5}))
        );
        assert_eq!(
            rewritten(r#"{"expires_in":"18446744073709551615"}"#),
            Some(json!({ "expires_in": u64::MAX }))
        );
        assert_eq!(rewritten(r#"{"expires_in":"0"}"#), Some(json!({"expires_in": 0})));
    }

    #[test]
    fn anything_else_is_left_as_it_came() {
        for body in [
            r#"{"expires_in":3599}"#,
            r#"{"expires_in":"abc"}"#,
            r#"{"expires_in":"-1"}"#,
            r#"{"expires_in":"+1"}"#,
            r#"{"expires_in":" 3599"}"#,
            r#"{"expires_in":"3599 "}"#,
            r#"{"expires_in":"1e3"}"#,
            r#"{"expires_in":"3599.5"}"#,
            r#"{"expires_in":""}"#,
            r#"{"expires_in":"18446744073709551616"}"#,
            r#"{"expires_in":"٣٥٩٩"}"#,
            r#"{"expires_in":"3599","expires_in":"3599"}"#,
            r#"{"id_token":"a","expires_in":"3599","id_token":"b"}"#,
            r#"["expires_in","3599"]"#,
            r#"{"expires_in":"3599""#,
            r#"{"note":"\"expires_in\": \"3599\""}"#,
        ] {
            assert_eq!(expires_in_as_number(body.as_bytes()), None, "{body}");
        }
    }
}
