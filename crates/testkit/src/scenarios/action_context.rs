//! Action approvals at `/v1/check` bound to what the check declared
//! (SECURITY row 33): an approval given for `amount` 50 is not one for
//! 500, and one given for a 120 EUR payment detail is not one for 500 EUR.

use anyhow::{Result, ensure};
use reqwest::Method;
use serde_json::{Value, json};

use super::details::{PAY, pay, payment_type};
use super::{World, created, text};

/// `POST /v1/check` of `pay` on payment p1, with `extra` members.
async fn check_pay(w: &World, token: &str, extra: Value) -> Result<Value> {
    let mut body = json!({"token": token, "action": "pay", "resource": {"type": "payment", "id": "p1"}});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (st, d) = w.s.admin(Method::POST, "/v1/check", Some(body)).await?;
    ensure!(st == 200, "check: {st} {d}");
    Ok(d)
}

/// A grant of `pay` at the payment resource, which policy gives Alice's
/// planner without asking, with `extra` CIBA parameters: its access token.
async fn pay_token(w: &World, extra: &[(&str, &str)]) -> Result<String> {
    let mut params =
        vec![("login_hint", "alice@example.com"), ("scope", "pay"), ("resource", PAY), ("binding_message", "pay")];
    params.extend_from_slice(extra);
    let (st, body) = w.ciba(&w.planner, &params).await?;
    ensure!(st == 200, "bc-authorize: {st} {body}");
    let (st, tokens) = w.poll(&w.planner, &text(&body, "auth_req_id")?).await?;
    ensure!(st == 200, "poll: {st} {tokens}");
    text(&tokens, "access_token")
}

/// Waits for an approval: its id.
fn asked(d: &Value) -> Result<String> {
    ensure!(d["decision"] == "approval_required", "{d}");
    text(d, "approval_request")
}

async fn approve(w: &World, id: &str) -> Result<()> {
    let (st, b) = w.s.call(Method::POST, &format!("/v1/approvals/{id}/approve"), Some(&w.alice_token), None).await?;
    ensure!(st == 200, "approve {id}: {st} {b}");
    Ok(())
}

/// The pending approval `id` as Alice lists it.
async fn pending(w: &World, id: &str) -> Result<Value> {
    let (st, list) = w.s.call(Method::GET, "/v1/approvals?status=pending", Some(&w.alice_token), None).await?;
    ensure!(st == 200, "{st} {list}");
    let found = list["approvals"].as_array().and_then(|a| a.iter().find(|x| x["id"] == id).cloned());
    found.ok_or_else(|| anyhow::anyhow!("{id} is not pending: {list}"))
}

/// G1: the declared `context` of a check is part of what its approval is
/// bound to, and is recorded on the approval for the person to see.
pub async fn an_action_approval_is_bound_to_the_checked_context(w: World) -> Result<()> {
    created(
        &w.s,
        "/v1/resources",
        json!({"identifier": PAY, "name": "Payments", "scopes": {"pay": ["pay"]},
               "context": {"amount": "Long", "urgent": "Bool"}}),
    )
    .await?;
    w.s.put_policies(
        r#"permit (principal in Group::"staff", action == Action::"pay", resource);
           permit (principal is Agent, action == Action::"pay", resource is Api)
             when { context has user && context.user == principal.owner };
           @approval("user")
           permit (principal is Agent, action == Action::"pay", resource is Resource)
             when { context has amount && context.amount < 10000 };"#,
    )
    .await?;
    let token = pay_token(&w, &[]).await?;
    let first = asked(&check_pay(&w, &token, json!({"context": {"amount": 50}})).await?)?;
    // The person sees the amount they approve.
    let shown = pending(&w, &first).await?;
    ensure!(shown["subject"]["context"] == json!({"amount": 50}), "{shown}");
    // Asking again with the same context points at the same request.
    let again = asked(&check_pay(&w, &token, json!({"context": {"amount": 50}})).await?)?;
    ensure!(again == first, "{again} != {first}");
    approve(&w, &first).await?;
    // Approved for 50: a check for 500, or for 50 with another declared
    // key, needs an approval of its own.
    let bigger = asked(&check_pay(&w, &token, json!({"context": {"amount": 500}})).await?)?;
    ensure!(bigger != first, "the approval for 50 was offered for 500");
    ensure!(pending(&w, &bigger).await?["subject"]["context"] == json!({"amount": 500}));
    let urgent = asked(&check_pay(&w, &token, json!({"context": {"amount": 50, "urgent": true}})).await?)?;
    ensure!(urgent != first && urgent != bigger, "{urgent}");
    // The check it was given for is allowed, once.
    let d = check_pay(&w, &token, json!({"context": {"amount": 50}})).await?;
    ensure!(d["decision"] == "allow", "{d}");
    ensure!(d["reasons"].to_string().contains(&first), "{d}");
    let d = check_pay(&w, &token, json!({"context": {"amount": 50}})).await?;
    ensure!(d["decision"] == "approval_required" && d["approval_request"] != first.as_str(), "{d}");
    Ok(())
}

/// G10: an action approval for a checked payment detail of 120 EUR does not
/// cover a check for 500 EUR, though the grant covers both.
pub async fn an_action_approval_for_120_eur_does_not_cover_500(w: World) -> Result<()> {
    created(
        &w.s,
        "/v1/resources",
        json!({"identifier": PAY, "name": "Payments", "scopes": {"pay": ["pay"]},
               "authorization_details_types": {"payment_initiation": payment_type()}}),
    )
    .await?;
    w.s.put_policies(
        r#"permit (principal in Group::"staff", action == Action::"pay", resource);
           permit (principal is Agent, action == Action::"pay", resource is Api)
             when { context has user && context.user == principal.owner };
           @approval("user")
           permit (principal is Agent, action == Action::"pay", resource is Resource)
             when { context has authorization_detail };"#,
    )
    .await?;
    let token = pay_token(&w, &[("authorization_details", &pay(1000, "EUR"))]).await?;
    let detail = |amount: i64| {
        json!({"authorization_details": [{"type": "payment_initiation", "amount": amount, "currency": "EUR",
                                          "creditor": "ACME Corp"}]})
    };
    let first = asked(&check_pay(&w, &token, detail(120)).await?)?;
    let shown = pending(&w, &first).await?;
    ensure!(shown["subject"]["authorization_detail"]["amount"] == 120, "{shown}");
    approve(&w, &first).await?;
    let bigger = asked(&check_pay(&w, &token, detail(500)).await?)?;
    ensure!(bigger != first, "the approval for 120 EUR was offered for 500 EUR");
    ensure!(pending(&w, &bigger).await?["subject"]["authorization_detail"]["amount"] == 500);
    let d = check_pay(&w, &token, detail(120)).await?;
    ensure!(d["decision"] == "allow" && d["reasons"].to_string().contains(&first), "{d}");
    Ok(())
}
