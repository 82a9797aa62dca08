//! Deterministic resource ids for translated content (HL7 v2 and CSV/JSON
//! import share this scheme), and the SHA-256 used to name source files and
//! messages in Provenance.
//!
//! # What
//! Every resource a translator writes gets an id that depends only on
//! the member institution, the resource type and a *business key* taken from
//! the source (an identifier, a visit number, an order number, a mapped
//! column template …), never on the time or the order of arrival. The write pipeline then applies each
//! entry as `PUT Type/<id>` (update-as-create), so re-delivering a message,
//! or receiving an A08 before its A01, touches the same resources instead of
//! creating duplicates (DESIGN.md "Identity: a resource's id is
//! deterministic where the source has a business identifier").
//!
//! # How
//! `id = UUIDv5(NAMESPACE, institution_id + "|" + resource type + "|" + key)`
//! (RFC 9562 §5.5, name-based with SHA-1), written in the lowercase hyphenated
//! form, which is a valid FHIR `id` (36 characters of `[a-z0-9-]`) and a
//! valid `urn:uuid:` for `Bundle.entry.fullUrl`.
//!
//! [`NAMESPACE`] is a fixed, randomly generated UUID owned by carebridge
//! (`2d5724a2-dc57-4104-8c99-cbea7392ac40`). **It must never change**: every
//! stored id of translated data derives from it. The institution id is part
//! of the name, so two members sending the same MRN never collide, and the
//! resource type is part of it, so a DiagnosticReport and a ServiceRequest
//! keyed on the same order number get different ids.
//!
//! The business keys themselves are listed in each translator's
//! documentation (`hl7v2::map`, `tabular`). Because the scheme is shared,
//! an HL7 v2 feed and a CSV export of the same institution that key a
//! Patient the same way converge on one resource.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// carebridge's namespace for name-based (v5) resource ids. Never change it.
pub const NAMESPACE: Uuid = Uuid::from_u128(0x2d5724a2_dc57_4104_8c99_cbea7392ac40);

/// The deterministic id of a resource: UUIDv5 over
/// `institution_id|resource_type|key`.
pub fn resource_id(institution_id: &str, resource_type: &str, key: &str) -> String {
    let mut name =
        String::with_capacity(institution_id.len() + resource_type.len() + key.len() + 2);
    name.push_str(institution_id);
    name.push('|');
    name.push_str(resource_type);
    name.push('|');
    name.push_str(key);
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    Uuid::new_v5(&NAMESPACE, name.as_bytes())
        .hyphenated()
        .encode_lower(&mut buf)
        .to_owned()
}

/// Lowercase hex SHA-256 of raw bytes (Provenance.entity of a source file
/// or message).
pub fn sha256_hex(raw: &[u8]) -> String {
    let digest = Sha256::digest(raw);
    let mut s = String::with_capacity(64);
    for b in digest.iter() {
        s.push(char::from_digit((b >> 4) as u32, 16).unwrap_or('0'));
        s.push(char::from_digit((b & 15) as u32, 16).unwrap_or('0'));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_distinct() {
        let a = resource_id("klinikum-nord", "Patient", "urn:x|1");
        assert_eq!(a, resource_id("klinikum-nord", "Patient", "urn:x|1"));
        assert_eq!(a.len(), 36);
        assert_ne!(a, resource_id("klinikum-sued", "Patient", "urn:x|1"));
        assert_ne!(a, resource_id("klinikum-nord", "Encounter", "urn:x|1"));
        assert_ne!(a, resource_id("klinikum-nord", "Patient", "urn:x|2"));
        // version 5, RFC 4122 variant
        let u = Uuid::parse_str(&a).unwrap();
        assert_eq!(u.get_version_num(), 5);
        // pinned (cross-checked with Python's uuid.uuid5): the namespace and
        // the name layout must never change, or every stored id changes
        assert_eq!(
            resource_id(
                "klinikum-nord",
                "Patient",
                "urn:carebridge:klinikum-nord:mrn|4711"
            ),
            "c68970f7-d76c-56a5-83f8-2b425c0052cc"
        );
        assert_eq!(
            NAMESPACE.to_string(),
            "2d5724a2-dc57-4104-8c99-cbea7392ac40"
        );
    }

    #[test]
    fn sha256_of_abc() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
