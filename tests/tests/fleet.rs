//! Fleet mode end to end ([`Fleet`]): 20 sites and a route reflector on one underlay segment,
//! each site running BIRD 2 and `ipip-user run` in fleet mode. Nobody lists a peer by hand.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Result};
use ipip_tests::topology::fleet::{peer_name, private, Fleet, ROGUE, ROGUE_PREFIXES};
use ipip_tests::traffic::{ping_ok, tcp_transfer};
use ipip_tests::{require_root, IpipUser};
use serde_json::Value;

const SITES: u8 = 20;

#[test]
fn twenty_sites_learn_each_other_from_bgp_and_follow_churn() -> Result<()> {
    require_root()?;
    let ipip = IpipUser::new()?;
    let mut f = Fleet::new(&ipip, SITES, true)?;
    let all = 1..=SITES;

    // Everyone learns everyone else.
    let converged = f.until(
        all.clone(),
        Duration::from_secs(90),
        "learning every site",
        |i| f.converged(&ipip, i, &[]),
    )?;
    eprintln!("fleet: {SITES} sites converged {converged:?} after start (BGP sessions included)");

    // The rogue's prefixes are refused everywhere else, and recorded as refused.
    for i in all.clone().filter(|i| *i != ROGUE) {
        let refused = f.fleet_status(&ipip, i)?["refused"].to_string();
        for p in ROGUE_PREFIXES {
            ensure!(
                refused.contains(p),
                "site {i}: {p} from the rogue not refused: {refused}"
            );
        }
        let routes = f.site(i).exec(&["ip", "route", "show", "proto", "156"])?;
        ensure!(
            !routes.contains("10.99.0.0") && !routes.contains("10.20.0.0/16"),
            "site {i}: rogue routes installed: {routes}"
        );
    }

    // Reachability through the tunnel: each site pings two others.
    for i in all.clone() {
        for j in [i % SITES + 1, (i + 6) % SITES + 1] {
            ensure!(
                ping_ok(f.site(i), private(i), private(j), 1)?,
                "site {i} cannot reach site {j} through the tunnel"
            );
        }
    }
    let x = tcp_transfer(f.site(1), f.site(10), private(10), 7710, 1 << 20)?;
    ensure!(x.bytes == 1 << 20, "TCP 1 → 10: {} bytes", x.bytes);
    // Encapsulated on the way: site 1's counters toward site 10 moved.
    let stats: Value = serde_json::from_str(&ipip.run(f.site(1), &["stats", "--json"])?)?;
    let tx = stats[0]["peers"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == peer_name(10)))
        .and_then(|p| p["tx_packets"].as_u64())
        .unwrap_or(0);
    ensure!(tx > 100, "site 1 sent {tx} IPIP packets to site 10");

    // Churn: site 20 leaves and comes back while sites 1 and 2 talk, losing nothing.
    let flow_line = f.site(1).command_line(&[
        "ping",
        "-n",
        "-q",
        "-i",
        "0.01",
        "-c",
        "1500",
        "-W",
        "1",
        "-I",
        &private(1).to_string(),
        &private(2).to_string(),
    ]);
    let flow = Command::new(&flow_line[0])
        .args(&flow_line[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    f.stop_bird(20)?;
    let others = 1..SITES;
    let left = f.until(
        others.clone(),
        Duration::from_secs(30),
        "forgetting site 20",
        |i| Ok(!f.learned(&ipip, i)?.contains(&peer_name(20))),
    )?;
    eprintln!("fleet: site 20 gone from every map {left:?} after its BIRD stopped");
    ensure!(
        !ping_ok(f.site(1), private(1), private(20), 1)?,
        "site 20 still reachable after leaving"
    );
    let routes = f.site(1).exec(&["ip", "route", "show", "proto", "156"])?;
    ensure!(
        !routes.contains("10.20.20.0/24"),
        "site 20's route outlived its withdrawal: {routes}"
    );
    f.start_bird(20)?;
    let back = f.until(
        others,
        Duration::from_secs(60),
        "learning site 20 again",
        |i| Ok(f.learned(&ipip, i)?.contains(&peer_name(20))),
    )?;
    eprintln!("fleet: site 20 back in every map {back:?} after its BIRD restarted");
    ensure!(
        ping_ok(f.site(1), private(1), private(20), 3)?,
        "site 20 unreachable after rejoining"
    );
    let out = flow.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains("1500 packets transmitted, 1500 received"),
        "the flow between sites 1 and 2 lost packets during the churn: {text}"
    );
    Ok(())
}
