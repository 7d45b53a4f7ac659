# Shared by scripts/test, scripts/demo, scripts/bench and scripts/register-team: install
# what is missing, build what is stale. Everything it installs comes from crates.io, PyPI
# or rustup.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
# The release component: what `spin build` writes, spin.toml loads and every test runs.
WASM="$ROOT/target/wasm32-wasip2/release/concourse_sts.wasm"
CARGO_WASM="$WASM"
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

# What `spin build` runs (spin.toml's build command): $WASM.
build_component() {
    ensure_wasm_target
    step "building the component (release, wasm32-wasip2)"
    cargo build --manifest-path "$ROOT/Cargo.toml" --release --target wasm32-wasip2 -p concourse-sts
}

build_host() {
    step "building the wasmtime host (profile host)"
    cargo build --manifest-path "$ROOT/Cargo.toml" --profile host -p concourse-sts-host
}

