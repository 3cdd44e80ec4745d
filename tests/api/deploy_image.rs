//! The container image, built in CI: `deploy/image/build-test.sh` makes a
//! Debian base with mmdebstrap, imports it into podman and builds
//! `deploy/Dockerfile`'s `runtime-prebuilt` target around the binary cargo
//! built; containers cannot run here, so the test runs the binary from the
//! exported image file system (chroot, read-only, as the image's numeric
//! user) against the suite's Redis and signs in through the dev IdP.

use crate::support::browser::Browser;
use crate::support::redis;
use reqwest::StatusCode;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

struct Exported {
    dir: PathBuf,
}

impl Drop for Exported {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn build_image() -> Exported {
    let dir = std::env::temp_dir().join(format!("portcullis-image-{}", portcullis::tokens::random_token(8)));
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(Path::new(ROOT).join("deploy/image/build-test.sh"))
        .arg(env!("CARGO_BIN_EXE_portcullis"))
        .arg(&dir)
        .output()
        .expect("run deploy/image/build-test.sh");
    assert!(
        out.status.success(),
        "building the image failed (scripts/setup-system test installs podman and mmdebstrap):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "image built and exported in {:?}:\n{}",
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr)
    );
    Exported { dir }
}

#[tokio::test]
async fn the_image_builds_and_its_binary_signs_in_as_the_numeric_user() {
    let image = build_image();
    let rootfs = image.dir.join("rootfs");
    let inspect: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(image.dir.join("image.json")).unwrap()).unwrap();
    let config = &inspect[0]["Config"];
    assert_eq!(config["User"], "10001:10001", "a numeric user Kubernetes can check");
    assert_eq!(config["Entrypoint"], serde_json::json!(["/usr/local/bin/portcullis"]));
    assert_eq!(config["Cmd"], serde_json::json!(["serve"]));
    {
        use std::os::unix::fs::MetadataExt;
        let bin = std::fs::metadata(rootfs.join("usr/local/bin/portcullis")).unwrap();
        assert_eq!(bin.uid(), 0, "root owns the binary");
        assert_eq!(bin.mode() & 0o022, 0, "nobody else may change it");
        let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
        assert!(
            passwd.lines().any(|l| l.starts_with("portcullis:x:10001:10001:")),
            "{passwd}"
        );
    }

    // The image's environment, then what this run needs.
    let port = redis::free_port();
    let mut env: Vec<(String, String)> = config["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.as_str()?.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    for (k, v) in [
        ("PORTCULLIS_LISTEN", format!("127.0.0.1:{port}")),
        ("PORTCULLIS_PUBLIC_URL", format!("http://127.0.0.1:{port}")),
        ("PORTCULLIS_REDIS_URL", redis::url()),
        ("PORTCULLIS_DEV", "true".into()),
        // Dev mode on a Redis store is refused unless forced: this is a test.
        ("PORTCULLIS_DEV_FORCE", "true".into()),
        ("PORTCULLIS_ADMIN_TOKEN", "image-test-admin-token-0123456789".into()),
        // The test gateways' master key: they share the suite's Redis (and
        // its signing keyset) with this one.
        ("PORTCULLIS_MASTER_KEY", crate::support::app::TEST_MASTER_KEY.into()),
        ("PORTCULLIS_LOG_FORMAT", "text".into()),
    ] {
        env.retain(|(name, _)| name != k);
        env.push((k.to_owned(), v));
    }
    let log = image.dir.join("gateway.log");
    // A private mount namespace where the image's file system is read-only
    // (as with readOnlyRootFilesystem), then chroot and drop to 10001:10001.
    let script = format!(
        "set -e; mount --bind {r} {r}; mount -o remount,bind,ro {r}; exec chroot {r} setpriv --reuid 10001 --regid 10001 --clear-groups --inh-caps=-all --no-new-privs /usr/local/bin/portcullis serve",
        r = rootfs.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::piped());
    let child = Running(cmd.spawn().expect("unshare (util-linux) runs the image's binary"));
    let pid = child.0.id();
    let base = url::Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(base.join("readyz").unwrap()).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the image's binary did not become ready:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The same process, now the gateway, runs as 10001 with no capabilities.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(field("Uid:"), "10001 10001 10001 10001");
    assert_eq!(field("Gid:"), "10001 10001 10001 10001");
    assert_eq!(field("CapEff:"), "0000000000000000");

    // A sign-in: the demo app through the dev IdP, on the suite's Redis.
    let mut browser = Browser::new();
    let login = browser.get(&base.join("demo/login").unwrap()).await;
    assert!(
        login.url.path().starts_with("/dev/demo/dev/login"),
        "landed on {}",
        login.url
    );
    let done = browser
        .fill_and_submit(&login, None, &[("email", "ada@demo.example"), ("given_name", "Ada")])
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(done.url.path().starts_with("/demo/callback"));
    assert!(
        done.body.contains("&quot;email&quot;: &quot;ada@demo.example&quot;"),
        "{}",
        done.body
    );

    // And it drains and exits cleanly on SIGTERM.
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let mut child = child;
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s.code();
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, Some(0), "{}", std::fs::read_to_string(&log).unwrap_or_default());
}
