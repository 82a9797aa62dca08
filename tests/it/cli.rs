//! `carebridge load`: Bundles and NDJSON through the write pipeline, straight
//! into a store and into a running server; re-loading is idempotent.

use crate::common::*;
use carebridge::cli::load::{run, Target};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_into_store_and_server_is_idempotent() {
    let dir = fixtures().join("load");
    let s = TestServer::start(Backend::Sqlite).await;
    // straight into the store (same pipeline, in process)
    let r = run(Target::Store(s.services.clone()), std::slice::from_ref(&dir), 2, true).await.unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!(r.files, 3);
    assert_eq!(r.resources, 7);
    // through the server, twice: ids are kept (PUT), content unchanged → no new versions
    for _ in 0..2 {
        let r = run(Target::Server(s.base.clone()), std::slice::from_ref(&dir), 2, true).await.unwrap();
        assert!(r.failed.is_empty(), "{:?}", r.failed);
        assert_eq!(r.resources, 7);
    }
    assert_eq!(get(&s, "Patient/nd-2").await.json()["name"][0]["family"], "Schäfer");
    assert_eq!(get(&s, "Patient/nd-1").await.json()["meta"]["versionId"], "1");
    assert_eq!(get(&s, "Organization/load-org-1").await.json()["meta"]["versionId"], "1");
    assert_eq!(get(&s, "Patient?identifier=urn:load|t1&_summary=count").await.json()["total"], 1);
    let enc = get(&s, "Encounter/load-enc-1").await.json();
    assert!(enc["subject"]["reference"].as_str().unwrap().starts_with("Patient/"));
    assert_eq!(enc["meta"]["versionId"], "1");
    // a missing path is an error, not a panic
    assert!(run(Target::Server(s.base.clone()), &[dir.join("nope")], 1, true).await.is_err());
    s.stop().await;
}
