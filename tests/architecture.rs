//! The import graph between cdcheck's top-level modules (`use crate::...` and `crate::...`
//! paths, tests left out) keeps the layering ARCHITECTURE.md draws: every import runs down
//! the list below, so there is no cycle and nothing reaches back up.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Bottom to top: a module may use only those before it.
const LAYERS: [&str; 13] = [
    "names",
    "settings",
    "versions",
    "report",
    "catalog",
    "manifests",
    "traffic",
    "kube",
    "agent",
    "standin",
    "mesh",
    "substrate",
    "scenario",
];

/// `module -> modules it uses`, with the files that make each edge.
fn import_graph(src: &Path) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut graph: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("read src").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let relative = path
                .strip_prefix(src)
                .unwrap()
                .to_string_lossy()
                .to_string();
            let module = relative
                .split('/')
                .next()
                .unwrap()
                .trim_end_matches(".rs")
                .to_string();
            if ["main", "lib", "cmd"].contains(&module.as_str()) {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read a source file");
            // Unit tests may reach anywhere to build their fixtures.
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
            for (at, _) in code.match_indices("crate::") {
                let used: String = code[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if used != module && src.join(format!("{used}.rs")).exists() {
                    graph
                        .entry(module.clone())
                        .or_default()
                        .entry(used)
                        .or_default()
                        .insert(relative.clone());
                }
            }
        }
    }
    graph
}

#[test]
fn every_import_between_modules_runs_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = import_graph(&src);
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut wrong = Vec::new();
    for (module, uses) in &graph {
        let Some(from) = rank(module) else {
            wrong.push(format!(
                "{module} is in no layer: add it to LAYERS and ARCHITECTURE.md"
            ));
            continue;
        };
        for (used, files) in uses {
            match rank(used) {
                Some(to) if to < from => {}
                Some(_) => wrong.push(format!(
                    "{module} uses {used}, which is not below it ({})",
                    files.iter().cloned().collect::<Vec<_>>().join(", ")
                )),
                None => wrong.push(format!("{used} is in no layer")),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
    // The graph is not empty by accident (a parse that finds nothing passes the loop above).
    assert!(graph["scenario"].contains_key("substrate"), "{graph:?}");
    assert!(graph["substrate"].contains_key("mesh"), "{graph:?}");
}

#[test]
fn an_import_back_up_is_caught() {
    let dir = std::env::temp_dir().join(format!("cdcheck-arch-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("mesh")).unwrap();
    std::fs::write(dir.join("substrate.rs"), "use crate::mesh::x;\n").unwrap();
    std::fs::write(dir.join("mesh.rs"), "fn f() { crate::substrate::y(); }\n").unwrap();
    let graph = import_graph(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(graph["mesh"].contains_key("substrate"));
    assert!(graph["substrate"].contains_key("mesh"));
}
