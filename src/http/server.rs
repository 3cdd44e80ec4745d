//! Serving: the main listener and the optional admin listener, HTTPS with
//! certificates re-read from disk, and the drain on SIGTERM/SIGINT.
//!
//! A drain turns `/readyz` unready, stops accepting on every listener (new
//! connections are refused), lets in-flight requests finish and closes idle
//! keep-alive connections; after `[server] shutdown_grace_secs` the process
//! stops anyway, so an orchestrator's own deadline is never the one that
//! kills a request half-way.

use super::AppState;
use crate::config::{Resolved, TlsFiles};
use axum::Router;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How often the certificate and key files are checked for changes.
pub const TLS_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// How long a client may take to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the process is draining. Shared by the readiness probe (unready
/// from the first moment of a drain) and the serving loop.
#[derive(Debug, Clone, Default)]
pub struct Lifecycle {
    draining: Arc<AtomicBool>,
}

impl Lifecycle {
    /// True once a drain has started; it never ends.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Marks the start of the drain.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
}

/// The connection slots of one listener (`[server] max_connections`): how
/// many connections are open now (TLS handshakes included) and how often
/// every slot was taken. Read by `/metrics` at scrape time, so serving
/// moves no gauge a scrape does not ask for.
#[derive(Debug)]
pub struct ListenerSlots {
    listener: &'static str,
    max: usize,
    free: Arc<tokio::sync::Semaphore>,
    open: AtomicUsize,
    at_cap: AtomicU64,
}

impl ListenerSlots {
    fn new(listener: &'static str, max: usize) -> Self {
        Self {
            listener,
            max,
            free: Arc::new(tokio::sync::Semaphore::new(max)),
            open: AtomicUsize::new(0),
            at_cap: AtomicU64::new(0),
        }
    }

    /// The listener: `main` (`[server] listen`) or `admin`.
    pub fn listener(&self) -> &'static str {
        self.listener
    }

    /// Connections open now: accepted and not yet closed.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The listener's `max_connections`.
    pub fn max(&self) -> usize {
        self.max
    }

    /// How often the listener found every slot taken and stopped accepting
    /// (new connections waited in the kernel's accept queue) until one was
    /// free, since it started.
    pub fn at_cap(&self) -> u64 {
        self.at_cap.load(Ordering::Relaxed)
    }

    /// The slot `permit` held by a connection just accepted, counted open
    /// until it closes.
    fn hold(self: &Arc<Self>, permit: tokio::sync::OwnedSemaphorePermit) -> Slot {
        self.open.fetch_add(1, Ordering::Relaxed);
        Slot {
            _permit: permit,
            slots: self.clone(),
        }
    }
}

/// A connection's slot: free again, and the connection no longer counted
/// open, when it is dropped.
pub struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    slots: Arc<ListenerSlots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The slots of every listener this replica serves on, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Connections {
    listeners: Arc<RwLock<Vec<Arc<ListenerSlots>>>>,
}

impl Connections {
    /// Adds `slots`, replacing a listener of the same name.
    fn register(&self, slots: Arc<ListenerSlots>) {
        if let Ok(mut all) = self.listeners.write() {
            all.retain(|s| s.listener != slots.listener);
            all.push(slots);
        }
    }

    /// Every listener's slots, in the order they started.
    pub fn listeners(&self) -> Vec<Arc<ListenerSlots>> {
        self.listeners.read().map(|all| all.clone()).unwrap_or_default()
    }
}

/// File descriptors the process keeps besides its clients' connections:
/// the listeners, the store's connections, calls to IdPs, hooks and
/// webhooks, mail, logs and the libraries' own files.
pub const FILES_BESIDES_CONNECTIONS: u64 = 1024;

/// What [`fit_open_files`] found and did with the process's limit on open
/// files (`RLIMIT_NOFILE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit at start.
    pub was: u64,
    /// The soft limit now: raised to the hard limit when it was lower.
    pub now: u64,
    /// What `max_connections` on every listener needs, with
    /// [`FILES_BESIDES_CONNECTIONS`].
    pub needed: u64,
}

impl OpenFiles {
    /// The soft limit to ask for: the hard one (as Go's runtime and
    /// systemd's services do), since the process polls with epoll and
    /// nothing in it is bound to the 1,024 of `select`.
    fn plan(soft: u64, hard: u64, needed: u64) -> Self {
        Self {
            was: soft,
            now: soft.max(hard),
            needed,
        }
    }

    /// Whether every listener can hold `max_connections` with the files the
    /// process needs besides.
    pub fn fits(&self) -> bool {
        self.now >= self.needed
    }
}

/// Raises the process's soft limit on open files to its hard limit and
/// says (reason `server.open_files_too_few`) when even that is below what
/// `listeners` listeners of `max_connections` connections each need: past
/// it, accepting fails ("too many open files", each listener backs off)
/// and so do the store's reconnections and outbound calls. `None` where
/// the limit cannot be read.
pub fn fit_open_files(listeners: usize, max_connections: usize) -> Option<OpenFiles> {
    let needed = (listeners as u64)
        .saturating_mul(max_connections as u64)
        .saturating_add(FILES_BESIDES_CONNECTIONS);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` through a pointer to a live,
    // properly aligned local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(
            reason = "server.open_files_unknown",
            error = %std::io::Error::last_os_error(),
            "the limit on open files could not be read"
        );
        return None;
    }
    let mut files = OpenFiles::plan(limit.rlim_cur, limit.rlim_max, needed);
    if files.now > files.was {
        let raised = libc::rlimit {
            rlim_cur: files.now,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `setrlimit` reads one `rlimit` from a live local.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            tracing::warn!(
                reason = "server.open_files_not_raised",
                error = %std::io::Error::last_os_error(),
                soft = files.was,
                hard = limit.rlim_max,
                "the limit on open files could not be raised to its hard limit"
            );
            files.now = files.was;
        }
    }
    if files.fits() {
        tracing::info!(
            reason = "server.open_files",
            limit = files.now,
            was = files.was,
            needed = files.needed,
            "open files: room for max_connections on every listener"
        );
    } else {
        tracing::warn!(
            reason = "server.open_files_too_few",
            limit = files.now,
            needed = files.needed,
            listeners,
            max_connections,
            "the limit on open files is below what max_connections on every listener needs: raise the \
             process's hard limit (LimitNOFILE=, ulimit -Hn, the container runtime's nofile) or lower \
             [server] max_connections"
        );
    }
    Some(files)
}

/// How serving ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Every in-flight request finished within the grace period.
    Drained,
    /// The grace period ran out with requests still in flight.
    GraceExceeded,
}

/// The sockets Portcullis serves on, bound before anything is announced.
pub struct Listeners {
    /// The public listener (`[server] listen`).
    pub main: TcpListener,
    /// The admin and metrics listener (`[server] admin_listen`), if separate.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of `resolved`.
    pub async fn bind(resolved: &Resolved) -> std::io::Result<Self> {
        let main = listen(resolved.listen)?;
        let admin = match resolved.admin_listen {
            Some(addr) => Some(listen(addr)?),
            None => None,
        };
        Ok(Self { main, admin })
    }
}

/// The queue of connections the kernel completes for us before we accept
/// them, asked as long as it may be: the kernel caps it at its own limit
/// (`net.core.somaxconn`, 4096 by default on Linux since 5.4), as Go's
/// servers do. tokio's `TcpListener::bind` asks for 128 (mio's, the
/// standard library's value): under a burst of new connections (a load
/// balancer reconnecting after a deploy, a client opening connections for
/// the requests it holds while the gateway is busy) the queue overflowed,
/// the kernel dropped the handshakes past it, and each of those clients
/// waited a second or more for its SYN to be sent again
/// (`TcpExtListenOverflows` in `nstat`).
const LISTEN_BACKLOG: u32 = i32::MAX as u32;

/// A listener on `addr` with [`LISTEN_BACKLOG`] and, as tokio's own `bind`
/// does on Unix, `SO_REUSEADDR` (a restart binds the port its predecessor's
/// connections still linger on).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `state` on `listeners` until `shutdown` resolves; then turns
/// unready, keeps serving for `resolved.shutdown_delay`, stops accepting and
/// drains for at most `resolved.shutdown_grace`. With `resolved.tls`, both listeners
/// speak HTTPS with the certificate loaded now and re-read on change (an
/// unreadable or mismatched pair at start is an error; later, the previous
/// pair keeps serving).
pub async fn serve(
    state: Arc<AppState>,
    resolved: &Resolved,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<Ended> {
    let tls = match &resolved.tls {
        Some(files) => {
            let reloader = Arc::new(CertReloader::load(files.clone()).map_err(anyhow::Error::msg)?);
            tokio::spawn(watch_certificate(reloader.clone()));
            Some(acceptor(reloader)?)
        }
        None => None,
    };
    let (main_router, admin_router) = match listeners.admin {
        Some(_) => (
            super::public_router(state.clone()),
            Some(super::admin_router(state.clone())),
        ),
        None => (super::router(state.clone()), None),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let limits = ConnectionLimits {
        header_timeout: resolved.header_timeout,
        max_connections: resolved.max_connections,
    };
    let mut servers = tokio::task::JoinSet::new();
    let main_slots = Arc::new(ListenerSlots::new("main", limits.max_connections));
    state.connections.register(main_slots.clone());
    servers.spawn(serve_one(
        listeners.main,
        main_router,
        tls.clone(),
        limits,
        main_slots,
        stop_rx.clone(),
    ));
    if let (Some(listener), Some(router)) = (listeners.admin, admin_router) {
        let slots = Arc::new(ListenerSlots::new("admin", limits.max_connections));
        state.connections.register(slots.clone());
        servers.spawn(serve_one(listener, router, tls, limits, slots, stop_rx));
    }

    shutdown.await;
    state.lifecycle.start_drain();
    if !resolved.shutdown_delay.is_zero() {
        tracing::info!(
            reason = "shutdown.unready",
            delay_secs = resolved.shutdown_delay.as_secs(),
            "unready: still serving while load balancers take this replica out"
        );
        tokio::time::sleep(resolved.shutdown_delay).await;
    }
    tracing::info!(
        reason = "shutdown.draining",
        grace_secs = resolved.shutdown_grace.as_secs(),
        "draining: no new connections, finishing in-flight requests"
    );
    if stop_tx.send(true).is_err() {
        // Every server already ended (each holds a receiver): nothing to drain.
        tracing::warn!(reason = "shutdown.servers_gone", "the listeners had already stopped");
    }
    let all_done = async {
        while let Some(done) = servers.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(reason = "shutdown.server_error", error = %e, "a listener failed"),
                Err(e) => tracing::error!(reason = "shutdown.server_error", error = %e, "a listener task failed"),
            }
        }
    };
    match tokio::time::timeout(resolved.shutdown_grace, all_done).await {
        Ok(()) => {
            tracing::info!(reason = "shutdown.drained", "every in-flight request finished");
            Ok(Ended::Drained)
        }
        Err(_) => {
            tracing::warn!(
                reason = "shutdown.grace_exceeded",
                grace_secs = resolved.shutdown_grace.as_secs(),
                "the grace period ended with requests still in flight; stopping anyway"
            );
            Ok(Ended::GraceExceeded)
        }
    }
}

/// The limits of a listener's connections (`[server] header_timeout_secs`,
/// `max_connections`).
#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    header_timeout: Duration,
    max_connections: usize,
}

/// A connection the listener accepted, with its slot: the slot is free
/// again when the connection ends.
type Accepted<Io> = (Io, SocketAddr, Slot);

/// Where [`accept_loop`] takes its connections from: plain TCP, or TLS
/// with the handshake done.
trait Incoming: Send + 'static {
    type Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    /// The next connection, once a slot is free.
    fn next(&mut self) -> impl Future<Output = Accepted<Self::Io>> + Send;
}

/// Plain TCP: a slot is taken before each accept, so at the cap new
/// connections wait in the kernel's accept queue.
struct PlainIncoming {
    listener: TcpListener,
    slots: Arc<ListenerSlots>,
}

impl Incoming for PlainIncoming {
    type Io = TcpStream;

    async fn next(&mut self) -> Accepted<TcpStream> {
        let permit = take_slot(&self.slots).await;
        // axum's accept: transient errors (a client gone before its
        // accept) are skipped, others (out of file descriptors) back off.
        let (tcp, remote) = axum::serve::Listener::accept(&mut self.listener).await;
        let slot = self.slots.hold(permit);
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        (tcp, remote, slot)
    }
}

/// A free connection slot; while none is free, counts it (the listener is
/// at its cap), says so (once a minute at most) and waits.
async fn take_slot(slots: &ListenerSlots) -> tokio::sync::OwnedSemaphorePermit {
    if let Ok(slot) = slots.free.clone().try_acquire_owned() {
        return slot;
    }
    slots.at_cap.fetch_add(1, Ordering::Relaxed);
    static LAST_WARNED: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    if let Ok(mut last) = LAST_WARNED.lock() {
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            *last = Some(std::time::Instant::now());
            tracing::warn!(
                reason = "server.connections_at_cap",
                listener = slots.listener,
                "every connection slot ([server] max_connections) is taken; new connections wait in the accept queue"
            );
        }
    }
    match slots.free.clone().acquire_owned().await {
        Ok(slot) => slot,
        // The semaphore is never closed.
        Err(_) => std::future::pending().await,
    }
}

async fn serve_one(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    slots: Arc<ListenerSlots>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    match tls {
        None => accept_loop(PlainIncoming { listener, slots }, router, limits, stop).await,
        Some(acceptor) => accept_loop(TlsListener::new(listener, acceptor, slots)?, router, limits, stop).await,
    }
    Ok(())
}

/// Serves every connection `incoming` accepts until `stop`; then stops
/// accepting (dropping the listener closes its socket), asks each
/// connection to finish (an idle one closes at once, a busy one after its
/// response) and returns once they all have.
///
/// Each connection is hyper's HTTP/1 with a timer, so a request's line and
/// headers must arrive within `limits.header_timeout` (which also closes a
/// keep-alive connection idle that long): `axum::serve` sets no timer, and
/// a client could hold a connection open forever a byte at a time. The
/// body's deadline is the edge's ([`super::deadline`]). At most
/// `limits.max_connections` are open at once (TLS handshakes included):
/// beyond, new ones wait in the kernel's accept queue, and the process
/// keeps file descriptors for its store, its IdPs and its logs.
async fn accept_loop<I: Incoming>(
    mut incoming: I,
    router: Router,
    limits: ConnectionLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // Every connection holds a receiver; `closed` resolves once all are gone.
    let (open_tx, open_rx) = tokio::sync::watch::channel(());
    let timer = hyper_util::rt::TokioTimer::new();
    loop {
        let (io, remote, slot) = tokio::select! {
            accepted = incoming.next() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let router = router.clone();
        let stop = stop.clone();
        let open = open_rx.clone();
        let timer = timer.clone();
        tokio::spawn(async move {
            serve_connection(io, remote, router, limits, timer, stop).await;
            drop((open, slot));
        });
    }
    drop(incoming);
    drop(open_rx);
    open_tx.closed().await;
}

/// One connection, until the client closes it, it times out or a drain
/// asks it to finish.
async fn serve_connection<I>(
    io: I,
    remote: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    timer: hyper_util::rt::TokioTimer,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tower::ServiceExt;
    // The peer address as `into_make_service_with_connect_info` passes it,
    // for the edge (`ConnectInfo<SocketAddr>`).
    let service = router.map_request(move |req: axum::http::Request<hyper::body::Incoming>| {
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(axum::extract::ConnectInfo(remote));
        req
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(timer).header_read_timeout(limits.header_timeout);
    let conn = builder.serve_connection(
        hyper_util::rt::TokioIo::new(io),
        hyper_util::service::TowerToHyperService::new(service),
    );
    let mut conn = std::pin::pin!(conn);
    let mut asked_to_finish = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    // A client that went away, a malformed request (hyper
                    // answered 400 or 431), or headers not sent in time (or
                    // a keep-alive connection idle that long).
                    let reason = if e.is_timeout() { "http.header_timeout" } else { "http.connection_error" };
                    tracing::debug!(reason, %remote, error = %e, "connection closed");
                }
                break;
            }
            _ = stop.wait_for(|stop| *stop), if !asked_to_finish => {
                conn.as_mut().graceful_shutdown();
                asked_to_finish = true;
            }
        }
    }
}

/// A TLS server configuration whose certificate comes from `reloader`.
fn acceptor(reloader: Arc<CertReloader>) -> anyhow::Result<TlsAcceptor> {
    let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(reloader);
    // The router speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts TCP connections and completes TLS handshakes off the accept
/// loop (a slow client never holds up others); dropping it closes the socket.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<Accepted<TlsStream<TcpStream>>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Accepts while `slots` has a free slot: a connection holds its slot
    /// from before its handshake.
    fn new(listener: TcpListener, acceptor: TlsAcceptor, slots: Arc<ListenerSlots>) -> std::io::Result<Self> {
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            loop {
                let permit = take_slot(&slots).await;
                let (tcp, remote, slot) = match listener.accept().await {
                    Ok((tcp, remote)) => (tcp, remote, slots.hold(permit)),
                    Err(e) => {
                        // Out of file descriptors and the like: back off.
                        tracing::warn!(reason = "tls.accept_failed", error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "TCP_NODELAY not set");
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            if tx.send((stream, remote, slot)).await.is_err() {
                                tracing::debug!("listener closed during a handshake");
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(reason = "tls.handshake_failed", %remote, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(reason = "tls.handshake_timeout", %remote, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { ready, accepting })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Closes the listening socket: new connections are refused.
        self.accepting.abort();
    }
}

impl Incoming for TlsListener {
    type Io = TlsStream<TcpStream>;

    async fn next(&mut self) -> Accepted<TlsStream<TcpStream>> {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }
}

/// When a file was last changed, as far as reloading cares.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    // `metadata` follows symlinks, so a Kubernetes Secret volume's atomic
    // `..data` swap is seen as a change.
    std::fs::metadata(path)
        .ok()
        .and_then(|m| m.modified().ok().map(|t| (t, m.len())))
}

/// The serving certificate, re-read from its files when they change; every
/// new handshake gets the current one, established connections keep theirs.
#[derive(Debug)]
pub struct CertReloader {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
    seen: RwLock<(Stamp, Stamp)>,
}

impl CertReloader {
    /// Loads the pair now; an error says which file and why.
    pub fn load(files: TlsFiles) -> Result<Self, String> {
        let seen = (stamp(&files.cert), stamp(&files.key));
        let key = load_certified_key(&files)?;
        Ok(Self {
            files,
            current: RwLock::new(Arc::new(key)),
            seen: RwLock::new(seen),
        })
    }

    /// Re-reads the files if they changed since the last look (or always,
    /// with `force`). A pair that cannot be used leaves the previous one
    /// serving; it is retried when the files change again.
    pub fn reload_if_changed(&self, force: bool) {
        let now = (stamp(&self.files.cert), stamp(&self.files.key));
        let changed = match self.seen.read() {
            Ok(seen) => *seen != now,
            Err(_) => true,
        };
        if !changed && !force {
            return;
        }
        if let Ok(mut seen) = self.seen.write() {
            *seen = now;
        }
        match load_certified_key(&self.files) {
            Ok(key) => match self.current.write() {
                Ok(mut current) => {
                    *current = Arc::new(key);
                    tracing::info!(reason = "tls.reloaded", cert = %self.files.cert.display(), "serving certificate reloaded");
                }
                Err(_) => tracing::error!(reason = "tls.reload_failed", "certificate lock poisoned"),
            },
            Err(e) => tracing::warn!(
                reason = "tls.reload_failed",
                error = %e,
                "the new certificate or key is not usable; the previous one keeps serving"
            ),
        }
    }
}

impl ResolvesServerCert for CertReloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock fails the handshake rather than guessing.
        self.current.read().ok().map(|k| Arc::clone(&k))
    }
}

/// Polls the files every [`TLS_POLL_INTERVAL`] and reloads on SIGHUP.
async fn watch_certificate(reloader: Arc<CertReloader>) {
    let mut tick = tokio::time::interval(TLS_POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hup = async {
            match hangup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup = std::future::pending::<Option<()>>();
        let force = tokio::select! {
            _ = tick.tick() => false,
            _ = hup => true,
        };
        reloader.reload_if_changed(force);
    }
}

/// Reads a PEM certificate chain and private key and checks they belong
/// together (the key signs with OpenSSL through [`crate::tls::provider`]).
pub fn load_certified_key(files: &TlsFiles) -> Result<CertifiedKey, String> {
    let cert_pem = std::fs::read(&files.cert).map_err(|e| format!("{}: cannot read: {e}", files.cert.display()))?;
    let chain = openssl::x509::X509::stack_from_pem(&cert_pem)
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", files.cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: holds no certificate", files.cert.display()));
    }
    let mut certs = Vec::with_capacity(chain.len());
    for c in &chain {
        let der = c
            .to_der()
            .map_err(|e| format!("{}: unusable certificate: {e}", files.cert.display()))?;
        certs.push(rustls::pki_types::CertificateDer::from(der));
    }
    let key_pem = std::fs::read(&files.key).map_err(|e| format!("{}: cannot read: {e}", files.key.display()))?;
    let pkcs8 = openssl::pkey::PKey::private_key_from_pem(&key_pem)
        .and_then(|k| k.private_key_to_pkcs8())
        .map_err(|e| format!("{}: not a PEM private key: {e}", files.key.display()))?;
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8));
    let signing = crate::tls::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("{}: unsupported private key: {e}", files.key.display()))?;
    let key = CertifiedKey::new(certs, signing);
    key.keys_match()
        .map_err(|e| format!("{} does not match {}: {e}", files.key.display(), files.cert.display()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_on_open_files_is_raised_to_the_hard_one_and_checked_against_the_connections() {
        // A shell's usual 1,024 under a hard limit of 524,288: raised, fits.
        let files = OpenFiles::plan(1024, 524_288, 2 * 10_000 + FILES_BESIDES_CONNECTIONS);
        assert_eq!(files.now, 524_288);
        assert!(files.fits());
        // Never lowered.
        assert_eq!(OpenFiles::plan(65_536, 4096, 100).now, 65_536);
        // A hard limit below what the listeners need: raised as far as it
        // goes, and said not to fit.
        let files = OpenFiles::plan(1024, 4096, 10_000 + FILES_BESIDES_CONNECTIONS);
        assert_eq!((files.was, files.now), (1024, 4096));
        assert!(!files.fits());
    }

    #[tokio::test]
    async fn a_listener_counts_its_open_connections_and_its_times_at_the_cap() {
        let slots = Arc::new(ListenerSlots::new("main", 2));
        let first = slots.hold(take_slot(&slots).await);
        // A slot taken for the next accept is not an open connection.
        let next = take_slot(&slots).await;
        assert_eq!((slots.open(), slots.max(), slots.at_cap()), (1, 2, 0));
        let second = slots.hold(next);
        assert_eq!(slots.open(), 2);
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { take_slot(&slots).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a third slot of two was handed out");
        assert_eq!(slots.at_cap(), 1);
        drop(first);
        let third = slots.hold(waiting.await.unwrap());
        assert_eq!(slots.open(), 2);
        drop((second, third));
        assert_eq!((slots.open(), slots.at_cap()), (0, 1));
    }
}
