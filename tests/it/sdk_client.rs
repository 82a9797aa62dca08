//! The gateway through the `fhir-sdk` client (feature `r4b`): what a Rust
//! integration engine would use. The client sends `fhirVersion=4.3` in Accept;
//! the server serves it as 4.0 (README: content negotiation).

use crate::common::*;
use fhir_sdk::client::{Client, DateSearch, ResourceWrite, SearchParameters, TokenSearch};
use fhir_sdk::r4b::codes::{AdministrativeGender, EncounterStatus, SearchComparator};
use fhir_sdk::r4b::resources::{Encounter, Patient, ResourceType};
use fhir_sdk::r4b::types::{Coding, HumanName, Reference};
use fhir_sdk::version::FhirR4B;
use fhir_sdk::{Date, TryStreamExt};
use std::str::FromStr;

fn sdk(s: &TestServer) -> Client<FhirR4B> {
    Client::builder().base_url(format!("{}/", s.base).parse().unwrap()).build().unwrap()
}

#[tokio::test]
async fn crud_search_transaction_with_fhir_sdk() {
    let s = TestServer::start(Backend::Sqlite).await;
    let client = sdk(&s);

    let mut patient = Patient::builder()
        .active(false)
        .gender(AdministrativeGender::Female)
        .birth_date(Date::from_str("1961-07-04").unwrap())
        .name(vec![Some(HumanName::builder().family("Lüdenscheidt".to_owned()).build().unwrap())])
        .build()
        .unwrap();
    let id = patient.create(&client).await.expect("create");
    let read = client.read::<Patient>(&id).await.expect("read").expect("found");
    assert_eq!(read.active, Some(false));
    assert_eq!(read.name[0].as_ref().unwrap().family.as_deref(), Some("Lüdenscheidt"));

    patient.active = Some(true);
    patient.update(true, &client).await.expect("version-aware update");
    let version = patient.meta.as_ref().and_then(|m| m.version_id.clone()).expect("versionId");
    assert_eq!(version, "2");
    let v1 = client.read_version::<Patient>(&id, "1").await.expect("vread").expect("v1");
    assert_eq!(v1.active, Some(false));

    let found: Vec<Patient> = client
        .search(
            SearchParameters::empty()
                .and_raw("_id", &id)
                .and(DateSearch::<FhirR4B> { name: "birthdate", comparator: Some(SearchComparator::Eq), value: "1961-07-04" })
                .and(TokenSearch::Standard { name: "active", system: None, code: Some("true"), not: false }),
        )
        .await
        .expect("search")
        .all_matches()
        .try_collect()
        .await
        .expect("pages");
    assert_eq!(found.len(), 1);

    // paging through the client follows our next links
    for _ in 0..25 {
        Patient::builder().gender(AdministrativeGender::Other).build().unwrap().create(&client).await.unwrap();
    }
    let others: Vec<Patient> = client
        .search(SearchParameters::empty().and(TokenSearch::Standard { name: "gender", system: None, code: Some("other"), not: false }).and_raw("_count", "10"))
        .await
        .unwrap()
        .all_matches()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(others.len(), 25);

    let mut tx = client.transaction();
    let pref = tx.create(Patient::builder().build().unwrap());
    tx.create(
        Encounter::builder()
            .status(EncounterStatus::Planned)
            .class(Coding::builder().code("AMB".to_owned()).build().unwrap())
            .subject(Reference::builder().reference(pref).build().unwrap())
            .build()
            .unwrap(),
    );
    tx.delete(ResourceType::Patient, &id);
    tx.read(ResourceType::Patient, &id);
    let out = tx.send().await.expect("transaction");
    assert_eq!(out.entry.len(), 4);

    patient.delete(&client).await.ok();
    assert!(client.read::<Patient>(&id).await.map(|p| p.is_none()).unwrap_or(true));
    s.stop().await;
}
