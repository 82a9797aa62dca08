//! MLLP framing: a pure, socket-free decoder and encoder.
//!
//! # Purpose
//! HL7 v2 over TCP wraps every message as `0x0B <message> 0x1C 0x0D`
//! (start block, data, end block, carriage return). [`MllpDecoder`] is fed
//! whatever byte chunks a socket returns ([`MllpDecoder::push`]) and hands
//! out complete frame payloads ([`MllpDecoder::next_frame`]); [`encode_frame`]
//! wraps a payload. The network loop, timeouts and ACK sending live elsewhere.
//!
//! # Spec followed
//! HL7 v2.5.1 Appendix C ("Lower Layer Protocols"), C.4 Minimal Lower Layer
//! Protocol (MLLP, release 1): block = SB (0x0B) + data + EB (0x1C) + CR
//! (0x0D); the data may contain any byte except SB and EB.
//!
//! # Behaviour on imperfect input
//! * Frames split across reads and several frames in one read are handled;
//!   the decoder keeps only the current partial frame.
//! * CR, LF, space and tab between frames are ignored silently (some senders
//!   add a line break after the trailer).
//! * Other bytes before a start block are reported once as
//!   [`FramingError::DataOutsideFrame`] (right away, so a server can log or
//!   drop a peer speaking another protocol); the decoder then discards bytes
//!   until the next 0x0B and resynchronises there. [`MllpDecoder::skipped_bytes`]
//!   counts what was discarded.
//! * A 0x0B inside a frame means the sender restarted: the partial frame is
//!   discarded and reported as [`FramingError::UnterminatedFrame`], and a new
//!   frame starts at that byte.
//! * **Missing CR after 0x1C is tolerated**: a frame is complete as soon as
//!   its 0x1C arrives (the decoder never waits for the CR, so a peer that
//!   omits it is not left hanging). If the next byte is 0x0D it is consumed
//!   as the trailer; anything else is handled as the start of what follows
//!   (a new 0x0B is a new frame).
//! * Frames larger than the configured maximum ([`DEFAULT_MAX_FRAME_SIZE`]
//!   unless set with [`MllpDecoder::with_max_frame_size`]) are reported once
//!   as [`FramingError::FrameTooLarge`] as soon as the limit is crossed; the
//!   rest is skipped up to the next 0x0B, and memory never grows beyond the
//!   limit.
//! * [`MllpDecoder::finish`] reports a frame cut off by end of stream.
//!
//! # Why hand-written
//! It is a small state machine; keeping it sans-I/O (bytes in, frames out)
//! lets the TCP server, tests and fuzzers drive it the same way, with the
//! resynchronisation rules above under our control and no dependency.
//!
//! # Limitations
//! * No MLLP release 2 (commit acknowledgement blocks); no character set
//!   handling (payloads are bytes; see [`super::parser::decode_bytes`]).
//! * [`encode_frame`] does not check that the payload is free of 0x0B/0x1C
//!   (HL7 text never contains them).

use std::collections::VecDeque;
use std::fmt;

/// Start block (VT).
pub const START_BLOCK: u8 = 0x0B;
/// End block (FS).
pub const END_BLOCK: u8 = 0x1C;
/// Carriage return after the end block.
pub const CARRIAGE_RETURN: u8 = 0x0D;
/// Default maximum payload size: 16 MiB (MDM messages with embedded
/// documents can be several MiB).
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 * 1024 * 1024;

/// A framing problem. The decoder always recovers by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FramingError {
    /// Bytes other than whitespace outside a frame; `first_byte` is the
    /// first of them. Reported once per run of such bytes.
    DataOutsideFrame { first_byte: u8 },
    /// A start block inside a frame: the partial frame of `discarded`
    /// bytes was dropped.
    UnterminatedFrame { discarded: usize },
    /// A frame grew past `limit` bytes; it is being skipped.
    FrameTooLarge { limit: usize },
    /// The stream ended inside a frame of `pending` bytes.
    IncompleteFrame { pending: usize },
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FramingError::DataOutsideFrame { first_byte } => write!(
                f,
                "MLLP: data outside a frame (first byte 0x{first_byte:02X}); skipping to the next start block"
            ),
            FramingError::UnterminatedFrame { discarded } => write!(
                f,
                "MLLP: start block inside a frame; {discarded} bytes of the unfinished frame discarded"
            ),
            FramingError::FrameTooLarge { limit } => {
                write!(f, "MLLP: frame larger than {limit} bytes; skipped")
            }
            FramingError::IncompleteFrame { pending } => {
                write!(f, "MLLP: stream ended inside a frame ({pending} bytes)")
            }
        }
    }
}

impl std::error::Error for FramingError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between frames.
    Idle,
    /// Discarding bytes outside a frame (already reported).
    Garbage,
    /// Inside a frame.
    InFrame,
    /// Just saw the end block; a CR may follow.
    AfterEnd,
    /// Discarding the rest of an oversized frame.
    Skipping,
}

/// Incremental MLLP frame decoder.
#[derive(Debug)]
pub struct MllpDecoder {
    state: State,
    buf: Vec<u8>,
    max: usize,
    out: VecDeque<Result<Vec<u8>, FramingError>>,
    skipped: u64,
}

impl Default for MllpDecoder {
    fn default() -> Self {
        MllpDecoder::new()
    }
}

impl MllpDecoder {
    pub fn new() -> Self {
        MllpDecoder::with_max_frame_size(DEFAULT_MAX_FRAME_SIZE)
    }

    /// A decoder whose frames may hold at most `max` payload bytes.
    pub fn with_max_frame_size(max: usize) -> Self {
        MllpDecoder {
            state: State::Idle,
            buf: Vec::new(),
            max,
            out: VecDeque::new(),
            skipped: 0,
        }
    }

    /// Feeds bytes as they arrive.
    pub fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Idle => {
                    let b = data[0];
                    data = &data[1..];
                    match b {
                        START_BLOCK => self.start_frame(),
                        b'\r' | b'\n' | b' ' | b'\t' => {}
                        _ => {
                            self.out
                                .push_back(Err(FramingError::DataOutsideFrame { first_byte: b }));
                            self.skipped += 1;
                            self.state = State::Garbage;
                        }
                    }
                }
                State::Garbage | State::Skipping => {
                    let stop = data
                        .iter()
                        .position(|&b| b == START_BLOCK || b == END_BLOCK);
                    match stop {
                        None => {
                            self.skipped += data.len() as u64;
                            data = &[];
                        }
                        Some(p) => {
                            self.skipped += p as u64;
                            let b = data[p];
                            data = &data[p + 1..];
                            if b == START_BLOCK {
                                self.start_frame();
                            } else if self.state == State::Skipping {
                                // End of the oversized frame.
                                self.state = State::AfterEnd;
                            } else {
                                self.skipped += 1;
                            }
                        }
                    }
                }
                State::InFrame => {
                    let stop = data
                        .iter()
                        .position(|&b| b == START_BLOCK || b == END_BLOCK);
                    let take = stop.unwrap_or(data.len());
                    if self.buf.len() + take > self.max {
                        self.out
                            .push_back(Err(FramingError::FrameTooLarge { limit: self.max }));
                        self.skipped += (self.buf.len() + take) as u64;
                        self.buf = Vec::new();
                        self.state = State::Skipping;
                        data = &data[take..];
                        continue;
                    }
                    self.buf.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if let Some(&b) = data.first() {
                        data = &data[1..];
                        if b == END_BLOCK {
                            let frame = std::mem::take(&mut self.buf);
                            self.out.push_back(Ok(frame));
                            self.state = State::AfterEnd;
                        } else {
                            let discarded = self.buf.len();
                            self.out
                                .push_back(Err(FramingError::UnterminatedFrame { discarded }));
                            self.skipped += discarded as u64;
                            self.start_frame();
                        }
                    }
                }
                State::AfterEnd => {
                    self.state = State::Idle;
                    if data[0] == CARRIAGE_RETURN {
                        data = &data[1..];
                    }
                    // Otherwise: CR missing, tolerated; reprocess as Idle.
                }
            }
        }
    }

    fn start_frame(&mut self) {
        self.buf.clear();
        self.state = State::InFrame;
    }

    /// The next complete frame payload or framing error, in stream order.
    pub fn next_frame(&mut self) -> Option<Result<Vec<u8>, FramingError>> {
        self.out.pop_front()
    }

    /// Call at end of stream: reports a frame that was cut off (and resets).
    pub fn finish(&mut self) -> Option<FramingError> {
        let st = std::mem::replace(&mut self.state, State::Idle);
        let pending = std::mem::take(&mut self.buf).len();
        (st == State::InFrame).then_some(FramingError::IncompleteFrame { pending })
    }

    /// True when no partial frame is buffered and no output is waiting.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle | State::AfterEnd) && self.out.is_empty()
    }

    /// Bytes of the current partial frame.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Bytes discarded so far (outside frames, oversized and broken frames).
    pub fn skipped_bytes(&self) -> u64 {
        self.skipped
    }

    pub fn max_frame_size(&self) -> usize {
        self.max
    }
}

/// Wraps `payload` as `0x0B payload 0x1C 0x0D`.
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 3);
    encode_frame_into(payload, &mut v);
    v
}

/// Appends the framed `payload` to `out`.
pub fn encode_frame_into(payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(payload.len() + 3);
    out.push(START_BLOCK);
    out.extend_from_slice(payload);
    out.push(END_BLOCK);
    out.push(CARRIAGE_RETURN);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(d: &mut MllpDecoder) -> Vec<Result<Vec<u8>, FramingError>> {
        std::iter::from_fn(|| d.next_frame()).collect()
    }
    fn ok(s: &[u8]) -> Result<Vec<u8>, FramingError> {
        Ok(s.to_vec())
    }

    #[test]
    fn encode() {
        assert_eq!(encode_frame(b"MSH|x\r"), b"\x0bMSH|x\r\x1c\x0d");
        assert_eq!(encode_frame(b""), b"\x0b\x1c\x0d");
    }

    #[test]
    fn one_frame_and_byte_by_byte() {
        let wire = encode_frame(b"MSH|^~\\&|A\rPID|1\r");
        let mut d = MllpDecoder::new();
        d.push(&wire);
        assert_eq!(drain(&mut d), vec![ok(b"MSH|^~\\&|A\rPID|1\r")]);
        assert!(d.is_idle());
        let mut d = MllpDecoder::new();
        let mut got = Vec::new();
        for (i, b) in wire.iter().enumerate() {
            d.push(std::slice::from_ref(b));
            got.extend(drain(&mut d));
            // Complete once the end block is in, before the trailing CR.
            assert_eq!(got.len(), usize::from(i >= wire.len() - 2));
        }
        assert_eq!(got, vec![ok(b"MSH|^~\\&|A\rPID|1\r")]);
        assert_eq!(d.finish(), None);
    }

    #[test]
    fn several_frames_in_one_read_with_whitespace() {
        let mut wire = encode_frame(b"A");
        wire.extend_from_slice(b"\r\n");
        wire.extend(encode_frame(b"B"));
        wire.extend(encode_frame(b""));
        wire.extend(encode_frame(b"C"));
        let mut d = MllpDecoder::new();
        d.push(&wire);
        assert_eq!(drain(&mut d), vec![ok(b"A"), ok(b"B"), ok(b""), ok(b"C")]);
        assert_eq!(d.skipped_bytes(), 0);
    }

    #[test]
    fn garbage_reported_once_then_resync() {
        let mut d = MllpDecoder::new();
        d.push(b"GET / HTTP/1.1\r\n");
        d.push(b"Host: x\r\n\x1c\r");
        d.push(b"\x0bMSH\x1c\x0d");
        assert_eq!(
            drain(&mut d),
            vec![
                Err(FramingError::DataOutsideFrame { first_byte: b'G' }),
                ok(b"MSH")
            ]
        );
        assert_eq!(d.skipped_bytes(), 27);
        // A second run of garbage is a new report.
        d.push(b"zz\x0bX\x1c\x0d");
        assert_eq!(
            drain(&mut d),
            vec![
                Err(FramingError::DataOutsideFrame { first_byte: b'z' }),
                ok(b"X")
            ]
        );
    }

    #[test]
    fn start_block_inside_frame_restarts() {
        let mut d = MllpDecoder::new();
        d.push(b"\x0bPART");
        d.push(b"IAL\x0bFULL\x1c\x0d");
        assert_eq!(
            drain(&mut d),
            vec![
                Err(FramingError::UnterminatedFrame { discarded: 7 }),
                ok(b"FULL")
            ]
        );
    }

    #[test]
    fn missing_cr_after_end_block_is_tolerated() {
        let mut d = MllpDecoder::new();
        d.push(b"\x0bA\x1c\x0bB\x1c");
        assert_eq!(drain(&mut d), vec![ok(b"A"), ok(b"B")]);
        // The frame is yielded at 0x1C, without waiting for the CR.
        d.push(b"\x0bC\x1c");
        assert_eq!(drain(&mut d), vec![ok(b"C")]);
        d.push(b"\x0d\x0bD\x1cX");
        assert_eq!(
            drain(&mut d),
            vec![
                ok(b"D"),
                Err(FramingError::DataOutsideFrame { first_byte: b'X' })
            ]
        );
    }

    #[test]
    fn max_frame_size() {
        let mut d = MllpDecoder::with_max_frame_size(4);
        d.push(b"\x0bABCD\x1c\x0d");
        assert_eq!(drain(&mut d), vec![ok(b"ABCD")]);
        d.push(b"\x0bABC");
        d.push(b"DE");
        assert_eq!(
            drain(&mut d),
            vec![Err(FramingError::FrameTooLarge { limit: 4 })]
        );
        d.push(b"FGHIJKLMNOP");
        assert!(d.pending_bytes() == 0 && drain(&mut d).is_empty());
        d.push(b"Q\x1c\x0d\x0bOK\x1c\x0d");
        assert_eq!(drain(&mut d), vec![ok(b"OK")]);
        // Oversized frame followed directly by a new start block.
        d.push(b"\x0b123456\x0bOK2\x1c\x0d");
        assert_eq!(
            drain(&mut d),
            vec![Err(FramingError::FrameTooLarge { limit: 4 }), ok(b"OK2")]
        );
    }

    #[test]
    fn finish_reports_cut_frame() {
        let mut d = MllpDecoder::new();
        d.push(b"\x0bMSH|");
        assert_eq!(d.pending_bytes(), 4);
        assert!(!d.is_idle());
        assert_eq!(
            d.finish(),
            Some(FramingError::IncompleteFrame { pending: 4 })
        );
        assert!(d.is_idle());
    }

    #[test]
    fn random_chunking_roundtrip_and_noise_never_panics() {
        let mut seed = 0xDEAD_BEEF_CAFE_F00Du64;
        let mut rnd = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n.max(1) as u64) as usize
        };
        for round in 0..300 {
            let frames: Vec<Vec<u8>> = (0..1 + rnd(6))
                .map(|i| {
                    (0..rnd(300))
                        .map(|j| b"MSH|^~\\&\rPID"[(i + j) % 12])
                        .collect()
                })
                .collect();
            let mut wire = Vec::new();
            for f in &frames {
                encode_frame_into(f, &mut wire);
                if round % 3 == 0 {
                    wire.extend_from_slice(b"\r\n");
                }
            }
            let mut d = MllpDecoder::with_max_frame_size(1000);
            let mut rest = &wire[..];
            while !rest.is_empty() {
                let n = 1 + rnd(rest.len().min(64));
                d.push(&rest[..n]);
                rest = &rest[n..];
            }
            let got: Vec<_> = drain(&mut d).into_iter().map(Result::unwrap).collect();
            assert_eq!(got, frames);
        }
        // Noise: only checks that nothing panics and memory stays bounded.
        let mut d = MllpDecoder::with_max_frame_size(50);
        for _ in 0..5000 {
            let chunk: Vec<u8> = (0..rnd(40))
                .map(|_| [0x0B, 0x1C, 0x0D, b'A', b'\n', 0xFF][rnd(6)])
                .collect();
            d.push(&chunk);
            assert!(d.pending_bytes() <= 50);
            while let Some(f) = d.next_frame() {
                if let Ok(f) = f {
                    assert!(f.len() <= 50);
                }
            }
        }
        let _ = d.finish();
    }
}
