//! Accepting sockets when file descriptors run short, for both listeners
//! (HTTP and the embedded MQTT broker).
//!
//! Why: every connection costs a descriptor, and a process that reaches
//! its `RLIMIT_NOFILE` gets `EMFILE` from `accept`. Waiting clients then sit
//! in the kernel's backlog until they time out, while an accept loop that
//! retries at once spins. Three measures keep the node serving:
//!
//! - at start the soft limit is raised to the hard one (as Go's runtime
//!   does), and the two connection caps are fitted into what the limit
//!   leaves after the store's own files ([`fit_to_descriptors`]), so one
//!   protocol's clients cannot take the descriptors the other needs;
//! - each accept loop keeps one spare descriptor ([`Acceptor`]): on
//!   `EMFILE`/`ENFILE` it gives the spare up, accepts the waiting client and
//!   closes it at once (the client learns now instead of timing out), takes
//!   the spare back and backs off briefly, counting every such error;
//! - connections that do not finish their request or CONNECT in time are
//!   closed (the listeners' own timeouts), so descriptors come back.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::config::HubConfig;

/// Back-off after a failed `accept`, so the loop does not spin while the
/// condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Descriptors kept out of the connection caps for the store (sled's
/// files), the product folders, logs, upstream connections and the spares.
const RESERVED_DESCRIPTORS: u64 = 64;

/// Raises the soft descriptor limit to the hard one and fits
/// `http.max_connections` and `mqtt.embedded.max_connections` into what is
/// left after the descriptors open now and [`RESERVED_DESCRIPTORS`]; both
/// are lowered in proportion, with a warning, when they do not fit.
pub fn fit_to_descriptors(mut config: HubConfig) -> HubConfig {
    let Some(limit) = raise_descriptor_limit() else {
        return config;
    };
    let open = open_descriptors().unwrap_or(0);
    let available = limit.saturating_sub(open + RESERVED_DESCRIPTORS);
    let mqtt = if config.mqtt.embedded.enabled {
        config.mqtt.embedded.max_connections
    } else {
        0
    };
    let (http, broker) = fit_caps(available, config.http.max_connections, mqtt);
    if http < config.http.max_connections || broker < mqtt {
        warn!(
            descriptor_limit = limit,
            open,
            http.max_connections = http,
            mqtt.max_connections = broker,
            "the descriptor limit (ulimit -n) cannot hold the configured connection caps; lowered to fit"
        );
        config.http.max_connections = http;
        if config.mqtt.embedded.enabled {
            config.mqtt.embedded.max_connections = broker;
        }
    }
    config
}

/// Splits `available` descriptors between the HTTP and MQTT caps in
/// proportion to what was asked, when both do not fit; each keeps at least
/// one connection.
fn fit_caps(available: u64, http: usize, mqtt: usize) -> (usize, usize) {
    let asked = http as u64 + mqtt as u64;
    if asked <= available || asked == 0 {
        return (http, mqtt);
    }
    let share = |cap: usize| ((cap as u64 * available) / asked).max(1) as usize;
    (share(http).min(http), share(mqtt).min(mqtt))
}

/// The soft `RLIMIT_NOFILE` after raising it to the hard limit.
#[cfg(unix)]
#[allow(unsafe_code)] // getrlimit/setrlimit: libc, no safe wrapper in std
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
fn raise_descriptor_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read the plain struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur as u64)
}

#[cfg(not(unix))]
fn raise_descriptor_limit() -> Option<u64> {
    None
}

/// Descriptors the process holds now (Linux: `/proc/self/fd`).
fn open_descriptors() -> Option<u64> {
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|entries| entries.count() as u64)
}

/// An accept loop's listener with its spare descriptor and error count.
pub struct Acceptor {
    listener: TcpListener,
    spare: Option<std::fs::File>,
    /// Which listener, for the log.
    what: &'static str,
}

impl Acceptor {
    pub fn new(listener: TcpListener, what: &'static str) -> Acceptor {
        Acceptor {
            listener,
            spare: take_spare(),
            what,
        }
    }

    /// The next connection. Failures are counted in `errors` and retried
    /// after a short back-off; on descriptor exhaustion the waiting client
    /// is accepted with the spare descriptor and closed at once.
    pub async fn accept(&mut self, errors: &AtomicU64) -> (TcpStream, SocketAddr) {
        loop {
            let err = match self.listener.accept().await {
                Ok(accepted) => return accepted,
                Err(err) => err,
            };
            errors.fetch_add(1, Ordering::Relaxed);
            if is_out_of_descriptors(&err) {
                warn!(listener = self.what, error = %err, "out of file descriptors; closing a waiting connection, serving the open ones");
                if self.spare.take().is_some() {
                    // The spare's descriptor is free now: the client that
                    // waits longest learns at once instead of timing out.
                    if let Some(Ok((stream, peer))) = self.listener.accept().now_or_never() {
                        debug!(listener = self.what, %peer, "closed at once: no descriptor for it");
                        drop(stream);
                    }
                    self.spare = take_spare();
                    if self.spare.is_some() {
                        // Progress was made; the next accept may succeed.
                        continue;
                    }
                }
            } else if is_per_connection(&err) {
                // The client went away between SYN and accept.
                continue;
            } else {
                warn!(listener = self.what, error = %err, "accepting a connection failed");
            }
            tokio::time::sleep(ACCEPT_BACKOFF).await;
        }
    }
}

fn take_spare() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

fn is_out_of_descriptors(err: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
    }
    #[cfg(not(unix))]
    {
        let _ = err;
        false
    }
}

fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::fit_caps;

    #[test]
    fn caps_that_fit_are_kept() {
        assert_eq!(fit_caps(2_000, 256, 1_000), (256, 1_000));
        assert_eq!(fit_caps(0, 0, 0), (0, 0));
    }

    #[test]
    fn caps_that_do_not_fit_share_the_descriptors_in_proportion() {
        let (http, mqtt) = fit_caps(126, 256, 1_000);
        assert!(http + mqtt <= 126, "{http} + {mqtt}");
        assert_eq!((http, mqtt), (25, 100));
        assert_eq!(fit_caps(0, 256, 1_000), (1, 1), "each keeps one");
        assert_eq!(fit_caps(10, 256, 0), (10, 0));
    }
}
