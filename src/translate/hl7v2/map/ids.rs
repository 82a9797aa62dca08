//! Deterministic resource ids for translated HL7 v2 content: the shared
//! UUIDv5 scheme of [`crate::translate::ids`] (RFC 9562 §5.5), re-exported
//! here so the v2 mappers keep their short paths. The business keys the v2
//! translator uses are listed in the `map` module documentation.

pub use crate::translate::ids::{resource_id, NAMESPACE};
