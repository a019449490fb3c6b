//! How much memory a new allocation may take, from every limit that can end the process:
//! memory the kernel says is available (`MemAvailable`), the cgroup's `memory.max` (a
//! container's limit, enforced by the OOM killer), and the address-space limit (`ulimit -v`,
//! RLIMIT_AS, which makes the allocation itself fail and Rust abort). Total RAM alone is not
//! enough: a KV cache planned against it passes and then aborts.

/// Room left under each limit that could be read, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryRoom {
    /// `MemAvailable` from /proc/meminfo.
    pub available: Option<u64>,
    /// The cgroup's limit minus its current usage (v2 `memory.max`, or v1 `limit_in_bytes`).
    pub cgroup: Option<u64>,
    /// RLIMIT_AS minus the address space this process already uses.
    pub address_space: Option<u64>,
}

impl MemoryRoom {
    /// Reads the limits of this process now (Linux; elsewhere every field is `None`).
    pub fn current() -> MemoryRoom {
        MemoryRoom {
            available: read("/proc/meminfo").and_then(|t| meminfo_kib(&t, "MemAvailable:")),
            cgroup: cgroup_room(),
            address_space: address_space_room(),
        }
    }

    /// Which limit `bytes` more would break, as "<limit name> (<room> left)", if any.
    pub fn exceeded_by(&self, bytes: u64) -> Option<String> {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        [
            (
                self.address_space,
                "the process's address-space limit (ulimit -v)",
            ),
            (self.cgroup, "the cgroup's memory limit"),
            (self.available, "the machine's available memory"),
        ]
        .into_iter()
        .find_map(|(room, what)| {
            let room = room?;
            (bytes > room).then(|| format!("{what}: {:.2} GiB left", gib(room)))
        })
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// A `Key:   1234 kB` line of /proc/meminfo or /proc/self/status, in bytes.
fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    kib.checked_mul(1024)
}

/// A cgroup limit file: a byte count, or "max" (v2) / a huge number (v1) for none.
fn cgroup_value(text: &str) -> Option<u64> {
    let v: u64 = text.trim().parse().ok()?;
    // cgroup v1 reports "no limit" as the largest page-aligned i64.
    (v < (1u64 << 62)).then_some(v)
}

fn cgroup_room() -> Option<u64> {
    let membership = read("/proc/self/cgroup")?;
    for line in membership.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let (max, current) = if controllers.is_empty() {
            let dir = format!("/sys/fs/cgroup{path}");
            (format!("{dir}/memory.max"), format!("{dir}/memory.current"))
        } else if controllers.split(',').any(|c| c == "memory") {
            // v1: the hierarchy is mounted on its own; inside a container the path shown
            // is often not the mount's, so the mount's root is tried too.
            let dir = format!("/sys/fs/cgroup/memory{path}");
            let dir = if std::path::Path::new(&dir).exists() {
                dir
            } else {
                "/sys/fs/cgroup/memory".to_string()
            };
            (
                format!("{dir}/memory.limit_in_bytes"),
                format!("{dir}/memory.usage_in_bytes"),
            )
        } else {
            continue;
        };
        if let Some(limit) = read(&max).and_then(|t| cgroup_value(&t)) {
            let used = read(&current).and_then(|t| cgroup_value(&t)).unwrap_or(0);
            return Some(limit.saturating_sub(used));
        }
    }
    None
}

#[cfg(unix)]
fn address_space_room() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct, which `lim` is.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    let used = read("/proc/self/status").and_then(|t| meminfo_kib(&t, "VmSize:"))?;
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not on every unix
    let limit = lim.rlim_cur as u64;
    Some(limit.saturating_sub(used))
}

#[cfg(not(unix))]
fn address_space_room() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo_and_cgroup_files() {
        let meminfo = "MemTotal:       24000000 kB\nMemFree:  1 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(
            meminfo_kib(meminfo, "MemAvailable:"),
            Some(20_000_000 * 1024)
        );
        assert_eq!(meminfo_kib(meminfo, "MemTotal:"), Some(24_000_000 * 1024));
        assert_eq!(meminfo_kib(meminfo, "Nope:"), None);
        assert_eq!(cgroup_value("max\n"), None);
        assert_eq!(cgroup_value("9223372036854771712\n"), None);
        assert_eq!(cgroup_value("4294967296\n"), Some(1 << 32));
    }

    #[test]
    fn names_the_limit_that_would_be_exceeded() {
        let room = MemoryRoom {
            available: Some(8 << 30),
            cgroup: Some(6 << 30),
            address_space: Some(4 << 30),
        };
        assert_eq!(room.exceeded_by(1 << 30), None);
        let m = room.exceeded_by(5 << 30).unwrap();
        assert!(m.contains("ulimit -v") && m.contains("4.00 GiB"), "{m}");
        let m = MemoryRoom {
            address_space: None,
            ..room
        }
        .exceeded_by(7 << 30)
        .unwrap();
        assert!(m.contains("cgroup"), "{m}");
        assert_eq!(MemoryRoom::default().exceeded_by(u64::MAX), None);
        // This process has some memory available, and reading the limits does not fail.
        let now = MemoryRoom::current();
        assert!(now.available.is_some_and(|a| a > 0), "{now:?}");
    }
}
