//! The command line: `check-config` reports every problem at once, with the
//! file and field; `--version` prints the version.

use std::process::Command;

fn portcullis() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PORTCULLIS_")) {
        c.env_remove(k);
    }
    c
}

fn scratch() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-cli-{}", portcullis::tokens::random_token(8)));
    std::fs::create_dir_all(dir.join("tenants")).unwrap();
    dir
}

#[test]
fn version() {
    let out = portcullis().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn the_shipped_example_config_is_valid() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/portcullis.toml");
    // The example names a Redis store, so it needs a master key; the key
    // comes from the environment, as a deployment's would.
    let out = portcullis()
        .args(["--config", config, "check-config"])
        .env("PORTCULLIS_MASTER_KEY", crate::support::app::TEST_MASTER_KEY)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn check_config_reports_every_problem_with_file_and_field() {
    let dir = scratch();
    let config = dir.join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            "tenants_dir = {:?}\n[server]\nlisten = \"nowhere\"\npublic_url = \"ftp://x\"\n[tokens]\nalgorithm = \"HS256\"\n",
            dir.join("tenants")
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("tenants/bad.toml"),
        "id = \"Bad Id\"\ndomains = [\"not a domain\"]\n",
    )
    .unwrap();
    std::fs::write(dir.join("tenants/typo.toml"), "id = \"ok\"\ndomain = [\"x.test\"]\n").unwrap();
    let out = portcullis()
        .arg("--config")
        .arg(&config)
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "server.listen",
        "server.public_url",
        "tokens.algorithm",
        "bad.toml: id",
        "bad.toml: domains[0]",
        "typo.toml",
        "domain",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn unknown_keys_are_refused() {
    let dir = scratch();
    let config = dir.join("portcullis.toml");
    std::fs::write(&config, "[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap();
    let out = portcullis()
        .arg("--config")
        .arg(&config)
        .arg("check-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen_port"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn environment_overrides_are_validated() {
    let out = portcullis()
        .env("PORTCULLIS_PUBLIC_URL", "not a url")
        .env("PORTCULLIS_ADMIN_TOKEN", "short")
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.public_url") && err.contains("admin.token"),
        "{err}"
    );
    assert!(!err.contains("short\""), "the admin token must not be echoed: {err}");
}

/// `portcullis import` of a backup holding a SAML connection whose
/// `metadata_url` carries a password (written before set-up refused one)
/// restores nothing: exit 1 naming the record and
/// `saml.metadata_url_credentials`, never the password.
#[test]
fn import_refuses_a_backup_whose_metadata_url_carries_a_password() {
    let dir = scratch();
    let backup = dir.join("backup.json");
    let records = serde_json::json!([
        {"tag": "g:tenants", "name": "index", "set": ["acme"]},
        {"tag": "t:acme:config", "name": "tenant", "json": {"id": "acme"}},
        {"tag": "t:acme:config", "name": "connections", "set": ["okta"]},
        {"tag": "t:acme:config", "name": "connection:okta", "json": {"id": "okta", "tenant": "acme",
            "kind": "saml", "metadata_url": "https://svc:cli-pass-s3cret@idp.acme.test/metadata"}},
    ]);
    let doc = serde_json::json!({"format": "portcullis-backup", "version": 1,
        "created_at": "2026-11-30T17:00:00Z", "sealed_with": [], "plaintext_secrets": 0, "records": records});
    std::fs::write(&backup, doc.to_string()).unwrap();
    // One process on memory: what matters is what import refuses.
    let out = portcullis()
        .env("PORTCULLIS_STORE_BACKEND", "memory")
        .arg("import")
        .arg(&backup)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("nothing was restored"), "{err}");
    assert!(
        err.contains("t:acme:config/connection:okta") && err.contains("saml.metadata_url_credentials"),
        "{err}"
    );
    assert!(!err.contains("cli-pass-s3cret"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}
