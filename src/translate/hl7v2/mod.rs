//! HL7 v2 (ER7, "pipe and hat") support for the gateway: parsing, date/time
//! mapping, acknowledgements and MLLP framing. Pure functions, no I/O.
//!
//! # Purpose
//! This is the bottom of `translate/hl7v2`: it turns the bytes of an inbound
//! v2 message into a navigable [`Message`], converts v2 timestamps into FHIR
//! `date`/`dateTime`/`instant` strings with the sender's time zone, builds the
//! ACK that goes back, and frames/unframes messages for MLLP. The v2 → FHIR
//! mapping (producing a Bundle) is built on top of it.
//!
//! | file | what |
//! |---|---|
//! | [`parser`] | zero-copy [`Message`] / [`Segment`] / [`Field`] / [`Repetition`] / [`Component`] / [`Subcomponent`], escapes, [`Hl7Error`] with [`Location`] |
//! | [`datetime`] | strict DTM/DT/TM parsing, [`Hl7DateTime::to_fhir_datetime`] with an IANA [`Zone`] |
//! | [`ack`] | [`build_ack`]: MSH + MSA + ERR (v2.5+ and v2.3/2.4 layouts) |
//! | [`mllp`] | [`MllpDecoder`] (sans-I/O) and [`encode_frame`] |
//!
//! # Spec sections followed
//! HL7 v2.5.1 chapter 2 (Control): 2.5–2.6 message construction, MSH-1/MSH-2
//! delimiters (2.15.9), 2.7 escape sequences, 2.9/2.13 acknowledgement
//! processing, MSA (2.15.8), ERR (2.15.5) and the ERL data type; chapter 2A
//! for DTM/DT/TM/TS; Appendix C.4 for MLLP; table 0357 for error codes and
//! 0516 for severities. FHIR R4 `datatypes.html` for the date/time formats.
//! Each file's own documentation gives the details and deviations.
//!
//! # Why hand-written
//! The project decided to own this layer rather than depend on a published
//! HL7 v2 crate: when it was planned, the Rust crates were judged thin
//! (fixed delimiters, partial escape handling) or copyleft, and what the
//! gateway needs is small and specific: panic-free parsing of hostile input,
//! errors that carry HL7 locations for ERR segments, zero-copy access, and
//! deliberate leniency (LF/CRLF terminators, BOMs, mislabelled Latin-1).
//! Larger crates do exist on crates.io (for example `hl7-2`, `hl7v2`,
//! `hl7kit`); they were not evaluated in depth here (licence, maturity,
//! panic-freedom), so revisit this choice if the layer grows. The
//! parser, ACK builder and MLLP decoder use only `std`; time-zone rules come
//! from `jiff` (see [`datetime`] for why jiff over chrono-tz). Written from
//! the standard's text; no code was taken from other implementations.
//!
//! # Limitations (summary; see each file)
//! * One message per parse, starting with MSH; batches (FHS/BHS) must be
//!   split first. No message-structure/group validation: segments are a flat
//!   ordered list (Z-segments included).
//! * Character sets: UTF-8 (BOM stripped), and ISO 8859-1/-15 when MSH-18
//!   says so and the bytes are not UTF-8. No UTF-16/32, no other 8859 parts,
//!   no ISO 2022 switching escapes.
//! * Time: no leap seconds; FHIR cannot express hour/minute precision, so
//!   such times are padded with `:00`.
//!
//! # Example
//! ```
//! use carebridge::translate::hl7v2::{Message, Hl7DateTime, Zone, InboundHeader, build_ack, AckCode};
//!
//! let text = "MSH|^~\\&|LAB|HOSP|GW|CARE|20240305103000||ORU^R01^ORU_R01|42|P|2.5.1\r\
//!             PID|1||123^^^HOSP^MR||Doe^Jane||19800229\r\
//!             OBX|1|TX|note||a \\T\\ b\r";
//! let msg = Message::parse(text).unwrap();
//! assert_eq!(msg.message_type().trigger, "R01");
//! let pid = msg.segment("PID").unwrap();
//! assert_eq!(pid.field(5).component(2).raw(), "Jane");
//! assert_eq!(msg.segment("OBX").unwrap().field(5).decoded(), "a & b");
//!
//! let berlin = Zone::iana("Europe/Berlin").unwrap();
//! let sent = Hl7DateTime::parse(msg.header().field(7).component(1).raw()).unwrap();
//! assert_eq!(sent.to_fhir_datetime(&berlin).unwrap(), "2024-03-05T10:30:00+01:00");
//! assert_eq!(Hl7DateTime::parse(pid.field(7).raw()).unwrap().to_fhir_date(), "1980-02-29");
//!
//! let ack = build_ack(&InboundHeader::from_message(&msg), AckCode::AA, "A1", "20240305103001+0100", &[]);
//! assert!(ack.starts_with("MSH|^~\\&|GW|CARE|LAB|HOSP|20240305103001+0100||ACK^R01^ACK|A1|P|2.5.1\rMSA|AA|42\r"));
//! ```

pub mod ack;
pub mod datetime;
pub mod map;
pub mod mllp;
pub mod parser;

pub use ack::{
    ack_for, build_ack, error_code, error_code_text, AckCode, AckError, InboundHeader, Severity,
};
pub use datetime::{DateTimeError, DateTimeErrorKind, Hl7DateTime, Hl7Time, Precision, Zone};
pub use mllp::{encode_frame, encode_frame_into, FramingError, MllpDecoder};
pub use parser::{
    decode_bytes, decode_escapes, encode_bytes, escape_text, Component, Delimiters, ErrorKind,
    Field, Hl7Error, Location, Message, MessageBuf, MessageType, Repetition, Segment, Subcomponent,
};
