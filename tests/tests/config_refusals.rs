//! Bad peers files and bad attach/reload requests: each is refused with an exact message and
//! exit code, promptly, and without changing the kernel state (addresses, routes, links and
//! their XDP/TC programs, the forwarding sysctl, pins).
//!
//! The cases run on doolittle of seed §4 ([`HostToHost`]): eth0 192.0.2.58/24, 10.0.1.1/32 on
//! lo, calculon at 192.0.2.129 owning 10.0.2.0/24, no default route. The texts below use those
//! addresses; the test checks the topology still has them.

use std::io::Read as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use ipip_tests::query::{tcx_prog_count, BPF_TCX_EGRESS, BPF_TCX_INGRESS};
use ipip_tests::{require_root, HostToHost, IpipUser, Node, Underlay};
use ipip_user::config::MAX_FILE_BYTES;

/// The longest a refusal may take: a FIFO read that blocked would hit it.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What the peers path names.
enum Input {
    Toml(String),
    Bytes(Vec<u8>),
    Dir,
    Fifo,
    LinkToFifo,
    LinkToMissing,
    DevZero,
    /// A sparse regular file of this many bytes (`File::set_len`).
    Sparse(u64),
    Missing,
}

impl From<&str> for Input {
    fn from(text: &str) -> Self {
        Input::Toml(text.to_string())
    }
}

impl From<String> for Input {
    fn from(text: String) -> Self {
        Input::Toml(text)
    }
}

struct Case {
    what: &'static str,
    input: Input,
    /// The command line after `ipip-user`; `{file}` stands for the peers path.
    args: Vec<&'static str>,
    /// Run while eth0 is attached (from doolittle's own peers file).
    attached: bool,
    /// The whole stderr, trimmed; `{file}` and `{pins}` (eth0's pin folder) are filled in.
    want: String,
    code: i32,
}

/// `check FILE`, refused with `want` and exit code 1.
fn case(what: &'static str, input: impl Into<Input>, want: impl Into<String>) -> Case {
    Case {
        what,
        input: input.into(),
        args: vec!["check", "{file}"],
        attached: false,
        want: want.into(),
        code: 1,
    }
}

impl Case {
    /// `attach eth0 --peers FILE EXTRA...` instead of `check`.
    fn attach(self, extra: &[&'static str]) -> Self {
        let mut args = vec!["attach", "eth0", "--peers", "{file}"];
        args.extend_from_slice(extra);
        self.args(&args)
    }

    /// `reload IFACE --peers FILE` instead of `check`.
    fn reload(self, iface: &'static str) -> Self {
        self.args(&["reload", iface, "--peers", "{file}"])
    }

    fn args(mut self, args: &[&'static str]) -> Self {
        self.args = args.to_vec();
        self
    }

    fn attached(mut self) -> Self {
        self.attached = true;
        self
    }

    fn code(mut self, code: i32) -> Self {
        self.code = code;
        self
    }
}

/// calculon as the only peer: 4 lines.
const CALCULON: &str =
    "[[peer]]\nname = \"calculon\"\nremote = \"192.0.2.129\"\nroutes = [\"10.0.2.0/24\"]\n";

/// `[tunnel]` with `lines` (from line 2 on), then calculon.
fn tunnel(lines: &str) -> String {
    format!("[tunnel]\n{lines}\n{CALCULON}")
}

/// One `[[peer]]` (name on line 2, remote on 3, routes on 4); `routes` is the array's inside.
fn peer(name: &str, remote: &str, routes: &str) -> String {
    format!("[[peer]]\nname = \"{name}\"\nremote = \"{remote}\"\nroutes = [{routes}]\n")
}

/// calculon with these routes (the first starts at 4:11).
fn routes(routes: &str) -> String {
    peer("calculon", "192.0.2.129", routes)
}

/// An error of the file at `line`:`column`.
fn at(line: u32, column: u32, message: &str) -> String {
    format!("error: {{file}}:{line}:{column}: {message}")
}

/// doolittle's attached file plus 64 peers on the segment: one more than the 64 slots attach
/// sized the maps for.
fn sixty_five_peers() -> String {
    let mut text = tunnel("local = \"192.0.2.58\"\naddress = \"10.0.1.1/24\"");
    for i in 1..=64 {
        text.push_str(&peer(
            &format!("p{i}"),
            &format!("192.0.2.{}", 129 + i),
            &format!("\"10.1.{i}.0/24\""),
        ));
    }
    text
}

/// A 50 kB value and how a message may show it: its first 64 characters and its length.
fn long_value() -> (String, String) {
    const LEN: usize = 50_000;
    let value = "x".repeat(LEN);
    let shown = format!("\"{}\"… ({LEN} bytes)", &value[..64]);
    (value, shown)
}

fn cases() -> Vec<Case> {
    let (long, shown) = long_value();
    let ttl_msg = |v: &str| format!("[tunnel] ttl must be \"inherit\" or a number 1..255, not {v}");
    let tos_msg = |v: &str| format!("[tunnel] tos must be \"inherit\" or a number 0..255, not {v}");
    let name_msg = |v: &str| {
        format!("peer name {v} must be 1..31 characters of letters, digits, '-', '_' or '.'")
    };
    let lies_in = |net: &str, range: &str| {
        format!(
            "peer calculon: route {net} lies in {range}, which can't be routed through a tunnel"
        )
    };
    let tunnel_keys = "expected one of `local`, `address`, `ttl`, `tos`, `pmtudisc`, `lan`, `max_peers`, `max_routes`";
    let not_regular = "error: peers file {file}: is not a regular file (a FIFO, socket or device); give the path of a TOML file";
    let needs_attach = |what: &str| {
        format!("error: {{file}}: {what} changed; that takes `ipip-user detach eth0` and attach again (reload changes peers, routes and per-peer settings)")
    };
    let attached_file = "local = \"192.0.2.58\"\naddress = \"10.0.1.1/24\"";
    vec![
        // TOML syntax.
        case("empty file", "", at(1, 1, "no [[peer]] sections: add at least one peer with name, remote and routes")),
        case("two equals signs", tunnel("address = \"10.0.1.1/24\"\nttl = = 3"), at(3, 7, "extra `=`, expected nothing")),
        case("unclosed array", "[[peer]]\nname = \"calculon\"\nremote = \"192.0.2.129\"\nroutes = [\"10.0.2.0/24\"\n", at(4, 24, "unclosed array, expected `]`")),
        case("unterminated string", "[[peer]]\nname = \"calculon\nremote = \"192.0.2.129\"\nroutes = [\"10.0.2.0/24\"]\n", at(2, 17, "invalid basic string, expected `\"`")),
        case("unquoted address", tunnel("local = 192.0.2.58"), at(2, 14, "invalid float, expected nothing")),
        case("a key twice in one peer", "[[peer]]\nname = \"calculon\"\nname = \"bender\"\nremote = \"192.0.2.129\"\nroutes = [\"10.0.2.0/24\"]\n", at(3, 1, "duplicate key")),
        case("[tunnel] twice", format!("[tunnel]\n[tunnel]\n{CALCULON}"), at(2, 2, "duplicate key")),
        case("NUL bytes", Input::Bytes(vec![0; 4096]), at(1, 4097, "key with no value, expected `=`")),
        // Unknown keys and tables.
        case("unknown [tunnel] key", tunnel("bogus = 1"), at(2, 1, &format!("unknown field `bogus`, {tunnel_keys}"))),
        case("mtu is no setting", tunnel("mtu = 1400"), at(2, 1, &format!("unknown field `mtu`, {tunnel_keys}"))),
        case("unknown peer key", format!("{CALCULON}colour = \"blue\"\n"), at(5, 1, "unknown field `colour`, expected one of `name`, `remote`, `routes`")),
        case("[[peers]] for [[peer]]", CALCULON.replace("[[peer]]", "[[peers]]"), at(1, 3, "unknown field `peers`, expected one of `tunnel`, `fleet`, `peer`")),
        // Wrong types.
        case("[peer] for [[peer]]", CALCULON.replace("[[peer]]", "[peer]"), at(1, 1, "each peer is a `[[peer]]` entry (two brackets), not a `[peer]` table")),
        case("[[tunnel]] for [tunnel]", format!("[[tunnel]]\n{CALCULON}"), at(1, 1, "the tunnel's settings go in one `[tunnel]` table (one bracket), not `[[tunnel]]`")),
        case("[[fleet]] for [fleet]", format!("[[fleet]]\ntable = 100\n{CALCULON}"), at(1, 1, "fleet mode is one `[fleet]` table (one bracket), not `[[fleet]]`")),
        case("remote as a number", "[[peer]]\nname = \"calculon\"\nremote = 192\nroutes = [\"10.0.2.0/24\"]\n", at(3, 10, "invalid type: integer `192`, expected a string")),
        case("name as a number", "[[peer]]\nname = 7\nremote = \"192.0.2.129\"\nroutes = [\"10.0.2.0/24\"]\n", at(2, 8, "invalid type: integer `7`, expected a string")),
        case("routes as a string", "[[peer]]\nname = \"calculon\"\nremote = \"192.0.2.129\"\nroutes = \"10.0.2.0/24\"\n", at(4, 10, "invalid type: string \"10.0.2.0/24\", expected a sequence")),
        case("a route as a number", routes("1"), at(4, 11, "invalid type: integer `1`, expected a string")),
        case("lan as a string", tunnel("lan = \"eth1\""), at(2, 7, "invalid type: string \"eth1\", expected a sequence")),
        case("pmtudisc as a string", tunnel("pmtudisc = \"yes\""), at(2, 12, "invalid type: string \"yes\", expected a boolean")),
        case("ttl as a boolean", tunnel("ttl = true"), at(2, 7, &ttl_msg("true"))),
        case("max_routes as a float", tunnel("max_routes = 1.5"), at(2, 14, "invalid type: floating point `1.5`, expected i64")),
        case("max_routes beyond i64", tunnel("max_routes = 99999999999999999999"), at(2, 14, "invalid type: integer `99999999999999999999` as i128, expected i64")),
        // Missing pieces.
        case("peer without name", "[[peer]]\nremote = \"192.0.2.129\"\nroutes = [\"10.0.2.0/24\"]\n", at(1, 1, "missing field `name`")),
        case("peer without remote", "[[peer]]\nname = \"calculon\"\nroutes = [\"10.0.2.0/24\"]\n", at(1, 1, "missing field `remote`")),
        case("peer without routes", "[[peer]]\nname = \"calculon\"\nremote = \"192.0.2.129\"\n", at(1, 1, "peer calculon has no routes: list the prefixes behind it, e.g. routes = [\"10.0.2.0/24\"]")),
        case("peer with routes = []", routes(""), at(1, 1, "peer calculon has no routes: list the prefixes behind it, e.g. routes = [\"10.0.2.0/24\"]")),
        // Peers against each other.
        case("duplicate peer name", format!("{CALCULON}{}", peer("calculon", "192.0.2.130", "\"10.0.3.0/24\"")), at(6, 8, "peer name \"calculon\" is used twice")),
        case("duplicate remote", format!("{CALCULON}{}", peer("bender", "192.0.2.129", "\"10.0.3.0/24\"")), at(7, 10, "peer bender: remote 192.0.2.129 is already peer calculon's remote")),
        case("a route of two peers", format!("{CALCULON}{}", peer("bender", "192.0.2.130", "\"10.0.3.0/24\", \"10.0.2.0/24\"")), at(8, 26, "peer bender: route 10.0.2.0/24 is already routed to peer calculon")),
        case("a route twice in one peer", routes("\"10.0.2.0/24\", \"10.0.2.0/24\""), at(4, 26, "peer calculon: route 10.0.2.0/24 is already routed to this peer")),
        // Prefixes.
        case("host bits set", routes("\"10.0.2.1/24\""), at(4, 11, "peer calculon: route 10.0.2.1/24 has host bits set; did you mean 10.0.2.0/24?")),
        case("prefix /33", routes("\"10.0.2.0/33\""), at(4, 11, "peer calculon: route \"10.0.2.0/33\" is not an IPv4 prefix (like \"10.0.2.0/24\")")),
        case("route not an address", routes("\"not-a-prefix\""), at(4, 11, "peer calculon: route \"not-a-prefix\" is not an IPv4 prefix (like \"10.0.2.0/24\")")),
        case("route in 0.0.0.0/8", routes("\"0.1.2.0/24\""), at(4, 11, &lies_in("0.1.2.0/24", "0.0.0.0/8 (this network)"))),
        case("route in 127.0.0.0/8", routes("\"127.5.0.0/16\""), at(4, 11, &lies_in("127.5.0.0/16", "127.0.0.0/8 (loopback)"))),
        case("route in 224.0.0.0/4", routes("\"239.1.2.3\""), at(4, 11, &lies_in("239.1.2.3/32", "224.0.0.0/4 (multicast)"))),
        case("route in 240.0.0.0/4", routes("\"240.0.0.0/4\""), at(4, 11, &lies_in("240.0.0.0/4", "240.0.0.0/4 (reserved)"))),
        case("route 0.0.0.0/0", routes("\"0.0.0.0/0\""), at(4, 11, "route 0.0.0.0/0 contains peer calculon's remote address 192.0.2.129: the tunnel would route its own packets into itself")),
        case("route containing the remote", routes("\"10.0.2.0/24\", \"192.0.2.128/25\""), at(4, 26, "route 192.0.2.128/25 contains peer calculon's remote address 192.0.2.129: the tunnel would route its own packets into itself")),
        case("route containing local", format!("[tunnel]\nlocal = \"192.0.2.58\"\n{}", routes("\"10.0.2.0/24\", \"192.0.2.0/26\"")), at(6, 26, "route 192.0.2.0/26 contains this host's [tunnel] local address 192.0.2.58")),
        // [tunnel] address and local.
        case("address is a remote", tunnel("address = \"192.0.2.129/24\""), at(2, 11, "[tunnel] address 192.0.2.129 is peer calculon's remote: the tunnel address lives inside the tunnel, the remote outside it")),
        case("address /0", tunnel("address = \"10.0.1.1/0\""), at(2, 11, "[tunnel] address 10.0.1.1/0: a /0 prefix would claim every address; give the tunnel subnet's length, like /24")),
        case("address inside a route", tunnel("address = \"10.0.2.5/24\""), at(2, 11, "[tunnel] address 10.0.2.5 lies inside route 10.0.2.0/24 (peer calculon): traffic to this host's own address would be sent into the tunnel")),
        case("address without prefix length", tunnel("address = \"10.0.1.1\""), at(2, 11, "[tunnel] address \"10.0.1.1\" must be an address with its prefix length, like \"10.0.1.1/24\"")),
        case("address is a network address", tunnel("address = \"10.0.1.0/24\""), at(2, 11, "[tunnel] address 10.0.1.0/24 is the network or broadcast address of its prefix: use a host address")),
        case("address on loopback", tunnel("address = \"127.0.0.2/8\""), at(2, 11, "[tunnel] address 127.0.0.2 is not a unicast address")),
        case("local is a remote", tunnel("local = \"192.0.2.129\""), at(5, 10, "peer calculon: remote 192.0.2.129 is this host's own [tunnel] local address")),
        case("local not an address", tunnel("local = \"192.0.2.300\""), at(2, 9, "[tunnel] local \"192.0.2.300\" is not an IPv4 address (like \"192.0.2.1\")")),
        case("local 0.0.0.0", tunnel("local = \"0.0.0.0\""), at(2, 9, "[tunnel] local 0.0.0.0 is not a unicast address a tunnel can use")),
        case("remote multicast", peer("calculon", "224.0.0.5", "\"10.0.2.0/24\""), at(3, 10, "peer calculon: remote 224.0.0.5 is not a unicast address a tunnel can use")),
        case("remote loopback", peer("calculon", "127.0.0.1", "\"10.0.2.0/24\""), at(3, 10, "peer calculon: remote 127.0.0.1 is not a unicast address a tunnel can use")),
        case("remote with a prefix", peer("calculon", "192.0.2.129/32", "\"10.0.2.0/24\""), at(3, 10, "peer calculon: remote \"192.0.2.129/32\" is not an IPv4 address (like \"192.0.2.1\")")),
        // ttl, tos, pmtudisc.
        case("ttl 0", tunnel("ttl = 0"), at(2, 7, &ttl_msg("0"))),
        case("ttl 256", tunnel("ttl = 256"), at(2, 7, &ttl_msg("256"))),
        case("ttl as a string number", tunnel("ttl = \"64\""), at(2, 7, &ttl_msg("\"64\""))),
        case("tos 256", tunnel("tos = 256"), at(2, 7, &tos_msg("256"))),
        case("tos -1", tunnel("tos = -1"), at(2, 7, &tos_msg("-1"))),
        case("fixed ttl without pmtudisc", tunnel("ttl = 64\npmtudisc = false"), at(3, 12, "[tunnel] a fixed ttl and pmtudisc = false are incompatible (as in `ip tunnel`): use ttl = \"inherit\" or pmtudisc = true")),
        // Capacities.
        case("max_peers 0", tunnel("max_peers = 0"), at(2, 13, "[tunnel] max_peers must be 1..=65536, not 0")),
        case("max_peers 65537", tunnel("max_peers = 65537"), at(2, 13, "[tunnel] max_peers must be 1..=65536, not 65537")),
        case("max_routes 0", tunnel("max_routes = 0"), at(2, 14, "[tunnel] max_routes must be 1..=4194304, not 0")),
        case("max_routes 4194305", tunnel("max_routes = 4194305"), at(2, 14, "[tunnel] max_routes must be 1..=4194304, not 4194305")),
        case("max_peers below the file", format!("{}{}", tunnel("max_peers = 1"), peer("bender", "192.0.2.130", "\"10.0.3.0/24\"")), at(7, 1, "too many peers: 2 listed, [tunnel] max_peers allows 1")),
        case("max_routes below the file", format!("[tunnel]\nmax_routes = 1\n{}", routes("\"10.0.2.0/24\", \"10.0.3.0/24\"")), at(6, 26, "too many routes: 2 listed, [tunnel] max_routes allows 1")),
        // Peer names and LAN names.
        case("name of 32 characters", peer(&"n".repeat(32), "192.0.2.129", "\"10.0.2.0/24\""), at(2, 8, &name_msg(&format!("\"{}\"", "n".repeat(32))))),
        case("name with a space", peer("bad name", "192.0.2.129", "\"10.0.2.0/24\""), at(2, 8, &name_msg("\"bad name\""))),
        case("name with a slash", peer("a/b", "192.0.2.129", "\"10.0.2.0/24\""), at(2, 8, &name_msg("\"a/b\""))),
        case("name not ASCII", peer("café", "192.0.2.129", "\"10.0.2.0/24\""), at(2, 8, &name_msg("\"café\""))),
        case("empty name", peer("", "192.0.2.129", "\"10.0.2.0/24\""), at(2, 8, &name_msg("\"\""))),
        case("lan listed twice", tunnel("lan = [\"eth1\", \"eth1\"]"), at(2, 16, "[tunnel] lan \"eth1\" is listed twice")),
        case("lan name too long", tunnel("lan = [\"a-very-long-interface\"]"), at(2, 8, "[tunnel] lan \"a-very-long-interface\": an interface name has 1 to 15 characters")),
        case("lan name a path", tunnel("lan = [\"../x\"]"), at(2, 8, "[tunnel] lan \"../x\": not a valid interface name")),
        // 50 kB values: only their first 64 characters are shown.
        case("50 kB remote", peer("calculon", &long, "\"10.0.2.0/24\""), at(3, 10, &format!("peer calculon: remote {shown} is not an IPv4 address (like \"192.0.2.1\")"))),
        case("50 kB name", peer(&long, "192.0.2.129", "\"10.0.2.0/24\""), at(2, 8, &name_msg(&shown))),
        case("50 kB route", routes(&format!("\"{long}\"")), at(4, 11, &format!("peer calculon: route {shown} is not an IPv4 prefix (like \"10.0.2.0/24\")"))),
        case("50 kB address", tunnel(&format!("address = \"{long}\"")), at(2, 11, &format!("[tunnel] address {shown} must be an address with its prefix length, like \"10.0.1.1/24\""))),
        case("50 kB lan", tunnel(&format!("lan = [\"{long}\"]")), at(2, 8, &format!("[tunnel] lan {shown}: an interface name has 1 to 15 characters"))),
        // What the path names.
        case("a folder", Input::Dir, "error: peers file {file}: is a folder; give the path of a TOML file"),
        case("a FIFO", Input::Fifo, not_regular),
        case("a symlink to a FIFO", Input::LinkToFifo, not_regular),
        case("/dev/zero", Input::DevZero, not_regular),
        case("over the size limit", Input::Sparse(MAX_FILE_BYTES + 1), "error: peers file {file}: is larger than 128 MiB; a peers file with the largest tables fits well within that"),
        case("missing file", Input::Missing, "error: cannot read peers file {file}: No such file or directory (os error 2)"),
        case("dangling symlink", Input::LinkToMissing, "error: cannot read peers file {file}: No such file or directory (os error 2)"),
        case("not UTF-8", Input::Bytes(b"[[peer]]\nname = \"caf\xe9\"\n".to_vec()), "error: peers file {file}: is not UTF-8 text (byte 20)"),
        // attach: the file is checked first, the same way.
        case("attach: syntax error", "[tunnel\n", at(1, 8, "unclosed table, expected `]`")).attach(&[]),
        case("attach: a FIFO", Input::Fifo, not_regular).attach(&[]),
        case("attach: missing file", Input::Missing, "error: cannot read peers file {file}: No such file or directory (os error 2)").attach(&[]),
        // attach: what needs the live system.
        case("attach lo", CALCULON, "error: lo is the loopback device: nothing sent there reaches a peer. Attach to the interface that faces the peers (see `ip route get <peer remote>`)").args(&["attach", "lo", "--peers", "{file}"]),
        case("attach a missing interface", CALCULON, "error: interface eth9 does not exist in this network namespace (see `ip link`)").args(&["attach", "eth9", "--peers", "{file}"]),
        case("attach an interface name that is a path", CALCULON, "error: interface name \"../x\": not a valid interface name").args(&["attach", "../x", "--peers", "{file}"]),
        case("attach: local not on this host", tunnel("local = \"192.0.2.99\""), "error: {file}: [tunnel] local 192.0.2.99 is not an address of this host; the peer would send to an address nobody here owns (see `ip -4 addr`)").attach(&[]),
        case("attach: route containing eth0's address", routes("\"10.0.2.0/24\", \"192.0.2.0/26\""), "error: {file}: route 192.0.2.0/26 of peer calculon contains 192.0.2.58, eth0's address that the tunnel sends from: the tunnel would route its own packets into itself").attach(&[]),
        case("attach: peer unreachable", peer("far", "198.51.100.1", "\"10.0.9.0/24\""), "error: peer far (198.51.100.1) is unreachable: Network is unreachable; add an underlay route to it out of eth0").attach(&[]),
        case("attach: peer reached through lo", peer("self", "10.0.1.1", "\"10.0.9.0/24\""), "error: peer self (10.0.1.1) is an address of this host (reached through lo): a peer's remote is the far end's underlay address").attach(&[]),
        case("attach: remote is eth0's own address", peer("me", "192.0.2.58", "\"10.0.2.0/24\""), "error: peer me (192.0.2.58) is an address of this host (reached through lo): a peer's remote is the far end's underlay address").attach(&[]),
        case("attach --lan the underlay", CALCULON, "error: eth0 is the underlay interface; a LAN interface must be another one").attach(&["--lan", "eth0"]),
        case("attach: [tunnel] lan the underlay", tunnel("lan = [\"eth0\"]"), "error: eth0 is the underlay interface; a LAN interface must be another one").attach(&[]),
        case("attach --lan a missing interface", CALCULON, "error: LAN interface eth9 does not exist in this network namespace (see `ip link`)").attach(&["--lan", "eth9"]),
        case("attach --lan a path", CALCULON, "error: LAN interface \"../x\": not a valid interface name").attach(&["--lan", "../x"]),
        case("attach --lan lo", CALCULON, "error: LAN interface lo is the loopback device: a LAN interface faces the hosts the gateway forwards for").attach(&["--lan", "lo", "--decap", "tc"]),
        case("attach --decap bogus", CALCULON, "error: invalid value 'bogus' for '--decap <DECAP>'\n  [possible values: auto, xdp, tc]\n\nFor more information, try '--help'.").attach(&["--decap", "bogus"]).code(2),
        case("check without a file", CALCULON, "error: the following required arguments were not provided:\n  <FILE>\n\nUsage: ipip-user check <FILE>\n\nFor more information, try '--help'.").args(&["check"]).code(2),
        // reload without an attachment.
        case("reload of an unattached interface", tunnel(attached_file), "error: eth0 is not attached in this network namespace: `ipip-user attach eth0 --peers {file}` first").reload("eth0"),
        case("reload lo", tunnel(attached_file), "error: lo is not attached in this network namespace: `ipip-user attach lo --peers {file}` first").reload("lo"),
        // With eth0 attached.
        case("second attach", tunnel(attached_file), "error: eth0 is already attached (pins in {pins}): nothing changed. Run `ipip-user detach eth0` first, then attach again").attach(&[]).attached(),
        case("reload changing local", tunnel("local = \"192.0.2.59\"\naddress = \"10.0.1.1/24\""), needs_attach("[tunnel] local")).reload("eth0").attached(),
        case("reload changing address", tunnel("local = \"192.0.2.58\"\naddress = \"10.0.1.2/24\""), needs_attach("[tunnel] address")).reload("eth0").attached(),
        case("reload dropping address", tunnel("local = \"192.0.2.58\""), needs_attach("[tunnel] address")).reload("eth0").attached(),
        case("reload adding lan", tunnel(&format!("{attached_file}\nlan = [\"eth1\"]")), needs_attach("[tunnel] lan (eth1 is not attached)")).reload("eth0").attached(),
        case("reload beyond the capacity", sixty_five_peers(), "error: {file}: 65 peers and 65 routes, but eth0 was attached with room for 64 peers and 1024 routes: detach and attach again to resize (attach sizes the maps from the file, or from [tunnel] max_peers / max_routes when set)").reload("eth0").attached(),
        case("reload: peer unreachable", format!("{}{}", tunnel(attached_file), peer("far", "198.51.100.1", "\"10.0.9.0/24\"")), "error: peer far (198.51.100.1) is unreachable: Network is unreachable; add an underlay route to it out of eth0").reload("eth0").attached(),
        case("reload: syntax error", "[tunnel\n", at(1, 8, "unclosed table, expected `]`")).reload("eth0").attached(),
        case("reload: a FIFO", Input::Fifo, not_regular).reload("eth0").attached(),
        // [fleet].
        case("fleet in the main table", "[fleet]\ntable = 254\nunderlay = [\"192.0.2.0/24\"]\nallowed = [\"10.0.0.0/8\"]\n", at(2, 9, "[fleet] table must be a routing table the daemon writes for ipip alone (1..252 or above 255, like 100), not 254: 0 and 253..255 are the kernel's own (main is 254)")),
        case("fleet allowing nothing", "[fleet]\ntable = 100\nunderlay = [\"192.0.2.0/24\"]\nallowed = []\n", at(1, 1, "[fleet] allowed is empty: list the ranges learned prefixes must lie in, like [\"10.0.0.0/8\"]")),
        case("fleet allowing the underlay", "[fleet]\ntable = 100\nunderlay = [\"192.0.2.0/24\"]\nallowed = [\"192.0.0.0/8\"]\n", at(1, 1, "[fleet] allowed 192.0.0.0/8 overlaps the underlay: a learned prefix could then cover a peer's own address")),
        case("fleet underlay with host bits", "[fleet]\ntable = 100\nunderlay = [\"192.0.2.1/24\"]\nallowed = [\"10.0.0.0/8\"]\n", at(3, 13, "[fleet] underlay 192.0.2.1/24 has host bits set; did you mean 192.0.2.0/24?")),
        case("reload of a fleet file", format!("{}[fleet]\ntable = 100\nunderlay = [\"192.0.2.0/24\"]\nallowed = [\"10.0.0.0/8\"]\n", tunnel(attached_file)), "error: {file}: has a [fleet] section: its learned peers live in the `ipip-user run` that follows the routing table; reload that one (SIGHUP, `systemctl reload ipip@eth0`)").reload("eth0").attached(),
        // Fixed after this table first found them accepted or echoing 50 kB.
        case("address is local", tunnel("local = \"192.0.2.58\"\naddress = \"192.0.2.58/24\""), at(3, 11, "[tunnel] address 192.0.2.58 is the [tunnel] local address: the tunnel address lives inside the tunnel, the local address outside it")),
        case("reload: route containing eth0's address", routes("\"10.0.2.0/24\", \"192.0.2.0/26\"").replace("[[peer]]", "[tunnel]\naddress = \"10.0.1.1/24\"\n[[peer]]"), "error: {file}: route 192.0.2.0/26 of peer calculon contains 192.0.2.58, eth0's address that the tunnel sends from: the tunnel would route its own packets into itself").reload("eth0").attached(),
        case("50 kB ttl", tunnel(&format!("ttl = \"{long}\"")), at(2, 7, &format!("[tunnel] ttl must be \"inherit\" or a number 1..255, not {shown}"))),
        case("50 kB pmtudisc", tunnel(&format!("pmtudisc = \"{long}\"")), at(2, 12, &format!("invalid type: string {shown}, expected a boolean"))),
        case("50 kB unknown key", tunnel(&format!("{long} = 1")), at(2, 1, &format!("unknown field {shown}, expected one of `local`, `address`, `ttl`, `tos`, `pmtudisc`, `lan`, `max_peers`, `max_routes`"))),
    ]
}

/// Creates what `input` describes at `path` (or elsewhere) and returns the path to pass.
fn materialise(input: &Input, path: &Path) -> Result<PathBuf> {
    let fifo = |p: &Path| -> Result<()> {
        nix::unistd::mkfifo(
            p,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .with_context(|| format!("mkfifo {}", p.display()))
    };
    match input {
        Input::Toml(text) => std::fs::write(path, text)?,
        Input::Bytes(bytes) => std::fs::write(path, bytes)?,
        Input::Dir => std::fs::create_dir(path)?,
        Input::Fifo => fifo(path)?,
        Input::LinkToFifo => {
            let target = path.with_extension("fifo");
            fifo(&target)?;
            std::os::unix::fs::symlink(&target, path)?;
        }
        Input::LinkToMissing => std::os::unix::fs::symlink(path.with_extension("gone"), path)?,
        Input::DevZero => return Ok(PathBuf::from("/dev/zero")),
        Input::Sparse(len) => std::fs::File::create(path)?.set_len(*len)?,
        Input::Missing => {}
    }
    Ok(path.to_path_buf())
}

/// What one run printed.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    timed_out: bool,
}

/// Runs `ipip-user ARGS` in `n`'s namespace, killed after [`TIMEOUT`].
fn run_bounded(ipip: &IpipUser, n: &Node, args: &[String]) -> Result<Ran> {
    let bin = ipip.path().to_string_lossy().into_owned();
    let mut argv = vec![bin.as_str()];
    argv.extend(args.iter().map(String::as_str));
    let line = n.ns.command_line(&argv);
    let mut child = Command::new(&line[0])
        .args(&line[1..])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting ipip-user")?;
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let started = Instant::now();
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait()? {
            break (status, false);
        }
        if started.elapsed() > TIMEOUT {
            // nsenter execs the binary: this pid is ipip-user, started here.
            child.kill()?;
            break (child.wait()?, true);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Ran {
        code: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        timed_out,
    })
}

fn pinned(dir: &Path) -> Vec<String> {
    ipip_tests::netns::pins_under(dir, true)
}

/// The kernel state a refusal must not change, as (what, state) pairs.
fn kernel_state(n: &Node) -> Result<Vec<(String, String)>> {
    let mut state = Vec::new();
    for cmd in [
        &["ip", "-4", "addr", "show"][..],
        &["ip", "-4", "route", "show", "table", "all"],
        &["ip", "-d", "link", "show"],
        &["tc", "filter", "show", "dev", n.iface, "ingress"],
        &["tc", "filter", "show", "dev", n.iface, "egress"],
        &["cat", "/proc/sys/net/ipv4/ip_forward_use_pmtu"],
    ] {
        state.push((cmd.join(" "), n.ns.exec(cmd)?));
    }
    for (hook, ty) in [("ingress", BPF_TCX_INGRESS), ("egress", BPF_TCX_EGRESS)] {
        let count = tcx_prog_count(&n.ns, n.iface, ty)?;
        state.push((format!("tcx {hook} programs"), count.to_string()));
    }
    let pins = n.ns.pin_dir();
    state.push((format!("pins {}", pins.display()), pinned(&pins).join("\n")));
    Ok(state)
}

/// What differs between two states, empty when nothing does.
fn state_diff(before: &[(String, String)], after: &[(String, String)]) -> String {
    before
        .iter()
        .zip(after)
        .filter(|(b, a)| b.1 != a.1)
        .map(|(b, a)| {
            format!(
                "  {} changed:\n    before: {}\n    after:  {}\n",
                b.0,
                b.1.trim(),
                a.1.trim()
            )
        })
        .collect()
}

/// Runs case `i`; returns what went wrong, if anything.
fn run_case(i: usize, c: &Case, t: &HostToHost, ipip: &IpipUser) -> Result<Option<String>> {
    let d = &t.doolittle;
    let path = materialise(&c.input, &t.dir().join(format!("case-{i:03}.toml")))?;
    let file = path.to_string_lossy().into_owned();
    let args: Vec<String> = c.args.iter().map(|a| a.replace("{file}", &file)).collect();
    let want = c
        .want
        .replace("{file}", &file)
        .replace("{pins}", &d.ns.pin_dir().join(d.iface).to_string_lossy());
    let before = kernel_state(d)?;
    let ran = run_bounded(ipip, d, &args)?;
    let changed = state_diff(&before, &kernel_state(d)?);
    let got = ran.stderr.trim();
    let mut wrong = String::new();
    if ran.timed_out {
        wrong += &format!("  did not end within {TIMEOUT:?} (killed)\n");
    }
    if got != want.trim() || ran.code != Some(c.code) {
        wrong += &format!(
            "  expected (exit {}):\n{}\n  actual (exit {:?}):\n{}\n",
            c.code,
            indent(want.trim()),
            ran.code,
            indent(&shorten(got))
        );
    }
    if !ran.stdout.trim().is_empty() {
        wrong += &format!(
            "  printed on stdout:\n{}\n",
            indent(&shorten(ran.stdout.trim()))
        );
    }
    wrong += &changed;
    Ok((!wrong.is_empty())
        .then(|| format!("#{i} {}: ipip-user {}\n{wrong}", c.what, args.join(" "))))
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}\n"))
        .collect::<String>()
        .trim_end()
        .to_string()
}

/// `text` cut to a readable length for the failure report.
fn shorten(text: &str) -> String {
    const MAX: usize = 600;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}… ({} bytes in all)", &text[..cut], text.len()),
        None => text.to_string(),
    }
}

#[test]
fn bad_configs_are_refused_exactly_and_change_nothing() -> Result<()> {
    require_root()?;
    let t = HostToHost::new(Underlay::Direct)?;
    let ipip = IpipUser::new()?;
    let (d, c) = (&t.doolittle, &t.calculon);
    ensure!(
        d.iface == "eth0"
            && d.underlay == Ipv4Addr::new(192, 0, 2, 58)
            && d.private == Ipv4Addr::new(10, 0, 1, 1)
            && c.underlay == Ipv4Addr::new(192, 0, 2, 129)
            && c.prefix == "10.0.2.0/24",
        "the §4 topology changed; the case texts assume its addresses"
    );
    let cases = cases();
    ensure!(cases.len() >= 40, "only {} cases", cases.len());
    let mut names: Vec<_> = cases.iter().map(|c| c.what).collect();
    names.sort_unstable();
    names.dedup();
    ensure!(names.len() == cases.len(), "two cases share a description");
    let baseline = kernel_state(d)?;
    let mut failures = Vec::new();
    let indexed: Vec<_> = cases.iter().enumerate().collect();
    for (i, case) in indexed.iter().filter(|(_, c)| !c.attached) {
        failures.extend(run_case(*i, case, &t, &ipip)?);
    }
    ipip.attach(&d.ns, d.iface, &d.peers)?;
    for (i, case) in indexed.iter().filter(|(_, c)| c.attached) {
        failures.extend(run_case(*i, case, &t, &ipip)?);
    }
    ipip.detach(&d.ns, d.iface)?;
    let left = state_diff(&baseline, &kernel_state(d)?);
    if !left.is_empty() {
        failures.push(format!(
            "after the last detach, the state differs from the start:\n{left}"
        ));
    }
    ensure!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    Ok(())
}
