//! Removing empty values from translator output and checking that none are
//! left (FHIR R4 `json.html`): the shared rules of [`crate::translate::prune`],
//! re-exported for the v2 mappers and their tests.

pub use crate::translate::prune::{find_empty, has_empty, prune};
