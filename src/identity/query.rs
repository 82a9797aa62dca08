//! The read side of the MPI: `Patient/$match` candidates (R4
//! `patient-operation-match.html`), IHE PIXm cross-references (ITI-83
//! `Patient/$ihe-pix`), and the other members of a Patient's group, which the
//! read path adds to `Patient.link` as `seealso` (R4 `patient.html#links`) —
//! added when serving, never stored into the institution's bytes.

use super::features::Features;
use super::link::{candidates_sql, member_of_row, MEMBER_COLUMNS};
use super::score::{compare, Comparison, Grade};
use super::IdentityError;
use crate::services::Services;
use crate::store::{ResourceRow, Sql, SqlValue};
use serde_json::{json, Value};

/// Candidates for `$match`, best first: (current Patient row, comparison).
pub async fn match_patient(
    services: &Services,
    patient: &Value,
    only_certain: bool,
    count: usize,
) -> Result<Vec<(ResourceRow, Comparison)>, IdentityError> {
    let cfg = &services.mpi;
    let feat = Features::of_patient(patient, cfg);
    if feat.is_empty() {
        return Err(IdentityError::Invalid(
            "the Patient has nothing to match on (name, birthDate or a trusted identifier is needed)".into(),
        ));
    }
    let Some(sql) = candidates_sql(&feat.blocking_keys(), cfg.block_limit) else { return Ok(vec![]) };
    let mut scored: Vec<(String, Comparison)> = services
        .store
        .rows(sql)
        .await?
        .iter()
        .filter_map(|r| member_of_row(r))
        .map(|m| {
            let c = compare(&feat, &m.feat, cfg);
            (m.pid, c)
        })
        .filter(|(_, c)| if only_certain { c.grade == Grade::Certain } else { c.grade >= Grade::Possible })
        .collect();
    scored.sort_by(|a, b| (b.1.grade, b.1.weight).partial_cmp(&(a.1.grade, a.1.weight)).unwrap_or(std::cmp::Ordering::Equal));
    scored.truncate(count);
    let mut out = Vec::with_capacity(scored.len());
    for (pid, c) in scored {
        if let Some(row) = services.store.read("Patient", &pid).await?.filter(|r| !r.deleted) {
            out.push((row, c));
        }
    }
    Ok(out)
}

/// Members of the group of `pid` (itself included), with their assurance.
pub async fn group_members(services: &Services, pid: &str) -> Result<Vec<(String, String)>, IdentityError> {
    let mut sql = Sql::new(
        "SELECT q.pid, q.assurance FROM mpi_patient p JOIN mpi_patient q ON q.grp = p.grp WHERE p.pid = ",
    );
    sql.text_param(pid).push(" ORDER BY q.pid");
    Ok(services
        .store
        .rows(sql)
        .await?
        .iter()
        .filter_map(|r| Some((r.first()?.as_str()?.to_owned(), r.get(1)?.as_str()?.to_owned())))
        .collect())
}

/// The Person (group) id of a Patient, if it is linked to others.
pub async fn person_of(services: &Services, pid: &str) -> Result<Option<String>, IdentityError> {
    let mut sql = Sql::new(format!("SELECT {MEMBER_COLUMNS} FROM mpi_patient p WHERE p.pid = "));
    sql.text_param(pid);
    let Some(m) = services.store.rows(sql).await?.first().and_then(|r| member_of_row(r)) else { return Ok(None) };
    Ok((group_members(services, pid).await?.len() > 1).then_some(m.grp))
}

/// A Patient's bytes with `link` `seealso` entries for the other members of
/// its group (existing links kept); `None` when there is nothing to add.
pub async fn with_seealso(services: &Services, pid: &str, body: &[u8]) -> Result<Option<Vec<u8>>, IdentityError> {
    if !services.mpi.enabled {
        return Ok(None);
    }
    let others: Vec<String> = group_members(services, pid).await?.into_iter().map(|(p, _)| p).filter(|p| p != pid).collect();
    if others.is_empty() {
        return Ok(None);
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else { return Ok(None) };
    let Some(obj) = v.as_object_mut() else { return Ok(None) };
    let links = obj.entry("link").or_insert_with(|| Value::Array(vec![]));
    let Some(arr) = links.as_array_mut() else { return Ok(None) };
    for o in others {
        let r = format!("Patient/{o}");
        if !arr.iter().any(|l| l.pointer("/other/reference").and_then(Value::as_str) == Some(r.as_str())) {
            arr.push(json!({"other": {"reference": r}, "type": "seealso"}));
        }
    }
    Ok(serde_json::to_vec(&v).ok())
}

/// Live Patients carrying the identifier `system|value` (search index).
pub async fn patients_by_identifier(services: &Services, system: &str, value: &str) -> Result<Vec<String>, IdentityError> {
    let mut sql = Sql::new(
        "SELECT DISTINCT r.id FROM idx_token t JOIN resources r ON r.rkey = t.rkey WHERE t.rtype = 'Patient' AND t.param = 'identifier' AND t.system = ",
    );
    sql.text_param(system).push(" AND t.code = ").text_param(value).push(" AND r.deleted = 0 ORDER BY r.id");
    Ok(services.store.rows(sql).await?.iter().filter_map(|r| r.first().and_then(SqlValue::as_str).map(str::to_owned)).collect())
}

/// PIXm: for a source identifier, the linked Patients and their identifiers
/// (restricted to `target_systems` when given; the source identifier itself
/// is left out). `None` when no Patient carries the source identifier.
pub async fn pix(
    services: &Services,
    system: &str,
    value: &str,
    target_systems: &[String],
) -> Result<Option<(Vec<Value>, Vec<String>)>, IdentityError> {
    let sources = patients_by_identifier(services, system, value).await?;
    if sources.is_empty() {
        return Ok(None);
    }
    let mut pids: Vec<String> = Vec::new();
    for s in &sources {
        let members = group_members(services, s).await?;
        if members.is_empty() {
            pids.push(s.clone());
        }
        for (p, _) in members {
            if !pids.contains(&p) {
                pids.push(p);
            }
        }
    }
    let mut identifiers = Vec::new();
    let mut ids = Vec::new();
    for p in pids {
        let Some(row) = services.store.read("Patient", &p).await?.filter(|r| !r.deleted) else { continue };
        let Some(v) = row.body.as_deref().and_then(|b| serde_json::from_slice::<Value>(b).ok()) else { continue };
        let mut any = target_systems.is_empty();
        for id in v.get("identifier").and_then(Value::as_array).into_iter().flatten() {
            let s = id.get("system").and_then(Value::as_str).unwrap_or("");
            let val = id.get("value").and_then(Value::as_str).unwrap_or("");
            if s == system && val == value {
                continue;
            }
            if target_systems.is_empty() || target_systems.iter().any(|t| t == s) {
                any = true;
                let mut i = serde_json::Map::new();
                for k in ["use", "type", "system", "value", "assigner"] {
                    if let Some(x) = id.get(k) {
                        i.insert(k.to_owned(), x.clone());
                    }
                }
                if !identifiers.contains(&Value::Object(i.clone())) {
                    identifiers.push(Value::Object(i));
                }
            }
        }
        if any {
            ids.push(p);
        }
    }
    Ok(Some((identifiers, ids)))
}
