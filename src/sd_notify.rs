//! systemd readiness and watchdog (`Type=notify`, `WatchdogSec=`), spoken
//! directly over `$NOTIFY_SOCKET` (a unix datagram socket), so the service
//! manager knows when the node is really ready, restarts it when its
//! runtime stops making progress, and sees shutdown begin.
//!
//! Without `$NOTIFY_SOCKET` (not under systemd) every call is a no-op.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Sends one notification (`READY=1`, `STOPPING=1`, `WATCHDOG=1`...).
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            // An abstract socket (Linux): `@` stands for the leading NUL.
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)
        } else {
            socket.send_to(state.as_bytes(), &path)
        }
    });
    match sent {
        Ok(_) => debug!(state, "notified the service manager"),
        Err(err) => warn!(state, error = %err, "cannot notify the service manager"),
    }
}

/// The watchdog interval systemd asks for (`$WATCHDOG_USEC`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pets the watchdog at half its interval until `shutdown`. It runs on
/// the node's runtime, so a wedged runtime stops the petting and systemd
/// restarts the node.
pub async fn watchdog(interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval / 2);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => notify("WATCHDOG=1"),
        }
    }
}
