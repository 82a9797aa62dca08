//! Element paths of mapping files (`name[0].given[1]`, `valueQuantity.value`,
//! `code.coding[0]`): the simple dotted form of FHIR R4 `elementdefinition.html`
//! paths with explicit list indexes, and writing a value at one into a
//! resource under construction (objects and list items created as needed).
//!
//! Not FHIRPath: a mapping writes, it does not query, so only names and
//! indexes are allowed; choice elements are written with their JSON name
//! (`valueQuantity`, `effectiveDateTime`), as in `json.html`.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seg {
    name: String,
    index: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementPath {
    segs: Vec<Seg>,
    text: String,
}

impl ElementPath {
    pub fn parse(s: &str) -> Result<ElementPath, String> {
        let mut segs = vec![];
        for part in s.split('.') {
            let (name, index) = match part.split_once('[') {
                Some((n, rest)) => {
                    let idx = rest
                        .strip_suffix(']')
                        .and_then(|i| i.parse::<usize>().ok())
                        .filter(|i| *i < 100)
                        .ok_or_else(|| format!("element path {s:?}: bad index in {part:?} (write name[0])"))?;
                    (n, Some(idx))
                }
                None => (part, None),
            };
            let ok = name.starts_with(|c: char| c.is_ascii_alphabetic())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(format!("element path {s:?}: {name:?} is not an element name"));
            }
            if name == "resourceType" || name == "id" && segs.is_empty() || name == "meta" && segs.is_empty() {
                return Err(format!("element path {s:?}: resourceType, id and meta are set by the importer"));
            }
            segs.push(Seg { name: name.to_owned(), index });
        }
        Ok(ElementPath { segs, text: s.to_owned() })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Writes `v` at this path below `root`, creating objects and list items
    /// on the way (missing earlier items are `null` placeholders that the
    /// final prune removes). An existing value at the end is replaced.
    pub fn set(&self, root: &mut Map<String, Value>, v: Value) {
        let mut cur = root;
        let last = self.segs.len() - 1;
        for (i, seg) in self.segs.iter().enumerate() {
            let slot: &mut Value = match seg.index {
                None => cur.entry(seg.name.clone()).or_insert(Value::Null),
                Some(idx) => {
                    let arr = cur.entry(seg.name.clone()).or_insert_with(|| Value::Array(vec![]));
                    if !arr.is_array() {
                        *arr = Value::Array(vec![]);
                    }
                    let a = arr.as_array_mut().expect("array");
                    while a.len() <= idx {
                        a.push(Value::Null);
                    }
                    &mut a[idx]
                }
            };
            if i == last {
                *slot = v;
                return;
            }
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            cur = slot.as_object_mut().expect("object");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parse_and_set() {
        let mut m = Map::new();
        ElementPath::parse("name[0].given[1]").unwrap().set(&mut m, json!("B"));
        ElementPath::parse("name[0].given[0]").unwrap().set(&mut m, json!("A"));
        ElementPath::parse("name[0].family").unwrap().set(&mut m, json!("Ö"));
        ElementPath::parse("valueQuantity.value").unwrap().set(&mut m, json!(1.5));
        assert_eq!(Value::Object(m), json!({"name": [{"given": ["A", "B"], "family": "Ö"}], "valueQuantity": {"value": 1.5}}));
        for bad in ["", "a..b", "a[x]", "a[0", "1a", "id", "resourceType", "meta.tag[0]", "a b"] {
            assert!(ElementPath::parse(bad).is_err(), "{bad}");
        }
        assert!(ElementPath::parse("identifier[0].id").is_ok());
    }
}
