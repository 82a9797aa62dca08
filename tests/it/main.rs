//! The one integration-test binary. Each module starts the real gateway on a
//! free loopback port (see `common`) and checks one capability; suites over
//! third-party data in `../shared` print that they were skipped when it is
//! missing.

mod auth;
mod cli;
mod common;
mod consent;
mod export;
mod fhirpath_suite;
mod hl7v2_ingest;
mod hl7v2_parse;
mod hl7v2_translate;
mod hl7v2_vxu_mdm;
mod profiles;
mod mpi;
mod import;
mod report;
mod rest;
mod scenario;
mod sdk_client;
mod search;
mod storage;
mod subscription;
mod summary;
mod summary_ips;
mod tidy;
mod transaction;
mod validator_suite;
mod workflow;
