//! `concourse-sts-optimize IN OUT`: the release step after `cargo build`. Rust and
//! wasm-ld leave code that binaryen's `wasm-opt -Oz` shrinks by about an eighth, but
//! `wasm-opt` reads core modules, not components. This takes the component's main core
//! module out, runs `wasm-opt` on it, puts the result back in its place and validates
//! the component. `WASM_OPT` names the `wasm-opt` to run (default: the one on `PATH`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use concourse_sts_optimize::replace_main_module;

/// The features Rust's `wasm32-wasip2` target emits; `wasm-opt` refuses any other.
const FEATURES: &[&str] = &[
    "--enable-bulk-memory",
    "--enable-sign-ext",
    "--enable-mutable-globals",
    "--enable-nontrapping-float-to-int",
    "--enable-multivalue",
    "--enable-reference-types",
];

fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [input, output] = args.as_slice() else {
        bail!("usage: concourse-sts-optimize IN.wasm OUT.wasm");
    };
    let component = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let optimized = replace_main_module(&component, |module| wasm_opt(module, output))?;
    let partial = output.with_extension("wasm.partial");
    std::fs::write(&partial, &optimized)
        .and_then(|()| std::fs::rename(&partial, output))
        .with_context(|| format!("writing {}", output.display()))?;
    println!(
        "{}: {} bytes (from {})",
        output.display(),
        optimized.len(),
        component.len()
    );
    Ok(())
}

/// Runs `wasm-opt -Oz` on `module` through two files beside `output`, removed after.
fn wasm_opt(module: &[u8], output: &Path) -> anyhow::Result<Vec<u8>> {
    let before = output.with_extension("core.wasm");
    let after = output.with_extension("core-opt.wasm");
    let optimized = run_wasm_opt(module, &before, &after);
    for file in [&before, &after] {
        let _ = std::fs::remove_file(file);
    }
    optimized
}

fn run_wasm_opt(module: &[u8], before: &Path, after: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::write(before, module)?;
    let program = std::env::var_os("WASM_OPT").unwrap_or_else(|| "wasm-opt".into());
    let status = Command::new(&program)
        .arg("-Oz")
        .args(FEATURES)
        .arg(before)
        .arg("-o")
        .arg(after)
        .status()
        .with_context(|| format!("running {}", program.to_string_lossy()))?;
    if !status.success() {
        bail!("{} failed: {status}", program.to_string_lossy());
    }
    Ok(std::fs::read(after)?)
}
