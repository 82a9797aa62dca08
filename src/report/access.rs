//! The one row filter of reports and exports: every stored row that a
//! measure counts or an export writes passes [`visible`] first (DESIGN.md
//! "One read path": the authorisation and Consent filter before anything
//! leaves the process).
//!
//! Today it lets every row through: role decisions for reports (summary
//! only, de-identified exports) are made by the callers on the
//! [`Caller`]; the Consent filter (issue 7, branch `consent`) plugs in
//! here, in this one function, and takes effect for every measure and
//! every export at once.
//!
//! Invariant: no code in `report` counts or exports a stored row without
//! asking this function.

use crate::auth::Caller;

/// One stored row as the filter sees it.
#[derive(Debug, Clone, Copy)]
pub struct RowRef<'a> {
    pub rtype: &'a str,
    pub id: &'a str,
    /// the Patient the row belongs to (its compartment), when known
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

/// May `caller` see (count, export) this row?
pub fn visible(caller: &Caller, row: RowRef<'_>) -> bool {
    let _ = (caller, row);
    true
}
