//! What is attached to an interface, asked of the kernel directly (no bpftool needed).

use anyhow::{Context, Result};

use crate::netns::Netns;

const BPF_PROG_QUERY: libc::c_long = 16;
/// `enum bpf_attach_type` values for TCX (kernel ≥ 6.6).
pub const BPF_TCX_INGRESS: u32 = 46;
pub const BPF_TCX_EGRESS: u32 = 47;

/// `union bpf_attr`'s `query` member, up to `revision`.
#[repr(C, align(8))]
#[derive(Default)]
struct QueryAttr {
    target_ifindex: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// How many programs are attached to `iface` in `ns` at the TCX hook `attach_type`.
pub fn tcx_prog_count(ns: &Netns, iface: &str, attach_type: u32) -> Result<u32> {
    let iface = iface.to_string();
    ns.run(move || {
        let ifindex = nix::net::if_::if_nametoindex(iface.as_str())
            .with_context(|| format!("no interface {iface}"))?;
        let mut attr = QueryAttr {
            target_ifindex: ifindex,
            attach_type,
            ..Default::default()
        };
        // SAFETY: BPF_PROG_QUERY reads and writes `attr` only; prog_ids is null.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                &mut attr as *mut QueryAttr,
                std::mem::size_of::<QueryAttr>(),
            )
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            return Err(e).with_context(|| format!("BPF_PROG_QUERY on {iface}"));
        }
        Ok(attr.prog_cnt)
    })
}
