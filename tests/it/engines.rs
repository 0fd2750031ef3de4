//! Choosing the embedded engine: `--engine` for a new store, detection for
//! an existing one, and `casebook copy` between sled and segment stores.

use crate::cli::Casebook;

/// `verify --format json` of the store in `dir`.
fn verify(dir: &str) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_casebook"))
        .args(["--data", dir, "verify", "--format", "json"])
        .env_remove("CASEBOOK_DATA")
        .env_remove("CASEBOOK_ENGINE")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run casebook");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn demo(cb: &Casebook, engine: &str) {
    cb.run(&["--engine", engine, "demo", "--pupils", "4"]).ok();
}

#[test]
fn engines_a_new_store_gets_the_engine_asked_for_and_keeps_it() {
    for engine in ["sled", "segment"] {
        let cb = Casebook::new();
        demo(&cb, engine);
        let marker = cb.data().join("segment-store").exists();
        assert_eq!(marker, engine == "segment", "{engine}");
        // Detected from then on, with or without the flag.
        let (events, _) = cb.fingerprint();
        assert!(events > 1_000, "{engine}: {events} events");
        cb.run(&["--engine", engine, "timeline", "P00001"]).ok();
        let other = if engine == "sled" { "segment" } else { "sled" };
        let refused = cb.run(&["--engine", other, "verify"]);
        assert_eq!(refused.code, 2, "{engine}: {}", refused.stderr);
        assert!(
            refused.stderr.contains(&format!("is a {engine} store")),
            "{}",
            refused.stderr
        );
    }
}

#[test]
fn engines_copy_moves_a_log_between_sled_and_segment_unchanged() {
    let sled = Casebook::new();
    demo(&sled, "sled");
    let before = sled.fingerprint();
    let seg = sled.path().join("segment");
    let back = sled.path().join("back");
    let (seg_s, back_s) = (seg.to_str().unwrap(), back.to_str().unwrap());
    let from = sled.data();
    let from = from.to_str().unwrap();
    let run = sled.run(&["--engine", "segment", "copy", "--from", from, "--to", seg_s]);
    let run = run.ok();
    assert!(run.stdout.contains("both verify"), "{}", run.stdout);
    assert!(seg.join("segment-store").exists());
    sled.run(&["--engine", "sled", "copy", "--from", seg_s, "--to", back_s])
        .ok();
    for dir in [seg_s, back_s] {
        let v = verify(dir);
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["events"].as_u64(), Some(before.0), "{dir}");
        assert_eq!(v["head"].as_str(), Some(before.1.as_str()), "{dir}");
    }
    // A destination that already holds events is refused, unchanged.
    let again = sled.run(&["copy", "--from", from, "--to", seg_s]);
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(again.stderr.contains("already holds"), "{}", again.stderr);
    assert_eq!(verify(seg_s)["events"].as_u64(), Some(before.0));
}

#[test]
fn engines_engine_and_database_url_do_not_mix() {
    let cb = Casebook::new();
    let run = cb.run(&[
        "--engine",
        "segment",
        "--database-url",
        "postgres://nobody@127.0.0.1:1/none",
        "verify",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("--engine segment applies to an embedded store"),
        "{}",
        run.stderr
    );
}
