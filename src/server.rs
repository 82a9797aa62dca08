//! Assembling and running the gateway: definitions → registry, store, HTTP
//! router; graceful shutdown on Ctrl-C/SIGTERM. Used by `carebridge serve`,
//! by the benchmarks and by the integration tests (which start the real
//! server on a free loopback port).
//!
//! Transport (issue 7): plain HTTP, or HTTPS via rustls (TLS 1.2/1.3,
//! RFC 8446) with the certificate and key re-read on SIGHUP without
//! dropping the listener, and optional client certificates (a CA; each
//! connection's certificate fingerprint travels with its requests so that
//! members configured with `client_cert_sha256` are held to theirs).
//!
//! Invariant: a server without authentication (`ApiConfig.auth = None`,
//! `serve --insecure-dev`) listens on a loopback address only.
//! Invariant: plain MLLP listens on loopback only; with `[server.tls]` MLLP
//! runs over TLS and, with `[auth]`, takes messages only from registered
//! client certificates (`ingest::mllp`); one TLS configuration serves HTTPS
//! and MLLP and is reloaded on SIGHUP.

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
    #[error("refusing to serve without authentication on {0}: without [auth] the gateway listens on a loopback address only (127.0.0.1 / ::1)")]
    Insecure(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("refusing MLLP on {0}: off loopback, MLLP runs only over TLS with registered client certificates, which needs [auth] and [server.tls] with client_ca")]
    MllpInsecure(String),
    #[error("institution '{0}' names member '{1}', which is not an [[auth.member]]")]
    UnknownMember(String, String),
}

/// Certificate files for HTTPS (`[server.tls]`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// request (but do not require) client certificates issued by this CA
    pub client_ca: Option<PathBuf>,
}


/// Build the rustls server configuration from the PEM files.
pub fn tls_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let e = |what: &std::path::Path, m: String| ServerError::Tls(format!("{}: {m}", what.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|x| e(&files.cert, x.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|x| e(&files.cert, x.to_string()))?;
    if certs.is_empty() {
        return Err(e(&files.cert, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|x| e(&files.key, x.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|x| ServerError::Tls(x.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|x| e(ca, x.to_string()))? {
                roots.add(c.map_err(|x| e(ca, x.to_string()))?).map_err(|x| e(ca, x.to_string()))?;
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|x| e(ca, x.to_string()))?;
            builder.with_client_cert_verifier(v)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(certs, key).map_err(|x| ServerError::Tls(x.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
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
    Ok(Services { store, registry, validator, validation: opts.validation, policy, mpi: Arc::new(opts.mpi.clone()), access: Arc::new(opts.access.clone()), facts: Default::default() })
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
    start_full(services, api_config, listen, mllp, None).await
}

/// [`start_with_mllp`], over HTTPS when `tls` is given.
pub async fn start_full(services: Services, api_config: ApiConfig, listen: &str, mllp: Option<&str>, tls: Option<TlsFiles>) -> Result<Running, ServerError> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| ServerError::Bind(listen.to_owned(), e))?;
    let addr = listener.local_addr().map_err(|e| ServerError::Bind(listen.to_owned(), e))?;
    if api_config.dev_caller_header && !addr.ip().is_loopback() {
        let e = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "dev callers are for loopback test servers only");
        return Err(ServerError::Bind(listen.to_owned(), e));
    }
    if api_config.auth.is_none() && !addr.ip().is_loopback() {
        return Err(ServerError::Insecure(addr.to_string()));
    }
    let tls_cfg = match &tls {
        Some(f) => Some(tls_config(f)?),
        None => None,
    };
    // one TLS configuration for HTTPS and MLLP over TLS, replaced on SIGHUP
    let tls_current = match (&tls, tls_cfg) {
        (Some(files), Some(cfg)) => Some(reload_on_sighup(files.clone(), cfg)),
        _ => None,
    };
    let hl7: Hl7Config = api_config.hl7.clone();
    let import = match &api_config.mappings_dir {
        Some(dir) => Mappings::load_dir(dir, true)?,
        None => Mappings::load_dir(std::path::Path::new("mappings"), false)?,
    };
    if !import.institutions().is_empty() {
        tracing::info!(institutions = ?import.institutions(), "import mappings loaded");
    }
    if let Some(auth) = &api_config.auth {
        check_members(auth, &hl7, &import)?;
    }
    let audit = api_config.auth.as_ref().map(|_| crate::pipeline::audit::AuditSink::start(services.clone()));
    let mllp_addr = match mllp {
        Some(m) => {
            // decided before binding: with [server.tls] MLLP runs over TLS (and,
            // with [auth], takes only registered client certificates); plain
            // MLLP only on loopback (ingest::mllp)
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host(m).await.map_err(|e| ServerError::Bind(m.to_owned(), e))?.collect();
            let loopback = !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback());
            let certs_checked = api_config.auth.is_some() && tls.as_ref().is_some_and(|t| t.client_ca.is_some());
            if !loopback && !certs_checked {
                return Err(ServerError::MllpInsecure(m.to_owned()));
            }
            let l = tokio::net::TcpListener::bind(m).await.map_err(|e| ServerError::Bind(m.to_owned(), e))?;
            let a = l.local_addr().map_err(|e| ServerError::Bind(m.to_owned(), e))?;
            let ctx = crate::ingest::mllp::MllpContext { services: services.clone(), hl7: Arc::new(hl7.clone()), auth: api_config.auth.clone(), audit: audit.clone() };
            match &tls_current {
                Some(current) => {
                    let current = current.clone();
                    tokio::spawn(async move { crate::ingest::mllp::serve_tls(l, ctx, current).await });
                }
                None => {
                    tokio::spawn(async move { crate::ingest::mllp::serve(l, ctx).await });
                }
            }
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
    let app = api::router(Arc::new(AppState { services, config: api_config, hl7, import, reports, audit }));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = match tls_current {
        Some(current) => tokio::spawn(serve_tls(listener, app, current, rx)),
        None => tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        }),
    };
    Ok(Running { addr, mllp_addr, shutdown: Some(tx), handle, worker })
}

/// The current TLS configuration, replaced when SIGHUP asks to re-read
/// the certificate and key (a failed reload keeps the previous one).
fn reload_on_sighup(files: TlsFiles, cfg: Arc<rustls::ServerConfig>) -> Arc<std::sync::RwLock<Arc<rustls::ServerConfig>>> {
    let current = Arc::new(std::sync::RwLock::new(cfg));
    #[cfg(unix)]
    {
        let current = current.clone();
        tokio::spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
            while hup.recv().await.is_some() {
                match tls_config(&files) {
                    Ok(c) => {
                        *current.write().unwrap_or_else(|e| e.into_inner()) = c;
                        tracing::info!("TLS certificate and key reloaded (SIGHUP)");
                    }
                    Err(e) => tracing::error!(error = %e, "TLS reload failed; keeping the previous certificate"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = files;
    current
}

/// With `[auth]`, every `member` an HL7 v2 institution or import mapping
/// names must be a configured member (a typo would attribute its data to
/// nobody).
fn check_members(auth: &crate::auth::token::Authenticator, hl7: &Hl7Config, import: &Mappings) -> Result<(), ServerError> {
    let v2 = hl7.institutions.values().filter_map(|i| Some((i.institution_id.clone(), i.member.clone()?)));
    let files = import.institutions().into_iter().filter_map(|i| Some((i.to_owned(), import.get(i)?.member.clone()?)));
    for (inst, m) in v2.chain(files) {
        if auth.member_type(&m).is_none() {
            return Err(ServerError::UnknownMember(inst, m));
        }
    }
    Ok(())
}

/// The HTTPS accept loop: one rustls handshake per connection with the
/// current configuration (`current`, replaced on SIGHUP), then HTTP/1.1 on it.
async fn serve_tls(listener: tokio::net::TcpListener, app: axum::Router, current: Arc<std::sync::RwLock<Arc<rustls::ServerConfig>>>, mut stop: tokio::sync::oneshot::Receiver<()>) {
    loop {
        let (tcp, _peer) = tokio::select! {
            _ = &mut stop => break,
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let cfg = current.read().unwrap_or_else(|e| e.into_inner()).clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(stream) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await else { return };
            let fp = crate::auth::token::peer_fingerprint(stream.get_ref().1);
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(crate::api::access::PeerCert(fp.clone()));
                let mut app = app.clone();
                tower_service::Service::call(&mut app, req.map(axum::body::Body::new))
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await;
        });
    }
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
