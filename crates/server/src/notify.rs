//! Outbound messages Mandate sends on its own, as adapters of the core's
//! ports: CIBA ping and push callbacks ([`HttpCallbacks`]), and approver
//! notifications by webhook ([`WebhookNotifier`], signed with HMAC-SHA256
//! as Standard Webhooks does) and by email ([`SmtpNotifier`], `lettre`).
//! Every HTTP request goes through the SSRF-guarded fetcher and follows no
//! redirect. What is sent is never logged (a push carries tokens).

use std::sync::Arc;

use base64::Engine;
use mandate_core::Clock;
use mandate_core::delivery::ApprovalNotice;
use mandate_core::ports::{ApproverNotifier, CallbackSender, SendFailure};
use mandate_core::ssf::PushFailure;
use mandate_fetch::{FetchError, FetchPolicy, Fetcher};

/// The body of a webhook notice: `{"type": "approval.requested", "data": …}`.
pub const WEBHOOK_TYPE: &str = "approval.requested";

fn sending_failed(e: &FetchError) -> SendFailure {
    let retry =
        matches!(e, FetchError::Timeout | FetchError::Network(_) | FetchError::Dns(_) | FetchError::TooLarge { .. });
    SendFailure { why: e.to_string(), retry }
}

/// Whether an answer is a delivery (2xx), worth another try (5xx, 408,
/// 429), or a refusal that another try will not change.
fn answered(status: http::StatusCode) -> Result<(), SendFailure> {
    if status.is_success() {
        return Ok(());
    }
    let retry = status.is_server_error()
        || status == http::StatusCode::REQUEST_TIMEOUT
        || status == http::StatusCode::TOO_MANY_REQUESTS;
    Err(SendFailure { why: format!("the receiver answered HTTP {}", status.as_u16()), retry })
}

fn guarded(dev_loopback: bool) -> Result<Fetcher, FetchError> {
    Fetcher::new(FetchPolicy { dev_loopback, max_bytes: 16 * 1024, ..FetchPolicy::default() })
}

/// CIBA ping and push callbacks, POSTed through the guarded fetcher.
pub struct HttpCallbacks {
    fetcher: Fetcher,
    dev_loopback: bool,
}

impl HttpCallbacks {
    /// `dev_loopback` (`--dev-loopback-fetch`) also opens http to loopback.
    pub fn new(dev_loopback: bool) -> Result<Self, FetchError> {
        Ok(Self { fetcher: guarded(dev_loopback)?, dev_loopback })
    }
}

#[async_trait::async_trait]
impl CallbackSender for HttpCallbacks {
    fn check_url(&self, url: &str) -> Result<(), String> {
        let parsed = url::Url::parse(url).map_err(|_| "not a URL".to_owned())?;
        self.fetcher.check_url(&parsed).map_err(|e| e.to_string())?;
        // A name that is loopback by definition is refused at once (other
        // names are checked by address at each delivery).
        let host = parsed.host_str().unwrap_or_default().trim_end_matches('.').to_ascii_lowercase();
        if !self.dev_loopback && (host == "localhost" || host.ends_with(".localhost")) {
            return Err(FetchError::PrivateAddress.to_string());
        }
        Ok(())
    }

    async fn post_json(&self, url: &str, bearer: &str, body: &[u8]) -> Result<(), SendFailure> {
        let lasting = |why: &str| SendFailure { why: why.to_owned(), retry: false };
        let parsed = url::Url::parse(url).map_err(|_| lasting("not a URL"))?;
        let mut headers = http::HeaderMap::new();
        let auth = http::HeaderValue::from_str(&format!("Bearer {bearer}"))
            .map_err(|_| lasting("the client_notification_token is not a header value"))?;
        headers.insert(http::header::AUTHORIZATION, auth);
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        let response = self.fetcher.post(&parsed, headers, body.to_vec()).await.map_err(|e| sending_failed(&e))?;
        answered(response.status())
    }
}

/// Approver notices POSTed to one webhook URL (`--approval-webhook`),
/// signed as Standard Webhooks does: `webhook-id` (the approval id),
/// `webhook-timestamp` (Unix seconds) and `webhook-signature:
/// v1,<base64 of HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`. The key is
/// the secret's bytes, or for a secret written `whsec_<base64>`, the
/// decoded bytes.
pub struct WebhookNotifier {
    url: url::Url,
    key: aws_lc_rs::hmac::Key,
    fetcher: Fetcher,
    clock: Arc<dyn Clock>,
}

impl WebhookNotifier {
    pub fn new(url: &str, secret: &str, dev_loopback: bool, clock: Arc<dyn Clock>) -> Result<Self, String> {
        let url = url::Url::parse(url).map_err(|_| format!("--approval-webhook {url:?} is not a URL"))?;
        let fetcher = guarded(dev_loopback).map_err(|e| e.to_string())?;
        fetcher.check_url(&url).map_err(|e| format!("--approval-webhook: {e}"))?;
        let secret = secret.trim();
        let bytes = match secret.strip_prefix("whsec_") {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| "the webhook secret after whsec_ is not base64".to_owned())?,
            None => secret.as_bytes().to_vec(),
        };
        if bytes.len() < 16 {
            return Err("the webhook secret must be at least 16 bytes".into());
        }
        Ok(Self { url, key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &bytes), fetcher, clock })
    }

    /// The `webhook-signature` value of `body` sent as `id` at `timestamp`.
    pub fn signature(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut signed = format!("{id}.{timestamp}.").into_bytes();
        signed.extend_from_slice(body);
        let tag = aws_lc_rs::hmac::sign(&self.key, &signed);
        format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(tag.as_ref()))
    }
}

#[async_trait::async_trait]
impl ApproverNotifier for WebhookNotifier {
    fn channel(&self) -> &'static str {
        "webhook"
    }

    async fn notify(&self, notice: &ApprovalNotice) -> Result<(), SendFailure> {
        let lasting = |why: &str| SendFailure { why: why.to_owned(), retry: false };
        let body = serde_json::to_vec(&serde_json::json!({"type": WEBHOOK_TYPE, "data": notice}))
            .map_err(|_| lasting("the notice cannot be encoded"))?;
        let timestamp = self.clock.now().unix_timestamp();
        let mut headers = http::HeaderMap::new();
        let value = |s: &str| http::HeaderValue::from_str(s).map_err(|_| lasting("a header is not a header value"));
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        headers.insert("webhook-id", value(&notice.approval)?);
        headers.insert("webhook-timestamp", value(&timestamp.to_string())?);
        headers.insert("webhook-signature", value(&self.signature(&notice.approval, timestamp, &body))?);
        let response = self.fetcher.post(&self.url, headers, body).await.map_err(|e| sending_failed(&e))?;
        answered(response.status())
    }
}

/// Approver notices by email (`--smtp-url`, `--smtp-from`), to each
/// recipient's address, through `lettre` on tokio: `smtp://host:port`
/// (plain; add `?tls=required` for STARTTLS) or `smtps://host:port`.
pub struct SmtpNotifier {
    transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: lettre::message::Mailbox,
}

impl SmtpNotifier {
    pub fn new(url: &str, from: &str) -> Result<Self, String> {
        let transport = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url)
            .map_err(|e| format!("--smtp-url: {e}"))?
            .timeout(Some(std::time::Duration::from_secs(30)))
            .build();
        let from = from.parse().map_err(|e| format!("--smtp-from {from:?}: {e}"))?;
        Ok(Self { transport, from })
    }

    /// The subject and plain-text body of a notice.
    pub fn render(notice: &ApprovalNotice) -> (String, String) {
        let what = match (&notice.scopes, &notice.action, &notice.target) {
            (Some(scopes), _, _) => format!("the scopes {scopes} at {}", notice.resource),
            (None, Some(action), Some(target)) => format!("the action {action} on {target} at {}", notice.resource),
            _ => format!("access to {}", notice.resource),
        };
        let subject = format!("Approval requested: {} asks for {what}", notice.agent.name);
        let mut body = format!(
            "The agent {} ({}) asks, acting for {} ({}), for {what}.\n",
            notice.agent.name, notice.agent.id, notice.user.name, notice.user.id
        );
        if let Some(m) = &notice.binding_message {
            body.push_str(&format!("Its purpose: {m}\n"));
        }
        if !notice.context.is_empty() {
            let shown: Vec<String> = notice.context.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            body.push_str(&format!("With: {}\n", shown.join(", ")));
        }
        body.push_str(&format!(
            "\nApprove or deny it at {} (request {}) before {}.\n",
            notice.url,
            notice.approval,
            notice.expires_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
        ));
        (subject, body)
    }
}

#[async_trait::async_trait]
impl ApproverNotifier for SmtpNotifier {
    fn channel(&self) -> &'static str {
        "email"
    }

    async fn notify(&self, notice: &ApprovalNotice) -> Result<(), SendFailure> {
        use lettre::AsyncTransport;
        let lasting = |why: String| SendFailure { why, retry: false };
        let (subject, body) = Self::render(notice);
        let mut message = lettre::Message::builder().from(self.from.clone()).subject(subject);
        let mut any = false;
        for r in &notice.recipients {
            let Some(email) = &r.email else { continue };
            let to = lettre::message::Mailbox::new(
                Some(r.name.clone()),
                email.parse().map_err(|e| lasting(format!("{email}: {e}")))?,
            );
            message = message.to(to);
            any = true;
        }
        if !any {
            return Err(lasting("no recipient has an email address".into()));
        }
        let email = message
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| lasting(format!("the message cannot be built: {e}")))?;
        self.transport
            .send(email)
            .await
            .map_err(|e| SendFailure { why: format!("SMTP: {e}"), retry: !e.is_permanent() })?;
        Ok(())
    }
}

/// Shared Signals push delivery (RFC 8935): each SET POSTed as
/// `application/secevent+jwt` through the guarded fetcher, with the
/// `Authorization` value the receiver configured.
pub struct HttpSetPusher {
    callbacks: HttpCallbacks,
}

impl HttpSetPusher {
    /// `dev_loopback` (`--dev-loopback-fetch`) also opens http to loopback.
    pub fn new(dev_loopback: bool) -> Result<Self, FetchError> {
        Ok(Self { callbacks: HttpCallbacks::new(dev_loopback)? })
    }
}

#[async_trait::async_trait]
impl mandate_core::ssf::SetPusher for HttpSetPusher {
    fn check_url(&self, url: &str) -> Result<(), String> {
        self.callbacks.check_url(url)
    }

    async fn push(&self, url: &str, authorization: Option<&str>, set: &str) -> Result<(), PushFailure> {
        let parsed = url::Url::parse(url).map_err(|_| PushFailure::Refused("not a URL".into()))?;
        let mut headers = http::HeaderMap::new();
        if let Some(a) = authorization {
            let value = http::HeaderValue::from_str(a)
                .map_err(|_| PushFailure::Refused("the authorization_header is not a header value".into()))?;
            headers.insert(http::header::AUTHORIZATION, value);
        }
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/secevent+jwt"));
        headers.insert(http::header::ACCEPT, http::HeaderValue::from_static("application/json"));
        let response = self.callbacks.fetcher.post(&parsed, headers, set.as_bytes().to_vec()).await.map_err(|e| {
            let f = sending_failed(&e);
            if f.retry { PushFailure::Unreachable(f.why) } else { PushFailure::Refused(f.why) }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // RFC 8935 §2.3: 400 is the receiver refusing this SET.
        if status == http::StatusCode::BAD_REQUEST {
            return Err(PushFailure::Rejected("the receiver answered HTTP 400".into()));
        }
        Err(PushFailure::Unreachable(format!("the receiver answered HTTP {}", status.as_u16())))
    }
}

#[cfg(test)]
mod tests {
    use mandate_core::delivery::{ApprovalNotice, Party};

    use super::SmtpNotifier;

    #[test]
    fn an_action_notice_says_what_the_check_declared() {
        let party = |id: &str| Party { id: id.into(), name: id.into(), email: None };
        let notice = ApprovalNotice {
            approval: "apr_1".into(),
            url: "https://mandate.example/approvals".into(),
            agent: party("agt_1"),
            user: party("usr_1"),
            resource: "https://pay.example".into(),
            scopes: None,
            action: Some("pay".into()),
            target: Some("payment/p1".into()),
            context: [("amount".to_owned(), serde_json::json!(50)), ("memo".to_owned(), serde_json::json!("rent"))]
                .into(),
            binding_message: None,
            expires_at: time::OffsetDateTime::UNIX_EPOCH,
            recipients: vec![party("usr_1")],
        };
        let (subject, body) = SmtpNotifier::render(&notice);
        assert!(subject.contains("the action pay on payment/p1"), "{subject}");
        assert!(body.contains("With: amount = 50, memo = \"rent\"\n"), "{body}");
        let plain = ApprovalNotice { context: Default::default(), ..notice };
        assert!(!SmtpNotifier::render(&plain).1.contains("With:"));
    }
}
