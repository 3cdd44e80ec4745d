//! `application/x-www-form-urlencoded` bodies as name/value pairs, decoded in
//! one pass.
//!
//! axum's `Form<Vec<(String, String)>>` goes through `serde_urlencoded` and
//! `form_urlencoded`, which copy each value to replace `+`, percent-decode it
//! byte by byte into a `Cow`, and validate it once more lossily. For the
//! ACS's `SAMLResponse` (6 KB of base64 in which every `+`, `/` and `=` is
//! percent-encoded) that was about 3 % of a whole sign-in's CPU
//! (`docs/performance-log.md`, eighth pass). [`FormPairs`] reads the same body
//! through axum's `RawForm` (the same content-type check, body limit and
//! rejections) and decodes each name and value with [`decode`]: plain runs
//! copied as slices, one output buffer, one UTF-8 validation.
//!
//! The decoding is exactly `form_urlencoded::parse`'s (checked against it in
//! the tests below): pairs split on `&` with empty ones skipped, name and
//! value split at the first `=`, `+` is a space, `%` followed by two hex
//! digits is that byte and any other `%` stays as it is, and bytes that are
//! not UTF-8 become U+FFFD.

use axum::extract::{FromRequest, FromRequestParts, RawForm, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;

/// A form body's pairs, in order, repeated names kept (callers refuse
/// duplicates where a parameter must be single-valued).
#[derive(Debug)]
pub struct FormPairs(pub Vec<(String, String)>);

/// The pairs of a POSTed body the edge already read and parsed (it reads
/// the small token and `/authorize` forms for the tenant, client and refresh
/// token they name), handed on as a request extension with that same body,
/// so [`FormPairs`] does not parse it again.
#[derive(Debug, Clone)]
pub struct ParsedForm(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequest<S> for FormPairs {
    type Rejection = axum::extract::rejection::RawFormRejection;

    async fn from_request(mut req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let parsed = match *req.method() {
            axum::http::Method::POST => req.extensions_mut().remove::<ParsedForm>(),
            _ => None,
        };
        // Still read through `RawForm`: the same content-type check and
        // rejections whether or not the edge parsed the body.
        let RawForm(bytes) = RawForm::from_request(req, state).await?;
        Ok(Self(match parsed {
            Some(ParsedForm(pairs)) => pairs,
            None => parse(&bytes),
        }))
    }
}

/// A browser form's fields, each named at most once: a POSTed form body
/// ([`FormPairs`]) collected by name, with a repeated name refused (400
/// page, `request.duplicate_parameter`). `Form<BTreeMap<..>>` would keep the
/// last copy, while the edge's rate limiting reads the first one a sign-in
/// page names (its `login`, `state` or `handle`): one copy would be checked
/// and the other used.
#[derive(Debug)]
pub struct SingleForm(pub BTreeMap<String, String>);

impl<S: Send + Sync> FromRequest<S> for SingleForm {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let FormPairs(pairs) = FormPairs::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        single(pairs).map(Self).map_err(|page| *page)
    }
}

/// A browser page's query parameters, each named at most once (as
/// [`SingleForm`]; an absent query is no parameter).
#[derive(Debug)]
pub struct SingleQuery(pub BTreeMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for SingleQuery {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Response> {
        single(parse(parts.uri.query().unwrap_or_default().as_bytes()))
            .map(Self)
            .map_err(|page| *page)
    }
}

/// `pairs` by name, or the 400 page naming the refusal when one repeats.
fn single(pairs: Vec<(String, String)>) -> Result<BTreeMap<String, String>, Box<Response>> {
    super::oauth::single_valued(pairs).map_err(|_| {
        tracing::info!(reason = DUPLICATE_PARAMETER, "a parameter appears more than once");
        Box::new(super::pages::error_page(
            StatusCode::BAD_REQUEST,
            "This request is not valid",
            "A field appears more than once. Go back to the application and start again.",
            DUPLICATE_PARAMETER,
        ))
    })
}

/// The reason code of a browser page's request that names a parameter
/// twice (RFC 6749 §3.1: parameters MUST NOT be included more than once).
pub const DUPLICATE_PARAMETER: &str = "request.duplicate_parameter";

/// The pairs of a form-encoded string (`form_urlencoded::parse`, owned).
///
/// The separators are found with `memchr` (many bytes per step), not byte
/// by byte: an ACS body is one 6 KB value.
pub fn parse(input: &[u8]) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = input;
    loop {
        let (pair, more) = match memchr::memchr(b'&', rest) {
            Some(at) => {
                let (pair, tail) = rest.split_at(at);
                (pair, tail.get(1..))
            }
            None => (rest, None),
        };
        if !pair.is_empty() {
            let (name, value) = match memchr::memchr(b'=', pair) {
                Some(at) => {
                    let (name, tail) = pair.split_at(at);
                    (name, tail.get(1..).unwrap_or_default())
                }
                None => (pair, &[][..]),
            };
            pairs.push((decode(name), decode(value)));
        }
        match more {
            Some(more) => rest = more,
            None => return pairs,
        }
    }
}

/// One form-encoded name or value: `+` is a space, `%XX` a byte, the rest
/// copied as runs; not-UTF-8 bytes become U+FFFD.
pub fn decode(input: &[u8]) -> String {
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = memchr::memchr2(b'%', b'+', rest) {
        let (plain, tail) = rest.split_at(at);
        out.extend_from_slice(plain);
        if let [b'%', high, low, more @ ..] = tail {
            if let (Some(high), Some(low)) = (hex(*high), hex(*low)) {
                out.push((high << 4) | low);
                rest = more;
                continue;
            }
        }
        // A `+`, or a `%` not followed by two hex digits (kept as it is).
        let Some((first, more)) = tail.split_first() else {
            break;
        };
        out.push(if *first == b'+' { b' ' } else { b'%' });
        rest = more;
    }
    out.extend_from_slice(rest);
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(input: &[u8]) -> Vec<(String, String)> {
        url::form_urlencoded::parse(input)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    #[test]
    fn decoding_matches_form_urlencoded_on_the_edge_cases() {
        let cases: &[&[u8]] = &[
            b"",
            b"&",
            b"&&a=1&&",
            b"a",
            b"a=",
            b"=b",
            b"=",
            b"a=b=c",
            b"a+b=c+d",
            b"%2B=%2b",
            b"SAMLResponse=PD94bWwg%2Bdm%2FVyc2lvbj0iMS4wIj8%2B%3D%3D&RelayState=abc",
            b"a=%",
            b"a=%4",
            b"a=%4g",
            b"a=%%41",
            b"a=%g1%41",
            b"a=100%25",
            b"a=%e2%82%ac",
            b"a=%e2%82",
            b"a=%ff%fe",
            b"a=\xc3\xa9\xff",
            b"k%3Dx=v%26y",
            b"a=1&a=2&b",
            b"+++=+",
        ];
        for case in cases {
            assert_eq!(
                parse(case),
                reference(case),
                "input {:?}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[test]
    fn decoding_matches_form_urlencoded_on_random_input() {
        // A fixed xorshift stream over an alphabet dense in the bytes that
        // matter (separators, escapes, hex digits, non-ASCII): every case is
        // reproducible from the seed.
        let alphabet = b"ab09fF%%%++==&&\xc3\xa9\xe2\x82\xac\xff \x00";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = usize::try_from(next() % 24).unwrap_or(0);
            let input: Vec<u8> = (0..len)
                .map(|_| alphabet[usize::try_from(next() % alphabet.len() as u64).unwrap_or(0)])
                .collect();
            assert_eq!(parse(&input), reference(&input), "input {input:?}");
        }
    }

    #[test]
    fn a_large_encoded_value_decodes_whole() {
        let raw: String = (0..6000).map(|i| ["A", "+", "/", "=", "z", "9"][i % 6]).collect();
        let encoded: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("SAMLResponse", &raw)
            .append_pair("RelayState", "r s")
            .finish();
        assert_eq!(
            parse(encoded.as_bytes()),
            vec![
                ("SAMLResponse".to_owned(), raw),
                ("RelayState".to_owned(), "r s".to_owned())
            ]
        );
    }
}
