"""The manifests users run, checked as files (the other tests run them): spin.toml and the
command-trigger manifest reference only declared variables, schedule with six cron
fields, load the component the build produces, and the SpinKube files agree."""

import re
import tomllib

import yaml

from spin import ROOT, WASM

TEMPLATE = re.compile(r"\{\{\s*([a-z0-9_]+)\s*\}\}")


def load(path):
    return tomllib.loads((ROOT / path).read_text())


def check_manifest(path):
    manifest = load(path)
    assert manifest["spin_manifest_version"] == 2
    declared = set(manifest["variables"])
    for name, variable in manifest["variables"].items():
        assert "default" in variable or variable.get("required"), name
    used = set()
    for name, component in manifest["component"].items():
        source = (ROOT / path).parent / component["source"]
        assert source.resolve() == WASM.resolve(), name
        assert component["key_value_stores"] == ["default"]
        for value in component["variables"].values():
            assert set(TEMPLATE.findall(value)) <= declared
            used |= set(TEMPLATE.findall(value))
        # Every setting the engine reads reaches every component that can rotate.
        assert declared - {"admin_token"} <= set(component["variables"]), name
        for host in component["allowed_outbound_hosts"]:
            assert re.fullmatch(r"https?://[a-z0-9.*{}_ -]+(:(\*|\d+))?", host), host
            assert set(TEMPLATE.findall(host)) <= declared
    assert used == declared, f"declared but unused: {declared - used}"
    return manifest


def test_spin_toml_is_a_complete_spin_3_manifest():
    manifest = check_manifest("spin.toml")
    [cron] = manifest["trigger"]["cron"]
    assert cron["component"] == "concourse-sts"
    assert len(cron["cron_expression"].split()) == 6, "seconds first: five fields stop the host"
    [http] = manifest["trigger"]["http"]
    assert http["component"] == "concourse-sts-api"
    # `spin build` is a plain cargo build (no wasm-opt, no apt-get): it writes the file
    # both components load.
    build = manifest["component"]["concourse-sts"]["build"]
    assert build["command"] == "cargo build --release --target wasm32-wasip2 -p concourse-sts"
    assert set(build["watch"]) == {"src/**/*.rs", "wit/**/*.wit", "Cargo.toml"}
    assert "build" not in manifest["component"]["concourse-sts-api"]
    secret = {name for name, v in manifest["variables"].items() if v.get("secret")}
    assert {"aws_access_key_id", "aws_secret_access_key", "aws_session_token", "admin_token"} <= secret


def test_the_command_manifest_runs_the_same_component_with_the_same_variables():
    command = check_manifest("deploy/spinkube/spin-command.toml")
    main = load("spin.toml")
    main["variables"].pop("admin_token")
    assert command["variables"] == main["variables"]
    assert command["trigger"] == {"command": [{"component": "concourse-sts"}]}


def test_the_kubernetes_files_agree():
    spinkube = ROOT / "deploy" / "spinkube"
    secrets = {d["metadata"]["name"]: d for d in yaml.safe_load_all((spinkube / "runtime-config-secret.yaml").read_text())}
    runtime_config = tomllib.loads(secrets["concourse-sts-runtime-config"]["stringData"]["runtime-config.toml"])
    assert runtime_config["key_value_store"]["default"]["type"] == "redis"
    app = yaml.safe_load((spinkube / "spinapp-api.yaml").read_text())
    assert app["spec"]["runtimeConfig"]["loadFromSecret"] == "concourse-sts-runtime-config"
    token = next(v for v in app["spec"]["variables"] if v["name"] == "admin_token")
    assert token["valueFrom"]["secretKeyRef"]["name"] in secrets
    job = yaml.safe_load((spinkube / "cronjob-rotate.yaml").read_text())
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
