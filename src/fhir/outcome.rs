//! `OperationOutcome` values (FHIR R4 `operationoutcome.html`): issues with
//! severity, an `issue-type` code, a human message and FHIRPath expressions.
//! Data problems in input are reported as these values, never as panics.

use serde_json::{json, Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// The R4 `issue-type` value set (http://hl7.org/fhir/issue-type), the codes we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueType {
    Invalid,
    Structure,
    Required,
    Value,
    Invariant,
    Security,
    Login,
    Forbidden,
    Processing,
    NotSupported,
    Duplicate,
    MultipleMatches,
    NotFound,
    Deleted,
    TooLong,
    CodeInvalid,
    Conflict,
    BusinessRule,
    Exception,
    Throttled,
    Informational,
    TooCostly,
    Incomplete,
}

impl IssueType {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueType::Invalid => "invalid",
            IssueType::Structure => "structure",
            IssueType::Required => "required",
            IssueType::Value => "value",
            IssueType::Invariant => "invariant",
            IssueType::Security => "security",
            IssueType::Login => "login",
            IssueType::Forbidden => "forbidden",
            IssueType::Processing => "processing",
            IssueType::NotSupported => "not-supported",
            IssueType::Duplicate => "duplicate",
            IssueType::MultipleMatches => "multiple-matches",
            IssueType::NotFound => "not-found",
            IssueType::Deleted => "deleted",
            IssueType::TooLong => "too-long",
            IssueType::CodeInvalid => "code-invalid",
            IssueType::Conflict => "conflict",
            IssueType::BusinessRule => "business-rule",
            IssueType::Exception => "exception",
            IssueType::Throttled => "throttled",
            IssueType::Informational => "informational",
            IssueType::TooCostly => "too-costly",
            IssueType::Incomplete => "incomplete",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueType,
    pub diagnostics: String,
    pub expression: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct OperationOutcome {
    pub issues: Vec<Issue>,
}

impl OperationOutcome {
    pub fn new() -> Self {
        Self::default()
    }

    /// One error issue.
    pub fn error(code: IssueType, msg: impl Into<String>) -> Self {
        let mut oo = Self::new();
        oo.push(Severity::Error, code, msg, None);
        oo
    }

    pub fn info(msg: impl Into<String>) -> Self {
        let mut oo = Self::new();
        oo.push(Severity::Information, IssueType::Informational, msg, None);
        oo
    }

    pub fn push(
        &mut self,
        severity: Severity,
        code: IssueType,
        msg: impl Into<String>,
        expression: Option<String>,
    ) -> &mut Self {
        self.issues.push(Issue {
            severity,
            code,
            diagnostics: msg.into(),
            expression: expression.into_iter().collect(),
        });
        self
    }

    /// Same issue with an expression attached.
    pub fn with_expression(mut self, expr: impl Into<String>) -> Self {
        let e = expr.into();
        for i in &mut self.issues {
            if i.expression.is_empty() {
                i.expression.push(e.clone());
            }
        }
        self
    }

    /// Prefix every issue's expression (or set one) with a bundle entry location.
    pub fn in_entry(mut self, index: usize) -> Self {
        for i in &mut self.issues {
            if i.expression.is_empty() {
                i.expression.push(format!("Bundle.entry[{index}]"));
            } else {
                for e in &mut i.expression {
                    *e = format!("Bundle.entry[{index}].resource.{}", strip_type_prefix(e));
                }
            }
            i.diagnostics = format!("Bundle.entry[{index}]: {}", i.diagnostics);
        }
        self
    }

    pub fn has_errors(&self) -> bool {
        self.issues.iter().any(|i| i.severity <= Severity::Error)
    }

    pub fn first_message(&self) -> &str {
        self.issues.first().map(|i| i.diagnostics.as_str()).unwrap_or("")
    }

    pub fn to_json(&self) -> Value {
        let issues: Vec<Value> = if self.issues.is_empty() {
            vec![json!({"severity": "information", "code": "informational", "diagnostics": "All OK"})]
        } else {
            self.issues
                .iter()
                .map(|i| {
                    let mut m = Map::new();
                    m.insert("severity".into(), i.severity.as_str().into());
                    m.insert("code".into(), i.code.as_str().into());
                    m.insert("diagnostics".into(), i.diagnostics.clone().into());
                    if !i.expression.is_empty() {
                        m.insert("expression".into(), i.expression.clone().into());
                    }
                    Value::Object(m)
                })
                .collect()
        };
        json!({"resourceType": "OperationOutcome", "issue": issues})
    }
}

fn strip_type_prefix(e: &str) -> &str {
    match e.split_once('.') {
        Some((head, rest)) if super::looks_like_type(head) => rest,
        _ => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn entry_prefix() {
        let oo = OperationOutcome::error(IssueType::Value, "bad").with_expression("Patient.birthDate");
        let oo = oo.in_entry(3);
        assert_eq!(oo.issues[0].expression[0], "Bundle.entry[3].resource.birthDate");
        assert!(oo.issues[0].diagnostics.starts_with("Bundle.entry[3]: "));
    }
}
