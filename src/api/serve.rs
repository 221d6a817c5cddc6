//! The HTTP listener's accept loop and connections, for plain HTTP and
//! HTTPS alike: what a client may hold of the node, and for how long.
//!
//! Why not `axum::serve`: it sets no timer, so hyper's header timeout never
//! runs, a request body may trickle forever, and it accepts every socket it
//! can. Here, per connection:
//!
//! - at most `http.max_connections` are open; one beyond gets a `503`
//!   written without waiting (plain HTTP) and is closed
//!   (`meshlet_http_connections_refused_total`);
//! - the request head must arrive within `http.header_read_timeout`,
//!   counted from the connection's start or the previous response, so an
//!   idle keep-alive connection ends too
//!   (`meshlet_http_header_timeouts_total`);
//! - the body must arrive within `http.body_read_timeout` of the head: the
//!   body is wrapped in [`TimedBody`], which fails the read after it; the
//!   handler answers 408 or 400 and hyper closes the connection, since the
//!   rest of the body is never read (`meshlet_http_body_timeouts_total`);
//! - `accept` failures (out of descriptors) are counted and backed off
//!   (`crate::listen::Acceptor`), and open connections are served on.
//!
//! With TLS, the handshake (bounded by [`HANDSHAKE_TIMEOUT`]) comes first,
//! and a verified client certificate becomes a [`PeerCertificate`] request
//! extension. A connection upgraded to a WebSocket keeps its slot (the
//! socket owns it, see [`Slotted`]) until the WebSocket closes.
//!
//! Shutdown: open connections finish their in-flight request, and
//! [`serve`] returns once every connection ended. Until then the listener
//! stays open, and every new connection is answered `503` with
//! `{"status":"stopping"}` (plain HTTP; over TLS it is closed) and closed:
//! a load balancer polling `/readyz` sees the node stopping instead of a
//! refused connection it could take for a crash, and no new work is taken
//! on while the old drains.

use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, debug_span, Instrument};

use crate::listen::Acceptor;
use crate::policy::identity::PeerCertificate;
use crate::tls::{self, TlsMetrics};

/// A client that has not finished its TLS handshake by then is dropped, so
/// half-open connections cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a connection opened while the node stops is told (whatever it
/// asks, `/readyz` included), written without waiting.
const STOPPING: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 21\r\nconnection: close\r\nretry-after: 1\r\n\r\n{\"status\":\"stopping\"}";

/// What a refused connection is told, written without waiting.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 63\r\nconnection: close\r\nretry-after: 1\r\n\r\ntoo many open connections (http.max_connections); retry later\r\n";

/// How long and how many: the `[http]` limits of one listener.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
}

impl HttpLimits {
    pub fn from_config(config: &crate::config::HttpConfig) -> HttpLimits {
        HttpLimits {
            max_connections: config.max_connections.max(1),
            header_read_timeout: config.header_read_timeout,
            body_read_timeout: config.body_read_timeout,
        }
    }
}

/// The listener's connection figures for `/metrics`; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct HttpMetrics(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    open: AtomicI64,
    refused: AtomicU64,
    header_timeouts: AtomicU64,
    body_timeouts: AtomicU64,
    accept_errors: AtomicU64,
}

impl HttpMetrics {
    /// The listener's families of `/metrics`.
    pub fn encode_metrics(
        &self,
        enc: &mut crate::telemetry::expose::Encoder<'_>,
    ) -> crate::telemetry::expose::Encoded {
        let c = &self.0;
        crate::telemetry::expose::gauge(
            enc,
            "meshlet_http_connections",
            "Open HTTP connections, WebSockets included.",
            c.open.load(Ordering::Relaxed),
        )?;
        let counters: [(&str, &str, &AtomicU64); 4] = [
            (
                "meshlet_http_connections_refused_total",
                "HTTP connections closed at once with 503: http.max_connections were open.",
                &c.refused,
            ),
            (
                "meshlet_http_header_timeouts_total",
                "HTTP connections closed because request headers did not arrive within http.header_read_timeout.",
                &c.header_timeouts,
            ),
            (
                "meshlet_http_body_timeouts_total",
                "HTTP requests failed because the body did not arrive within http.body_read_timeout.",
                &c.body_timeouts,
            ),
            (
                "meshlet_http_accept_errors_total",
                "Failed accepts on the HTTP listener (mostly: out of file descriptors).",
                &c.accept_errors,
            ),
        ];
        for (name, help, value) in counters {
            crate::telemetry::expose::counter(enc, name, help, value.load(Ordering::Relaxed))?;
        }
        Ok(())
    }
}

/// Tells a connection opened during shutdown that the node stops, and
/// closes it without a reset: at most 64 KiB and one second are spent
/// reading what the client sent.
async fn answer_stopping(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.write_all(STOPPING).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let mut left: usize = 64 * 1024;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// Accepts connections until `shutdown`, then waits for the open ones to
/// finish their in-flight requests.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<(TlsAcceptor, TlsMetrics)>,
    limits: HttpLimits,
    metrics: HttpMetrics,
    app: Router,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut acceptor = Acceptor::new(listener, "http");
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = acceptor.accept(&metrics.0.accept_errors) => accepted,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.0.refused.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, limit = limits.max_connections, "HTTP connection refused: too many open");
            // Best effort and never waiting: the socket buffer takes it.
            // (Over TLS there is no handshake to say it in: just closed.)
            if tls.is_none() {
                let _ = stream.try_write(REFUSAL);
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let task = connection(
            stream,
            peer,
            tls.clone(),
            limits,
            metrics.clone(),
            app.clone(),
            shutdown.clone(),
            slot,
        );
        connections.spawn(task.instrument(debug_span!("http_connection", %peer)));
    }
    connections.close();
    // Draining: answer newcomers "stopping" until the last open connection
    // has finished its request.
    let drained = connections.wait();
    let mut drained = std::pin::pin!(drained);
    loop {
        let (stream, peer) = tokio::select! {
            () = drained.as_mut() => break,
            accepted = acceptor.accept(&metrics.0.accept_errors) => accepted,
        };
        debug!(%peer, "HTTP connection during shutdown: answered 503 stopping");
        if tls.is_none() {
            // Answer, then read (a bounded while) what the client sent: a
            // socket closed with unread input resets, and the client would
            // see the reset instead of the answer.
            tokio::spawn(answer_stopping(stream));
        }
    }
    drop(acceptor);
}

/// One connection: the TLS handshake if configured, then HTTP/1 with
/// upgrades until the client closes, a timeout fires, or shutdown asks the
/// connection to finish its current request.
#[allow(clippy::too_many_arguments)]
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<(TlsAcceptor, TlsMetrics)>,
    limits: HttpLimits,
    metrics: HttpMetrics,
    app: Router,
    shutdown: CancellationToken,
    slot: OwnedSemaphorePermit,
) {
    metrics.0.open.fetch_add(1, Ordering::Relaxed);
    let open = OpenGuard(metrics.clone(), slot);
    match tls {
        None => {
            let stream = Slotted {
                io: stream,
                _open: open,
            };
            http(stream, peer, None, limits, metrics, app, shutdown).await
        }
        Some((acceptor, tls_metrics)) => {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => match handshake {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(err)) => return tls_metrics.failed(peer, &err),
                    Err(_) => return tls_metrics.failed(peer, &"timed out"),
                },
            };
            tls_metrics.handshake_done();
            let client = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(<[CertificateDer<'_>]>::first)
                .map(|leaf| PeerCertificate {
                    subject_cn: tls::subject_common_name(leaf.as_ref()),
                    fingerprint_sha256: tls::fingerprint_sha256(leaf.as_ref()),
                });
            if let Some(client) = &client {
                debug!(%peer, subject_cn = ?client.subject_cn, fingerprint = %client.fingerprint_sha256, "client certificate verified");
            }
            let stream = Slotted {
                io: stream,
                _open: open,
            };
            http(stream, peer, client, limits, metrics, app, shutdown).await
        }
    }
}

/// Releases the connection's slot and gauge when dropped.
struct OpenGuard(HttpMetrics, #[allow(dead_code)] OwnedSemaphorePermit);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0 .0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's socket that holds its slot: when hyper hands the socket
/// to a WebSocket (an upgrade), the slot goes with it, so WebSockets count
/// against `http.max_connections` for as long as they are open.
struct Slotted<S> {
    io: S,
    _open: OpenGuard,
}

impl<S: AsyncRead + Unpin> AsyncRead for Slotted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Slotted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

async fn http<S>(
    stream: S,
    peer: SocketAddr,
    client: Option<PeerCertificate>,
    limits: HttpLimits,
    metrics: HttpMetrics,
    app: Router,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let body_metrics = metrics.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let timed_out = Arc::new(AtomicBool::new(false));
        let mut request = request.map(|body| TimedBody {
            inner: body,
            since: tokio::time::Instant::now(),
            deadline: None,
            timeout: limits.body_read_timeout,
            metrics: body_metrics.clone(),
            timed_out: timed_out.clone(),
        });
        if let Some(client) = &client {
            request.extensions_mut().insert(client.clone());
        }
        let mut app = app.clone();
        // Router is always ready (its poll_ready is a no-op), as in axum::serve.
        async move {
            let response = tower_service::Service::call(&mut app, request).await;
            // Whatever the handler made of the failed read, the client
            // hears why: 408, and the connection closes.
            if timed_out.load(Ordering::Relaxed) {
                return Ok(body_timeout_response(limits.body_read_timeout));
            }
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = served {
        if err.is_timeout() {
            metrics.0.header_timeouts.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, timeout = ?limits.header_read_timeout, "HTTP request headers not received in time; connection closed");
        } else {
            debug!(%peer, error = %err, "HTTP connection ended with an error");
        }
    }
}

fn body_timeout_response(timeout: Duration) -> axum::response::Response {
    let mut response = axum::response::IntoResponse::into_response((
        axum::http::StatusCode::REQUEST_TIMEOUT,
        format!("{}\n", BodyTimeout(timeout)),
    ));
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// A request body that fails once `timeout` has passed since the request
/// head arrived and the body is still not complete.
pub(crate) struct TimedBody {
    inner: Incoming,
    /// When the request head arrived.
    since: tokio::time::Instant,
    /// Armed on the first read that has to wait, so a body that is
    /// already complete (most requests) costs no timer.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    timeout: Duration,
    metrics: HttpMetrics,
    /// Set once the deadline passed, for the response.
    timed_out: Arc<AtomicBool>,
}

/// The body of a request did not arrive within `http.body_read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {0:?} (http.body_read_timeout)")]
pub(crate) struct BodyTimeout(Duration);

impl Body for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.timed_out.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(BodyTimeout(this.timeout).into())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let (since, timeout) = (this.since, this.timeout);
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(since + timeout)));
                if deadline.as_mut().poll(cx).is_ready() {
                    this.timed_out.store(true, Ordering::Relaxed);
                    this.metrics.0.body_timeouts.fetch_add(1, Ordering::Relaxed);
                    debug!(timeout = ?this.timeout, "HTTP request body not received in time");
                    return Poll::Ready(Some(Err(BodyTimeout(this.timeout).into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
