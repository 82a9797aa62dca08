//! Access policy settings (`[access]` in `carebridge.toml`), read by
//! `auth::filter` for every read: the default for patients without an
//! active `patient-privacy` Consent (FHIR R4 `consent.html`), whether
//! clinical members need a care relationship, and the purpose-of-use codes
//! (HL7 v3 ActReason, R4 `v3-PurposeOfUse`) that break the glass.
//!
//! ```toml
//! [access]
//! default_policy = "opt-in"        # or "opt-out"
//! care_relationship = true         # clinical members need a care relationship
//! break_glass = ["ETREAT", "BTG"]  # purpose-of-use codes that break the glass
//! secondary_use_purposes = ["HRESCH", "HPAYMT"]  # what de-identified exports and aggregates serve
//! ```

use serde::Deserialize;

/// What applies to a patient who has no active `patient-privacy` Consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    /// Opt-in region: records of other institutions are not shared without
    /// the patient's consent (the default).
    #[default]
    OptIn,
    /// Opt-out region: records are shared unless the patient objected.
    OptOut,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    pub default_policy: DefaultPolicy,
    /// Clinical members read a patient's records only with a care relationship.
    pub care_relationship: bool,
    /// `X-Purpose-Of-Use` / token purpose codes that break the glass.
    pub break_glass: Vec<String>,
    /// Purposes of use that de-identified exports and aggregate measure
    /// counts serve: a Consent that explicitly denies one of them (or the
    /// reader) keeps the person out (`auth::bulk`).
    pub secondary_use_purposes: Vec<String>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig { default_policy: DefaultPolicy::OptIn, care_relationship: true, break_glass: vec!["ETREAT".into(), "BTG".into()], secondary_use_purposes: vec!["HRESCH".into(), "HPAYMT".into()] }
    }
}

/// Facts the read filter derives from stored resources (a person's
/// records, care relationship with a member, privacy Consents, what a
/// Provenance attributes to a member), kept across requests so that a read
/// does not repeat the same queries for every request.
///
/// Correctness rests on a **generation**: the write pipeline calls
/// [`FactsCache::bump`] after every committed change that is not only
/// AuditEvents, and an entry is used only while the generation it was
/// loaded under is still current (it is stamped with the generation read
/// *before* its queries ran, so a change committed meanwhile makes it
/// stale). Within one process the cache therefore never answers from
/// before a committed change. Another replica's writes (PostgreSQL) are not
/// seen by this counter: entries also expire after [`FactsCache::TTL`], the
/// bound on how late such a change (a revoked Consent, an ended Encounter)
/// takes effect here — and on time-dependent facts (periods) in general.
/// Values are type-erased (`Any`) because `services` sits below `auth`.
pub struct FactsCache {
    generation: std::sync::atomic::AtomicU64,
    entries: std::sync::Mutex<std::collections::HashMap<String, CacheEntry>>,
}

struct CacheEntry {
    generation: u64,
    at: std::time::Instant,
    value: std::sync::Arc<dyn std::any::Any + Send + Sync>,
}

impl Default for FactsCache {
    fn default() -> Self {
        FactsCache { generation: std::sync::atomic::AtomicU64::new(1), entries: Default::default() }
    }
}

impl std::fmt::Debug for FactsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FactsCache").field("generation", &self.generation()).finish_non_exhaustive()
    }
}

impl FactsCache {
    /// How long an entry is trusted at most (changes made by another
    /// replica, time-dependent facts).
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(2);
    /// Entries kept at most; beyond it the cache starts over.
    pub const CAPACITY: usize = 200_000;

    /// The current generation: read it before loading what [`FactsCache::put`] stores.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Invalidate everything (a change was committed).
    pub fn bump(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// The value under `key`, if it is of type `T`, still of the current
    /// generation and younger than the TTL.
    pub fn get<T: std::any::Any + Send + Sync>(&self, key: &str) -> Option<std::sync::Arc<T>> {
        let now = self.generation();
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let e = entries.get(key)?;
        if e.generation != now || e.at.elapsed() > Self::TTL {
            return None;
        }
        e.value.clone().downcast::<T>().ok()
    }

    /// The value under `key`, or the one `load` produces — stamped with the
    /// generation read before `load` runs, so a change committed meanwhile
    /// keeps it out of the cache.
    pub async fn get_or_load<T, E, F>(&self, key: String, load: F) -> Result<std::sync::Arc<T>, E>
    where
        T: std::any::Any + Send + Sync,
        F: std::future::Future<Output = Result<T, E>>,
    {
        if let Some(v) = self.get::<T>(&key) {
            return Ok(v);
        }
        let generation = self.generation();
        let v = std::sync::Arc::new(load.await?);
        self.put(key, generation, v.clone());
        Ok(v)
    }

    /// Keep `value`, loaded under `generation` (from [`FactsCache::generation`]
    /// before the loading queries); nothing is kept when a change has been
    /// committed since.
    pub fn put<T: std::any::Any + Send + Sync>(&self, key: String, generation: u64, value: std::sync::Arc<T>) {
        if generation != self.generation() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= Self::CAPACITY {
            entries.clear();
        }
        entries.insert(key, CacheEntry { generation, at: std::time::Instant::now(), value });
    }
}

#[cfg(test)]
mod tests {
    use super::FactsCache;
    use std::sync::Arc;

    #[test]
    fn generation_invalidates_and_types_are_checked() {
        let c = FactsCache::default();
        let g = c.generation();
        c.put("a".into(), g, Arc::new(7u32));
        assert_eq!(c.get::<u32>("a").as_deref(), Some(&7));
        assert!(c.get::<String>("a").is_none(), "another type is a miss");
        c.bump();
        assert!(c.get::<u32>("a").is_none(), "a committed change invalidates");
        // loaded under an old generation: not kept
        c.put("b".into(), g, Arc::new(1u32));
        assert!(c.get::<u32>("b").is_none());
        let g2 = c.generation();
        c.put("b".into(), g2, Arc::new(2u32));
        assert_eq!(c.get::<u32>("b").as_deref(), Some(&2));
    }
}
