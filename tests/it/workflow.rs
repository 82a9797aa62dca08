//! Network workflows end to end (issue 8), on SQLite and (with
//! `CAREBRIDGE_TEST_POSTGRES`) PostgreSQL:
//! (1) a county unit refers a patient up, the lead hospital accepts, the
//!     consultation result flows back (Task.output → DiagnosticReport), the
//!     hospital refers down; illegal transitions (422) and wrong parties
//!     (403) are refused; the requester follows its referral by subscription;
//! (2) an HL7 v2 A03 discharge notifies the municipality's endpoint within
//!     1 s, which creates a home-care Task and completes it;
//! (3) the heart-failure standard applied to a patient gives a CarePlan
//!     with activities for GP and nursing, each updating only its part;
//!     the plan is updated by its author and its care team's participants
//!     only, and only participants change the team.
//! Member callers are exercised through the pipeline with a real
//! `auth::Caller` (what `api::Req.caller` carries once authentication is on).

use crate::common::*;
use crate::subscription::{event_numbers, status_param, subscribe, subscription, Receiver, DISCHARGE, REFERRAL, TASK_STATUS};
use carebridge::auth::{Caller, MemberType};
use carebridge::pipeline::{bundle_entries, Entry, Method, Pipeline, PipelineError};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn member(id: &str, t: MemberType) -> Caller {
    Caller { client_id: format!("{id}-client"), member: Some(id.into()), member_type: t, scopes: vec!["system/*.cruds".into()], purpose_of_use: None }
}

/// PUT (or POST when the resource has no id) as `caller`, through the one write pipeline.
async fn write_as(s: &TestServer, caller: &Caller, res: &Value) -> Result<Value, PipelineError> {
    let t = res["resourceType"].as_str().unwrap();
    let (method, url) = match res["id"].as_str() {
        Some(id) => (Method::Put, format!("{t}/{id}")),
        None => (Method::Post, t.to_owned()),
    };
    let e = Entry { method, url, full_url: None, resource: Some(res.clone()), if_none_exist: None, if_match: None };
    let mut out = Pipeline::single(&s.services).by(caller).transaction(vec![e]).await?;
    Ok(serde_json::from_slice(&out.remove(0).body.unwrap()).unwrap())
}

async fn move_task(s: &TestServer, caller: &Caller, id: &str, status: &str) -> Result<Value, PipelineError> {
    let mut t = get(s, &format!("Task/{id}")).await.json();
    t["status"] = json!(status);
    write_as(s, caller, &t).await
}

fn assert_forbidden(r: Result<Value, PipelineError>) {
    match r {
        Err(PipelineError::Forbidden(o)) => assert_eq!(o.issues[0].code, carebridge::fhir::IssueType::Forbidden),
        other => panic!("expected 403 Forbidden, got {other:?}"),
    }
}

fn assert_illegal(r: Result<Value, PipelineError>) {
    match r {
        Err(PipelineError::Unprocessable(o)) => assert!(o.first_message().contains("cannot change"), "{}", o.first_message()),
        other => panic!("expected 422 illegal transition, got {other:?}"),
    }
}

async fn put_ok(s: &TestServer, res: Value) {
    let path = format!("{}/{}", res["resourceType"].as_str().unwrap(), res["id"].as_str().unwrap());
    let r = put_json(s, &path, &res).await;
    assert!(r.status == 200 || r.status == 201, "{path}: {}", r.text);
}

async fn orgs(s: &TestServer, ids: &[&str]) {
    for id in ids {
        put_ok(s, json!({"resourceType": "Organization", "id": id, "name": id})).await;
    }
}

async fn referral_suite(backend: Backend) {
    let s = TestServer::start(backend).await;
    orgs(&s, &["county", "lead"]).await;
    let (county, lead) = (member("county", MemberType::Hospital), member("lead", MemberType::Hospital));
    put_ok(&s, json!({"resourceType": "Patient", "id": "rp1", "name": [{"family": "Li", "given": ["Wei"]}]})).await;
    put_ok(&s, json!({"resourceType": "Condition", "id": "rc1", "subject": {"reference": "Patient/rp1"}, "code": {"text": "suspected myocarditis"}})).await;
    put_ok(&s, json!({"resourceType": "Observation", "id": "ro1", "status": "final", "code": {"text": "troponin"}, "subject": {"reference": "Patient/rp1"}, "valueQuantity": {"value": 0.9, "unit": "ng/mL"}})).await;

    // the lead hospital watches its worklist; the county unit follows its referrals
    let rx_lead = Receiver::start().await;
    subscribe(&s, &subscription(REFERRAL, Some("Task?owner=Organization/lead"), &rx_lead.url, "id-only")).await;
    let rx_county = Receiver::start().await;
    subscribe(&s, &subscription(TASK_STATUS, Some("Task?requester=Organization/county"), &rx_county.url, "full-resource")).await;

    // up-referral: ServiceRequest with its clinical context + the Task carrying its state, one transaction, as the county unit
    let b = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:6a1c0000-0000-4000-8000-000000000001", "request": {"method": "POST", "url": "ServiceRequest"}, "resource": {
            "resourceType": "ServiceRequest", "status": "active", "intent": "order", "code": {"text": "cardiology remote consultation"},
            "subject": {"reference": "Patient/rp1"}, "requester": {"reference": "Organization/county"}, "performer": [{"reference": "Organization/lead"}],
            "supportingInfo": [{"reference": "Condition/rc1"}, {"reference": "Observation/ro1"}]}},
        {"fullUrl": "urn:uuid:6a1c0000-0000-4000-8000-000000000002", "request": {"method": "POST", "url": "Task"}, "resource": {
            "resourceType": "Task", "status": "requested", "intent": "order", "code": {"text": "referral"},
            "focus": {"reference": "urn:uuid:6a1c0000-0000-4000-8000-000000000001"}, "for": {"reference": "Patient/rp1"},
            "requester": {"reference": "Organization/county"}, "owner": {"reference": "Organization/lead"}}}]});
    let out = Pipeline::new(&s.services).by(&county).transaction(bundle_entries(&b).unwrap()).await.unwrap();
    let task_id = out[1].target.clone().unwrap().1;
    let (nums, _) = rx_lead.wait_events(1, Duration::from_secs(5)).await;
    assert_eq!(nums, vec![1], "the lead hospital is notified of the new referral");

    // the lead hospital's worklist
    let wl = get(&s, "Task?owner=Organization/lead&status=requested,received").await.json();
    assert_eq!(match_ids(&wl), vec![task_id.clone()]);

    // who may move which state
    assert_forbidden(move_task(&s, &county, &task_id, "accepted").await);
    assert_forbidden(move_task(&s, &member("other", MemberType::GpPractice), &task_id, "received").await);
    move_task(&s, &lead, &task_id, "received").await.unwrap();
    move_task(&s, &lead, &task_id, "accepted").await.unwrap();
    assert_illegal(move_task(&s, &lead, &task_id, "completed").await); // accepted → completed skips the work
    assert_illegal(move_task(&s, &lead, &task_id, "requested").await);
    move_task(&s, &lead, &task_id, "in-progress").await.unwrap();
    // the consultation result flows back as Task.output
    let dr = write_as(&s, &lead, &json!({"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "cardiology consultation"},
        "subject": {"reference": "Patient/rp1"}, "performer": [{"reference": "Organization/lead"}], "conclusion": "no myocarditis; continue monitoring"})).await.unwrap();
    let mut t = get(&s, &format!("Task/{task_id}")).await.json();
    t["status"] = json!("completed");
    t["output"] = json!([{"type": {"text": "consultation report"}, "valueReference": {"reference": format!("DiagnosticReport/{}", dr["id"].as_str().unwrap())}}]);
    write_as(&s, &lead, &t).await.unwrap();
    assert_illegal(move_task(&s, &lead, &task_id, "in-progress").await); // completed is final
    // an illegal transition over REST answers 422 with an OperationOutcome
    let mut t = get(&s, &format!("Task/{task_id}")).await.json();
    t["status"] = json!("requested");
    assert_outcome(&put_json(&s, &format!("Task/{task_id}"), &t).await, 422);

    // the county unit followed every step; the last notification carries the result
    let (nums, _) = rx_county.wait_events(4, Duration::from_secs(5)).await;
    assert_eq!(nums, vec![1, 2, 3, 4], "received, accepted, in-progress, completed");
    let last = rx_county.events().last().cloned().unwrap();
    let task = &last["entry"].as_array().unwrap().last().unwrap()["resource"];
    assert_eq!(task["status"], "completed");
    assert!(task["output"][0]["valueReference"]["reference"].as_str().unwrap().starts_with("DiagnosticReport/"));

    // down-referral: the hospital refers the patient back; only the county unit accepts
    let down = write_as(&s, &lead, &json!({"resourceType": "Task", "status": "requested", "intent": "order", "code": {"text": "down-referral: follow-up care"},
        "for": {"reference": "Patient/rp1"}, "requester": {"reference": "Organization/lead"}, "owner": {"reference": "Organization/county"}})).await.unwrap();
    let down_id = down["id"].as_str().unwrap().to_owned();
    assert_forbidden(move_task(&s, &lead, &down_id, "accepted").await);
    move_task(&s, &county, &down_id, "accepted").await.unwrap();
    move_task(&s, &county, &down_id, "in-progress").await.unwrap();
    move_task(&s, &county, &down_id, "completed").await.unwrap();

    // the requester cancels; the owner cannot; nothing moves after
    let c = write_as(&s, &county, &json!({"resourceType": "Task", "status": "requested", "intent": "order",
        "for": {"reference": "Patient/rp1"}, "requester": {"reference": "Organization/county"}, "owner": {"reference": "Organization/lead"}})).await.unwrap();
    let cid = c["id"].as_str().unwrap().to_owned();
    assert_forbidden(move_task(&s, &lead, &cid, "cancelled").await);
    move_task(&s, &county, &cid, "cancelled").await.unwrap();
    assert_illegal(move_task(&s, &lead, &cid, "accepted").await);
    s.stop().await;
}

#[tokio::test]
async fn referral_up_and_down_sqlite() {
    referral_suite(Backend::Sqlite).await;
}

#[tokio::test]
async fn referral_up_and_down_postgres() {
    if postgres_url().is_none() {
        eprintln!("skipped: CAREBRIDGE_TEST_POSTGRES not set");
        return;
    }
    referral_suite(Backend::Postgres).await;
}

async fn discharge_suite(backend: Backend) {
    let s = TestServer::start(backend).await;
    orgs(&s, &["hamburg-home-care"]).await;
    let muni = member("hamburg-home-care", MemberType::Municipality);
    let rx = Receiver::start().await;
    // the municipality subscribes to discharges of its residents (postal code 20095)
    let mut sub = subscription(DISCHARGE, Some("Encounter?patient.address-postalcode=20095"), &rx.url, "full-resource");
    sub["channel"]["header"] = json!(["Authorization: Bearer municipality-secret"]);
    subscribe(&s, &sub).await;

    // HL7 v2 ADT^A03 from the hospital
    let msg = std::fs::read(fixtures().join("hl7v2/adt-a03-de.hl7")).unwrap();
    let t0 = Instant::now();
    let r = send(client().post(s.url("hl7v2")).header("content-type", "x-application/hl7-v2+er7").body(msg)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("MSA|AA"), "{}", r.text);
    let (nums, _) = rx.wait_events(1, Duration::from_secs(5)).await;
    let elapsed = t0.elapsed();
    assert_eq!(nums, vec![1]);
    assert!(elapsed < Duration::from_secs(1), "the municipality is notified within 1 s of the discharge (took {elapsed:?})");
    let note = rx.events()[0].clone();
    assert_eq!(status_param(&note, "topic").as_deref(), Some(DISCHARGE));
    let enc = &note["entry"][1]["resource"];
    assert_eq!(enc["resourceType"], "Encounter");
    assert_eq!(enc["status"], "finished");
    let patient = enc["subject"]["reference"].as_str().unwrap().to_owned();

    // the municipality's home-care team creates and completes its Task
    let t = write_as(&s, &muni, &json!({"resourceType": "Task", "status": "requested", "intent": "order", "code": {"text": "home care after discharge"},
        "for": {"reference": patient}, "focus": {"reference": format!("Encounter/{}", enc["id"].as_str().unwrap())},
        "requester": {"reference": "Organization/hamburg-home-care"}, "owner": {"reference": "Organization/hamburg-home-care"}})).await.unwrap();
    let id = t["id"].as_str().unwrap().to_owned();
    for st in ["accepted", "in-progress", "completed"] {
        move_task(&s, &muni, &id, st).await.unwrap();
    }
    assert_eq!(get(&s, &format!("Task/{id}")).await.json()["status"], "completed");
    // re-delivery of the same message is a no-op: no second event
    let msg = std::fs::read(fixtures().join("hl7v2/adt-a03-de.hl7")).unwrap();
    let r = send(client().post(s.url("hl7v2")).header("content-type", "x-application/hl7-v2+er7").body(msg)).await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(event_numbers(&rx.events()), vec![1]);
    s.stop().await;
}

#[tokio::test]
async fn discharge_to_home_care_sqlite() {
    discharge_suite(Backend::Sqlite).await;
}

#[tokio::test]
async fn discharge_to_home_care_postgres() {
    if postgres_url().is_none() {
        eprintln!("skipped: CAREBRIDGE_TEST_POSTGRES not set");
        return;
    }
    discharge_suite(Backend::Postgres).await;
}

const MT: &str = "https://carebridge.example/fhir/CodeSystem/member-type";

async fn standards_suite(backend: Backend) {
    let s = TestServer::start(backend).await;
    for f in ["heart-failure-follow-up.json", "chronic-wound-care-home.json"] {
        let b: Value = serde_json::from_slice(&std::fs::read(fixtures().join("standards").join(f)).unwrap()).unwrap();
        let r = post_json(&s, "", &b).await;
        assert_eq!(r.status, 200, "{f}: {}", r.text);
    }
    orgs(&s, &["hospital", "gp", "nursing"]).await;
    let (gp, nursing) = (member("gp", MemberType::GpPractice), member("nursing", MemberType::NursingService));
    put_ok(&s, json!({"resourceType": "Patient", "id": "hf1", "name": [{"family": "Jensen", "given": ["Karen"]}]})).await;
    put_ok(&s, json!({"resourceType": "CareTeam", "id": "team-hf1", "status": "active", "subject": {"reference": "Patient/hf1"},
        "participant": [
            {"role": [{"coding": [{"system": MT, "code": "hospital"}]}], "member": {"reference": "Organization/hospital"}},
            {"role": [{"coding": [{"system": MT, "code": "gp-practice"}]}], "member": {"reference": "Organization/gp"}},
            {"role": [{"coding": [{"system": MT, "code": "nursing-service"}]}], "member": {"reference": "Organization/nursing"}}]})).await;

    // bad requests
    assert_outcome(&get(&s, "PlanDefinition/hf-discharge-gp-followup/$apply").await, 400);
    assert_outcome(&get(&s, "PlanDefinition/no-such-plan/$apply?subject=Patient/hf1").await, 404);
    assert_outcome(&get(&s, "PlanDefinition/hf-discharge-gp-followup/$apply?subject=Patient/nobody").await, 422);

    let r = get(&s, "PlanDefinition/hf-discharge-gp-followup/$apply?subject=Patient/hf1&careTeam=CareTeam/team-hf1&organization=Organization/hospital").await;
    assert_eq!(r.status, 201, "{}", r.text);
    let cp = r.json();
    assert_eq!(cp["resourceType"], "CarePlan");
    assert!(r.header("location").unwrap().contains(&format!("CarePlan/{}", cp["id"].as_str().unwrap())));
    assert_eq!(cp["instantiatesCanonical"][0], "https://carebridge.example/fhir/PlanDefinition/hf-discharge-gp-followup|1.0.0");
    assert_eq!(cp["careTeam"][0]["reference"], "CareTeam/team-hf1");
    assert_eq!(cp["activity"].as_array().unwrap().len(), 3);
    let cp_id = cp["id"].as_str().unwrap();
    let tasks = get(&s, &format!("Task?based-on=CarePlan/{cp_id}&_count=50")).await.json();
    let tasks: Vec<Value> = tasks["entry"].as_array().unwrap().iter().map(|e| e["resource"].clone()).collect();
    assert_eq!(tasks.len(), 3, "GP visit, nursing visit, the weight monitoring's Task");
    let by_code = |c: &str| tasks.iter().find(|t| t["code"]["coding"][0]["code"] == c).cloned().unwrap_or_else(|| panic!("task {c}"));
    let gp_task = by_code("gp-follow-up");
    assert_eq!(gp_task["owner"]["reference"], "Organization/gp");
    assert_eq!(gp_task["requester"]["reference"], "Organization/hospital");
    assert_eq!(gp_task["instantiatesCanonical"], "https://carebridge.example/fhir/ActivityDefinition/hf-gp-visit|1.0.0");
    assert!(gp_task["restriction"]["period"]["end"].is_string(), "due within 7 days");
    let nurse_task = by_code("nursing-home-visit");
    assert_eq!(nurse_task["owner"]["reference"], "Organization/nursing");
    let sr = get(&s, &format!("ServiceRequest?based-on=CarePlan/{cp_id}")).await.json();
    assert_eq!(sr["total"], 1);
    assert_eq!(sr["entry"][0]["resource"]["occurrenceTiming"]["repeat"]["period"], 1);
    assert_eq!(sr["entry"][0]["resource"]["performer"][0]["reference"], "Organization/nursing");

    // each participant updates its own part only
    let (gid, nid) = (gp_task["id"].as_str().unwrap(), nurse_task["id"].as_str().unwrap());
    assert_forbidden(move_task(&s, &nursing, gid, "accepted").await);
    assert_forbidden(move_task(&s, &gp, nid, "accepted").await);
    for st in ["accepted", "in-progress", "completed"] {
        move_task(&s, &gp, gid, st).await.unwrap();
    }
    move_task(&s, &nursing, nid, "accepted").await.unwrap();
    move_task(&s, &nursing, nid, "in-progress").await.unwrap();
    let done = get(&s, &format!("Task?based-on=CarePlan/{cp_id}&status=completed")).await.json();
    assert_eq!(match_ids(&done), vec![gid.to_owned()]);

    // the plan itself: its author and its care team's participants update it, nobody else
    let (hospital, outsider) = (member("hospital", MemberType::Hospital), member("other", MemberType::Hospital));
    let mut plan = get(&s, &format!("CarePlan/{cp_id}")).await.json();
    plan["note"] = json!([{"text": "first nursing visit done"}]);
    write_as(&s, &nursing, &plan).await.unwrap();
    plan["note"] = json!([{"text": "first nursing visit done"}, {"text": "GP visit booked"}]);
    write_as(&s, &gp, &plan).await.unwrap();
    assert_forbidden(write_as(&s, &outsider, &plan).await);
    // only the author changes who authors it or which team carries it
    let mut taken = plan.clone();
    taken["author"] = json!({"reference": "Organization/gp"});
    assert_forbidden(write_as(&s, &gp, &taken).await);
    let mut reteamed = plan.clone();
    reteamed["careTeam"] = json!([{"reference": "CareTeam/team-hf1"}, {"reference": "CareTeam/team-other"}]);
    assert_forbidden(write_as(&s, &nursing, &reteamed).await);
    write_as(&s, &hospital, &reteamed).await.unwrap();
    assert_eq!(get(&s, &format!("CarePlan/{cp_id}")).await.json()["note"].as_array().unwrap().len(), 2);
    // the team: its participants change it, an outsider cannot join on its own
    let mut team = get(&s, "CareTeam/team-hf1").await.json();
    team["participant"].as_array_mut().unwrap().push(json!({"member": {"reference": "Organization/other"}}));
    assert_forbidden(write_as(&s, &outsider, &team).await);
    write_as(&s, &gp, &team).await.unwrap();
    let mut current = get(&s, &format!("CarePlan/{cp_id}")).await.json();
    current["note"].as_array_mut().unwrap().push(json!({"text": "joined the team"}));
    write_as(&s, &outsider, &current).await.unwrap(); // now a participant: may update the plan

    // the wound-care standard without a care team: activities without owners
    let r = get(&s, "PlanDefinition/chronic-wound-care-home/$apply?subject=Patient/hf1").await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["activity"].as_array().unwrap().len(), 4);
    s.stop().await;
}

#[tokio::test]
async fn treatment_standard_care_plan_sqlite() {
    standards_suite(Backend::Sqlite).await;
}

#[tokio::test]
async fn treatment_standard_care_plan_postgres() {
    if postgres_url().is_none() {
        eprintln!("skipped: CAREBRIDGE_TEST_POSTGRES not set");
        return;
    }
    standards_suite(Backend::Postgres).await;
}
