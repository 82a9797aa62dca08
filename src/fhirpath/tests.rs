//! Unit tests for tricky semantics (no model unless stated; model tests skip when the
//! package cache is absent).
use super::*;
use serde_json::json;
use std::sync::OnceLock;

fn core_model() -> Option<&'static ModelInfo> {
    static M: OnceLock<Option<ModelInfo>> = OnceLock::new();
    M.get_or_init(|| {
        let dir = ModelInfo::default_package_dir();
        if dir.join(".index.json").exists() {
            ModelInfo::load_from_package(&dir).ok()
        } else {
            None
        }
    })
    .as_ref()
}

fn run_with(model: &ModelInfo, expr: &str, res: &serde_json::Value) -> Result<Vec<String>, FhirPathError> {
    let ctx = EvalContext::new(model, res);
    let e = compile(expr)?;
    Ok(e.evaluate(res, &ctx)?.iter().map(|v| v.to_string()).collect())
}

fn run(expr: &str, res: &serde_json::Value) -> Result<Vec<String>, FhirPathError> {
    run_with(&ModelInfo::empty(), expr, res)
}

fn one(expr: &str) -> String {
    let r = run(expr, &json!({})).unwrap_or_else(|e| panic!("{}: {}", expr, e));
    assert_eq!(r.len(), 1, "{} -> {:?}", expr, r);
    r[0].clone()
}

fn empty(expr: &str) {
    let r = run(expr, &json!({})).unwrap_or_else(|e| panic!("{}: {}", expr, e));
    assert!(r.is_empty(), "{} -> {:?}", expr, r);
}

fn patient() -> serde_json::Value {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "birthDate": "1974-12-25",
        "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1974-12-25T14:35:45-05:00"}]},
        "name": [{"given": [null, "James"], "_given": [{"extension": [{"url": "x", "valueString": "y"}]}], "family": "Doe"}],
        "contained": [{"resourceType": "Organization", "id": "org1", "name": "Acme"}],
        "managingOrganization": {"reference": "#org1"},
        "multipleBirthInteger": 2
    })
}

#[test]
fn navigation_and_primitive_extensions() {
    let p = patient();
    assert_eq!(run("Patient.name.family", &p).unwrap(), vec!["Doe"]);
    assert_eq!(run("Patient.name.given", &p).unwrap(), vec!["", "James"]);
    assert_eq!(run("Patient.name.given.select($this.hasValue())", &p).unwrap(), vec!["false", "true"]);
    assert_eq!(run("Patient.name.given.first().extension('x').value", &p).unwrap(), vec!["y"]);
    assert_eq!(run("Patient.birthDate.extension('http://hl7.org/fhir/StructureDefinition/patient-birthTime').exists()", &p).unwrap(), vec!["true"]);
    // type name that does not match yields empty (lenient)
    assert!(run("Observation.status", &p).unwrap().is_empty());
    // choice without a model
    assert_eq!(run("Patient.multipleBirth", &p).unwrap(), vec!["2"]);
    assert_eq!(run("Patient.multipleBirth is integer", &p).unwrap(), vec!["true"]);
    // resolve() inside the resource
    assert_eq!(run("Patient.managingOrganization.resolve().name", &p).unwrap(), vec!["Acme"]);
    assert_eq!(run("%resource.id & '/' & %context.id", &p).unwrap(), vec!["p1/p1"]);
}

#[test]
fn resolve_in_bundle() {
    let b = json!({"resourceType": "Bundle", "entry": [
        {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient", "id": "a", "active": true}},
        {"fullUrl": "http://x/Observation/o", "resource": {"resourceType": "Observation", "id": "o",
            "subject": {"reference": "urn:uuid:1"}, "performer": [{"reference": "Patient/a"}]}}
    ]});
    let m = ModelInfo::empty();
    let ctx = EvalContext::new(&m, &b);
    let e = compile("Bundle.entry.resource.ofType(Observation).subject.resolve().active").unwrap();
    assert_eq!(e.evaluate(&b, &ctx).unwrap().len(), 1);
    let e = compile("Bundle.entry[1].resource.performer.resolve().id").unwrap();
    assert_eq!(e.evaluate(&b, &ctx).unwrap()[0].to_string(), "a");
}

#[test]
fn three_valued_logic() {
    for (e, r) in [
        ("true and {}", None),
        ("false and {}", Some(false)),
        ("true or {}", Some(true)),
        ("false or {}", None),
        ("{} implies true", Some(true)),
        ("false implies {}", Some(true)),
        ("true xor false", Some(true)),
        ("{} xor true", None),
    ] {
        let v = json!({});
        let m = ModelInfo::empty();
        let ctx = EvalContext::new(&m, &v);
        assert_eq!(compile(e).unwrap().evaluate_bool(&v, &ctx).unwrap(), r, "{}", e);
    }
    // singleton evaluation: a single non-boolean is true; several items are an error
    assert_eq!(one("(true and 'foo')"), "true");
    assert!(run("(1 | 2).not()", &json!({})).is_err());
}

#[test]
fn numbers_keep_precision() {
    assert_eq!(one("1.50 + 0"), "1.50");
    assert_eq!(one("1.0 / 3").len(), 30);
    assert_eq!(one("(1.2 / 1.8).round(2)"), "0.67");
    assert_eq!(one("1.2 / 1.8 ~ 0.67"), "true");
    assert_eq!(one("7 div 2"), "3");
    assert_eq!(one("-7 mod 3"), "-1");
    empty("1 / 0");
    assert!(run("9223372036854775807 + 1", &json!({})).is_err());
    let v: serde_json::Value = serde_json::from_str(r#"{"resourceType": "Observation", "valueQuantity": {"value": 1.50, "unit": "mg"}}"#).unwrap();
    let m = ModelInfo::empty();
    let ctx = EvalContext::new(&m, &v);
    let r = compile("Observation.value.value").unwrap().evaluate(&v, &ctx).unwrap();
    assert_eq!(r[0].to_json().to_string(), "1.50");
    let r = compile("Observation.value.value * 2").unwrap().evaluate(&v, &ctx).unwrap();
    assert_eq!(r[0].to_json().to_string(), "3.00");
}

#[test]
fn dates_and_times() {
    empty("@2018-03 < @2018-03-01");
    empty("@2012-04-15T15:00:00Z = @2012-04-15T10:00:00");
    assert_eq!(one("@2012-04-15T15:00:00Z < @2012-04-17T10:00:00"), "true");
    assert_eq!(one("@2012-04-15T15:00:00+02:00 = @2012-04-15T16:00:00+03:00"), "true");
    assert_eq!(one("@2019-01-31 + 1 month"), "2019-02-28");
    assert_eq!(one("@2019-12-31T23:59:59.999+01:00 + 1 'ms'"), "2020-01-01T00:00:00.000+01:00");
    assert_eq!(one("@T23:00 + 2 hours"), "01:00");
    assert!(run("@2019-01-01 + 1 'mo'", &json!({})).is_err());
    assert_eq!(one("'2015-02-04T14:34:28Z'.toDateTime() = @2015-02-04T14:34:28Z"), "true");
    assert_eq!(one("@2015-02-04T14:34:28Z.toString()"), "2015-02-04T14:34:28Z");
    assert_eq!(one("@2014-01-01T08.lowBoundary(17)"), "2014-01-01T08:00:00.000+14:00");
    assert_eq!(one("@2014.highBoundary(8)"), "2014-12-31");
    // fixed clock
    let v = json!({});
    let m = ModelInfo::empty();
    let mut ctx = EvalContext::new(&m, &v);
    ctx.now = datetime::parse_datetime("2024-02-29T10:00:00.000Z");
    let r = compile("today() + 1 year").unwrap().evaluate(&v, &ctx).unwrap();
    assert_eq!(r[0].to_string(), "2025-02-28");
}

#[test]
fn quantities() {
    assert_eq!(one("1 'kg' = 1000 'g'"), "true");
    assert_eq!(one("185 '[lb_av]' > 80 'kg'"), "true");
    assert_eq!(one("1 week = 7 days"), "true");
    empty("1 year = 1 'a'");
    assert_eq!(one("(5 'mg' + 1 'g').toString()"), "1005 'mg'");
    assert_eq!(one("1 'm'.toQuantity('cm')"), "100 'cm'");
    assert_eq!(one("2 'm' * 3 'm' = 6 'm2'"), "true");
    empty("1 'kg' < 1 'm'");
    assert!(run("1 'kg' + 1 'm'", &json!({})).is_err());
}

#[test]
fn strings_and_regex() {
    assert_eq!(one("'abc'.substring(1, 1)"), "b");
    assert_eq!(one("'ßx'.upper()"), "SSX");
    assert_eq!(one("'a1b2'.replaceMatches('(\\\\d)', '<$1>')"), "a<1>b<2>");
    assert_eq!(one("'x\\ny'.matches('x.y')"), "true");
    assert!(run("'x'.matches('(?<=a)x')", &json!({})).is_err());
    assert_eq!(one("'a, b'.split(', ').count()"), "2");
    assert_eq!(one("'é€𝄞'.length()"), "3");
    assert_eq!(one("'é€𝄞'.toChars().last()"), "𝄞");
    assert_eq!(one("'a' ~ '  A '"), "true");
    assert_eq!(one("'<a>'.escape('html')"), "&lt;a&gt;");
}

#[test]
fn extreme_values_do_not_panic() {
    for e in [
        "0.5.power(1000.5)", "10.0.power(300)", "(0.1).power(300)", "1000000.exp()", "0.0.ln()", "(-1).ln()",
        "2.power(-1)", "2.power(70)", "(-9223372036854775807 - 1)", "@2019-01-01 + 9223372036854775807 'ms'",
        "@2019-01-01 - 9223372036854775807 days", "@2019-01-01 + 99999999999 years", "@T10:00 + 9223372036854775807 'ms'",
        "99999999999999999999999999999.0 * 10", "1.0 / 0.0000000000000000000000000001", "1 'm'.toQuantity('10*30.m')",
        "(1 '10*20.m' * 1 '10*20.m') * 1 '10*20.m'", "1 'm2000000' = 1 'm'", "1.lowBoundary(28)", "1.0000000000000000000000000001.highBoundary()",
        "'1e400'.toDecimal()", "'99999999999999999999999'.toInteger()", "@2019.lowBoundary(99)", "(1|2).sort($this.foo())",
    ] {
        let _ = run(e, &json!({}));
    }
}

#[test]
fn collections() {
    assert_eq!(one("(1 | 2 | 2 | 3).count()"), "3");
    assert_eq!(one("(1 | 2).combine(2).count()"), "3");
    assert_eq!(one("(3 | 1 | 2).sort().first()"), "1");
    assert_eq!(one("('b' | 'a').sort(-$this).first()"), "b");
    assert_eq!(one("(1 | 2 | 3).aggregate($total + $this, 0)"), "6");
    assert_eq!(one("(1 | 2 | 3).where($index > 0).count()"), "2");
    assert_eq!(one("(1 | 2 | 3).sum()"), "6");
    assert_eq!(one("(1 | 2) ~ (2 | 1)"), "true");
    empty("(1 | 2) = {}");
    assert!(run("(1 | 2).single()", &json!({})).is_err());
    assert!(run("iif(1 | 2, 1, 2)", &json!({})).is_err());
}

#[test]
fn variables_and_trace() {
    let v = json!({});
    let m = ModelInfo::empty();
    let seen = std::cell::RefCell::new(Vec::new());
    let cb = |name: &str, vals: &[Value]| seen.borrow_mut().push(format!("{}={}", name, vals.len()));
    let mut ctx = EvalContext::new(&m, &v).with_variable("limit", vec![Value::Integer(3)]);
    ctx.trace = Some(&cb);
    let r = compile("(1 | 2 | 3 | 4).trace('all').where($this < %limit).count()").unwrap().evaluate(&v, &ctx).unwrap();
    assert_eq!(r[0].to_string(), "2");
    assert_eq!(seen.borrow().as_slice(), ["all=4"]);
    assert!(compile("%undefined").unwrap().evaluate(&v, &ctx).is_err());
    assert_eq!(one("%`vs-administrative-gender`"), "http://hl7.org/fhir/ValueSet/administrative-gender");
}

#[test]
fn parse_errors_have_positions() {
    match compile("name.given.foo()") {
        Err(FhirPathError::Parse { pos, msg }) => {
            assert_eq!(pos, 11);
            assert!(msg.contains("foo"));
        }
        other => panic!("{:?}", other),
    }
    for bad in ["", "1 +", "(1", "'abc", "a.", "@2019-13", "1 2", "`x", "/* x", "a[1", "%", "$foo", "where(", "@T25:00", "a.b(", "is(1)"] {
        assert!(compile(bad).is_err(), "{:?} should not compile", bad);
    }
    assert!(matches!(compile("substring()"), Err(FhirPathError::Parse { .. })));
}

#[test]
fn no_panics_on_garbage() {
    // deterministic pseudo-random token soup
    let atoms = [
        "a", "Patient", ".", "(", ")", "[", "]", "{", "}", "'s'", "`x`", "1", "2.5", "@2019", "@T10", "@2019-01-01T10:00Z", "+", "-",
        "*", "/", "|", "=", "!=", "~", "<", ">=", "and", "or", "implies", "is", "as", "div", "mod", "in", "contains", "where(",
        "select(", "iif(", "$this", "$index", "$total", "%resource", ",", "'é€", "\\u", "\u{1F525}", "€", "true", "1 'mg'",
        "5 days", "exists(", "repeat(", "descendants()", "children()", "aggregate(", "sort(", "toQuantity(", "substring(",
        "matches(", "'['", "lowBoundary(", "resolve()", "extension(", "ofType(", "as(", "@", "%", "`", "'", "/*", "//",
    ];
    let mut seed: u64 = 0x2545F4914F6CDD1D;
    let res = patient();
    let m = ModelInfo::empty();
    let models: Vec<&ModelInfo> = match core_model() {
        Some(cm) => vec![&m, cm],
        None => vec![&m],
    };
    for _ in 0..4000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let n = (seed % 12) as usize + 1;
        let mut s = String::new();
        let mut x = seed;
        for _ in 0..n {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            s.push_str(atoms[(x >> 33) as usize % atoms.len()]);
            if x & 1 == 0 {
                s.push(' ');
            }
        }
        if let Ok(e) = compile(&s) {
            for model in &models {
                let mut ctx = EvalContext::new(model, &res);
                ctx.strict = seed & 2 == 0;
                let _ = e.evaluate(&res, &ctx);
            }
        }
    }
}

#[test]
fn deep_nesting_is_rejected_not_overflowing() {
    let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
    assert!(compile(&deep).is_err());
    let long = format!("1{}", " + 1".repeat(5_000));
    assert!(compile(&long).is_err());
    let chain = format!("a{}", ".a".repeat(1_000));
    assert!(compile(&chain).is_err());
    // the deepest accepted expressions evaluate within a 2 MiB stack (debug build)
    let nested = format!("{}true{}", "where(".repeat(60), ")".repeat(60));
    let chain_ok = format!("a{}", ".a".repeat(150));
    let sum_ok = format!("1{}", " + 1".repeat(150));
    let h = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let v = json!({"a": {"a": 1}});
            let m = ModelInfo::empty();
            let ctx = EvalContext::new(&m, &v);
            for src in [&nested, &chain_ok, &sum_ok] {
                let e = compile(src).unwrap();
                let _ = e.evaluate(&v, &ctx).unwrap();
            }
        })
        .unwrap();
    h.join().unwrap();
}

#[test]
fn expression_is_send_sync_and_cheap_to_clone() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Expression>();
    assert_send_sync::<ModelInfo>();
    let e = compile("name.given").unwrap();
    let e2 = e.clone();
    assert_eq!(e2.source(), "name.given");
}

#[test]
fn model_typing_and_strict_mode() {
    let Some(m) = core_model() else {
        eprintln!("skip: no FHIR core package");
        return;
    };
    let obs = json!({"resourceType": "Observation", "status": "final",
        "code": {"text": "x"},
        "valueQuantity": {"value": 185, "unit": "lbs", "system": "http://unitsofmeasure.org", "code": "[lb_av]"},
        "component": [{"code": {"text": "c"}, "valueString": "s"}]});
    assert_eq!(run_with(m, "Observation.value.is(Quantity)", &obs).unwrap(), vec!["true"]);
    assert_eq!(run_with(m, "Observation.value.type().name", &obs).unwrap(), vec!["Quantity"]);
    assert_eq!(run_with(m, "Observation.value.value.type().name", &obs).unwrap(), vec!["decimal"]);
    assert_eq!(run_with(m, "Observation.status.type().name", &obs).unwrap(), vec!["code"]);
    assert_eq!(run_with(m, "Observation.component.value.ofType(string)", &obs).unwrap(), vec!["s"]);
    assert_eq!(run_with(m, "Observation.component.type().name", &obs).unwrap(), vec!["BackboneElement"]);
    assert_eq!(run_with(m, "Observation.value < 200 '[lb_av]'", &obs).unwrap(), vec!["true"]);
    // lenient: concrete choice name still works; strict: error
    assert_eq!(run_with(m, "Observation.valueQuantity.unit", &obs).unwrap(), vec!["lbs"]);
    let mut ctx = EvalContext::new(m, &obs);
    ctx.strict = true;
    assert!(compile("Observation.valueQuantity.unit").unwrap().evaluate(&obs, &ctx).is_err());
    assert!(compile("Observation.stauts").unwrap().evaluate(&obs, &ctx).is_err());
    assert!(compile("Observation.descendants().code").unwrap().evaluate(&obs, &ctx).is_ok());
    // evaluate a typed fragment and an invariant
    let period = json!({"start": "2020-01-01", "end": "2019-01-01"});
    let per1 = compile("start.hasValue().not() or end.hasValue().not() or (start <= end)").unwrap();
    let ctx = EvalContext::new(m, &obs);
    assert_eq!(per1.evaluate_bool_typed(&period, "Period", &ctx).unwrap(), Some(false));
    let info = m.element_info("Observation", "value").unwrap();
    assert!(info.is_choice && !info.is_array);
    assert_eq!(m.base_type("Patient"), Some("DomainResource"));
    assert!(compile("Patient.gender.as(strin)").unwrap().evaluate(&obs, &ctx).is_err());
}

#[test]
fn depends_on_input_analysis() {
    let dep = |s: &str| compile(s).unwrap().depends_on_input(&["encounter", "resource", "context"]);
    // independent: only other variables, literals, lambdas over them
    for s in [
        "%patient.gender",
        "%patient.address.first().postalCode.substring(0, 2)",
        "%patient.birthDate.duration(%periodStart, 'years').select(iif($this < 18, '0-17', '18+'))",
        "%conditions.where(code.coding.code = 'I50').exists()",
        "true",
        "today() - 1 year",
    ] {
        assert!(!dep(s), "{s} reads only variables");
    }
    // dependent: the focus, $this, item variables, focus-reading functions
    for s in [
        "serviceProvider.reference",
        "$this.id",
        "%encounter.period.end",
        "%encounters.where(period.start > %encounter.period.end).exists()",
        "%patients.select(%resource.id)",
        "exists()",
        "where(true)",
        "iif(status = 'finished', 1, 0)",
        "%patient.gender | status",
        "%patient.address[%encounter.id.length()]",
        "%patient.gender.substring(id.length())",
    ] {
        assert!(dep(s), "{s} reads the input");
    }
}
