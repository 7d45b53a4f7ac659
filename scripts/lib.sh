# Shared by scripts/build, scripts/test, scripts/demo and scripts/bench: install what is
# missing, build what is stale. Everything it installs comes from crates.io, PyPI, rustup
# or Debian's packages (binaryen, for wasm-opt).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
# The release component, optimized: what spin.toml loads and every test runs.
WASM="$ROOT/target/concourse-sts.wasm"
# What cargo builds, before wasm-opt.
CARGO_WASM="$ROOT/target/wasm32-wasip2/release/concourse_sts.wasm"
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

# binaryen's wasm-opt, from Debian's packages when it is missing.
ensure_wasm_opt() {
    if command -v wasm-opt >/dev/null; then
        return
    fi
    if ! command -v apt-get >/dev/null; then
        echo "wasm-opt is missing: install binaryen (e.g. brew install binaryen)" >&2
        exit 1
    fi
    step "installing binaryen (wasm-opt) from Debian's packages"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binaryen >/dev/null
}

# cargo's component, then wasm-opt over its core module: $WASM.
build_component() {
    ensure_wasm_target
    ensure_wasm_opt
    step "building the component (release, wasm32-wasip2)"
    cargo build --manifest-path "$ROOT/Cargo.toml" --release --target wasm32-wasip2 -p concourse-sts
    step "optimizing it with wasm-opt"
    cargo build --manifest-path "$ROOT/Cargo.toml" --profile host -p concourse-sts-optimize
    "$ROOT/target/host/concourse-sts-optimize" "$CARGO_WASM" "$WASM"
}

build_host() {
    step "building the wasmtime host (profile host)"
    cargo build --manifest-path "$ROOT/Cargo.toml" --profile host -p concourse-sts-host
}

