//! How much memory a `--storage memory` load may take for the file's bytes, checked
//! before a byte is read: a file larger than that is refused with an error naming both
//! sizes instead of aborting the process on a failed allocation (or, with overcommit,
//! being killed half-way through the read). A reload that fails this way leaves the
//! old dataset serving.
//!
//! The bound is `--max-memory` when given, else what the system says is available at
//! the time of the load: `MemAvailable` from `/proc/meminfo`, lowered to the headroom
//! left under a cgroup memory limit (v2 `memory.max`, v1 `memory.limit_in_bytes`,
//! less the usage other than page cache) when that is lower. Both are a few small file reads per load.
//! Where neither can be read the check is skipped, and the fallible allocation that
//! follows is what refuses a file too large.

use std::path::{Path, PathBuf};

/// The most bytes a load may allocate, and where that figure comes from (for the
/// error message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub bytes: u64,
    pub source: String,
}

/// The bound for one load: `--max-memory` if set, else what is available now.
pub fn budget(max_memory: Option<u64>) -> Option<Budget> {
    if let Some(bytes) = max_memory {
        return Some(Budget {
            bytes,
            source: "--max-memory allows".to_owned(),
        });
    }
    available()
}

/// What the system says a new allocation can get: the lower of `MemAvailable` and the
/// headroom under the process's cgroup limit.
pub fn available() -> Option<Budget> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_available(&text))
        .map(|bytes| Budget {
            bytes,
            source: "are available (MemAvailable in /proc/meminfo)".to_owned(),
        });
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| cgroup_headroom(&text, Path::new("/sys/fs/cgroup")));
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(if b.bytes < a.bytes { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// `MemAvailable` in bytes from the text of `/proc/meminfo`.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))?;
    let mut words = line.split_whitespace();
    let number: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => number.checked_mul(1024),
        None => Some(number),
        Some(_) => None,
    }
}

/// The headroom under the tightest memory limit of the process's cgroup and its
/// ancestors, from `/proc/self/cgroup` and the cgroup file systems under `root`.
/// In a container the cgroup is usually mounted as the root of `root`, so the root
/// files are read too.
fn cgroup_headroom(proc_cgroup: &str, root: &Path) -> Option<Budget> {
    let mut best: Option<Budget> = None;
    let mut consider = |found: Option<Budget>| {
        if let Some(found) = found {
            if best.as_ref().is_none_or(|b| found.bytes < b.bytes) {
                best = Some(found);
            }
        }
    };
    for line in proc_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (base, files) = if controllers.is_empty() {
            (root.to_path_buf(), &V2)
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), &V1)
        } else {
            continue;
        };
        for folder in ancestors(&base, path) {
            consider(headroom(&folder, files));
        }
    }
    best
}

/// `base` joined with `path` and each of its ancestors, down to `base` itself.
fn ancestors(base: &Path, path: &str) -> Vec<PathBuf> {
    let mut folders = vec![base.to_path_buf()];
    let mut folder = base.to_path_buf();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != "..") {
        folder.push(part);
        folders.push(folder.clone());
    }
    folders
}

/// Where one cgroup version keeps a group's limit, usage and page-cache figure.
struct CgroupFiles {
    limit: &'static str,
    usage: &'static str,
    /// Keys of `memory.stat` counting page cache, first found wins.
    cache_keys: &'static [&'static str],
}

const V2: CgroupFiles = CgroupFiles {
    limit: "memory.max",
    usage: "memory.current",
    cache_keys: &["file"],
};

const V1: CgroupFiles = CgroupFiles {
    limit: "memory.limit_in_bytes",
    usage: "memory.usage_in_bytes",
    cache_keys: &["total_cache", "cache"],
};

/// The limit less the usage, not counting page cache: the usage includes the pages
/// of every file read (the data file itself, once loaded), which the kernel reclaims
/// before it refuses memory, so counting them would refuse a reload that fits.
fn headroom(folder: &Path, files: &CgroupFiles) -> Option<Budget> {
    let read = |file: &str| std::fs::read_to_string(folder.join(file)).ok();
    // "max" (v2) or a number near `i64::MAX` (v1): no limit.
    let limit: u64 = read(files.limit)?.trim().parse().ok()?;
    if limit >= 1 << 62 {
        return None;
    }
    let usage: u64 = read(files.usage)
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0);
    let cache = read("memory.stat")
        .and_then(|stat| {
            files.cache_keys.iter().find_map(|key| {
                stat.lines().find_map(|line| {
                    let (name, value) = line.split_once(' ')?;
                    (name == *key).then(|| value.trim().parse::<u64>().ok())?
                })
            })
        })
        .unwrap_or(0);
    Some(Budget {
        bytes: limit.saturating_sub(usage.saturating_sub(cache)),
        source: format!(
            "are left under the cgroup limit ({} in {}, page cache not counted)",
            files.limit,
            folder.display()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_in_bytes() {
        let text = "MemTotal:       24683656 kB\nMemFree: 1 kB\nMemAvailable:   23384128 kB\n";
        assert_eq!(mem_available(text), Some(23384128 * 1024));
        assert_eq!(mem_available("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn the_tightest_cgroup_limit_counts() {
        let root = tempfile::tempdir().unwrap();
        let v2 = root.path().join("a/b");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(root.path().join("a/memory.max"), "1000\n").unwrap();
        std::fs::write(root.path().join("a/memory.current"), "400\n").unwrap();
        std::fs::write(v2.join("memory.max"), "max\n").unwrap();
        let found = cgroup_headroom("0::/a/b\n", root.path()).unwrap();
        assert_eq!(found.bytes, 600);
        // Page cache is reclaimable: not counted as used.
        std::fs::write(root.path().join("a/memory.stat"), "anon 100\nfile 250\n").unwrap();
        let found = cgroup_headroom("0::/a/b\n", root.path()).unwrap();
        assert_eq!(found.bytes, 850);
        assert!(found.source.contains("memory.max"), "{}", found.source);
        assert_eq!(cgroup_headroom("0::/\n", root.path()), None);

        let v1 = root.path().join("memory");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("memory.limit_in_bytes"), "500\n").unwrap();
        std::fs::write(v1.join("memory.usage_in_bytes"), "100\n").unwrap();
        let found = cgroup_headroom("4:memory:/not/mounted\n", root.path()).unwrap();
        assert_eq!(found.bytes, 400);
    }

    #[test]
    fn the_flag_wins() {
        assert_eq!(budget(Some(7)).map(|b| b.bytes), Some(7));
    }
}
