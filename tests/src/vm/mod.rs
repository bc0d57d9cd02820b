//! A stock Linux ipip endpoint for interop tests: Debian's kernel and busybox booted under
//! qemu (TCG) with its NIC a tap device in a test namespace ([`guest`]), built and cached
//! from Debian packages ([`image`]), configured with iproute2 like an admin would
//! ([`admin`]), and a raw capture to compare outer headers on the wire ([`capture`]).

pub mod admin;
pub mod capture;
pub mod cluster;
pub mod cpio;
pub mod guest;
pub mod image;
pub mod peer;
pub mod routed;
pub mod traffic;

pub use admin::{LinuxTunnel, Ttl};
pub use capture::{Capture, Frame, Ipv4Header, OuterFields};
pub use guest::{running_guests, GuestConfig, LinuxGuest, QEMU_MARKER};
