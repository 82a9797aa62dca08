//! Assembling and running the gateway: definitions → registry, store, HTTP
//! router; graceful shutdown on Ctrl-C/SIGTERM. Used by `carebridge serve`,
//! by the benchmarks and by the integration tests (which start the real
//! server on a free loopback port).

use crate::api::{self, ApiConfig, AppState};
use crate::ingest::hl7v2::Hl7Config;
use crate::ingest::import::Mappings;
use crate::fhir::definitions::{package_cache_dir, Definitions, DefinitionsError};
use crate::search::Registry;
use crate::services::{Services, ValidationMode};
use crate::validate::packs::Policy;
use crate::validate::{ValidateError, Validator};
use crate::store::{self, StoreError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Definitions(#[from] DefinitionsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Validate(#[from] ValidateError),
    #[error("profile pack: {0}")]
    Packs(#[from] crate::validate::packs::PackError),
    #[error("listening on {0}: {1}")]
    Bind(String, std::io::Error),
    #[error("reports: {0}")]
    Report(#[from] crate::report::ReportError),
    #[error("import mappings: {0}")]
    Import(#[from] crate::ingest::import::ImportError),
}

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub database_url: String,
    pub package_cache: Option<PathBuf>,
    pub api: ApiConfig,
    pub validation: ValidationMode,
    /// profile packs to load (folders with `pack.toml`)
    pub packs: Vec<PathBuf>,
    /// master patient index policy (`[mpi]` in carebridge.toml)
    pub mpi: crate::services::mpi::MpiConfig,
    /// read access policy (`[access]` in carebridge.toml)
    pub access: crate::services::access::AccessConfig,
}

/// Load the core definitions and build the search registry.
pub async fn registry(package_cache: Option<PathBuf>) -> Result<Arc<Registry>, ServerError> {
    let cache = package_cache.unwrap_or_else(package_cache_dir);
    let t0 = std::time::Instant::now();
    let defs = tokio::task::spawn_blocking(move || Definitions::load_core(&cache))
        .await
        .expect("definitions loader thread")?;
    let registry = Registry::from_definitions(&defs);
    tracing::info!(
        types = registry.resource_types.len(),
        search_params = defs.search_params.len(),
        skipped_branches = registry.skipped_branches,
        ms = t0.elapsed().as_millis() as u64,
        "definitions loaded"
    );
    Ok(Arc::new(registry))
}

/// Compile the core StructureDefinitions for validation.
pub async fn validator(package_cache: Option<PathBuf>) -> Result<Arc<Validator>, ServerError> {
    let cache = package_cache.unwrap_or_else(package_cache_dir);
    let t0 = std::time::Instant::now();
    let v = tokio::task::spawn_blocking(move || Validator::load(&cache)).await.expect("validator loader thread")?;
    tracing::info!(definitions = v.model.by_url.len(), ms = t0.elapsed().as_millis() as u64, "validator compiled");
    Ok(Arc::new(v))
}

/// Compile the core definitions and load the profile packs into them
/// (snapshots generated, ValueSets/CodeSystems registered); returns the
/// validator and the packs' mandatory-profile policy.
pub async fn validator_with_packs(package_cache: Option<PathBuf>, packs: Vec<PathBuf>) -> Result<(Arc<Validator>, Arc<Policy>), ServerError> {
    let cache = package_cache.unwrap_or_else(package_cache_dir);
    let t0 = std::time::Instant::now();
    let (v, policy) = tokio::task::spawn_blocking(move || -> Result<_, ServerError> {
        let mut v = Validator::load(&cache)?;
        let policy = crate::validate::packs::load_into(&mut v, &packs, &cache)?;
        Ok((v, policy))
    })
    .await
    .expect("validator loader thread")?;
    tracing::info!(definitions = v.model.by_url.len(), ms = t0.elapsed().as_millis() as u64, "validator compiled (with packs)");
    Ok((Arc::new(v), Arc::new(policy)))
}

/// Load definitions and open the store.
pub async fn services(opts: &ServerOptions) -> Result<Services, ServerError> {
    let registry = registry(opts.package_cache.clone()).await?;
    let (validator, policy) = validator_with_packs(opts.package_cache.clone(), opts.packs.clone()).await?;
    let store = store::open(&opts.database_url).await?;
    Ok(Services { store, registry, validator, validation: opts.validation, policy, mpi: Arc::new(opts.mpi.clone()), access: Arc::new(opts.access.clone()) })
}

/// A running server (for tests and benchmarks): address and shutdown handle.
pub struct Running {
    pub addr: SocketAddr,
    /// the MLLP listener's address, when one was started
    pub mllp_addr: Option<SocketAddr>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub handle: tokio::task::JoinHandle<()>,
    /// the subscription delivery worker
    worker: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub async fn stop(mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        self.worker.abort();
        let _ = self.handle.await;
    }
}

/// Start serving on `listen` (port 0 = a free port) in the background.
pub async fn start(services: Services, api_config: ApiConfig, listen: &str) -> Result<Running, ServerError> {
    start_with_mllp(services, api_config, listen, None).await
}

/// [`start`], plus an MLLP listener for HL7 v2 when `mllp` is given.
pub async fn start_with_mllp(services: Services, api_config: ApiConfig, listen: &str, mllp: Option<&str>) -> Result<Running, ServerError> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| ServerError::Bind(listen.to_owned(), e))?;
    let addr = listener.local_addr().map_err(|e| ServerError::Bind(listen.to_owned(), e))?;
    if api_config.dev_caller_header && !addr.ip().is_loopback() {
        let e = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "dev callers are for loopback test servers only");
        return Err(ServerError::Bind(listen.to_owned(), e));
    }
    let hl7: Hl7Config = api_config.hl7.clone();
    let import = match &api_config.mappings_dir {
        Some(dir) => Mappings::load_dir(dir, true)?,
        None => Mappings::load_dir(std::path::Path::new("mappings"), false)?,
    };
    if !import.institutions().is_empty() {
        tracing::info!(institutions = ?import.institutions(), "import mappings loaded");
    }
    let mllp_addr = match mllp {
        Some(m) => {
            let l = tokio::net::TcpListener::bind(m).await.map_err(|e| ServerError::Bind(m.to_owned(), e))?;
            let a = l.local_addr().map_err(|e| ServerError::Bind(m.to_owned(), e))?;
            let (s, c) = (services.clone(), Arc::new(hl7.clone()));
            tokio::spawn(async move { crate::ingest::mllp::serve(l, s, c).await });
            Some(a)
        }
        None => None,
    };
    let reports = Arc::new(crate::report::Reports::new(api_config.report.clone(), services.validator.fhirpath_model())?);
    match crate::report::export::resume(&services, &reports).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(jobs = n, "export jobs resumed"),
        Err(e) => tracing::error!(error = %e, "export jobs not resumed"),
    }
    // subscription delivery (outbox → rest-hook endpoints), one worker per process
    let public = api_config.base_url.clone().map(|b| b.trim_end_matches('/').to_owned()).unwrap_or_else(|| format!("http://{addr}"));
    let worker = crate::subscription::deliver::spawn(services.clone(), public);
    let app = api::router(Arc::new(AppState { services, config: api_config, hl7, import, reports }));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await;
    });
    Ok(Running { addr, mllp_addr, shutdown: Some(tx), handle, worker })
}

/// Wait for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
