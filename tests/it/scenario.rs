//! The cross-sector network as one story (issue 7 "the scenario of a
//! cross-sector network written as one end-to-end test", issue 8 "referral
//! flows checked against member roles at the REST level" and "cross-sector
//! care plans"), on SQLite and (with `CAREBRIDGE_TEST_POSTGRES`) PostgreSQL.
//!
//! The gateway runs as in production: SMART Backend Services
//! authentication, the shipped role policy, and the region's default access
//! policy (care relationship **and** Consent, opt-in). The members
//! (`fixtures/scenario/network.json`: hospital, GP practice, nursing
//! service, therapist, pharmacy, municipality, insurer, a second hospital's
//! emergency department, the integration engine and the operator) each get
//! an access token from `POST /auth/token` with a signed client assertion;
//! every step below is a plain HTTP request with that bearer token, and
//! every answer's status and content is checked.
//!
//! The story of Erika Mustermann, heart failure:
//!  1. the operator registers the members and loads the treatment standards;
//!     the municipality subscribes to discharges of its residents;
//!  2. her GP's record arrives through the integration engine; without her
//!     Consent (opt-in region) not even the treating GP sees it, with it
//!     the GP does, the hospital (no relationship) does not;
//!  3. the GP refers her up (ServiceRequest + Task owned by the hospital):
//!     the referral gives the hospital her context, third parties can
//!     neither read nor move it, the hospital takes every step of the work
//!     and returns the result, illegal steps are 422, a draft is cancelled
//!     by its requester only;
//!  4. the hospital discharges her: the municipality is notified (id-only,
//!     it has no relationship yet), opens a home-care Task and from then on
//!     sees the discharge;
//!  5. the hospital applies the heart-failure standard with her care team
//!     (hospital, GP, nursing, therapist, pharmacy, municipality): each
//!     participant moves its own activity and no other, participants update
//!     the care plan, outsiders cannot;
//!  6. she withdraws the pharmacy's access: the pharmacy is refused, her
//!     GP's `$summary` still works;
//!  7. another hospital's emergency department breaks the glass;
//!  8. the insurer gets no patient data, but a suppressed summary report
//!     and a de-identified export;
//!  9. the operator finds every access of the story in the audit trail —
//!     reads, refusals, break-glass, changes, subscription operations,
//!     export polls and downloads; nobody else may search it.

use crate::common::*;
use crate::subscription::{status_param, Receiver, DISCHARGE};
use carebridge::api::ApiConfig;
use carebridge::report::ReportConfig;
use carebridge::services::access::AccessConfig;
use carebridge::services::ValidationMode;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

const MEMBER_TYPE: &str = "https://carebridge.example/fhir/CodeSystem/member-type";
const ACTIVITY: &str = "https://carebridge.example/fhir/CodeSystem/care-activity";
const PATIENT: &str = "Patient/erika";

struct Member {
    key: String,
    id: String,
    member_type: String,
    name: String,
    client: String,
}

/// The running gateway and one access token per member.
struct Network {
    s: TestServer,
    members: Vec<Member>,
    tokens: HashMap<String, String>,
    _export_dir: tempfile::TempDir,
}

impl Network {
    async fn start(backend: Backend) -> Network {
        let f: Value = serde_json::from_slice(&std::fs::read(fixtures().join("scenario/network.json")).unwrap()).unwrap();
        let s = |m: &Value, k: &str| m[k].as_str().unwrap().to_owned();
        let members: Vec<Member> = f["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| Member { key: s(m, "key"), id: s(m, "id"), member_type: s(m, "type"), name: s(m, "name"), client: s(m, "client") })
            .collect();
        let mut toml = String::from("signing_key = \"gateway-es256.pem\"\nclock_skew_seconds = 60\ntoken_lifetime_seconds = 3600\n");
        for m in &members {
            toml.push_str(&format!("[[member]]\nid = \"{}\"\ntype = \"{}\"\n", m.id, m.member_type));
        }
        for m in &members {
            toml.push_str(&format!(
                "[[client]]\nclient_id = \"{}\"\nmember = \"{}\"\njwks = \"es384-client.jwks.json\"\nscopes = [\"system/*.cruds\"]\n",
                m.client, m.id
            ));
        }
        let export_dir = tempfile::tempdir().unwrap();
        let api = ApiConfig {
            auth: Some(authenticator_from(&toml)),
            report: ReportConfig { export_dir: export_dir.path().to_path_buf(), ..Default::default() },
            ..Default::default()
        };
        // the region's default: care relationship required, Consent opt-in, break-glass ETREAT/BTG
        let s = TestServer::start_api_access(backend, api, ValidationMode::Enforce, AccessConfig::default()).await;
        let mut tokens = HashMap::new();
        for m in &members {
            tokens.insert(m.key.clone(), token_for(&s, &m.client).await);
        }
        Network { s, members, tokens, _export_dir: export_dir }
    }

    fn member(&self, key: &str) -> &Member {
        self.members.iter().find(|m| m.key == key).unwrap_or_else(|| panic!("member {key}"))
    }

    /// `Organization/{id}` of a member.
    fn org(&self, key: &str) -> String {
        format!("Organization/{}", self.member(key).id)
    }

    fn req(&self, key: &str, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        client().request(method, self.s.url(path)).bearer_auth(&self.tokens[key])
    }

    async fn get(&self, key: &str, path: &str) -> Resp {
        send(self.req(key, reqwest::Method::GET, path)).await
    }

    /// A read asserting a purpose of use (`X-Purpose-Of-Use`).
    async fn get_for(&self, key: &str, path: &str, purpose: &str) -> Resp {
        send(self.req(key, reqwest::Method::GET, path).header("x-purpose-of-use", purpose)).await
    }

    async fn post(&self, key: &str, path: &str, body: &Value) -> Resp {
        send(self.req(key, reqwest::Method::POST, path).header("content-type", "application/fhir+json").body(body.to_string())).await
    }

    /// `PUT [type]/[id]` of the resource.
    async fn put(&self, key: &str, res: &Value) -> Resp {
        let path = format!("{}/{}", res["resourceType"].as_str().unwrap(), res["id"].as_str().unwrap());
        send(self.req(key, reqwest::Method::PUT, &path).header("content-type", "application/fhir+json").body(res.to_string())).await
    }

    /// Read a Task as `key`, set its status, write it back.
    async fn move_task(&self, key: &str, id: &str, status: &str) -> Resp {
        let mut t = expect(&self.get(key, &format!("Task/{id}")).await, 200, &format!("{key} reads Task/{id}"));
        t["status"] = json!(status);
        self.put(key, &t).await
    }

    /// Ids of the matches of a search as `key`.
    async fn search_ids(&self, key: &str, path: &str) -> Vec<String> {
        let b = expect(&self.get(key, path).await, 200, &format!("{key} searches {path}"));
        let ids = match_ids(&b);
        if let Some(t) = b["total"].as_u64() {
            assert_eq!(t as usize, ids.len(), "{key} {path}: total counts what the caller gets");
        }
        ids
    }
}

/// The body of an answer with the expected status.
#[track_caller]
fn expect(r: &Resp, status: u16, what: &str) -> Value {
    assert_eq!(r.status, status, "{what}: expected {status}, got {}: {}", r.status, r.text);
    r.json()
}

/// A refusal: the status, an OperationOutcome, and why.
#[track_caller]
fn refused(r: &Resp, status: u16, what: &str, why: &str) {
    assert_eq!(r.status, status, "{what}: expected {status}, got {}: {}", r.status, r.text);
    let o = r.json();
    assert_eq!(o["resourceType"], "OperationOutcome", "{what}: {}", r.text);
    let code = o["issue"][0]["code"].as_str().unwrap_or("");
    let want = match status {
        403 => "forbidden",
        422 => "business-rule",
        _ => code,
    };
    assert_eq!(code, want, "{what}: {}", r.text);
    assert!(r.diagnostics().contains(why), "{what}: expected '{why}' in '{}'", r.diagnostics());
}

/// The id a transaction-response entry created (`Type/id/_history/n`).
fn created_id(resp: &Value, i: usize) -> String {
    let loc = resp["entry"][i]["response"]["location"].as_str().unwrap_or_else(|| panic!("entry {i} has a location: {resp}"));
    loc.split('/').nth(1).unwrap().to_owned()
}

fn add_note(plan: &mut Value, text: &str) {
    let notes = plan.as_object_mut().unwrap().entry("note").or_insert_with(|| json!([]));
    notes.as_array_mut().unwrap().push(json!({"text": text}));
}

fn reference(r: &str) -> Value {
    json!({"reference": r})
}

fn task(code: &str, text: &str, status: &str, requester: &str, owner: &str) -> Value {
    json!({"resourceType": "Task", "status": status, "intent": "order",
        "code": {"coding": [{"system": ACTIVITY, "code": code}], "text": text},
        "for": reference(PATIENT), "requester": reference(requester), "owner": reference(owner)})
}

/// Erika's privacy Consent (R4 consent.html, scope `patient-privacy`):
/// share with the members that treat her, with `exceptions` nested.
fn privacy_consent(exceptions: Vec<Value>) -> Value {
    let mut provision = json!({"type": "permit"});
    if !exceptions.is_empty() {
        provision["provision"] = json!(exceptions);
    }
    json!({"resourceType": "Consent", "id": "erika-privacy", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": reference(PATIENT), "dateTime": "2024-01-01",
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": provision})
}

async fn story(backend: Backend) {
    let net = Network::start(backend).await;
    let today = carebridge::fhir::datetime::format_instant(carebridge::fhir::datetime::now_micros());
    let year = &today[..4];

    // ---- 1. the network -------------------------------------------------
    for m in &net.members {
        let org = json!({"resourceType": "Organization", "id": m.id, "active": true, "name": m.name,
            "type": [{"coding": [{"system": MEMBER_TYPE, "code": m.member_type}]}]});
        let r = net.put("operator", &org).await;
        assert!(r.status == 201 || r.status == 200, "operator registers {}: {}", m.id, r.text);
    }
    // every member sees the directory; only the operator maintains it
    assert_eq!(net.search_ids("pharmacy", "Organization?_count=50").await.len(), net.members.len());
    refused(&net.put("hospital", &json!({"resourceType": "Organization", "id": "klinikum-nord", "name": "renamed"})).await, 403, "hospital edits the directory", "may not use 'update' on Organization");
    let standards: Value = serde_json::from_slice(&std::fs::read(fixtures().join("standards/heart-failure-follow-up.json")).unwrap()).unwrap();
    expect(&net.post("operator", "", &standards).await, 200, "operator loads the heart-failure standard");
    refused(&net.post("hospital", "", &standards).await, 403, "only the operator publishes standards", "may not use 'update' on ActivityDefinition");

    // the municipality wants to hear of every discharge of its residents
    let rx = Receiver::start().await;
    let sub = json!({"resourceType": "Subscription", "status": "requested", "reason": "home care after discharge",
        "criteria": DISCHARGE,
        "_criteria": {"extension": [{"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria",
                                      "valueString": "Encounter?patient.address-postalcode=20095"}]},
        "channel": {"type": "rest-hook", "endpoint": rx.url, "payload": "application/fhir+json", "header": ["Authorization: Bearer municipality-secret"],
                    "_payload": {"extension": [{"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content", "valueCode": "full-resource"}]}}});
    let sub = expect(&net.post("municipality", "Subscription", &sub).await, 201, "municipality subscribes");
    assert_eq!(sub["status"], "active");
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    // its channel (with the bearer secret) is nobody else's business
    refused(&net.get("pharmacy", &format!("Subscription/{sub_id}")).await, 403, "pharmacy reads the municipality's subscription", "may not use 'read' on Subscription");
    refused(&net.get("pharmacy", &format!("Subscription/{sub_id}/$status")).await, 403, "pharmacy asks its $status", "belongs to another member");
    let st = expect(&net.get("municipality", &format!("Subscription/{sub_id}/$status")).await, 200, "municipality asks its $status");
    assert_eq!(status_param(&st, "status").as_deref(), Some("active"));

    // ---- 2. the GP's record, and her Consent ------------------------------
    let gp_record = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "PUT", "url": "Patient/erika"}, "resource": {"resourceType": "Patient", "id": "erika",
            "name": [{"family": "Mustermann", "given": ["Erika"]}], "gender": "female", "birthDate": "1948-08-12",
            "address": [{"line": ["Eppendorfer Weg 12"], "city": "Hamburg", "postalCode": "20095", "country": "DE"}]}},
        {"request": {"method": "PUT", "url": "Encounter/erika-gp-visit"}, "resource": {"resourceType": "Encounter", "id": "erika-gp-visit",
            "status": "in-progress", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": reference(PATIENT), "serviceProvider": reference(&net.org("gp")), "period": {"start": today}}},
        {"request": {"method": "PUT", "url": "Condition/erika-suspected-hf"}, "resource": {"resourceType": "Condition", "id": "erika-suspected-hf",
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "provisional"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "84114007", "display": "Heart failure"}]},
            "subject": reference(PATIENT), "encounter": reference("Encounter/erika-gp-visit"), "recordedDate": today}},
        {"request": {"method": "PUT", "url": "Observation/erika-ntprobnp"}, "resource": {"resourceType": "Observation", "id": "erika-ntprobnp",
            "status": "final", "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "33762-6", "display": "NT-proBNP"}]},
            "subject": reference(PATIENT), "effectiveDateTime": today, "valueQuantity": {"value": 2400, "unit": "pg/mL", "system": "http://unitsofmeasure.org", "code": "pg/mL"}}}]});
    expect(&net.post("engine", "", &gp_record).await, 200, "integration engine delivers the GP's record");
    // the engine writes, it does not read patient data
    refused(&net.get("engine", PATIENT).await, 403, "engine reads", "may not use 'read' on Patient");
    // opt-in region: the treating GP sees nothing until she consents
    refused(&net.get("gp", PATIENT).await, 403, "GP before her Consent", "consent does not permit");
    expect(&net.put("gp", &privacy_consent(vec![])).await, 201, "GP records her privacy Consent");
    assert_eq!(expect(&net.get("gp", PATIENT).await, 200, "GP after her Consent")["name"][0]["family"], "Mustermann");
    // members without a care relationship are refused, their searches come back empty
    for key in ["hospital", "nursing", "pharmacy", "municipality"] {
        refused(&net.get(key, PATIENT).await, 403, &format!("{key} without relationship"), "no care relationship");
    }
    assert!(net.search_ids("hospital", "Patient?family=Mustermann").await.is_empty());
    assert!(net.search_ids("hospital", "Condition?subject=Patient/erika").await.is_empty());
    assert_eq!(net.search_ids("gp", "Condition?subject=Patient/erika").await, vec!["erika-suspected-hf"]);

    // ---- 3. referral up ----------------------------------------------------
    let referral = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:9b1f0e52-0000-4000-8000-000000000001", "request": {"method": "POST", "url": "ServiceRequest"}, "resource": {
            "resourceType": "ServiceRequest", "status": "active", "intent": "order", "priority": "urgent",
            "code": {"text": "cardiology admission: suspected decompensated heart failure"},
            "subject": reference(PATIENT), "requester": reference(&net.org("gp")), "performer": [reference(&net.org("hospital"))],
            "supportingInfo": [reference("Condition/erika-suspected-hf"), reference("Observation/erika-ntprobnp")]}},
        {"fullUrl": "urn:uuid:9b1f0e52-0000-4000-8000-000000000002", "request": {"method": "POST", "url": "Task"}, "resource": {
            "resourceType": "Task", "status": "requested", "intent": "order", "code": {"text": "referral"},
            "focus": reference("urn:uuid:9b1f0e52-0000-4000-8000-000000000001"), "for": reference(PATIENT),
            "requester": reference(&net.org("gp")), "owner": reference(&net.org("hospital"))}}]});
    let out = expect(&net.post("gp", "", &referral).await, 200, "GP refers her to the hospital");
    let (sr_id, ref_id) = (created_id(&out, 0), created_id(&out, 1));
    // the hospital's worklist, and the context the referral opens to it
    assert_eq!(net.search_ids("hospital", "Task?owner=Organization/klinikum-nord&status=requested,received").await, vec![ref_id.clone()]);
    assert_eq!(expect(&net.get("hospital", "Condition/erika-suspected-hf").await, 200, "hospital reads the referral's Condition")["code"]["coding"][0]["code"], "84114007");
    expect(&net.get("hospital", "Observation/erika-ntprobnp").await, 200, "hospital reads the referral's lab value");
    expect(&net.get("hospital", PATIENT).await, 200, "hospital reads the referred patient");
    refused(&net.get("therapist", "Condition/erika-suspected-hf").await, 403, "therapist is not part of the referral", "no care relationship");
    // who may do what with it
    refused(&net.post("insurer", "Task", &task("referral", "x", "requested", &net.org("gp"), &net.org("hospital"))).await, 403, "insurer creates a Task", "may not use 'create' on Task");
    refused(&net.post("pharmacy", "ServiceRequest", &json!({"resourceType": "ServiceRequest"})).await, 403, "pharmacy orders", "may not use 'create' on ServiceRequest");
    let gp_copy = expect(&net.get("gp", &format!("Task/{ref_id}")).await, 200, "GP reads its referral");
    let mut moved = gp_copy.clone();
    moved["status"] = json!("received");
    refused(&net.put("pharmacy", &moved).await, 403, "pharmacy moves the referral", "only its owner may");
    moved["status"] = json!("accepted");
    refused(&net.put("gp", &moved).await, 403, "requester accepts its own referral", "only its owner may");
    expect(&net.move_task("hospital", &ref_id, "received").await, 200, "hospital: received");
    let mut rerouted = expect(&net.get("hospital", &format!("Task/{ref_id}")).await, 200, "hospital reads the referral");
    rerouted["owner"] = reference(&net.org("er"));
    refused(&net.put("hospital", &rerouted).await, 403, "owner hands the referral on", "may not change the owner");
    expect(&net.move_task("hospital", &ref_id, "accepted").await, 200, "hospital: accepted");
    refused(&net.move_task("hospital", &ref_id, "completed").await, 422, "accepted → completed skips the work", "cannot change from 'accepted' to 'completed'");
    expect(&net.move_task("hospital", &ref_id, "in-progress").await, 200, "hospital: in-progress");
    // she is admitted (the hospital's ADT through the engine)
    let admission = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "PUT", "url": "Encounter/erika-kln-stay"}, "resource": {"resourceType": "Encounter", "id": "erika-kln-stay",
            "status": "in-progress", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": reference(PATIENT), "serviceProvider": reference(&net.org("hospital")), "basedOn": [reference(&format!("ServiceRequest/{sr_id}"))],
            "period": {"start": today}}},
        {"request": {"method": "PUT", "url": "Condition/erika-hf"}, "resource": {"resourceType": "Condition", "id": "erika-hf",
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
            "code": {"coding": [{"system": "http://fhir.de/CodeSystem/bfarm/icd-10-gm", "code": "I50.13", "display": "Linksherzinsuffizienz"}]},
            "subject": reference(PATIENT), "encounter": reference("Encounter/erika-kln-stay"), "recordedDate": today}}]});
    expect(&net.post("engine", "", &admission).await, 200, "integration engine delivers the admission");
    // the result flows back as Task.output; the request is fulfilled
    let report = expect(&net.post("hospital", "DiagnosticReport", &json!({"resourceType": "DiagnosticReport", "status": "final",
        "code": {"text": "cardiology work-up"}, "subject": reference(PATIENT), "performer": [reference(&net.org("hospital"))],
        "conclusion": "HFrEF, LVEF 30 %; recompensated; follow-up per regional heart-failure standard"})).await, 201, "hospital writes its report");
    let report_ref = format!("DiagnosticReport/{}", report["id"].as_str().unwrap());
    let mut t = expect(&net.get("hospital", &format!("Task/{ref_id}")).await, 200, "hospital reads the referral");
    t["status"] = json!("completed");
    t["output"] = json!([{"type": {"text": "consultation report"}, "valueReference": reference(&report_ref)}]);
    expect(&net.put("hospital", &t).await, 200, "hospital: completed with output");
    let mut sr = expect(&net.get("hospital", &format!("ServiceRequest/{sr_id}")).await, 200, "hospital reads the request");
    sr["status"] = json!("completed");
    expect(&net.put("hospital", &sr).await, 200, "hospital fulfils the request");
    refused(&net.move_task("hospital", &ref_id, "in-progress").await, 422, "completed is final", "cannot change from 'completed'");
    // the GP follows its referral and reads the result
    let back = expect(&net.get("gp", &format!("Task/{ref_id}")).await, 200, "GP reads the finished referral");
    assert_eq!(back["status"], "completed");
    assert_eq!(back["output"][0]["valueReference"]["reference"], report_ref.as_str());
    assert!(expect(&net.get("gp", &report_ref).await, 200, "GP reads the report")["conclusion"].as_str().unwrap().starts_with("HFrEF"));
    // a draft referral to the therapist: only its requester sends or cancels it
    let draft = expect(&net.post("gp", "Task", &task("cardiac-rehab", "outpatient cardiac rehabilitation", "draft", &net.org("gp"), &net.org("therapist"))).await, 201, "GP drafts a referral");
    let draft_id = draft["id"].as_str().unwrap().to_owned();
    let mut d = draft.clone();
    d["status"] = json!("cancelled");
    refused(&net.put("therapist", &d).await, 403, "owner cancels a draft", "only its requester may");
    expect(&net.put("gp", &d).await, 200, "requester cancels its draft");
    d["status"] = json!("accepted");
    refused(&net.put("therapist", &d).await, 422, "nothing moves after cancelled", "cannot change from 'cancelled'");
    assert_eq!(expect(&net.get("gp", &format!("Task/{draft_id}")).await, 200, "GP reads the draft")["status"], "cancelled");

    // ---- 4. discharge, home care -------------------------------------------
    let mut stay = expect(&net.get("hospital", "Encounter/erika-kln-stay").await, 200, "hospital reads the stay");
    stay["status"] = json!("finished");
    stay["period"]["end"] = json!(carebridge::fhir::datetime::format_instant(carebridge::fhir::datetime::now_micros()));
    expect(&net.put("hospital", &stay).await, 200, "hospital discharges her");
    let (nums, _) = rx.wait_events(1, Duration::from_secs(10)).await;
    assert_eq!(nums, vec![1], "the municipality is notified of the discharge");
    let note = rx.events()[0].clone();
    assert_eq!(status_param(&note, "topic").as_deref(), Some(DISCHARGE));
    let focus = &note["entry"][1];
    assert!(focus["fullUrl"].as_str().unwrap().ends_with("Encounter/erika-kln-stay"), "{note}");
    assert!(focus.get("resource").is_none(), "no care relationship yet: the discharge goes out id-only: {note}");
    refused(&net.get("municipality", "Encounter/erika-kln-stay").await, 403, "municipality reads the discharge", "no care relationship");
    // the municipality's care point opens a home-care case: from then on it treats her
    let mut home = task("home-care", "home help after discharge", "requested", &net.org("municipality"), &net.org("municipality"));
    home["focus"] = reference("Encounter/erika-kln-stay");
    let home = expect(&net.post("municipality", "Task", &home).await, 201, "municipality opens a home-care Task");
    let home_id = home["id"].as_str().unwrap().to_owned();
    assert_eq!(expect(&net.get("municipality", "Encounter/erika-kln-stay").await, 200, "municipality reads the discharge now")["status"], "finished");
    let replay = expect(&net.get("municipality", &format!("Subscription/{sub_id}/$events?eventsSinceNumber=1")).await, 200, "municipality replays the event");
    assert_eq!(replay["entry"][1]["resource"]["id"], "erika-kln-stay", "the replay carries the resource it may now see: {replay}");
    for st in ["accepted", "in-progress", "completed"] {
        expect(&net.move_task("municipality", &home_id, st).await, 200, &format!("municipality: {st}"));
    }

    // ---- 5. the heart-failure standard, applied with her care team -----------
    let participants = ["hospital", "gp", "nursing", "therapist", "pharmacy", "municipality"];
    let team = json!({"resourceType": "CareTeam", "id": "erika-team", "status": "active", "name": "Heart failure follow-up",
        "subject": reference(PATIENT), "managingOrganization": [reference(&net.org("hospital"))],
        "participant": participants.iter().map(|k| json!({
            "role": [{"coding": [{"system": MEMBER_TYPE, "code": net.member(k).member_type}]}],
            "member": reference(&net.org(k))})).collect::<Vec<_>>()});
    expect(&net.put("hospital", &team).await, 201, "hospital forms her care team");
    let apply = "PlanDefinition/hf-discharge-gp-followup/$apply?subject=Patient/erika&careTeam=CareTeam/erika-team&encounter=Encounter/erika-kln-stay";
    refused(&net.get("insurer", apply).await, 403, "insurer applies a standard", "may not use 'create' on CarePlan");
    refused(&net.get("pharmacy", apply).await, 403, "pharmacy applies a standard that orders", "may not use 'create' on ServiceRequest");
    let r = net.get("hospital", apply).await;
    let plan = expect(&r, 201, "hospital applies the heart-failure standard");
    let plan_id = plan["id"].as_str().unwrap().to_owned();
    assert!(r.header("location").unwrap().contains(&format!("CarePlan/{plan_id}")));
    assert_eq!(plan["author"]["reference"], net.org("hospital").as_str(), "the caller's member authors the plan");
    assert_eq!(plan["careTeam"][0]["reference"], "CareTeam/erika-team");
    assert_eq!(net.search_ids("hospital", "CarePlan?subject=Patient/erika").await, vec![plan_id.clone()], "the refused $apply calls wrote nothing");
    // the discharge manager adds the other sectors' activities to the plan (the author may)
    let extra = [("therapist", "exercise-training", "supervised exercise training"), ("pharmacy", "medication-review", "medication review after discharge"), ("municipality", "home-help", "home help assessment")];
    let mut entries = vec![];
    let mut updated = plan.clone();
    for (i, (k, code, text)) in extra.iter().enumerate() {
        let urn = format!("urn:uuid:9b1f0e52-0000-4000-8000-0000000001{i:02}");
        let mut t = task(code, text, "requested", &net.org("hospital"), &net.org(k));
        t["intent"] = json!("plan");
        t["basedOn"] = json!([reference(&format!("CarePlan/{plan_id}"))]);
        entries.push(json!({"fullUrl": urn, "request": {"method": "POST", "url": "Task"}, "resource": t}));
        updated["activity"].as_array_mut().unwrap().push(json!({"reference": {"reference": urn, "display": text}}));
    }
    entries.push(json!({"request": {"method": "PUT", "url": format!("CarePlan/{plan_id}")}, "resource": updated}));
    expect(&net.post("hospital", "", &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).await, 200, "hospital adds three activities");
    // each participant finds its own activities among the plan's
    let mut own: HashMap<&str, Vec<String>> = HashMap::new();
    for k in &participants[1..] {
        let ids = net.search_ids(k, &format!("Task?based-on=CarePlan/{plan_id}&owner={}", net.org(k))).await;
        assert!(!ids.is_empty(), "{k} has an activity in the plan");
        assert_eq!(net.search_ids(k, &format!("Task?based-on=CarePlan/{plan_id}")).await.len(), 6, "{k} sees the whole plan's progress");
        own.insert(k, ids);
    }
    assert_eq!(own["nursing"].len(), 2, "home visit and the weight monitoring's Task");
    // nobody moves another participant's activity; the plan's author neither
    for (i, k) in participants[1..].iter().enumerate() {
        let other = participants[1..][(i + 1) % (participants.len() - 1)];
        let id = &own[other][0];
        refused(&net.move_task(k, id, "accepted").await, 403, &format!("{k} moves {other}'s activity"), "only its owner may");
    }
    refused(&net.move_task("hospital", &own["gp"][0], "accepted").await, 403, "the author moves the GP's activity", "only its owner may");
    // each moves its own
    for k in &participants[1..] {
        for id in &own[k] {
            expect(&net.move_task(k, id, "accepted").await, 200, &format!("{k} accepts its activity"));
        }
    }
    for st in ["in-progress", "completed"] {
        expect(&net.move_task("gp", &own["gp"][0], st).await, 200, &format!("GP: {st}"));
    }
    assert_eq!(net.search_ids("nursing", &format!("Task?based-on=CarePlan/{plan_id}&status=completed")).await, own["gp"].clone());
    // the care plan itself: its author and participants update it, nobody else
    let mut cp = expect(&net.get("municipality", &format!("CarePlan/{plan_id}")).await, 200, "municipality reads the plan");
    assert_eq!(cp["activity"].as_array().unwrap().len(), 6);
    add_note(&mut cp, "Home help approved: three visits a week.");
    expect(&net.put("municipality", &cp).await, 200, "a participant (municipality) updates the plan");
    let mut cp = expect(&net.get("gp", &format!("CarePlan/{plan_id}")).await, 200, "GP reads the plan");
    add_note(&mut cp, "GP follow-up done; torasemide adjusted.");
    expect(&net.put("gp", &cp).await, 200, "a participant (GP) updates the plan");
    refused(&net.put("er", &cp).await, 403, "a non-participant updates the plan", "only its author or a participant");
    refused(&net.get("er", &format!("CarePlan/{plan_id}")).await, 403, "a non-participant reads the plan", "no care relationship");
    let mut taken = cp.clone();
    taken["author"] = reference(&net.org("therapist"));
    refused(&net.put("therapist", &taken).await, 403, "a participant takes over the plan", "only the plan's author may");
    let mut joined = expect(&net.get("hospital", "CareTeam/erika-team").await, 200, "hospital reads the team");
    joined["participant"].as_array_mut().unwrap().push(json!({"member": reference(&net.org("er"))}));
    refused(&net.put("er", &joined).await, 403, "an outsider joins the care team", "only its participants or its managing organization");
    let cp = expect(&net.get("hospital", &format!("CarePlan/{plan_id}")).await, 200, "hospital reads the plan");
    assert_eq!(cp["note"].as_array().unwrap().len(), plan["note"].as_array().map_or(0, Vec::len) + 2, "both participants' notes, nothing else");

    // ---- 6. she withdraws the pharmacy's access ------------------------------
    let deny_pharmacy = json!({"type": "deny", "actor": [{
        "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
        "reference": reference(&net.org("pharmacy"))}]});
    expect(&net.put("gp", &privacy_consent(vec![deny_pharmacy])).await, 200, "GP records her objection");
    refused(&net.get("pharmacy", PATIENT).await, 403, "pharmacy after her objection", "consent does not permit");
    refused(&net.get("pharmacy", &format!("Task/{}", own["pharmacy"][0])).await, 403, "pharmacy reads its activity", "consent does not permit");
    assert!(net.search_ids("pharmacy", &format!("Task?based-on=CarePlan/{plan_id}")).await.is_empty());
    expect(&net.get("nursing", PATIENT).await, 200, "the nursing service still treats her");
    let summary = expect(&net.get("gp", "Patient/erika/$summary").await, 200, "GP asks for her summary");
    assert_eq!(summary["type"], "document");
    let in_summary: Vec<String> = summary["entry"].as_array().unwrap().iter().filter_map(|e| Some(format!("{}/{}", e["resource"]["resourceType"].as_str()?, e["resource"]["id"].as_str()?))).collect();
    for want in ["Patient/erika", "Condition/erika-hf", &format!("CarePlan/{plan_id}")] {
        assert!(in_summary.iter().any(|x| x == want), "{want} in the GP's summary: {in_summary:?}");
    }

    // ---- 7. break-glass -----------------------------------------------------
    refused(&net.get("er", PATIENT).await, 403, "emergency department without relationship", "break-glass");
    let r = net.get_for("er", PATIENT, "BTG").await;
    let p = expect(&r, 200, "emergency department breaks the glass");
    assert_eq!(r.header("x-break-glass").as_deref(), Some("BTG"));
    assert!(p["meta"]["security"].as_array().unwrap().iter().any(|c| c["code"] == "BTG"), "flagged: {p}");
    let r = net.get_for("er", "Condition?subject=Patient/erika", "BTG").await;
    let b = expect(&r, 200, "emergency department searches her problems");
    assert_eq!(r.header("x-break-glass").as_deref(), Some("BTG"));
    let mut conds = match_ids(&b);
    conds.sort();
    assert_eq!(conds, vec!["erika-hf", "erika-suspected-hf"]);

    // ---- 8. the insurer -------------------------------------------------------
    refused(&net.get("insurer", PATIENT).await, 403, "insurer reads a patient", "may not use 'read' on Patient");
    refused(&net.get("insurer", "Patient?family=Mustermann").await, 403, "insurer searches patients", "may not use 'search' on Patient");
    refused(&net.get("insurer", "Encounter?subject=Patient/erika").await, 403, "insurer searches encounters", "may not use 'search' on Encounter");
    refused(&net.get("insurer", "Patient/erika/$everything").await, 403, "insurer asks for everything", "may not use 'everything'");
    let period = format!("periodStart={year}-01-01&periodEnd={year}-12-31");
    let r = net.get("insurer", &format!("Measure/admissions/$evaluate-measure?{period}")).await;
    let mr = expect(&r, 200, "insurer evaluates the admissions measure");
    assert_eq!(mr["resourceType"], "MeasureReport");
    assert_eq!(mr["type"], "summary");
    for leak in ["Patient/", "Encounter/", "Condition/", "erika", "Mustermann"] {
        assert!(!r.text.contains(leak), "the insurer's report names no individual ({leak}): {}", r.text);
    }
    fn counts(v: &Value, out: &mut Vec<i64>) {
        match v {
            Value::Object(o) => {
                if let Some(c) = o.get("count").and_then(Value::as_i64) {
                    out.push(c);
                }
                o.values().for_each(|x| counts(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| counts(x, out)),
            _ => {}
        }
    }
    let mut published = vec![];
    counts(&mr, &mut published);
    assert!(published.iter().all(|c| *c == 0 || *c >= 5), "one admission is a small cell: suppressed, {published:?}");
    assert!(r.text.contains("masked"), "the admission count is masked: {}", r.text);
    refused(&net.get("insurer", &format!("Measure/admissions/$evaluate-measure?{period}&reportType=subject-list")).await, 403, "insurer asks for the subjects", "clinical roles only");
    // bulk export: de-identified
    let r = send(net.req("insurer", reqwest::Method::GET, "$export?_type=Patient,Encounter,Condition").header("prefer", "respond-async").header("accept", "application/fhir+json")).await;
    expect(&r, 202, "insurer kicks off an export");
    let status_url = r.header("content-location").expect("Content-Location");
    let status_path = status_url.strip_prefix(&format!("{}/", net.s.base)).unwrap().to_owned();
    refused(&net.get("hospital", &status_path).await, 403, "another member polls the insurer's export", "");
    let manifest = loop {
        let r = net.get("insurer", &status_path).await;
        match r.status {
            202 => tokio::time::sleep(Duration::from_millis(100)).await,
            200 => break r.json(),
            s => panic!("export status {s}: {}", r.text),
        }
    };
    let outputs = manifest["output"].as_array().unwrap();
    assert!(outputs.iter().any(|o| o["type"] == "Patient"), "{manifest}");
    for o in outputs {
        let path = o["url"].as_str().unwrap().strip_prefix(&format!("{}/", net.s.base)).unwrap().to_owned();
        let r = net.get("insurer", &path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        for leak in ["erika", "Mustermann", "Eppendorfer", "20095"] {
            assert!(!r.text.contains(leak), "de-identified {} export ({leak}): {}", o["type"], r.text);
        }
        if o["type"] == "Patient" {
            let p: Value = serde_json::from_str(r.text.lines().next().unwrap()).unwrap();
            assert_eq!(p["id"].as_str().unwrap().len(), 32, "pseudonymous id");
            assert_eq!(p["birthDate"], "1948", "birth year only");
        }
    }

    // ---- 9. the audit trail -----------------------------------------------------
    refused(&net.get("hospital", "AuditEvent?entity=Patient/erika").await, 403, "a member searches the audit trail", "may not use 'search' on AuditEvent");
    refused(&net.get("gp", "Patient?_id=erika&_revinclude=AuditEvent:patient").await, 403, "a member includes the audit trail", "AuditEvent");
    let trail = expect(&net.get("operator", "AuditEvent?entity=Patient/erika&_count=1000").await, 200, "operator searches her audit trail");
    let events: Vec<&Value> = trail["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).collect();
    let client_of = |ae: &Value| ae["agent"][0]["who"]["identifier"]["value"].as_str().unwrap_or("").to_owned();
    let member_of = |ae: &Value| ae["agent"].as_array().unwrap().iter().find_map(|a| a["who"]["reference"].as_str().map(str::to_owned)).unwrap_or_default();
    let subtype = |ae: &Value| ae["subtype"][0]["code"].as_str().unwrap_or("").to_owned();
    let found = |client: &str, sub: &str, outcome: &str| {
        events.iter().any(|ae| client_of(ae) == client && subtype(ae) == sub && ae["outcome"] == outcome && member_of(ae) == format!("Organization/{}", net.members.iter().find(|m| m.client == client).unwrap().id))
    };
    for (key, sub, outcome, what) in [
        ("gp", "read", "4", "the GP's read before her Consent, refused"),
        ("gp", "read", "0", "the GP's read after it"),
        ("hospital", "read", "4", "the hospital's read without relationship, refused"),
        ("hospital", "read", "0", "the hospital's read after the referral"),
        ("pharmacy", "read", "4", "the pharmacy's read after her objection, refused"),
        ("insurer", "read", "4", "the insurer's refused read"),
        ("er", "read", "0", "the emergency department's break-glass read"),
        ("gp", "operation", "0", "the GP's $summary"),
    ] {
        assert!(found(&net.member(key).client, sub, outcome), "audit trail has {what} ({} events)", events.len());
    }
    let btg = events.iter().filter(|ae| client_of(ae) == net.member("er").client && ae["purposeOfEvent"][0]["coding"][0]["code"] == "BTG").count();
    assert!(btg >= 1, "the break-glass access carries its purpose of use");
    println!("scenario ({backend:?}): {} audited accesses concern Patient/erika, {btg} of them break-glass", events.len());
    // what belongs to one member is audited as well: subscription operations, export polls and downloads
    let path_of = |ae: &Value| ae["subtype"].as_array().unwrap().iter().find(|c| c["code"] == "path").and_then(|c| c["display"].as_str()).unwrap_or("").to_owned();
    let sub_trail = expect(&net.get("operator", &format!("AuditEvent?entity=Subscription/{sub_id}&_count=100")).await, 200, "operator searches the subscription's trail");
    let sub_events: Vec<&Value> = sub_trail["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).collect();
    for (key, op, outcome) in [("municipality", "$events", "0"), ("municipality", "$status", "0"), ("pharmacy", "$status", "4")] {
        assert!(
            sub_events.iter().any(|ae| client_of(ae) == net.member(key).client && path_of(ae) == op && ae["outcome"] == outcome),
            "audit trail has {key}'s {op} (outcome {outcome}): {sub_trail}"
        );
    }
    let exports = expect(&net.get("operator", "AuditEvent?agent=Organization/kasse-nord&_count=1000").await, 200, "operator searches the insurer's trail");
    let exports: Vec<String> = exports["entry"].as_array().unwrap().iter().filter(|e| e["resource"]["outcome"] == "0").map(|e| path_of(&e["resource"])).collect();
    assert_eq!(exports.iter().filter(|p| p.starts_with("/_export/file/")).count(), outputs.len(), "every downloaded export file is audited: {exports:?}");
    assert!(exports.iter().any(|p| p.starts_with("/_export/status/")), "the export polls are audited: {exports:?}");
    let refused_poll = expect(&net.get("operator", "AuditEvent?agent=Organization/klinikum-nord&outcome=4&_count=1000").await, 200, "operator searches the hospital's refusals");
    assert!(refused_poll["entry"].as_array().unwrap().iter().any(|e| path_of(&e["resource"]).starts_with("/_export/status/")), "the hospital's refused poll of the insurer's export is audited");
    // the changes are in it too: the referral's Task, written by the GP's client
    let task_trail = expect(&net.get("operator", &format!("AuditEvent?entity=Task/{ref_id}")).await, 200, "operator searches the referral's trail");
    let writers: Vec<String> = task_trail["entry"].as_array().unwrap().iter().map(|e| client_of(&e["resource"])).collect();
    for key in ["gp", "hospital"] {
        assert!(writers.contains(&net.member(key).client), "{key} changed the referral: {writers:?}");
    }
    net.s.stop().await;
}

#[tokio::test]
async fn cross_sector_network_sqlite() {
    story(Backend::Sqlite).await;
}

#[tokio::test]
async fn cross_sector_network_postgres() {
    if postgres_url().is_none() {
        eprintln!("skipped: CAREBRIDGE_TEST_POSTGRES not set");
        return;
    }
    story(Backend::Postgres).await;
}
