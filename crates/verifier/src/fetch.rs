//! Bounded HTTP reads from the issuer.

use std::time::Duration;

use axum::http::header;
use reqwest::{Client, Response, StatusCode};

/// The client every fetch uses: short timeouts, and no redirects, so that
/// a URL checked against the issuer cannot lead anywhere else.
pub(crate) fn client() -> Result<Client, reqwest::Error> {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
        .build()
}

/// A successful GET: the body and the `Cache-Control` max-age, if any.
pub(crate) struct Fetched {
    pub body: Vec<u8>,
    pub max_age: Option<u64>,
}

/// GETs `url`, refusing anything but 200 and bodies over `limit` bytes.
/// The error is for logs, not for clients.
pub(crate) async fn get(http: &Client, url: &str, accept: &str, limit: usize) -> Result<Fetched, String> {
    let resp = http.get(url).header(header::ACCEPT, accept).send().await.map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::OK {
        return Err(format!("status {}", resp.status()));
    }
    let max_age = resp.headers().get(header::CACHE_CONTROL).and_then(|v| v.to_str().ok()).and_then(max_age);
    let body = read_limited(resp, limit).await?;
    Ok(Fetched { body, max_age })
}

/// Reads a body of at most `limit` bytes.
pub(crate) async fn read_limited(mut resp: Response, limit: usize) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX)) {
        return Err("response too large".into());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > limit {
            return Err("response too large".into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `max-age` of a `Cache-Control` value; `no-store`/`no-cache` count as 0.
fn max_age(value: &str) -> Option<u64> {
    let mut age = None;
    for directive in value.split(',').map(str::trim) {
        if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache") {
            return Some(0);
        }
        if let Some((name, v)) = directive.split_once('=')
            && name.trim().eq_ignore_ascii_case("max-age")
        {
            age = v.trim().trim_matches('"').parse().ok();
        }
    }
    age
}

#[cfg(test)]
mod tests {
    use super::max_age;

    #[test]
    fn reads_max_age() {
        assert_eq!(max_age("public, max-age=300"), Some(300));
        assert_eq!(max_age("Max-Age=\"60\""), Some(60));
        assert_eq!(max_age("no-store"), Some(0));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=-1"), None);
    }
}
