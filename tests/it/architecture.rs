//! The shape of the source tree, checked: imports between the files of `src/` form no
//! cycle, data flows one way (dataset → state → http), and the core is framework-free.
//! docs/ARCHITECTURE.md §3 describes the rooms this keeps apart.
//!
//! The import graph is read from the source text: every `crate::…` and `super::…` path
//! (in `use` lines and inline), braces expanded, resolved to the file that defines the
//! module it names. Unit-test modules (`#[cfg(test)]` to the end of a file) are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/`, by its module path (`http::auth`; the crate root is
/// the empty path).
fn modules() -> BTreeMap<Vec<String>, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&src(), &mut files);
    files
        .into_iter()
        .filter(|f| !f.ends_with("main.rs"))
        .map(|file| {
            let rel = file.strip_prefix(src()).unwrap().with_extension("");
            let mut path: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(path.last().map(String::as_str), Some("mod" | "lib")) {
                path.pop();
            }
            (path, file)
        })
        .collect()
}

/// The code of a file without comments and without its unit tests.
fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let text = match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(path: &str) -> Vec<String> {
    let Some(open) = path.find('{') else {
        return vec![path.to_owned()];
    };
    let (prefix, rest) = (&path[..open], &path[open + 1..]);
    let mut depth = 0;
    let mut items = Vec::new();
    let mut start = 0;
    let mut end = rest.len();
    for (i, ch) in rest.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' if depth == 0 => {
                end = i;
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&rest[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&rest[start..end]);
    items
        .into_iter()
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .flat_map(|item| expand(&format!("{prefix}{item}")))
        .collect()
}

/// The child modules a file declares (`mod x;`), which it may name without a prefix.
fn children(code: &str) -> Vec<String> {
    code.lines()
        .filter_map(|line| {
            let line = line.trim();
            let line = line.strip_prefix("pub ").unwrap_or(line);
            let line = line.strip_prefix("pub(crate) ").unwrap_or(line);
            line.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(str::to_owned)
        })
        .collect()
}

/// The module paths a file refers to, absolute: `crate::`, `super::`, `self::` and
/// its own child modules by name.
fn references(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let starts: Vec<String> = ["crate", "super", "self"]
        .into_iter()
        .map(str::to_owned)
        .chain(children(code))
        .map(|name| format!("{name}::"))
        .collect();
    for start in &starts {
        let start = start.as_str();
        let mut from = 0;
        while let Some(at) = code[from..].find(start) {
            let at = from + at;
            from = at + start.len();
            let before = at.checked_sub(1).map(|i| bytes[i]);
            if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
                continue;
            }
            // The whole path, braces included.
            let mut end = at;
            let mut depth = 0;
            for (i, ch) in code[at..].char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth > 0 => depth -= 1,
                    c if depth > 0 || c.is_alphanumeric() || c == '_' || c == ':' => {}
                    _ => break,
                }
                end = at + i + ch.len_utf8();
            }
            let text: String = code[at..end].split_whitespace().collect();
            for path in expand(&text) {
                let mut parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
                let mut absolute: Vec<String> = Vec::new();
                if parts.first() == Some(&"crate") {
                    parts.remove(0);
                } else if parts.first() == Some(&"self") {
                    parts.remove(0);
                    absolute = module.to_vec();
                } else if parts.first() != Some(&"super") {
                    absolute = module.to_vec();
                } else {
                    absolute = module.to_vec();
                    while parts.first() == Some(&"super") {
                        parts.remove(0);
                        absolute.pop();
                    }
                }
                absolute.extend(parts.iter().map(|p| p.to_string()));
                out.push(absolute);
            }
        }
    }
    out
}

/// The longest prefix of `path` that is a file's module.
fn resolve<'a>(
    modules: &'a BTreeMap<Vec<String>, PathBuf>,
    path: &[String],
) -> Option<&'a Vec<String>> {
    (0..=path.len())
        .rev()
        .find_map(|n| modules.get_key_value(&path[..n]).map(|(k, _)| k))
}

fn graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let modules = modules();
    modules
        .iter()
        .map(|(module, file)| {
            let deps = references(module, &code(file))
                .iter()
                .filter_map(|path| resolve(&modules, path))
                .filter(|dep| *dep != module)
                .cloned()
                .collect();
            (module.clone(), deps)
        })
        .collect()
}

fn name(module: &[String]) -> String {
    if module.is_empty() {
        "crate".to_owned()
    } else {
        module.join("::")
    }
}

#[test]
fn the_import_graph_has_no_cycle() {
    let graph = graph();
    // Depth-first search; a back edge is a cycle, reported as the path around it.
    fn visit(
        node: &Vec<String>,
        graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        stack: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle: Vec<String> = stack[at..].iter().map(|m| name(m)).collect();
            cycle.push(name(node));
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.clone());
        for dep in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(dep, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" → "));
        }
    }
    // The check can fail: the graph is not empty and sees the known edges.
    let http_state = vec!["http".to_owned(), "state".to_owned()];
    assert!(graph[&http_state].contains(&vec!["state".to_owned()]));
}

#[test]
fn below_http_nothing_imports_http() {
    let graph = graph();
    for module in ["state", "reload", "watch", "metrics", "cache", "dataset"] {
        let below: Vec<&Vec<String>> = graph
            .keys()
            .filter(|m| m.first().is_some_and(|first| first == module))
            .collect();
        assert!(!below.is_empty(), "no module {module}");
        for m in below {
            let http: Vec<String> = graph[m]
                .iter()
                .filter(|dep| dep.first().is_some_and(|d| d == "http"))
                .map(|dep| name(dep))
                .collect();
            assert!(http.is_empty(), "{} imports {http:?}", name(m));
        }
    }
}

#[test]
fn the_dataset_core_is_framework_free() {
    for (module, file) in modules() {
        if module.first().map(String::as_str) != Some("dataset") {
            continue;
        }
        let code = code(&file);
        for framework in ["poem", "clap", "hyper", "http"] {
            let uses = code.lines().find(|line| {
                line.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .any(|word| word == framework || word.starts_with(&format!("{framework}::")))
            });
            assert!(
                uses.is_none(),
                "{} uses {framework}: {}",
                file.display(),
                uses.unwrap_or_default().trim()
            );
        }
    }
}

#[test]
fn paths_are_expanded_and_resolved() {
    assert_eq!(
        expand("crate::http::{limits::LimitSettings, HttpSettings}"),
        [
            "crate::http::limits::LimitSettings",
            "crate::http::HttpSettings"
        ]
    );
    let module = vec!["http".to_owned(), "fast".to_owned()];
    let refs = references(
        &module,
        "use super::{api, pipeline::{self, Head}};\nuse crate::telemetry;",
    );
    let names: Vec<String> = refs.iter().map(|r| name(r)).collect();
    assert_eq!(
        names,
        [
            "telemetry",
            "http::api",
            "http::pipeline::self",
            "http::pipeline::Head"
        ]
    );
}

/// `cargo test --test it api::` runs the `api` module alone only if no other module's
/// name ends in `api` (a filter matches anywhere in a test's path: `openapi::` was
/// selected too, before that module became `spec`).
#[test]
fn a_module_filter_selects_one_module() {
    let main =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/main.rs"))
            .unwrap();
    let names: Vec<&str> = main
        .lines()
        .filter_map(|line| line.strip_prefix("mod ")?.strip_suffix(';'))
        .collect();
    assert!(
        names.len() > 10,
        "modules read from tests/it/main.rs: {names:?}"
    );
    for a in &names {
        for b in &names {
            assert!(
                a == b || !a.ends_with(b),
                "`cargo test --test it {b}::` would also run the tests of `{a}`"
            );
        }
    }
}
