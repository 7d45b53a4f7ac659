# Shared by scripts/test, scripts/demo, scripts/bench and scripts/register-team: install
# what is missing, build what is stale. Everything it installs comes from crates.io, PyPI,
# rustup or Debian's packages; Spin itself comes from PATH or ../shared/spin/install.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
# The release component: what `spin build` writes and spin.toml loads.
WASM="$ROOT/target/wasm32-wasip2/release/concourse_sts.wasm"
HOST="$ROOT/target/host/concourse-sts-host"

step() { printf '\n==> %s\n' "$*" >&2; }

ensure_wasm_target() {
    if ! rustup target list --installed | grep -qx wasm32-wasip2; then
        step "installing the wasm32-wasip2 Rust target"
        rustup target add wasm32-wasip2
    fi
}

# A virtual environment with moto_server and boto3, rebuilt when tests/requirements.txt changes.
ensure_python_env() {
    local stamp="$VENV/.requirements"
    if [ -x "$VENV/bin/python" ] && cmp -s "$ROOT/tests/requirements.txt" "$stamp"; then
        return
    fi
    step "creating $VENV with moto_server and boto3"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/tests/requirements.txt"
    cp "$ROOT/tests/requirements.txt" "$stamp"
}

spin_has_cron() {
    command -v spin >/dev/null && spin plugins list --installed 2>/dev/null | grep -q '^trigger-cron '
}

# `spin` with the cron trigger plugin on PATH: the one already there, else the Spin 3.5.0
# and trigger-cron 0.3.0 beside the checkout (../shared/spin/install, as on CI). Without
# either there is no real host to test on, and that is a failure, not a skip.
ensure_spin() {
    if ! spin_has_cron && [ -x "$ROOT/../shared/spin/install" ]; then
        step "installing Spin and the cron trigger plugin from ../shared/spin"
        local exports
        exports="$("$ROOT/../shared/spin/install")"
        eval "$exports"
    fi
    if ! spin_has_cron; then
        local found="no spin on PATH"
        command -v spin >/dev/null && found="$(spin --version) has no trigger-cron plugin"
        cat >&2 <<MSG
error: the tests and the demo run the component in the real Spin, and $found.
Install Spin 3.x (tested with 3.5.0) from https://github.com/spinframework/spin/releases,
then its cron trigger (tested with 0.3.0):
  spin plugins install --url https://github.com/spinframework/spin-trigger-cron/releases/download/v0.3.0/trigger-cron.json
Spin 4 users: the cron trigger's successor is in https://github.com/spinframework/spin-trigger-plugins.
MSG
        exit 1
    fi
    step "using $(spin --version) with $(spin plugins list --installed | grep '^trigger-cron ')"
}

# Debian packages the integration tests start: redis-server (two nodes on one store),
# faketime (a `spin up` running later), docker-registry (the OCI registry the SpinKube
# tests push to; xz-utils unpacks their shim), prometheus (with promtool: the alert rules
# on a real Prometheus) and chromium with chromium-driver (the status page in a real
# browser). Installed with apt-get when missing.
ensure_test_packages() {
    local missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v faketime >/dev/null || missing+=(faketime)
    command -v docker-registry >/dev/null || missing+=(docker-registry)
    command -v xz >/dev/null || missing+=(xz-utils)
    command -v promtool >/dev/null || missing+=(prometheus)
    command -v chromium >/dev/null || missing+=(chromium)
    command -v chromedriver >/dev/null || missing+=(chromium-driver)
    [ ${#missing[@]} -eq 0 ] && return
    if ! command -v apt-get >/dev/null; then
        echo "error: the integration tests need ${missing[*]}: install them with your package manager" >&2
        exit 1
    fi
    step "installing ${missing[*]} from Debian's packages"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# SpinKube's runtime layer on PATH: containerd (>= 1.7.7, which pulls what `spin registry
# push` pushes), ctr and the Spin shim (containerd-shim-spin-v2), the ones already there,
# else those beside the checkout (../shared/spinkube/install, as on CI). Without them the
# SpinKube tests have no real runtime to run on, and that is a failure, not a skip.
ensure_spinkube() {
    local tool missing=()
    for tool in containerd ctr containerd-shim-spin-v2; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] && return
    if [ -x "$ROOT/../shared/spinkube/install" ]; then
        step "installing containerd and the Spin shim from ../shared/spinkube"
        local exports
        exports="$("$ROOT/../shared/spinkube/install")"
        eval "$exports"
        return
    fi
    cat >&2 <<MSG
error: the SpinKube tests run the rotation under containerd with the Spin shim, and ${missing[*]} are missing.
Install containerd >= 1.7.7 and containerd-shim-spin-v2 (https://github.com/spinframework/containerd-shim-spin/releases).
MSG
    exit 1
}

# What `spin build` runs (spin.toml's build command): $WASM, for callers without Spin.
build_component() {
    ensure_wasm_target
    step "building the component (release, wasm32-wasip2)"
    cargo build --manifest-path "$ROOT/Cargo.toml" --release --target wasm32-wasip2 -p concourse-sts
}

# `spin build`, as users build the app (after ensure_spin).
spin_build() {
    ensure_wasm_target
    step "spin build"
    (cd "$ROOT" && spin build)
}

build_host() {
    step "building the wasmtime command host (profile host)"
    cargo build --manifest-path "$ROOT/Cargo.toml" --profile host -p concourse-sts-host
}
