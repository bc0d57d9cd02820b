//! `cargo xtask run --scenario fleet`: a handful of sites that learn each other from BGP
//! (BIRD 2 and a route reflector); nobody lists a peer. Shows one site's learned peers, a
//! reachability matrix, a site leaving and rejoining, and cleans up.

use std::time::Duration;

use anyhow::Result;
use ipip_tests::topology::fleet::{peer_name, private, underlay, Fleet, RR};
use ipip_tests::traffic::ping_ok;
use ipip_tests::IpipUser;

use super::indent;

const SITES: u8 = 6;

/// Pings every site from every other (through the tunnel) and prints the grid.
fn matrix(f: &Fleet) -> Result<()> {
    print!("      ");
    for j in 1..=SITES {
        print!(" s{j:<2}");
    }
    println!();
    for i in 1..=SITES {
        print!("    s{i:<2}");
        for j in 1..=SITES {
            let cell = if i == j {
                " -  "
            } else if ping_ok(f.site(i), private(i), private(j), 1)? {
                " ok "
            } else {
                " .. "
            };
            print!("{cell}");
        }
        println!();
    }
    Ok(())
}

pub fn run(keep: bool) -> Result<()> {
    let ipip = IpipUser::new()?;
    println!(
        "==> {SITES} sites on 192.0.2.0/24, route reflector {RR}; each site runs BIRD 2 (iBGP, announcing 10.20.N.0/24) and `ipip-user run` with [fleet] table = 100"
    );
    let mut f = Fleet::new(&ipip, SITES, false)?;
    let t = f.until(
        1..=SITES,
        Duration::from_secs(60),
        "learning every site",
        |i| f.converged(&ipip, i, &[]),
    )?;
    println!(
        "==> every site learned the {} others in {t:.1?} (BGP sessions included)",
        SITES - 1
    );
    println!("==> site 1: ipip-user status");
    print!("{}", indent(&ipip.run(f.site(1), &["status"])?));
    println!("==> reachability through the tunnel (ping from row to column)");
    matrix(&f)?;
    println!("==> site {SITES} stops BIRD: its routes are withdrawn");
    f.stop_bird(SITES)?;
    let t = f.until(
        1..SITES,
        Duration::from_secs(30),
        "forgetting the site",
        |i| Ok(!f.learned(&ipip, i)?.contains(&peer_name(SITES))),
    )?;
    println!(
        "    gone from every site's maps in {t:.1?}; IPIP from {} is now dropped as unknown_peer",
        underlay(SITES)
    );
    matrix(&f)?;
    println!("==> site {SITES} starts BIRD again");
    f.start_bird(SITES)?;
    let t = f.until(
        1..SITES,
        Duration::from_secs(60),
        "learning the site again",
        |i| Ok(f.learned(&ipip, i)?.contains(&peer_name(SITES))),
    )?;
    println!("    back in every site's maps in {t:.1?}");
    matrix(&f)?;
    if keep {
        println!("==> --keep: step into a site with `nsenter --net=/run/netns/{} bash`; Enter ends the demo and cleans up", f.site(1).name());
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
    }
    println!("==> cleaning up (every `ipip-user run` detaches on SIGTERM)");
    drop(f);
    Ok(())
}
