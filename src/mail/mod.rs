//! Outgoing mail: verification and reset codes of local accounts.
//!
//! One [`Mailer`] per process: SMTP through lettre over native-tls (the
//! OpenSSL every other outbound TLS connection uses) to `[mail] smtp_url`
//! (`PORTCULLIS_SMTP_URL`), or, in dev mode only, a sink folder where each
//! message is written as an `.eml` file. Message texts come from per-tenant
//! templates ([`MailTemplate`]); a rendered body must contain the code as its
//! only six-digit number, so a person (or a mail client's "copy code" helper)
//! never picks the wrong one.

use crate::config::local::MailSettings;
use crate::secret::Secret;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// `smtps://`: TLS from the first byte (port 465 by default).
    Wrapper,
    /// `smtp://` with credentials to a host that is not loopback: STARTTLS required.
    StartTlsRequired,
    /// `smtp://` otherwise: STARTTLS when the server offers it.
    StartTlsOpportunistic,
}

/// A parsed `PORTCULLIS_SMTP_URL`.
#[derive(Debug, Clone)]
pub struct SmtpTarget {
    /// Host name or address.
    pub host: String,
    /// Port (25/587 for `smtp`, 465 for `smtps` by default).
    pub port: u16,
    /// Transport security.
    pub security: SmtpSecurity,
    /// SMTP AUTH user and password, when the URL has them.
    pub credentials: Option<(String, Secret)>,
}

impl SmtpTarget {
    /// Parses `smtp://[user[:password]@]HOST[:PORT]` or `smtps://…`. The
    /// error never repeats the URL (it may hold a password).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let url = url::Url::parse(raw).map_err(|e| format!("not a URL ({e})"))?;
        let (default_port, wrapper) = match url.scheme() {
            "smtp" => (587, false),
            "smtps" => (465, true),
            other => return Err(format!("scheme {other:?} is not smtp or smtps")),
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| "has no host".to_owned())?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if !(url.path().is_empty() || url.path() == "/") || url.query().is_some() || url.fragment().is_some() {
            return Err("must be smtp(s)://[user:password@]HOST[:PORT] with nothing after the port".into());
        }
        let decode =
            |s: &str| percent_decode(s).ok_or_else(|| "user or password is not valid percent-encoded UTF-8".to_owned());
        let credentials = if url.username().is_empty() {
            None
        } else {
            Some((
                decode(url.username())?,
                Secret::new(decode(url.password().unwrap_or(""))?),
            ))
        };
        let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        let security = if wrapper {
            SmtpSecurity::Wrapper
        } else if credentials.is_some() && !loopback {
            SmtpSecurity::StartTlsRequired
        } else {
            SmtpSecurity::StartTlsOpportunistic
        };
        Ok(Self {
            host,
            port: url.port().unwrap_or(default_port),
            security,
            credentials,
        })
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A failure to send a message. The detail is for the log.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct MailError {
    /// Stable reason code (`mail.not_configured`, `mail.send_failed`...).
    pub code: &'static str,
    /// Detail for the operator's log (never the message body).
    pub detail: String,
}

impl MailError {
    fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Sink(PathBuf),
    Off,
}

/// Sends mail (cheap to clone).
#[derive(Clone)]
pub struct Mailer {
    transport: Arc<Transport>,
    from: Mailbox,
    /// One permit per message being sent ([`MAX_SENDING`]).
    sending: Arc<tokio::sync::Semaphore>,
}

/// The most messages one replica sends at once. Each holds an SMTP
/// connection (a file descriptor) and a task for up to the timeout of
/// every SMTP step, and strangers cause them (sign-ups, resends, forgotten
/// passwords): past this a message is not sent (`mail.busy`, a new code
/// can be asked for) instead of opening one more connection to a slow
/// server.
pub const MAX_SENDING: usize = 32;

/// The sender when `[mail] from` is unset.
pub const DEFAULT_FROM: &str = "Portcullis <no-reply@portcullis.invalid>";

impl Mailer {
    /// Builds the mailer from `[mail]` (already validated). Without an SMTP
    /// URL or (dev mode) a sink folder, sending fails with `mail.not_configured`.
    pub fn from_settings(settings: &MailSettings, dev: bool) -> anyhow::Result<Self> {
        let from: Mailbox = settings
            .from
            .as_deref()
            .unwrap_or(DEFAULT_FROM)
            .parse()
            .map_err(|e| anyhow::anyhow!("mail.from: {e}"))?;
        let transport = match (&settings.smtp_url, &settings.sink_dir) {
            (Some(url), _) => {
                let target = SmtpTarget::parse(url.expose()).map_err(|e| anyhow::anyhow!("mail.smtp_url: {e}"))?;
                let timeout = if settings.timeout_secs == 0 {
                    10
                } else {
                    settings.timeout_secs
                };
                Transport::Smtp(smtp_transport(&target, Duration::from_secs(timeout))?)
            }
            (None, Some(dir)) if dev => Transport::Sink(dir.clone()),
            (None, Some(_)) => anyhow::bail!("mail.sink_dir: only in dev mode"),
            (None, None) => Transport::Off,
        };
        Ok(Self {
            transport: Arc::new(transport),
            from,
            sending: Arc::new(tokio::sync::Semaphore::new(MAX_SENDING)),
        })
    }

    /// A mailer that refuses to send (`mail.not_configured`).
    pub fn off() -> Self {
        Self {
            transport: Arc::new(Transport::Off),
            from: Mailbox::new(None, lettre::Address::new_dangerous("no-reply", "portcullis.invalid")),
            sending: Arc::new(tokio::sync::Semaphore::new(MAX_SENDING)),
        }
    }

    /// Whether messages can be sent at all.
    pub fn configured(&self) -> bool {
        !matches!(*self.transport, Transport::Off)
    }

    /// Sends a plain-text message to `to`.
    pub async fn send(&self, to: &str, rendered: &Rendered) -> Result<(), MailError> {
        // Taken without waiting: a queue of messages behind a slow server
        // would grow with whatever strangers ask for.
        let Ok(_sending) = self.sending.try_acquire() else {
            return Err(MailError::new(
                "mail.busy",
                format!("{MAX_SENDING} messages are being sent already; this one is dropped"),
            ));
        };
        let to: Mailbox = to
            .parse()
            .map_err(|e| MailError::new("mail.bad_recipient", format!("{e}")))?;
        let message = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(rendered.subject.clone())
            .header(ContentType::TEXT_PLAIN)
            .body(rendered.body.clone())
            .map_err(|e| MailError::new("mail.build_failed", e.to_string()))?;
        match &*self.transport {
            Transport::Smtp(t) => t
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| MailError::new("mail.send_failed", e.to_string())),
            Transport::Sink(dir) => {
                let name = format!("{}.eml", crate::tokens::random_token(12));
                let path = dir.join(name);
                let bytes = message.formatted();
                tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(path.parent().unwrap_or(std::path::Path::new(".")))?;
                    std::fs::write(&path, bytes)
                })
                .await
                .map_err(|e| MailError::new("mail.sink_failed", e.to_string()))?
                .map_err(|e| MailError::new("mail.sink_failed", e.to_string()))
            }
            Transport::Off => Err(MailError::new(
                "mail.not_configured",
                "no [mail] smtp_url (PORTCULLIS_SMTP_URL)",
            )),
        }
    }
}

fn smtp_transport(target: &SmtpTarget, timeout: Duration) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    let tls = || TlsParameters::new(target.host.clone()).map_err(|e| anyhow::anyhow!("mail.smtp_url: TLS: {e}"));
    let security = match target.security {
        SmtpSecurity::Wrapper => Tls::Wrapper(tls()?),
        SmtpSecurity::StartTlsRequired => Tls::Required(tls()?),
        SmtpSecurity::StartTlsOpportunistic => Tls::Opportunistic(tls()?),
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(target.host.clone())
        .port(target.port)
        .tls(security)
        .timeout(Some(timeout));
    if let Some((user, password)) = &target.credentials {
        builder = builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
    }
    Ok(builder.build())
}

/// A message template: `{code}`, `{minutes}` and `{tenant}` are replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MailTemplate {
    /// The subject line (one line).
    pub subject: String,
    /// The plain-text body; must contain `{code}` and no other run of six or more digits.
    pub body: String,
}

/// A rendered message.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
}

impl MailTemplate {
    /// The default verification message.
    pub fn default_verify() -> Self {
        Self {
            subject: "Your {tenant} verification code".into(),
            body: "Your verification code is {code}\n\nEnter it on the sign-up page to confirm your email address. \
It expires in {minutes} minutes and works once.\n\nIf you did not sign up, ignore this message.\n"
                .into(),
        }
    }

    /// The default password-reset message.
    pub fn default_reset() -> Self {
        Self {
            subject: "Your {tenant} password reset code".into(),
            body: "Your password reset code is {code}\n\nEnter it on the reset page to choose a new password. \
It expires in {minutes} minutes and works once.\n\nIf you did not ask for a reset, ignore this message: your password has not changed.\n"
                .into(),
        }
    }

    /// Checks a template an admin gives: `{code}` in the body, no other
    /// six-digit number, a one-line subject, sane sizes.
    pub fn check(&self) -> Result<(), String> {
        if !self.body.contains("{code}") {
            return Err("body must contain {code}".into());
        }
        if self.subject.contains('\n') || self.subject.contains('\r') || self.subject.len() > 200 {
            return Err("subject must be one line of at most 200 characters".into());
        }
        if self.body.len() > 8192 {
            return Err("body must be at most 8192 characters".into());
        }
        if longest_digit_run(&self.body) >= 6 || longest_digit_run(&self.subject) >= 6 {
            return Err("must not contain a number of six or more digits (the code must be the only one)".into());
        }
        Ok(())
    }

    /// Renders the template. Substituted values lose any digit run of six
    /// or more, so the code stays the only six-digit number in the body.
    pub fn render(&self, code: &str, minutes: u64, tenant: &str) -> Rendered {
        let tenant = strip_long_digit_runs(tenant);
        let fill = |s: &str| {
            s.replace("{tenant}", &tenant)
                .replace("{minutes}", &minutes.to_string())
                .replace("{code}", code)
        };
        Rendered {
            // The subject never carries the code (it shows in notifications and lists).
            subject: fill(&self.subject.replace("{code}", "")),
            body: fill(&self.body),
        }
    }
}

fn longest_digit_run(s: &str) -> usize {
    let mut best = 0;
    let mut run = 0;
    for c in s.chars() {
        if c.is_ascii_digit() {
            run += 1;
            best = best.max(run);
        } else {
            run = 0;
        }
    }
    best
}

fn strip_long_digit_runs(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut run = String::new();
    for c in s.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() {
            run.push(c);
            continue;
        }
        if run.len() < 6 {
            out.push_str(&run);
        }
        run.clear();
        out.push(c);
    }
    out.pop();
    out
}

/// The six-digit numbers in `body` (what a reader would take for a code).
pub fn six_digit_numbers(body: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut run = String::new();
    for c in body.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() {
            run.push(c);
        } else {
            if run.len() == 6 {
                found.push(run.clone());
            }
            run.clear();
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls_parse_with_security_and_credentials() {
        let t = SmtpTarget::parse("smtp://127.0.0.1:2525").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.security),
            ("127.0.0.1", 2525, SmtpSecurity::StartTlsOpportunistic)
        );
        assert!(t.credentials.is_none());
        let t = SmtpTarget::parse("smtps://mailer:p%40ss@mail.example.com").unwrap();
        assert_eq!((t.port, t.security), (465, SmtpSecurity::Wrapper));
        let (u, p) = t.credentials.unwrap();
        assert_eq!((u.as_str(), p.expose()), ("mailer", "p@ss"));
        let t = SmtpTarget::parse("smtp://u:p@mail.example.com:587").unwrap();
        assert_eq!(t.security, SmtpSecurity::StartTlsRequired);
        assert!(SmtpTarget::parse("http://mail.example.com").is_err());
        assert!(SmtpTarget::parse("smtp://mail.example.com/x").is_err());
        let e = SmtpTarget::parse("ftp://u:hunter2@x").unwrap_err();
        assert!(!e.contains("hunter2"));
    }

    #[tokio::test]
    async fn the_dev_sink_writes_each_message_as_an_eml_file() {
        let dir = std::env::temp_dir().join(format!("portcullis-sink-{}", crate::tokens::random_token(6)));
        let settings = MailSettings {
            sink_dir: Some(dir.clone()),
            ..MailSettings::default()
        };
        assert!(Mailer::from_settings(&settings, false).is_err(), "dev mode only");
        let mailer = Mailer::from_settings(&settings, true).unwrap();
        let r = MailTemplate::default_verify().render("314159", 10, "Acme");
        mailer.send("jane@acme.example", &r).await.unwrap();
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), 1);
        let eml = std::fs::read_to_string(&files[0]).unwrap();
        assert!(eml.contains("To: jane@acme.example"), "{eml}");
        assert!(eml.contains("314159"), "{eml}");
        std::fs::remove_dir_all(&dir).unwrap();
        let off = Mailer::from_settings(&MailSettings::default(), true).unwrap();
        assert_eq!(
            off.send("jane@acme.example", &r).await.unwrap_err().code,
            "mail.not_configured"
        );
    }

    /// A server that accepts connections and never says a word: every
    /// message sent to it waits out its timeout holding a connection.
    /// Past [`MAX_SENDING`] of them one more is refused at once
    /// (`mail.busy`), opening no connection; the count is of messages in
    /// flight, so one finished makes room again.
    #[tokio::test]
    async fn messages_past_the_cap_are_refused_without_a_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (seen, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
                let _ = seen.send(());
            }
        });
        let settings = MailSettings {
            smtp_url: Some(crate::secret::Secret::new(format!("smtp://127.0.0.1:{port}"))),
            timeout_secs: 600,
            ..MailSettings::default()
        };
        let mailer = Mailer::from_settings(&settings, false).unwrap();
        let r = MailTemplate::default_verify().render("314159", 10, "Acme");
        let waiting: Vec<_> = (0..MAX_SENDING)
            .map(|i| {
                let (mailer, r) = (mailer.clone(), r.clone());
                tokio::spawn(async move { mailer.send(&format!("p{i}@acme.example"), &r).await })
            })
            .collect();
        for _ in 0..MAX_SENDING {
            accepted.recv().await.unwrap();
        }
        // Either it is refused, or it opens one more connection.
        let one_more = mailer.send("one-more@acme.example", &r);
        tokio::select! {
            refused = one_more => assert_eq!(refused.unwrap_err().code, "mail.busy"),
            _ = accepted.recv() => panic!("a message past the cap opened one more connection"),
        }
        assert!(accepted.try_recv().is_err(), "the refused message opened no connection");
        let mut waiting = waiting.into_iter();
        let first = waiting.next().unwrap();
        first.abort();
        let _ = first.await;
        let again = tokio::spawn({
            let (mailer, r) = (mailer.clone(), r.clone());
            async move { mailer.send("again@acme.example", &r).await }
        });
        accepted.recv().await.unwrap();
        again.abort();
        for w in waiting {
            w.abort();
        }
        server.abort();
    }

    #[test]
    fn the_code_is_the_only_six_digit_number() {
        for t in [MailTemplate::default_verify(), MailTemplate::default_reset()] {
            t.check().unwrap();
            let r = t.render("042917", 10, "Acme 1234567 Ltd");
            assert_eq!(six_digit_numbers(&r.body), vec!["042917".to_owned()]);
            assert!(!r.subject.contains("1234567"));
        }
        let bad = MailTemplate {
            subject: "x".into(),
            body: "call 5551234 then {code}".into(),
        };
        assert!(bad.check().is_err());
        assert!(MailTemplate {
            subject: "x".into(),
            body: "no code".into()
        }
        .check()
        .is_err());
    }
}
