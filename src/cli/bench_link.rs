//! `carebridge bench link`: master patient index figures (printed, never
//! asserted).
//!
//! * **Quality** — the Synthea patients of `../shared/samples/synthea`
//!   (`CAREBRIDGE_SHARED`) are spread over 2–4 "institutions" each, with
//!   reproducible perturbations from `--seed` (typos, swapped given/family
//!   names, married-name changes, day/month swaps, one digit off, missing
//!   identifiers, phone, address, a move), loaded in random order through the
//!   write pipeline (so linking runs as in production), and the links are
//!   compared with the truth: pair confusion counts, precision, recall. The
//!   US SSN is configured as a trusted identifier (dropped from half of the
//!   copies), showing a configured system next to KVNR.
//! * **Performance** — `--patients N` (default 1,000,000) generated records
//!   (20 % second records of an earlier person, perturbed) loaded in
//!   transactions of `--batch` through the pipeline (validation off, so the
//!   figure is storage + linking): patients/s per tenth of the load; then
//!   `Patient/$match` over HTTP on the full index: p50/p99.
//!
//! The random numbers come from SplitMix64 (Steele, Lea, Flood 2014), ten
//! lines, written here so that a seed gives the same data on every platform
//! and no `rand` dependency is needed.

use super::percentile;
use crate::pipeline::{Entry, Method, Pipeline};
use crate::services::mpi::{CheckRule, MpiConfig, TrustedSystem};
use crate::services::{Services, ValidationMode};
use crate::store::Sql;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

pub struct Options {
    pub quality: bool,
    pub performance: bool,
    pub synthea: Option<PathBuf>,
    pub seed: u64,
    pub patients: usize,
    pub batch: usize,
    pub matches: usize,
}

/// SplitMix64.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

const FAMILIES: &[&str] = &[
    "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz", "Hoffmann", "Schäfer", "Koch",
    "Bauer", "Richter", "Klein", "Wolf", "Schröder", "Neumann", "Schwarz", "Zimmermann", "Braun", "Krüger", "Hofmann", "Hartmann",
    "Lange", "Schmitt", "Werner", "Schmitz", "Krause", "Meier", "Lehmann", "Schmid", "Schulze", "Maier", "Köhler", "Herrmann",
    "König", "Walter", "Mayer", "Huber", "Kaiser", "Fuchs", "Peters", "Lang", "Scholz", "Möller", "Weiß", "Jung", "Hahn", "Schubert",
    "Vogel", "Friedrich", "Keller", "Günther", "Frank", "Berger", "Winkler", "Roth", "Beck", "Lorenz", "Baumann", "Franke", "Albrecht",
    "Schuster", "Simon", "Ludwig", "Böhm", "Winter", "Kraus", "Martin", "Schumacher", "Krämer", "Vogt", "Stein", "Jäger", "Otto",
    "Sommer", "Groß", "Seidel", "Heinrich", "Brandt", "Haas", "Schreiber", "Graf", "Schulte", "Dietrich", "Ziegler", "Kuhn", "Kühn",
    "Pohl", "Engel", "Horn", "Busch", "Bergmann", "Thomas", "Voigt", "Sauer", "Arnold", "Wolff", "Pfeiffer", "Wang", "Li", "Zhang",
    "Liu", "Chen", "Yang", "Huang", "Zhao", "Wu", "Zhou", "Xu", "Sun", "Ma", "Zhu", "Hu", "Guo", "He", "Lin", "Luo", "Gao", "Smith",
    "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez", "Hernandez", "Lopez", "Gonzalez",
    "Wilson", "Anderson", "Taylor", "Moore", "Jackson", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez",
    "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams",
    "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell", "Carter", "Roberts", "Yilmaz", "Kaya", "Demir", "Şahin", "Çelik",
    "Nowak", "Kowalski", "Wiśniewski", "Kovačević", "Popović", "Ivanov", "Petrov", "Rossi", "Russo", "Ferrari", "Esposito", "Bianchi",
];

const GIVENS_F: &[&str] = &[
    "Anna", "Maria", "Ursula", "Monika", "Petra", "Elisabeth", "Sabine", "Renate", "Helga", "Karin", "Brigitte", "Ingrid", "Erika",
    "Andrea", "Gisela", "Claudia", "Susanne", "Gabriele", "Christa", "Christine", "Hildegard", "Angelika", "Birgit", "Heike", "Martina",
    "Barbara", "Nicole", "Stefanie", "Julia", "Katharina", "Laura", "Lea", "Lena", "Sophie", "Emma", "Mia", "Hannah", "Lina", "Clara",
    "Fang", "Min", "Jing", "Li", "Xiu", "Ying", "Hui", "Yan", "Mei", "Ling", "Mary", "Patricia", "Jennifer", "Linda", "Susan", "Jessica",
    "Sarah", "Karen", "Nancy", "Lisa", "Betty", "Sandra", "Ashley", "Emily", "Donna", "Michelle", "Carol", "Amanda", "Melissa", "Ayşe",
    "Fatma", "Zeynep", "Elif", "Agnieszka", "Ewa", "Giulia", "Francesca",
];

const GIVENS_M: &[&str] = &[
    "Peter", "Michael", "Thomas", "Andreas", "Wolfgang", "Klaus", "Jürgen", "Günter", "Stefan", "Christian", "Uwe", "Werner", "Horst",
    "Frank", "Dieter", "Manfred", "Gerhard", "Hans", "Bernd", "Torsten", "Markus", "Matthias", "Martin", "Helmut", "Walter", "Heinz",
    "Jan", "Lukas", "Leon", "Finn", "Jonas", "Paul", "Ben", "Elias", "Noah", "Felix", "Maximilian", "Wei", "Jun", "Qiang", "Lei", "Yong",
    "Jie", "Tao", "Ming", "Chao", "Hao", "James", "Robert", "John", "David", "William", "Richard", "Joseph", "Charles", "Daniel",
    "Matthew", "Anthony", "Mark", "Donald", "Steven", "Paul", "Andrew", "Joshua", "Kenneth", "Kevin", "Mehmet", "Mustafa", "Ahmet",
    "Ali", "Piotr", "Krzysztof", "Marco", "Giuseppe",
];

/// A person's true demographics.
#[derive(Clone)]
struct Person {
    family: String,
    given: String,
    birth: (i64, u32, u32),
    female: bool,
    postcode: String,
    phone: Option<String>,
    national: Option<(String, String)>,
}

fn kvnr(rng: &mut Rng) -> String {
    loop {
        let letter = (b'A' + rng.below(26) as u8) as char;
        let digits: String = (0..8).map(|_| char::from(b'0' + rng.below(10) as u8)).collect();
        for c in 0..10 {
            let v = format!("{letter}{digits}{c}");
            if crate::identity::ids::kvnr_valid(&v) {
                return v;
            }
        }
    }
}

fn gen_person(rng: &mut Rng) -> Person {
    let female = rng.chance(0.5);
    let given = if female { rng.pick(GIVENS_F) } else { rng.pick(GIVENS_M) };
    let y = 1925 + rng.below(98) as i64;
    let m = 1 + rng.below(12) as u32;
    let d = 1 + rng.below(crate::fhir::datetime::days_in_month(y, m) as usize) as u32;
    Person {
        family: (*rng.pick(FAMILIES)).to_owned(),
        given: (*given).to_owned(),
        birth: (y, m, d),
        female,
        postcode: format!("{:05}", 1000 + rng.below(98_000)),
        phone: rng.chance(0.7).then(|| format!("0{} {}", 30 + rng.below(900), 1_000_000 + rng.below(8_999_999))),
        national: rng.chance(0.5).then(|| ("http://fhir.de/sid/gkv/kvid-10".to_owned(), kvnr(rng))),
    }
}

/// One typo: substitute, delete, insert or transpose a letter.
fn typo(rng: &mut Rng, s: &str) -> String {
    let mut c: Vec<char> = s.chars().collect();
    if c.len() < 3 {
        return s.to_owned();
    }
    let i = 1 + rng.below(c.len() - 1);
    let letter = (b'a' + rng.below(26) as u8) as char;
    match rng.below(4) {
        0 => c[i] = letter,
        1 => {
            c.remove(i);
        }
        2 => c.insert(i, letter),
        _ => c.swap(i - 1, i),
    }
    c.into_iter().collect()
}

/// A record of `p` at an institution, with `n` perturbations.
fn record(rng: &mut Rng, p: &Person, inst: usize, mrn: &str, n: usize) -> Value {
    let mut family = p.family.clone();
    let mut given = p.given.clone();
    let (mut y, mut m, mut d) = p.birth;
    let mut postcode = Some(p.postcode.clone());
    let mut phone = p.phone.clone();
    let mut national = p.national.clone();
    for _ in 0..n {
        match rng.below(10) {
            0 => family = typo(rng, &family),
            1 => given = typo(rng, &given),
            2 => std::mem::swap(&mut family, &mut given),
            3 if p.female => family = (*rng.pick(FAMILIES)).to_owned(),
            4 if d <= 12 && d != m => std::mem::swap(&mut m, &mut d),
            5 => {
                // one digit off in the day (or the year's last digit)
                if rng.chance(0.5) && d < 28 {
                    d += 1;
                } else {
                    y += if y % 10 == 9 { -1 } else { 1 };
                }
            }
            6 => national = None,
            7 => phone = None,
            8 => postcode = None,
            _ => postcode = Some(format!("{:05}", 1000 + rng.below(98_000))),
        }
    }
    let mut ids = vec![json!({"system": format!("https://inst{inst}.example/fhir/sid/mrn"), "value": mrn})];
    if let Some((s, v)) = national {
        ids.push(json!({"system": s, "value": v}));
    }
    let mut r = json!({
        "resourceType": "Patient",
        "identifier": ids,
        "name": [{"family": family, "given": [given]}],
        "gender": if p.female { "female" } else { "male" },
        "birthDate": format!("{y:04}-{m:02}-{d:02}"),
    });
    if let Some(z) = postcode {
        r["address"] = json!([{"postalCode": z}]);
    }
    if let Some(t) = phone {
        r["telecom"] = json!([{"system": "phone", "value": t}]);
    }
    r
}

fn perturbation_count(rng: &mut Rng) -> usize {
    match rng.below(20) {
        0..=5 => 0,
        6..=14 => 1,
        _ => 2,
    }
}

async fn services(mpi: MpiConfig) -> Result<(Services, PathBuf), String> {
    let dir = std::env::temp_dir().join(format!("carebridge-bench-link-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let opts = crate::server::ServerOptions {
        database_url: format!("sqlite:{}", dir.join("bench.db").display()),
        package_cache: None,
        api: Default::default(),
        validation: ValidationMode::Off,
        packs: vec![],
        mpi,
        access: Default::default(),
    };
    Ok((crate::server::services(&opts).await.map_err(|e| e.to_string())?, dir))
}

/// Load records through the pipeline; returns the Patient id of each.
async fn load(services: &Services, records: Vec<Value>) -> Result<Vec<String>, String> {
    let entries: Vec<Entry> = records
        .into_iter()
        .map(|r| Entry { method: Method::Post, url: "Patient".into(), full_url: None, resource: Some(r), if_none_exist: None, if_match: None })
        .collect();
    let out = Pipeline::new(services).transaction(entries).await.map_err(|e| e.to_string())?;
    Ok(out.into_iter().filter_map(|r| r.target.map(|(_, id)| id)).collect())
}

fn synthea_dir(opt: Option<PathBuf>) -> PathBuf {
    opt.unwrap_or_else(|| {
        std::env::var("CAREBRIDGE_SHARED").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("../shared")).join("samples/synthea")
    })
}

fn synthea_person(p: &Value) -> Option<Person> {
    let name = p["name"].as_array()?.iter().find(|n| n["use"] == "official").or_else(|| p["name"].get(0))?;
    let digits = |s: &str| s.chars().filter(|c| !c.is_ascii_digit()).collect::<String>();
    let birth = p["birthDate"].as_str()?;
    let (y, m, d) = (birth.get(0..4)?.parse().ok()?, birth.get(5..7)?.parse().ok()?, birth.get(8..10)?.parse().ok()?);
    let ssn = p["identifier"].as_array()?.iter().find(|i| i["system"] == "http://hl7.org/fhir/sid/us-ssn")?;
    Some(Person {
        family: digits(name["family"].as_str()?),
        given: digits(name["given"][0].as_str()?),
        birth: (y, m, d),
        female: p["gender"] == "female",
        postcode: p.pointer("/address/0/postalCode").and_then(Value::as_str).unwrap_or("00000").to_owned(),
        phone: p.pointer("/telecom/0/value").and_then(Value::as_str).map(str::to_owned),
        national: Some(("http://hl7.org/fhir/sid/us-ssn".into(), ssn["value"].as_str()?.to_owned())),
    })
}

async fn quality(opts: &Options) -> Result<(), String> {
    let dir = synthea_dir(opts.synthea.clone());
    let Ok(files) = super::collect_files(std::slice::from_ref(&dir), &[".json"]) else {
        println!("quality: skipped ({} not found)", dir.display());
        return Ok(());
    };
    let mut persons = vec![];
    for f in files {
        let Ok(bytes) = std::fs::read(&f) else { continue };
        let Ok(b) = serde_json::from_slice::<Value>(&bytes) else { continue };
        for e in b["entry"].as_array().into_iter().flatten() {
            if e["resource"]["resourceType"] == "Patient" {
                if let Some(p) = synthea_person(&e["resource"]) {
                    persons.push(p);
                }
            }
        }
    }
    let mut rng = Rng::new(opts.seed);
    let mut records: Vec<(usize, Value)> = vec![];
    for (k, p) in persons.iter().enumerate() {
        let copies = 2 + rng.below(3);
        for c in 0..copies {
            let n = if c == 0 { 0 } else { perturbation_count(&mut rng) };
            let mut p2 = p.clone();
            if !rng.chance(0.5) {
                p2.national = None; // the SSN is missing from half of the records
            }
            let mrn = format!("{k}-{c}-{}", rng.below(1_000_000));
            let r = record(&mut rng, &p2, c, &mrn, n);
            records.push((k, r));
        }
    }
    for i in (1..records.len()).rev() {
        let j = rng.below(i + 1);
        records.swap(i, j);
    }
    let mut cfg = MpiConfig::default();
    cfg.trusted.push(TrustedSystem { system: "http://hl7.org/fhir/sid/us-ssn".into(), check: CheckRule::None });
    let (svc, tmp) = services(cfg).await?;
    let t0 = Instant::now();
    let mut truth: HashMap<String, usize> = HashMap::new();
    for chunk in records.chunks(10) {
        let ids = load(&svc, chunk.iter().map(|(_, r)| r.clone()).collect()).await?;
        for (id, (k, _)) in ids.into_iter().zip(chunk) {
            truth.insert(id, *k);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let rows = svc.store.rows(Sql::new("SELECT pid, grp FROM mpi_patient")).await.map_err(|e| e.to_string())?;
    let group: HashMap<String, String> =
        rows.iter().filter_map(|r| Some((r.first()?.as_str()?.to_owned(), r.get(1)?.as_str()?.to_owned()))).collect();
    let review = svc.store.rows(Sql::new("SELECT a, b FROM mpi_pair WHERE state = 'review'")).await.map_err(|e| e.to_string())?;
    let ids: Vec<&String> = truth.keys().collect();
    let (mut tp, mut fp, mut fneg, mut tn) = (0u64, 0u64, 0u64, 0u64);
    for i in 0..ids.len() {
        for j in i + 1..ids.len() {
            let same = truth[ids[i]] == truth[ids[j]];
            let linked = group.contains_key(ids[i]) && group.get(ids[i]) == group.get(ids[j]);
            match (same, linked) {
                (true, true) => tp += 1,
                (false, true) => fp += 1,
                (true, false) => fneg += 1,
                (false, false) => tn += 1,
            }
        }
    }
    let rev_true = review
        .iter()
        .filter(|r| {
            let (a, b) = (r[0].as_str().unwrap_or(""), r[1].as_str().unwrap_or(""));
            truth.contains_key(a) && truth.get(a) == truth.get(b)
        })
        .count();
    println!("quality: {} Synthea persons → {} records over 2–4 institutions (seed {}), loaded in {secs:.2} s", persons.len(), records.len(), opts.seed);
    println!("  pairs: true links {tp}, false links {fp}, missed {fneg}, true non-links {tn}");
    println!(
        "  precision {:.2} %, recall {:.2} %  (review queue: {} pairs, {rev_true} of them true matches)",
        100.0 * tp as f64 / (tp + fp).max(1) as f64,
        100.0 * tp as f64 / (tp + fneg).max(1) as f64,
        review.len()
    );
    drop(svc);
    let _ = std::fs::remove_dir_all(tmp);
    Ok(())
}

async fn performance(opts: &Options) -> Result<(), String> {
    let (svc, tmp) = services(MpiConfig::default()).await?;
    let mut rng = Rng::new(opts.seed ^ 0x5EED);
    let mut recent: Vec<Person> = Vec::with_capacity(10_000);
    let n = opts.patients;
    let tenth = (n / 10).max(opts.batch);
    let t0 = Instant::now();
    let mut seg = Instant::now();
    let mut done = 0usize;
    let mut seg_done = 0usize;
    println!("performance: {n} patients in transactions of {} (validation off), SQLite", opts.batch);
    while done < n {
        let k = opts.batch.min(n - done);
        let mut recs = Vec::with_capacity(k);
        for i in 0..k {
            let (p, inst, pert) = if !recent.is_empty() && rng.chance(0.2) {
                let p = recent[rng.below(recent.len())].clone();
                let pc = perturbation_count(&mut rng);
                (p, 2, pc)
            } else {
                let p = gen_person(&mut rng);
                if recent.len() < 10_000 {
                    recent.push(p.clone());
                } else {
                    let j = rng.below(10_000);
                    recent[j] = p.clone();
                }
                (p, 1, 0)
            };
            recs.push(record(&mut rng, &p, inst, &format!("{}", done + i), pert));
        }
        load(&svc, recs).await?;
        done += k;
        seg_done += k;
        if seg_done >= tenth || done == n {
            let s = seg.elapsed().as_secs_f64();
            println!("  {done:>9} stored: {:>7.0} patients/s (last {seg_done})", seg_done as f64 / s);
            seg = Instant::now();
            seg_done = 0;
        }
    }
    let total = t0.elapsed().as_secs_f64();
    println!("  overall {:.0} patients/s ({n} in {total:.1} s)", n as f64 / total);
    let stats = svc.store.rows(Sql::new("SELECT COUNT(*), COUNT(DISTINCT grp) FROM mpi_patient")).await.map_err(|e| e.to_string())?;
    let persons = svc.store.rows(Sql::new("SELECT COUNT(*) FROM resources WHERE rtype = 'Person' AND deleted = 0")).await.map_err(|e| e.to_string())?;
    let tasks = svc.store.rows(Sql::new("SELECT COUNT(*) FROM mpi_pair WHERE state = 'review'")).await.map_err(|e| e.to_string())?;
    println!(
        "  index: {:?} records, {:?} groups, {:?} Persons, {:?} pairs in review",
        stats[0][0].as_i64(),
        stats[0][1].as_i64(),
        persons[0][0].as_i64(),
        tasks[0][0].as_i64()
    );
    // $match over HTTP
    let running = crate::server::start(svc.clone(), Default::default(), "127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let client = reqwest::Client::new();
    let url = format!("{}/Patient/$match", running.base_url());
    let mut lat = Vec::with_capacity(opts.matches);
    let mut found = 0usize;
    for _ in 0..opts.matches {
        let p = recent[rng.below(recent.len())].clone();
        let pc = perturbation_count(&mut rng);
        let probe = record(&mut rng, &p, 9, "probe", pc);
        let body = json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": probe}, {"name": "count", "valueInteger": 5}]});
        let t = Instant::now();
        let r = client
            .post(&url)
            .header("content-type", "application/fhir+json")
            .body(serde_json::to_vec(&body).unwrap_or_default())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let b: Value = serde_json::from_slice(&r.bytes().await.map_err(|e| e.to_string())?).unwrap_or(Value::Null);
        lat.push(t.elapsed().as_micros() as u64);
        if b["total"].as_u64().unwrap_or(0) > 0 {
            found += 1;
        }
    }
    lat.sort_unstable();
    println!(
        "  $match over HTTP ({} probes, one at a time): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {found} found a candidate",
        lat.len(),
        percentile(&lat, 0.5) as f64 / 1000.0,
        percentile(&lat, 0.99) as f64 / 1000.0,
        lat.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    running.stop().await;
    drop(svc);
    let _ = std::fs::remove_dir_all(tmp);
    Ok(())
}

pub async fn run(opts: Options) -> Result<(), String> {
    if opts.quality {
        quality(&opts).await?;
    }
    if opts.performance {
        performance(&opts).await?;
    }
    Ok(())
}
