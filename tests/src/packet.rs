//! Hand-made packets: inner IPv4 ICMP echo requests and UDP datagrams, sent through a raw
//! socket whose protocol is IPIP (4) so that the kernel adds the outer header, or with a
//! forged outer header through an `IP_HDRINCL` socket.

use std::net::Ipv4Addr;

use anyhow::Result;

use crate::netns::Netns;

/// IP protocol number of IPv4-in-IPv4 (RFC 2003).
pub const IPPROTO_IPIP: i32 = 4;

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet `src → dst` carrying an ICMP echo request with `payload`.
pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut icmp = vec![8u8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 1, 64, &icmp)
}

/// An IPv4 header (IHL 5, ID 0x1234, DF, checksum filled in) in front of `payload`.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, ttl, protocol, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(payload);
    ip
}

/// An IPv4 packet `src:sport → dst:dport` carrying a UDP datagram with `payload`.
pub fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut dgram = Vec::with_capacity(usize::from(len));
    dgram.extend_from_slice(&sport.to_be_bytes());
    dgram.extend_from_slice(&dport.to_be_bytes());
    dgram.extend_from_slice(&len.to_be_bytes());
    dgram.extend_from_slice(&[0, 0]);
    dgram.extend_from_slice(payload);
    let mut pseudo = Vec::with_capacity(12 + dgram.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&len.to_be_bytes());
    pseudo.extend_from_slice(&dgram);
    let c = match checksum(&pseudo) {
        0 => 0xffff,
        c => c,
    };
    dgram[6..8].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 17, 64, &dgram)
}

/// A whole IPIP packet: an outer header `outer_src → outer_dst`, protocol 4, around `inner`.
pub fn ipip_packet(outer_src: Ipv4Addr, outer_dst: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    ipv4(outer_src, outer_dst, IPPROTO_IPIP as u8, 64, inner)
}

/// Sends `packet`, a complete IPv4 packet whose header the caller wrote (any source address:
/// this is how a spoofer forges one), from inside `ns` through an `IPPROTO_RAW` socket
/// (implies `IP_HDRINCL`). The kernel routes it by its destination.
pub fn send_raw_ipv4(ns: &Netns, packet: &[u8], count: usize) -> Result<()> {
    anyhow::ensure!(packet.len() >= 20, "not an IPv4 packet");
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    send_on_raw_socket(ns, libc::IPPROTO_RAW, dst, packet, count)
}

/// Sends `inner` from inside `ns` as the payload of an IPIP packet to `outer_dst`; the kernel
/// writes the outer header (source: the address its route to `outer_dst` picks).
pub fn send_ipip(ns: &Netns, outer_dst: Ipv4Addr, inner: &[u8], count: usize) -> Result<()> {
    send_on_raw_socket(ns, IPPROTO_IPIP, outer_dst, inner, count)
}

/// Sends `data` `count` times to `dst` from a raw socket of `protocol` opened inside `ns`.
fn send_on_raw_socket(
    ns: &Netns,
    protocol: i32,
    dst: Ipv4Addr,
    data: &[u8],
    count: usize,
) -> Result<()> {
    ns.run(|| {
        // SAFETY: plain socket calls on a descriptor this closure owns and closes.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, protocol);
            if fd < 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(dst.octets()),
                },
                sin_zero: [0; 8],
            };
            let mut result = Ok(());
            for _ in 0..count {
                let n = libc::sendto(
                    fd,
                    data.as_ptr().cast(),
                    data.len(),
                    0,
                    (&addr as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                );
                if n < 0 {
                    result = Err(anyhow::Error::from(std::io::Error::last_os_error())
                        .context(format!("sendto {dst} from namespace {}", ns.name())));
                    break;
                }
            }
            libc::close(fd);
            result
        }
    })
}
