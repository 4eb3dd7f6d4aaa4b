//! The crates meant for crates.io build from their own files: no `include_str!` /
//! `include_bytes!` reaches outside its crate (a packaged crate has nothing else), and each has
//! the metadata crates.io shows. `cargo xtask package` runs the full `cargo package` check.

use std::path::{Path, PathBuf};

const PUBLISHED: [&str; 6] = [
    "ld3-hub",
    "ld3-solvers",
    "ld3-models",
    "ld3-metrics",
    "ld3-train",
    "ld3-cli",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn published_crates_include_only_their_own_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in PUBLISHED {
        let krate = root.join("crates").join(name).canonicalize().unwrap();
        let mut files = vec![];
        rust_files(&krate.join("src"), &mut files);
        assert!(!files.is_empty(), "{name} has sources");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for macro_name in ["include_str!(\"", "include_bytes!(\""] {
                for (at, _) in text.match_indices(macro_name) {
                    let rest = &text[at + macro_name.len()..];
                    let rel = &rest[..rest.find('"').unwrap()];
                    let target = file.parent().unwrap().join(rel);
                    let target = target
                        .canonicalize()
                        .unwrap_or_else(|e| panic!("{}: {rel}: {e}", file.display()));
                    assert!(
                        target.starts_with(&krate),
                        "{} includes {rel}, outside {name}",
                        file.display()
                    );
                }
            }
        }
        let manifest = std::fs::read_to_string(krate.join("Cargo.toml")).unwrap();
        for key in [
            "keywords",
            "categories",
            "readme",
            "documentation",
            "description",
        ] {
            assert!(manifest.contains(key), "{name}'s Cargo.toml lacks {key}");
        }
        assert!(krate.join("README.md").is_file(), "{name} has a README");
        assert!(!manifest.contains("publish = false"), "{name} is published");
    }
}
