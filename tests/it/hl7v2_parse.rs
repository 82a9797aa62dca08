//! Parses every HL7 v2 sample in `shared/samples/hl7v2/` (third-party messages,
//! v2.3–2.8, LF segment ends, some with a UTF-8 BOM, most without a final
//! terminator), routes each on MSH-9 and checks values looked up by hand.
//!
//! The shared folder is `$CAREBRIDGE_SHARED` or `<crate>/../shared`; when it is
//! missing the tests print a line and pass.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use carebridge::translate::hl7v2::{
    build_ack, AckCode, Hl7DateTime, InboundHeader, Location, Message, MessageType, Zone,
};

fn samples_dir() -> Option<PathBuf> {
    let shared = std::env::var_os("CAREBRIDGE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")));
    let dir = shared.join("samples").join("hl7v2");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!(
            "skipping hl7v2 sample tests: {} not found (set CAREBRIDGE_SHARED)",
            dir.display()
        );
        None
    }
}

/// All `*.hl7` files, sorted by name, with their bytes.
fn load_samples(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read samples dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "hl7"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&p).expect("read sample");
            (name, bytes)
        })
        .collect();
    out.sort();
    out
}

/// MANIFEST.tsv rows keyed by file name.
fn manifest(dir: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let text = std::fs::read_to_string(dir.join("MANIFEST.tsv")).expect("MANIFEST.tsv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split('\t').collect();
    lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let row: BTreeMap<String, String> = header
                .iter()
                .zip(l.split('\t'))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (row["file"].clone(), row)
        })
        .collect()
}

/// Routing on MSH-9 as the translator will do it: message code first, then
/// trigger; structure only as a cross-check. Returns the handler family.
fn route(t: &MessageType<'_>) -> Option<&'static str> {
    Some(match (t.code, t.trigger) {
        ("ADT", trig) if trig.starts_with('A') => "adt",
        ("BAR", _) | ("DFT", _) => "financial",
        ("MDM", trig) if trig.starts_with('T') => "document",
        ("ORU", "R01") | ("OUL", _) => "result",
        ("ORM", "O01") | ("OML", _) | ("OMG", _) => "order",
        ("RDE", _) | ("RDS", _) => "pharmacy",
        ("VXU", "V04") => "immunization",
        ("SIU", _) => "schedule",
        ("REF", _) => "referral",
        ("PPR", _) => "problem",
        _ => return None,
    })
}

#[test]
fn every_sample_parses_and_routes_on_msh9() {
    let Some(dir) = samples_dir() else { return };
    let samples = load_samples(&dir);
    let manifest = manifest(&dir);
    assert_eq!(samples.len(), 105, "sample count");
    let berlin = Zone::iana("Europe/Berlin").unwrap();

    let mut by_code: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_route: BTreeMap<&str, usize> = BTreeMap::new();
    let mut fields = 0usize;
    for (name, bytes) in &samples {
        let msg = Message::parse_bytes(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let row = manifest
            .get(name)
            .unwrap_or_else(|| panic!("{name} not in MANIFEST"));

        // MSH-9, MSH-12 and the segment sequence match the manifest.
        assert_eq!(
            msg.header().field(9).raw(),
            row["msh9_message_type"],
            "{name} MSH-9"
        );
        assert_eq!(msg.version(), row["msh12_version"], "{name} MSH-12");
        let seq: Vec<&str> = msg.segments().map(|s| s.id()).collect();
        assert_eq!(seq.join(","), row["segment_sequence"], "{name} segments");

        // Routing.
        let t = msg.message_type();
        let r = route(&t).unwrap_or_else(|| panic!("{name}: no route for {t:?}"));
        if let Some(structure) = t.structure {
            assert!(
                structure.starts_with(t.code),
                "{name}: structure {structure} vs {}",
                t.code
            );
        }
        *by_code.entry(t.code).or_default() += 1;
        *by_route.entry(r).or_default() += 1;

        // Every value decodes.
        for seg in msg.segments() {
            for f in seg.fields() {
                fields += 1;
                for rep in f.repetitions() {
                    for c in rep.components() {
                        for s in c.subcomponents() {
                            let _ = s.decoded();
                        }
                    }
                }
            }
        }

        // MSH-7 is a valid DTM in every sample and maps to FHIR.
        let ts = msg.header().field(7).component(1).raw();
        let dtm = Hl7DateTime::parse(ts).unwrap_or_else(|e| panic!("{name}: {e}"));
        dtm.to_fhir_instant(&berlin)
            .unwrap_or_else(|e| panic!("{name}: {e}"));

        // An ACK can be built for it and parses back.
        let ack = build_ack(
            &InboundHeader::from_message(&msg),
            AckCode::AA,
            "ACK1",
            "20240101000000+0000",
            &[],
        );
        let ack_msg = Message::parse(&ack).unwrap_or_else(|e| panic!("{name} ACK: {e}"));
        assert_eq!(
            ack_msg.segment("MSA").unwrap().field(2).raw(),
            msg.control_id(),
            "{name}"
        );
        assert_eq!(
            ack_msg.header().field(5).raw(),
            msg.header().field(3).raw(),
            "{name}"
        );
        assert_eq!(ack_msg.message_type().trigger, t.trigger, "{name}");
    }
    println!(
        "hl7v2 samples: {} messages, {fields} fields, routes {by_route:?}",
        samples.len()
    );

    // Counts per MSH-9.1 as documented in shared/samples/README.md (file names
    // are not always the message type: PC1-Problem-* are PPR).
    let expected: BTreeMap<&str, usize> = [
        ("ADT", 43),
        ("BAR", 5),
        ("DFT", 3),
        ("MDM", 10),
        ("OMG", 2),
        ("OML", 4),
        ("ORM", 6),
        ("ORU", 3),
        ("OUL", 5),
        ("PPR", 2),
        ("RDE", 3),
        ("RDS", 1),
        ("REF", 3),
        ("SIU", 12),
        ("VXU", 3),
    ]
    .into_iter()
    .collect();
    assert_eq!(by_code, expected);
}

fn parse_sample<'a>(dir: &Path, name: &str, buf: &'a mut Vec<u8>) -> Message<'a> {
    *buf = std::fs::read(dir.join(name)).expect(name);
    Message::parse_bytes(buf).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn get<'a>(msg: &Message<'a>, path: &str) -> &'a str {
    msg.get(&Location::parse(path).expect(path))
        .unwrap_or_else(|| panic!("{path} absent"))
}

#[test]
fn values_looked_up_by_hand() {
    let Some(dir) = samples_dir() else { return };
    let berlin = Zone::iana("Europe/Berlin").unwrap();
    let mut buf = Vec::new();

    // v2.8, LF, no BOM.
    let m = parse_sample(&dir, "ADT-A01-01.hl7", &mut buf);
    assert_eq!(m.control_id(), "MSG00001");
    assert_eq!(get(&m, "MSH-4.2"), "2.16.840.1.122848.1.30");
    assert_eq!(
        m.message_type(),
        MessageType {
            code: "ADT",
            trigger: "A01",
            structure: Some("ADT_A01")
        }
    );
    let pid = m.segment("PID").unwrap();
    assert_eq!(pid.field(5).repetition_count(), 2);
    assert_eq!(pid.field(5).component(1).subcomponent(1).raw(), "EVERYMAN");
    assert_eq!(pid.field(5).component(1).subcomponent(5).raw(), "Aniston");
    assert_eq!(pid.field(5).component(2).raw(), "ADAM");
    assert_eq!(
        pid.field(5)
            .repetition(2)
            .component(1)
            .subcomponent(1)
            .raw(),
        "Josh"
    );
    assert_eq!(get(&m, "PID-5[2].7"), "L");
    assert_eq!(get(&m, "PID-11.1.2"), "Hospital Lane");
    assert_eq!(get(&m, "PID-11.3"), "Ann Arbor ");
    let dob = Hl7DateTime::parse(pid.field(7).raw()).unwrap();
    assert_eq!(dob.to_fhir_date(), "1988-08-18");
    assert_eq!(
        dob.to_fhir_datetime(&berlin).unwrap(),
        "1988-08-18T11:26:00+02:15"
    );
    let evn6 = Hl7DateTime::parse(m.segment("EVN").unwrap().field(6).raw()).unwrap();
    assert_eq!(
        evn6.to_fhir_datetime(&berlin).unwrap(),
        "2021-08-17T15:19:43.4+02:00"
    );
    let pv1 = m.segment("PV1").unwrap();
    assert_eq!(
        pv1.field(14).raw(),
        "NHS Provider-General (inc.A\\T\\E-this Hosp)"
    );
    assert_eq!(
        pv1.field(14).decoded(),
        "NHS Provider-General (inc.A&E-this Hosp)"
    );

    // v2.5, BOM, LF, two OBR/OBX groups.
    let m = parse_sample(&dir, "LAB-ORU-1.hl7", &mut buf);
    assert!(m.as_str().starts_with("MSH|"));
    assert_eq!(m.version(), "2.5");
    assert_eq!(m.segments_named("OBX").count(), 10);
    let obx2 = m.segment_seq("OBX", 2).unwrap();
    assert_eq!(obx2.field(5).raw(), "4.06");
    assert_eq!(obx2.field(6).raw(), "tera.l-1");
    assert_eq!(get(&m, "OBR[2]-4.2"), "Differential WBC Count, buffy coat");
    assert_eq!(get(&m, "OBR-33.1.2"), "CYTO");
    let t = Hl7DateTime::parse(m.header().field(7).raw()).unwrap();
    assert_eq!(
        t.to_fhir_instant(&berlin).unwrap(),
        "2014-10-06T06:45:00+07:00"
    );

    // v2.3.1 PPR^PC3 in a file named after PC1; BOM, trailing spaces.
    let m = parse_sample(&dir, "PC1-Problem-Delete-v2.3.1.hl7", &mut buf);
    assert_eq!(
        (m.message_type().code, m.message_type().trigger),
        ("PPR", "PC3")
    );
    assert_eq!(m.message_type().structure, None);
    assert_eq!(m.version(), "2.3.1");
    assert_eq!(get(&m, "PID-5.5"), "MR.");
    assert_eq!(get(&m, "PRB-3.2"), "HYPOCHONDRIASIS");
    assert_eq!(
        m.segment("NTE").unwrap().field(3).decoded(),
        "Patient reported problem was a mistake."
    );
    // MSH-7 without offset: the sender's zone applies (Berlin summer time).
    let t = Hl7DateTime::parse(m.header().field(7).raw()).unwrap();
    assert_eq!(
        t.to_fhir_datetime(&berlin).unwrap(),
        "2004-06-29T17:55:06+02:00"
    );

    // v2.3, BOM, every line ends with a space.
    let m = parse_sample(&dir, "ADT01-23.hl7", &mut buf);
    assert_eq!(m.version(), "2.3");
    assert_eq!(get(&m, "PID-3.1"), "10006579");
    assert_eq!(get(&m, "PID-11.3"), "FOWL");
    assert_eq!(get(&m, "PID-5"), "DUCK^DONALD^D");
    assert_eq!(m.segments_named("IN1").count(), 3);
    assert_eq!(get(&m, "IN1[2]-4"), "MEDICAL MUTUAL CALIF.");

    // v2.4 ORU: structured numeric OBX-5.
    let m = parse_sample(&dir, "ORU-R01-RMGEAD.hl7", &mut buf);
    let obx = m.segment("OBX").unwrap();
    assert_eq!(obx.field(5).component(2).raw(), "182");
    assert_eq!(obx.field(7).raw(), "70_105");
    assert_eq!(obx.field(8).raw(), "H");
}
