//! `ipip-user log`: turn on the data path's drop descriptions and print them as they come.

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use aya::programs::ProgramInfo;
use ipip_common::{PROG_XDP_DECAP, TUNNEL_FLAG_LOG_DROPS};
use tokio::io::{unix::AsyncFd, Interest};

use crate::pins::PinDir;

fn set_flag(dir: &PinDir, on: bool) -> Result<()> {
    crate::attach::set_tunnel_flags(dir, TUNNEL_FLAG_LOG_DROPS, on)
}

/// Streams drop descriptions until Ctrl-C or `duration` ends; logging is switched off again
/// on the way out, whatever happens.
pub async fn run(interface: &str, duration: Option<Duration>) -> Result<()> {
    let dir = PinDir::for_interface(interface)?;
    if !dir.exists() {
        bail!("{interface} is not attached in this network namespace; `ipip-user status` lists what is");
    }
    // Both programs share one object and so one log ring buffer.
    let id = ProgramInfo::from_pin(dir.prog(PROG_XDP_DECAP))
        .with_context(|| format!("opening {}", dir.prog(PROG_XDP_DECAP).display()))?
        .id();
    let logger = aya_log::EbpfLogger::init_from_id(id)
        .context("opening the data path's log buffer (needs CAP_SYS_ADMIN to find it)")?;
    // SAFETY: the AsyncFd owns the logger, and so the ring buffer fd, for as long as it is
    // registered.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching the log buffer: {e}"))?;
    set_flag(&dir, true)?;
    eprintln!("logging drops on {interface}; Ctrl-C to stop");
    let stop = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(stop);
    let result = loop {
        tokio::select! {
            _ = &mut stop => break Ok(()),
            ready = fd.readable_mut() => match ready {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(e) => break Err(anyhow::Error::new(e).context("waiting for log records")),
            },
        }
    };
    fd.get_mut().flush();
    set_flag(&dir, false).context("switching drop logging off again")?;
    result
}
