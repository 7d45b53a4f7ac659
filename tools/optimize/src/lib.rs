//! Swapping the main core module of a component for another one with the same imports
//! and exports, leaving every other section byte for byte as it was.

use anyhow::{bail, Context};
use wasm_encoder::{ComponentSectionId, RawSection};
use wasmparser::{Chunk, Parser, Payload, Validator};

/// Replaces the largest core module in `component` (the program; the others are the
/// small shims wit-component adds) with `optimize(module)`, and validates the result.
pub fn replace_main_module(
    component: &[u8],
    optimize: impl FnOnce(&[u8]) -> anyhow::Result<Vec<u8>>,
) -> anyhow::Result<Vec<u8>> {
    let sections = top_level_sections(component)?;
    let Some(main) = sections
        .iter()
        .filter(|(id, _)| *id == ComponentSectionId::CoreModule as u8)
        .max_by_key(|(_, range)| range.len())
        .map(|(_, range)| range.clone())
    else {
        bail!("a component with no core module");
    };
    let optimized = optimize(&component[main.clone()]).context("optimizing the core module")?;
    let mut out = wasm_encoder::Component::new();
    for (id, range) in &sections {
        let data = if *range == main {
            &optimized[..]
        } else {
            &component[range.clone()]
        };
        out.section(&RawSection { id: *id, data });
    }
    let out = out.finish();
    Validator::new()
        .validate_all(&out)
        .context("the optimized component does not validate")?;
    Ok(out)
}

/// The id and contents of every top-level section of a component, in order.
fn top_level_sections(bytes: &[u8]) -> anyhow::Result<Vec<(u8, std::ops::Range<usize>)>> {
    let mut parser = Parser::new(0);
    let mut offset = 0;
    let mut sections = Vec::new();
    loop {
        let Chunk::Parsed { consumed, payload } = parser.parse(&bytes[offset..], true)? else {
            bail!("truncated component");
        };
        offset += consumed;
        let nested = match &payload {
            Payload::ModuleSection {
                unchecked_range, ..
            } => Some((ComponentSectionId::CoreModule, unchecked_range)),
            Payload::ComponentSection {
                unchecked_range, ..
            } => Some((ComponentSectionId::Component, unchecked_range)),
            _ => None,
        };
        if let Some((id, range)) = nested {
            // Copied whole, not parsed: the parser goes on after it.
            offset += range.len();
            sections.push((id as u8, range.clone()));
            continue;
        }
        match payload {
            Payload::Version { encoding, .. } if encoding != wasmparser::Encoding::Component => {
                bail!("a core module, not a component")
            }
            Payload::End(_) => return Ok(sections),
            other => sections.extend(other.as_section()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_encoder::{
        CodeSection, Component, ExportKind, ExportSection, Function, FunctionSection, Instruction,
        Module, TypeSection,
    };

    /// A core module exporting `f`, with `extra` unused functions to make it larger.
    fn module(extra: u32) -> Vec<u8> {
        let mut types = TypeSection::new();
        types.ty().function([], []);
        let mut functions = FunctionSection::new();
        let mut code = CodeSection::new();
        for _ in 0..=extra {
            functions.function(0);
            let mut body = Function::new([]);
            body.instruction(&Instruction::Nop)
                .instruction(&Instruction::End);
            code.function(&body);
        }
        let mut exports = ExportSection::new();
        exports.export("f", ExportKind::Func, 0);
        let mut module = Module::new();
        module
            .section(&types)
            .section(&functions)
            .section(&exports)
            .section(&code);
        module.finish()
    }

    fn component(modules: &[&[u8]]) -> Vec<u8> {
        let mut component = Component::new();
        for module in modules {
            component.section(&RawSection {
                id: ComponentSectionId::CoreModule as u8,
                data: module,
            });
        }
        component.finish()
    }

    #[test]
    fn only_the_largest_module_is_replaced() {
        let (shim, main, smaller) = (module(1), module(40), module(0));
        let original = component(&[&shim, &main]);
        let mut seen = Vec::new();
        let optimized = replace_main_module(&original, |module| {
            seen = module.to_vec();
            Ok(smaller.clone())
        })
        .unwrap();
        assert_eq!(seen, main);
        assert_eq!(optimized, component(&[&shim, &smaller]));
        assert!(optimized.len() < original.len());
    }

    #[test]
    fn a_broken_result_or_input_is_an_error() {
        let original = component(&[&module(3)]);
        let broken = replace_main_module(&original, |_| Ok(b"\0asm\x01\0\0\0garbage".to_vec()));
        assert!(format!("{:#}", broken.unwrap_err()).contains("does not validate"));
        let failed = replace_main_module(&original, |_| bail!("wasm-opt exited with 1"));
        assert!(format!("{:#}", failed.unwrap_err()).contains("wasm-opt exited with 1"));
        let core = replace_main_module(&module(3), |m| Ok(m.to_vec()));
        assert!(format!("{:#}", core.unwrap_err()).contains("not a component"));
        let empty = replace_main_module(&component(&[]), |m| Ok(m.to_vec()));
        assert!(format!("{:#}", empty.unwrap_err()).contains("no core module"));
    }
}
