//! Tokenizer for FHIRPath source text.

use super::FhirPathError;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// Plain identifier (keywords such as `and`, `is`, `true` are lexed as identifiers too).
    Ident(String),
    /// Back-tick delimited identifier.
    DelimIdent(String),
    Str(String),
    /// Number as written (integer or decimal).
    Number(String),
    /// Date / DateTime / Time literal text after the `@` (Time keeps its leading `T`).
    Date(String),
    DateTime(String),
    Time(String),
    /// `%name`, `%`name``, `%'name'`
    ExtConst(String),
    /// `$this`, `$index`, `$total`
    Special(String),
    Sym(&'static str),
    Eof,
}

#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub tok: Tok,
    pub pos: usize,
}

fn perr(pos: usize, msg: impl Into<String>) -> FhirPathError {
    FhirPathError::Parse { pos, msg: msg.into() }
}

pub(crate) fn tokenize(src: &str) -> Result<Vec<Token>, FhirPathError> {
    let b = src.as_bytes();
    let mut i = 0usize;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        // whitespace
        if c == b' ' || c == b'\t' || c == b'\r' || c == b'\n' || c == 0x0c {
            i += 1;
            continue;
        }
        // comments
        if c == b'/' && i + 1 < b.len() && b[i + 1] == b'/' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && i + 1 < b.len() && b[i + 1] == b'*' {
            let start = i;
            i += 2;
            loop {
                if i + 1 >= b.len() {
                    return Err(perr(start, "unterminated comment"));
                }
                if b[i] == b'*' && b[i + 1] == b'/' {
                    i += 2;
                    break;
                }
                i += 1;
            }
            continue;
        }
        let start = i;
        if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Token { tok: Tok::Ident(src[start..i].to_string()), pos: start });
            continue;
        }
        if c.is_ascii_digit() {
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            out.push(Token { tok: Tok::Number(src[start..i].to_string()), pos: start });
            continue;
        }
        match c {
            b'\'' => {
                let (s, ni) = read_quoted(src, i, b'\'')?;
                i = ni;
                out.push(Token { tok: Tok::Str(s), pos: start });
            }
            b'`' => {
                let (s, ni) = read_quoted(src, i, b'`')?;
                i = ni;
                out.push(Token { tok: Tok::DelimIdent(s), pos: start });
            }
            b'%' => {
                i += 1;
                if i < b.len() && (b[i] == b'`' || b[i] == b'\'') {
                    let (s, ni) = read_quoted(src, i, b[i])?;
                    i = ni;
                    out.push(Token { tok: Tok::ExtConst(s), pos: start });
                } else {
                    let s0 = i;
                    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                        i += 1;
                    }
                    if s0 == i {
                        return Err(perr(start, "expected a name after '%'"));
                    }
                    out.push(Token { tok: Tok::ExtConst(src[s0..i].to_string()), pos: start });
                }
            }
            b'$' => {
                i += 1;
                let s0 = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let name = &src[s0..i];
                match name {
                    "this" | "index" | "total" => {
                        out.push(Token { tok: Tok::Special(name.to_string()), pos: start })
                    }
                    _ => return Err(perr(start, format!("unknown special variable '${}'", name))),
                }
            }
            b'@' => {
                let (tok, ni) = read_datetime(src, i)?;
                i = ni;
                out.push(Token { tok, pos: start });
            }
            _ => {
                let two = src.get(i..i + 2).unwrap_or("");
                let sym: &'static str = match two {
                    "<=" => "<=",
                    ">=" => ">=",
                    "!=" => "!=",
                    "!~" => "!~",
                    _ => match c {
                        b'.' => ".",
                        b',' => ",",
                        b'(' => "(",
                        b')' => ")",
                        b'[' => "[",
                        b']' => "]",
                        b'{' => "{",
                        b'}' => "}",
                        b'+' => "+",
                        b'-' => "-",
                        b'*' => "*",
                        b'/' => "/",
                        b'&' => "&",
                        b'|' => "|",
                        b'=' => "=",
                        b'~' => "~",
                        b'<' => "<",
                        b'>' => ">",
                        _ => {
                            let ch = src[i..].chars().next().unwrap_or('?');
                            return Err(perr(i, format!("unexpected character '{}'", ch)));
                        }
                    },
                };
                i += sym.len();
                out.push(Token { tok: Tok::Sym(sym), pos: start });
            }
        }
    }
    out.push(Token { tok: Tok::Eof, pos: src.len() });
    Ok(out)
}

/// Reads a quoted string/identifier starting at `start` (which holds the quote char).
fn read_quoted(src: &str, start: usize, q: u8) -> Result<(String, usize), FhirPathError> {
    let b = src.as_bytes();
    let mut i = start + 1;
    let mut s = String::new();
    loop {
        if i >= b.len() {
            return Err(perr(start, "unterminated string or identifier"));
        }
        let c = b[i];
        if c == q {
            return Ok((s, i + 1));
        }
        if c == b'\\' {
            if i + 1 >= b.len() {
                return Err(perr(i, "unterminated escape"));
            }
            let e = b[i + 1];
            i += 2;
            match e {
                b'\'' => s.push('\''),
                b'"' => s.push('"'),
                b'`' => s.push('`'),
                b'\\' => s.push('\\'),
                b'/' => s.push('/'),
                b'f' => s.push('\u{000c}'),
                b'n' => s.push('\n'),
                b'r' => s.push('\r'),
                b't' => s.push('\t'),
                b'u' => {
                    if i + 4 > b.len() {
                        return Err(perr(i, "invalid unicode escape"));
                    }
                    let hex = src.get(i..i + 4).ok_or_else(|| perr(i, "invalid unicode escape"))?;
                    let mut cp = u32::from_str_radix(hex, 16).map_err(|_| perr(i, "invalid unicode escape"))?;
                    i += 4;
                    // surrogate pair
                    if (0xD800..0xDC00).contains(&cp) && i + 6 <= b.len() && b[i] == b'\\' && b[i + 1] == b'u' {
                        if let Some(lo) = src.get(i + 2..i + 6).and_then(|h| u32::from_str_radix(h, 16).ok()) {
                            if (0xDC00..0xE000).contains(&lo) {
                                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                                i += 6;
                            }
                        }
                    }
                    s.push(char::from_u32(cp).unwrap_or('\u{FFFD}'));
                }
                _ => return Err(perr(i - 2, format!("invalid escape '\\{}'", e as char))),
            }
            continue;
        }
        // copy one UTF-8 char
        let ch = src[i..].chars().next().unwrap_or('\u{FFFD}');
        s.push(ch);
        i += ch.len_utf8().max(1);
    }
}

fn digits(b: &[u8], i: usize, n: usize) -> bool {
    i + n <= b.len() && b[i..i + n].iter().all(|c| c.is_ascii_digit())
}

/// Reads a time part `HH(:MM(:SS(.fff)?)?)?` starting at i; returns new index (or None if no hour digits).
fn read_time_part(b: &[u8], mut i: usize) -> Option<usize> {
    if !digits(b, i, 2) {
        return None;
    }
    i += 2;
    if i < b.len() && b[i] == b':' && digits(b, i + 1, 2) {
        i += 3;
        if i < b.len() && b[i] == b':' && digits(b, i + 1, 2) {
            i += 3;
            if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
        }
    }
    Some(i)
}

fn read_tz(b: &[u8], i: usize) -> Option<usize> {
    if i < b.len() && b[i] == b'Z' {
        return Some(i + 1);
    }
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') && digits(b, i + 1, 2) && i + 3 < b.len() && b[i + 3] == b':' && digits(b, i + 4, 2) {
        return Some(i + 6);
    }
    None
}

fn read_datetime(src: &str, start: usize) -> Result<(Tok, usize), FhirPathError> {
    let b = src.as_bytes();
    let mut i = start + 1;
    if i < b.len() && b[i] == b'T' {
        let end = read_time_part(b, i + 1).ok_or_else(|| perr(start, "invalid time literal"))?;
        if read_tz(b, end).is_some() {
            return Err(perr(start, "a time literal cannot have a timezone"));
        }
        return Ok((Tok::Time(src[i..end].to_string()), end));
    }
    if !digits(b, i, 4) {
        return Err(perr(start, "invalid date/time literal"));
    }
    i += 4;
    if i < b.len() && b[i] == b'-' && digits(b, i + 1, 2) {
        i += 3;
        if i < b.len() && b[i] == b'-' && digits(b, i + 1, 2) {
            i += 3;
        }
    }
    if i < b.len() && b[i] == b'T' {
        i += 1;
        if let Some(e) = read_time_part(b, i) {
            i = e;
            if let Some(e2) = read_tz(b, i) {
                i = e2;
            }
        }
        return Ok((Tok::DateTime(src[start + 1..i].to_string()), i));
    }
    Ok((Tok::Date(src[start + 1..i].to_string()), i))
}
