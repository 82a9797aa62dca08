//! Building HL7 v2 acknowledgements (ACK with MSA and ERR) in ER7.
//!
//! # Purpose
//! Given the inbound message's header ([`InboundHeader`], normally from
//! [`InboundHeader::from_message`]), an acknowledgement code and a list of
//! errors, [`build_ack`] produces the ACK text the gateway sends back (over
//! MLLP: frame it with [`super::mllp::encode_frame`]). Pure: the caller
//! supplies the new control id and the timestamp.
//!
//! # Spec sections followed (HL7 v2.5.1 chapter 2)
//! * 2.9 message processing rules / 2.13 acknowledgement messages: original
//!   mode AA/AE/AR and enhanced mode CA/CE/CR ([`AckCode`]).
//! * 2.14.1 ACK: `MSH [{SFT}] MSA [{ERR}]` (v2.5+); in v2.3/2.4 ACK has at
//!   most one ERR, so all errors go into repetitions of ERR-1 there.
//! * MSH (2.15.9): MSH-1/MSH-2 as in the inbound message (so copied values
//!   stay correctly escaped); MSH-3/4 ← inbound MSH-5/6 and MSH-5/6 ← inbound
//!   MSH-3/4 (sender and receiver swapped); MSH-7 the caller's timestamp;
//!   MSH-9 `ACK^<inbound trigger>^ACK` (the third component, message
//!   structure, exists from v2.3.1; for 2.3 and older only `ACK^<trigger>`);
//!   MSH-10 the caller's new control id; MSH-11, MSH-12 and MSH-18 copied from
//!   the inbound message.
//! * MSA (2.15.8): MSA-1 code, MSA-2 the inbound MSH-10. For versions before
//!   2.5, MSA-3 (text message) carries the first error's text as well, since
//!   older receivers often read only MSA.
//! * ERR (2.15.5), v2.5+ layout: ERR-2 error location (ERL,
//!   [`Location::to_erl`]), ERR-3 `code^text^HL70357` (table 0357), ERR-4
//!   severity (table 0516: E, W, I, F), ERR-7 diagnostic information, ERR-8
//!   user message. v2.3/2.4 layout: ERR-1 (ELD)
//!   `segment^sequence^field^code&text&HL70357`, one repetition per error.
//! * All free text is escaped with [`escape_text`] (delimiters become
//!   `\F\ \S\ \T\ \R\ \E\`, CR/LF become `\X0D\`/`\X0A\`), so it can never
//!   break the segment structure. Segments end with CR, including the last.
//!
//! # Limitations
//! * The result is a `String`; when the inbound MSH-18 names ISO 8859-1/-15
//!   (copied into the ACK), send `encode_bytes(&ack, inbound_charset)`
//!   ([`super::parser::encode_bytes`]) rather than the UTF-8 bytes.
//! * No SFT segment, no MSH-15/16 (accept/application ack type) in the ACK.
//! * ERR-5 (application error code) and ERR-6 (parameters) are not written.
//! * ELD (v2.3/2.4) can only point at a field; component positions are lost
//!   there.

use std::fmt;

use super::parser::{escape_text, Delimiters, Hl7Error, Location, Message};

/// MSA-1 acknowledgement code (table 0008).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AckCode {
    /// Original mode: application accept.
    AA,
    /// Original mode: application error.
    AE,
    /// Original mode: application reject.
    AR,
    /// Enhanced mode: commit accept.
    CA,
    /// Enhanced mode: commit error.
    CE,
    /// Enhanced mode: commit reject.
    CR,
}

impl AckCode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
            AckCode::CA => "CA",
            AckCode::CE => "CE",
            AckCode::CR => "CR",
        }
    }
}

impl fmt::Display for AckCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// ERR-4 severity (table 0516).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Severity {
    Error,
    Warning,
    Information,
    Fatal,
}

impl Severity {
    pub fn code(self) -> &'static str {
        match self {
            Severity::Error => "E",
            Severity::Warning => "W",
            Severity::Information => "I",
            Severity::Fatal => "F",
        }
    }
}

/// Table 0357 codes used by the gateway (any other number may be used too).
pub mod error_code {
    pub const MESSAGE_ACCEPTED: u16 = 0;
    pub const SEGMENT_SEQUENCE_ERROR: u16 = 100;
    pub const REQUIRED_FIELD_MISSING: u16 = 101;
    pub const DATA_TYPE_ERROR: u16 = 102;
    pub const TABLE_VALUE_NOT_FOUND: u16 = 103;
    pub const VALUE_TOO_LONG: u16 = 104;
    pub const UNSUPPORTED_MESSAGE_TYPE: u16 = 200;
    pub const UNSUPPORTED_EVENT_CODE: u16 = 201;
    pub const UNSUPPORTED_PROCESSING_ID: u16 = 202;
    pub const UNSUPPORTED_VERSION_ID: u16 = 203;
    pub const UNKNOWN_KEY_IDENTIFIER: u16 = 204;
    pub const DUPLICATE_KEY_IDENTIFIER: u16 = 205;
    pub const APPLICATION_RECORD_LOCKED: u16 = 206;
    pub const APPLICATION_INTERNAL_ERROR: u16 = 207;
}

/// The table 0357 display text for a code (`None` for unknown codes).
pub fn error_code_text(code: u16) -> Option<&'static str> {
    Some(match code {
        0 => "Message accepted",
        100 => "Segment sequence error",
        101 => "Required field missing",
        102 => "Data type error",
        103 => "Table value not found",
        104 => "Value too long",
        198 => "Non-conformant cardinality",
        199 => "Other HL7 error",
        200 => "Unsupported message type",
        201 => "Unsupported event code",
        202 => "Unsupported processing id",
        203 => "Unsupported version id",
        204 => "Unknown key identifier",
        205 => "Duplicate key identifier",
        206 => "Application record locked",
        207 => "Application internal error",
        _ => return None,
    })
}

/// One error or warning to report in an ERR segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckError {
    /// Where in the inbound message (ERR-2 / ERR-1.1-3).
    pub location: Option<Location>,
    /// Table 0357 code (ERR-3.1 / ERR-1.4.1).
    pub code: u16,
    pub severity: Severity,
    /// Text for a person (ERR-8).
    pub user_message: Option<String>,
    /// Technical detail (ERR-7).
    pub diagnostic: Option<String>,
}

impl AckError {
    pub fn new(code: u16, severity: Severity) -> Self {
        AckError {
            location: None,
            code,
            severity,
            user_message: None,
            diagnostic: None,
        }
    }
    pub fn at(mut self, location: Location) -> Self {
        self.location = Some(location);
        self
    }
    pub fn message(mut self, text: impl Into<String>) -> Self {
        self.user_message = Some(text.into());
        self
    }
    pub fn diagnostic(mut self, text: impl Into<String>) -> Self {
        self.diagnostic = Some(text.into());
        self
    }
}

impl From<&Hl7Error> for AckError {
    /// Severity E, code from the error kind, the error text as user message.
    fn from(e: &Hl7Error) -> Self {
        AckError {
            location: e.location(),
            code: e.kind.hl7_error_code(),
            severity: Severity::Error,
            user_message: Some(e.message.clone()),
            diagnostic: None,
        }
    }
}

/// What the ACK needs from the inbound MSH. Values are raw (escaped with
/// `delimiters`). Fill it by hand when the inbound message could not be
/// parsed ([`InboundHeader::default`] has `|^~\&`, version 2.5.1, P).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundHeader {
    pub delimiters: Delimiters,
    pub sending_application: String,
    pub sending_facility: String,
    pub receiving_application: String,
    pub receiving_facility: String,
    /// MSH-9.2.
    pub trigger: String,
    /// MSH-10.
    pub control_id: String,
    /// MSH-11 (whole field).
    pub processing_id: String,
    /// MSH-12 (whole field).
    pub version: String,
    /// MSH-18 (whole field).
    pub charset: String,
}

impl Default for InboundHeader {
    fn default() -> Self {
        InboundHeader {
            delimiters: Delimiters::default(),
            sending_application: String::new(),
            sending_facility: String::new(),
            receiving_application: String::new(),
            receiving_facility: String::new(),
            trigger: String::new(),
            control_id: String::new(),
            processing_id: "P".into(),
            version: "2.5.1".into(),
            charset: String::new(),
        }
    }
}

impl InboundHeader {
    pub fn from_message(msg: &Message<'_>) -> Self {
        let h = msg.header();
        let f = |n: usize| h.field(n).raw().to_owned();
        InboundHeader {
            delimiters: msg.delimiters(),
            sending_application: f(3),
            sending_facility: f(4),
            receiving_application: f(5),
            receiving_facility: f(6),
            trigger: h.field(9).component(2).raw().to_owned(),
            control_id: f(10),
            processing_id: f(11),
            version: f(12),
            charset: f(18),
        }
    }

    /// (major, minor, patch) of MSH-12.1; `None` if unreadable.
    fn version_tuple(&self) -> Option<(u32, u32, u32)> {
        let d = self.delimiters;
        let v = self
            .version
            .split(d.component() as char)
            .next()
            .unwrap_or("");
        let mut it = v.split('.').map(|p| p.trim().parse::<u32>().ok());
        let major = it.next()??;
        let minor = it.next().flatten().unwrap_or(0);
        let patch = it.next().flatten().unwrap_or(0);
        Some((major, minor, patch))
    }

    /// True for v2.5 and later (and unreadable versions): ERR-2..8 layout.
    fn modern_err(&self) -> bool {
        self.version_tuple()
            .is_none_or(|(a, b, _)| (a, b) >= (2, 5))
    }

    /// True if MSH-9.3 (message structure) exists: v2.3.1 and later.
    fn has_structure(&self) -> bool {
        self.version_tuple().is_none_or(|v| v >= (2, 3, 1))
    }
}

/// Builds the ACK message (segments terminated by CR).
///
/// `control_id` becomes MSH-10 and `timestamp` MSH-7 (an HL7 DTM such as
/// `20240305103000+0100`); both are escaped if needed.
pub fn build_ack(
    inbound: &InboundHeader,
    code: AckCode,
    control_id: &str,
    timestamp: &str,
    errors: &[AckError],
) -> String {
    let d = inbound.delimiters;
    let fs = d.field() as char;
    let cs = d.component() as char;
    let ss = d.subcomponent() as char;
    let esc = |s: &str| escape_text(s, &d).into_owned();
    let mut out = String::with_capacity(256 + errors.len() * 96);

    // MSH
    let msh9 = match (inbound.trigger.is_empty(), inbound.has_structure()) {
        (true, false) => "ACK".to_owned(),
        (false, false) => format!("ACK{cs}{}", inbound.trigger),
        (_, true) => format!("ACK{cs}{}{cs}ACK", inbound.trigger),
    };
    let mut msh: Vec<String> = vec![
        "MSH".into(),
        d.encoding_characters(),
        inbound.receiving_application.clone(),
        inbound.receiving_facility.clone(),
        inbound.sending_application.clone(),
        inbound.sending_facility.clone(),
        esc(timestamp),
        String::new(),
        msh9,
        esc(control_id),
        inbound.processing_id.clone(),
        inbound.version.clone(),
    ];
    if !inbound.charset.is_empty() {
        msh.resize(17, String::new());
        msh.push(inbound.charset.clone());
    }
    push_segment(&mut out, &msh, fs);

    // MSA
    let mut msa = vec![
        "MSA".to_owned(),
        code.as_str().to_owned(),
        inbound.control_id.clone(),
    ];
    let modern = inbound.modern_err();
    if !modern {
        if let Some(e) = errors.first() {
            let text = e
                .user_message
                .as_deref()
                .or_else(|| error_code_text(e.code))
                .unwrap_or("");
            msa.push(esc(text));
        }
    }
    push_segment(&mut out, &msa, fs);

    // ERR
    let code_triplet = |code: u16, sep: char| {
        let text = error_code_text(code).unwrap_or("");
        format!("{code}{sep}{}{sep}HL70357", esc(text))
    };
    if modern {
        for e in errors {
            let erl = e
                .location
                .as_ref()
                .map(|l| location_erl(l, &d))
                .unwrap_or_default();
            let fields = vec![
                "ERR".to_owned(),
                String::new(),
                erl,
                code_triplet(e.code, cs),
                e.severity.code().to_owned(),
                String::new(),
                String::new(),
                e.diagnostic.as_deref().map(esc).unwrap_or_default(),
                e.user_message.as_deref().map(esc).unwrap_or_default(),
            ];
            push_segment(&mut out, &fields, fs);
        }
    } else if !errors.is_empty() {
        let reps: Vec<String> = errors
            .iter()
            .map(|e| {
                let (seg, seq, field) = match &e.location {
                    Some(l) => (
                        esc(&l.segment),
                        l.sequence.max(1).to_string(),
                        l.field.map(|f| f.to_string()).unwrap_or_default(),
                    ),
                    None => Default::default(),
                };
                format!("{seg}{cs}{seq}{cs}{field}{cs}{}", code_triplet(e.code, ss))
            })
            .collect();
        let err1 = reps.join(&(d.repetition() as char).to_string());
        push_segment(&mut out, &["ERR".to_owned(), err1], fs);
    }
    out
}

/// [`build_ack`] for a parsed inbound message.
pub fn ack_for(
    inbound: &Message<'_>,
    code: AckCode,
    control_id: &str,
    timestamp: &str,
    errors: &[AckError],
) -> String {
    build_ack(
        &InboundHeader::from_message(inbound),
        code,
        control_id,
        timestamp,
        errors,
    )
}

/// ERL with the segment id escaped (ids from our own parser are plain, but a
/// hand-made Location could hold anything).
fn location_erl(l: &Location, d: &Delimiters) -> String {
    if escape_text(&l.segment, d).len() == l.segment.len() {
        l.to_erl(d)
    } else {
        Location {
            segment: escape_text(&l.segment, d).into_owned(),
            ..l.clone()
        }
        .to_erl(d)
    }
}

/// Writes fields joined by `fs` with trailing empty fields dropped, then CR.
/// For MSH the first two entries are "MSH" and MSH-2 (MSH-1 is the joiner).
fn push_segment(out: &mut String, fields: &[String], fs: char) {
    let last = fields.iter().rposition(|f| !f.is_empty()).unwrap_or(0);
    for (i, f) in fields[..=last].iter().enumerate() {
        if i > 0 {
            out.push(fs);
        }
        out.push_str(f);
    }
    out.push('\r');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::hl7v2::parser::ErrorKind;

    const IN: &str = "MSH|^~\\&|LAB|HOSP^1.2.3^ISO|GW|CARE|20240305103000+0100||ORU^R01^ORU_R01|MSG-1|P|2.5.1|||AL|NE||UNICODE UTF-8\r\
PID|1||123||Doe^John||2024022x\r";

    #[test]
    fn accept_without_errors() {
        let m = Message::parse(IN).unwrap();
        let h = InboundHeader::from_message(&m);
        let ack = build_ack(&h, AckCode::AA, "ACK-1", "20240305103001+0100", &[]);
        assert_eq!(
            ack,
            ack_for(&m, AckCode::AA, "ACK-1", "20240305103001+0100", &[])
        );
        assert_eq!(
            ack,
            "MSH|^~\\&|GW|CARE|LAB|HOSP^1.2.3^ISO|20240305103001+0100||ACK^R01^ACK|ACK-1|P|2.5.1||||||UNICODE UTF-8\rMSA|AA|MSG-1\r"
        );
        // The ACK parses with our own parser.
        let a = Message::parse(&ack).unwrap();
        assert_eq!(a.message_type().structure, Some("ACK"));
        assert_eq!(a.segment("MSA").unwrap().field(2).raw(), "MSG-1");
    }

    #[test]
    fn errors_v25_layout_with_escaping() {
        let m = Message::parse(IN).unwrap();
        let h = InboundHeader::from_message(&m);
        let pid = m.segment("PID").unwrap();
        let dt_err = Hl7Error::at(
            &pid.location(Some(7)).with_comp(1),
            ErrorKind::DataType,
            "bad date|time ^x&y~z\\w\nnext",
        );
        let errors = vec![
            AckError::from(&dt_err),
            AckError::new(error_code::REQUIRED_FIELD_MISSING, Severity::Warning)
                .at(Location::field("PV1", 2))
                .message("patient class missing")
                .diagnostic("PV1-2 empty"),
            AckError::new(error_code::APPLICATION_INTERNAL_ERROR, Severity::Error),
        ];
        let ack = build_ack(&h, AckCode::AE, "ACK-2", "20240305103001", &errors);
        let segs: Vec<&str> = ack.split('\r').collect();
        assert_eq!(segs.len(), 6, "{ack:?}");
        assert_eq!(segs[1], "MSA|AE|MSG-1");
        assert_eq!(
            segs[2],
            "ERR||PID^1^7^1^1|102^Data type error^HL70357|E||||bad date\\F\\time \\S\\x\\T\\y\\R\\z\\E\\w\\X0A\\next"
        );
        assert_eq!(
            segs[3],
            "ERR||PV1^1^2^1|101^Required field missing^HL70357|W|||PV1-2 empty|patient class missing"
        );
        assert_eq!(segs[4], "ERR|||207^Application internal error^HL70357|E");
        assert_eq!(segs[5], "");
        // Round trip: the user message decodes back.
        let a = Message::parse(&ack).unwrap();
        let err = a.segment("ERR").unwrap();
        assert_eq!(err.field(8).decoded(), "bad date|time ^x&y~z\\w\nnext");
        assert_eq!(err.field(2).component(3).raw(), "7");
        assert_eq!(a.segments_named("ERR").count(), 3);
    }

    #[test]
    fn v23_layout_uses_err1() {
        let t = "MSH|^~\\&|A|B|C|D|20050110045504+0700||ADT^A01|599102|P|2.3\rPID|1\r";
        let m = Message::parse(t).unwrap();
        let h = InboundHeader::from_message(&m);
        let errors = vec![
            AckError::new(101, Severity::Error)
                .at(Location::field("PID", 3))
                .message("PID-3 missing"),
            AckError::new(200, Severity::Error),
        ];
        let ack = build_ack(&h, AckCode::AR, "X1", "20050110045505+0700", &errors);
        assert_eq!(
            ack,
            "MSH|^~\\&|C|D|A|B|20050110045505+0700||ACK^A01|X1|P|2.3\r\
MSA|AR|599102|PID-3 missing\r\
ERR|PID^1^3^101&Required field missing&HL70357~^^^200&Unsupported message type&HL70357\r"
        );
        // 2.3.1 and 2.4 get the structure component but still ERR-1.
        let mut h = h;
        h.version = "2.4".into();
        let ack = build_ack(&h, AckCode::AE, "X2", "2005", &errors[..1]);
        assert!(ack.contains("|ACK^A01^ACK|"));
        assert!(ack.contains("\rERR|PID^1^3^101&"));
    }

    #[test]
    fn unknown_inbound_and_custom_delimiters() {
        let h = InboundHeader::default();
        let e = Hl7Error::new(ErrorKind::MissingHeader, "no MSH");
        let ack = build_ack(
            &h,
            AckCode::AR,
            "C1",
            "20240101000000",
            &[AckError::from(&e)],
        );
        assert_eq!(
            ack,
            "MSH|^~\\&|||||20240101000000||ACK^^ACK|C1|P|2.5.1\rMSA|AR\rERR|||100^Segment sequence error^HL70357|E||||no MSH\r"
        );
        let t = "MSH#!@%$#A#B#C#D#2024##ADT!A08#9#P#2.6\r";
        let m = Message::parse(t).unwrap();
        let ack = build_ack(
            &InboundHeader::from_message(&m),
            AckCode::AE,
            "c#2",
            "2024",
            &[AckError::new(102, Severity::Error)
                .at(Location::field("PID", 7))
                .message("a#b!c")],
        );
        assert_eq!(
            ack,
            "MSH#!@%$#C#D#A#B#2024##ACK!A08!ACK#c%F%2#P#2.6\rMSA#AE#9\rERR##PID!1!7!1#102!Data type error!HL70357#E####a%F%b%S%c\r"
        );
        let a = Message::parse(&ack).unwrap();
        assert_eq!(a.control_id(), "c%F%2");
        assert_eq!(a.header().field(10).decoded(), "c#2");
    }

    #[test]
    fn code_texts() {
        assert_eq!(error_code_text(103), Some("Table value not found"));
        assert_eq!(error_code_text(999), None);
        assert_eq!(AckCode::CE.to_string(), "CE");
    }
}
