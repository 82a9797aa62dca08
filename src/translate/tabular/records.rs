//! Reading an export into rows: CSV (RFC 4180 via the `csv` crate: quoting,
//! embedded delimiters and line breaks; the mapping's delimiter and
//! encoding) or JSON (an array of objects, at the mapping's JSON pointer,
//! RFC 6901). Every row becomes a JSON object so one JSON Schema checks
//! both: CSV cells are strings, empty cells are left out (so `required`
//! catches them).
//!
//! Row numbers are what a person sees: for CSV the line the record starts
//! on (the header is line 1, so the first data row is row 2), for JSON the
//! 1-based position in the records array.

use serde_json::{Map, Value};

use super::mapping::{CsvInput, JsonInput};

/// One record of the export.
#[derive(Debug)]
pub struct Row {
    pub number: usize,
    /// the record as a JSON object, or why it is not one
    pub values: Result<Map<String, Value>, String>,
}

/// All records, with the CSV header (column names) when there is one.
#[derive(Debug)]
pub struct Records {
    pub header: Option<Vec<String>>,
    pub rows: Vec<Row>,
}

fn text(bytes: &[u8], latin1: bool) -> Result<std::borrow::Cow<'_, str>, String> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if latin1 {
        return Ok(std::borrow::Cow::Owned(bytes.iter().map(|&b| b as char).collect()));
    }
    std::str::from_utf8(bytes).map(std::borrow::Cow::Borrowed).map_err(|e| {
        let at = e.valid_up_to();
        let line = bytes[..at].iter().filter(|b| **b == b'\n').count() + 1;
        format!("the file is not UTF-8 (line {line}, byte {at}); the mapping can declare encoding = \"latin1\"")
    })
}

pub fn read_csv(bytes: &[u8], cfg: &CsvInput) -> Result<Records, String> {
    let text = text(bytes, cfg.latin1)?;
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(cfg.delimiter)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let header: Vec<String> = rdr.headers().map_err(|e| format!("CSV header: {e}"))?.iter().map(str::to_owned).collect();
    if header.iter().all(String::is_empty) {
        return Err("the CSV file has no header line".into());
    }
    for (i, h) in header.iter().enumerate() {
        if h.is_empty() {
            return Err(format!("CSV header: column {} has no name", i + 1));
        }
        if header[..i].contains(h) {
            return Err(format!("CSV header: column '{h}' appears twice"));
        }
    }
    let mut rows = vec![];
    for rec in rdr.records() {
        let rec = rec.map_err(|e| format!("CSV: {e}"))?;
        let number = rec.position().map(|p| p.line() as usize).unwrap_or(0);
        if rec.iter().all(str::is_empty) {
            continue; // a line of bare delimiters
        }
        let values = if rec.len() != header.len() {
            Err(format!("has {} fields, the header has {}", rec.len(), header.len()))
        } else {
            let mut m = Map::with_capacity(header.len());
            for (h, v) in header.iter().zip(rec.iter()) {
                if !v.is_empty() {
                    m.insert(h.clone(), Value::String(v.to_owned()));
                }
            }
            Ok(m)
        };
        rows.push(Row { number, values });
    }
    Ok(Records { header: Some(header), rows })
}

pub fn read_json(bytes: &[u8], cfg: &JsonInput) -> Result<Records, String> {
    let text = text(bytes, false)?;
    let mut doc: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    let records = doc
        .pointer_mut(&cfg.records)
        .ok_or_else(|| format!("the JSON document has no records at {:?}", cfg.records))?;
    let Value::Array(items) = records.take() else {
        return Err(format!("the records at {:?} are not a JSON array", cfg.records));
    };
    let rows = items
        .into_iter()
        .enumerate()
        .map(|(i, v)| Row {
            number: i + 1,
            values: match v {
                Value::Object(m) => Ok(m),
                _ => Err("is not a JSON object".into()),
            },
        })
        .collect();
    Ok(Records { header: None, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_and_numbers() {
        let cfg = CsvInput { delimiter: b';', latin1: false };
        let r = read_csv("\u{feff}a;b\n1; x \n\n;;\n\"multi\nline\";2\n3\n".as_bytes(), &cfg).unwrap();
        assert_eq!(r.header.as_deref(), Some(&["a".to_owned(), "b".to_owned()][..]));
        let nums: Vec<usize> = r.rows.iter().map(|r| r.number).collect();
        assert_eq!(nums, vec![2, 5, 7]);
        assert_eq!(r.rows[0].values.as_ref().unwrap()["b"], "x");
        assert_eq!(r.rows[1].values.as_ref().unwrap()["a"], "multi\nline");
        assert!(r.rows[2].values.is_err());
        let latin = read_csv(b"n\nM\xfcller\n", &CsvInput { delimiter: b',', latin1: true }).unwrap();
        assert_eq!(latin.rows[0].values.as_ref().unwrap()["n"], "Müller");
        assert!(read_csv(b"n\nM\xfcller\n", &CsvInput { delimiter: b',', latin1: false }).unwrap_err().contains("line 2"));
        assert!(read_csv(b"a;a\n1;2\n", &cfg).is_err());
    }

    #[test]
    fn json_records() {
        let r = read_json(br#"{"x": [{"a": 1}, 2]}"#, &JsonInput { records: "/x".into() }).unwrap();
        assert_eq!(r.rows.len(), 2);
        assert!(r.rows[1].values.is_err());
        assert!(read_json(br#"{"x": 1}"#, &JsonInput { records: "/x".into() }).is_err());
        assert!(read_json(b"[1,", &JsonInput { records: String::new() }).is_err());
    }
}
