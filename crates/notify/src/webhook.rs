//! The webhook: an HTTP POST of the JSON body (`Content-Type: application/json`,
//! `User-Agent: mirrorkit/<version>`), http or https (rustls with the webpki roots: no
//! OpenSSL), through `ureq` on a blocking thread. Each attempt is bounded by the module's
//! `timeout_ms`, redirects are not followed (a 3xx is a failure like any non-2xx answer), and
//! the proxy of the daemon's environment (`HTTPS_PROXY`, `NO_PROXY`, ...) is honoured.
//!
//! **Retry:** one, [`RETRY_DELAY_MS`] later, and only when the request could not be sent at all
//! (host not found, connection refused, network or host unreachable): a webhook never receives
//! the same notification twice. A timeout, a reset connection or an error answer is not
//! retried. Worst case for one notification: twice `timeout_ms` plus the delay.

use std::fmt;
use std::io::{ErrorKind, Read};
use std::time::Duration;

use crate::Failure;

/// Pause before the one retry of a request that could not be sent.
pub const RETRY_DELAY_MS: u64 = 1_000;
/// Bytes of an error answer's body quoted in the failure text.
pub const RESPONSE_QUOTED_BYTES: usize = 512;
/// Beyond `timeout_ms`, how long the worker waits for a request thread that ureq failed to stop
/// (it should never be needed: ureq's global timeout bounds the whole request).
const THREAD_GRACE_MS: u64 = 1_000;

/// The start of an error answer's body, rendered as `: <text>`, or nothing when empty.
#[derive(Debug, Default)]
pub(crate) struct Quoted(String);

impl fmt::Display for Quoted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, ": {}", self.0)
        }
    }
}

/// The agent of one notifier: its settings hold for every request. No connection is kept
/// between notifications: they are rare, and a POST on a kept connection that the server closed
/// meanwhile would fail without being retried.
pub(crate) fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .max_idle_connections(0)
        .max_idle_connections_per_host(0)
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("mirrorkit/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// How one attempt ended badly.
enum AttemptError {
    /// Nothing was sent: worth the one retry.
    NotSent(ureq::Error),
    Other(Failure),
}

/// POST `body` to `url`; Ok with the answer's status (2xx).
pub(crate) async fn post(
    agent: &ureq::Agent,
    url: &str,
    body: Vec<u8>,
    timeout_ms: u64,
) -> Result<String, Failure> {
    match attempt(agent, url, body.clone(), timeout_ms).await {
        Ok(status) => Ok(status),
        Err(AttemptError::Other(failure)) => Err(failure),
        Err(AttemptError::NotSent(first)) => {
            tracing::debug!(
                webhook = shown_url(url),
                "webhook could not be reached ({first}): retrying in {RETRY_DELAY_MS} ms"
            );
            tokio::time::sleep(Duration::from_millis(RETRY_DELAY_MS)).await;
            match attempt(agent, url, body, timeout_ms).await {
                Ok(status) => Ok(status),
                Err(AttemptError::Other(failure)) => Err(failure),
                Err(AttemptError::NotSent(source)) => Err(Failure::WebhookUnreachable {
                    url: shown_url(url),
                    source,
                }),
            }
        }
    }
}

async fn attempt(
    agent: &ureq::Agent,
    url: &str,
    body: Vec<u8>,
    timeout_ms: u64,
) -> Result<String, AttemptError> {
    let (agent, owned_url) = (agent.clone(), url.to_owned());
    let request = tokio::task::spawn_blocking(move || send(&agent, &owned_url, &body));
    let bound = Duration::from_millis(timeout_ms.saturating_add(THREAD_GRACE_MS));
    let timed_out = || {
        AttemptError::Other(Failure::WebhookTimeout {
            url: shown_url(url),
            timeout_ms,
        })
    };
    match tokio::time::timeout(bound, request).await {
        Err(_elapsed) => Err(timed_out()),
        Ok(Err(join)) => Err(AttemptError::Other(Failure::WebhookThread {
            url: shown_url(url),
            detail: join.to_string(),
        })),
        Ok(Ok(Ok((status, _)))) if status.is_success() => Ok(status_text(status)),
        Ok(Ok(Ok((status, body)))) => Err(AttemptError::Other(Failure::WebhookStatus {
            url: shown_url(url),
            status: status_text(status),
            body,
        })),
        Ok(Ok(Err(ureq::Error::Timeout(_)))) => Err(timed_out()),
        Ok(Ok(Err(e))) if not_sent(&e) => Err(AttemptError::NotSent(e)),
        Ok(Ok(Err(source))) => Err(AttemptError::Other(Failure::WebhookRequest {
            url: shown_url(url),
            source,
        })),
    }
}

/// The blocking request: the status, and for an error answer the start of its body.
fn send(
    agent: &ureq::Agent,
    url: &str,
    body: &[u8],
) -> Result<(ureq::http::StatusCode, Quoted), ureq::Error> {
    let mut response = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body)?;
    let status = response.status();
    let mut quoted = Quoted::default();
    if !status.is_success() {
        let mut start = Vec::new();
        // The body only explains the failure: one that cannot be read is left out.
        let limit = RESPONSE_QUOTED_BYTES as u64;
        if response
            .body_mut()
            .as_reader()
            .take(limit)
            .read_to_end(&mut start)
            .is_ok()
        {
            quoted = Quoted(String::from_utf8_lossy(&start).trim().to_owned());
        }
    }
    Ok((status, quoted))
}

fn status_text(status: ureq::http::StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// Errors raised before anything reached the server.
fn not_sent(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => true,
        ureq::Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::HostUnreachable
                | ErrorKind::NetworkUnreachable
                | ErrorKind::AddrNotAvailable
        ),
        _ => false,
    }
}

/// `url` as logs and failure texts show it: the password of its credentials (or a lone user
/// name, often a token) and its query string replaced by `***`:
/// `https://ops:***@hooks.example/x?***`. The path is kept: it says which endpoint failed (a secret carried in the
/// path, as some chat services do, does show).
pub fn shown_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut shown = String::with_capacity(url.len());
    if let Some(scheme) = scheme {
        shown.push_str(scheme);
        shown.push_str("://");
    }
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            // The user name says which account, the password is secret; a lone name may be a
            // token: secret too.
            if let Some((user, _password)) = userinfo.split_once(':') {
                shown.push_str(user);
                shown.push(':');
            }
            shown.push_str("***@");
            shown.push_str(host);
        }
        None => shown.push_str(authority),
    }
    match tail.split_once('?') {
        Some((path, _query)) => {
            shown.push_str(path);
            shown.push_str("?***");
        }
        None => shown.push_str(tail),
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_hide_credentials_and_queries() {
        let plain = "https://hooks.example.com:8443/mirrorkit/events";
        assert_eq!(shown_url(plain), plain);
        assert_eq!(
            shown_url("https://ops:s3cret@hooks.example.com/x?token=abc#frag"),
            "https://ops:***@hooks.example.com/x?***"
        );
        assert_eq!(
            shown_url("http://[::1]:8080?key=1"),
            "http://[::1]:8080?***"
        );
        assert_eq!(
            shown_url("https://token@hooks.example.com/x"),
            "https://***@hooks.example.com/x"
        );
        assert_eq!(shown_url("not a url"), "not a url");
    }

    #[test]
    fn status_texts() {
        assert_eq!(
            status_text(ureq::http::StatusCode::INTERNAL_SERVER_ERROR),
            "500 Internal Server Error"
        );
        let odd = ureq::http::StatusCode::from_u16(599).ok();
        assert_eq!(odd.map(status_text).as_deref(), Some("599"));
    }

    #[test]
    fn only_unsent_requests_are_retried() {
        let refused = ureq::Error::Io(std::io::Error::from(ErrorKind::ConnectionRefused));
        assert!(not_sent(&refused));
        assert!(not_sent(&ureq::Error::HostNotFound));
        let reset = ureq::Error::Io(std::io::Error::from(ErrorKind::ConnectionReset));
        assert!(!not_sent(&reset));
        assert!(!not_sent(&ureq::Error::Timeout(ureq::Timeout::Global)));
    }
}
