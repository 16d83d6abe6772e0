//! RFC 9396 authorization details over HTTP (issue 16 §5, DESIGN §13): a
//! payment resource declares its type, an agent asks by CIBA for 120 EUR,
//! the person approves exactly that, the token carries it, checks are
//! covered only up to it, and a delegation hop can only narrow it.

use anyhow::{Result, ensure};
use reqwest::Method;
use serde_json::{Value, json};

use super::{World, claims, created, text};

pub const PAY: &str = "https://pay.example";

/// The payment type: `amount` bounded by `max`, `currency` and `creditor`
/// by `equal`.
pub fn payment_type() -> Value {
    json!({
        "schema": {
            "type": "object",
            "required": ["type", "amount", "currency", "creditor"],
            "properties": {
                "type": {"const": "payment_initiation"},
                "amount": {"type": "number", "exclusiveMinimum": 0},
                "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "creditor": {"type": "string", "maxLength": 64}
            }
        },
        "bounds": {"amount": "max", "currency": "equal", "creditor": "equal"}
    })
}

/// Policies for payments: agents may be granted `pay` once the person
/// approves, never above 10 000 at issuance; a check is allowed only with
/// a detail under 1 000 (each as `context.authorization_detail`).
pub const PAYMENT_POLICIES: &str = r#"
permit (principal in Group::"staff", action == Action::"pay", resource);
@approval("user")
permit (principal is Agent, action == Action::"pay", resource is Api)
  unless { context has authorization_detail && context.authorization_detail has amount
           && context.authorization_detail.amount > 10000 };
permit (principal is Agent, action == Action::"pay", resource is Resource)
  when { context has authorization_detail && context.authorization_detail has amount
         && context.authorization_detail.amount < 1000 };
permit (principal is Agent, action == Action::"mandate:spawn", resource);
"#;

/// One payment detail, as JSON text.
pub fn pay(amount: i64, currency: &str) -> String {
    json!([{"type": "payment_initiation", "amount": amount, "currency": currency, "creditor": "ACME Corp"}]).to_string()
}

/// The payment resource and its policies.
pub async fn payment_resource(w: &World) -> Result<()> {
    created(
        &w.s,
        "/v1/resources",
        json!({"identifier": PAY, "name": "Payments", "scopes": {"pay": ["pay"]},
               "authorization_details_types": {"payment_initiation": payment_type()}}),
    )
    .await?;
    w.s.put_policies(PAYMENT_POLICIES).await
}

/// A CIBA request by the planner for `details` at the payment resource.
pub async fn ask_payment(w: &World, details: &str) -> Result<(u16, Value)> {
    w.ciba(
        &w.planner,
        &[
            ("login_hint", "alice@example.com"),
            ("scope", "pay"),
            ("resource", PAY),
            ("binding_message", "pay the caterer"),
            ("authorization_details", details),
        ],
    )
    .await
}

async fn check(w: &World, token: &str, detail: Option<Value>) -> Result<(u16, Value)> {
    let mut body = json!({"token": token, "action": "pay", "resource": {"type": "payment", "id": "p1"}});
    if let (Some(d), Some(obj)) = (detail, body.as_object_mut()) {
        obj.insert("authorization_details".into(), d);
    }
    w.s.admin(Method::POST, "/v1/check", Some(body)).await
}

fn detail(amount: i64, currency: &str) -> Value {
    json!([{"type": "payment_initiation", "amount": amount, "currency": currency, "creditor": "ACME Corp"}])
}

fn refused(st: u16, body: &Value) -> bool {
    st == 400 && body["error"] == "invalid_authorization_details"
}

/// The walk-through of docs/delegation.md, on both stores.
pub async fn a_payment_approval_covers_only_what_was_approved(w: World) -> Result<()> {
    // A bound the schema cannot support is refused when the type is declared.
    let mut bad = payment_type();
    bad["bounds"]["currency"] = json!("max");
    let (st, body) =
        w.s.admin(
            Method::POST,
            "/v1/resources",
            Some(json!({"identifier": "https://bad.example", "name": "Bad", "scopes": {"pay": []},
                        "authorization_details_types": {"payment_initiation": bad}})),
        )
        .await?;
    ensure!(st == 400 && body["detail"].as_str().is_some_and(|d| d.contains("currency")), "{st} {body}");
    payment_resource(&w).await?;
    let (st, meta) = w.s.call(Method::GET, "/.well-known/oauth-authorization-server", None, None).await?;
    ensure!(st == 200 && meta["authorization_details_types_supported"] == json!(["payment_initiation"]), "{meta}");

    // Schema violations, unknown types and non-lists are refused at once,
    // and nobody is asked.
    for bad in [
        r#"[{"type":"payment_initiation","amount":120,"currency":"euro","creditor":"ACME Corp"}]"#,
        r#"[{"type":"payment_initiation","amount":-5,"currency":"EUR","creditor":"ACME Corp"}]"#,
        r#"[{"type":"account_information"}]"#,
        r#"{"type":"payment_initiation"}"#,
        "not json",
    ] {
        let (st, body) = ask_payment(&w, bad).await?;
        ensure!(refused(st, &body), "{bad}: {st} {body}");
    }
    let (_, list) = w.s.call(Method::GET, "/v1/approvals?status=pending", Some(&w.alice_token), None).await?;
    ensure!(list["approvals"].as_array().is_some_and(Vec::is_empty), "a refused request was kept: {list}");
    // Policy sees each detail at issuance: above 10 000 is denied at once.
    let (st, body) = ask_payment(&w, &pay(20_000, "EUR")).await?;
    ensure!(st == 400 && body["error"] == "access_denied", "{st} {body}");

    // 120 EUR: Alice is asked, and approves exactly that.
    let (st, body) = ask_payment(&w, &pay(120, "EUR")).await?;
    ensure!(st == 200, "{st} {body}");
    let id = text(&body, "auth_req_id")?;
    let (_, list) = w.s.call(Method::GET, "/v1/approvals?status=pending", Some(&w.alice_token), None).await?;
    let asked = &list["approvals"][0];
    ensure!(asked["id"] == id.as_str(), "{list}");
    ensure!(asked["subject"]["authorization_details"][0]["amount"] == 120, "{asked}");
    let (st, body) = w.s.call(Method::POST, &format!("/v1/approvals/{id}/approve"), Some(&w.alice_token), None).await?;
    ensure!(st == 200, "{st} {body}");
    let (st, tokens) = w.poll(&w.planner, &id).await?;
    ensure!(st == 200, "{st} {tokens}");
    ensure!(tokens["authorization_details"] == detail(120, "EUR"), "token response: {tokens}");
    let token = text(&tokens, "access_token")?;
    ensure!(claims(&token)["authorization_details"] == detail(120, "EUR"), "{}", claims(&token));
    let seen = w.s.introspect(&token).await?;
    ensure!(seen["active"] == true && seen["authorization_details"] == detail(120, "EUR"), "{seen}");
    // A refreshed token carries the grant's details too.
    let rt = text(&tokens, "refresh_token")?;
    let (st, refreshed) = w.grant(&w.planner, &[("grant_type", "refresh_token"), ("refresh_token", &rt)]).await?;
    ensure!(st == 200 && refreshed["authorization_details"] == detail(120, "EUR"), "{st} {refreshed}");

    // The trail keeps the digest of what was approved and issued.
    let approved: mandate_model::details::AuthorizationDetails = serde_json::from_value(detail(120, "EUR"))?;
    let digest = mandate_core::details::digest(&approved).unwrap_or_default();
    for kind in ["approval.approved", "token.issued"] {
        let events = w.s.audit(&format!("type={kind}")).await?;
        ensure!(
            events.iter().any(|e| e["reason"].as_str().is_some_and(|r| r.contains(&digest))),
            "{kind} does not record {digest}: {events:?}"
        );
    }

    // Checks: covered up to 120 EUR to ACME Corp, nothing else.
    for (amount, currency, decision) in
        [(100, "EUR", "allow"), (120, "EUR", "allow"), (500, "EUR", "deny"), (100, "USD", "deny")]
    {
        let (st, d) = check(&w, &token, Some(detail(amount, currency))).await?;
        ensure!(st == 200 && d["decision"] == decision, "{amount} {currency}: {st} {d}");
        if decision == "deny" {
            ensure!(
                d["reasons"][0].as_str().is_some_and(|r| r.starts_with("authorization_details: not covered")),
                "{d}"
            );
        }
    }
    let (_, d) = check(&w, &token, Some(detail(500, "EUR"))).await?;
    ensure!(d["reasons"][0].as_str().is_some_and(|r| r.contains("amount 500 is not at most the granted 120")), "{d}");
    // Without a detail, the policy (which reads the detail) permits nothing.
    let (st, d) = check(&w, &token, None).await?;
    ensure!(st == 200 && d["decision"] == "deny", "{st} {d}");
    // A detail its schema refuses, or two at once, is 400, and recorded.
    let bad = json!([{"type": "payment_initiation", "amount": 1, "currency": "euro", "creditor": "ACME Corp"}]);
    let (st, d) = check(&w, &token, Some(bad)).await?;
    ensure!(st == 400, "{st} {d}");
    let two = json!([detail(1, "EUR")[0], detail(2, "EUR")[0]]);
    let (st, d) = check(&w, &token, Some(two)).await?;
    ensure!(st == 400, "{st} {d}");
    let decided = w.s.audit("type=check.decided").await?;
    ensure!(
        decided.iter().any(|e| e["reason"].as_str().is_some_and(|r| r.contains("authorization_details: type"))),
        "the refusal is recorded: {decided:?}"
    );

    // A hop narrows: a spawned helper may not ask for 500, may ask for 50,
    // and is then covered only up to 50.
    let helper = w.spawn(&w.planner, json!({})).await?;
    let (st, body) = w.exchange(&helper, &token, &[("authorization_details", &pay(500, "EUR"))]).await?;
    ensure!(refused(st, &body), "{st} {body}");
    let (st, body) = w.exchange(&helper, &token, &[("authorization_details", &pay(50, "USD"))]).await?;
    ensure!(refused(st, &body), "{st} {body}");
    let (st, hop) = w.exchange(&helper, &token, &[("authorization_details", &pay(50, "EUR"))]).await?;
    ensure!(st == 200 && hop["authorization_details"] == detail(50, "EUR"), "{st} {hop}");
    let child = text(&hop, "access_token")?;
    let (_, d) = check(&w, &child, Some(detail(60, "EUR"))).await?;
    ensure!(d["decision"] == "deny", "{d}");
    let (_, d) = check(&w, &child, Some(detail(50, "EUR"))).await?;
    ensure!(d["decision"] == "allow", "{d}");
    // Asking for nothing inherits the parent's.
    let (st, inherited) = w.exchange(&helper, &token, &[]).await?;
    ensure!(st == 200 && claims(&text(&inherited, "access_token")?)["authorization_details"] == detail(120, "EUR"));
    Ok(())
}
