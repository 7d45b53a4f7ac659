"""The manifests users run, checked as files (the other tests run them): spin.toml and the
SpinKube manifests reference only declared variables, map them once, schedule with six
cron fields, load the component the build produces, admit only the hosts they must, and
the SpinKube files agree with each other and with what the Spin shim can run."""

import re
import tomllib

import yaml

from spin import ROOT, WASM

TEMPLATE = re.compile(r"\{\{\s*([a-z0-9_]+)\s*\}\}")
SPINKUBE = ROOT / "deploy" / "spinkube"
# The triggers SpinKube's containerd shim runs; it refuses an app that declares another.
SHIM_TRIGGERS = {"http", "redis", "sqs", "mqtt", "command"}
# Variables that only the manifest reads (allowed_outbound_hosts), not the component.
MANIFEST_ONLY = {"allowed_endpoint_override"}


def load(path):
    return tomllib.loads((ROOT / path).read_text())


def check_manifest(path):
    """A manifest with the one component every trigger runs, and its variables mapped."""
    manifest = load(path)
    assert manifest["spin_manifest_version"] == 2
    declared = set(manifest["variables"])
    for name, variable in manifest["variables"].items():
        assert "default" in variable, f"{name}: no variable is required (the credentials may come from the platform)"
    [(name, component)] = manifest["component"].items()
    assert name == "concourse-sts"
    assert ((ROOT / path).parent / component["source"]).resolve() == WASM.resolve()
    assert component["key_value_stores"] == ["default"]
    mapped = {}
    for variable, value in component["variables"].items():
        assert value == f"{{{{ {variable} }}}}", f"{variable} is mapped to itself"
        mapped[variable] = value
    assert set(mapped) == declared - MANIFEST_ONLY, "every variable reaches the component"
    used_in_hosts = set()
    for host in component["allowed_outbound_hosts"]:
        used_in_hosts |= set(TEMPLATE.findall(host))
    assert used_in_hosts == {"aws_region", "allowed_endpoint_override", "vault_url"}
    for trigger in manifest["trigger"].values():
        assert all(t["component"] == "concourse-sts" for t in trigger)
    return manifest


def test_spin_toml_maps_the_variables_once_for_both_triggers():
    manifest = check_manifest("spin.toml")
    [cron] = manifest["trigger"]["cron"]
    assert len(cron["cron_expression"].split()) == 6, "seconds first: five fields stop the host"
    assert [h["route"] for h in manifest["trigger"]["http"]] == ["/..."]
    # `spin build` is a plain cargo build (no wasm-opt, no apt-get): it writes the file
    # the component loads.
    build = manifest["component"]["concourse-sts"]["build"]
    assert build["command"] == "cargo build --release --target wasm32-wasip2 -p concourse-sts"
    assert set(build["watch"]) == {"src/**/*.rs", "wit/**/*.wit", "Cargo.toml"}
    secret = {name for name, v in manifest["variables"].items() if v.get("secret")}
    assert secret == {
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "aws_container_authorization_token",
        "admin_token",
        "metrics_token",
        "vault_secret_id",
        "vault_token",
    }


def test_egress_is_aws_the_metadata_endpoints_one_override_and_vault():
    hosts = load("spin.toml")["component"]["concourse-sts"]["allowed_outbound_hosts"]
    for service in ("sts", "secretsmanager", "ssm"):
        for domain in ("amazonaws.com", "amazonaws.com.cn"):
            assert f"https://{service}.{{{{ aws_region }}}}.{domain}" in hosts
    assert {"http://169.254.169.254", "http://169.254.170.2", "http://169.254.170.23"} <= set(hosts)
    assert "{{ allowed_endpoint_override }}" in hosts
    assert "{{ vault_url }}" in hosts
    assert not [h for h in hosts if "127.0.0.1" in h or "localhost" in h], "no loopback in production"
    assert len(hosts) == 11
    variables = load("spin.toml")["variables"]
    override = variables["allowed_endpoint_override"]["default"]
    assert override == "https://sts.amazonaws.com", "the default admits nothing new"
    # An allowed host that renders empty stops Spin: Vault's default is a host under
    # .invalid, which never resolves (RFC 6761) and which the component reads as unset.
    assert variables["vault_url"]["default"] == "https://vault.invalid"


def test_the_spinkube_manifests_copy_the_variables_exactly():
    main = load("spin.toml")
    for copy in ("spin-command.toml", "spin-api.toml"):
        manifest = check_manifest(f"deploy/spinkube/{copy}")
        assert manifest["variables"] == main["variables"], copy
        component = manifest["component"]["concourse-sts"]
        expected = {k: v for k, v in main["component"]["concourse-sts"].items() if k not in ("build", "source")}
        assert {k: v for k, v in component.items() if k != "source"} == expected, copy
    assert load("deploy/spinkube/spin-command.toml")["trigger"] == {"command": [{"component": "concourse-sts"}]}
    assert load("deploy/spinkube/spin-api.toml")["trigger"] == {"http": [{"route": "/...", "component": "concourse-sts"}]}


def test_what_spinkube_runs_declares_only_triggers_its_shim_knows():
    """The shim refuses an app with any other trigger: an API SpinApp built from spin.toml,
    which carries the cron trigger, would never start."""
    for name in ("spin-command.toml", "spin-api.toml"):
        triggers = set(tomllib.loads((SPINKUBE / name).read_text())["trigger"])
        assert triggers <= SHIM_TRIGGERS, f"{name}: {triggers - SHIM_TRIGGERS}"
    assert set(load("spin.toml")["trigger"]) - SHIM_TRIGGERS == {"cron"}, "hence the copies"
    images = {
        "spinapp-api.yaml": "concourse-sts-api",
        "cronjob-rotate.yaml": "concourse-sts-rotate",
    }
    pushed = (ROOT / "deploy" / "README.md").read_text()
    for manifest, image in (("spin-api.toml", images["spinapp-api.yaml"]), ("spin-command.toml", images["cronjob-rotate.yaml"])):
        assert f"spin registry push -f deploy/spinkube/{manifest} ghcr.io/YOUR-ORG/{image}:" in pushed
    app = yaml.safe_load((SPINKUBE / "spinapp-api.yaml").read_text())
    assert app["spec"]["image"].split("/")[-1].split(":")[0] == images["spinapp-api.yaml"]
    job = yaml.safe_load((SPINKUBE / "cronjob-rotate.yaml").read_text())
    [container] = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["image"].split("/")[-1].split(":")[0] == images["cronjob-rotate.yaml"]


def seconds(text):
    """A duration variable's value in seconds: a bare number, or `3m`/`90s`."""
    match = re.fullmatch(r"(\d+)([smh]?)", text)
    assert match, text
    return int(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def test_the_cronjobs_deadline_follows_tick_budget():
    """A pod killed at its deadline must have had the whole budget, and the longest an
    account's writes go on once started (three attempts of request_timeout, behind the
    paced writes of the other running accounts, with backoff), plus time to start: and it
    must end before the next run is due."""
    job = yaml.safe_load((SPINKUBE / "cronjob-rotate.yaml").read_text())
    spec = job["spec"]["jobTemplate"]["spec"]
    [container] = spec["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    budget = seconds(env["SPIN_VARIABLE_TICK_BUDGET"])
    timeout = seconds(env["SPIN_VARIABLE_REQUEST_TIMEOUT"])
    # The component's defaults: 32 accounts at once, 4 writes each at most, 40 a second.
    queue = 32 * 4 / 40
    writing_window = 3 * (timeout + queue) + 1 + 2
    startup = 30
    assert spec["activeDeadlineSeconds"] >= budget + writing_window + startup
    assert spec["activeDeadlineSeconds"] < 300, "under the five-minute schedule"
    assert job["spec"]["schedule"] == "*/5 * * * *"


def test_the_kubernetes_files_agree():
    secrets = {d["metadata"]["name"]: d for d in yaml.safe_load_all((SPINKUBE / "runtime-config-secret.yaml").read_text())}
    runtime_config = tomllib.loads(secrets["concourse-sts-runtime-config"]["stringData"]["runtime-config.toml"])
    assert runtime_config["key_value_store"]["default"]["type"] == "redis"
    app = yaml.safe_load((SPINKUBE / "spinapp-api.yaml").read_text())
    assert app["spec"]["runtimeConfig"]["loadFromSecret"] == "concourse-sts-runtime-config"
    token = next(v for v in app["spec"]["variables"] if v["name"] == "admin_token")
    assert token["valueFrom"]["secretKeyRef"]["name"] in secrets
    job = yaml.safe_load((SPINKUBE / "cronjob-rotate.yaml").read_text())
    assert len(job["spec"]["schedule"].split()) == 5
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "wasmtime-spin-v2"
    assert pod["volumes"][0]["secret"]["secretName"] == "concourse-sts-runtime-config"
    assert job["spec"]["concurrencyPolicy"] == "Forbid"


def test_the_local_runtime_config_leaves_the_default_store_to_spin():
    # With no [key_value_store.default] table, Spin keeps the store under --state-dir (or
    # .spin/ beside spin.toml); a `type = "spin"` table's path would ignore --state-dir.
    config = load("runtime-config.toml")
    assert "key_value_store" not in config
    text = (ROOT / "runtime-config.toml").read_text()
    assert '# [key_value_store.default]\n# type = "redis"\n# url = "redis://' in text


def test_the_prometheus_rule_is_the_rules_file_and_names_only_exposed_series():
    """deploy/prometheus: the PrometheusRule carries exactly the plain rules file's
    groups, and every series its expressions use is one /metrics exposes (its name is
    in src/metrics.rs, whose unit tests check the exposition)."""
    prometheus = ROOT / "deploy" / "prometheus"
    rules = yaml.safe_load((prometheus / "concourse-sts-rules.yaml").read_text())
    operator = yaml.safe_load((prometheus / "prometheusrule.yaml").read_text())
    assert (operator["apiVersion"], operator["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert operator["spec"] == rules
    exposed = set(re.findall(r'"((?:account|team|last_tick|lease|rotations|failures|aws)_[a-z_]*)"', (ROOT / "src" / "metrics.rs").read_text()))
    used = set()
    for rule in rules["groups"][0]["rules"]:
        used |= set(re.findall(r"concourse_sts_([a-z_]+)", rule["expr"]))
        for annotation in ("summary", "description", "runbook"):
            assert annotation in rule["annotations"], (rule["alert"], annotation)
        if "account" in rule["expr"]:
            assert "{{ $labels.account }}" in rule["annotations"]["description"], rule["alert"]
    assert used and used <= exposed, used - exposed
