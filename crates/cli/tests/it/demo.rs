//! `mandate demo` tells the whole story and exits 0.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn the_demo_runs_every_step_and_exits_zero() -> anyhow::Result<()> {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_mandate")).arg("demo").output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for step in 1..=10 {
        assert!(stdout.contains(&format!("\n{step}. ")), "step {step} missing:\n{stdout}");
    }
    for expected in [
        "approved_by policy",
        "Alice                  approves",
        "201: created",
        "already appears in the delegation chain",
        "insufficient_scope",
        "none names it: it is decided as its parent",
        "(the agent), scope calendar:read",
        "another branch's CI token 400 invalid_grant",
        "hash chain intact",
        "every step went as told",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing:\n{stdout}");
    }
    assert!(started.elapsed() < Duration::from_secs(60), "the demo took {:?}", started.elapsed());
    Ok(())
}
