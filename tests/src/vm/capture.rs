//! A raw `AF_PACKET` capture on one interface of a namespace, to look at the outer headers of
//! IPIP on the wire: what our TC egress sends and what the Linux peer sends (before our
//! decapsulation when that runs at TC ingress; XDP runs before packet sockets see a frame).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::netns::Netns;
use crate::packet::checksum;

/// Open capture socket; frames that arrived before [`Capture::open`] are not seen.
#[derive(Debug)]
pub struct Capture {
    fd: OwnedFd,
    iface: String,
}

/// One captured IPv4 packet (the Ethernet header removed) and its direction.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Sent by this host (PACKET_OUTGOING), else received.
    pub outgoing: bool,
    pub ip: Vec<u8>,
}

const ETH_P_ALL: u16 = 0x0003;
const PACKET_OUTGOING: u8 = 4;

impl Capture {
    pub fn open(ns: &Netns, iface: &str) -> Result<Self> {
        let name = iface.to_string();
        let fd = ns.run(move || {
            let ifindex = nix::net::if_::if_nametoindex(name.as_str())
                .with_context(|| format!("no interface {name}"))?;
            // SAFETY: plain socket(2); the descriptor is owned right away.
            let raw = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    i32::from(ETH_P_ALL.to_be()),
                )
            };
            if raw < 0 {
                return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
            }
            // SAFETY: `raw` is a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: zeroed sockaddr_ll is valid; fields set below.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = ETH_P_ALL.to_be();
            sll.sll_ifindex = ifindex as i32;
            // SAFETY: bind with a properly sized sockaddr_ll.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("bind AF_PACKET to {name}"));
            }
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            // SAFETY: setsockopt with a timeval of the right size.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            Ok(fd)
        })?;
        Ok(Capture {
            fd,
            iface: iface.to_string(),
        })
    }

    /// IPv4 frames for which `keep` holds, until `want` of them arrived or `wait` passed.
    pub fn collect(
        &self,
        wait: Duration,
        want: usize,
        keep: impl Fn(&Frame) -> bool,
    ) -> Result<Vec<Frame>> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536 + 64];
        while out.len() < want && Instant::now() < deadline {
            // SAFETY: zeroed sockaddr_ll is valid for recvfrom to fill.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: recvfrom into a buffer we own, with its length.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut sll as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted => continue,
                    _ => return Err(e).with_context(|| format!("capture on {}", self.iface)),
                }
            }
            let frame = &buf[..n as usize];
            if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
                continue;
            }
            let f = Frame {
                outgoing: sll.sll_pkttype == PACKET_OUTGOING,
                ip: frame[14..].to_vec(),
            };
            if keep(&f) {
                out.push(f);
            }
        }
        Ok(out)
    }
}

impl Frame {
    pub fn header(&self) -> Ipv4Header<'_> {
        Ipv4Header(&self.ip)
    }

    /// The packet inside an IPIP frame.
    pub fn inner(&self) -> Option<Ipv4Header<'_>> {
        let h = self.header();
        (h.protocol() == 4 && self.ip.len() >= h.ihl() + 20)
            .then(|| Ipv4Header(&self.ip[h.ihl()..]))
    }
}

/// Read-only view of an IPv4 header (and what follows).
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Header<'a>(pub &'a [u8]);

impl Ipv4Header<'_> {
    pub fn version(&self) -> u8 {
        self.0[0] >> 4
    }
    /// Header length in bytes.
    pub fn ihl(&self) -> usize {
        usize::from(self.0[0] & 0x0f) * 4
    }
    pub fn tos(&self) -> u8 {
        self.0[1]
    }
    pub fn total_len(&self) -> usize {
        usize::from(u16::from_be_bytes([self.0[2], self.0[3]]))
    }
    pub fn id(&self) -> u16 {
        u16::from_be_bytes([self.0[4], self.0[5]])
    }
    pub fn df(&self) -> bool {
        self.0[6] & 0x40 != 0
    }
    pub fn mf(&self) -> bool {
        self.0[6] & 0x20 != 0
    }
    pub fn frag_offset(&self) -> u16 {
        u16::from_be_bytes([self.0[6] & 0x1f, self.0[7]])
    }
    pub fn ttl(&self) -> u8 {
        self.0[8]
    }
    pub fn protocol(&self) -> u8 {
        self.0[9]
    }
    pub fn src(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.0[12], self.0[13], self.0[14], self.0[15])
    }
    pub fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.0[16], self.0[17], self.0[18], self.0[19])
    }
    /// The header checksum verifies (sums to zero).
    pub fn checksum_ok(&self) -> bool {
        self.0.len() >= self.ihl() && checksum(&self.0[..self.ihl()]) == 0
    }
    /// The first payload byte (e.g. the ICMP type).
    pub fn payload_first(&self) -> Option<u8> {
        self.0.get(self.ihl()).copied()
    }

    /// Everything a Linux ipip peer fixes in an outer header, except the ID (RFC 6864) and
    /// the addresses, as one comparable value.
    pub fn outer_fields(&self) -> OuterFields {
        OuterFields {
            version: self.version(),
            ihl: self.ihl(),
            tos: self.tos(),
            df: self.df(),
            mf: self.mf(),
            frag_offset: self.frag_offset(),
            ttl: self.ttl(),
            protocol: self.protocol(),
            checksum_ok: self.checksum_ok(),
            total_minus_inner: self.total_len() as isize
                - self
                    .0
                    .get(self.ihl()..)
                    .filter(|r| r.len() >= 4)
                    .map_or(0, |r| u16::from_be_bytes([r[2], r[3]]) as isize),
        }
    }
}

/// See [`Ipv4Header::outer_fields`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OuterFields {
    pub version: u8,
    pub ihl: usize,
    pub tos: u8,
    pub df: bool,
    pub mf: bool,
    pub frag_offset: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub checksum_ok: bool,
    /// Outer total length minus the inner packet's total length (20 for IPIP).
    pub total_minus_inner: isize,
}
