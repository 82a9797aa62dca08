//! Zero-copy HL7 v2 ER7 ("pipe and hat") message parser.
//!
//! # Purpose
//! Turns one HL7 v2 message into a [`Message`] that borrows the input text and
//! gives positional access to segments, fields, repetitions, components and
//! subcomponents, all numbered from 1 the way HL7 numbers them. Nothing is
//! copied while parsing except two small index vectors (segment records and
//! field spans); values are `&str` slices of the input, and [`Field::decoded`]
//! (and friends) allocate only when the value actually contains an escape
//! sequence.
//!
//! # Spec sections followed (HL7 v2.5.1, chapter 2 "Control")
//! * 2.5 / 2.6 message construction rules: segments, fields, components,
//!   subcomponents, repetitions; fields absent at the end of a segment are
//!   simply not present (reading them gives an empty value); `""` is the
//!   explicit null value ([`Field::is_null`]).
//! * 2.5.4 / MSH-1 and MSH-2 (2.15.9.1, 2.15.9.2): the field separator is the
//!   character right after `MSH`; the encoding characters are the next field,
//!   in the order component, repetition, escape, subcomponent. A fifth
//!   character, the truncation character introduced in v2.7, is accepted in any
//!   version (US ELR guides pre-adopt it in 2.5.1). MSH numbering is special:
//!   `MSH-1` is the field separator itself and `MSH-2` the encoding
//!   characters, so `MSH-3` is the first value after them. Both are returned
//!   verbatim and never split or unescaped.
//! * 2.7 use of escape sequences in text fields: `\F\ \S\ \T\ \R\ \E\` give
//!   back the delimiter characters, `\Xhh..\` hexadecimal data, `\.br\` a
//!   line break, `\H\`/`\N\` (highlighting on/off) are dropped. See
//!   [`decode_escapes`] for the exact rules.
//! * Segment terminator: the standard says CR (0x0D). Files and some senders
//!   use LF or CRLF; all three are accepted (see "Segment terminators" below),
//!   and a missing terminator after the last segment is fine.
//!
//! # Bytes and character sets
//! [`Message::parse`] takes `&str`. For bytes use [`Message::parse_bytes`]
//! (zero-copy, UTF-8 only) or [`decode_bytes`] / [`MessageBuf::from_bytes`]:
//! a leading UTF-8 BOM (EF BB BF) is stripped; valid UTF-8 is used as is
//! (zero-copy), whatever MSH-18 says (a message labelled `8859/1` whose bytes
//! are valid UTF-8 is far more likely mislabelled UTF-8 than Latin-1 text that
//! happens to be valid UTF-8; pure ASCII is the same in both). Bytes that are
//! *not* valid UTF-8 are rejected with [`ErrorKind::Encoding`] unless MSH-18
//! (read from the raw bytes) names ISO 8859-1 (`8859/1`, also spelled
//! `ISO-8859-1`, `ISO8859-1`, `LATIN1`, `ISO IR100`) or ISO 8859-15
//! (`8859/15`, `LATIN9`); then the bytes are transcoded into an owned `String`
//! first, which is why that path returns [`MessageBuf`] / `Cow::Owned`. Other
//! 8859 parts (2–9) need code tables and are rejected as unsupported, as are
//! UTF-16/32 and the multi-byte Asian sets.
//!
//! # Segment terminators
//! If the text contains at least one CR, CR is the terminator and an LF right
//! after a CR is swallowed (CRLF); a lone LF inside a segment is then kept as
//! data (some senders put raw line breaks into text fields). If there is no CR
//! at all, LF is the terminator. Empty and whitespace-only lines are skipped.
//! Leading whitespace before `MSH` is skipped.
//!
//! # Why hand-written
//! See the `hl7v2` module documentation: the project owns this layer (no
//! dependency, panic-free on any input, errors carrying HL7 locations for
//! ERR segments, zero-copy, deliberate leniency for LF files and BOMs)
//! instead of depending on a published crate (that documentation also notes
//! which newer crates were not evaluated).
//!
//! # Limitations
//! * One message per call: the first segment must be `MSH`, a second `MSH`
//!   is an error. Batch files (FHS/BHS … BTS/FTS) must be split first.
//! * No message-structure (group) validation: segments come back as a flat
//!   list in order; Z-segments are kept like any other segment.
//! * Segment ids must be three characters `[A-Z][A-Z0-9]{2}`.
//! * MSH-2 must hold 4 or 5 distinct printable, non-alphanumeric ASCII
//!   characters, all different from the field separator.
//! * Inputs over 4 GiB are rejected (offsets are stored as `u32`).
//! * Character-set switching escapes (`\Cxxyy\`, `\Mxxyyzz\`) and locally
//!   defined `\Z..\` escapes are kept literally; hex data `\Xhh..\` is read
//!   as UTF-8 if the bytes form valid UTF-8, otherwise byte by byte as
//!   Latin-1.

// Hl7Error is ~150 bytes; errors are the cold path and the brief's flat
// shape (segment, seg_index, field, component, ...) is kept on purpose.
#![allow(clippy::result_large_err)]

use std::borrow::Cow;
use std::fmt;

// ---------------------------------------------------------------------------
// Errors and locations
// ---------------------------------------------------------------------------

/// What went wrong. Parse errors use the first group; the others exist so
/// that translators can report semantic problems with the same type and have
/// them turned into ERR segments ([`ErrorKind::hl7_error_code`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Nothing but whitespace / BOM in the input.
    Empty,
    /// Bytes are not valid UTF-8 and MSH-18 names no supported single-byte set,
    /// or the character set named in MSH-18 is not supported.
    Encoding,
    /// The input does not start with an `MSH` segment.
    MissingHeader,
    /// MSH-1 / MSH-2 are missing or unusable.
    BadDelimiters,
    /// A segment does not start with a valid three-character segment id.
    BadSegmentId,
    /// A second `MSH` segment was found (several messages in one input).
    UnexpectedHeader,
    /// The input is larger than the parser supports (4 GiB).
    TooLarge,
    /// Semantic: a required segment is missing or segments are out of order (0357: 100).
    SegmentSequence,
    /// Semantic: a required field is missing (0357: 101).
    RequiredFieldMissing,
    /// Semantic: a value does not match its data type, e.g. a bad date (0357: 102).
    DataType,
    /// Semantic: a coded value is not in its table (0357: 103).
    TableValueNotFound,
    /// Semantic: a value is too long (0357: 104).
    ValueTooLong,
    /// Semantic: MSH-9.1 not supported (0357: 200).
    UnsupportedMessageType,
    /// Semantic: MSH-9.2 not supported (0357: 201).
    UnsupportedEventCode,
    /// Semantic: MSH-11 not supported (0357: 202).
    UnsupportedProcessingId,
    /// Semantic: MSH-12 not supported (0357: 203).
    UnsupportedVersionId,
    /// Anything else on the receiver's side (0357: 207).
    Internal,
}

impl ErrorKind {
    /// The HL7 table 0357 ("message error condition codes") value that best
    /// describes this kind, for ERR-3 / ERR-1.4.
    pub fn hl7_error_code(self) -> u16 {
        match self {
            ErrorKind::Empty
            | ErrorKind::MissingHeader
            | ErrorKind::UnexpectedHeader
            | ErrorKind::BadSegmentId
            | ErrorKind::SegmentSequence => 100,
            ErrorKind::RequiredFieldMissing => 101,
            ErrorKind::Encoding | ErrorKind::BadDelimiters | ErrorKind::DataType => 102,
            ErrorKind::TableValueNotFound => 103,
            ErrorKind::ValueTooLong => 104,
            ErrorKind::UnsupportedMessageType => 200,
            ErrorKind::UnsupportedEventCode => 201,
            ErrorKind::UnsupportedProcessingId => 202,
            ErrorKind::UnsupportedVersionId => 203,
            ErrorKind::TooLarge | ErrorKind::Internal => 207,
        }
    }
}

/// An error with the HL7 position it refers to.
///
/// `seg_index` is the segment *sequence* in the sense of ERL-2: the 1-based
/// occurrence of that segment id in the message (the 2nd `OBX` is 2, however
/// many other segments come between); 0 when no segment could be identified.
/// `line` is the 1-based line/segment number in the input text, for humans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hl7Error {
    pub segment: String,
    pub seg_index: usize,
    pub field: Option<usize>,
    pub repetition: Option<usize>,
    pub component: Option<usize>,
    pub subcomponent: Option<usize>,
    pub line: Option<usize>,
    pub kind: ErrorKind,
    pub message: String,
}

impl Hl7Error {
    /// An error without a position (empty input, bad encoding, ...).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Hl7Error {
            segment: String::new(),
            seg_index: 0,
            field: None,
            repetition: None,
            component: None,
            subcomponent: None,
            line: None,
            kind,
            message: message.into(),
        }
    }

    /// An error at `loc`.
    pub fn at(loc: &Location, kind: ErrorKind, message: impl Into<String>) -> Self {
        Hl7Error {
            segment: loc.segment.clone(),
            seg_index: loc.sequence,
            field: loc.field,
            repetition: loc.repetition,
            component: loc.component,
            subcomponent: loc.subcomponent,
            line: None,
            kind,
            message: message.into(),
        }
    }

    /// The error's position as a [`Location`] (`None` if it has no segment).
    pub fn location(&self) -> Option<Location> {
        if self.segment.is_empty() {
            return None;
        }
        Some(Location {
            segment: self.segment.clone(),
            sequence: self.seg_index.max(1),
            field: self.field,
            repetition: self.repetition,
            component: self.component,
            subcomponent: self.subcomponent,
        })
    }
}

impl fmt::Display for Hl7Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location() {
            Some(loc) => {
                write!(f, "{loc}")?;
                if let Some(line) = self.line {
                    write!(f, " (line {line})")?;
                }
                write!(f, ": {}", self.message)
            }
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Hl7Error {}

/// A position in a message: segment id, its occurrence (ERL-2 "segment
/// sequence", 1-based), and optionally field, repetition, component and
/// subcomponent (all 1-based; MSH fields use MSH numbering).
///
/// Text form ([`fmt::Display`]): `PID-7`, `PID-7.1`, `PID-3[2].4.1`,
/// `OBX[3]-5` (a sequence or repetition of 1 is not written).
/// ERL form ([`Location::to_erl`]): `PID^1^7^1` for PID-7, `PID^1^7^1^1` for
/// PID-7.1 (ERL components: segment ^ sequence ^ field ^ repetition ^
/// component ^ subcomponent; the repetition is written as 1 when a field is
/// given without one, as ERL-4's definition says to assume).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    pub segment: String,
    pub sequence: usize,
    pub field: Option<usize>,
    pub repetition: Option<usize>,
    pub component: Option<usize>,
    pub subcomponent: Option<usize>,
}

impl Location {
    /// A whole segment.
    pub fn segment(segment: &str, sequence: usize) -> Self {
        Location {
            segment: segment.to_owned(),
            sequence,
            field: None,
            repetition: None,
            component: None,
            subcomponent: None,
        }
    }

    /// A field of the first segment with that id.
    pub fn field(segment: &str, field: usize) -> Self {
        Location {
            field: Some(field),
            ..Location::segment(segment, 1)
        }
    }

    /// Builder: set the segment sequence.
    pub fn with_seq(mut self, sequence: usize) -> Self {
        self.sequence = sequence;
        self
    }
    /// Builder: set the field repetition.
    pub fn with_rep(mut self, repetition: usize) -> Self {
        self.repetition = Some(repetition);
        self
    }
    /// Builder: set the component.
    pub fn with_comp(mut self, component: usize) -> Self {
        self.component = Some(component);
        self
    }
    /// Builder: set the subcomponent.
    pub fn with_sub(mut self, subcomponent: usize) -> Self {
        self.subcomponent = Some(subcomponent);
        self
    }

    /// Parses the text form: `PID`, `PID-7`, `PID-7.1`, `PID-7.1.2`,
    /// `PID-3[2].1`, `OBX[2]-5.1`. Returns `None` if malformed.
    pub fn parse(text: &str) -> Option<Location> {
        let (seg_part, rest) = match text.find('-') {
            Some(i) => (&text[..i], Some(&text[i + 1..])),
            None => (text, None),
        };
        let (segment, sequence) = split_index(seg_part)?;
        if segment.len() != 3 || !is_segment_id(segment.as_bytes()) {
            return None;
        }
        let mut loc = Location::segment(segment, sequence.unwrap_or(1));
        if let Some(rest) = rest {
            let mut parts = rest.split('.');
            let (field, rep) = split_index(parts.next()?)?;
            loc.field = Some(parse_pos(field)?);
            loc.repetition = rep;
            if let Some(c) = parts.next() {
                loc.component = Some(parse_pos(c)?);
            }
            if let Some(s) = parts.next() {
                loc.subcomponent = Some(parse_pos(s)?);
            }
            if parts.next().is_some() {
                return None;
            }
        }
        Some(loc)
    }

    /// The ERL (ERR-2) encoding with the given delimiters, e.g. `PID^1^7^1^1`.
    /// The segment id is written verbatim (it is `[A-Z0-9]` only).
    pub fn to_erl(&self, delims: &Delimiters) -> String {
        let c = delims.component() as char;
        let mut out = String::with_capacity(24);
        out.push_str(&self.segment);
        out.push(c);
        out.push_str(&self.sequence.max(1).to_string());
        if let Some(f) = self.field {
            out.push(c);
            out.push_str(&f.to_string());
            out.push(c);
            out.push_str(&self.repetition.unwrap_or(1).to_string());
            if let Some(comp) = self.component {
                out.push(c);
                out.push_str(&comp.to_string());
                if let Some(s) = self.subcomponent {
                    out.push(c);
                    out.push_str(&s.to_string());
                }
            }
        }
        out
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segment)?;
        if self.sequence > 1 {
            write!(f, "[{}]", self.sequence)?;
        }
        if let Some(field) = self.field {
            write!(f, "-{field}")?;
            if let Some(r) = self.repetition.filter(|&r| r > 1) {
                write!(f, "[{r}]")?;
            }
            if let Some(c) = self.component {
                write!(f, ".{c}")?;
                if let Some(s) = self.subcomponent {
                    write!(f, ".{s}")?;
                }
            }
        }
        Ok(())
    }
}

fn split_index(s: &str) -> Option<(&str, Option<usize>)> {
    match s.find('[') {
        None => Some((s, None)),
        Some(i) => {
            let inner = s[i + 1..].strip_suffix(']')?;
            Some((&s[..i], Some(parse_pos(inner)?)))
        }
    }
}

fn parse_pos(s: &str) -> Option<usize> {
    if s.is_empty() || s.len() > 6 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|&n| n > 0)
}

fn is_segment_id(id: &[u8]) -> bool {
    id.len() == 3
        && id[0].is_ascii_uppercase()
        && id[1..]
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

// ---------------------------------------------------------------------------
// Delimiters and escapes
// ---------------------------------------------------------------------------

/// The message's delimiters, from MSH-1 and MSH-2. All are ASCII.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Delimiters {
    field: u8,
    component: u8,
    repetition: u8,
    escape: u8,
    subcomponent: u8,
    truncation: Option<u8>,
}

impl Default for Delimiters {
    /// `|` and `^~\&`.
    fn default() -> Self {
        Delimiters {
            field: b'|',
            component: b'^',
            repetition: b'~',
            escape: b'\\',
            subcomponent: b'&',
            truncation: None,
        }
    }
}

impl Delimiters {
    /// Builds delimiters from MSH-1 and MSH-2 (4 or 5 characters).
    pub fn new(field: char, encoding_chars: &str) -> Result<Self, String> {
        let ok = |c: u8| c.is_ascii_graphic() && !c.is_ascii_alphanumeric();
        if !field.is_ascii() || !ok(field as u8) {
            return Err(format!(
                "MSH-1 field separator {field:?} is not a printable, non-alphanumeric ASCII character"
            ));
        }
        let e = encoding_chars.as_bytes();
        if e.len() < 4 || e.len() > 5 {
            return Err(format!(
                "MSH-2 encoding characters {encoding_chars:?} must be 4 characters (component, repetition, escape, subcomponent) plus an optional truncation character"
            ));
        }
        let f = field as u8;
        for (i, &c) in e.iter().enumerate() {
            if !ok(c) {
                return Err(format!(
                    "MSH-2 character {} ({:?}) is not a printable, non-alphanumeric ASCII character",
                    i + 1,
                    encoding_chars.get(i..i + 1).unwrap_or("?")
                ));
            }
            if c == f || e[..i].contains(&c) {
                return Err(format!(
                    "MSH-2 character {} ({:?}) repeats another delimiter",
                    i + 1,
                    c as char
                ));
            }
        }
        Ok(Delimiters {
            field: f,
            component: e[0],
            repetition: e[1],
            escape: e[2],
            subcomponent: e[3],
            truncation: e.get(4).copied(),
        })
    }

    pub fn field(&self) -> u8 {
        self.field
    }
    pub fn component(&self) -> u8 {
        self.component
    }
    pub fn repetition(&self) -> u8 {
        self.repetition
    }
    pub fn escape(&self) -> u8 {
        self.escape
    }
    pub fn subcomponent(&self) -> u8 {
        self.subcomponent
    }
    /// The v2.7+ truncation character, if MSH-2 declares one.
    pub fn truncation(&self) -> Option<u8> {
        self.truncation
    }

    /// The MSH-2 value, e.g. `^~\&`.
    pub fn encoding_characters(&self) -> String {
        let mut s = String::with_capacity(5);
        for b in [
            self.component,
            self.repetition,
            self.escape,
            self.subcomponent,
        ] {
            s.push(b as char);
        }
        if let Some(t) = self.truncation {
            s.push(t as char);
        }
        s
    }

    fn is_delimiter(&self, b: u8) -> bool {
        b == self.field
            || b == self.component
            || b == self.repetition
            || b == self.escape
            || b == self.subcomponent
            || Some(b) == self.truncation
    }
}

/// Removes a trailing truncation character (only when MSH-2 declares one).
fn strip_truncation<'a>(raw: &'a str, d: &Delimiters) -> &'a str {
    match d.truncation {
        Some(t) if raw.as_bytes().last() == Some(&t) => &raw[..raw.len() - 1],
        _ => raw,
    }
}

/// Decodes the escape sequences of one primitive value (HL7 v2.5.1 §2.7).
///
/// * `\F\ \S\ \T\ \R\ \E\` → the field, component, subcomponent, repetition
///   and escape characters; `\P\` → the truncation character when MSH-2
///   declares one (v2.7+).
/// * `\Xhh…\` (an even number of hex digits) → those bytes, read as UTF-8 if
///   valid, otherwise each byte as a Latin-1 character.
/// * `\.br\` → `"\n"`; `\.sp\`/`\.sp<n>\` and `\.ce\` → `"\n"` (they start a
///   new line); `\.fi\ \.nf\ \.in…\ \.ti…\ \.sk…\` (layout only) are dropped.
/// * `\H\` and `\N\` (highlighting on/off) are dropped.
/// * Anything else (`\Z…\`, `\C…\`, `\M…\`, unknown codes, an empty `\\`) is
///   kept literally, including its escape characters; an escape character
///   without a closing one is kept literally too.
/// * A trailing truncation character (v2.7+, when declared) is removed; see
///   [`Field::is_truncated`].
///
/// Returns `Cow::Borrowed` when nothing had to change.
pub fn decode_escapes<'a>(raw: &'a str, d: &Delimiters) -> Cow<'a, str> {
    let raw = strip_truncation(raw, d);
    let esc = d.escape as char;
    let Some(first) = raw.as_bytes().iter().position(|&b| b == d.escape) else {
        return Cow::Borrowed(raw);
    };
    let mut out = String::with_capacity(raw.len());
    out.push_str(&raw[..first]);
    let mut rest = &raw[first..];
    loop {
        // `rest` starts with the escape character here.
        let after = &rest[1..];
        match after.find(esc) {
            None => {
                out.push_str(rest);
                break;
            }
            Some(j) => {
                let seq = &after[..j];
                if !apply_escape(seq, d, &mut out) {
                    out.push(esc);
                    out.push_str(seq);
                    out.push(esc);
                }
                rest = &after[j + 1..];
            }
        }
        match rest.find(esc) {
            None => {
                out.push_str(rest);
                break;
            }
            Some(i) => {
                out.push_str(&rest[..i]);
                rest = &rest[i..];
            }
        }
    }
    Cow::Owned(out)
}

/// Applies one escape sequence (without its delimiting escape characters).
/// Returns false if it is to be kept literally.
fn apply_escape(seq: &str, d: &Delimiters, out: &mut String) -> bool {
    match seq {
        "F" => out.push(d.field as char),
        "S" => out.push(d.component as char),
        "T" => out.push(d.subcomponent as char),
        "R" => out.push(d.repetition as char),
        "E" => out.push(d.escape as char),
        "P" => match d.truncation {
            Some(t) => out.push(t as char),
            None => return false,
        },
        "H" | "N" => {}
        _ => {
            let b = seq.as_bytes();
            if b.len() >= 3 && b[0] == b'X' && (b.len() - 1).is_multiple_of(2) {
                let hex = &b[1..];
                if !hex.iter().all(|c| c.is_ascii_hexdigit()) {
                    return false;
                }
                let bytes: Vec<u8> = hex
                    .chunks(2)
                    .map(|p| (hex_val(p[0]) << 4) | hex_val(p[1]))
                    .collect();
                match std::str::from_utf8(&bytes) {
                    Ok(s) => out.push_str(s),
                    Err(_) => out.extend(bytes.iter().map(|&b| b as char)),
                }
            } else if let Some(cmd) = seq.strip_prefix('.') {
                let cut = cmd.len().min(2);
                if !cmd.is_char_boundary(cut) {
                    return false;
                }
                let (name, arg) = cmd.split_at(cut);
                let arg_ok = arg.is_empty()
                    || arg
                        .strip_prefix(['+', '-'])
                        .unwrap_or(arg)
                        .bytes()
                        .all(|c| c.is_ascii_digit());
                match name {
                    "br" if arg.is_empty() => out.push('\n'),
                    "sp" | "ce" if arg_ok => out.push('\n'),
                    "fi" | "nf" if arg.is_empty() => {}
                    "in" | "ti" | "sk" if arg_ok => {}
                    _ => return false,
                }
            } else {
                return false;
            }
        }
    }
    true
}

fn hex_val(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

/// Escapes `text` so it can be placed in a field value: every delimiter
/// character becomes its escape sequence (`\F\ \S\ \T\ \R\ \E\`, and `\P\`
/// for a declared truncation character), CR and LF become `\X0D\` / `\X0A\`.
/// Returns `Cow::Borrowed` when nothing had to change.
pub fn escape_text<'a>(text: &'a str, d: &Delimiters) -> Cow<'a, str> {
    if !text
        .bytes()
        .any(|b| d.is_delimiter(b) || b == b'\r' || b == b'\n')
    {
        return Cow::Borrowed(text);
    }
    let e = d.escape as char;
    let mut out = String::with_capacity(text.len() + 16);
    for ch in text.chars() {
        let code = match ch {
            _ if ch as u32 == d.field as u32 => "F",
            _ if ch as u32 == d.component as u32 => "S",
            _ if ch as u32 == d.subcomponent as u32 => "T",
            _ if ch as u32 == d.repetition as u32 => "R",
            _ if ch as u32 == d.escape as u32 => "E",
            _ if d.truncation.map(u32::from) == Some(ch as u32) => "P",
            '\r' => "X0D",
            '\n' => "X0A",
            _ => {
                out.push(ch);
                continue;
            }
        };
        out.push(e);
        out.push_str(code);
        out.push(e);
    }
    Cow::Owned(out)
}

// ---------------------------------------------------------------------------
// Byte input and character sets
// ---------------------------------------------------------------------------

const UTF8_BOM: &[u8] = &[0xEF, 0xBB, 0xBF];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SingleByte {
    Latin1,
    Latin9,
}

/// Reads MSH-18 (first repetition, first component) straight from the raw
/// bytes, before any decoding. `None` if there is no usable MSH.
fn sniff_charset(bytes: &[u8]) -> Option<&[u8]> {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace())?;
    let b = &bytes[start..];
    if b.len() < 8 || &b[..3] != b"MSH" {
        return None;
    }
    let fs = b[3];
    let line_end = b
        .iter()
        .position(|&c| c == b'\r' || c == b'\n')
        .unwrap_or(b.len());
    let line = &b[..line_end];
    if line.len() < 5 {
        return None;
    }
    let enc = line[4..].split(|&c| c == fs).next()?;
    let (comp, rep) = (*enc.first()?, *enc.get(1)?);
    // split index k holds MSH-(k+1); MSH-18 is index 17.
    let f18 = line.split(|&c| c == fs).nth(17)?;
    let v = f18.split(|&c| c == rep).next()?;
    let v = v.split(|&c| c == comp).next()?;
    Some(v)
}

fn single_byte_charset(name: &[u8]) -> Result<Option<SingleByte>, String> {
    let norm: String = name
        .iter()
        .filter(|b| !matches!(b, b' ' | b'-' | b'_' | b'/' | b'.'))
        .map(|b| b.to_ascii_uppercase() as char)
        .collect();
    let norm = norm.strip_prefix("ISO").unwrap_or(&norm);
    Ok(match norm {
        "88591" | "LATIN1" | "IR100" | "L1" => Some(SingleByte::Latin1),
        "885915" | "LATIN9" | "IR203" => Some(SingleByte::Latin9),
        n if n.starts_with("8859") => {
            let name = String::from_utf8_lossy(name);
            return Err(format!(
                "MSH-18 character set {name:?} is not supported (only 8859/1 and 8859/15 besides UTF-8)"
            ));
        }
        _ => None,
    })
}

fn transcode(bytes: &[u8], cs: SingleByte) -> String {
    bytes
        .iter()
        .map(|&b| match (cs, b) {
            (SingleByte::Latin9, 0xA4) => '\u{20AC}',
            (SingleByte::Latin9, 0xA6) => '\u{0160}',
            (SingleByte::Latin9, 0xA8) => '\u{0161}',
            (SingleByte::Latin9, 0xB4) => '\u{017D}',
            (SingleByte::Latin9, 0xB8) => '\u{017E}',
            (SingleByte::Latin9, 0xBC) => '\u{0152}',
            (SingleByte::Latin9, 0xBD) => '\u{0153}',
            (SingleByte::Latin9, 0xBE) => '\u{0178}',
            _ => b as char,
        })
        .collect()
}

/// Turns raw message bytes into text: strips a UTF-8 BOM, borrows valid UTF-8,
/// and transcodes ISO 8859-1 / 8859-15 to an owned `String` when the bytes
/// are not UTF-8 and MSH-18 names one of those sets. Anything else that is
/// not UTF-8 is an [`ErrorKind::Encoding`] error.
pub fn decode_bytes(bytes: &[u8]) -> Result<Cow<'_, str>, Hl7Error> {
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        return Err(Hl7Error::new(
            ErrorKind::Encoding,
            "input starts with a UTF-16 byte order mark; only UTF-8 and ISO 8859-1/-15 are supported",
        ));
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(Cow::Borrowed(s)),
        Err(e) => {
            let at = e.valid_up_to();
            let charset = sniff_charset(bytes);
            let named = match charset {
                Some(name) => {
                    single_byte_charset(name).map_err(|m| Hl7Error::new(ErrorKind::Encoding, m))?
                }
                None => None,
            };
            match named {
                Some(cs) => Ok(Cow::Owned(transcode(bytes, cs))),
                None => Err(Hl7Error::new(
                    ErrorKind::Encoding,
                    format!(
                        "input is not valid UTF-8 (bad byte 0x{:02X} at offset {at}) and MSH-18 ({}) does not name ISO 8859-1 or 8859-15",
                        bytes[at],
                        match charset {
                            Some(c) if !c.is_empty() => format!("{:?}", String::from_utf8_lossy(c)),
                            _ => "empty".to_owned(),
                        }
                    ),
                )),
            }
        }
    }
}

/// The reverse of [`decode_bytes`] for outgoing text (an ACK, say): when
/// `charset` (an MSH-18 value) names ISO 8859-1 or 8859-15, the text is
/// encoded in that set, with `?` for characters the set lacks; otherwise the
/// UTF-8 bytes are returned as they are.
pub fn encode_bytes<'a>(text: &'a str, charset: Option<&str>) -> Cow<'a, [u8]> {
    let cs = charset.and_then(|c| single_byte_charset(c.as_bytes()).ok().flatten());
    let Some(cs) = cs else {
        return Cow::Borrowed(text.as_bytes());
    };
    if text.is_ascii() {
        return Cow::Borrowed(text.as_bytes());
    }
    Cow::Owned(
        text.chars()
            .map(|ch| {
                let c = ch as u32;
                match cs {
                    SingleByte::Latin9 => match ch {
                        '\u{20AC}' => 0xA4,
                        '\u{0160}' => 0xA6,
                        '\u{0161}' => 0xA8,
                        '\u{017D}' => 0xB4,
                        '\u{017E}' => 0xB8,
                        '\u{0152}' => 0xBC,
                        '\u{0153}' => 0xBD,
                        '\u{0178}' => 0xBE,
                        _ if matches!(c, 0xA4 | 0xA6 | 0xA8 | 0xB4 | 0xB8 | 0xBC..=0xBE) => b'?',
                        _ if c <= 0xFF => c as u8,
                        _ => b'?',
                    },
                    SingleByte::Latin1 if c <= 0xFF => c as u8,
                    SingleByte::Latin1 => b'?',
                }
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------
// Message
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Span {
    start: u32,
    end: u32,
}

#[derive(Clone, Copy, Debug)]
struct SegRec {
    start: u32,
    end: u32,
    span_start: u32,
    span_len: u32,
    seq: u32,
    line: u32,
}

/// The owned part of a parsed message: segment records and field spans.
#[derive(Clone, Debug, Default)]
struct Index {
    segs: Vec<SegRec>,
    spans: Vec<Span>,
}

/// A parsed HL7 v2 message borrowing its text.
#[derive(Clone, Debug)]
pub struct Message<'a> {
    text: &'a str,
    delims: Delimiters,
    index: Cow<'a, Index>,
}

/// A parsed message that owns its text (for transcoded Latin-1 input or when
/// the message must outlive the input buffer). Use [`MessageBuf::message`].
#[derive(Clone, Debug)]
pub struct MessageBuf {
    text: String,
    delims: Delimiters,
    index: Index,
}

impl MessageBuf {
    /// Decodes (see [`decode_bytes`]) and parses `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Result<MessageBuf, Hl7Error> {
        let text = decode_bytes(bytes)?.into_owned();
        MessageBuf::from_string(text)
    }

    /// Parses an owned string.
    pub fn from_string(text: String) -> Result<MessageBuf, Hl7Error> {
        let (offset, delims, index) = {
            let m = Message::parse(&text)?;
            let offset = m.text.as_ptr() as usize - text.as_ptr() as usize;
            (offset, m.delims, m.index.into_owned())
        };
        let mut text = text;
        if offset > 0 {
            text.drain(..offset);
        }
        Ok(MessageBuf {
            text,
            delims,
            index,
        })
    }

    /// A borrowed view.
    pub fn message(&self) -> Message<'_> {
        Message {
            text: &self.text,
            delims: self.delims,
            index: Cow::Borrowed(&self.index),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// MSH-9 parts: message code, trigger event, message structure (raw values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageType<'a> {
    pub code: &'a str,
    pub trigger: &'a str,
    /// MSH-9.3, absent in many v2.3/2.4 messages and some later ones.
    pub structure: Option<&'a str>,
}

impl<'a> Message<'a> {
    /// Parses raw bytes without copying: strips a UTF-8 BOM and requires
    /// UTF-8. Non-UTF-8 input (even when MSH-18 names Latin-1) is an
    /// [`ErrorKind::Encoding`] error here; use [`MessageBuf::from_bytes`] for
    /// transcoding.
    pub fn parse_bytes(bytes: &'a [u8]) -> Result<Message<'a>, Hl7Error> {
        match decode_bytes(bytes)? {
            Cow::Borrowed(s) => Message::parse(s),
            Cow::Owned(_) => Err(Hl7Error::new(
                ErrorKind::Encoding,
                "input is ISO 8859 text (per MSH-18), which must be transcoded: use MessageBuf::from_bytes",
            )),
        }
    }

    /// Parses one message. A leading BOM (U+FEFF) and whitespace are skipped.
    pub fn parse(text: &'a str) -> Result<Message<'a>, Hl7Error> {
        if text.len() > u32::MAX as usize {
            return Err(Hl7Error::new(
                ErrorKind::TooLarge,
                "message larger than 4 GiB",
            ));
        }
        let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
        let lead = text.len() - text.trim_start().len();
        // Count line breaks in the skipped prefix so `line` stays right.
        let mut line: u32 = 1 + count_lines(&text.as_bytes()[..lead]);
        let text = &text[lead..];
        let b = text.as_bytes();
        if b.is_empty() {
            return Err(Hl7Error::new(ErrorKind::Empty, "empty message"));
        }
        if b.len() < 3 || &b[..3] != b"MSH" {
            let shown: String = text.chars().take(3).collect();
            let mut e = Hl7Error::new(
                ErrorKind::MissingHeader,
                format!("message must start with an MSH segment, found {shown:?}"),
            );
            e.segment = "MSH".into();
            e.seg_index = 1;
            e.line = Some(line as usize);
            return Err(e);
        }
        let header_err = |field: usize, msg: String| {
            let mut e = Hl7Error::at(
                &Location::field("MSH", field),
                ErrorKind::BadDelimiters,
                msg,
            );
            e.line = Some(line as usize);
            e
        };
        let fs = match b.get(3) {
            Some(&c) if c != b'\r' && c != b'\n' => c,
            _ => return Err(header_err(1, "MSH-1 (field separator) is missing".into())),
        };
        if !fs.is_ascii() {
            return Err(header_err(1, "MSH-1 (field separator) is not ASCII".into()));
        }
        let cr_mode = b.contains(&b'\r');
        let term = if cr_mode { b'\r' } else { b'\n' };
        let first_end = b.iter().position(|&c| c == term).unwrap_or(b.len());
        let enc_end = b[4..first_end]
            .iter()
            .position(|&c| c == fs)
            .map_or(first_end, |p| p + 4);
        let enc = &text[4..enc_end];
        let delims = Delimiters::new(fs as char, enc)
            .map_err(|m| header_err(if m.starts_with("MSH-1") { 1 } else { 2 }, m))?;

        let mut index = Index {
            segs: Vec::with_capacity(32),
            spans: Vec::with_capacity(b.len() / 6 + 16),
        };
        // (segment id, count) pairs for ERL sequence numbers.
        let mut seen: Vec<([u8; 3], u32)> = Vec::with_capacity(24);
        let mut pos = 0usize;
        let len = b.len();
        while pos < len {
            let end = memchr(term, &b[pos..]).map_or(len, |p| p + pos);
            let mut start = pos;
            if cr_mode && b.get(start) == Some(&b'\n') {
                start += 1; // CRLF
            }
            let seg_line = line;
            line += 1;
            pos = end + 1;
            if start >= end || b[start..end].iter().all(|c| c.is_ascii_whitespace()) {
                continue;
            }
            let seg = &b[start..end];
            let id_ok =
                seg.len() >= 3 && is_segment_id(&seg[..3]) && (seg.len() == 3 || seg[3] == fs);
            if !id_ok {
                let shown: String = text[start..end].chars().take(8).collect();
                let mut e = Hl7Error::new(
                    ErrorKind::BadSegmentId,
                    format!(
                        "segment {} does not start with a three-character segment id followed by the field separator: {shown:?}",
                        index.segs.len() + 1
                    ),
                );
                e.segment = text[start..end].chars().take(3).collect();
                e.seg_index = 0;
                e.line = Some(seg_line as usize);
                return Err(e);
            }
            let id = [seg[0], seg[1], seg[2]];
            let is_msh = &id == b"MSH";
            if is_msh && !index.segs.is_empty() {
                let mut e = Hl7Error::at(
                    &Location::segment("MSH", 2),
                    ErrorKind::UnexpectedHeader,
                    "a second MSH segment: the input holds more than one message (split batches first)",
                );
                e.line = Some(seg_line as usize);
                return Err(e);
            }
            let seq = match seen.iter_mut().find(|(k, _)| *k == id) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    seen.push((id, 1));
                    1
                }
            };
            let span_start = index.spans.len() as u32;
            let s32 = start as u32;
            index.spans.push(Span {
                start: s32,
                end: s32 + 3,
            });
            if is_msh {
                // MSH-1: the separator itself; MSH-2: the encoding characters.
                index.spans.push(Span {
                    start: s32 + 3,
                    end: s32 + 4,
                });
                index.spans.push(Span {
                    start: s32 + 4,
                    end: enc_end as u32,
                });
                if enc_end < end {
                    split_fields(b, enc_end + 1, end, fs, &mut index.spans);
                }
            } else if seg.len() > 3 {
                split_fields(b, start + 4, end, fs, &mut index.spans);
            }
            index.segs.push(SegRec {
                start: s32,
                end: end as u32,
                span_start,
                span_len: index.spans.len() as u32 - span_start,
                seq,
                line: seg_line,
            });
        }
        Ok(Message {
            text,
            delims,
            index: Cow::Owned(index),
        })
    }

    /// The message text (after a skipped BOM / leading whitespace).
    pub fn as_str(&self) -> &'a str {
        self.text
    }

    pub fn delimiters(&self) -> Delimiters {
        self.delims
    }

    /// All segments in order.
    pub fn segments(&self) -> Segments<'_, 'a> {
        Segments {
            msg: self,
            range: 0..self.index.segs.len(),
        }
    }

    pub fn segment_count(&self) -> usize {
        self.index.segs.len()
    }

    /// The first segment with this id.
    pub fn segment(&self, id: &str) -> Option<Segment<'_, 'a>> {
        self.segments().find(|s| s.id() == id)
    }

    /// All segments with this id, in order.
    pub fn segments_named<'m>(&'m self, id: &'m str) -> impl Iterator<Item = Segment<'m, 'a>> + 'm {
        self.segments().filter(move |s| s.id() == id)
    }

    /// The `n`-th (1-based) segment with this id.
    pub fn segment_seq(&self, id: &str, sequence: usize) -> Option<Segment<'_, 'a>> {
        self.segments()
            .find(|s| s.id() == id && s.sequence() == sequence)
    }

    /// The MSH segment (always present in a parsed message).
    pub fn header(&self) -> Segment<'_, 'a> {
        Segment { msg: self, i: 0 }
    }

    /// MSH-9 parts.
    pub fn message_type(&self) -> MessageType<'a> {
        let f = self.header().field(9);
        let structure = f.component(3).raw();
        MessageType {
            code: f.component(1).raw(),
            trigger: f.component(2).raw(),
            structure: (!structure.is_empty()).then_some(structure),
        }
    }

    /// MSH-10 (raw).
    pub fn control_id(&self) -> &'a str {
        self.header().field(10).raw()
    }

    /// MSH-11.1 (raw).
    pub fn processing_id(&self) -> &'a str {
        self.header().field(11).component(1).raw()
    }

    /// MSH-12.1 (raw), e.g. `2.5.1`.
    pub fn version(&self) -> &'a str {
        self.header().field(12).component(1).raw()
    }

    /// MSH-18, first repetition (raw), if present.
    pub fn charset(&self) -> Option<&'a str> {
        let v = self.header().field(18).repetition(1).raw();
        (!v.is_empty()).then_some(v)
    }

    /// The raw text at `loc` (a whole segment, field, repetition, component or
    /// subcomponent). `None` if the segment or field is not present; positions
    /// below a present field that are absent give `Some("")`.
    pub fn get(&self, loc: &Location) -> Option<&'a str> {
        let seg = self.segment_seq(&loc.segment, loc.sequence.max(1))?;
        let Some(f) = loc.field else {
            return Some(seg.raw());
        };
        let field = seg.get_field(f)?;
        if loc.repetition.is_none() && loc.component.is_none() {
            return Some(field.raw());
        }
        let rep = field.repetition(loc.repetition.unwrap_or(1));
        let Some(c) = loc.component else {
            return Some(rep.raw());
        };
        let comp = rep.component(c);
        Some(match loc.subcomponent {
            Some(s) => comp.subcomponent(s).raw(),
            None => comp.raw(),
        })
    }
}

fn count_lines(b: &[u8]) -> u32 {
    let cr = b.iter().filter(|&&c| c == b'\r').count();
    let lf = b.iter().filter(|&&c| c == b'\n').count();
    cr.max(lf) as u32
}

#[inline]
fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

fn split_fields(b: &[u8], mut start: usize, end: usize, fs: u8, out: &mut Vec<Span>) {
    loop {
        match memchr(fs, &b[start..end]) {
            Some(p) => {
                out.push(Span {
                    start: start as u32,
                    end: (start + p) as u32,
                });
                start += p + 1;
            }
            None => {
                out.push(Span {
                    start: start as u32,
                    end: end as u32,
                });
                return;
            }
        }
    }
}

/// Iterator over a message's segments.
#[derive(Clone)]
pub struct Segments<'m, 'a> {
    msg: &'m Message<'a>,
    range: std::ops::Range<usize>,
}

impl<'m, 'a> Iterator for Segments<'m, 'a> {
    type Item = Segment<'m, 'a>;
    fn next(&mut self) -> Option<Self::Item> {
        self.range.next().map(|i| Segment { msg: self.msg, i })
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.range.size_hint()
    }
    fn nth(&mut self, n: usize) -> Option<Self::Item> {
        self.range.nth(n).map(|i| Segment { msg: self.msg, i })
    }
}
impl ExactSizeIterator for Segments<'_, '_> {}
impl DoubleEndedIterator for Segments<'_, '_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.range.next_back().map(|i| Segment { msg: self.msg, i })
    }
}

/// One segment of a [`Message`]. `'m` is the message borrow, `'a` the text.
#[derive(Clone, Copy)]
pub struct Segment<'m, 'a> {
    msg: &'m Message<'a>,
    i: usize,
}

impl fmt::Debug for Segment<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Segment").field(&self.raw()).finish()
    }
}

impl<'m, 'a> Segment<'m, 'a> {
    fn rec(&self) -> &'m SegRec {
        &self.msg.index.segs[self.i]
    }
    fn spans(&self) -> &'m [Span] {
        let r = self.rec();
        let idx: &'m Index = &self.msg.index;
        &idx.spans[r.span_start as usize..(r.span_start + r.span_len) as usize]
    }
    fn is_msh(&self) -> bool {
        self.i == 0
    }

    /// The three-character segment id.
    pub fn id(&self) -> &'a str {
        let r = self.rec();
        &self.msg.text[r.start as usize..r.start as usize + 3]
    }

    /// The whole segment without its terminator.
    pub fn raw(&self) -> &'a str {
        let r = self.rec();
        &self.msg.text[r.start as usize..r.end as usize]
    }

    /// 0-based position in the message.
    pub fn index(&self) -> usize {
        self.i
    }

    /// 1-based occurrence of this segment id in the message (ERL-2).
    pub fn sequence(&self) -> usize {
        self.rec().seq as usize
    }

    /// 1-based line in the input text.
    pub fn line(&self) -> usize {
        self.rec().line as usize
    }

    /// Number of the last field present (0 for a segment with no fields).
    pub fn field_count(&self) -> usize {
        self.spans().len() - 1
    }

    /// Field `n` (1-based; MSH numbering for MSH). Absent fields (including
    /// `n == 0`) are empty.
    pub fn field(&self, n: usize) -> Field<'a> {
        self.get_field(n).unwrap_or(Field {
            raw: "",
            delims: self.msg.delims,
            literal: false,
        })
    }

    /// Field `n` if present in the segment (it may still be empty).
    pub fn get_field(&self, n: usize) -> Option<Field<'a>> {
        if n == 0 {
            return None;
        }
        let sp = self.spans().get(n)?;
        Some(Field {
            raw: &self.msg.text[sp.start as usize..sp.end as usize],
            delims: self.msg.delims,
            literal: self.is_msh() && n <= 2,
        })
    }

    /// Fields 1..=field_count in order.
    pub fn fields(&self) -> impl ExactSizeIterator<Item = Field<'a>> + 'm {
        let text = self.msg.text;
        let delims = self.msg.delims;
        let msh = self.is_msh();
        self.spans()[1..]
            .iter()
            .enumerate()
            .map(move |(k, sp)| Field {
                raw: &text[sp.start as usize..sp.end as usize],
                delims,
                literal: msh && k < 2,
            })
    }

    /// The location of this segment, or of one of its fields.
    pub fn location(&self, field: Option<usize>) -> Location {
        Location {
            field,
            ..Location::segment(self.id(), self.sequence())
        }
    }

    /// An error located at `field` of this segment (with its line number).
    pub fn error(
        &self,
        field: Option<usize>,
        kind: ErrorKind,
        message: impl Into<String>,
    ) -> Hl7Error {
        let mut e = Hl7Error::at(&self.location(field), kind, message);
        e.line = Some(self.line());
        e
    }
}

macro_rules! value_methods {
    () => {
        /// The raw (still escaped) text.
        pub fn raw(&self) -> &'a str {
            self.raw
        }
        /// The text with escape sequences decoded ([`decode_escapes`]).
        /// Allocates only if the value contains the escape character.
        /// Meant for primitive values: on a composite the delimiters stay in
        /// place and decoded `\S\` etc. become indistinguishable from them.
        pub fn decoded(&self) -> Cow<'a, str> {
            if self.literal() {
                Cow::Borrowed(self.raw)
            } else {
                decode_escapes(self.raw, &self.delims)
            }
        }
        /// True if the value is empty (not present).
        pub fn is_empty(&self) -> bool {
            self.raw.is_empty()
        }
        /// True if the value is the HL7 explicit null `""` (delete the value).
        pub fn is_null(&self) -> bool {
            self.raw == "\"\""
        }
        /// True if the value ends with the v2.7+ truncation character declared
        /// in MSH-2 (the value was cut by the sender).
        pub fn is_truncated(&self) -> bool {
            !self.literal()
                && self.delims.truncation.is_some()
                && self.raw.as_bytes().last().copied() == self.delims.truncation
        }
    };
}

/// A field (all its repetitions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field<'a> {
    raw: &'a str,
    delims: Delimiters,
    /// MSH-1 / MSH-2: returned verbatim, never split or unescaped.
    literal: bool,
}

impl<'a> Field<'a> {
    value_methods!();
    fn literal(&self) -> bool {
        self.literal
    }

    /// The repetitions (none for an empty field).
    pub fn repetitions(&self) -> impl Iterator<Item = Repetition<'a>> + 'a {
        let d = self.delims;
        let literal = self.literal;
        Parts::new(self.raw, d.repetition, literal).map(move |raw| Repetition {
            raw,
            delims: d,
            literal,
        })
    }

    /// Number of repetitions (0 for an empty field).
    pub fn repetition_count(&self) -> usize {
        if self.raw.is_empty() {
            0
        } else if self.literal {
            1
        } else {
            1 + self
                .raw
                .bytes()
                .filter(|&b| b == self.delims.repetition)
                .count()
        }
    }

    /// Repetition `n` (1-based); empty if absent.
    pub fn repetition(&self, n: usize) -> Repetition<'a> {
        let raw = if self.literal {
            if n == 1 {
                self.raw
            } else {
                ""
            }
        } else {
            nth_part(self.raw, self.delims.repetition, n)
        };
        Repetition {
            raw,
            delims: self.delims,
            literal: self.literal,
        }
    }

    /// Component `n` (1-based) of the first repetition.
    pub fn component(&self, n: usize) -> Component<'a> {
        self.repetition(1).component(n)
    }

    /// Components of the first repetition.
    pub fn components(&self) -> impl Iterator<Item = Component<'a>> + 'a {
        self.repetition(1).components()
    }
}

/// One repetition of a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repetition<'a> {
    raw: &'a str,
    delims: Delimiters,
    literal: bool,
}

impl<'a> Repetition<'a> {
    value_methods!();
    fn literal(&self) -> bool {
        self.literal
    }

    /// Component `n` (1-based); empty if absent.
    pub fn component(&self, n: usize) -> Component<'a> {
        let raw = if self.literal {
            if n == 1 {
                self.raw
            } else {
                ""
            }
        } else {
            nth_part(self.raw, self.delims.component, n)
        };
        Component {
            raw,
            delims: self.delims,
            literal: self.literal,
        }
    }

    /// Number of components (0 when empty).
    pub fn component_count(&self) -> usize {
        if self.raw.is_empty() {
            0
        } else if self.literal {
            1
        } else {
            1 + self
                .raw
                .bytes()
                .filter(|&b| b == self.delims.component)
                .count()
        }
    }

    /// The components in order (none when empty).
    pub fn components(&self) -> impl Iterator<Item = Component<'a>> + 'a {
        let d = self.delims;
        let literal = self.literal;
        Parts::new(self.raw, d.component, literal).map(move |raw| Component {
            raw,
            delims: d,
            literal,
        })
    }
}

/// One component.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Component<'a> {
    raw: &'a str,
    delims: Delimiters,
    literal: bool,
}

impl<'a> Component<'a> {
    value_methods!();
    fn literal(&self) -> bool {
        self.literal
    }

    /// Subcomponent `n` (1-based); empty if absent.
    pub fn subcomponent(&self, n: usize) -> Subcomponent<'a> {
        let raw = if self.literal {
            if n == 1 {
                self.raw
            } else {
                ""
            }
        } else {
            nth_part(self.raw, self.delims.subcomponent, n)
        };
        Subcomponent {
            raw,
            delims: self.delims,
            literal: self.literal,
        }
    }

    /// The subcomponents in order (none when empty).
    pub fn subcomponents(&self) -> impl Iterator<Item = Subcomponent<'a>> + 'a {
        let d = self.delims;
        let literal = self.literal;
        Parts::new(self.raw, d.subcomponent, literal).map(move |raw| Subcomponent {
            raw,
            delims: d,
            literal,
        })
    }
}

/// One subcomponent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subcomponent<'a> {
    raw: &'a str,
    delims: Delimiters,
    literal: bool,
}

impl<'a> Subcomponent<'a> {
    value_methods!();
    fn literal(&self) -> bool {
        self.literal
    }
}

/// Splits a value on one delimiter without allocating: nothing for an empty
/// value, the whole value once for a literal (MSH-1/MSH-2).
#[derive(Clone)]
struct Parts<'a> {
    rest: Option<&'a str>,
    sep: Option<u8>,
}

impl<'a> Parts<'a> {
    fn new(raw: &'a str, sep: u8, literal: bool) -> Self {
        Parts {
            rest: (!raw.is_empty()).then_some(raw),
            sep: (!literal).then_some(sep),
        }
    }
}

impl<'a> Iterator for Parts<'a> {
    type Item = &'a str;
    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let r = self.rest?;
        match self.sep.and_then(|c| memchr(c, r.as_bytes())) {
            Some(i) => {
                self.rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                self.rest = None;
                Some(r)
            }
        }
    }
}

/// The `n`-th (1-based) part of `s` split on `sep`; "" if absent or n == 0.
fn nth_part(s: &str, sep: u8, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    let b = s.as_bytes();
    let mut start = 0;
    let mut k = 1;
    while k < n {
        match memchr(sep, &b[start..]) {
            Some(p) => start += p + 1,
            None => return "",
        }
        k += 1;
    }
    let end = memchr(sep, &b[start..]).map_or(b.len(), |p| start + p);
    &s[start..end]
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const ADT: &str =
        "MSH|^~\\&|SEND|FAC|RECV|RFAC|20240305103000+0100||ADT^A01^ADT_A01|CTRL1|P|2.5.1\r\
EVN|A01|20240305103000\r\
PID|1||123^^^HOSP^MR~456^^^KV^KVNR||Müller&Mü^Hans^^^Dr.||19800229|M|||Main St\\S\\1^^Berlin\r\
OBX|1|TX|note||line1\\.br\\line2\\F\\x\\H\\bold\\N\\ \\E\\ \\T\\ \\R\\ \\X41C3A4\\ \\Zfoo\\ \\Q\\\r\
OBX|2|NM|code||7\r\
ZBE|1|x^y\r";

    #[test]
    fn basic_access() {
        let m = Message::parse(ADT).unwrap();
        assert_eq!(m.segment_count(), 6);
        let ids: Vec<_> = m.segments().map(|s| s.id()).collect();
        assert_eq!(ids, ["MSH", "EVN", "PID", "OBX", "OBX", "ZBE"]);
        let msh = m.header();
        assert_eq!(msh.field(1).raw(), "|");
        assert_eq!(msh.field(2).raw(), "^~\\&");
        assert_eq!(msh.field(2).decoded(), "^~\\&");
        assert_eq!(msh.field(2).component(1).raw(), "^~\\&");
        assert_eq!(msh.field(2).repetition_count(), 1);
        assert_eq!(msh.field(3).raw(), "SEND");
        assert_eq!(msh.field(12).raw(), "2.5.1");
        assert_eq!(msh.field(13).raw(), "");
        assert_eq!(msh.field_count(), 12);
        let mt = m.message_type();
        assert_eq!(
            (mt.code, mt.trigger, mt.structure),
            ("ADT", "A01", Some("ADT_A01"))
        );
        assert_eq!(m.control_id(), "CTRL1");
        assert_eq!(m.version(), "2.5.1");
        assert_eq!(m.processing_id(), "P");

        let pid = m.segment("PID").unwrap();
        assert_eq!(pid.field(3).repetition_count(), 2);
        assert_eq!(pid.field(3).repetition(2).component(5).raw(), "KVNR");
        assert_eq!(pid.field(3).component(1).raw(), "123");
        let reps: Vec<_> = pid
            .field(3)
            .repetitions()
            .map(|r| r.component(1).raw())
            .collect();
        assert_eq!(reps, ["123", "456"]);
        assert_eq!(pid.field(5).component(1).subcomponent(2).raw(), "Mü");
        assert_eq!(pid.field(5).component(1).subcomponent(1).raw(), "Müller");
        assert_eq!(pid.field(5).component(1).subcomponent(3).raw(), "");
        assert_eq!(pid.field(5).component(5).raw(), "Dr.");
        assert_eq!(pid.field(5).component(9).raw(), "");
        assert_eq!(pid.field(11).component(1).decoded(), "Main St^1");
        assert_eq!(pid.field(0).raw(), "");
        assert_eq!(pid.field(99).raw(), "");
        assert!(pid.get_field(99).is_none());
        let comps: Vec<_> = pid.field(5).components().map(|c| c.raw()).collect();
        assert_eq!(comps, ["Müller&Mü", "Hans", "", "", "Dr."]);

        let obx: Vec<_> = m.segments_named("OBX").collect();
        assert_eq!(obx.len(), 2);
        assert_eq!(obx[1].sequence(), 2);
        assert_eq!(obx[1].field(5).raw(), "7");
        assert_eq!(m.segment("ZBE").unwrap().field(2).component(2).raw(), "y");
        assert_eq!(m.get(&Location::parse("PID-3[2].4").unwrap()), Some("KV"));
        assert_eq!(m.get(&Location::parse("OBX[2]-5").unwrap()), Some("7"));
        assert_eq!(m.get(&Location::parse("PID-5.1.2").unwrap()), Some("Mü"));
        assert_eq!(m.get(&Location::parse("MSH-9.2").unwrap()), Some("A01"));
        assert_eq!(m.get(&Location::parse("NK1-1").unwrap()), None);
    }

    #[test]
    fn escapes() {
        let m = Message::parse(ADT).unwrap();
        let obx = m.segment("OBX").unwrap();
        let v = obx.field(5).decoded();
        assert_eq!(v, "line1\nline2|xbold \\ & ~ Aä \\Zfoo\\ \\Q\\");
        assert!(matches!(obx.field(3).decoded(), Cow::Borrowed(_)));
        let d = Delimiters::default();
        assert_eq!(decode_escapes("a\\Fb", &d), "a\\Fb"); // unterminated kept
        assert_eq!(decode_escapes("\\\\", &d), "\\\\"); // empty sequence kept
        assert_eq!(decode_escapes("\\XZZ\\", &d), "\\XZZ\\");
        assert_eq!(decode_escapes("\\X0\\", &d), "\\X0\\");
        assert_eq!(decode_escapes("\\XE4\\", &d), "ä"); // Latin-1 fallback
        assert_eq!(decode_escapes("a\\.sp2\\b\\.fi\\c\\.in+4\\d", &d), "a\nbcd");
        assert_eq!(decode_escapes("\\.xx\\", &d), "\\.xx\\");
        assert_eq!(decode_escapes("\\P\\", &d), "\\P\\");
        assert_eq!(decode_escapes("\\E\\\\E\\", &d), "\\\\");
    }

    #[test]
    fn escape_roundtrip() {
        let d = Delimiters::new('|', "^~\\&#").unwrap();
        let s = "a|b^c~d\\e&f#g\r\nh";
        let e = escape_text(s, &d);
        assert_eq!(e, "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f\\P\\g\\X0D\\\\X0A\\h");
        assert_eq!(decode_escapes(&e, &d), s);
        assert!(matches!(escape_text("plain", &d), Cow::Borrowed(_)));
    }

    #[test]
    fn custom_delimiters_and_truncation() {
        let t = "MSH*!@%$#*A*B*C*D*2024**ORU!R01*1*P*2.7\nOBX*1*ST*c**val!x@y%z$#**long text#\n";
        let m = Message::parse(t).unwrap();
        let d = m.delimiters();
        assert_eq!(
            (
                d.field(),
                d.component(),
                d.repetition(),
                d.escape(),
                d.subcomponent(),
                d.truncation()
            ),
            (b'*', b'!', b'@', b'%', b'$', Some(b'#'))
        );
        assert_eq!(m.header().field(2).raw(), "!@%$#");
        assert_eq!(m.message_type().trigger, "R01");
        let obx = m.segment("OBX").unwrap();
        let f = obx.field(5);
        assert_eq!(f.repetition(2).raw(), "y%z$#");
        assert_eq!(f.repetition(2).component(1).subcomponent(1).raw(), "y%z");
        let last = f.repetition(2).component(1).subcomponent(2);
        assert!(last.is_truncated());
        assert_eq!(last.decoded(), "");
        assert!(obx.field(7).is_truncated());
        assert_eq!(obx.field(7).decoded(), "long text");
        assert_eq!(decode_escapes("a%S%b%P%", &d), "a!b#");
    }

    #[test]
    fn terminators() {
        let base = [
            "MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5",
            "PID|1||x",
            "PV1|1|I",
        ];
        for sep in ["\r", "\n", "\r\n"] {
            for trailing in [true, false] {
                let mut t = base.join(sep);
                if trailing {
                    t.push_str(sep);
                }
                let m = Message::parse(&t).unwrap();
                let ids: Vec<_> = m.segments().map(|s| s.id()).collect();
                assert_eq!(ids, ["MSH", "PID", "PV1"], "sep {sep:?}");
                assert_eq!(m.segment("PV1").unwrap().field(2).raw(), "I");
                assert_eq!(m.segment("PID").unwrap().field(3).raw(), "x");
                assert_eq!(m.segment("PV1").unwrap().line(), 3);
            }
        }
        // Blank lines and leading whitespace are skipped; lone LF in CR mode is data.
        let t = "\r\n  MSH|^~\\&|A\r\rPID|1||a\nb\r";
        let m = Message::parse(t).unwrap();
        assert_eq!(m.segment_count(), 2);
        assert_eq!(m.segment("PID").unwrap().field(3).raw(), "a\nb");
        assert_eq!(m.segment("PID").unwrap().line(), 4);
        // Segment with no fields at all.
        let m = Message::parse("MSH|^~\\&\rNTE").unwrap();
        assert_eq!(m.segment("NTE").unwrap().field_count(), 0);
        assert_eq!(m.header().field_count(), 2);
    }

    #[test]
    fn bytes_and_charsets() {
        let mut b = vec![0xEF, 0xBB, 0xBF];
        b.extend_from_slice(b"MSH|^~\\&|A\nPID|1||J\xC3\xBCrgen");
        let m = Message::parse_bytes(&b).unwrap();
        assert_eq!(m.segment("PID").unwrap().field(3).raw(), "Jürgen");
        assert!(m.as_str().starts_with("MSH"));

        let latin1 =
            b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5|||||DEU|8859/1\rPID|1||J\xFCrgen \xA4";
        let e = Message::parse_bytes(latin1).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Encoding);
        let buf = MessageBuf::from_bytes(latin1).unwrap();
        let m = buf.message();
        assert_eq!(m.segment("PID").unwrap().field(3).raw(), "Jürgen ¤");
        assert_eq!(m.charset(), Some("8859/1"));

        let latin9 = b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5|||||DEU|8859/15\rPID|1||\xA4";
        let buf = MessageBuf::from_bytes(latin9).unwrap();
        assert_eq!(buf.message().segment("PID").unwrap().field(3).raw(), "€");

        let bad = b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5\rPID|1||J\xFCrgen";
        let e = MessageBuf::from_bytes(bad).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Encoding);
        assert!(e.message.contains("not valid UTF-8"), "{}", e.message);

        let other = b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5|||||DEU|8859/2\rPID|1||\xFC";
        let e = MessageBuf::from_bytes(other).unwrap_err();
        assert!(e.message.contains("not supported"), "{}", e.message);

        // UTF-8 that claims to be Latin-1 stays UTF-8.
        let mislabelled =
            "MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5|||||DEU|ISO8859-15\rPID|1||Jürgen";
        let m = Message::parse_bytes(mislabelled.as_bytes()).unwrap();
        assert_eq!(m.segment("PID").unwrap().field(3).raw(), "Jürgen");
        assert!(Message::parse_bytes(&[0xFF, 0xFE, b'M', 0]).is_err());

        // Outgoing text in the inbound charset.
        assert_eq!(&*encode_bytes("Jürgen €", Some("8859/1")), b"J\xFCrgen ?");
        assert_eq!(
            &*encode_bytes("Jürgen € ¤", Some("8859/15")),
            b"J\xFCrgen \xA4 ?"
        );
        assert_eq!(
            &*encode_bytes("Jürgen", Some("UNICODE UTF-8")),
            "Jürgen".as_bytes()
        );
        assert_eq!(&*encode_bytes("Jürgen", None), "Jürgen".as_bytes());
        let round = MessageBuf::from_bytes(&encode_bytes(
            "MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5|||||DEU|8859/15\rPID|1||Šölve €",
            Some("8859/15"),
        ))
        .unwrap();
        assert_eq!(
            round.message().segment("PID").unwrap().field(3).raw(),
            "Šölve €"
        );

        // MessageBuf from a string with BOM and leading space
        let buf = MessageBuf::from_string("\u{FEFF} MSH|^~\\&|A\rPID|1".to_owned()).unwrap();
        assert_eq!(buf.message().segment("PID").unwrap().field(1).raw(), "1");
        assert!(buf.as_str().starts_with("MSH"));
    }

    #[test]
    fn errors_have_locations() {
        let e = Message::parse("").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Empty);
        let e = Message::parse("PID|1").unwrap_err();
        assert_eq!(e.kind, ErrorKind::MissingHeader);
        let e = Message::parse("MSH|^~").unwrap_err();
        assert_eq!((e.kind, e.field), (ErrorKind::BadDelimiters, Some(2)));
        assert_eq!(e.to_string().split(':').next().unwrap(), "MSH-2 (line 1)");
        let e = Message::parse("MSH|^~\\^|").unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadDelimiters);
        let e = Message::parse("MSHa^~\\&|").unwrap_err();
        assert_eq!((e.kind, e.field), (ErrorKind::BadDelimiters, Some(1)));
        let e = Message::parse("MSH|^~\\&|A\nPID|1\npid|2").unwrap_err();
        assert_eq!((e.kind, e.line), (ErrorKind::BadSegmentId, Some(3)));
        let e = Message::parse("MSH|^~\\&|A\nPID|1\nMSH|^~\\&|B").unwrap_err();
        assert_eq!(e.kind, ErrorKind::UnexpectedHeader);
        assert_eq!(e.location().unwrap().to_string(), "MSH[2]");
        let m = Message::parse(ADT).unwrap();
        let obx2 = m.segment_seq("OBX", 2).unwrap();
        let e = obx2.error(Some(5), ErrorKind::DataType, "not a number");
        assert_eq!(e.to_string(), "OBX[2]-5 (line 5): not a number");
        assert_eq!(e.kind.hl7_error_code(), 102);
    }

    #[test]
    fn location_formats() {
        let d = Delimiters::default();
        let l = Location::field("PID", 7).with_comp(1);
        assert_eq!(l.to_string(), "PID-7.1");
        assert_eq!(l.to_erl(&d), "PID^1^7^1^1");
        let l = Location::field("PID", 7);
        assert_eq!(l.to_erl(&d), "PID^1^7^1");
        assert_eq!(Location::segment("OBX", 3).to_erl(&d), "OBX^3");
        let l = Location::field("PID", 3)
            .with_rep(2)
            .with_comp(4)
            .with_sub(1)
            .with_seq(1);
        assert_eq!(l.to_string(), "PID-3[2].4.1");
        assert_eq!(l.to_erl(&d), "PID^1^3^2^4^1");
        assert_eq!(Location::parse("PID-3[2].4.1"), Some(l));
        assert_eq!(Location::parse("OBX[3]-5").unwrap().sequence, 3);
        for bad in [
            "",
            "PI",
            "PID-",
            "PID-0",
            "PID-x",
            "PID-1.2.3.4",
            "pid-1",
            "PID[0]",
            "PID-1[2",
        ] {
            assert_eq!(Location::parse(bad), None, "{bad}");
        }
    }

    /// Tiny deterministic PRNG for the fuzz-style tests.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Touch every accessor so that panics anywhere would surface.
    fn exercise(m: &Message<'_>) -> usize {
        let mut n = 0;
        let _ = m.message_type();
        let _ = (m.version(), m.control_id(), m.charset(), m.processing_id());
        for s in m.segments() {
            n += s.id().len() + s.raw().len();
            for f in s.fields().chain([s.field(0), s.field(500)]) {
                n += f.decoded().len();
                let _ = (f.is_null(), f.is_truncated(), f.repetition_count());
                for r in f.repetitions() {
                    for c in r.components() {
                        n += c.decoded().len();
                        for sc in c.subcomponents() {
                            n += sc.decoded().len();
                        }
                        n += c.subcomponent(3).raw().len();
                    }
                    n += r.component(7).raw().len();
                }
            }
        }
        n
    }

    #[test]
    fn fuzz_truncated_and_mutated_inputs_never_panic() {
        let base = ADT.as_bytes();
        // Every prefix.
        for cut in 0..=base.len() {
            let bytes = &base[..cut];
            if let Ok(m) = Message::parse_bytes(bytes) {
                exercise(&m);
            }
            let _ = MessageBuf::from_bytes(bytes);
        }
        // Random mutations drawn from an alphabet rich in delimiters.
        let alphabet = b"|^~\\&#\r\nMSHPIDXZ.01AF \xC3\xA4\xFF\x00\x0b\x1c";
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..4000 {
            let mut v = base.to_vec();
            for _ in 0..(1 + rng.below(8)) {
                let pos = rng.below(v.len() + 1);
                let c = alphabet[rng.below(alphabet.len())];
                match rng.below(3) {
                    0 if pos < v.len() => v[pos] = c,
                    1 => v.insert(pos, c),
                    _ if pos < v.len() => {
                        v.remove(pos);
                    }
                    _ => {}
                }
            }
            if let Ok(m) = Message::parse_bytes(&v) {
                exercise(&m);
            }
            if let Ok(b) = MessageBuf::from_bytes(&v) {
                exercise(&b.message());
            }
        }
        // Pure random inputs, some starting with a valid header.
        for i in 0..3000 {
            let len = rng.below(200);
            let mut v: Vec<u8> = if i % 2 == 0 {
                b"MSH|^~\\&|".to_vec()
            } else {
                Vec::new()
            };
            v.extend((0..len).map(|_| alphabet[rng.below(alphabet.len())]));
            if let Ok(m) = Message::parse_bytes(&v) {
                exercise(&m);
            }
            let _ = decode_bytes(&v);
            let s = String::from_utf8_lossy(&v);
            let _ = decode_escapes(&s, &Delimiters::default());
            let _ = Location::parse(&s);
        }
    }
}
