//! `GET /metadata`: the CapabilityStatement (R4 `capabilitystatement.html`),
//! generated from what is implemented: every resource type of the core
//! package with the interactions the dispatcher routes, and every search
//! parameter the registry indexes (composite/special ones are left out,
//! because search rejects them).

use super::error::ApiError;
use super::negotiate::fhir_response;
use super::{AppState, Req};
use crate::fhir::FHIR_VERSION;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

pub fn capability_statement(app: &AppState, r: &Req) -> Result<Response, ApiError> {
    let reg = &app.services.registry;
    let interactions: Vec<Value> = ["read", "vread", "update", "delete", "history-instance", "history-type", "create", "search-type"]
        .iter()
        .map(|c| json!({"code": c}))
        .collect();
    let resources: Vec<Value> = reg
        .resource_types
        .iter()
        .map(|t| {
            let params: Vec<Value> = reg
                .params_for(t)
                .into_iter()
                .filter(|p| p.is_indexed() || p.code == "_id" || p.code == "_lastUpdated")
                .map(|p| json!({"name": p.code, "definition": p.url, "type": p.kind.as_str()}))
                .collect();
            let ref_params: Vec<Value> = reg
                .params_for(t)
                .into_iter()
                .filter(|p| p.kind == crate::search::ParamKind::Reference && p.is_indexed())
                .map(|p| Value::String(format!("{t}:{}", p.code)))
                .collect();
            json!({
                "type": t,
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{t}"),
                "interaction": interactions,
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "not-supported",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "searchInclude": ref_params,
                "searchRevInclude": ref_params,
                "searchParam": params,
            })
        })
        .collect();
    let cs = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "publisher": "carebridge",
        "kind": "instance",
        "software": {"name": "carebridge", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "carebridge FHIR R4 gateway", "url": r.base},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}],
        }],
    });
    Ok(fhir_response(StatusCode::OK, serde_json::to_vec(&cs).unwrap_or_default(), r.pretty))
}
