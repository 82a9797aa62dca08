//! The one row filter of reports and exports: every stored row that a
//! measure counts or an export writes passes [`RowFilter::visible`] first
//! (DESIGN.md "One read path": the authorisation and Consent filter before
//! anything leaves the process).
//!
//! A [`RowFilter`] is made once per export job or report evaluation for its
//! caller and what leaves (`auth::bulk`: the facts are loaded in bulk, the
//! decision per row is pure):
//!
//! | what leaves | filter |
//! |---|---|
//! | an export of a clinical member, a subject-list / subject report | identified release: care relationship + Consent (or own record), as every read path; operators and integration engines unfiltered |
//! | the insurer's de-identified export | secondary use: rows of persons whose Consent explicitly denies a secondary-use purpose (research, payment) or the insurer are left out |
//! | summary measure reports (counts) | secondary use, for every caller: no individual leaves, so only an explicit denial of the purpose removes a person from the counts |
//!
//! Invariant: no code in `report` counts or exports a stored row without
//! asking a [`RowFilter`].

use crate::auth::bulk::{BulkAccess, Release};
use crate::auth::Caller;
use crate::services::Services;
use crate::store::StoreError;

/// One stored row as the filter sees it.
#[derive(Debug, Clone, Copy)]
pub struct RowRef<'a> {
    pub rtype: &'a str,
    pub id: &'a str,
    /// the Patient the row belongs to (its compartment), when the reader
    /// knows it (report facts); `None`: taken from the body
    pub patient: Option<&'a str>,
    /// the stored JSON, or (for reports) the parsed facts projection
    pub body: RowBody<'a>,
}

/// A row's content as its reader holds it.
#[derive(Debug, Clone, Copy)]
pub enum RowBody<'a> {
    Bytes(&'a [u8]),
    Json(&'a serde_json::Value),
}

/// The row decisions of one export job or report evaluation.
pub struct RowFilter {
    access: BulkAccess,
}

impl RowFilter {
    /// For a Bulk Data export by `caller`; `deidentified`: the insurer's
    /// de-identified export (secondary use).
    pub async fn for_export(services: &Services, caller: &Caller, deidentified: bool) -> Result<RowFilter, StoreError> {
        let release = if deidentified { Release::Secondary } else { Release::Identified };
        Ok(RowFilter { access: BulkAccess::prepare(services, caller, release).await? })
    }

    /// For a measure evaluation by `caller`; `lists_subjects`: the report
    /// names individuals (subject-list, subject), else it is counts only.
    pub async fn for_report(services: &Services, caller: &Caller, lists_subjects: bool) -> Result<RowFilter, StoreError> {
        let release = if lists_subjects { Release::Identified } else { Release::Secondary };
        Ok(RowFilter { access: BulkAccess::prepare(services, caller, release).await? })
    }

    /// Nothing is withheld.
    pub fn is_unrestricted(&self) -> bool {
        self.access.is_unrestricted()
    }

    /// May this row be counted or exported? Unparseable bytes are withheld
    /// unless nothing is filtered.
    pub fn visible(&self, row: RowRef<'_>) -> bool {
        if self.access.is_unrestricted() {
            return true;
        }
        let patients: Option<[&str; 1]> = row.patient.map(|p| [p]);
        let patients = patients.as_ref().map(|p| &p[..]);
        match row.body {
            RowBody::Json(v) => self.access.decide(row.rtype, row.id, v, patients),
            RowBody::Bytes(b) => match serde_json::from_slice::<serde_json::Value>(b) {
                Ok(v) => self.access.decide(row.rtype, row.id, &v, patients),
                Err(_) => false,
            },
        }
    }
}
