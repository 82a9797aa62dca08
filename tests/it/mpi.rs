//! Master patient index end to end, on SQLite and (with
//! `CAREBRIDGE_TEST_POSTGRES`) PostgreSQL: deterministic and probabilistic
//! linking on create/update, each perturbation type, the review queue
//! (confirm/reject), unlink and re-link, `Person` read, `Patient.link`
//! seealso on read, `$match`, `$ihe-pix`, decisions as AuditEvents, and the
//! HL7 v2 A40 merge.

use crate::common::*;
use serde_json::{json, Value};

const KVNR: &str = "http://fhir.de/sid/gkv/kvid-10";
const MRN_A: &str = "https://kh-nord.example/fhir/sid/mrn";
const MRN_B: &str = "https://praxis-sued.example/fhir/sid/mrn";

fn patient(mrn_sys: &str, mrn: &str, family: &str, given: &str, birth: Option<&str>, gender: &str, postcode: &str) -> Value {
    let mut p = json!({
        "resourceType": "Patient",
        "identifier": [{"system": mrn_sys, "value": mrn}],
        "name": [{"family": family, "given": [given]}],
        "gender": gender,
        "address": [{"city": "Hamburg", "postalCode": postcode}],
    });
    if let Some(b) = birth {
        p["birthDate"] = json!(b);
    }
    p
}

async fn create(s: &TestServer, p: &Value) -> String {
    let r = post_json(s, "Patient", p).await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.json()["id"].as_str().unwrap().to_owned()
}

/// The Person ids that link a Patient.
async fn persons_of(s: &TestServer, id: &str) -> Vec<String> {
    match_ids(&get(s, &format!("Person?link=Patient/{id}")).await.json())
}

async fn person_of(s: &TestServer, id: &str) -> Option<Value> {
    let ps = persons_of(s, id).await;
    assert!(ps.len() <= 1, "one Person per Patient at most: {ps:?}");
    let pid = ps.first()?;
    let r = get(s, &format!("Person/{pid}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    Some(r.json())
}

fn link_targets(person: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = person["link"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["target"]["reference"].as_str().unwrap().to_owned(), l["assurance"].as_str().unwrap_or("").to_owned()))
        .collect();
    v.sort();
    v
}

async fn linked(s: &TestServer, a: &str, b: &str) -> bool {
    let (pa, pb) = (persons_of(s, a).await, persons_of(s, b).await);
    !pa.is_empty() && pa == pb
}

fn seealso(p: &Value) -> Vec<String> {
    p["link"]
        .as_array()
        .map(|a| a.iter().filter(|l| l["type"] == "seealso").filter_map(|l| l["other"]["reference"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

async fn review_tasks(s: &TestServer, status: &str) -> Vec<Value> {
    let b = get(s, &format!("Task?code=urn:carebridge:mpi|review&status={status}&_count=100")).await.json();
    b["entry"].as_array().map(|a| a.iter().map(|e| e["resource"].clone()).collect()).unwrap_or_default()
}

fn params(ps: Value) -> Value {
    json!({"resourceType": "Parameters", "parameter": ps})
}

async fn suite(backend: Backend) {
    let s = TestServer::start(backend).await;

    // --- deterministic: same KVNR, differently spelled names, different institutions
    let mut a = patient(MRN_A, "4711", "Müller", "Jürgen", Some("1956-03-14"), "male", "20095");
    a["identifier"].as_array_mut().unwrap().push(json!({"system": KVNR, "value": "X110411319"}));
    a["telecom"] = json!([{"system": "phone", "value": "+49 40 1234567"}]);
    let mut b = patient(MRN_B, "A-99", "Mueller", "J.", None, "male", "22087");
    b["identifier"].as_array_mut().unwrap().push(json!({"system": KVNR, "value": "X110411319"}));
    let a_id = create(&s, &a).await;
    let b_id = create(&s, &b).await;
    let person = person_of(&s, &a_id).await.expect("a Person links the two records");
    assert_eq!(
        link_targets(&person),
        {
            let mut v = vec![(format!("Patient/{a_id}"), "level3".to_owned()), (format!("Patient/{b_id}"), "level3".to_owned())];
            v.sort();
            v
        },
        "{person}"
    );
    assert_eq!(person["meta"]["tag"][0]["system"], "urn:carebridge:mpi");
    // Patient.link seealso on read, not in the stored version
    let ra = get(&s, &format!("Patient/{a_id}")).await.json();
    assert_eq!(seealso(&ra), vec![format!("Patient/{b_id}")], "{ra}");
    let stored = get(&s, &format!("Patient/{a_id}/_history/1")).await.json();
    assert!(stored.get("link").is_none(), "links are added on read, never stored: {stored}");
    // a different valid KVNR with the same demographics: certainly not the same person
    let mut c = a.clone();
    c["identifier"] = json!([{"system": MRN_B, "value": "C-1"}, {"system": KVNR, "value": "A000500015"}]);
    let c_id = create(&s, &c).await;
    assert!(persons_of(&s, &c_id).await.is_empty(), "KVNR conflict must not link");
    // the decision is explained: an AuditEvent with the score and reasons
    let ae = get(&s, &format!("AuditEvent?entity=Patient/{b_id}")).await.json();
    let descs: Vec<String> =
        ae["entry"].as_array().unwrap().iter().map(|e| e["resource"]["outcomeDesc"].as_str().unwrap_or("").to_owned()).collect();
    assert!(descs.iter().any(|d| d.starts_with("deterministic-link") && d.contains("identifier=same-trusted")), "{descs:?}");

    // --- probabilistic: each perturbation type links to its original (level2), strangers do not
    type Perturb = fn(&mut Value);
    type Base<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str);
    let cases: Vec<(&str, Base, Perturb)> = vec![
        ("typo in family", ("Schneider", "Anna", "1971-05-04", "female", "10115"), |p| p["name"][0]["family"] = json!("Schnieder")),
        ("typo in given", ("Becker", "Thomas", "1964-11-23", "male", "50667"), |p| p["name"][0]["given"][0] = json!("Tomas")),
        ("swapped given/family", ("Hoffmann", "Klaus", "1949-02-17", "male", "80331"), |p| {
            p["name"][0] = json!({"family": "Klaus", "given": ["Hoffmann"]})
        }),
        ("married name", ("Wagner", "Sabine", "1982-08-30", "female", "70173"), |p| p["name"][0]["family"] = json!("Zimmermann")),
        ("day/month swapped", ("Koch", "Peter", "1958-04-07", "male", "01067"), |p| p["birthDate"] = json!("1958-07-04")),
        ("one digit off", ("Richter", "Monika", "1975-09-12", "female", "04109"), |p| p["birthDate"] = json!("1975-09-13")),
        ("umlaut spelling + missing postcode", ("Größer", "Jörg", "1990-12-01", "male", "28195"), |p| {
            p["name"][0] = json!({"family": "Groesser", "given": ["Joerg"]});
            p.as_object_mut().unwrap().remove("address");
        }),
        ("pinyin with tone marks", ("Zhāng", "Wěi", "1988-06-15", "male", "20097"), |p| {
            p["name"][0] = json!({"family": "Zhang", "given": ["Wei"]})
        }),
        ("Han characters", ("王", "芳", "1979-01-20", "female", "20099"), |p| {
            p["address"][0]["postalCode"] = json!("20355")
        }),
    ];
    for (k, (what, (fam, giv, birth, gender, zip), perturb)) in cases.into_iter().enumerate() {
        let mut orig = patient(MRN_A, &format!("P{k}"), fam, giv, Some(birth), gender, zip);
        orig["telecom"] = json!([{"system": "phone", "value": format!("040 55501{k:02}")}]);
        let mut var = patient(MRN_B, &format!("Q{k}"), fam, giv, Some(birth), gender, zip);
        perturb(&mut var);
        let o = create(&s, &orig).await;
        let v = create(&s, &var).await;
        assert!(linked(&s, &o, &v).await, "{what}: not linked");
        let p = person_of(&s, &v).await.unwrap();
        assert!(link_targets(&p).iter().all(|(_, l)| l == "level2"), "{what}: {p}");
    }
    let stranger = create(&s, &patient(MRN_B, "S1", "Schneider", "Maria", Some("1985-01-30"), "female", "10115")).await;
    assert!(persons_of(&s, &stranger).await.is_empty(), "a stranger sharing a family name and postcode is not linked");

    // --- review queue: name and gender only (no birth date on one side) → a Task between the thresholds
    let k1 = create(&s, &patient(MRN_A, "R1", "Krüger", "Hans", Some("1970-01-01"), "male", "24103")).await;
    let k2 = create(&s, &patient(MRN_B, "R2", "Krüger", "Hans", None, "male", "24105")).await;
    assert!(!linked(&s, &k1, &k2).await, "possible matches are not linked automatically");
    let l1 = create(&s, &patient(MRN_A, "R3", "Lang", "Petra", Some("1966-03-03"), "female", "18055")).await;
    let l2 = create(&s, &patient(MRN_B, "R4", "Lang", "Petra", None, "female", "18057")).await;
    let tasks = review_tasks(&s, "requested").await;
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    let task_for = |x: &str| {
        tasks
            .iter()
            .find(|t| [t["focus"]["reference"].as_str(), t["for"]["reference"].as_str()].contains(&Some(&format!("Patient/{x}"))))
            .unwrap_or_else(|| panic!("a review Task for {x}"))
            .clone()
    };
    let t1 = task_for(&k1);
    assert!(t1["input"].as_array().unwrap().iter().any(|i| i["type"]["text"] == "score" && i["valueDecimal"].as_f64().unwrap() > 11.0));
    let r = post_json(&s, &format!("Task/{}/$confirm", t1["id"].as_str().unwrap()), &params(json!([]))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(linked(&s, &k1, &k2).await, "confirmed review links");
    assert!(link_targets(&person_of(&s, &k1).await.unwrap()).iter().all(|(_, l)| l == "level4"));
    let again = post_json(&s, &format!("Task/{}/$confirm", t1["id"].as_str().unwrap()), &params(json!([]))).await;
    assert_outcome(&again, 409);
    let t2 = task_for(&l1);
    let r = post_json(&s, &format!("Task/{}/$reject", t2["id"].as_str().unwrap()), &params(json!([{"name": "note", "valueString": "different mothers"}]))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(!linked(&s, &l1, &l2).await);
    let done = get(&s, &format!("Task/{}", t2["id"].as_str().unwrap())).await.json();
    assert_eq!(done["status"], "completed");
    assert_eq!(done["businessStatus"]["text"], "rejected");
    // an update of a rejected pair's record queues nothing new and links nothing
    let mut l2_new = patient(MRN_B, "R4", "Lang", "Petra", None, "female", "18057");
    l2_new["id"] = json!(l2);
    l2_new["telecom"] = json!([{"system": "phone", "value": "0381 777"}]);
    assert_eq!(put_json(&s, &format!("Patient/{l2}"), &l2_new).await.status, 200);
    assert!(!linked(&s, &l1, &l2).await);
    assert!(review_tasks(&s, "requested").await.is_empty());
    // bad review requests
    assert_outcome(&post_json(&s, "Task/nope/$confirm", &params(json!([]))).await, 404);

    // --- unlink, then re-link by hand
    let person_ab = persons_of(&s, &a_id).await[0].clone();
    let r = post_json(&s, "Person/$unlink", &params(json!([{"name": "patient", "valueReference": {"reference": format!("Patient/{a_id}")}}]))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(!linked(&s, &a_id, &b_id).await);
    assert_eq!(get(&s, &format!("Person/{person_ab}")).await.status, 410, "a group of one has no Person");
    assert!(seealso(&get(&s, &format!("Patient/{a_id}")).await.json()).is_empty());
    // updating the record does not link it back automatically
    let mut a2 = a.clone();
    a2["id"] = json!(a_id);
    a2["telecom"] = json!([{"system": "phone", "value": "+49 40 7654321"}]);
    assert_eq!(put_json(&s, &format!("Patient/{a_id}"), &a2).await.status, 200);
    assert!(!linked(&s, &a_id, &b_id).await, "unlinked by hand stays unlinked");
    let r = post_json(
        &s,
        "Person/$link",
        &params(json!([
            {"name": "patient", "valueReference": {"reference": format!("Patient/{a_id}")}},
            {"name": "patient", "valueReference": {"reference": format!("Patient/{b_id}")}},
        ])),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(linked(&s, &a_id, &b_id).await);
    assert!(link_targets(&person_of(&s, &a_id).await.unwrap()).iter().all(|(_, l)| l == "level4"));
    assert_outcome(&post_json(&s, "Person/$link", &params(json!([{"name": "patient", "valueReference": {"reference": "Patient/x"}}]))).await, 400);
    assert_outcome(
        &post_json(
            &s,
            "Person/$unlink",
            &params(json!([{"name": "patient", "valueReference": {"reference": "Patient/does-not-exist"}}])),
        )
        .await,
        404,
    );

    // --- $match
    let probe = patient(MRN_B, "X", "Schneider", "Anna", Some("1971-05-04"), "female", "10115");
    let r = post_json(&s, "Patient/$match", &params(json!([{"name": "resource", "resource": probe}, {"name": "count", "valueInteger": 5}]))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b = r.json();
    assert_eq!(b["type"], "searchset");
    let entries = b["entry"].as_array().unwrap();
    assert!(entries.len() >= 2 && entries.len() <= 5, "{b}");
    let scores: Vec<f64> = entries.iter().map(|e| e["search"]["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first: {scores:?}");
    assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
    assert_eq!(entries[0]["search"]["extension"][0]["url"], "http://hl7.org/fhir/StructureDefinition/match-grade");
    assert_eq!(entries[0]["search"]["extension"][0]["valueCode"], "probable");
    assert_eq!(entries[0]["resource"]["name"][0]["given"][0], "Anna");
    let mut probe_kv = patient(MRN_B, "Y", "Anders", "Name", None, "male", "99999");
    probe_kv["identifier"] = json!([{"system": KVNR, "value": "X110411319"}]);
    let r = post_json(&s, "Patient/$match", &params(json!([{"name": "resource", "resource": probe_kv}, {"name": "onlyCertainMatches", "valueBoolean": true}]))).await;
    let b = r.json();
    let mut ids = match_ids(&b);
    ids.sort();
    let mut want = vec![a_id.clone(), b_id.clone()];
    want.sort();
    assert_eq!(ids, want, "{b}");
    assert!(b["entry"].as_array().unwrap().iter().all(|e| e["search"]["extension"][0]["valueCode"] == "certain" && e["search"]["score"] == 1.0));
    assert_outcome(&post_json(&s, "Patient/$match", &params(json!([]))).await, 400);
    assert_outcome(&post_json(&s, "Patient/$match", &params(json!([{"name": "resource", "resource": {"resourceType": "Patient"}}]))).await, 400);
    assert_outcome(&get(&s, "Patient/$match").await, 405);

    // --- PIXm
    let r = get(&s, &format!("Patient/$ihe-pix?sourceIdentifier={MRN_A}|4711")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let p = r.json();
    let ids: Vec<(String, String)> = p["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["name"] == "targetIdentifier")
        .map(|x| (x["valueIdentifier"]["system"].as_str().unwrap().to_owned(), x["valueIdentifier"]["value"].as_str().unwrap().to_owned()))
        .collect();
    assert!(ids.contains(&(MRN_B.to_owned(), "A-99".to_owned())), "{p}");
    assert!(ids.contains(&(KVNR.to_owned(), "X110411319".to_owned())), "{p}");
    assert!(!ids.contains(&(MRN_A.to_owned(), "4711".to_owned())), "the source identifier is not repeated");
    let targets: Vec<&str> = p["parameter"].as_array().unwrap().iter().filter(|x| x["name"] == "targetId").filter_map(|x| x["valueReference"]["reference"].as_str()).collect();
    assert!(targets.contains(&format!("Patient/{b_id}").as_str()), "{p}");
    let r = get(&s, &format!("Patient/$ihe-pix?sourceIdentifier={MRN_A}|4711&targetSystem={MRN_B}")).await.json();
    let only: Vec<&Value> = r["parameter"].as_array().unwrap().iter().filter(|x| x["name"] == "targetIdentifier").collect();
    assert_eq!(only.len(), 1, "{r}");
    assert_eq!(only[0]["valueIdentifier"]["value"], "A-99");
    assert_outcome(&get(&s, &format!("Patient/$ihe-pix?sourceIdentifier={MRN_A}|nobody")).await, 404);
    assert_outcome(&get(&s, "Patient/$ihe-pix?sourceIdentifier=no-bar").await, 400);
    assert_outcome(&get(&s, "Patient/$ihe-pix").await, 400);

    // --- PDQm (ITI-78) query parameters on Patient search
    let q = get(&s, "Patient?family=Schneider&given=Anna&birthdate=1971-05-04&gender=female&address-postalcode=10115").await;
    assert_eq!(q.status, 200, "{}", q.text);
    assert_eq!(match_ids(&q.json()).len(), 1, "{}", q.text);
    let q = get(&s, &format!("Patient?_id={a_id}&identifier={MRN_A}|4711&telecom=%2B49%2040%207654321")).await;
    assert_eq!(match_ids(&q.json()), vec![a_id.clone()], "{}", q.text);

    // --- delete: the record leaves the index and its Person
    assert_eq!(delete(&s, &format!("Patient/{b_id}")).await.status, 204);
    assert!(persons_of(&s, &a_id).await.is_empty());
    assert!(seealso(&get(&s, &format!("Patient/{a_id}")).await.json()).is_empty());

    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mpi_sqlite() {
    suite(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mpi_postgres() {
    if postgres_url().is_none() {
        eprintln!("skipped: CAREBRIDGE_TEST_POSTGRES not set");
        return;
    }
    suite(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a40_merge_group_follows_the_survivor() {
    let s = TestServer::start(Backend::Sqlite).await;
    let v2 = |name: &str| std::fs::read(fixtures().join("hl7v2").join(name)).unwrap();
    let post = |body: Vec<u8>| send(client().post(s.url("hl7v2")).header("content-type", "x-application/hl7-v2+er7").body(body));
    let r = post(v2("adt-a40-de.hl7")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("MSA|AA"), "{}", r.text);
    let old = get(&s, "Patient?identifier=4713&_count=10").await.json();
    let old_ids = match_ids(&old);
    assert_eq!(old_ids.len(), 1, "{old}");
    let old_res = &old["entry"][0]["resource"];
    let survivor = old_res["link"].as_array().unwrap().iter().find(|l| l["type"] == "replaced-by").unwrap()["other"]["reference"]
        .as_str()
        .unwrap()
        .trim_start_matches("Patient/")
        .to_owned();
    assert!(linked(&s, &old_ids[0], &survivor).await, "the merged-away record's group follows the survivor");
    let person = person_of(&s, &old_ids[0]).await.unwrap();
    assert!(link_targets(&person).contains(&(format!("Patient/{}", old_ids[0]), "level3".to_owned())), "{person}");
    let ae = get(&s, &format!("AuditEvent?entity=Patient/{}", old_ids[0])).await.json();
    assert!(ae["entry"].as_array().unwrap().iter().any(|e| e["resource"]["subtype"][0]["code"] == "merge"), "{ae}");
    // re-delivery changes nothing
    let before = get(&s, "Person?_summary=count").await.json()["total"].clone();
    let r = post(v2("adt-a40-de.hl7")).await;
    assert!(r.text.contains("MSA|AA"));
    assert_eq!(get(&s, "Person?_summary=count").await.json()["total"], before);
    s.stop().await;
}
