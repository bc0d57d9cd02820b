//! Why a packet does not take the fast path, and what that means for it. The programs return
//! `Result<_, Error>` and map the error to a verdict in exactly one place.

use ipip_common::Reason;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Not ours (not IPv4, not IPIP, not routed into the tunnel): the kernel handles it.
    NotOurs,
    /// Ours but refused or impossible: drop and count under this reason.
    Drop(Reason),
    /// Ours but left to the kernel: pass and count under this reason.
    Pass(Reason),
    /// Ours and kept (a fragment held for reassembly): consumed, counted, not a loss.
    Held(Reason),
    /// Ours, dropped, and answered: the frame was rewritten into an ICMP error and redirected
    /// (to its sender, or into this host's stack). Counted under this reason.
    Answered(Reason),
}

/// The fate of a packet, independent of the program type's return codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
    /// Consumed by the program (kept for later), not dropped.
    Stolen,
    /// Turned into a reply and redirected (the redirect helper was called).
    Redirect,
}

impl Error {
    /// The verdict and the reason to count (if any).
    #[inline(always)]
    pub const fn verdict(self) -> (Verdict, Option<Reason>) {
        match self {
            Error::NotOurs => (Verdict::Pass, None),
            Error::Drop(r) => (Verdict::Drop, Some(r)),
            Error::Pass(r) => (Verdict::Pass, Some(r)),
            Error::Held(r) => (Verdict::Stolen, Some(r)),
            Error::Answered(r) => (Verdict::Redirect, Some(r)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ours_passes_uncounted_and_drops_are_counted() {
        assert_eq!(Error::NotOurs.verdict(), (Verdict::Pass, None));
        assert_eq!(
            Error::Drop(Reason::DropUnknownPeer).verdict(),
            (Verdict::Drop, Some(Reason::DropUnknownPeer))
        );
        assert_eq!(
            Error::Pass(Reason::PassIpipNotLocal).verdict(),
            (Verdict::Pass, Some(Reason::PassIpipNotLocal))
        );
        assert_eq!(
            Error::Held(Reason::HeldOuterFragment).verdict(),
            (Verdict::Stolen, Some(Reason::HeldOuterFragment))
        );
        assert_eq!(
            Error::Answered(Reason::DropTooBig).verdict(),
            (Verdict::Redirect, Some(Reason::DropTooBig))
        );
    }
}
