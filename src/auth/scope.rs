//! SMART v2 system scopes (SMART App Launch 2.x, "Scopes and Launch
//! Context": `system/<Type|*>.<cruds>`), with the v1 forms `.read`,
//! `.write`, `.*` understood and rewritten to v2 letters.
//!
//! Only the `system/` context exists for Backend Services; `patient/` and
//! `user/` scopes, and v2 scopes with search-parameter constraints
//! (`?category=…`), are refused as unsupported (never silently widened).
//!
//! Invariant: a granted scope is always a subset of a registered scope
//! ([`covered`]); permission letters keep the canonical order `c r u d s`.

/// One parsed system scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// a resource type or `*`
    pub rtype: String,
    /// permission letters in canonical order (`cruds` subset)
    pub perms: String,
}

const ORDER: &str = "cruds";

impl Scope {
    pub fn parse(s: &str) -> Result<Scope, String> {
        let rest = s.strip_prefix("system/").ok_or_else(|| format!("scope '{s}': only system/ scopes are supported"))?;
        if rest.contains('?') {
            return Err(format!("scope '{s}': scopes with search constraints are not supported"));
        }
        let (rtype, perms) = rest.rsplit_once('.').ok_or_else(|| format!("scope '{s}' is not system/<Type>.<permissions>"))?;
        let type_ok = rtype == "*" || (!rtype.is_empty() && rtype.chars().all(|c| c.is_ascii_alphanumeric()) && rtype.starts_with(|c: char| c.is_ascii_uppercase()));
        if !type_ok {
            return Err(format!("scope '{s}': '{rtype}' is not a resource type"));
        }
        let letters = match perms {
            "read" => "rs".to_owned(),
            "write" => "cud".to_owned(),
            "*" => "cruds".to_owned(),
            p => {
                // v2: letters in order c r u d s, each at most once
                let mut last = None;
                for ch in p.chars() {
                    let pos = ORDER.find(ch).ok_or_else(|| format!("scope '{s}': unknown permission '{ch}'"))?;
                    if last.is_some_and(|l| pos <= l) {
                        return Err(format!("scope '{s}': permissions must be in the order c r u d s"));
                    }
                    last = Some(pos);
                }
                if p.is_empty() {
                    return Err(format!("scope '{s}' grants nothing"));
                }
                p.to_owned()
            }
        };
        Ok(Scope { rtype: rtype.to_owned(), perms: letters })
    }

    pub fn to_string_v2(&self) -> String {
        format!("system/{}.{}", self.rtype, self.perms)
    }
}

/// Is `requested` entirely within the `registered` scopes (every permission
/// letter granted for its type by some registered scope)?
pub fn covered(requested: &Scope, registered: &[Scope]) -> bool {
    requested.perms.chars().all(|p| {
        registered.iter().any(|r| (r.rtype == "*" || r.rtype == requested.rtype) && r.perms.contains(p))
    })
}

/// Do the granted scopes allow one of the permission `letters` on `rtype`
/// (`*`: an interaction without a type, which needs a `system/*` scope)?
pub fn permits(granted: &[String], rtype: &str, letters: &str) -> bool {
    granted.iter().filter_map(|g| Scope::parse(g).ok()).any(|g| {
        (g.rtype == "*" || (rtype != "*" && g.rtype == rtype)) && letters.chars().any(|l| g.perms.contains(l))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v2_and_v1() {
        assert_eq!(Scope::parse("system/Patient.rs").unwrap(), Scope { rtype: "Patient".into(), perms: "rs".into() });
        assert_eq!(Scope::parse("system/*.cruds").unwrap().perms, "cruds");
        assert_eq!(Scope::parse("system/Observation.read").unwrap().perms, "rs");
        assert_eq!(Scope::parse("system/*.write").unwrap().perms, "cud");
        for bad in ["patient/Patient.rs", "system/Patient.sr", "system/Patient.x", "system/Patient.", "system/patient.rs", "system/Observation.rs?category=lab", "openid"] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn coverage_and_permission() {
        let reg = vec![Scope::parse("system/Patient.rs").unwrap(), Scope::parse("system/Observation.cruds").unwrap()];
        assert!(covered(&Scope::parse("system/Patient.r").unwrap(), &reg));
        assert!(!covered(&Scope::parse("system/Patient.rus").unwrap(), &reg));
        assert!(!covered(&Scope::parse("system/*.r").unwrap(), &reg));
        let g = vec!["system/Patient.rs".to_owned()];
        assert!(permits(&g, "Patient", "r"));
        assert!(!permits(&g, "Patient", "c"));
        assert!(!permits(&g, "*", "s"));
        assert!(permits(&["system/*.c".to_owned()], "*", "c"));
    }
}
