//! Search, data-driven: each `fixtures/search/*.json` holds a population and
//! cases (query → expected match ids, optionally ordered, and `_include`d
//! ids). Every case runs on SQLite, and on PostgreSQL when configured.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

async fn run_fixtures(backend: Backend) {
    let dir = fixtures().join("search");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    let mut failures = vec![];
    let mut n = 0;
    for f in files {
        let fx: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        let s = TestServer::start(backend).await;
        let entries: Vec<Value> = fx["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| json!({"resource": r, "request": {"method": "PUT", "url": format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap())}}))
            .collect();
        let r = post_json(&s, "", &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).await;
        assert_eq!(r.status, 200, "loading {}: {}", f.display(), r.text);
        for case in fx["cases"].as_array().unwrap() {
            n += 1;
            let q = case["query"].as_str().unwrap();
            let r = get(&s, &format!("{q}{}_count=100", if q.contains('?') { "&" } else { "?" })).await;
            if r.status != 200 {
                failures.push(format!("{q}: HTTP {} {}", r.status, r.diagnostics()));
                continue;
            }
            let b = r.json();
            let got = match_ids(&b);
            let want: Vec<String> = case["expect"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
            let ok = if case["ordered"].as_bool() == Some(true) {
                got == want
            } else {
                got.iter().collect::<BTreeSet<_>>() == want.iter().collect::<BTreeSet<_>>() && got.len() == want.len()
            };
            if !ok {
                failures.push(format!("{q}: expected {want:?}, got {got:?}"));
            }
            if let Some(inc) = case["include"].as_array() {
                let got_inc: BTreeSet<String> = b["entry"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| e["search"]["mode"] == "include")
                    .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
                    .collect();
                let want_inc: BTreeSet<String> = inc.iter().map(|v| v.as_str().unwrap().to_owned()).collect();
                if got_inc != want_inc {
                    failures.push(format!("{q}: expected includes {want_inc:?}, got {got_inc:?}"));
                }
            }
            if b["total"].as_u64().is_some_and(|t| t as usize != got.len()) {
                failures.push(format!("{q}: total {} but {} matches", b["total"], got.len()));
            }
        }
        s.stop().await;
    }
    assert!(failures.is_empty(), "{} of {n} search cases failed on {backend:?}:\n{}", failures.len(), failures.join("\n"));
    eprintln!("search fixtures on {backend:?}: {n} cases passed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_fixtures_sqlite() {
    run_fixtures(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_fixtures_postgres() {
    if postgres_url().is_none() {
        eprintln!("search_fixtures_postgres: skipped (CAREBRIDGE_TEST_POSTGRES not set)");
        return;
    }
    run_fixtures(Backend::Postgres).await;
}

#[tokio::test]
async fn paging_links_and_total() {
    let s = TestServer::start(Backend::Sqlite).await;
    let entries: Vec<Value> = (0..25).map(|i| json!({"resource": {"resourceType": "Patient", "gender": "other", "birthDate": format!("2000-01-{:02}", i + 1)}, "request": {"method": "POST", "url": "Patient"}})).collect();
    post_json(&s, "", &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).await;
    let b = get(&s, "Patient?gender=other&_count=10&_total=accurate").await.json();
    assert_eq!(b["total"], 25);
    assert_eq!(match_ids(&b).len(), 10);
    let link = |b: &Value, rel: &str| b["link"].as_array().unwrap().iter().find(|l| l["relation"] == rel).map(|l| l["url"].as_str().unwrap().to_owned());
    let p2 = send(client().get(link(&b, "next").unwrap())).await.json();
    let p3 = send(client().get(link(&p2, "next").unwrap())).await.json();
    assert_eq!(match_ids(&p3).len(), 5);
    assert!(link(&p3, "next").is_none());
    let back = send(client().get(link(&p3, "previous").unwrap())).await.json();
    assert_eq!(match_ids(&back), match_ids(&p2), "previous of page 3 is page 2");
    // sorted paging by offset
    let s1 = get(&s, "Patient?gender=other&_count=10&_sort=-birthdate").await.json();
    assert_eq!(s1["entry"][0]["resource"]["birthDate"], "2000-01-25");
    let s3 = send(client().get(link(&send(client().get(link(&s1, "next").unwrap())).await.json(), "next").unwrap())).await.json();
    assert_eq!(s3["entry"][4]["resource"]["birthDate"], "2000-01-01");
    // POST _search with a form body
    let r = send(client().post(s.url("Patient/_search")).header("content-type", "application/x-www-form-urlencoded").body("gender=other&_summary=count")).await;
    assert_eq!(r.json()["total"], 25);
    s.stop().await;
}
