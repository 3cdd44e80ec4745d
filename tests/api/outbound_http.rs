//! The guarded outbound client against local servers: address refusal,
//! size limit while streaming, timeout, no redirects. Assertions are on the
//! reason codes, not on timings.

use axum::routing::get;
use axum::Router;
use portcullis::upstream::http::{OutboundConfig, OutboundHttp};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use url::Url;

fn client(allow_private_networks: bool, max_body_bytes: usize) -> OutboundHttp {
    OutboundHttp::new(OutboundConfig {
        allow_private_networks,
        timeout: Duration::from_millis(1500),
        max_body_bytes,
    })
    .unwrap()
}

/// A local server answering `/ok` with "hello", `/big` with 64 KiB and
/// `/redirect` with a 302 to `/ok`. Returns its port.
async fn serve() -> u16 {
    let app = Router::new()
        .route("/ok", get(|| async { "hello" }))
        .route("/big", get(|| async { vec![b'x'; 64 * 1024] }))
        .route(
            "/redirect",
            get(|| async { (axum::http::StatusCode::FOUND, [("location", "/ok")]) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

async fn code(http: &OutboundHttp, url: &str) -> &'static str {
    match http.get_bytes(&Url::parse(url).unwrap()).await {
        Ok(body) => panic!("{url} should fail, got {} bytes", body.len()),
        Err(e) => {
            assert!(e.internal);
            e.code
        }
    }
}

#[tokio::test]
async fn refuses_loopback_and_private_addresses_by_default() {
    let port = serve().await;
    let http = client(false, 1024 * 1024);
    for url in [
        format!("http://127.0.0.1:{port}/ok"),
        format!("http://localhost:{port}/ok"),
        format!("http://[::1]:{port}/ok"),
        format!("http://[::ffff:127.0.0.1]:{port}/ok"),
        format!("http://0x7f.1:{port}/ok"),
        "http://10.0.0.1/ok".to_owned(),
        "http://192.168.1.1/ok".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://100.64.0.1/".to_owned(),
        "http://0.0.0.0/".to_owned(),
        "http://[fd00::1]/".to_owned(),
    ] {
        assert_eq!(code(&http, &url).await, "outbound.forbidden_address", "{url}");
    }
}

/// The IPv6 forms a translator on the path turns into an IPv4 address:
/// the IPv4-translated form (`::ffff:0:a.b.c.d`, SIIT) follows the IPv4
/// rules, and the local-use NAT64 prefix (`64:ff9b:1::/48`, RFC 8215) leads
/// into the operator's own IPv4 network whatever it embeds.
#[tokio::test]
async fn refuses_ipv4_translated_and_local_use_nat64_forms_of_private_addresses() {
    let http = client(false, 1024);
    for url in [
        "http://[::ffff:0:127.0.0.1]/",
        "http://[::ffff:0:a9fe:a9fe]/latest/meta-data/",
        "http://[64:ff9b:1::a9fe:a9fe]/latest/meta-data/",
        "http://[64:ff9b:1::808:808]/",
    ] {
        assert_eq!(code(&http, url).await, "outbound.forbidden_address", "{url}");
    }
}

#[tokio::test]
async fn allows_private_addresses_when_configured() {
    let port = serve().await;
    let http = client(true, 1024 * 1024);
    for url in [
        format!("http://127.0.0.1:{port}/ok"),
        format!("http://localhost:{port}/ok"),
    ] {
        let body = http.get_bytes(&Url::parse(&url).unwrap()).await.unwrap();
        assert_eq!(body, b"hello");
    }
}

#[tokio::test]
async fn refuses_other_schemes() {
    let http = client(true, 1024);
    assert_eq!(code(&http, "file:///etc/passwd").await, "outbound.scheme");
    assert_eq!(code(&http, "ftp://127.0.0.1/x").await, "outbound.scheme");
}

#[tokio::test]
async fn enforces_the_size_limit_with_content_length() {
    let port = serve().await;
    let http = client(true, 1024);
    assert_eq!(
        code(&http, &format!("http://127.0.0.1:{port}/big")).await,
        "outbound.too_large"
    );
    // Exactly under the limit passes.
    let http = client(true, 64 * 1024);
    let body = http
        .get_bytes(&Url::parse(&format!("http://127.0.0.1:{port}/big")).unwrap())
        .await
        .unwrap();
    assert_eq!(body.len(), 64 * 1024);
}

/// A raw server that answers every request with `head`, then writes
/// `piece` again and again, `pause` apart, until the client goes away.
async fn raw_server(head: &'static str, piece: String, pause: Option<Duration>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let piece = piece.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                while sock.write_all(piece.as_bytes()).await.is_ok() {
                    if let Some(pause) = pause {
                        tokio::time::sleep(pause).await;
                    }
                }
            });
        }
    });
    port
}

/// A raw server that answers with a chunked body that never ends, so only a
/// limit enforced while streaming can stop it (buffering first would run
/// into the timeout instead).
async fn endless_chunked() -> u16 {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    raw_server(head, format!("400\r\n{}\r\n", "x".repeat(0x400)), None).await
}

#[tokio::test]
async fn enforces_the_size_limit_while_streaming() {
    let port = endless_chunked().await;
    let http = client(true, 16 * 1024);
    assert_eq!(
        code(&http, &format!("http://127.0.0.1:{port}/")).await,
        "outbound.too_large"
    );
}

/// Accepts connections and never answers.
async fn stalling() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            held.push(sock);
        }
    });
    port
}

#[tokio::test]
async fn times_out_on_a_stalling_server() {
    let port = stalling().await;
    let http = client(true, 1024);
    assert_eq!(
        code(&http, &format!("http://127.0.0.1:{port}/")).await,
        "outbound.timeout"
    );
}

/// Answers at once, then drips its body a byte at a time, each well within
/// any read timeout: only a limit on the whole exchange ends it.
async fn dripping() -> u16 {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/xml\r\ncontent-length: 100000\r\n\r\n";
    raw_server(head, "x".to_owned(), Some(Duration::from_millis(100))).await
}

/// A slow upstream (slowloris in reverse) holds a fetch no longer than the
/// client's timeout, however steadily it keeps the body coming.
#[tokio::test]
async fn times_out_on_a_server_that_drips_its_body() {
    let port = dripping().await;
    let http = client(true, 1024 * 1024);
    assert_eq!(
        code(&http, &format!("http://127.0.0.1:{port}/")).await,
        "outbound.timeout"
    );
}

#[tokio::test]
async fn does_not_follow_redirects() {
    let port = serve().await;
    let http = client(true, 1024);
    assert_eq!(
        code(&http, &format!("http://127.0.0.1:{port}/redirect")).await,
        "outbound.status"
    );
}

#[tokio::test]
async fn post_form_sends_basic_auth_and_returns_error_bodies() {
    use axum::http::HeaderMap;
    let app = Router::new().route(
        "/token",
        axum::routing::post(|headers: HeaderMap, body: String| async move {
            let auth = headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            (axum::http::StatusCode::BAD_REQUEST, format!("{auth}|{body}"))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = client(true, 1024);
    let resp = http
        .post_form(
            &Url::parse(&format!("http://127.0.0.1:{port}/token")).unwrap(),
            &[("grant_type", "authorization_code"), ("code", "a b&c")],
            Some(("id", "p:w")),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body = String::from_utf8(resp.into_body()).unwrap();
    // "id:p%3Aw" base64-encoded: the secret is form-encoded first.
    assert_eq!(body, "Basic aWQ6cCUzQXc=|grant_type=authorization_code&code=a+b%26c");
}
