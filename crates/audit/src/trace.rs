//! The delegation tree of a grant or a token, rebuilt from audit events
//! alone: each issued token is a node, hung under the token it was
//! exchanged from (`parent`), with the decisions taken about it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use serde::Serialize;

use crate::Event;

/// The event type that creates a node.
pub const TOKEN_ISSUED: &str = "token.issued";
/// Agent lifecycle events (`agent.suspended`, …), whose `resource` is the
/// agent.
pub const AGENT_EVENT_PREFIX: &str = "agent.";

/// One issued token and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceNode {
    /// The issuance event.
    pub issued: Event,
    /// Later events about this token (checks, revocations, introspections).
    pub events: Vec<Event>,
    /// Tokens exchanged from this one.
    pub children: Vec<TraceNode>,
    /// Tokens under this one that the reader may not see, counted only
    /// (see [`Trace::focus`]).
    #[serde(skip_serializing_if = "is_zero")]
    pub hidden: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A delegation tree.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Trace {
    /// Events that concern the whole grant or no single token (grant
    /// creation, approvals, grant revocation, refusals before issuance).
    pub grant_events: Vec<Event>,
    /// Tokens with no parent among the events given.
    pub roots: Vec<TraceNode>,
    /// Whether the reader stopped at a limit, so that the tree may lack
    /// tokens or events.
    pub truncated: bool,
    /// Roots left out by [`Trace::focus`], with every token under them.
    #[serde(skip_serializing_if = "is_zero")]
    pub hidden: usize,
}

impl Trace {
    /// Builds the tree from `events`, in any order. A token whose parent is
    /// not among them becomes a root.
    pub fn build(events: &[Event]) -> Self {
        let mut sorted: Vec<&Event> = events.iter().collect();
        sorted.sort_by_key(|e| e.seq);
        let issued: BTreeMap<&str, &Event> = sorted
            .iter()
            .filter(|e| e.kind == TOKEN_ISSUED)
            .filter_map(|e| e.jti.as_deref().map(|j| (j, *e)))
            .collect();
        let mut about: BTreeMap<&str, Vec<Event>> = BTreeMap::new();
        let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut grant_events = Vec::new();
        for e in &sorted {
            match (e.kind.as_str(), e.jti.as_deref()) {
                (TOKEN_ISSUED, Some(jti)) if issued.get(jti).is_some_and(|first| first.seq == e.seq) => {
                    if let Some(p) = e.parent.as_deref().filter(|p| issued.contains_key(p)) {
                        children.entry(p).or_default().push(jti);
                    }
                }
                (_, Some(jti)) if issued.contains_key(jti) => about.entry(jti).or_default().push((*e).clone()),
                _ => {
                    // An agent's lifecycle event reaches every token issued
                    // before it whose chain holds that agent.
                    let reached: Vec<&str> = match (e.kind.starts_with(AGENT_EVENT_PREFIX), e.resource.as_deref()) {
                        (true, Some(agent)) => issued
                            .iter()
                            .filter(|(_, t)| t.seq < e.seq && t.chain.iter().any(|a| a == agent))
                            .map(|(jti, _)| *jti)
                            .collect(),
                        _ => Vec::new(),
                    };
                    if reached.is_empty() {
                        grant_events.push((*e).clone());
                    }
                    for jti in reached {
                        about.entry(jti).or_default().push((*e).clone());
                    }
                }
            }
        }
        let mut visiting = BTreeSet::new();
        let roots = issued
            .iter()
            .filter(|(_, e)| e.parent.as_deref().is_none_or(|p| !issued.contains_key(p)))
            .filter_map(|(jti, _)| node(jti, &issued, &about, &children, &mut visiting))
            .collect();
        Trace { grant_events, roots, truncated: false, hidden: 0 }
    }

    /// Narrows the tree to what one reader may see of it (SECURITY row
    /// 42): the subtree of token `jti` whole, and the path from its root
    /// down to it, with every branch off that path (and every other root)
    /// reduced to a count of its tokens, and the events about the tokens
    /// above it dropped. Events about the whole grant are dropped unless
    /// `jti` is a root. Returns whether `jti` is in the tree.
    pub fn focus(&mut self, jti: &str) -> bool {
        fn size(n: &TraceNode) -> usize {
            1 + n.hidden + n.children.iter().map(size).sum::<usize>()
        }
        /// Keeps, under `n`, only the child on the path to `jti`; a node on
        /// the path above it keeps its issuance but not the events about it
        /// (another person's agent's checks and revocations).
        fn keep_path(n: &mut TraceNode, jti: &str) -> bool {
            if n.issued.jti.as_deref() == Some(jti) {
                return true;
            }
            let Some(i) = n.children.iter_mut().position(|c| keep_path(c, jti)) else {
                return false;
            };
            let on_path = n.children.swap_remove(i);
            n.hidden += n.children.iter().map(size).sum::<usize>();
            n.children = vec![on_path];
            n.events.clear();
            true
        }
        let roots = std::mem::take(&mut self.roots);
        let mut found = false;
        for mut r in roots {
            if !found && keep_path(&mut r, jti) {
                found = true;
                if r.issued.jti.as_deref() != Some(jti) {
                    self.grant_events.clear();
                }
                self.roots.push(r);
            } else {
                self.hidden += size(&r);
            }
        }
        found
    }

    /// Every token in the tree.
    pub fn len(&self) -> usize {
        fn count(n: &TraceNode) -> usize {
            1 + n.children.iter().map(count).sum::<usize>()
        }
        self.roots.iter().map(count).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty() && self.grant_events.is_empty()
    }

    /// The tree as indented text: the user at the top, then each agent hop
    /// with the resource it reached, and the decisions under each token.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.truncated {
            out.push_str("(truncated: the trace stopped at its read limit; some tokens or events may be missing)\n");
        }
        if self.hidden > 0 {
            let _ = writeln!(out, "({} token(s) under other roots not shown)", self.hidden);
        }
        let mut by_subject: BTreeMap<String, Vec<&TraceNode>> = BTreeMap::new();
        for r in &self.roots {
            by_subject.entry(r.issued.subject.clone().unwrap_or_else(|| "(no subject)".into())).or_default().push(r);
        }
        for e in &self.grant_events {
            let _ = writeln!(out, "{}", line(e));
        }
        for (subject, roots) in by_subject {
            let _ = writeln!(out, "{subject}");
            let n = roots.len();
            for (i, r) in roots.into_iter().enumerate() {
                render_node(&mut out, r, "", i + 1 == n);
            }
        }
        out
    }
}

/// Deepest tree drawn: real chains are a few hops (DESIGN §3.2), so a
/// deeper one comes from forged `parent` links and is cut, not recursed.
pub const MAX_TREE_DEPTH: usize = 64;

fn node<'a>(
    jti: &'a str,
    issued: &BTreeMap<&'a str, &'a Event>,
    about: &BTreeMap<&'a str, Vec<Event>>,
    children: &BTreeMap<&'a str, Vec<&'a str>>,
    visiting: &mut BTreeSet<&'a str>,
) -> Option<TraceNode> {
    // A cycle can only come from forged events; cut it rather than loop.
    if !visiting.insert(jti) {
        return None;
    }
    let kids = match children.get(jti) {
        Some(c) if depth_of(jti, issued) < MAX_TREE_DEPTH => {
            c.iter().filter_map(|k| node(k, issued, about, children, visiting)).collect()
        }
        _ => Vec::new(),
    };
    Some(TraceNode {
        issued: (*issued.get(jti)?).clone(),
        events: about.get(jti).cloned().unwrap_or_default(),
        children: kids,
        hidden: 0,
    })
}

/// How many `parent` links lead up from `jti` (bounded).
fn depth_of(jti: &str, issued: &BTreeMap<&str, &Event>) -> usize {
    let mut depth = 0;
    let mut cur = issued.get(jti).and_then(|e| e.parent.as_deref());
    while let Some(p) = cur {
        depth += 1;
        if depth >= MAX_TREE_DEPTH {
            break;
        }
        cur = issued.get(p).and_then(|e| e.parent.as_deref());
    }
    depth
}

fn render_node(out: &mut String, n: &TraceNode, prefix: &str, last: bool) {
    let e = &n.issued;
    let actor = e.actor.as_deref().unwrap_or("?");
    let _ = writeln!(
        out,
        "{prefix}{} {actor} -> {} [{}] {} at {}{}",
        if last { "└─" } else { "├─" },
        e.resource.as_deref().unwrap_or("?"),
        e.scope.as_deref().unwrap_or(""),
        e.jti.as_deref().unwrap_or("?"),
        e.time,
        e.grant_id.as_deref().map(|g| format!(" (grant {g})")).unwrap_or_default(),
    );
    let inner = format!("{prefix}{}", if last { "   " } else { "│  " });
    for ev in &n.events {
        let _ = writeln!(out, "{inner}{}  {}", if n.children.is_empty() { " " } else { "│" }, line(ev));
    }
    let k = n.children.len();
    for (i, c) in n.children.iter().enumerate() {
        render_node(out, c, &inner, i + 1 == k && n.hidden == 0);
    }
    if n.hidden > 0 {
        let _ = writeln!(out, "{inner}└─ ({} more token(s) in branches not shown)", n.hidden);
    }
}

/// One event as a line: time, type, decision, action, reason.
fn line(e: &Event) -> String {
    let mut s = format!("#{} {} {}", e.seq, e.time, e.kind);
    if let Some(d) = &e.decision {
        let _ = write!(s, " {d}");
    }
    if let Some(a) = &e.action {
        let _ = write!(s, " {a}");
    }
    if let Some(r) = &e.resource
        && e.kind != TOKEN_ISSUED
    {
        let _ = write!(s, " on {r}");
    }
    if let Some(a) = &e.actor {
        let _ = write!(s, " by {a}");
    }
    if let Some(c) = e.count {
        let _ = write!(s, " ({c} reached)");
    }
    if let Some(r) = &e.reason {
        let _ = write!(s, ": {r}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, kind: &str, jti: Option<&str>, parent: Option<&str>, actor: &str) -> Event {
        let mut e = Event::new(kind, format!("2026-11-23T10:00:{seq:02}Z"));
        e.seq = seq;
        e.jti = jti.map(Into::into);
        e.parent = parent.map(Into::into);
        e.actor = Some(actor.into());
        e.subject = Some("usr_alice".into());
        e.resource = Some("https://cal.example.com".into());
        e.scope = Some("read".into());
        e.decision = Some("allow".into());
        e
    }

    #[test]
    fn tokens_hang_under_their_parents_with_their_decisions() {
        let events = vec![
            ev(4, "token.revoked", Some("tok_a"), None, "admin"),
            ev(1, TOKEN_ISSUED, Some("tok_a"), None, "agt_planner"),
            ev(2, TOKEN_ISSUED, Some("tok_b"), Some("tok_a"), "agt_summarizer"),
            ev(3, "check", Some("tok_b"), None, "agt_summarizer"),
            ev(5, "grant.revoked", None, None, "usr_alice"),
        ];
        let t = Trace::build(&events);
        assert_eq!(t.len(), 2);
        assert_eq!(t.roots.len(), 1);
        let root = &t.roots[0];
        assert_eq!(root.issued.jti.as_deref(), Some("tok_a"));
        assert_eq!(root.events.len(), 1);
        assert_eq!(root.children[0].issued.actor.as_deref(), Some("agt_summarizer"));
        assert_eq!(root.children[0].events[0].kind, "check");
        assert_eq!(t.grant_events.len(), 1);
        let text = t.render();
        assert!(text.contains("usr_alice"), "{text}");
        assert!(text.contains("agt_planner -> https://cal.example.com [read] tok_a"), "{text}");
        assert!(text.contains("   └─ agt_summarizer"), "{text}");
    }

    #[test]
    fn an_agents_lifecycle_reaches_the_tokens_it_held() {
        let mut suspended = ev(3, "agent.suspended", None, None, "admin");
        suspended.resource = Some("agt_summarizer".into());
        suspended.count = Some(1);
        let mut a = ev(1, TOKEN_ISSUED, Some("tok_a"), None, "agt_planner");
        a.chain = vec!["agt_planner".into()];
        let mut b = ev(2, TOKEN_ISSUED, Some("tok_b"), Some("tok_a"), "agt_summarizer");
        b.chain = vec!["agt_planner".into(), "agt_summarizer".into()];
        let mut c = ev(4, TOKEN_ISSUED, Some("tok_c"), Some("tok_a"), "agt_summarizer");
        c.chain = b.chain.clone();
        let t = Trace::build(&[a, b, suspended, c]);
        let root = &t.roots[0];
        assert!(root.events.is_empty(), "the planner was not suspended");
        assert_eq!(root.children[0].events[0].kind, "agent.suspended");
        assert!(root.children[1].events.is_empty(), "tok_c was issued after the suspension");
        assert!(t.grant_events.is_empty());
        assert!(t.render().contains("agent.suspended allow on agt_summarizer by admin (1 reached)"), "{}", t.render());
    }

    #[test]
    fn a_forged_chain_ten_thousand_hops_deep_is_cut() {
        let events: Vec<Event> = (0..10_000u64)
            .map(|i| {
                let parent = (i > 0).then(|| format!("tok_{}", i - 1));
                ev(i + 1, TOKEN_ISSUED, Some(&format!("tok_{i}")), parent.as_deref(), "agt_x")
            })
            .collect();
        let t = Trace::build(&events);
        assert_eq!(t.roots.len(), 1);
        assert_eq!(t.len(), MAX_TREE_DEPTH + 1);
        assert!(t.render().lines().count() > MAX_TREE_DEPTH);
    }

    #[test]
    fn forged_cycles_and_orphans_do_not_loop() {
        // tok_x and tok_y claim each other as parent: neither is a root, so
        // neither is drawn, and building terminates.
        let events = vec![
            ev(1, TOKEN_ISSUED, Some("tok_x"), Some("tok_y"), "agt_1"),
            ev(2, TOKEN_ISSUED, Some("tok_y"), Some("tok_x"), "agt_2"),
            ev(3, TOKEN_ISSUED, Some("tok_z"), Some("tok_gone"), "agt_3"),
        ];
        let t = Trace::build(&events);
        assert_eq!(t.roots.len(), 1);
        assert_eq!(t.roots[0].issued.jti.as_deref(), Some("tok_z"));
    }
}
