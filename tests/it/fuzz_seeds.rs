//! The fuzz targets' checks (`fuzz/src/lib.rs`) on their committed seeds
//! (`fuzz/seeds/`), so that a change which breaks a target, or an invariant it checks,
//! fails `cargo test` on stable too. Seeds include every input a fuzzer run found
//! interesting enough to keep as a regression.

use std::path::Path;

use crate::fuzz_checks;

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 4, "the {target} seeds are missing");
    seeds
}

#[test]
fn the_line_target_holds_on_its_seeds() {
    for (name, data) in seeds("line") {
        eprintln!("line seed {name}");
        fuzz_checks::check_line(&data);
    }
}

#[test]
fn the_load_target_holds_on_its_seeds() {
    for (name, data) in seeds("load") {
        eprintln!("load seed {name}");
        fuzz_checks::check_load(&data);
        // Every line of a file seed is a line seed too.
        for line in data.split(|&b| b == b'\n') {
            fuzz_checks::check_line(line);
        }
    }
}
