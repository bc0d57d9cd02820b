//! Hand-made IPIP packets: an inner IPv4 ICMP echo request, sent through a raw socket whose
//! protocol is IPIP (4) so that the kernel adds the outer header.

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

    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, 1, 0, 0]); // id, DF, ttl 64, ICMP
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&icmp);
    ip
}

/// Sends `inner` from inside `ns` as the payload of an IPIP packet to `outer_dst`; the kernel
/// writes the outer header (source: the address its route to `outer_dst` picks).
pub fn send_ipip(ns: &Netns, outer_dst: Ipv4Addr, inner: &[u8], count: usize) -> Result<()> {
    ns.run(|| {
        // SAFETY: plain socket calls on a descriptor this closure owns and closes.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, IPPROTO_IPIP);
            if fd < 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(outer_dst.octets()),
                },
                sin_zero: [0; 8],
            };
            let mut result = Ok(());
            for _ in 0..count {
                let n = libc::sendto(
                    fd,
                    inner.as_ptr().cast(),
                    inner.len(),
                    0,
                    (&addr as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                );
                if n < 0 {
                    result = Err(anyhow::Error::from(std::io::Error::last_os_error())
                        .context(format!("sendto {outer_dst} from namespace {}", ns.name())));
                    break;
                }
            }
            libc::close(fd);
            result
        }
    })
}
