//! `GET /openapi.json` against the router: every documented operation is
//! routed, and every routed path and method is documented.

use std::collections::BTreeSet;

use mandate_testkit::TestServer;
use reqwest::Method;

/// A concrete path for a template: `{id}` → `x0`.
fn concrete(template: &str) -> String {
    template.split('/').map(|s| if s.starts_with('{') { "x0" } else { s }).collect::<Vec<_>>().join("/")
}

#[tokio::test]
async fn openapi_matches_the_routes() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let resp = s.http.get(format!("{}/openapi.json", s.url)).send().await?;
    assert_eq!(resp.status(), 200);
    let doc: serde_json::Value = resp.json().await?;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object().into_iter().flat_map(|o| o.keys()).map(move |m| (p.clone(), m.to_uppercase()))
        })
        .collect();
    assert!(documented.len() > 30, "{documented:?}");

    // Every path the router registers for the admin API, and every path the
    // document names.
    let mut templates: BTreeSet<String> = mandate_server::openapi::admin_routes()
        .into_iter()
        .chain(mandate_server::openapi::check_routes())
        .map(|(p, _)| p.to_owned())
        .collect();
    templates.insert("/openapi.json".into());
    templates.extend(paths.keys().cloned());
    // What the router answers: a method it does not route gets 405, a path
    // it does not route 404. Nothing here carries credentials.
    let mut routed = BTreeSet::new();
    for t in &templates {
        for m in [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            let status = s.http.request(m.clone(), format!("{}{}", s.url, concrete(t))).send().await?.status();
            if status != 404 && status != 405 {
                routed.insert((t.clone(), m.to_string()));
            }
        }
    }
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(undocumented.is_empty(), "routed but not documented: {undocumented:?}");
    assert!(unrouted.is_empty(), "documented but not routed: {unrouted:?}");
    s.stop().await?;
    Ok(())
}

/// The document is committed as `docs/openapi.json`, for readers and for
/// the outside validator `.ci/run` runs on it (tests/openapi/run), and it
/// is exactly what the server serves.
/// `MANDATE_UPDATE_OPENAPI=1 cargo test -p mandate-testkit --test it openapi`
/// rewrites it.
#[tokio::test]
async fn the_committed_document_is_what_is_served() -> anyhow::Result<()> {
    let s = TestServer::start().await?;
    let served: serde_json::Value = s.http.get(format!("{}/openapi.json", s.url)).send().await?.json().await?;
    s.stop().await?;
    assert_eq!(served, mandate_server::openapi::document()?);
    let text = serde_json::to_string_pretty(&served)? + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    if std::env::var_os("MANDATE_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &text)?;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "docs/openapi.json differs from GET /openapi.json: \
         rewrite it with MANDATE_UPDATE_OPENAPI=1 cargo test -p mandate-testkit --test it openapi"
    );
    Ok(())
}
