//! `/openapi.json` against the live server with schemathesis (PyPI), every check: requests
//! valid by the document are accepted, invalid ones refused, answers match their schemas and
//! statuses, a method a path lacks gets 405 with `Allow`, auth is enforced. A seeded run of
//! bounded size, so it takes well under a minute and finds the same things each time.
//! tests/schemathesis.toml names the protocol rules no schema can state and how the run
//! treats each.

mod common;

use std::path::Path;
use std::process::Command;

use common::{tool_available, TestServer};

/// Test cases per operation and phase: enough to reach every documented status.
const MAX_EXAMPLES: &str = "100";

#[test]
fn schemathesis_finds_no_failure_with_every_check() {
    let mut probe = Command::new("schemathesis");
    probe.arg("--version");
    if !tool_available(
        "schemathesis_finds_no_failure_with_every_check",
        "schemathesis",
        probe,
    ) {
        return;
    }
    let server = TestServer::start();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    // schemathesis keeps files (reports, hypothesis' database) in its working directory.
    let work = tempfile::tempdir().expect("tempdir");
    let out = Command::new("schemathesis")
        .current_dir(work.path())
        .arg("--config-file")
        .arg(&config)
        .arg("--no-color")
        .arg("run")
        .arg(server.url("/openapi.json"))
        .args(["--checks", "all"])
        // Two deletions keep what they delete readable, by design: a deleted message is a
        // tombstone GET answers with `deleted: true`, and a closed room's history stays
        // readable. use_after_free expects 404 after a DELETE.
        .args(["--exclude-checks", "use_after_free"])
        .arg("--header")
        .arg(format!("Authorization: Bearer {}", server.api_key))
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--seed", "17", "--workers", "1"])
        .args(["--generation-database", "none"])
        .args(["--request-timeout", "10"])
        .output()
        .expect("run schemathesis");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis failed:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for section in ["FAILURES", "ERRORS"] {
        assert!(!report.contains(section), "{report}");
    }
}
