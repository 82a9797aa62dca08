//! carebridge — a FHIR R4 (4.0.1) interoperability gateway for regional
//! health networks. See README.md, section ARCHITECTURE, for the codemap.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod fhir;
pub mod fhirpath;
pub mod identity;
pub mod ingest;
pub mod pipeline;
pub mod read;
pub mod report;
pub mod search;
pub mod server;
pub mod services;
pub mod store;
pub mod summary;
pub mod translate;
pub mod validate;
