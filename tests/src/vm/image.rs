//! The Linux guest's boot files, built from Debian packages only and cached under
//! `target/guest/`: Debian's stock kernel (the package `linux-image-amd64` depends on), a
//! newc initramfs holding `busybox-static`, the host's iproute2 `ip` with its shared
//! libraries, the kernel modules for virtio networking and ipip, and an `/init` that serves
//! commands on a virtio console (/dev/hvc0).
//!
//! Rebuilt only when an input changes: the stamp file records the package versions, the
//! host files taken and the init script.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::cpio::Cpio;
use crate::cmd;

/// Bump when the builder changes in a way the stamp can't see.
const BUILDER_VERSION: u32 = 2;

/// Printed by `/init` on the console once the control channel is open.
pub const READY_MARKER: &str = "IPIP-GUEST-READY";
/// Ends every command's output on the control channel: `@@END-<token> <status>`.
pub const END_MARKER: &str = "@@END-";
/// Answers a command line that arrived damaged (its length does not match): `@@BAD-<token>`.
pub const BAD_MARKER: &str = "@@BAD-";

/// Modules the guest needs (their dependencies are added from the modules' own `depends=`).
const WANTED_MODULES: &[&str] = &["virtio_pci", "virtio_net", "virtio_console", "ipip"];

/// The guest's `/init` (busybox sh). `@MODULES@` becomes the module load order.
///
/// Debian's busybox-static runs its own applets before anything on PATH (a "standalone"
/// shell), so `ip` is a shell function calling iproute2's binary; commands run with `eval`
/// in a subshell so that they see the function.
const INIT_TEMPLATE: &str = r#"#!/bin/busybox sh
# ipip interop guest: serves commands on /dev/hvc0 (virtio console)
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin /root
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
ip() { /opt/iproute2/ip "$@"; }
echo "init: loading modules"
for m in @MODULES@; do
  insmod /lib/modules/$m.ko || echo "init: insmod $m failed"
done
ip link set lo up
# The control channel is a virtio console: flow-controlled, unlike a UART's small FIFO.
n=0
while [ ! -e /dev/hvc0 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
exec 3<>/dev/hvc0
stty raw -echo <&3
echo "@READY@ uptime $(cut -d' ' -f1 /proc/uptime)"
while read -r tok len cmd <&3; do
  [ -n "$tok" ] || continue
  if [ "${#cmd}" != "$len" ]; then
    printf '\n%s%s\n' "@BAD@" "$tok" >&3
    continue
  fi
  ( eval "$cmd" ) </dev/null >/tmp/.out 2>&1
  rc=$?
  cat /tmp/.out >&3
  printf '\n%s%s %d\n' "@END@" "$tok" "$rc" >&3
done
echo "init: control channel closed"
poweroff -f
"#;

/// The boot files of the guest.
#[derive(Debug, Clone)]
pub struct Image {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// One line: kernel package and version, busybox and iproute2 versions.
    pub description: String,
}

/// `target/guest` (honours `CARGO_TARGET_DIR`).
pub fn guest_dir() -> PathBuf {
    let root = crate::ipip::workspace_root();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => root.join(d),
        None => root.join("target"),
    };
    target.join("guest")
}

/// The image, built if missing or stale (once per process; other processes wait on a lock).
pub fn ensure() -> Result<Image> {
    static IMAGE: OnceLock<std::result::Result<Image, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| build(false).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Builds the image unless the stamp says it is up to date. `verbose` prints each step.
pub fn build(verbose: bool) -> Result<Image> {
    let dir = guest_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let _lock = Lock::acquire(&dir.join(".lock"), Duration::from_secs(600))?;
    let kernel = dir.join("vmlinuz");
    let initrd = dir.join("initrd.cpio");
    let stamp_path = dir.join("stamp");
    let built = kernel.exists() && initrd.exists();
    let old_stamp = std::fs::read_to_string(&stamp_path).unwrap_or_default();
    let inputs = match Inputs::resolve() {
        Ok(i) => i,
        Err(e) if built && !old_stamp.is_empty() => {
            eprintln!(
                "warning: cannot check the guest image's inputs ({e:#}); using {}",
                dir.display()
            );
            return Ok(Image {
                kernel,
                initrd,
                description: old_stamp.lines().nth(1).unwrap_or_default().to_string(),
            });
        }
        Err(e) => return Err(e),
    };
    let stamp = inputs.stamp();
    let image = Image {
        kernel: kernel.clone(),
        initrd: initrd.clone(),
        description: inputs.describe(),
    };
    if built && old_stamp == stamp {
        if verbose {
            println!(
                "guest: up to date in {} ({})",
                dir.display(),
                image.description
            );
        }
        return Ok(image);
    }
    let start = Instant::now();
    println!(
        "==> guest: building {} ({}): downloads a Debian kernel and busybox, about a minute",
        dir.display(),
        image.description
    );
    let _ = std::fs::remove_file(&stamp_path);
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs)?;
    let kernel_deb = fetch_deb(&debs, &inputs.kernel_pkg, &inputs.kernel_ver)?;
    let busybox_deb = fetch_deb(&debs, "busybox-static", &inputs.busybox_ver)?;
    let tmp = dir.join("build.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let (kx, bx) = (tmp.join("kernel"), tmp.join("busybox"));
    for (deb, to) in [(&kernel_deb, &kx), (&busybox_deb, &bx)] {
        std::fs::create_dir_all(to)?;
        cmd::run(&["dpkg", "-x", &deb.to_string_lossy(), &to.to_string_lossy()])?;
    }
    let (kver, moddir) = modules_dir(&kx)?;
    let vmlinuz = kx.join("boot").join(format!("vmlinuz-{kver}"));
    let modules = resolve_modules(&moddir)?;
    if verbose {
        let names: Vec<&str> = modules.iter().map(|(n, _)| n.as_str()).collect();
        println!("    kernel {kver}; modules {}", names.join(" "));
    }
    let archive = initramfs(&inputs, &bx.join("bin/busybox"), &modules)?;
    write_atomic(&initrd, &archive)?;
    let k =
        std::fs::read(&vmlinuz).with_context(|| format!("cannot read {}", vmlinuz.display()))?;
    write_atomic(&kernel, &k)?;
    write_atomic(&stamp_path, stamp.as_bytes())?;
    let _ = std::fs::remove_dir_all(&tmp);
    println!(
        "    kernel {} KiB, initramfs {} KiB, built in {:.1?}",
        k.len() / 1024,
        archive.len() / 1024,
        start.elapsed()
    );
    Ok(image)
}

/// What the image is made of.
struct Inputs {
    kernel_pkg: String,
    kernel_ver: String,
    busybox_ver: String,
    iproute2_ver: String,
    /// (path in the guest, path on the host) of `ip`, its libraries and the loader.
    ip_files: Vec<(String, PathBuf)>,
}

impl Inputs {
    fn resolve() -> Result<Self> {
        let kernel_pkg = match kernel_package() {
            Ok(p) => p,
            Err(_) => {
                // Fresh machines have no package lists yet.
                cmd::run(&["apt-get", "update", "-qq"])?;
                kernel_package()?
            }
        };
        let kernel_ver = candidate(&kernel_pkg)?;
        let busybox_ver = candidate("busybox-static")?;
        let iproute2_ver = cmd::run(&["dpkg-query", "-W", "-f=${Version}", "iproute2"])
            .context("iproute2 is not installed (apt-get install iproute2)")?
            .trim()
            .to_string();
        let ip_files = ip_files()?;
        Ok(Inputs {
            kernel_pkg,
            kernel_ver,
            busybox_ver,
            iproute2_ver,
            ip_files,
        })
    }

    fn describe(&self) -> String {
        format!(
            "{} {}, busybox-static {}, iproute2 {}",
            self.kernel_pkg, self.kernel_ver, self.busybox_ver, self.iproute2_ver
        )
    }

    fn stamp(&self) -> String {
        let mut s = format!("builder {BUILDER_VERSION}\n{}\n", self.describe());
        for (guest, host) in &self.ip_files {
            let meta = std::fs::metadata(host).ok();
            let (len, mtime) = meta
                .map(|m| {
                    let t = m
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_secs());
                    (m.len(), t)
                })
                .unwrap_or_default();
            s.push_str(&format!("file {guest} {} {len} {mtime}\n", host.display()));
        }
        s.push_str(&format!("modules {}\n", WANTED_MODULES.join(" ")));
        s.push_str(INIT_TEMPLATE);
        s
    }
}

/// `linux-image-6.1.0-NN-amd64`: what `linux-image-amd64` depends on.
fn kernel_package() -> Result<String> {
    let out = cmd::run(&["apt-cache", "depends", "linux-image-amd64"])?;
    out.lines()
        .filter_map(|l| l.trim().trim_start_matches('|').strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && !p.starts_with('<'))
        .map(str::to_string)
        .with_context(|| format!("`apt-cache depends linux-image-amd64` names no kernel:\n{out}"))
}

/// The version `apt-get download PKG` would fetch.
fn candidate(pkg: &str) -> Result<String> {
    let out = cmd::run(&["apt-cache", "policy", pkg])?;
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty() && v != "(none)")
        .with_context(|| format!("apt knows no candidate version of {pkg}:\n{out}"))
}

/// iproute2's `ip`, every library `ldd` lists and the dynamic loader.
fn ip_files() -> Result<Vec<(String, PathBuf)>> {
    let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .context("iproute2's `ip` is not installed")?;
    let ip_real = ip.canonicalize()?;
    let mut files = vec![("/opt/iproute2/ip".to_string(), ip_real.clone())];
    let ldd = cmd::run(&["ldd", &ip_real.to_string_lossy()])?;
    for line in ldd.lines() {
        let line = line.trim();
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vdso has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let real = Path::new(path)
            .canonicalize()
            .with_context(|| format!("ldd names {path}, which does not exist"))?;
        files.push((path.to_string(), real));
    }
    anyhow::ensure!(
        files.iter().any(|(g, _)| g.contains("ld-linux")),
        "ldd {} names no dynamic loader:\n{ldd}",
        ip_real.display()
    );
    Ok(files)
}

/// The `.deb` of `pkg` `ver` in `debs`, downloaded with `apt-get download` unless present.
fn fetch_deb(debs: &Path, pkg: &str, ver: &str) -> Result<PathBuf> {
    let mut stale = Vec::new();
    for e in std::fs::read_dir(debs)?.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("deb") {
            continue;
        }
        let Ok(f) = cmd::run(&["dpkg-deb", "-f", &p.to_string_lossy(), "Package", "Version"])
        else {
            stale.push(p);
            continue;
        };
        let fields: BTreeMap<&str, &str> = f
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        if fields.get("Package") == Some(&pkg) {
            if fields.get("Version") == Some(&ver) {
                return Ok(p);
            }
            stale.push(p);
        }
    }
    for p in stale {
        let _ = std::fs::remove_file(p);
    }
    println!("    apt-get download {pkg}={ver}");
    let spec = format!("{pkg}={ver}");
    let out = std::process::Command::new("apt-get")
        .args(["download", "-qq", &spec])
        .current_dir(debs)
        .output()
        .context("cannot run apt-get download")?;
    cmd::check(&["apt-get", "download", &spec], &out)?;
    for e in std::fs::read_dir(debs)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{pkg}_")) && name.ends_with(".deb") {
            return Ok(e.path());
        }
    }
    anyhow::bail!(
        "apt-get download {spec} left no {pkg}_*.deb in {}",
        debs.display()
    )
}

/// The kernel release and its module folder inside an extracted kernel package.
fn modules_dir(extracted: &Path) -> Result<(String, PathBuf)> {
    for base in ["lib/modules", "usr/lib/modules"] {
        let d = extracted.join(base);
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        if let Some(e) = entries.flatten().find(|e| e.path().is_dir()) {
            return Ok((e.file_name().to_string_lossy().into_owned(), e.path()));
        }
    }
    anyhow::bail!("no lib/modules/<release> in {}", extracted.display())
}

fn module_name(file: &str) -> Option<String> {
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|s| file.strip_suffix(s))?;
    Some(stem.replace('-', "_"))
}

/// Reads a module, decompressing `.ko.xz` / `.ko.zst` / `.ko.gz` with the host's tools.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let p = path.to_string_lossy();
    let tool = if p.ends_with(".xz") {
        Some("xz")
    } else if p.ends_with(".zst") {
        Some("zstd")
    } else if p.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => std::fs::read(path).with_context(|| format!("cannot read {p}")),
        Some(t) => {
            let out = cmd::output(&[t, "-dc", &p])?;
            cmd::check(&[t, "-dc", &p], &out)?;
            Ok(out.stdout)
        }
    }
}

/// `depends=a,b` out of a module's `.modinfo` section.
fn module_depends(ko: &[u8]) -> Vec<String> {
    let needle = b"depends=";
    let Some(i) = ko.windows(needle.len()).position(|w| w == needle) else {
        return Vec::new();
    };
    let rest = &ko[i + needle.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect()
}

/// The modules to load, dependencies first, with their (decompressed) contents. Modules
/// built into the kernel are skipped.
fn resolve_modules(moddir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let builtin: BTreeSet<String> = std::fs::read_to_string(moddir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next().and_then(module_name))
        .collect();
    let mut files = BTreeMap::new();
    let mut todo = vec![moddir.join("kernel")];
    let mut guard = 0;
    while let Some(d) = todo.pop() {
        guard += 1;
        anyhow::ensure!(
            guard < 100_000,
            "too many folders under {}",
            moddir.display()
        );
        for e in std::fs::read_dir(&d)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if let Some(n) = module_name(&e.file_name().to_string_lossy()) {
                files.insert(n, p);
            }
        }
    }
    let mut order: Vec<(String, Vec<u8>)> = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        name: &str,
        files: &BTreeMap<String, PathBuf>,
        builtin: &BTreeSet<String>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<(String, Vec<u8>)>,
        depth: usize,
    ) -> Result<()> {
        anyhow::ensure!(depth < 32, "module dependencies nest too deep at {name}");
        if builtin.contains(name) || !seen.insert(name.to_string()) {
            return Ok(());
        }
        let path = files
            .get(name)
            .with_context(|| format!("module {name} is neither built in nor shipped"))?;
        let ko = read_module(path)?;
        for dep in module_depends(&ko) {
            visit(&dep, files, builtin, seen, order, depth + 1)?;
        }
        order.push((name.to_string(), ko));
        Ok(())
    }
    for m in WANTED_MODULES {
        visit(m, &files, &builtin, &mut seen, &mut order, 0)?;
    }
    Ok(order)
}

/// The init script with the module order filled in.
fn init_script(modules: &[(String, Vec<u8>)]) -> String {
    let names: Vec<&str> = modules.iter().map(|(n, _)| n.as_str()).collect();
    INIT_TEMPLATE
        .replace("@MODULES@", &names.join(" "))
        .replace("@READY@", READY_MARKER)
        .replace("@END@", END_MARKER)
        .replace("@BAD@", BAD_MARKER)
}

fn initramfs(inputs: &Inputs, busybox: &Path, modules: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut c = Cpio::new();
    let mut dirs = BTreeSet::new();
    let mut mkdirs = |c: &mut Cpio, path: &str| {
        let mut at = String::new();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            at.push('/');
            at.push_str(part);
            if dirs.insert(at.clone()) {
                c.dir(&at);
            }
        }
    };
    for d in [
        "/proc/",
        "/sys/",
        "/dev/",
        "/tmp/",
        "/root/",
        "/etc/",
        "/sbin/",
        "/usr/bin/",
    ] {
        mkdirs(&mut c, d);
    }
    c.char_dev("/dev/console", 5, 1);
    mkdirs(&mut c, "/init");
    c.file("/init", 0o755, init_script(modules).as_bytes());
    let bb =
        std::fs::read(busybox).with_context(|| format!("cannot read {}", busybox.display()))?;
    mkdirs(&mut c, "/bin/busybox");
    c.file("/bin/busybox", 0o755, &bb);
    for (guest, host) in &inputs.ip_files {
        let data =
            std::fs::read(host).with_context(|| format!("cannot read {}", host.display()))?;
        mkdirs(&mut c, guest);
        c.file(guest, 0o755, &data);
    }
    for (name, ko) in modules {
        let path = format!("/lib/modules/{name}.ko");
        mkdirs(&mut c, &path);
        c.file(&path, 0o644, ko);
    }
    Ok(c.finish())
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))
}

/// An exclusive `flock` on a file, released on drop.
struct Lock(std::fs::File);

impl Lock {
    fn acquire(path: &Path, wait: Duration) -> Result<Self> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let deadline = Instant::now() + wait;
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Lock(f));
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "another process held {} for over {wait:?}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: unlocking a descriptor we own.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_depends_reads_modinfo() {
        let ko = b"\x7fELF junk\0license=GPL\0depends=tunnel4,ip_tunnel\0retpoline=Y\0";
        assert_eq!(module_depends(ko), vec!["tunnel4", "ip_tunnel"]);
        assert!(module_depends(b"depends=\0").is_empty());
    }

    #[test]
    fn module_names_normalise() {
        assert_eq!(module_name("virtio_net.ko").as_deref(), Some("virtio_net"));
        assert_eq!(module_name("ip-tunnel.ko.xz").as_deref(), Some("ip_tunnel"));
        assert_eq!(module_name("README"), None);
    }

    #[test]
    fn init_script_has_every_marker_filled() {
        let s = init_script(&[("ipip".into(), Vec::new())]);
        assert!(s.contains("for m in ipip; do"));
        for placeholder in ["@MODULES@", "@READY@", "@END@", "@BAD@"] {
            assert!(!s.contains(placeholder), "{placeholder} left in /init");
        }
        assert!(s.contains(READY_MARKER) && s.contains(END_MARKER) && s.contains(BAD_MARKER));
    }
}
