//! Composition root: open storage, build the services and the app, spawn background
//! tasks, bind the listeners, and shut everything down gracefully.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    extract::connect_info::Connected,
    serve::{IncomingStream, Listener},
};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};

use crate::{
    api::{self, PeerAddr},
    app::App,
    config::Config,
    service::Services,
    storage::{self, StorageConfig},
    tls::{self, TlsListener},
};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the database at {path}: {source}. Is another ieum running on it?")]
    Storage { path: String, source: storage::StorageError },
    #[error("cannot start services: {0}")]
    Services(crate::error::Error),
    #[error("cannot listen on {addr}: {source}. Is the port in use? Change {setting}.")]
    Bind { addr: SocketAddr, setting: &'static str, source: std::io::Error },
    #[error("cannot set up TLS for federation.listen: {0}")]
    Tls(#[from] tls::TlsError),
}

/// A running homeserver.
pub struct Server {
    addrs: Vec<SocketAddr>,
    tls_addrs: Vec<SocketAddr>,
    app: App,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// How long in-flight requests (long-polls included) get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

impl Server {
    /// Opens storage, binds every listener and starts serving.
    pub async fn start(config: Config) -> Result<Self, ServerError> {
        let storage_config = StorageConfig::new(&config.storage.path, config.storage.sync_writes, &config.memory);
        let db = storage::open(&storage_config)
            .map_err(|source| ServerError::Storage { path: config.storage.path.display().to_string(), source })?;
        let listen = config.http.listen.clone();
        let tls_listen = config.federation.listen.clone();
        // Before anything is bound: a bad certificate stops the start with a clear error.
        let tls_config = if tls_listen.is_empty() { None } else { Some(tls::server_config(&config)?) };
        let services = Services::new(config, db).map_err(ServerError::Services)?;
        let app = App::new(services);
        // Each application service's own user exists before its first request.
        app.appservices.ensure_senders(&app.users).await.map_err(ServerError::Services)?;
        let (shutdown, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut addrs = Vec::new();
        for addr in listen {
            let (listener, local) = bind(addr, "http.listen").await?;
            addrs.push(local);
            tasks.spawn(serve(NoDelay(listener), api::service(app.clone()), shutdown.subscribe()));
            tracing::info!(address = %local, "listening (HTTP)");
        }
        let mut tls_addrs = Vec::new();
        if let Some(tls_config) = tls_config {
            for addr in tls_listen {
                let (listener, local) = bind(addr, "federation.listen").await?;
                tls_addrs.push(local);
                let listener = TlsListener::new(listener, tls_config.clone());
                tasks.spawn(serve(listener, api::service(app.clone()), shutdown.subscribe()));
                tracing::info!(address = %local, "listening (HTTPS)");
            }
        }
        // Background: expire typing notifications; users who stopped syncing go offline.
        let ephemeral = app.ephemeral.clone();
        let presence_app = app.clone();
        let mut stop = shutdown.subscribe();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut ticks = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|stop| *stop) => break,
                }
                ephemeral.expire_typing();
                ticks += 1;
                if ticks % 2 == 0 {
                    presence_app.expire_presence().await;
                }
            }
        });
        // Background: the application-service transaction sender.
        let appservice_sender = crate::service::appservice_sender::AppserviceSender::new(
            app.core.clone(),
            app.rooms.clone(),
            app.appservices.clone(),
            app.ephemeral.clone(),
        );
        tasks.spawn(appservice_sender.run(shutdown.subscribe()));
        // Background: the federation sender (resumes what was queued before a restart).
        tasks.spawn(app.federation.sender().run(shutdown.subscribe()));
        // Background: the push-gateway sender (resumes deliveries queued before a restart).
        let push_sender =
            crate::service::push::sender::PushSender::new(app.core.clone(), app.push.clone(), app.rooms.clone());
        tasks.spawn(push_sender.run(shutdown.subscribe()));
        // Background: syncs appends whose writer stopped waiting (see service::durability).
        tasks.spawn(crate::service::durability::sweep(app.core.clone(), shutdown.subscribe()));
        // Background: freed heap memory back to the system after bursts (see memory.rs).
        tasks.spawn(crate::memory::trim_when_quiet(app.core.clone(), shutdown.subscribe()));
        Ok(Self { addrs, tls_addrs, app, shutdown, tasks })
    }

    /// The first bound address (tests bind port 0 and read it here).
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// The bound plain-HTTP addresses (`http.listen`).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The bound HTTPS addresses (`federation.listen`); empty when there are none.
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_addrs
    }

    pub fn services(&self) -> Arc<App> {
        Arc::new(self.app.clone())
    }

    /// Stops accepting requests, lets in-flight ones finish briefly, then stops.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
    }

    /// Serves until SIGINT or SIGTERM.
    pub async fn run_until_signal(self) {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler can be installed");
        #[cfg(unix)]
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}

/// Binds `addr` (from the config field `setting`) and returns the listener with the address
/// it got (the port, when `addr` asks for port 0).
async fn bind(addr: SocketAddr, setting: &'static str) -> Result<(TcpListener, SocketAddr), ServerError> {
    let failed = |source| ServerError::Bind { addr, setting, source };
    let listener = TcpListener::bind(addr).await.map_err(failed)?;
    let local = listener.local_addr().map_err(failed)?;
    Ok((listener, local))
}

/// A TCP listener whose connections send without Nagle's delay. A response written in
/// more than one piece (HTTP/2 frames, a TLS record after the headers) would otherwise wait
/// for the peer's delayed ACK, up to 40 ms on Linux.
pub struct NoDelay(pub TcpListener);

impl Listener for NoDelay {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's accept for a TcpListener already retries (and pauses on) accept errors.
        let (io, addr) = Listener::accept(&mut self.0).await;
        if let Err(error) = io.set_nodelay(true) {
            tracing::debug!(%addr, %error, "cannot set TCP_NODELAY");
        }
        (io, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Listener::local_addr(&self.0)
    }
}

impl Connected<IncomingStream<'_, NoDelay>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, NoDelay>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// Serves `service` on `listener` (plain TCP or TLS alike) until `stop` turns true.
async fn serve<L>(listener: L, service: api::Http, mut stop: watch::Receiver<bool>)
where
    L: Listener<Addr = SocketAddr>,
    PeerAddr: for<'a> Connected<IncomingStream<'a, L>>,
{
    let service = axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<PeerAddr>(service);
    let serve = axum::serve(listener, service).with_graceful_shutdown(async move {
        let _ = stop.wait_for(|stop| *stop).await;
    });
    if let Err(error) = serve.await {
        tracing::error!(%error, "listener failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_send_without_nagle_delay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut listener = NoDelay(listener);
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, peer) = Listener::accept(&mut listener).await;
        assert_eq!(peer, client.local_addr().unwrap());
        assert!(accepted.nodelay().unwrap());
        assert_eq!(Listener::local_addr(&listener).unwrap(), addr);
    }
}
