# Shared by scripts/test, scripts/demo and scripts/bench: install what is missing, build
# what is stale. Everything it installs comes from crates.io, PyPI, rustup or Debian's
# packages; Spin itself, in either generation, comes from PATH or ../shared/spin/install
# (Spin 3.5) and ../shared/spin4/install (Spin 4).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
# The release component: what `spin build` writes and spin.toml loads.
WASM="$ROOT/target/wasm32-wasip2/release/concourse_sts.wasm"

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

# The two Spin generations, by major version: Spin 3.5 with trigger-cron 0.3, and Spin 4
# with the cron and command triggers of spin-trigger-plugins. Both ship a plugin named
# trigger-cron, so each generation keeps its plugins in a data dir of its own
# (SPIN_DATA_DIR): Spin 3.5 in Spin's default (~/.local/share/spin), Spin 4 in
# $SPIN4_DATA_DIR. A generation found is exported as SPIN<major>_BIN and
# SPIN<major>_DATA_DIR ('' for Spin's default), which the integration tests read.
SPIN4_DATA_DIR="${SPIN4_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/spin4}"

# Each generation's trigger plugins, NAME=LOWEST-VERSION: Spin 4 also loads Spin 3.5's
# trigger-cron 0.3 (its manifest allows Spin >=3.0), which a shared data dir would hand it.
spin_plugins_of() {
    case "$1" in
        3) echo "trigger-cron=0" ;;
        4) echo "trigger-cron=0.5 trigger-command=0" ;;
    esac
}

# Runs a spin command with the plugin data dir $1 ('' for Spin's default) and no other.
spin_in() {
    local data_dir="$1"
    shift
    if [ -n "$data_dir" ]; then
        SPIN_DATA_DIR="$data_dir" "$@"
    else
        env -u SPIN_DATA_DIR "$@"
    fi
}

# Whether BIN is Spin MAJOR.x with MAJOR's trigger plugins in DATA_DIR, each one that
# Spin itself will run (it lists another generation's as "[requires Spin …]").
spin_is_generation() {
    local major="$1" bin="$2" data_dir="$3" installed entry version
    [ -x "$bin" ] || return 1
    [[ "$(spin_in "$data_dir" "$bin" --version 2>/dev/null)" == "spin $major."* ]] || return 1
    installed="$(spin_in "$data_dir" "$bin" plugins list --installed 2>/dev/null)" || return 1
    for entry in $(spin_plugins_of "$major"); do
        version="$(grep "^${entry%=*} [^ ]* \[installed\]$" <<<"$installed" | cut -d' ' -f2)"
        [ -n "$version" ] || return 1
        [ "$(printf '%s\n' "${entry#*=}" "$version" | sort -V | head -n1)" = "${entry#*=}" ] || return 1
    done
}

# Finds Spin MAJOR (3 or 4): the `spin` on PATH when it is that generation with its
# plugins, else the one beside the checkout (../shared/spin for 3, ../shared/spin4 for 4,
# as on CI), installed into the generation's data dir. Without either there is no real
# host to test on, and that is a failure, not a skip.
ensure_spin_generation() {
    local major="$1" bin data_dir shared exports
    bin="$(command -v spin || true)"
    data_dir="${SPIN_DATA_DIR:-}"
    if ! spin_is_generation "$major" "$bin" "$data_dir"; then
        shared="$(dirname "$ROOT")/shared/spin"
        data_dir=""
        if [ "$major" = 4 ]; then
            shared="$(dirname "$ROOT")/shared/spin4"
            data_dir="$SPIN4_DATA_DIR"
        fi
        if [ -x "$shared/install" ]; then
            step "installing Spin $major and its trigger plugins from $shared${data_dir:+ into $data_dir}"
            exports="$(spin_in "$data_dir" "$shared/install")"
            bin="$(sed -n 's/^export PATH=\(.*\):\$PATH$/\1/p' <<<"$exports")/spin"
        fi
    fi
    if ! spin_is_generation "$major" "$bin" "$data_dir"; then
        spin_install_help "$major"
        exit 1
    fi
    export "SPIN${major}_BIN=$bin" "SPIN${major}_DATA_DIR=$data_dir"
    step "Spin $major: $(spin_in "$data_dir" "$bin" --version), plugins: $(spin_in "$data_dir" "$bin" plugins list --installed | tr '\n' ' ')"
}

spin_install_help() {
    if [ "$1" = 3 ]; then
        cat >&2 <<'MSG'
error: no Spin 3.5 with the cron trigger plugin. Install Spin 3.x (tested with 3.5.0) from
https://github.com/spinframework/spin/releases, then its cron trigger (tested with 0.3.0):
  spin plugins install --url https://github.com/spinframework/spin-trigger-cron/releases/download/v0.3.0/trigger-cron.json
MSG
    else
        cat >&2 <<MSG
error: no Spin 4 with the cron and command trigger plugins. Install Spin 4 (tested with
4.0.2) from https://github.com/spinframework/spin/releases, then, in a plugin data dir of
its own (Spin 3.5's trigger-cron has the same name), the cron and command triggers of
https://github.com/spinframework/spin-trigger-plugins (tested with trigger-cron 0.5.0 and
trigger-command 0.6.0; its releases, tagged cron-v* and command-v*, carry the plugin
manifests trigger-cron.json and trigger-command.json):
  export SPIN_DATA_DIR=$SPIN4_DATA_DIR
  spin plugins install --url <a cron-v* release's trigger-cron.json>
  spin plugins install --url <a command-v* release's trigger-command.json>
MSG
    fi
}

# Spin MAJOR (default 3) as `spin` for what follows (spin build, demo, bench, soak): its
# folder first on PATH, its plugin data dir as SPIN_DATA_DIR, and SPIN_GENERATION=MAJOR,
# which the Python harness's find_spin() takes.
ensure_spin() {
    local major="${1:-3}"
    local bin_var="SPIN${major}_BIN" data_dir_var="SPIN${major}_DATA_DIR"
    ensure_spin_generation "$major"
    export SPIN_GENERATION="$major"
    PATH="$(dirname "${!bin_var}"):$PATH"
    if [ -n "${!data_dir_var}" ]; then
        export SPIN_DATA_DIR="${!data_dir_var}"
    else
        unset SPIN_DATA_DIR
    fi
}

# `--spin 3|3.5|4` among a script's arguments: sets SPIN_GENERATION (default 3) and leaves
# the other arguments in ARGS.
take_spin_flag() {
    SPIN_GENERATION=3
    ARGS=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --spin) SPIN_GENERATION="${2:-}"; shift 2 || shift ;;
            --spin=*) SPIN_GENERATION="${1#--spin=}"; shift ;;
            *) ARGS+=("$1"); shift ;;
        esac
    done
    case "$SPIN_GENERATION" in
        3 | 3.5) SPIN_GENERATION=3 ;;
        4) ;;
        *) echo "error: --spin takes 3 (Spin 3.5) or 4 (Spin 4), not '$SPIN_GENERATION'" >&2; exit 2 ;;
    esac
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
