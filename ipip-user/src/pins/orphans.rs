//! Pin folders of network namespaces that no longer exist: deleting a namespace (`ip netns
//! del`) without detaching first leaves its attachments' pins on the machine-wide bpffs.
//! Their interfaces, routes and addresses went with the namespace; only the pins (and the
//! memory of their maps) are left, for `ipip-user prune` to remove.

use std::{collections::HashSet, io, path::PathBuf};

use super::{netns_id, PinDir, ROOT};

/// Inodes of every network namespace that is alive: one a task is in, one an open file
/// refers to, or one bind-mounted somewhere (`ip netns add`). A namespace none of these
/// hold is gone.
pub fn live_namespaces() -> HashSet<u64> {
    let mut live = HashSet::new();
    let mut note = |link: PathBuf| {
        if let Some(ino) = std::fs::read_link(link)
            .ok()
            .and_then(|t| parse_ns_link(&t.to_string_lossy()))
        {
            live.insert(ino);
        }
    };
    for proc_dir in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let p = proc_dir.path();
        for sub in ["task", "fd"] {
            for e in std::fs::read_dir(p.join(sub))
                .into_iter()
                .flatten()
                .flatten()
            {
                match sub {
                    "task" => note(e.path().join("ns/net")),
                    _ => note(e.path()),
                }
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    live.extend(mounts.lines().filter_map(|l| {
        // Field 4 is the mount's root; for an nsfs bind mount that is `net:[inode]`.
        l.split_whitespace().nth(3).and_then(parse_ns_link)
    }));
    live
}

/// `net:[4026531840]` → 4026531840.
fn parse_ns_link(s: &str) -> Option<u64> {
    s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Every attachment folder of a namespace that is gone. The folder list is read before the
/// live namespaces, so that a namespace made meanwhile can't look orphaned.
pub fn orphaned() -> io::Result<Vec<PinDir>> {
    let here = netns_id().map_err(io::Error::other)?;
    let mut folders = Vec::new();
    for e in std::fs::read_dir(ROOT).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(ino) = name.strip_prefix("net").and_then(|n| n.parse::<u64>().ok()) {
            if ino != here {
                folders.push((ino, e.path()));
            }
        }
    }
    let live = live_namespaces();
    let mut out = Vec::new();
    for (ino, path) in folders.into_iter().filter(|(ino, _)| !live.contains(ino)) {
        // Gone meanwhile (its last attachment detached): nothing to list.
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for e in entries.flatten() {
            out.push(PinDir {
                path: e.path(),
                interface: e.file_name().to_string_lossy().into_owned(),
                netns: ino,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Removes every orphaned attachment's pins (links first: that detaches the programs from a
/// device the namespace's deletion handed back to the initial namespace) and their lock
/// files. Returns the pin folders removed.
pub fn prune() -> io::Result<Vec<String>> {
    let mut done = Vec::new();
    for dir in orphaned()? {
        dir.remove_contents()?;
        for suffix in ["lock", "log", "fleet.json"] {
            let lock = std::path::Path::new(crate::lock::LOCK_DIR)
                .join(format!("net{}-{}.{suffix}", dir.netns, dir.interface));
            let _ = std::fs::remove_file(lock);
        }
        done.push(dir.path.display().to_string());
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_links_are_parsed() {
        assert_eq!(parse_ns_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link("mnt:[4026531840]"), None);
        assert_eq!(parse_ns_link("/"), None);
        // Our own namespace is alive by any account.
        assert!(live_namespaces().contains(&netns_id().unwrap()));
    }
}
