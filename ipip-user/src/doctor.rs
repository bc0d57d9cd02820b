//! `ipip-user doctor <iface>`: "it all looks good, but nothing happens" (the seed's §3.4).
//! Walks what an expert checks, in order, and says what is wrong and the command that fixes
//! it: bpffs and the attachment, the interface, the addresses, the way to each peer, the
//! routes, forwarding, rp_filter, the firewall, foreign programs on the interface, and which
//! drop counters move.

use std::{collections::HashSet, net::Ipv4Addr, time::Duration};

use anyhow::Result;
use aya::programs::{tc::TcAttachType, SchedClassifier};
use ipnet::Ipv4Net;

use crate::{
    netif::{route_prefix, unsized_routes, Netlink},
    pins::{self, read_routes, read_tunnel, PinDir},
    stats, status,
};

/// One thing checked.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    /// Which check: bpffs, attachment, interface, addresses, peers, routes, forwarding,
    /// rp_filter, firewall, programs, drops.
    pub check: &'static str,
    pub ok: bool,
    pub what: String,
    /// The command (or action) that repairs it.
    pub fix: Option<String>,
}

fn ok(check: &'static str, what: impl Into<String>) -> Finding {
    Finding {
        check,
        ok: true,
        what: what.into(),
        fix: None,
    }
}

fn bad(check: &'static str, what: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        check,
        ok: false,
        what: what.into(),
        fix: Some(fix.into()),
    }
}

fn sysctl(path: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .ok()
        .and_then(|v| v.trim().parse().ok())
}

/// Runs every check; `window` is how long the drop counters are watched.
pub async fn diagnose(iface: &str, window: Duration) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    if !pins::is_bpffs(std::path::Path::new(pins::BPFFS)) {
        out.push(bad(
            "bpffs",
            format!("{} is not a BPF filesystem here, so no attachment can be seen (`ip netns exec` remounts /sys and hides it)", pins::BPFFS),
            "run `ipip-user --netns NAME doctor IFACE` or `nsenter --net=/run/netns/NAME ipip-user doctor IFACE`",
        ));
        return Ok(out);
    }
    out.push(ok("bpffs", format!("{} mounted", pins::BPFFS)));
    let dir = PinDir::for_interface(iface)?;
    let health = status::collect()
        .await?
        .into_iter()
        .find(|s| s.interface == iface && s.netns == dir.netns);
    let Some(health) = health else {
        out.push(bad(
            "attachment",
            format!("{iface} is not attached in this network namespace"),
            format!("ipip-user attach {iface} --peers FILE"),
        ));
        return Ok(out);
    };
    if health.health != "ok" {
        out.push(bad(
            "attachment",
            health.state.clone(),
            "see the state above",
        ));
        return Ok(out);
    }
    out.push(ok(
        "attachment",
        format!("intact, decap {}, {} peer(s)", health.decap, health.peers),
    ));
    let tunnel = read_tunnel(&dir)?;
    let nl = Netlink::open()?;
    let Some(link) = nl.link_by_index(tunnel.ifindex).await? else {
        out.push(bad(
            "interface",
            format!("{iface} is gone"),
            format!("ipip-user detach {iface}"),
        ));
        return Ok(out);
    };

    // The interface.
    out.push(if !link.up {
        bad(
            "interface",
            format!("{iface} is down: nothing is sent or received"),
            format!("ip link set {iface} up"),
        )
    } else if link.mtu < 596 {
        bad(
            "interface",
            format!(
                "{iface} MTU {} leaves less than IPv4's 576 bytes inside the tunnel",
                link.mtu
            ),
            format!("ip link set {iface} mtu 1500"),
        )
    } else {
        ok(
            "interface",
            format!(
                "{iface} up, MTU {} (tunnel MTU {})",
                link.mtu,
                link.mtu - 20
            ),
        )
    });

    // The addresses.
    let addrs = nl.ipv4_addresses().await?;
    let local = Ipv4Addr::from(tunnel.local);
    out.push(if addrs.iter().any(|(a, _, _)| *a == local) {
        ok("addresses", format!("local {local} is an address of this host"))
    } else {
        bad(
            "addresses",
            format!("local {local} is no longer an address of this host: peers send to an address nobody here owns"),
            format!("ip addr add {local}/24 dev {iface} (with its real prefix length)"),
        )
    });
    if tunnel.address != [0; 4] {
        let a = Ipv4Addr::from(tunnel.address);
        out.push(if addrs.iter().any(|(x, _, _)| *x == a) {
            ok("addresses", format!("tunnel address {a} present"))
        } else {
            bad(
                "addresses",
                format!("tunnel address {a} is missing: traffic to it is not delivered, and this host sends from the underlay address instead"),
                format!("ip addr add {a}/{} dev {iface}", tunnel.address_prefix_len),
            )
        });
    }

    // The way to each peer.
    let snap = stats::read(&dir)?;
    for p in &snap.peers {
        let finding = match nl.route_get(p.remote).await {
            Err(e) => bad(
                "peers",
                format!("peer {} ({}) is unreachable: {e}", p.name, p.remote),
                format!("add an underlay route to {} via {iface}", p.remote),
            ),
            Ok(hop) if hop.oif != tunnel.ifindex => {
                let via = nl
                    .link_by_index(hop.oif)
                    .await?
                    .map_or_else(|| format!("#{}", hop.oif), |l| l.name);
                bad(
                    "peers",
                    format!("peer {} ({}) is reached through {via}, not {iface}: its packets leave without the tunnel's programs", p.name, p.remote),
                    format!("fix the underlay route (`ip route get {}`), or attach to {via}", p.remote),
                )
            }
            Ok(hop) => {
                let mtu = match p.learned_mtu {
                    Some(m) => format!("path MTU learned {m} (configured {})", p.mtu),
                    None => format!("tunnel MTU {}", p.mtu),
                };
                ok(
                    "peers",
                    format!(
                        "peer {} ({}) via {}, {mtu}",
                        p.name,
                        p.remote,
                        hop.gateway.map_or("on-link".to_string(), |g| g.to_string())
                    ),
                )
            }
        };
        out.push(finding);
    }

    // The routes the attachment installed.
    let ours = read_routes(&dir).unwrap_or_default();
    let installed: HashSet<Ipv4Net> = nl
        .our_routes(tunnel.ifindex)
        .await?
        .iter()
        .filter_map(route_prefix)
        .collect();
    let mut missing: Vec<&Ipv4Net> = ours.iter().filter(|r| !installed.contains(r)).collect();
    missing.sort();
    out.push(if missing.is_empty() {
        ok("routes", format!("all {} route(s) in the kernel", ours.len()))
    } else {
        bad(
            "routes",
            format!(
                "{} of {} route(s) are missing from the kernel ({}): traffic to them is not tunnelled",
                missing.len(),
                ours.len(),
                missing.iter().take(5).map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
            ),
            format!("ipip-user reload {iface} --peers FILE (restores them)"),
        )
    });

    // Routes of someone else's into the tunnel's prefixes: without the tunnel MTU, packets
    // reach the tunnel unsized (answered, but those without DF lose one per destination).
    let tunnel_mtu = link.mtu.saturating_sub(20);
    let foreign = nl.foreign_routes(tunnel.ifindex).await?;
    let prefixes: Vec<Ipv4Net> = ours.iter().copied().collect();
    let found = unsized_routes(&foreign, &prefixes, tunnel_mtu);
    if found.is_empty() {
        out.push(ok(
            "route mtu",
            format!(
                "no other route into the tunnel's prefixes lacks the tunnel MTU ({tunnel_mtu})"
            ),
        ));
    }
    for r in found.iter().take(5) {
        out.push(bad(
            "route mtu",
            format!("{}, above the tunnel MTU {tunnel_mtu}: larger packets reach the tunnel unsized; those with DF are answered (too_big), the first without DF to each destination is lost (too_big_no_df)", r.describe(iface)),
            r.fix(iface, tunnel_mtu),
        ));
    }
    if found.len() > 5 {
        out.push(bad(
            "route mtu",
            format!("{} more such routes", found.len() - 5),
            format!("ip route show dev {iface} (ipip's own are `proto 156`)"),
        ));
    }

    // Forwarding, where the tunnel carries traffic for other hosts.
    if !health.lans.is_empty() {
        out.push(if sysctl("net/ipv4/ip_forward") == Some(1) {
            ok("forwarding", "net.ipv4.ip_forward is on (LAN interfaces)")
        } else {
            bad(
                "forwarding",
                format!("net.ipv4.ip_forward is 0, but the fast path forwards between {iface} and {}: nothing is forwarded", health.lans.join(", ")),
                "sysctl -w net.ipv4.ip_forward=1",
            )
        });
    }

    // rp_filter: strict mode drops a decapsulated packet whose source isn't routed back out
    // of the interface it came in on.
    let rp = sysctl("net/ipv4/conf/all/rp_filter")
        .unwrap_or(0)
        .max(sysctl(&format!("net/ipv4/conf/{iface}/rp_filter")).unwrap_or(0));
    if rp == 1 {
        let mut strays = Vec::new();
        let mut sorted: Vec<&Ipv4Net> = ours.iter().collect();
        sorted.sort();
        for r in sorted {
            match nl.route_get(r.network()).await {
                Ok(hop) if hop.oif == tunnel.ifindex => {}
                _ => strays.push(r.to_string()),
            }
        }
        out.push(if strays.is_empty() {
            ok("rp_filter", "strict, and every peer prefix routes back out of the interface")
        } else {
            bad(
                "rp_filter",
                format!("rp_filter is strict and {} is not routed back out of {iface}: decapsulated packets from there are dropped by the kernel", strays.join(", ")),
                format!("sysctl -w net.ipv4.conf.{iface}.rp_filter=2 net.ipv4.conf.all.rp_filter=2 (loose), or restore the routes"),
            )
        });
    } else {
        out.push(ok("rp_filter", format!("rp_filter {rp} (not strict)")));
    }

    // The firewall, as nftables shows it (iptables-nft rules included).
    match firewall_drops(&prefixes) {
        None => out.push(ok("firewall", "nft not available: not checked")),
        Some(rules) if rules.is_empty() => out.push(ok(
            "firewall",
            "no nftables rule drops IP protocol 4 or the tunnel prefixes",
        )),
        Some(rules) => {
            for (rule, delete) in rules {
                out.push(bad(
                    "firewall",
                    format!("nftables drops tunnel traffic: {rule}"),
                    delete,
                ));
            }
        }
    }

    // Programs on the interface that aren't ours: they see (and may drop) packets first.
    let ours_ids: HashSet<u32> = health.programs.iter().map(|p| p.id).collect();
    let mut foreign = Vec::new();
    if let Some(id) = link.xdp_prog.filter(|id| !ours_ids.contains(id)) {
        foreign.push((
            format!("XDP program id {id}"),
            format!("ip link set {iface} xdp off (if it is not needed)"),
        ));
    }
    for at in [TcAttachType::Ingress, TcAttachType::Egress] {
        if let Ok((_, progs)) = SchedClassifier::query_tcx(iface, at) {
            for p in progs.iter().filter(|p| !ours_ids.contains(&p.id())) {
                foreign.push((
                    format!(
                        "TC {at:?} program {} id {}",
                        p.name_as_str().unwrap_or("?"),
                        p.id()
                    ),
                    "remove it with the tool that attached it".to_string(),
                ));
            }
        }
    }
    if foreign.is_empty() {
        out.push(ok("programs", format!("only ipip's programs on {iface}")));
    }
    for (what, fix) in foreign {
        out.push(bad("programs", format!("{what} on {iface} is not ipip's: it runs next to the tunnel's and may drop or rewrite its packets"), fix));
    }

    // Which drop counters move.
    let before = stats::read(&dir)?;
    tokio::time::sleep(window).await;
    let after = stats::read(&dir)?;
    let mut moved = 0;
    for r in ipip_common::Reason::ALL.into_iter().filter(|r| r.is_drop()) {
        let n = after.reasons.get(r.name()).copied().unwrap_or(0)
            - before.reasons.get(r.name()).copied().unwrap_or(0);
        if n > 0 {
            moved += 1;
            out.push(bad(
                "drops",
                format!(
                    "{}: {n} dropped in the last {} s ({})",
                    r.name(),
                    window.as_secs(),
                    r.help()
                ),
                format!("`ipip-user log {iface}` shows each one with its addresses"),
            ));
        }
    }
    if moved == 0 {
        out.push(ok(
            "drops",
            format!("no drop counter moved in {} s", window.as_secs()),
        ));
    }
    Ok(out)
}

/// nftables rules that drop or reject IP protocol 4 or traffic to/from the tunnel prefixes,
/// with the command that deletes each; `None` when nft can't be run.
fn firewall_drops(prefixes: &[Ipv4Net]) -> Option<Vec<(String, String)>> {
    let out = std::process::Command::new("nft")
        .args(["-j", "list", "ruleset"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut found = Vec::new();
    for item in v["nftables"].as_array()? {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        let exprs = rule["expr"].as_array().cloned().unwrap_or_default();
        let drops = exprs
            .iter()
            .any(|e| e.get("drop").is_some() || e.get("reject").is_some());
        if !drops {
            continue;
        }
        let hits = exprs.iter().filter_map(|e| e.get("match")).any(|m| {
            let left = &m["left"];
            let right = &m["right"];
            let proto = (left["payload"]["field"] == "protocol"
                && left["payload"]["protocol"] == "ip")
                || left["meta"]["key"] == "l4proto";
            let addr = left["payload"]["protocol"] == "ip"
                && (left["payload"]["field"] == "saddr" || left["payload"]["field"] == "daddr");
            (proto && (right == 4 || right == "ipip" || right == "ipencap"))
                || (addr && covers(right, prefixes))
        });
        if hits {
            let (family, table, chain, handle) = (
                rule["family"].as_str().unwrap_or("?"),
                rule["table"].as_str().unwrap_or("?"),
                rule["chain"].as_str().unwrap_or("?"),
                rule["handle"].as_u64().unwrap_or(0),
            );
            found.push((
                format!("rule {handle} in {family} {table} {chain}"),
                format!("nft delete rule {family} {table} {chain} handle {handle}"),
            ));
        }
    }
    Some(found)
}

/// Whether an nft match value (an address or a prefix) overlaps one of `prefixes`.
fn covers(right: &serde_json::Value, prefixes: &[Ipv4Net]) -> bool {
    let net = if let Some(a) = right.as_str() {
        a.parse::<Ipv4Addr>()
            .ok()
            .and_then(|a| Ipv4Net::new(a, 32).ok())
    } else {
        let p = &right["prefix"];
        p["addr"]
            .as_str()
            .and_then(|a| a.parse::<Ipv4Addr>().ok())
            .zip(p["len"].as_u64())
            .and_then(|(a, l)| Ipv4Net::new(a, l as u8).ok())
    };
    net.is_some_and(|n| prefixes.iter().any(|p| p.contains(&n) || n.contains(p)))
}

/// The findings as text: one line per check, the fix under each problem.
pub fn render(findings: &[Finding]) -> String {
    let mut o = String::new();
    for f in findings {
        o.push_str(&format!(
            "{} {:<11} {}\n",
            if f.ok { "ok  " } else { "FAIL" },
            f.check,
            f.what
        ));
        if let Some(fix) = &f.fix {
            o.push_str(&format!("     {:<11} fix: {fix}\n", ""));
        }
    }
    let bad = findings.iter().filter(|f| !f.ok).count();
    o.push_str(&if bad == 0 {
        "nothing wrong found\n".to_string()
    } else {
        format!("{bad} problem(s) found\n")
    });
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_match_values_against_prefixes() {
        let p: Vec<Ipv4Net> = vec!["10.0.1.0/24".parse().unwrap()];
        assert!(covers(&serde_json::json!("10.0.1.7"), &p));
        assert!(covers(
            &serde_json::json!({"prefix": {"addr": "10.0.0.0", "len": 16}}),
            &p
        ));
        assert!(!covers(&serde_json::json!("10.0.2.7"), &p));
        assert!(!covers(&serde_json::json!({"set": []}), &p));
    }
}
