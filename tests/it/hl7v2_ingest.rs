//! HL7 v2 ingest end to end: `POST /hl7v2` and the MLLP listener, through the
//! translation and the one write pipeline into the store; ACK codes, ERR
//! locations, idempotent re-delivery, framing, and the shared samples.

use crate::common::*;
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("hl7v2").join(name)).unwrap()
}

async fn post_v2(s: &TestServer, body: Vec<u8>) -> Resp {
    send(client().post(s.url("hl7v2")).header("content-type", "x-application/hl7-v2+er7").body(body)).await
}

/// MSA-1 of an ACK.
pub fn msa(ack: &str) -> String {
    ack.split(['\r', '\n']).find(|l| l.starts_with("MSA|")).unwrap_or("").split('|').nth(1).unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_acks_and_is_idempotent() {
    let s = TestServer::start(Backend::Sqlite).await;
    let r = post_v2(&s, fixture("adt-a01-de.hl7")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(msa(&r.text), "AA", "{}", r.text);
    assert!(r.header("content-type").unwrap().starts_with("x-application/hl7-v2+er7"));
    let link = r.header("link").expect("Link to the Provenance");
    assert!(link.contains("/Provenance/"), "{link}");
    // the patient is there under the KVNR, with the umlaut decoded
    let b = get(&s, "Patient?identifier=http://fhir.de/sid/gkv/kvid-10|X110411319").await.json();
    assert_eq!(match_ids(&b).len(), 1, "{b}");
    assert_eq!(b["entry"][0]["resource"]["name"][0]["family"], "Müller");
    let enc = get(&s, "Encounter?_summary=count").await.json()["total"].as_i64().unwrap();
    assert!(enc >= 1);
    // the Provenance targets what was written
    let prov_url = link.trim_start_matches('<').split('>').next().unwrap().to_owned();
    let prov = send(client().get(prov_url)).await.json();
    assert!(prov["target"].as_array().unwrap().len() >= 3);
    // re-delivery: AA again, no new versions anywhere
    let hist_before = get(&s, "_history?_count=1000").await.json()["entry"].as_array().unwrap().len();
    let again = post_v2(&s, fixture("adt-a01-de.hl7")).await;
    assert_eq!(msa(&again.text), "AA");
    let hist_after = get(&s, "_history?_count=1000").await.json()["entry"].as_array().unwrap().len();
    assert!(hist_after - hist_before <= 1, "only the Provenance (recorded time) may change: {hist_before} → {hist_after}");
    // A08 after A01 updates the same Encounter (no second one)
    let r = post_v2(&s, fixture("adt-a08-de.hl7")).await;
    assert_eq!(msa(&r.text), "AA", "{}", r.text);
    // multipart: ACK + FHIR response
    let r = send(client().post(s.url("hl7v2")).header("accept", "multipart/mixed").body(fixture("adt-a03-de.hl7"))).await;
    assert!(r.header("content-type").unwrap().starts_with("multipart/mixed"));
    assert!(r.text.contains("MSA|AA") && r.text.contains("transaction-response"), "{}", r.text);
    s.stop().await;
}

#[tokio::test]
async fn http_ingest_rejections_store_nothing() {
    let s = TestServer::start(Backend::Sqlite).await;
    // impossible date → AE with the location
    let r = post_v2(&s, fixture("bad-timestamp.hl7")).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(msa(&r.text), "AE");
    assert!(r.text.contains("ERR|"), "{}", r.text);
    assert!(r.text.contains("EVN^1^2") || r.text.contains("PID^1^7") || r.text.contains("PV1^1^44"), "ERR names the field: {}", r.text);
    // unsupported type → AR naming it
    let r = post_v2(&s, fixture("bad-unsupported-siu.hl7")).await;
    assert_eq!(r.status, 400);
    assert_eq!(msa(&r.text), "AR");
    assert!(r.text.contains("SIU"), "{}", r.text);
    // not HL7 at all → AR
    let r = post_v2(&s, b"hello".to_vec()).await;
    assert_eq!(msa(&r.text), "AR", "{}", r.text);
    assert_eq!(get(&s, "Patient?_summary=count").await.json()["total"], 0);
    assert_eq!(get(&s, "Provenance?_summary=count").await.json()["total"], 0);
    s.stop().await;
}

async fn read_acks(sock: &mut tokio::net::TcpStream, n: usize) -> Vec<String> {
    let mut dec = carebridge::translate::hl7v2::MllpDecoder::new();
    let mut out = vec![];
    let mut buf = vec![0u8; 65536];
    while out.len() < n {
        let k = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf)).await.expect("ack in time").unwrap();
        assert!(k > 0, "connection closed early");
        dec.push(&buf[..k]);
        while let Some(f) = dec.next_frame() {
            out.push(String::from_utf8(f.unwrap()).unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mllp_many_messages_split_frames_and_garbage() {
    let s = TestServer::start_mllp(Backend::Sqlite).await;
    let addr = s.mllp_addr.unwrap();
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let frame = |b: &[u8]| carebridge::translate::hl7v2::encode_frame(b);
    // two frames in one write
    let mut two = frame(&fixture("adt-a01-de.hl7"));
    two.extend(frame(&fixture("adt-a04-de.hl7")));
    sock.write_all(&two).await.unwrap();
    // one frame split over three writes
    let f = frame(&fixture("oru-r01-de.hl7"));
    for part in f.chunks(f.len() / 3 + 1) {
        sock.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // garbage outside a frame, then a good frame: the connection stays usable
    sock.write_all(b"garbage").await.unwrap();
    sock.write_all(&frame(&fixture("adt-a28-de.hl7"))).await.unwrap();
    let acks = read_acks(&mut sock, 5).await;
    let codes: Vec<String> = acks.iter().map(|a| msa(a)).collect();
    assert_eq!(codes.iter().filter(|c| *c == "AA").count(), 4, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| *c == "AR").count(), 1, "garbage answered once: {codes:?}");
    assert!(get(&s, "Observation?_summary=count").await.json()["total"].as_i64().unwrap() >= 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_samples_are_accepted() {
    let Some(shared) = shared_dir() else {
        eprintln!("shared_samples_are_accepted: skipped (../shared not found)");
        return;
    };
    let s = TestServer::start(Backend::Sqlite).await;
    let dir = shared.join("samples/hl7v2");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "hl7")).collect();
    files.sort();
    let supported = carebridge::translate::hl7v2::map::SUPPORTED;
    let (mut aa, mut n_supported, mut ar_unsupported, mut n_other) = (0, 0, 0, 0);
    let mut failures = vec![];
    for f in &files {
        let raw = std::fs::read(f).unwrap();
        let msg = carebridge::translate::hl7v2::MessageBuf::from_bytes(&raw).unwrap();
        let mt = msg.message().message_type();
        let (code, trig) = (mt.code.to_string(), mt.trigger.to_string());
        let is_supported = supported.iter().any(|(c, t)| *c == code && *t == trig);
        let r = post_v2(&s, raw).await;
        let ack = msa(&r.text);
        if is_supported {
            n_supported += 1;
            if ack == "AA" {
                aa += 1;
            } else {
                failures.push(format!("{}: {code}^{trig} → {ack}: {}", f.file_name().unwrap().to_string_lossy(), r.text.replace('\r', " | ")));
            }
        } else {
            n_other += 1;
            if ack == "AR" && r.text.contains(&code) {
                ar_unsupported += 1;
            } else {
                failures.push(format!("{}: unsupported {code}^{trig} → {ack}", f.file_name().unwrap().to_string_lossy()));
            }
        }
    }
    eprintln!("hl7v2 samples: {aa}/{n_supported} supported messages stored (AA); {ar_unsupported}/{n_other} others answered AR naming the type");
    for f in &failures {
        eprintln!("  {f}");
    }
    let rate = aa as f64 / n_supported.max(1) as f64;
    assert!(rate >= 0.95, "{:.1} % of supported samples accepted", rate * 100.0);
    assert_eq!(ar_unsupported, n_other);
    let _ = Value::Null;
    s.stop().await;
}

/// A light ADT^A28 (patient only) with unique control id and MRN.
fn a28(n: usize) -> String {
    format!(
        "MSH|^~\\&|ORBIS|KHNORD|CAREBRIDGE|REGION|20240220090000||ADT^A28^ADT_A05|S-{n}|P|2.5.1\rEVN|A28|20240220090000\rPID|1||S{n}^^^KHNORD^PI||Stream^Person{n}||19700101|F\r"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mllp_stream_of_10000_messages_no_loss() {
    const N: usize = 10_000;
    const CONNS: usize = 4;
    let s = TestServer::start_mllp(Backend::Sqlite).await;
    let addr = s.mllp_addr.unwrap();
    let mut set = tokio::task::JoinSet::new();
    for c in 0..CONNS {
        set.spawn(async move {
            let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut rd, mut wr) = sock.split();
            let ids: Vec<usize> = (0..N).filter(|i| i % CONNS == c).collect();
            // pipelined: a writer task streams every frame while acks are read
            let frames: Vec<u8> = ids.iter().flat_map(|&i| carebridge::translate::hl7v2::encode_frame(a28(i).as_bytes())).collect();
            let write = async move { wr.write_all(&frames).await.unwrap() };
            let read = async {
                let mut dec = carebridge::translate::hl7v2::MllpDecoder::new();
                let mut buf = vec![0u8; 65536];
                let mut acks = vec![];
                while acks.len() < ids.len() {
                    let k = tokio::time::timeout(Duration::from_secs(120), rd.read(&mut buf)).await.expect("acks keep coming").unwrap();
                    assert!(k > 0, "connection closed after {} acks", acks.len());
                    dec.push(&buf[..k]);
                    while let Some(f) = dec.next_frame() {
                        acks.push(String::from_utf8(f.unwrap()).unwrap());
                    }
                }
                acks
            };
            let ((), acks) = tokio::join!(write, read);
            acks
        });
    }
    let mut seen = std::collections::HashMap::<String, usize>::new();
    while let Some(r) = set.join_next().await {
        for ack in r.unwrap() {
            assert_eq!(msa(&ack), "AA", "{ack}");
            let msa_line = ack.split('\r').find(|l| l.starts_with("MSA|")).unwrap();
            let ctl = msa_line.split('|').nth(2).unwrap().to_owned();
            *seen.entry(ctl).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), N, "every message acknowledged");
    assert!(seen.values().all(|&n| n == 1), "no message acknowledged twice");
    let patients = get(&s, "Patient?family=Stream&_summary=count").await.json()["total"].as_u64().unwrap();
    assert_eq!(patients as usize, N, "every message stored exactly once");
    let provs = get(&s, "Provenance?_summary=count").await.json()["total"].as_u64().unwrap();
    assert_eq!(provs as usize, N, "one Provenance per message");
    s.stop().await;
}

#[tokio::test]
async fn configured_institution_sets_id_zone_and_systems() {
    // the same message, sender KHNORD configured as institution "kh-nord"
    // in Shanghai with its own MRN system for assigning authority KHNORD
    let file: carebridge::config::FileConfig = toml::from_str(
        "[[hl7v2.institution]]\nid = \"kh-nord\"\nfacilities = [\"KHNORD\"]\nname = \"Krankenhaus Nord\"\ntime_zone = \"Asia/Shanghai\"\n[hl7v2.institution.identifier_systems]\nKHNORD = \"urn:oid:1.2.276.0.76.3.1.999.1\"\n",
    )
    .unwrap();
    let api = carebridge::api::ApiConfig { hl7: file.hl7v2.to_hl7_config().unwrap(), ..Default::default() };
    let s = TestServer::start_with(Backend::Sqlite, api).await;
    let r = post_v2(&s, fixture("adt-a01-de.hl7")).await;
    assert_eq!(msa(&r.text), "AA", "{}", r.text);
    let b = get(&s, "Encounter").await.json();
    let enc = &b["entry"][0]["resource"];
    // PV1-44 20240305103000 without offset → Shanghai time (+08:00)
    assert_eq!(enc["period"]["start"], "2024-03-05T10:30:00+08:00", "{enc}");
    let p = get(&s, "Patient?identifier=urn:oid:1.2.276.0.76.3.1.999.1|4711").await.json();
    assert_eq!(match_ids(&p).len(), 1, "{p}");
    let org = get(&s, "Organization").await.json();
    assert!(org.to_string().contains("Krankenhaus Nord"), "{org}");
    s.stop().await;
}
