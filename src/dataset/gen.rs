//! `kvserve gen`: writes a valid data file of any size, for tests, benchmarks and demos.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Writes `lines` records of a random v4 UUID and 1–10 lowercase words of 1–10 letters
/// (the shape of the old service's data). The same `seed` gives the same file.
///
/// `on_progress` is called with the number of lines written so far every 64Ki lines,
/// so the CLI can drive a progress bar without this module knowing about terminals.
pub fn generate(
    out: &Path,
    lines: u64,
    seed: u64,
    mut on_progress: impl FnMut(u64),
) -> Result<(), GenError> {
    let write_err = |source| GenError::Write {
        path: out.to_path_buf(),
        source,
    };
    let file = File::create(out).map_err(|source| GenError::Create {
        path: out.to_path_buf(),
        source,
    })?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut line = Vec::with_capacity(160);
    for n in 0..lines {
        line.clear();
        let key = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
        line.extend_from_slice(
            key.hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer())
                .as_bytes(),
        );
        for _ in 0..rng.random_range(1..=10) {
            let letters = rng.random_range(1..=10);
            line.push(b' ');
            line.extend((0..letters).map(|_| b'a' + rng.random_range(0..26u8)));
        }
        line.push(b'\n');
        w.write_all(&line).map_err(write_err)?;
        if n % 65536 == 0 {
            on_progress(n);
        }
    }
    w.flush().map_err(write_err)?;
    w.get_ref().sync_all().map_err(write_err)?;
    on_progress(lines);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{load, LoadOptions};

    #[test]
    fn generated_file_loads_and_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.data");
        let b = dir.path().join("b.data");
        generate(&a, 1000, 7, |_| {}).unwrap();
        generate(&b, 1000, 7, |_| {}).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let dataset = load(&a, &LoadOptions::default()).unwrap();
        assert_eq!(dataset.len(), 1000);
    }
}
