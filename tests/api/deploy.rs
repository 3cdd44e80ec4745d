//! `deploy/` as an operator uses it: the Kustomize overlays render with
//! `kubectl kustomize` and pass a strict schema validator
//! (`kubernetes-validate`), with what the issue asks of them (numeric
//! non-root user, probes on paths the router serves, one image name, a
//! configuration the binary accepts); the compose file; the systemd unit
//! (hardened, and its pre-start check survives an unreachable IdP); the
//! Dockerfile's shape.

use crate::support::app::{spawn_app, AppOptions};
use crate::support::redis;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The image every manifest names (`images:` in the Kustomize base).
const IMAGE: &str = "registry.example.com/platform/portcullis";

fn python() -> PathBuf {
    let python = std::env::var("PORTCULLIS_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("PORTCULLIS_TEST_PYTHON is not set: run scripts/test (it makes a venv with tests/peers/requirements.txt, including kubernetes-validate)")
    });
    PathBuf::from(python)
}

/// Parses YAML (one or more documents) into JSON with PyYAML.
fn yaml_documents(text: &str) -> Vec<Value> {
    let mut child = Command::new(python())
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d is not None]))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run PORTCULLIS_TEST_PYTHON");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "YAML does not parse (PyYAML comes with kubernetes-validate: scripts/test installs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `kubectl kustomize DIR`, validated strictly; the rendered objects.
fn render(dir: &str) -> Vec<Value> {
    let path = Path::new(ROOT).join(dir);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("kubectl is needed to render the Kustomize overlays ({e}); install kubectl (it bundles kustomize)")
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = std::env::temp_dir().join(format!(
        "portcullis-kustomize-{}.yaml",
        portcullis::tokens::random_token(8)
    ));
    std::fs::write(&file, &out.stdout).unwrap();
    let check = Command::new(python())
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "kubernetes-validate --strict refused {dir}:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    std::fs::remove_file(file).ok();
    yaml_documents(&String::from_utf8(out.stdout).unwrap())
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn gateway(objects: &[Value]) -> &Value {
    find(objects, "Deployment", "portcullis").expect("the portcullis Deployment")
}

fn container(deployment: &Value) -> &Value {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "portcullis")
        .expect("the portcullis container")
}

fn env_of(container: &Value) -> BTreeMap<String, Option<String>> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn master_key_file() -> PathBuf {
    crate::serving::master_key_file()
}

/// Checks that `config` (portcullis.toml text) with the environment a
/// manifest gives (secrets replaced by test values) is a configuration the
/// binary accepts; returns the settings.
fn accepted(config: &str, env: &BTreeMap<String, Option<String>>) -> portcullis::config::Settings {
    let dir = std::env::temp_dir().join(format!("portcullis-deploycfg-{}", portcullis::tokens::random_token(8)));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("portcullis.toml");
    std::fs::write(&file, config).unwrap();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in env {
        let v = match (k.as_str(), v) {
            ("PORTCULLIS_CONFIG", _) => continue,
            ("PORTCULLIS_ADMIN_TOKEN", _) => "a-test-admin-token-0123456789".to_owned(),
            ("PORTCULLIS_REDIS_URL", _) => "redis://127.0.0.1:6379".to_owned(),
            ("PORTCULLIS_MASTER_KEY_FILE", _) => master_key_file().display().to_string(),
            ("PORTCULLIS_MASTER_KEY", _) => "k1:dHJpYWwtb25seS1ub3Qtc2VjcmV0LTAxMjM0NTY3ODk=".to_owned(),
            // A file the platform mounts; its contents are the store's business.
            ("PORTCULLIS_REDIS_CA_FILE", _) => continue,
            (_, Some(v)) => v.clone(),
            (_, None) => panic!("{k} comes from a secret the test does not know"),
        };
        vars.insert(k.clone(), v);
    }
    let settings = portcullis::config::Settings::load(Some(&file), &vars).unwrap_or_else(|e| panic!("{e}"));
    settings.validate("manifest").unwrap_or_else(|e| panic!("{e}"));
    std::fs::remove_dir_all(dir).ok();
    settings
}

/// What every overlay must keep from the base.
async fn check_common(objects: &[Value], router_paths_checked: &mut bool) {
    let deployment = gateway(objects);
    let pod = &deployment["spec"]["template"]["spec"];
    let c = container(deployment);
    for ctx in [&pod["securityContext"], &c["securityContext"]] {
        assert_eq!(ctx["runAsNonRoot"], true);
        let uid = ctx["runAsUser"]
            .as_u64()
            .expect("runAsUser is a number (the kubelet cannot check a name)");
        assert_eq!(uid, 10001, "the image's USER");
        assert_eq!(ctx["seccompProfile"]["type"], "RuntimeDefault");
    }
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(
        c["image"].as_str().unwrap(),
        format!("{IMAGE}:{}", env!("CARGO_PKG_VERSION")),
        "one image name, tagged with the crate's version"
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["startupProbe"]["httpGet"]["path"], "/healthz");
    assert!(c["resources"]["requests"]["cpu"].is_string() && c["resources"]["limits"]["memory"].is_string());
    // Probe ports are named ports of the container.
    let ports: Vec<&str> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let port = c[probe]["httpGet"]["port"].as_str().unwrap();
        assert!(
            ports.contains(&port),
            "{probe} uses port {port} the container does not name"
        );
    }
    // The probe paths exist in our router (once is enough).
    if !*router_paths_checked {
        let app = spawn_app(AppOptions {
            redis_url: Some(redis::url()),
            ..AppOptions::default()
        })
        .await;
        for path in ["/healthz", "/readyz"] {
            let status = app.client.get(app.url(path)).send().await.unwrap().status();
            assert_eq!(status, 200, "{path}");
        }
        *router_paths_checked = true;
    }

    // The configuration the pod runs with is one the binary accepts, and the
    // pod's grace outlasts the drain.
    let config_name = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "config")
        .and_then(|v| v["configMap"]["name"].as_str())
        .expect("the config volume")
        .to_owned();
    let config = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == config_name.as_str())
        .expect("the ConfigMap the pod mounts")["data"]["portcullis.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    let env = env_of(c);
    assert_eq!(
        env.get("PORTCULLIS_CONFIG").cloned().flatten().as_deref(),
        Some("/etc/portcullis/portcullis.toml")
    );
    assert!(env.contains_key("PORTCULLIS_MASTER_KEY_FILE"));
    let settings = accepted(&config, &env);
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > settings.server.shutdown_grace_secs + settings.server.shutdown_delay_secs,
        "terminationGracePeriodSeconds {grace} must outlast the drain"
    );

    // Every Service selects the gateway's pods and targets a named port.
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for name in ["portcullis", "portcullis-admin"] {
        let svc = find(objects, "Service", name).unwrap_or_else(|| panic!("Service {name}"));
        for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
            assert_eq!(&labels[k], v, "Service {name} selects {k}");
        }
        let target = svc["spec"]["ports"][0]["targetPort"].as_str().unwrap();
        assert!(ports.contains(&target), "Service {name} targets {target}");
    }
    assert!(find(objects, "PodDisruptionBudget", "portcullis").is_some());
    assert!(find(objects, "NetworkPolicy", "portcullis").is_some());
}

#[tokio::test]
async fn the_kustomize_overlays_render_validate_and_keep_the_promises() {
    let mut checked = false;
    let base = render("deploy/kubernetes/base");
    check_common(&base, &mut checked).await;
    assert!(find(&base, "HorizontalPodAutoscaler", "portcullis").is_some());

    let prod = render("deploy/kubernetes/overlays/production");
    check_common(&prod, &mut checked).await;
    let d = gateway(&prod);
    assert!(d["spec"]["replicas"].as_u64().unwrap() >= 3);
    let hpa = find(&prod, "HorizontalPodAutoscaler", "portcullis").expect("an HPA");
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 3);
    let pod = &d["spec"]["template"]["spec"];
    assert!(!pod["topologySpreadConstraints"].as_array().unwrap().is_empty());
    assert!(pod["affinity"]["podAntiAffinity"].is_object());
    let env = env_of(container(d));
    assert_eq!(
        env.get("PORTCULLIS_ADMIN_LISTEN").cloned().flatten().as_deref(),
        Some("0.0.0.0:9090")
    );
    assert!(env.contains_key("PORTCULLIS_REDIS_CA_FILE"), "TLS to Redis");
    // Behind the ingress: its X-Forwarded-For is trusted, and only it
    // reaches the public port, so no other caller can pick its bucket.
    let proxies = env
        .get("PORTCULLIS_TRUSTED_PROXIES")
        .cloned()
        .flatten()
        .unwrap_or_default();
    assert!(!proxies.is_empty(), "the ingress is a trusted proxy");
    let public = find(&prod, "NetworkPolicy", "portcullis").unwrap();
    let rules = public["spec"]["ingress"].as_array().unwrap();
    assert!(
        rules
            .iter()
            .filter(|r| r["ports"][0]["port"] == "http")
            .all(|r| r["from"]
                .as_array()
                .is_some_and(|from| !from.is_empty() && from.iter().all(|f| f["namespaceSelector"].is_object()))),
        "the public port only from the ingress controller's namespace: {public}"
    );
    let admin = find(&prod, "Service", "portcullis-admin").unwrap();
    assert_eq!(admin["spec"]["ports"][0]["targetPort"], "admin");
    let policy = find(&prod, "NetworkPolicy", "portcullis-admin").expect("the admin port is fenced");
    assert_eq!(policy["spec"]["ingress"][0]["ports"][0]["port"], "admin");
    assert_eq!(
        find(&prod, "PodDisruptionBudget", "portcullis").unwrap()["spec"]["minAvailable"],
        2
    );

    let trial = render("deploy/kubernetes/overlays/trial");
    check_common(&trial, &mut checked).await;
    assert_eq!(gateway(&trial)["spec"]["replicas"], 1);
    assert!(find(&trial, "HorizontalPodAutoscaler", "portcullis").is_none());
    let redis = find(&trial, "Deployment", "portcullis-redis").expect("the trial's Redis");
    assert_eq!(redis["spec"]["replicas"], 1);
    assert!(find(&trial, "Service", "portcullis-redis").is_some());
    let secret = find(&trial, "Secret", "portcullis-secrets").expect("the trial's secrets");
    use base64::Engine;
    let url = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["redis-url"].as_str().unwrap())
        .unwrap();
    assert_eq!(String::from_utf8(url).unwrap(), "redis://portcullis-redis:6379");
}

#[test]
fn the_compose_file_runs_the_gateway_on_its_redis() {
    let text = std::fs::read_to_string(Path::new(ROOT).join("deploy/compose.yaml")).unwrap();
    let doc = yaml_documents(&text).remove(0);
    let services = doc["services"].as_object().unwrap();
    assert!(services.contains_key("redis") && services.contains_key("portcullis"));
    let gw = &services["portcullis"];
    assert_eq!(gw["build"]["dockerfile"], "deploy/Dockerfile");
    assert!(Path::new(ROOT)
        .join("deploy")
        .join(gw["build"]["context"].as_str().unwrap())
        .join("deploy/Dockerfile")
        .exists());
    assert_eq!(gw["read_only"], true);
    assert_eq!(gw["depends_on"]["redis"]["condition"], "service_healthy");
    let env: BTreeMap<String, Option<String>> = gw["environment"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().map(str::to_owned)))
        .collect();
    assert_eq!(
        env["PORTCULLIS_REDIS_URL"].as_deref(),
        Some("redis://redis:6379"),
        "the gateway uses the compose Redis"
    );
    let config = std::fs::read_to_string(Path::new(ROOT).join("config/portcullis.toml")).unwrap();
    let settings = accepted(&config, &env);
    assert!(settings.server.admin_listen.is_some());
}

#[test]
fn the_systemd_unit_is_hardened_and_its_pre_start_check_survives_an_unreachable_idp() {
    let unit = std::fs::read_to_string(Path::new(ROOT).join("deploy/portcullis.service")).unwrap();
    let values = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_owned)
            .collect()
    };
    for (key, want) in [
        ("NoNewPrivileges", "true"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "true"),
        ("PrivateTmp", "true"),
        ("PrivateDevices", "true"),
        ("RestrictSUIDSGID", "true"),
        ("MemoryDenyWriteExecute", "true"),
        ("CapabilityBoundingSet", ""),
        ("User", "portcullis"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(values(key), [want], "{key}");
    }
    // systemd itself accepts every directive (the binary under test in
    // place of the installed one, which verify looks for).
    let dir = std::env::temp_dir().join(format!("portcullis-unit-{}", portcullis::tokens::random_token(8)));
    std::fs::create_dir_all(dir.join("tenants")).unwrap();
    let copy = dir.join("portcullis.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/portcullis", env!("CARGO_BIN_EXE_portcullis")),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze is needed ({e}): install the Debian package systemd"));
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let stop: u64 = values("TimeoutStopSec")[0].parse().unwrap();
    assert!(stop > portcullis::config::Settings::default().server.shutdown_grace_secs);

    // Run the pre-start command as systemd would (the binary under test in
    // place of /usr/local/bin/portcullis), against a tenant file whose IdP
    // cannot be reached.
    let pre = values("ExecStartPre");
    assert_eq!(pre.len(), 1);
    let mut argv = pre[0].split_whitespace();
    assert_eq!(argv.next(), Some("/usr/local/bin/portcullis"));
    std::fs::write(
        dir.join("portcullis.toml"),
        format!(
            "tenants_dir = {:?}\n[server]\npublic_url = \"https://sso.example.com\"\n",
            dir.join("tenants")
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("tenants/acme.toml"),
        "id = \"acme\"\n[[connections]]\nid = \"okta\"\nkind = \"saml\"\nmetadata_url = \"https://idp.acme.invalid/metadata\"\n",
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PORTCULLIS_")) {
        cmd.env_remove(k);
    }
    let out = cmd
        .args(argv)
        .env("PORTCULLIS_CONFIG", dir.join("portcullis.toml"))
        .env("PORTCULLIS_REDIS_URL", "redis://127.0.0.1:6379")
        .env("PORTCULLIS_MASTER_KEY_FILE", master_key_file())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ExecStartPre failed on an unreachable IdP:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn the_dockerfile_builds_a_numeric_non_root_runtime_with_a_prebuilt_target() {
    let file = std::fs::read_to_string(Path::new(ROOT).join("deploy/Dockerfile")).unwrap();
    for stage in [
        "AS build",
        "FROM ${BASE} AS runtime-base",
        "FROM runtime-base AS runtime-prebuilt",
        "FROM runtime-base AS runtime",
    ] {
        assert!(file.contains(stage), "missing {stage:?}");
    }
    assert!(file.contains("ARG BASE=debian:bookworm-slim"));
    assert!(file.contains("USER 10001:10001"), "a numeric USER");
    assert!(file.contains("libxmlsec1-openssl"));
    // The default target (the last stage) is the full build.
    let last = file.lines().rfind(|l| l.starts_with("FROM ")).unwrap();
    assert_eq!(last, "FROM runtime-base AS runtime");
    let ignore = std::fs::read_to_string(Path::new(ROOT).join(".dockerignore")).unwrap();
    for entry in [".git", "target", ".tmp", "tests/peers/node_modules"] {
        assert!(ignore.lines().any(|l| l == entry), ".dockerignore lacks {entry}");
    }
    assert!(
        !Path::new(ROOT).join("deploy/kubernetes.yaml").exists(),
        "the old manifest is replaced by deploy/kubernetes/"
    );
}
