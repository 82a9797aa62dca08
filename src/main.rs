//! The `carebridge` binary: `serve`, `load`, `validate`, `import`, `bench`. See README.

use carebridge::api::ApiConfig;
use carebridge::cli;
use carebridge::config::FileConfig;
use carebridge::server::{self, ServerOptions};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc: allocation-heavy paths (JSON trees of translated messages,
/// validation, summaries) spend far fewer instructions in it than in glibc malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "carebridge", version, about = "FHIR R4 (4.0.1) interoperability gateway for regional health networks")]
struct Cli {
    /// Config file (TOML); a missing default file is ignored
    #[arg(long, global = true, env = "CAREBRIDGE_CONFIG", default_value = "carebridge.toml")]
    config: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway
    Serve {
        /// Listen address
        #[arg(long, env = "CAREBRIDGE_LISTEN")]
        listen: Option<String>,
        /// Database: sqlite:PATH (created on first run) or postgres://…
        #[arg(long, env = "CAREBRIDGE_DATABASE_URL")]
        db: Option<String>,
        /// Public base URL (default: from the Host header)
        #[arg(long, env = "CAREBRIDGE_BASE_URL")]
        base_url: Option<String>,
        /// Maximum request body in bytes (413 above)
        #[arg(long, env = "CAREBRIDGE_MAX_BODY_BYTES")]
        max_body_bytes: Option<usize>,
        /// FHIR package cache (default ~/.fhir/packages)
        #[arg(long, env = "CAREBRIDGE_PACKAGE_CACHE")]
        package_cache: Option<PathBuf>,
        /// Also listen for HL7 v2 over MLLP at this address (e.g. 127.0.0.1:2575)
        #[arg(long, env = "CAREBRIDGE_MLLP")]
        mllp: Option<String>,
        /// Validation on write: enforce (422 on errors), warn (store and log) or off
        #[arg(long, env = "CAREBRIDGE_VALIDATION", default_value = "enforce")]
        validation: carebridge::services::ValidationMode,
        /// Profile pack folders to load (repeat, or comma-separated in CAREBRIDGE_PACKS); default fhir.packs
        #[arg(long = "pack", env = "CAREBRIDGE_PACKS", value_delimiter = ',')]
        packs: Vec<PathBuf>,
        /// CSV/JSON import mapping files, one <institution>.toml each (default: mappings/ if present)
        #[arg(long, env = "CAREBRIDGE_MAPPINGS")]
        mappings: Option<PathBuf>,
        /// Serve without authentication (no [auth] in the config): development only, loopback addresses only
        #[arg(long)]
        insecure_dev: bool,
    },
    /// Import a CSV/JSON export of an institution through its mapping file
    Import {
        /// The institution (its mapping file is <mappings>/<institution>.toml)
        #[arg(long)]
        institution: String,
        /// The export file (.csv or .json)
        file: PathBuf,
        /// One transaction for the whole file: nothing is stored when any row is bad
        #[arg(long)]
        all_or_nothing: bool,
        /// csv or json (default: from the file extension)
        #[arg(long)]
        format: Option<String>,
        /// Post to a running server at this base URL
        #[arg(long, conflicts_with = "db")]
        server: Option<String>,
        /// Write straight into this store (sqlite:PATH or postgres://…)
        #[arg(long, env = "CAREBRIDGE_DATABASE_URL")]
        db: Option<String>,
        /// Mapping files (default: mappings/)
        #[arg(long, env = "CAREBRIDGE_MAPPINGS")]
        mappings: Option<PathBuf>,
        /// No progress bar
        #[arg(long)]
        quiet: bool,
    },
    /// Load Bundles / NDJSON files or folders through the write pipeline
    Load {
        /// Files or folders (*.json Bundles or resources, *.ndjson)
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Post to a running server at this base URL
        #[arg(long, conflicts_with = "db")]
        server: Option<String>,
        /// Write straight into this store (sqlite:PATH or postgres://…)
        #[arg(long, env = "CAREBRIDGE_DATABASE_URL")]
        db: Option<String>,
        /// Bundles in flight at once
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// No progress bar
        #[arg(long)]
        quiet: bool,
    },
    /// Validate resources or Bundles offline against the R4 core definitions
    Validate {
        /// Files or folders (*.json)
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print every issue, not only errors
        #[arg(long)]
        verbose: bool,
        /// Profile pack folders to load (their mandatory profiles apply); default fhir.packs
        #[arg(long = "pack", env = "CAREBRIDGE_PACKS", value_delimiter = ',')]
        packs: Vec<PathBuf>,
        /// Also validate against this profile (canonical URL; repeatable)
        #[arg(long = "profile")]
        profiles: Vec<String>,
    },
    /// Evaluate a measure over a store and print the MeasureReport (JSON) or CSV
    Report {
        /// Measure id or canonical URL (built-in or stored)
        #[arg(long)]
        measure: String,
        #[arg(long)]
        period_start: String,
        #[arg(long)]
        period_end: String,
        /// Only these stratifiers (comma-separated codes)
        #[arg(long, value_delimiter = ',')]
        stratify: Vec<String>,
        /// json or csv
        #[arg(long, default_value = "json")]
        format: String,
        /// summary (suppressed) or subject-list
        #[arg(long, default_value = "summary")]
        report_type: String,
        /// The store (sqlite:PATH or postgres://…)
        #[arg(long, env = "CAREBRIDGE_DATABASE_URL")]
        db: Option<String>,
        /// No progress bar
        #[arg(long)]
        quiet: bool,
    },
    /// Benchmarks (print figures)
    Bench {
        #[command(subcommand)]
        which: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Every built-in measure over generated Synthea-shaped patients (seconds per measure)
    Report {
        #[arg(long, default_value_t = 100_000)]
        patients: usize,
        /// Keep the generated database here (default: a temp dir)
        #[arg(long)]
        db: Option<String>,
    },
    /// Bulk export throughput (resources/s) and peak memory (VmHWM)
    Export {
        #[arg(long, default_value_t = 100_000)]
        patients: usize,
        /// Export de-identified (the insurer path)
        #[arg(long)]
        deidentify: bool,
        #[arg(long)]
        db: Option<String>,
    },
    /// Post Synthea transaction bundles; resources/s vs. parse-only ceiling
    Ingest {
        #[arg(long, env = "CAREBRIDGE_BENCH_BUNDLES", default_value = "../shared/samples/synthea")]
        bundles: PathBuf,
        #[arg(long)]
        server: Option<String>,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Only the first N bundles
        #[arg(long)]
        limit: Option<usize>,
        /// Validation on write in the in-process gateway: enforce, warn or off
        #[arg(long, default_value = "enforce")]
        validation: carebridge::services::ValidationMode,
    },
    /// Profile packs: start-up with packs, then German-variant Synthea through the mandatory profiles (conforming and rejecting paths)
    Profiles {
        #[arg(long, env = "CAREBRIDGE_BENCH_BUNDLES", default_value = "../shared/samples/synthea")]
        bundles: PathBuf,
        /// Pack folders (default: profiles/de-region)
        #[arg(long = "pack")]
        packs: Vec<PathBuf>,
        /// Only the first N bundles
        #[arg(long)]
        limit: Option<usize>,
    },
    /// GET by id: req/s, p50, p99
    Read {
        #[arg(long)]
        server: Option<String>,
        #[arg(long, default_value_t = 10_000)]
        resources: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// off: no authentication; on: bearer token + role policy + audit record per read; both: one after the other, with the overhead
        #[arg(long, default_value = "off")]
        auth: String,
    },
    /// HL7 v2: parse+translate messages/s (one thread), then end to end over MLLP into the store
    Hl7v2 {
        #[arg(long, default_value_t = 2000)]
        messages: usize,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// seconds for the parse+translate loop
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Patient/$summary and $everything for persons with records at three institutions: req/s, p50, p99
    Summary {
        #[arg(long)]
        server: Option<String>,
        #[arg(long, default_value_t = 20)]
        persons: usize,
        /// resources per person (all three records together)
        #[arg(long, default_value_t = 500)]
        resources: usize,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// CSV import: translate rows/s (one thread), then translate+store rows/s of a generated N-row export
    Import {
        #[arg(long, default_value_t = 10_000)]
        rows: usize,
        /// rows per patient
        #[arg(long, default_value_t = 5)]
        rows_per_patient: usize,
    },
    /// Validator throughput: Synthea resources/s against core (one thread, then all cores)
    Validate {
        #[arg(long, env = "CAREBRIDGE_BENCH_BUNDLES", default_value = "../shared/samples/synthea")]
        bundles: PathBuf,
        /// Also validate against this profile (resources of its type; repeatable)
        #[arg(long)]
        profile: Vec<String>,
        /// Load the definitions in DIR first (repeatable)
        #[arg(long)]
        pack: Vec<PathBuf>,
        /// Only the first N bundles
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Master patient index: linkage precision/recall on perturbed Synthea records, then linking throughput and $match latency
    Link {
        /// only the quality part (Synthea)
        #[arg(long, conflicts_with = "performance_only")]
        quality_only: bool,
        /// only the performance part (generated patients)
        #[arg(long)]
        performance_only: bool,
        /// Synthea bundles (default $CAREBRIDGE_SHARED/samples/synthea, else ../shared/samples/synthea)
        #[arg(long)]
        synthea: Option<PathBuf>,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// generated patients for the performance part
        #[arg(long, default_value_t = 1_000_000)]
        patients: usize,
        /// patients per transaction
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// $match requests timed
        #[arg(long, default_value_t = 1000)]
        matches: usize,
    },
    /// Token + date search over generated Observations: req/s, p50, p99
    Search {
        #[arg(long)]
        server: Option<String>,
        #[arg(long, default_value_t = 100_000)]
        observations: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Read and search p99 unfiltered vs. with care-relationship and Consent checks (in-process gateway)
    Access {
        #[arg(long, default_value_t = 2000)]
        patients: usize,
        #[arg(long, default_value_t = 5)]
        per_patient: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Subscription delivery reliability: N events to a receiver failing a share of requests and
    /// restarting once, the gateway (a child `carebridge serve`) killed and restarted mid-way
    Subscriptions {
        #[arg(long, default_value_t = 10_000)]
        events: usize,
        /// percentage of notification requests the receiver answers 500
        #[arg(long, default_value_t = 30)]
        fail_percent: u64,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// gateway database (default: a fresh SQLite file)
        #[arg(long)]
        db: Option<String>,
        /// do not kill the gateway mid-way
        #[arg(long)]
        no_kill: bool,
        /// do not restart the receiver
        #[arg(long)]
        no_receiver_restart: bool,
    },
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAREBRIDGE_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

#[tokio::main]
async fn main() -> ExitCode {
    init_logs();
    let cli = Cli::parse();
    let explicit_config = std::env::args().any(|a| a.starts_with("--config")) || std::env::var("CAREBRIDGE_CONFIG").is_ok();
    let file = match FileConfig::load(&cli.config, explicit_config) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let file_packs = file.fhir.packs.clone();
    let result = match cli.cmd {
        Cmd::Serve { listen, db, base_url, max_body_bytes, package_cache, validation, mllp, mappings, packs, insecure_dev } => {
            let listen = listen.or(file.server.listen).unwrap_or_else(|| "127.0.0.1:8080".into());
            let auth = match (&file.auth, insecure_dev) {
                (Some(_), true) => {
                    eprintln!("error: --insecure-dev and an [auth] section in {} exclude each other", cli.config.display());
                    return ExitCode::from(2);
                }
                (None, false) => {
                    eprintln!(
                        "error: no [auth] section in {}: refusing to serve without authentication.\n       Configure [auth] (see README \"Access control\"), or pass --insecure-dev for a development server on a loopback address.",
                        cli.config.display()
                    );
                    return ExitCode::from(2);
                }
                (None, true) => None,
                (Some(a), false) => {
                    let dir = cli.config.parent().map(PathBuf::from).unwrap_or_default();
                    match a.build(&dir) {
                        Ok(a) => Some(std::sync::Arc::new(a)),
                        Err(e) => {
                            eprintln!("error: {}: {e}", cli.config.display());
                            return ExitCode::from(2);
                        }
                    }
                }
            };
            let tls = file.server.tls.as_ref().map(|t| {
                let dir = cli.config.parent().map(PathBuf::from).unwrap_or_default();
                server::TlsFiles { cert: dir.join(&t.cert), key: dir.join(&t.key), client_ca: t.client_ca.as_ref().map(|c| dir.join(c)) }
            });
            let hl7 = match file.hl7v2.to_hl7_config() {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("error: {}: {e}", cli.config.display());
                    return ExitCode::from(2);
                }
            };
            let opts = ServerOptions {
                database_url: db.or(file.database.url).unwrap_or_else(|| "sqlite:data/carebridge.db".into()),
                package_cache: package_cache.or(file.fhir.package_cache.map(PathBuf::from)),
                api: ApiConfig {
                    base_url: base_url.or(file.server.base_url),
                    max_body_bytes: max_body_bytes.or(file.server.max_body_bytes).unwrap_or(ApiConfig::default().max_body_bytes),
                    hl7,
                    mappings_dir: mappings.or(file.import.mappings_dir.map(PathBuf::from)),
                    report: file.report.clone(),
                    dev_caller_header: false,
                    auth,
                },
                validation,
                packs: packs_or(packs, &file_packs),
                mpi: file.mpi.clone(),
                access: file.access.clone(),
            };
            serve(opts, &listen, mllp.as_deref(), tls).await
        }
        Cmd::Load { paths, server, db, concurrency, quiet } => {
            let target = match server {
                Some(s) => Ok(cli::load::Target::Server(s)),
                None => {
                    let opts = ServerOptions {
                        database_url: db.or(file.database.url).unwrap_or_else(|| "sqlite:data/carebridge.db".into()),
                        package_cache: file.fhir.package_cache.map(PathBuf::from),
                        api: ApiConfig::default(),
                        validation: Default::default(),
                        packs: packs_or(vec![], &file_packs),
                        mpi: file.mpi.clone(),
                access: file.access.clone(),
                    };
                    server::services(&opts).await.map(cli::load::Target::Store).map_err(|e| e.to_string())
                }
            };
            match target {
                Err(e) => Err(e),
                Ok(t) => match cli::load::run(t, &paths, concurrency, quiet).await {
                    Err(e) => Err(e),
                    Ok(r) => {
                        for f in &r.failed {
                            eprintln!("failed: {f}");
                        }
                        println!(
                            "loaded {} resources from {} files in {:.2} s ({:.0} resources/s), {} failures",
                            r.resources,
                            r.files,
                            r.seconds,
                            r.resources as f64 / r.seconds.max(1e-9),
                            r.failed.len()
                        );
                        if r.failed.is_empty() { Ok(()) } else { Err(format!("{} units failed", r.failed.len())) }
                    }
                },
            }
        }
        Cmd::Import { institution, file: path, all_or_nothing, format, server, db, mappings, quiet } => {
            let target = match server {
                Some(s) => Ok(cli::import::Target::Server(s)),
                None => {
                    let opts = ServerOptions {
                        database_url: db.or(file.database.url).unwrap_or_else(|| "sqlite:data/carebridge.db".into()),
                        package_cache: file.fhir.package_cache.map(PathBuf::from),
                        api: ApiConfig::default(),
                        validation: Default::default(),
                        packs: packs_or(vec![], &file_packs),
                        mpi: file.mpi.clone(),
                access: file.access.clone(),
                    };
                    let mappings_dir = mappings.or(file.import.mappings_dir.map(PathBuf::from)).unwrap_or_else(|| PathBuf::from("mappings"));
                    server::services(&opts).await.map(|services| cli::import::Target::Store { services, mappings_dir }).map_err(|e| e.to_string())
                }
            };
            match (target, cli::import::format_for(&path, format.as_deref())) {
                (Err(e), _) | (_, Err(e)) => Err(e),
                (Ok(t), Ok(fmt)) => match cli::import::run(t, &institution, &path, fmt, all_or_nothing, quiet).await {
                    Err(e) => Err(e),
                    Ok(r) => {
                        for l in &r.lines {
                            eprintln!("{l}");
                        }
                        println!("{}", r.summary);
                        if r.rows_rejected == 0 && !r.nothing_imported { Ok(()) } else { Err(format!("{} rows rejected", r.rows_rejected)) }
                    }
                },
            }
        }
        Cmd::Validate { paths, verbose, packs, profiles } => {
            let packs = packs_or(packs, &file_packs);
            cli::validate::run(&paths, file.fhir.package_cache.map(PathBuf::from), verbose, &packs, &profiles)
        }
        Cmd::Report { measure, period_start, period_end, stratify, format, report_type, db, quiet } => {
            let opts = ServerOptions {
                database_url: db.or(file.database.url.clone()).unwrap_or_else(|| "sqlite:data/carebridge.db".into()),
                package_cache: file.fhir.package_cache.clone().map(PathBuf::from),
                api: ApiConfig::default(),
                validation: Default::default(),
                packs: vec![],
                mpi: file.mpi.clone(),
                access: file.access.clone(),
            };
            let args = cli::report::Args { measure, period_start, period_end, stratify, format, report_type, quiet };
            cli::report::run(&opts, file.report.clone(), args).await
        }
        Cmd::Bench { which } => match which {
            BenchCmd::Report { patients, db } => cli::bench_report::report(patients, db, file.report.clone()).await,
            BenchCmd::Export { patients, deidentify, db } => cli::bench_report::export(patients, deidentify, db, file.report.clone()).await,
            BenchCmd::Ingest { bundles, server, concurrency, limit, validation } => {
                cli::bench::ingest(server, bundles, concurrency, limit, validation).await
            }
            BenchCmd::Profiles { bundles, packs, limit } => {
                let packs = if packs.is_empty() { vec![PathBuf::from("profiles/de-region")] } else { packs };
                cli::de_variant::bench(&bundles, &packs, file.fhir.package_cache.clone().map(PathBuf::from), limit)
            }
            BenchCmd::Read { server, resources, concurrency, seconds, auth } => cli::bench::read(server, resources, concurrency, seconds, &auth).await,
            BenchCmd::Hl7v2 { messages, connections, seconds } => cli::bench::hl7v2(messages, connections, seconds).await,
            BenchCmd::Summary { server, persons, resources, concurrency, seconds } => {
                cli::bench::summary(server, persons, resources, concurrency, seconds).await
            }
            BenchCmd::Import { rows, rows_per_patient } => cli::bench::import(rows, rows_per_patient).await,
            BenchCmd::Validate { bundles, profile, pack, limit } => {
                cli::bench::validate(bundles, file.fhir.package_cache.map(PathBuf::from), &profile, &pack, limit)
            }
            BenchCmd::Link { quality_only, performance_only, synthea, seed, patients, batch, matches } => {
                cli::bench_link::run(cli::bench_link::Options {
                    quality: !performance_only,
                    performance: !quality_only,
                    synthea,
                    seed,
                    patients,
                    batch: batch.max(1),
                    matches,
                })
                .await
            }
            BenchCmd::Search { server, observations, concurrency, seconds } => {
                cli::bench::search(server, observations, concurrency, seconds).await
            }
            BenchCmd::Access { patients, per_patient, concurrency, seconds } => {
                cli::bench::access(patients, per_patient, concurrency, seconds).await
            }
            BenchCmd::Subscriptions { events, fail_percent, concurrency, db, no_kill, no_receiver_restart } => {
                match std::env::current_exe() {
                    Err(e) => Err(e.to_string()),
                    Ok(exe) => cli::bench_subscriptions::run(cli::bench_subscriptions::Options {
                        exe,
                        events,
                        fail_percent: fail_percent.min(95),
                        concurrency,
                        kill_gateway: !no_kill,
                        restart_receiver: !no_receiver_restart,
                        db,
                        timeout: std::time::Duration::from_secs(600),
                    })
                    .await
                    .map(|r| println!("bench subscriptions: {r}")),
                }
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(opts: ServerOptions, listen: &str, mllp: Option<&str>, tls: Option<server::TlsFiles>) -> Result<(), String> {
    // refuse an insecure non-loopback address before loading anything
    if opts.api.auth.is_none() {
        let loopback = tokio::net::lookup_host(listen).await.map(|mut a| a.all(|a| a.ip().is_loopback())).unwrap_or(false);
        if !loopback {
            return Err(format!("--insecure-dev serves without authentication and only on a loopback address; '{listen}' is not one (use 127.0.0.1:PORT or [::1]:PORT)"));
        }
    }
    let services = server::services(&opts).await.map_err(|e| e.to_string())?;
    let kind = services.store.kind();
    let https = tls.is_some();
    let running = server::start_full(services, opts.api.clone(), listen, mllp, tls).await.map_err(|e| e.to_string())?;
    if let Some(m) = running.mllp_addr {
        tracing::info!(addr = %m, "HL7 v2 MLLP listening");
    }
    tracing::info!(addr = %running.addr, store = kind, https, auth = opts.api.auth.is_some(), "carebridge listening");
    server::shutdown_signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

/// Packs from the command line / `CAREBRIDGE_PACKS`, else `fhir.packs` of the config file.
fn packs_or(cli: Vec<PathBuf>, file: &Option<Vec<String>>) -> Vec<PathBuf> {
    if !cli.is_empty() {
        return cli;
    }
    file.iter().flatten().map(PathBuf::from).collect()
}
