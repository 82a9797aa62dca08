//! Incremental linking inside the write transaction (DESIGN.md "link
//! identities → store (one database transaction … MPI links …)"): every
//! Patient create/update/delete updates its MPI row and blocking keys, is
//! matched against the candidates of its blocks, and joins a group, queues a
//! review `Task`, or stays alone; groups of two or more are kept as FHIR
//! `Person` resources (R4 `person.html`, `Person.link.assurance` level1–4);
//! every decision is an `AuditEvent` (R4 `auditevent.html`) carrying the
//! score and the per-field reasons. Manual operations (link, unlink, confirm
//! or reject a review) run here too, called by the pipeline.
//!
//! Assurance: manual (by hand, or a confirmed review) → level4; trusted
//! identifier or an A40 merge (`Patient.link` `replaced-by`) → level3;
//! probabilistic auto-link → level2; a Patient alone → level1.
//!
//! Invariant: all of it runs on the caller's [`StoreTx`]; nothing is visible
//! before the Patient write commits, and a failure rolls everything back.

use super::features::Features;
use super::score::{compare, Comparison, Grade};
use super::IdentityError;
use crate::fhir::{datetime, json};
use crate::services::Services;
use crate::store::{Sql, SqlValue, StoreTx, VersionWrite, WriteMethod};
use bytes::Bytes;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

pub const MPI_SYSTEM: &str = "urn:carebridge:mpi";

type Result<T> = std::result::Result<T, IdentityError>;

/// A Patient's row in `mpi_patient`.
#[derive(Debug, Clone)]
pub struct Member {
    pub pid: String,
    pub grp: String,
    pub how: String,
    pub assurance: String,
    pub score: f64,
    pub feat: Features,
}

pub(crate) const MEMBER_COLUMNS: &str = "p.pid, p.grp, p.how, p.assurance, p.score, p.feat";

pub(crate) fn member_of_row(r: &[SqlValue]) -> Option<Member> {
    let s = |i: usize| r.get(i).and_then(SqlValue::as_str).map(str::to_owned);
    Some(Member {
        pid: s(0)?,
        grp: s(1)?,
        how: s(2)?,
        assurance: s(3)?,
        score: r.get(4).and_then(SqlValue::as_f64).unwrap_or(0.0),
        feat: serde_json::from_str(r.get(5)?.as_str()?).unwrap_or_default(),
    })
}

/// Candidate query: members sharing a blocking key (at most `limit` per key).
pub(crate) fn candidates_sql(keys: &[String], limit: usize) -> Option<Sql> {
    if keys.is_empty() {
        return None;
    }
    let mut sql = Sql::new(format!("SELECT {MEMBER_COLUMNS} FROM mpi_patient p WHERE p.pid IN ("));
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            sql.push(" UNION ");
        }
        sql.push("SELECT pid FROM (SELECT pid FROM mpi_block WHERE bkey = ").text_param(k.clone());
        sql.push(" LIMIT ").int_param(limit as i64).push(&format!(") q{i}"));
    }
    sql.push(")");
    Some(sql)
}

fn pair_key(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

fn fmt_score(w: f64) -> Value {
    serde_json::Number::from_f64((w * 100.0).round() / 100.0).map(Value::Number).unwrap_or(Value::Null)
}

fn tag() -> Value {
    json!([{"system": MPI_SYSTEM, "code": "managed", "display": "maintained by the carebridge MPI"}])
}

/// The linking state of one transaction.
pub struct Linker<'a> {
    services: &'a Services,
    tx: &'a mut dyn StoreTx,
    now: i64,
    touched: BTreeSet<String>,
    /// statements not yet sent (sent in one round trip before the next read)
    pending: Vec<Sql>,
    /// resources not yet written (AuditEvents)
    pending_writes: Vec<VersionWrite>,
    /// members read ahead for the Patients of this transaction (`None`: not indexed yet)
    ahead: HashMap<String, Option<Member>>,
}

impl<'a> Linker<'a> {
    pub async fn new(services: &'a Services, tx: &'a mut dyn StoreTx, now: i64) -> Result<Linker<'a>> {
        // linking decisions read other patients' rows: one linker at a time
        // (PostgreSQL advisory lock; SQLite's single writer already is one)
        tx.lock("mpi:link").await?;
        Ok(Linker { services, tx, now, touched: BTreeSet::new(), pending: vec![], pending_writes: vec![], ahead: HashMap::new() })
    }

    fn exec(&mut self, sql: Sql) {
        self.pending.push(sql);
    }

    /// Send the statements and resource writes queued so far.
    async fn flush(&mut self) -> Result<()> {
        if !self.pending.is_empty() {
            let p = std::mem::take(&mut self.pending);
            self.tx.execute_many(p).await?;
        }
        if !self.pending_writes.is_empty() {
            let w = std::mem::take(&mut self.pending_writes);
            self.tx.write(w).await?;
        }
        Ok(())
    }

    async fn q(&mut self, sql: Sql) -> Result<Vec<Vec<SqlValue>>> {
        self.flush().await?;
        Ok(self.tx.rows(sql).await?)
    }

    async fn cur(&mut self, rtype: &str, id: &str) -> Result<Option<crate::store::ResourceRow>> {
        self.flush().await?;
        Ok(self.tx.current(rtype, id).await?)
    }

    /// Read the members of these Patients in one query (before linking them).
    pub async fn read_ahead(&mut self, pids: &[&str]) -> Result<()> {
        for chunk in pids.chunks(500) {
            let mut sql = Sql::new(format!("SELECT {MEMBER_COLUMNS} FROM mpi_patient p WHERE p.pid IN ("));
            for (i, p) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.text_param(*p);
            }
            sql.push(")");
            for p in chunk {
                self.ahead.insert((*p).to_owned(), None);
            }
            for m in self.q(sql).await?.iter().filter_map(|r| member_of_row(r)) {
                self.ahead.insert(m.pid.clone(), Some(m));
            }
        }
        Ok(())
    }

    pub async fn member(&mut self, pid: &str) -> Result<Option<Member>> {
        let mut sql = Sql::new(format!("SELECT {MEMBER_COLUMNS} FROM mpi_patient p WHERE p.pid = "));
        sql.text_param(pid);
        Ok(self.q(sql).await?.first().and_then(|r| member_of_row(r)))
    }

    async fn group(&mut self, grp: &str) -> Result<Vec<Member>> {
        let mut sql = Sql::new(format!("SELECT {MEMBER_COLUMNS} FROM mpi_patient p WHERE p.grp = "));
        sql.text_param(grp).push(" ORDER BY p.pid");
        Ok(self.q(sql).await?.iter().filter_map(|r| member_of_row(r)).collect())
    }

    async fn save(&mut self, m: &Member, blocks_changed: bool, is_new: bool) -> Result<()> {
        let feat = serde_json::to_string(&m.feat).unwrap_or_else(|_| "{}".into());
        let mut sql = Sql::new("INSERT INTO mpi_patient (pid, grp, how, assurance, score, feat, updated) VALUES (");
        sql.text_param(m.pid.clone()).push(", ").text_param(m.grp.clone()).push(", ").text_param(m.how.clone());
        sql.push(", ").text_param(m.assurance.clone()).push(", ").real_param(m.score).push(", ").text_param(feat);
        sql.push(", ").int_param(self.now);
        sql.push(
            ") ON CONFLICT (pid) DO UPDATE SET grp = excluded.grp, how = excluded.how, assurance = excluded.assurance, \
             score = excluded.score, feat = excluded.feat, updated = excluded.updated",
        );
        self.exec(sql);
        if blocks_changed {
            if !is_new {
                let mut del = Sql::new("DELETE FROM mpi_block WHERE pid = ");
                del.text_param(m.pid.clone());
                self.exec(del);
            }
            let keys = m.feat.blocking_keys();
            if !keys.is_empty() {
                let mut ins = Sql::new("INSERT INTO mpi_block (bkey, pid) VALUES ");
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        ins.push(", ");
                    }
                    ins.push("(").text_param(k).push(", ").text_param(m.pid.clone()).push(")");
                }
                self.exec(ins);
            }
        }
        self.touched.insert(m.grp.clone());
        Ok(())
    }

    async fn set_group(&mut self, pid: &str, grp: &str, how: &str, assurance: &str, score: f64) -> Result<()> {
        let mut sql = Sql::new("UPDATE mpi_patient SET grp = ");
        sql.text_param(grp).push(", how = ").text_param(how).push(", assurance = ").text_param(assurance);
        sql.push(", score = ").real_param(score).push(" WHERE pid = ").text_param(pid);
        self.exec(sql);
        self.touched.insert(grp.to_owned());
        if let Some(Some(m)) = self.ahead.get_mut(pid) {
            m.grp = grp.to_owned();
            m.how = how.to_owned();
            m.assurance = assurance.to_owned();
            m.score = score;
        }
        Ok(())
    }

    /// Move every member of group `from` into group `to`.
    async fn merge_groups(&mut self, from: &str, to: &str) -> Result<()> {
        if from == to {
            return Ok(());
        }
        let mut sql = Sql::new("UPDATE mpi_patient SET grp = ");
        sql.text_param(to).push(" WHERE grp = ").text_param(from);
        self.exec(sql);
        for m in self.ahead.values_mut().flatten() {
            if m.grp == from {
                m.grp = to.to_owned();
            }
        }
        self.touched.insert(from.to_owned());
        self.touched.insert(to.to_owned());
        Ok(())
    }

    /// Pair states involving `pid`: other pid → (state, task).
    async fn pairs_of(&mut self, pid: &str) -> Result<HashMap<String, (String, Option<String>)>> {
        let mut sql = Sql::new("SELECT a, b, state, task FROM mpi_pair WHERE a = ");
        sql.text_param(pid).push(" UNION ALL SELECT a, b, state, task FROM mpi_pair WHERE b = ").text_param(pid);
        let mut out = HashMap::new();
        for r in self.q(sql).await? {
            let s = |i: usize| r.get(i).and_then(SqlValue::as_str).map(str::to_owned);
            let (Some(a), Some(b), Some(state)) = (s(0), s(1), s(2)) else { continue };
            let other = if a == pid { b } else { a };
            out.insert(other, (state, s(3)));
        }
        Ok(out)
    }

    async fn set_pair(&mut self, a: &str, b: &str, state: &str, task: Option<&str>, score: f64) -> Result<()> {
        let (a, b) = pair_key(a, b);
        let mut sql = Sql::new("INSERT INTO mpi_pair (a, b, state, task, score) VALUES (");
        sql.text_param(a).push(", ").text_param(b).push(", ").text_param(state).push(", ");
        match task {
            Some(t) => sql.text_param(t),
            None => sql.push("NULL"),
        };
        sql.push(", ").real_param(score).push(") ON CONFLICT (a, b) DO UPDATE SET state = excluded.state, task = excluded.task, score = excluded.score");
        self.exec(sql);
        Ok(())
    }

    async fn delete_pair(&mut self, a: &str, b: &str) -> Result<()> {
        let (a, b) = pair_key(a, b);
        let mut sql = Sql::new("DELETE FROM mpi_pair WHERE a = ");
        sql.text_param(a).push(" AND b = ").text_param(b);
        self.exec(sql);
        Ok(())
    }

    // ---- resources written by the MPI -------------------------------------------------

    /// Create or update a resource in this transaction (server fields, index rows).
    async fn put(&mut self, rtype: &str, id: &str, mut res: Value) -> Result<()> {
        let cur = self.cur(rtype, id).await?;
        let live = cur.as_ref().filter(|c| !c.deleted);
        let version = cur.as_ref().map(|c| c.version + 1).unwrap_or(1);
        if let Some(obj) = res.as_object_mut() {
            json::set_server_fields(obj, id, version, &datetime::format_instant(self.now));
        }
        let index = self.services.registry.index(rtype, &res);
        let body = Bytes::from(serde_json::to_vec(&res).map_err(|e| IdentityError::Invalid(e.to_string()))?);
        self.flush().await?;
        self.tx
            .write(vec![VersionWrite {
                rtype: rtype.to_owned(),
                id: id.to_owned(),
                version,
                last_updated: self.now,
                method: if live.is_some() { WriteMethod::Put } else { WriteMethod::Post },
                body: Some(body),
                index,
            }])
            .await?;
        Ok(())
    }

    async fn delete_resource(&mut self, rtype: &str, id: &str) -> Result<()> {
        let Some(cur) = self.cur(rtype, id).await?.filter(|c| !c.deleted) else { return Ok(()) };
        self.flush().await?;
        self.tx
            .write(vec![VersionWrite {
                rtype: rtype.to_owned(),
                id: id.to_owned(),
                version: cur.version + 1,
                last_updated: self.now,
                method: WriteMethod::Delete,
                body: None,
                index: vec![],
            }])
            .await?;
        Ok(())
    }

    /// Record a decision as an AuditEvent (type `urn:carebridge:mpi|link-decision`).
    pub async fn audit(&mut self, action: &str, patients: &[&str], person: Option<&str>, score: Option<f64>, reasons: &str) -> Result<()> {
        let mut entity: Vec<Value> = patients
            .iter()
            .map(|p| json!({"what": {"reference": format!("Patient/{p}")}, "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"}}))
            .collect();
        if let Some(g) = person {
            entity.push(json!({"what": {"reference": format!("Person/{g}")}}));
        }
        let mut detail = vec![json!({"type": "reasons", "valueString": if reasons.is_empty() { "-" } else { reasons }})];
        if let Some(s) = score {
            detail.insert(0, json!({"type": "score", "valueString": format!("{s:.2}")}));
        }
        if let Some(first) = entity.first_mut() {
            first["detail"] = Value::Array(detail);
        }
        let desc = match score {
            Some(s) => format!("{action}: score {s:.2}; {reasons}"),
            None => format!("{action}: {reasons}"),
        };
        let ae = json!({
            "resourceType": "AuditEvent",
            "meta": {"tag": tag()},
            "type": {"system": MPI_SYSTEM, "code": "link-decision", "display": "MPI link decision"},
            "subtype": [{"system": MPI_SYSTEM, "code": action}],
            "action": "U",
            "recorded": datetime::format_instant(self.now),
            "outcome": "0",
            "outcomeDesc": desc,
            "agent": [{"type": {"text": "master patient index"}, "who": {"display": "carebridge MPI"}, "requestor": false}],
            "source": {"observer": {"display": "carebridge"}},
            "entity": entity,
        });
        let id = uuid::Uuid::new_v4().to_string();
        let mut ae = ae;
        if let Some(obj) = ae.as_object_mut() {
            json::set_server_fields(obj, &id, 1, &datetime::format_instant(self.now));
        }
        let index = self.services.registry.index("AuditEvent", &ae);
        let body = Bytes::from(serde_json::to_vec(&ae).map_err(|e| IdentityError::Invalid(e.to_string()))?);
        self.pending_writes.push(VersionWrite {
            rtype: "AuditEvent".into(),
            id,
            version: 1,
            last_updated: self.now,
            method: WriteMethod::Post,
            body: Some(body),
            index,
        });
        Ok(())
    }

    /// Queue a review Task for a candidate pair (idempotent per pair).
    async fn queue_review(&mut self, a: &str, b: &str, c: &Comparison) -> Result<()> {
        let (x, y) = pair_key(a, b);
        let tid = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, format!("{MPI_SYSTEM}:review:{x}|{y}").as_bytes()).to_string();
        let task = json!({
            "resourceType": "Task",
            "meta": {"tag": tag()},
            "status": "requested",
            "intent": "proposal",
            "priority": "routine",
            "code": {"coding": [{"system": MPI_SYSTEM, "code": "review", "display": "Review a possible patient match"}]},
            "description": format!("Are Patient/{x} and Patient/{y} the same person? score {:.2}: {}", c.weight, c.explain()),
            "focus": {"reference": format!("Patient/{x}")},
            "for": {"reference": format!("Patient/{y}")},
            "authoredOn": datetime::format_instant(self.now),
            "input": [
                {"type": {"text": "candidate"}, "valueReference": {"reference": format!("Patient/{x}")}},
                {"type": {"text": "candidate"}, "valueReference": {"reference": format!("Patient/{y}")}},
                {"type": {"text": "score"}, "valueDecimal": fmt_score(c.weight)},
                {"type": {"text": "reasons"}, "valueString": c.explain()},
            ],
        });
        self.put("Task", &tid, task).await?;
        self.set_pair(&x, &y, "review", Some(&tid), c.weight).await?;
        self.audit("review-queued", &[&x, &y], None, Some(c.weight), &c.explain()).await
    }

    // ---- the pipeline hook ------------------------------------------------------------

    /// A Patient was deleted: it leaves the index.
    pub async fn remove(&mut self, pid: &str) -> Result<()> {
        let Some(m) = self.member(pid).await? else { return Ok(()) };
        for (t, col) in [("mpi_patient", "pid"), ("mpi_block", "pid"), ("mpi_pair", "a"), ("mpi_pair", "b")] {
            let mut sql = Sql::new(format!("DELETE FROM {t} WHERE {col} = "));
            sql.text_param(pid);
            self.exec(sql);
        }
        self.touched.insert(m.grp);
        Ok(())
    }

    /// A Patient was created or updated: index it and link it.
    pub async fn upsert(&mut self, pid: &str, patient: &Value) -> Result<()> {
        let cfg = self.services.mpi.clone();
        let feat = Features::of_patient(patient, &cfg);
        let existing = match self.ahead.remove(pid) {
            Some(m) => m,
            None => self.member(pid).await?,
        };
        let is_new = existing.is_none();
        if let Some(m) = &existing {
            if m.feat == feat {
                return Ok(()); // nothing that matching looks at changed
            }
        }
        let blocks_changed = existing.as_ref().map(|m| m.feat.blocking_keys() != feat.blocking_keys()).unwrap_or(true);
        let mut me = match existing {
            Some(mut m) => {
                m.feat = feat;
                m
            }
            None => Member {
                pid: pid.to_owned(),
                grp: uuid::Uuid::new_v4().to_string(),
                how: "new".into(),
                assurance: "level1".into(),
                score: 0.0,
                feat,
            },
        };
        // links made by hand or by a merge stay; merged-away records follow their survivor
        if me.how == "manual" || me.how == "merge" || me.feat.r.is_some() {
            return self.save(&me, blocks_changed, is_new).await;
        }
        // an automatically linked record that changed: does it still belong?
        let others: Vec<Member> =
            if is_new { vec![] } else { self.group(&me.grp).await?.into_iter().filter(|o| o.pid != me.pid).collect() };
        if !others.is_empty() {
            let still = others.iter().any(|o| {
                let c = compare(&me.feat, &o.feat, &cfg);
                c.grade >= Grade::Probable
            });
            if still {
                return self.save(&me, blocks_changed, is_new).await;
            }
            let old = std::mem::replace(&mut me.grp, uuid::Uuid::new_v4().to_string());
            self.touched.insert(old.clone());
            me.how = "new".into();
            me.assurance = "level1".into();
            self.save(&me, blocks_changed, is_new).await?;
            self.audit("auto-unlink", &[pid], Some(&old), None, "record changed; it no longer matches its group").await?;
        } else {
            self.save(&me, blocks_changed, is_new).await?;
        }
        self.link_new(&me).await
    }

    /// Match a (now singleton) member against its blocks and act on the result.
    async fn link_new(&mut self, me: &Member) -> Result<()> {
        let cfg = self.services.mpi.clone();
        let Some(sql) = candidates_sql(&me.feat.blocking_keys(), cfg.block_limit) else { return Ok(()) };
        let cands: Vec<Member> = self.q(sql).await?.iter().filter_map(|r| member_of_row(r)).filter(|m| m.pid != me.pid).collect();
        if cands.is_empty() {
            return Ok(());
        }
        let pairs = self.pairs_of(&me.pid).await?;
        // best comparison per group; groups with a trusted-identifier conflict are never auto-linked
        let mut best: BTreeMap<String, (Comparison, String)> = BTreeMap::new();
        let mut vetoed: BTreeSet<String> = BTreeSet::new();
        for c in &cands {
            if c.feat.r.is_some() {
                continue; // merged-away records are reached through their survivor
            }
            if pairs.get(&c.pid).is_some_and(|(s, _)| s == "nomatch") {
                vetoed.insert(c.grp.clone());
                continue;
            }
            let cmp = compare(&me.feat, &c.feat, &cfg);
            if cmp.grade == Grade::CertainlyNot {
                vetoed.insert(c.grp.clone());
                continue;
            }
            let better = best.get(&c.grp).map(|(b, _)| (cmp.grade, cmp.weight) > (b.grade, b.weight)).unwrap_or(true);
            if better {
                best.insert(c.grp.clone(), (cmp, c.pid.clone()));
            }
        }
        let mut ranked: Vec<(String, Comparison, String)> = best.into_iter().map(|(g, (c, p))| (g, c, p)).collect();
        ranked.sort_by(|a, b| (b.1.grade, b.1.weight).partial_cmp(&(a.1.grade, a.1.weight)).unwrap_or(std::cmp::Ordering::Equal));
        let mut joined: Option<String> = None;
        let mut reviews = 0usize;
        let sizes: HashMap<String, usize> = cands.iter().fold(HashMap::new(), |mut m, c| {
            *m.entry(c.grp.clone()).or_insert(0) += 1;
            m
        });
        for (grp, cmp, other) in ranked {
            let certain = cmp.grade == Grade::Certain;
            let small = sizes.get(&grp).copied().unwrap_or(0) < cfg.max_group;
            let auto = cmp.grade == Grade::Probable && !vetoed.contains(&grp) && small;
            match &joined {
                None if certain || auto => {
                    let (how, level, action) = if certain {
                        ("deterministic", "level3", "deterministic-link")
                    } else {
                        ("auto", "level2", "auto-link")
                    };
                    let old = me.grp.clone();
                    // the record it matched was alone so far: it is now linked the same way
                    let mut up = Sql::new("UPDATE mpi_patient SET how = ");
                    up.text_param(how).push(", assurance = ").text_param(level).push(", score = ").real_param(cmp.weight);
                    up.push(" WHERE grp = ").text_param(grp.clone()).push(" AND how = 'new'");
                    self.exec(up);
                    for m in self.ahead.values_mut().flatten() {
                        if m.grp == grp && m.how == "new" {
                            m.how = how.to_owned();
                            m.assurance = level.to_owned();
                            m.score = cmp.weight;
                        }
                    }
                    self.set_group(&me.pid, &grp, how, level, cmp.weight).await?;
                    self.touched.insert(old);
                    self.audit(action, &[&me.pid, &other], Some(&grp), Some(cmp.weight), &cmp.explain()).await?;
                    joined = Some(grp);
                }
                Some(target) if certain => {
                    // the same trusted identifier in another group: the groups are one person
                    let target = target.clone();
                    self.merge_groups(&grp, &target).await?;
                    self.audit("deterministic-link", &[&me.pid, &other], Some(&target), Some(cmp.weight), &cmp.explain()).await?;
                }
                _ if cmp.grade >= Grade::Possible && !pairs.contains_key(&other) && reviews < cfg.max_reviews => {
                    reviews += 1;
                    self.queue_review(&me.pid, &other, &cmp).await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A40 merge: a Patient with `link` `replaced-by` → its group follows the survivor.
    pub async fn follow_survivor(&mut self, pid: &str) -> Result<()> {
        let Some(me) = self.member(pid).await? else { return Ok(()) };
        let Some(survivor) = me.feat.r.clone() else { return Ok(()) };
        let Some(s) = self.member(&survivor).await? else { return Ok(()) };
        if s.grp == me.grp && me.how == "merge" {
            return Ok(());
        }
        let from = me.grp.clone();
        self.merge_groups(&from, &s.grp).await?;
        self.set_group(pid, &s.grp, "merge", "level3", 0.0).await?;
        self.audit("merge", &[pid, &survivor], Some(&s.grp), None, "Patient.link replaced-by (HL7 v2 A40 merge)").await
    }

    // ---- manual operations ------------------------------------------------------------

    async fn require(&mut self, pid: &str) -> Result<Member> {
        self.member(pid).await?.ok_or_else(|| IdentityError::NotFound(format!("Patient/{pid} is not in the patient index")))
    }

    /// Link two Patients by hand (their groups become one; level4).
    pub async fn link(&mut self, a: &str, b: &str, note: &str) -> Result<String> {
        if a == b {
            return Err(IdentityError::Invalid("cannot link a Patient to itself".into()));
        }
        let ma = self.require(a).await?;
        let mb = self.require(b).await?;
        self.merge_groups(&mb.grp, &ma.grp).await?;
        let cfg = self.services.mpi.clone();
        let c = compare(&ma.feat, &mb.feat, &cfg);
        self.set_group(a, &ma.grp, "manual", "level4", c.weight).await?;
        self.set_group(b, &ma.grp, "manual", "level4", c.weight).await?;
        self.delete_pair(a, b).await?;
        let reasons = if note.is_empty() { c.explain() } else { format!("{note}; {}", c.explain()) };
        self.audit("manual-link", &[a, b], Some(&ma.grp), Some(c.weight), &reasons).await?;
        Ok(ma.grp)
    }

    /// Take a Patient out of its group by hand; it is not linked to the
    /// former members again automatically.
    pub async fn unlink(&mut self, pid: &str, note: &str) -> Result<String> {
        let m = self.require(pid).await?;
        let others: Vec<Member> = self.group(&m.grp).await?.into_iter().filter(|o| o.pid != pid).collect();
        if others.is_empty() {
            return Err(IdentityError::Invalid(format!("Patient/{pid} is not linked to any other Patient")));
        }
        let grp = uuid::Uuid::new_v4().to_string();
        self.set_group(pid, &grp, "manual", "level1", 0.0).await?;
        self.touched.insert(m.grp.clone());
        for o in &others {
            self.set_pair(pid, &o.pid, "nomatch", None, 0.0).await?;
        }
        let reasons = if note.is_empty() { "unlinked by hand".to_owned() } else { note.to_owned() };
        self.audit("manual-unlink", &[pid], Some(&m.grp), None, &reasons).await?;
        Ok(grp)
    }

    /// Resolve a review Task: `confirm` links the pair, `reject` records that they differ.
    pub async fn resolve_review(&mut self, task_id: &str, confirm: bool, note: &str) -> Result<(String, String)> {
        let row = self.cur("Task", task_id).await?.filter(|r| !r.deleted);
        let Some(body) = row.and_then(|r| r.body) else {
            return Err(IdentityError::NotFound(format!("Task/{task_id} not found")));
        };
        let mut task: Value = serde_json::from_slice(&body).map_err(|e| IdentityError::Invalid(e.to_string()))?;
        let is_review = task.pointer("/code/coding/0/system").and_then(Value::as_str) == Some(MPI_SYSTEM)
            && task.pointer("/code/coding/0/code").and_then(Value::as_str) == Some("review");
        if !is_review {
            return Err(IdentityError::Invalid(format!("Task/{task_id} is not an MPI review task")));
        }
        if task.get("status").and_then(Value::as_str) != Some("requested") {
            return Err(IdentityError::Conflict(format!("Task/{task_id} was already resolved")));
        }
        let pid = |p: &str| task.pointer(p).and_then(Value::as_str).and_then(|r| r.strip_prefix("Patient/")).map(str::to_owned);
        let (Some(a), Some(b)) = (pid("/focus/reference"), pid("/for/reference")) else {
            return Err(IdentityError::Invalid(format!("Task/{task_id} names no candidate pair")));
        };
        let decision = if confirm { "confirmed" } else { "rejected" };
        if confirm {
            self.link(&a, &b, &format!("review Task/{task_id} confirmed {note}")).await?;
        } else {
            self.require(&a).await?;
            self.require(&b).await?;
            self.set_pair(&a, &b, "nomatch", Some(task_id), 0.0).await?;
            self.audit("review-rejected", &[&a, &b], None, None, &format!("review Task/{task_id} rejected {note}")).await?;
        }
        task["status"] = json!("completed");
        task["businessStatus"] = json!({"text": decision});
        task["lastModified"] = json!(datetime::format_instant(self.now));
        task["output"] = json!([{"type": {"text": "decision"}, "valueString": decision}]);
        self.put("Task", task_id, task).await?;
        Ok((a, b))
    }

    // ---- Person per group -------------------------------------------------------------

    /// Bring the `Person` of every group touched in this transaction up to date:
    /// two or more members → a Person with one `link` per member; fewer → none.
    pub async fn finish(mut self) -> Result<()> {
        let touched = std::mem::take(&mut self.touched);
        for grp in touched {
            let members = self.group(&grp).await?;
            if members.len() < 2 {
                self.delete_resource("Person", &grp).await?;
                continue;
            }
            let links: Vec<Value> = members
                .iter()
                .map(|m| json!({"target": {"reference": format!("Patient/{}", m.pid)}, "assurance": m.assurance}))
                .collect();
            let person = json!({
                "resourceType": "Person",
                "meta": {"tag": tag()},
                "active": true,
                "link": links,
            });
            // unchanged links: no new version
            if let Some(cur) = self.cur("Person", &grp).await?.filter(|c| !c.deleted) {
                if let Some(b) = cur.body {
                    if let Ok(v) = serde_json::from_slice::<Value>(&b) {
                        if v.get("link") == person.get("link") {
                            continue;
                        }
                    }
                }
            }
            self.put("Person", &grp, person).await?;
        }
        self.flush().await
    }
}
