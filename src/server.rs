//! Composition root: open storage, build the services and the app, spawn background
//! tasks, bind the listeners, and shut everything down gracefully.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch, task::JoinSet};

use crate::{
    api,
    app::App,
    config::Config,
    service::Services,
    storage::{self, StorageConfig},
};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the database at {path}: {source}. Is another ieum running on it?")]
    Storage { path: String, source: storage::StorageError },
    #[error("cannot start services: {0}")]
    Services(crate::error::Error),
    #[error("cannot listen on {addr}: {source}. Is the port in use? Change http.listen.")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// A running homeserver.
pub struct Server {
    addrs: Vec<SocketAddr>,
    app: App,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// How long in-flight requests (long-polls included) get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

impl Server {
    /// Opens storage, binds every listener and starts serving.
    pub async fn start(config: Config) -> Result<Self, ServerError> {
        let storage_config =
            StorageConfig { path: config.storage.path.clone(), sync_writes: config.storage.sync_writes };
        let db = storage::open(&storage_config)
            .map_err(|source| ServerError::Storage { path: config.storage.path.display().to_string(), source })?;
        let listen = config.http.listen.clone();
        let services = Services::new(config, db).map_err(ServerError::Services)?;
        let app = App::new(services);
        let (shutdown, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut addrs = Vec::new();
        for addr in listen {
            let listener = TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })?;
            let local = listener.local_addr().map_err(|source| ServerError::Bind { addr, source })?;
            addrs.push(local);
            let router = api::router(app.clone());
            let mut stop = shutdown.subscribe();
            tasks.spawn(async move {
                let service = router.into_make_service_with_connect_info::<SocketAddr>();
                let serve = axum::serve(listener, service).with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                });
                if let Err(error) = serve.await {
                    tracing::error!(%error, "listener failed");
                }
            });
            tracing::info!(address = %local, "listening");
        }
        // Background: expire typing notifications.
        let ephemeral = app.ephemeral.clone();
        let mut stop = shutdown.subscribe();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => ephemeral.expire_typing(),
                    _ = stop.wait_for(|stop| *stop) => break,
                }
            }
        });
        Ok(Self { addrs, app, shutdown, tasks })
    }

    /// The first bound address (tests bind port 0 and read it here).
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
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
