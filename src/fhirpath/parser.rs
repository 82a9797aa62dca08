//! Recursive-descent parser producing the AST evaluated by `eval.rs`.
//!
//! Operator precedence (highest first), per FHIRPath N1 §"Operator precedence":
//! `.` / `[]`, unary `+ -`, `* / div mod`, `+ - &`, `is as`, `|`,
//! `< > <= >=`, `= ~ != !~`, `in contains`, `and`, `or xor`, `implies`.

use super::datetime::{parse_date, parse_datetime, parse_time};
use super::functions::{lookup_function, Func};
use super::lexer::{tokenize, Tok, Token};
use super::quantity::Quantity;
use super::value::Value;
use super::FhirPathError;
use rust_decimal::Decimal;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TypeSpec {
    pub ns: Option<String>,
    pub name: String,
}

impl std::fmt::Display for TypeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.ns {
            Some(ns) => write!(f, "{}.{}", ns, self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Mul,
    Div,
    IntDiv,
    Mod,
    Add,
    Sub,
    Concat,
    Union,
    Lt,
    Gt,
    Le,
    Ge,
    Eq,
    Ne,
    Equiv,
    NotEquiv,
    In,
    Contains,
    And,
    Or,
    Xor,
    Implies,
}

#[derive(Debug, Clone)]
pub(crate) enum Expr {
    Lit(Value<'static>),
    /// A constant collection: a union of literals folded at compile time
    /// (`'IMP' | 'ACUTE' | 'NONAC'`), duplicates removed as `|` does.
    Coll(Vec<Value<'static>>),
    Empty,
    /// Identifier evaluated against the current focus (may also match the focus' type name).
    Ident(String),
    Member(Box<Expr>, String),
    Call {
        target: Option<Box<Expr>>,
        func: Func,
        args: Vec<Expr>,
        type_arg: Option<TypeSpec>,
    },
    Index(Box<Expr>, Box<Expr>),
    This,
    IndexVar,
    Total,
    Const(String),
    Neg(Box<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
    Is(Box<Expr>, TypeSpec),
    As(Box<Expr>, TypeSpec),
}

/// Maximum nesting of parentheses / function arguments / unary operators while parsing.
const MAX_DEPTH: usize = 64;
/// Maximum depth of the resulting syntax tree (bounds evaluator recursion).
const MAX_AST_DEPTH: usize = 160;
/// Maximum number of tokens in one expression.
const MAX_TOKENS: usize = 4000;

pub(crate) const CALENDAR_UNITS: &[&str] = &[
    "year", "years", "month", "months", "week", "weeks", "day", "days", "hour", "hours", "minute", "minutes",
    "second", "seconds", "millisecond", "milliseconds",
];

struct Parser {
    toks: Vec<Token>,
    i: usize,
    depth: usize,
}

fn perr(pos: usize, msg: impl Into<String>) -> FhirPathError {
    FhirPathError::Parse { pos, msg: msg.into() }
}

pub(crate) fn parse(src: &str) -> Result<Expr, FhirPathError> {
    let toks = tokenize(src)?;
    if toks.len() > MAX_TOKENS {
        return Err(perr(0, format!("expression too long ({} tokens, at most {})", toks.len(), MAX_TOKENS)));
    }
    let mut p = Parser { toks, i: 0, depth: 0 };
    let e = p.expr()?;
    if p.peek() != &Tok::Eof {
        return Err(perr(p.pos(), format!("unexpected {}", describe(p.peek()))));
    }
    if ast_depth(&e) > MAX_AST_DEPTH {
        return Err(perr(0, "expression is nested too deeply"));
    }
    Ok(fold(e))
}

/// Depth of the syntax tree, computed without recursion.
fn ast_depth(root: &Expr) -> usize {
    let mut max = 0;
    let mut stack: Vec<(&Expr, usize)> = vec![(root, 1)];
    while let Some((e, d)) = stack.pop() {
        max = max.max(d);
        match e {
            Expr::Member(t, _) | Expr::Neg(t) | Expr::Is(t, _) | Expr::As(t, _) => stack.push((t, d + 1)),
            Expr::Index(a, b) | Expr::Bin(_, a, b) => {
                stack.push((a, d + 1));
                stack.push((b, d + 1));
            }
            Expr::Call { target, args, .. } => {
                if let Some(t) = target {
                    stack.push((t, d + 1));
                }
                for a in args {
                    stack.push((a, d + 1));
                }
            }
            _ => {}
        }
    }
    max
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("identifier '{}'", s),
        Tok::DelimIdent(s) => format!("identifier `{}`", s),
        Tok::Str(s) => format!("string '{}'", s),
        Tok::Number(s) => format!("number {}", s),
        Tok::Date(s) | Tok::DateTime(s) => format!("date/time @{}", s),
        Tok::Time(s) => format!("time @{}", s),
        Tok::ExtConst(s) => format!("constant %{}", s),
        Tok::Special(s) => format!("${}", s),
        Tok::Sym(s) => format!("'{}'", s),
        Tok::Eof => "end of expression".to_string(),
    }
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.i.min(self.toks.len() - 1)].tok
    }
    fn peek_at(&self, n: usize) -> &Tok {
        &self.toks[(self.i + n).min(self.toks.len() - 1)].tok
    }
    fn pos(&self) -> usize {
        self.toks[self.i.min(self.toks.len() - 1)].pos
    }
    fn advance(&mut self) -> Tok {
        let t = self.toks[self.i.min(self.toks.len() - 1)].tok.clone();
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        t
    }
    fn is_sym(&self, s: &str) -> bool {
        matches!(self.peek(), Tok::Sym(x) if *x == s)
    }
    fn is_kw(&self, s: &str) -> bool {
        matches!(self.peek(), Tok::Ident(x) if x == s)
    }
    fn expect_sym(&mut self, s: &str) -> Result<(), FhirPathError> {
        if self.is_sym(s) {
            self.advance();
            Ok(())
        } else {
            Err(perr(self.pos(), format!("expected '{}' but found {}", s, describe(self.peek()))))
        }
    }
    fn enter(&mut self) -> Result<(), FhirPathError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(perr(self.pos(), "expression is nested too deeply"));
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Expr, FhirPathError> {
        self.enter()?;
        let r = self.implies();
        self.depth -= 1;
        r
    }

    fn implies(&mut self) -> Result<Expr, FhirPathError> {
        let mut l = self.or_expr()?;
        while self.is_kw("implies") {
            self.advance();
            let r = self.or_expr()?;
            l = Expr::Bin(BinOp::Implies, Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn or_expr(&mut self) -> Result<Expr, FhirPathError> {
        let mut l = self.and_expr()?;
        loop {
            let op = if self.is_kw("or") {
                BinOp::Or
            } else if self.is_kw("xor") {
                BinOp::Xor
            } else {
                break;
            };
            self.advance();
            let r = self.and_expr()?;
            l = Expr::Bin(op, Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn and_expr(&mut self) -> Result<Expr, FhirPathError> {
        let mut l = self.membership()?;
        while self.is_kw("and") {
            self.advance();
            let r = self.membership()?;
            l = Expr::Bin(BinOp::And, Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn membership(&mut self) -> Result<Expr, FhirPathError> {
        let mut l = self.equality()?;
        loop {
            let op = if self.is_kw("in") {
                BinOp::In
            } else if self.is_kw("contains") {
                BinOp::Contains
            } else {
                break;
            };
            self.advance();
            let r = self.equality()?;
            l = Expr::Bin(op, Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn equality(&mut self) -> Result<Expr, FhirPathError> {
        let mut l = self.inequality()?;
        loop {
            let op = match self.peek() {
                Tok::Sym("=") => BinOp::Eq,
                Tok::Sym("!=") => BinOp::Ne,
                Tok::Sym("~") => BinOp::Equiv,
                Tok::Sym("!~") => BinOp::NotEquiv,
                _ => break,
            };
            self.advance();
            let r = self.inequality()?;
            l = Expr::Bin(op, Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn inequality(&mut self) -> Result<Expr, FhirPathError> {
        let mut l = self.union()?;
        loop {
            let op = match self.peek() {
                Tok::Sym("<") => BinOp::Lt,
                Tok::Sym(">") => BinOp::Gt,
                Tok::Sym("<=") => BinOp::Le,
                Tok::Sym(">=") => BinOp::Ge,
                _ => break,
            };
            self.advance();
            let r = self.union()?;
            l = Expr::Bin(op, Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn union(&mut self) -> Result<Expr, FhirPathError> {
        let mut l = self.type_expr()?;
        while self.is_sym("|") {
            self.advance();
            let r = self.type_expr()?;
            l = Expr::Bin(BinOp::Union, Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn type_expr(&mut self) -> Result<Expr, FhirPathError> {
        let mut l = self.additive()?;
        loop {
            let is = if self.is_kw("is") {
                true
            } else if self.is_kw("as") {
                false
            } else {
                break;
            };
            self.advance();
            let ts = self.type_specifier()?;
            l = if is { Expr::Is(Box::new(l), ts) } else { Expr::As(Box::new(l), ts) };
        }
        Ok(l)
    }
    fn type_specifier(&mut self) -> Result<TypeSpec, FhirPathError> {
        let first = self.identifier()?;
        if self.is_sym(".") {
            if let Tok::Ident(_) | Tok::DelimIdent(_) = self.peek_at(1) {
                self.advance();
                let second = self.identifier()?;
                return Ok(TypeSpec { ns: Some(first), name: second });
            }
        }
        Ok(TypeSpec { ns: None, name: first })
    }
    fn identifier(&mut self) -> Result<String, FhirPathError> {
        match self.peek().clone() {
            Tok::Ident(s) | Tok::DelimIdent(s) => {
                self.advance();
                Ok(s)
            }
            t => Err(perr(self.pos(), format!("expected an identifier but found {}", describe(&t)))),
        }
    }
    fn additive(&mut self) -> Result<Expr, FhirPathError> {
        let mut l = self.multiplicative()?;
        loop {
            let op = match self.peek() {
                Tok::Sym("+") => BinOp::Add,
                Tok::Sym("-") => BinOp::Sub,
                Tok::Sym("&") => BinOp::Concat,
                _ => break,
            };
            self.advance();
            let r = self.multiplicative()?;
            l = Expr::Bin(op, Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn multiplicative(&mut self) -> Result<Expr, FhirPathError> {
        let mut l = self.unary()?;
        loop {
            let op = match self.peek() {
                Tok::Sym("*") => BinOp::Mul,
                Tok::Sym("/") => BinOp::Div,
                Tok::Ident(s) if s == "div" => BinOp::IntDiv,
                Tok::Ident(s) if s == "mod" => BinOp::Mod,
                _ => break,
            };
            self.advance();
            let r = self.unary()?;
            l = Expr::Bin(op, Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn unary(&mut self) -> Result<Expr, FhirPathError> {
        if self.is_sym("-") || self.is_sym("+") {
            let neg = self.is_sym("-");
            self.advance();
            self.enter()?;
            let inner = self.unary();
            self.depth -= 1;
            let inner = inner?;
            if !neg {
                return Ok(inner);
            }
            // fold negative numeric literals
            return Ok(match inner {
                Expr::Lit(Value::Integer(i)) => Expr::Lit(Value::Integer(-i)),
                Expr::Lit(Value::Decimal(d)) => Expr::Lit(Value::Decimal(if d.is_zero() { d } else { -d })),
                e => Expr::Neg(Box::new(e)),
            });
        }
        self.postfix()
    }
    fn postfix(&mut self) -> Result<Expr, FhirPathError> {
        let mut e = self.term()?;
        loop {
            if self.is_sym(".") {
                self.advance();
                e = self.invocation(Some(e))?;
            } else if self.is_sym("[") {
                self.advance();
                let idx = self.expr()?;
                self.expect_sym("]")?;
                e = Expr::Index(Box::new(e), Box::new(idx));
            } else {
                break;
            }
        }
        Ok(e)
    }

    fn invocation(&mut self, target: Option<Expr>) -> Result<Expr, FhirPathError> {
        let pos = self.pos();
        match self.peek().clone() {
            Tok::Special(s) if target.is_none() => {
                self.advance();
                Ok(match s.as_str() {
                    "this" => Expr::This,
                    "index" => Expr::IndexVar,
                    _ => Expr::Total,
                })
            }
            Tok::Ident(name) | Tok::DelimIdent(name) => {
                let delimited = matches!(self.peek(), Tok::DelimIdent(_));
                self.advance();
                if self.is_sym("(") && !delimited {
                    self.advance();
                    let mut args = Vec::new();
                    if !self.is_sym(")") {
                        loop {
                            args.push(self.expr()?);
                            if self.is_sym(",") {
                                self.advance();
                                continue;
                            }
                            break;
                        }
                    }
                    self.expect_sym(")")?;
                    return self.make_call(target, &name, args, pos);
                }
                if self.is_sym("(") && delimited {
                    return Err(perr(pos, "a delimited identifier cannot be used as a function name"));
                }
                Ok(match target {
                    Some(t) => Expr::Member(Box::new(t), name),
                    None => Expr::Ident(name),
                })
            }
            t => Err(perr(pos, format!("expected an identifier or function but found {}", describe(&t)))),
        }
    }

    fn make_call(&mut self, target: Option<Expr>, name: &str, mut args: Vec<Expr>, pos: usize) -> Result<Expr, FhirPathError> {
        let (func, min, max) =
            lookup_function(name).ok_or_else(|| perr(pos, format!("unknown function '{}'", name)))?;
        if args.len() < min || args.len() > max {
            return Err(perr(
                pos,
                format!("function '{}' expects {} argument(s), got {}", name, if min == max { min.to_string() } else { format!("{}..{}", min, max) }, args.len()),
            ));
        }
        let mut type_arg = None;
        if matches!(func, Func::Is | Func::As | Func::OfType) {
            let a = args.pop().ok_or_else(|| perr(pos, "missing type argument"))?;
            type_arg = Some(expr_to_typespec(&a).ok_or_else(|| perr(pos, format!("'{}' expects a type name argument", name)))?);
        }
        Ok(Expr::Call { target: target.map(Box::new), func, args, type_arg })
    }

    fn term(&mut self) -> Result<Expr, FhirPathError> {
        let pos = self.pos();
        match self.peek().clone() {
            Tok::Number(n) => {
                self.advance();
                let num = number_value(&n).ok_or_else(|| perr(pos, format!("invalid number '{}'", n)))?;
                // quantity?
                match self.peek().clone() {
                    Tok::Str(unit) => {
                        self.advance();
                        let q = Quantity::new(to_dec(&num), unit, false);
                        Ok(Expr::Lit(Value::Quantity(q)))
                    }
                    Tok::Ident(u) if CALENDAR_UNITS.contains(&u.as_str()) => {
                        self.advance();
                        Ok(Expr::Lit(Value::Quantity(Quantity::new(to_dec(&num), u, true))))
                    }
                    _ => Ok(Expr::Lit(num)),
                }
            }
            Tok::Str(s) => {
                self.advance();
                Ok(Expr::Lit(Value::String(s.into())))
            }
            Tok::Date(s) => {
                self.advance();
                let d = parse_date(&s).ok_or_else(|| perr(pos, format!("invalid date literal @{}", s)))?;
                Ok(Expr::Lit(Value::Date(d)))
            }
            Tok::DateTime(s) => {
                self.advance();
                let d = parse_datetime(&s).ok_or_else(|| perr(pos, format!("invalid datetime literal @{}", s)))?;
                Ok(Expr::Lit(Value::DateTime(d)))
            }
            Tok::Time(s) => {
                self.advance();
                let t = parse_time(&s[1..]).ok_or_else(|| perr(pos, format!("invalid time literal @{}", s)))?;
                Ok(Expr::Lit(Value::Time(t)))
            }
            Tok::ExtConst(s) => {
                self.advance();
                Ok(Expr::Const(s))
            }
            Tok::Sym("(") => {
                self.advance();
                let e = self.expr()?;
                self.expect_sym(")")?;
                Ok(e)
            }
            Tok::Sym("{") => {
                self.advance();
                self.expect_sym("}")?;
                Ok(Expr::Empty)
            }
            Tok::Ident(s) if s == "true" || s == "false" => {
                // `true(` would be a function call; not supported
                self.advance();
                Ok(Expr::Lit(Value::Boolean(s == "true")))
            }
            Tok::Ident(_) | Tok::DelimIdent(_) | Tok::Special(_) => self.invocation(None),
            t => Err(perr(pos, format!("unexpected {}", describe(&t)))),
        }
    }
}

fn to_dec(v: &Value<'static>) -> Decimal {
    match v {
        Value::Integer(i) => Decimal::from(*i),
        Value::Decimal(d) => *d,
        _ => Decimal::ZERO,
    }
}

fn number_value(n: &str) -> Option<Value<'static>> {
    if n.contains('.') {
        Decimal::from_str(n).ok().map(Value::Decimal)
    } else {
        match n.parse::<i64>() {
            Ok(i) => Some(Value::Integer(i)),
            Err(_) => Decimal::from_str(n).ok().map(Value::Decimal),
        }
    }
}

pub(crate) fn expr_to_typespec(e: &Expr) -> Option<TypeSpec> {
    match e {
        Expr::Ident(n) => Some(TypeSpec { ns: None, name: n.clone() }),
        Expr::Member(t, n) => match &**t {
            Expr::Ident(ns) => Some(TypeSpec { ns: Some(ns.clone()), name: n.clone() }),
            _ => None,
        },
        _ => None,
    }
}

/// Whether evaluating `e` can read its input (the focus at the root, `$this`,
/// `$index`, `$total`) or one of the `item_vars` (`%name` variables bound to the
/// input, e.g. `%resource`). `root`: the current focus is the expression's input
/// (false inside the lambda argument of `where`/`select`/`all`/`exists`/`repeat`,
/// whose focus is an item of the target). Conservative: `true` when unsure.
pub(crate) fn reads_input(e: &Expr, root: bool, item_vars: &[&str]) -> bool {
    match e {
        Expr::Lit(_) | Expr::Coll(_) | Expr::Empty => false,
        Expr::Ident(_) | Expr::This | Expr::IndexVar | Expr::Total => root,
        Expr::Const(name) => item_vars.contains(&name.as_str()),
        Expr::Member(t, _) | Expr::Neg(t) | Expr::Is(t, _) | Expr::As(t, _) => reads_input(t, root, item_vars),
        Expr::Index(a, b) | Expr::Bin(_, a, b) => reads_input(a, root, item_vars) || reads_input(b, root, item_vars),
        Expr::Call { target, func, args, .. } => {
            let lambda = matches!(func, Func::Where | Func::Select | Func::All | Func::Exists | Func::Repeat);
            let input = match target {
                Some(t) => reads_input(t, root, item_vars),
                // the implicit input is the focus (clock functions ignore it)
                None => root && !matches!(func, Func::Now | Func::Today | Func::TimeOfDay),
            };
            input || args.iter().any(|a| reads_input(a, root && !lambda, item_vars))
        }
    }
}

/// Folds unions of literals into constant collections ([`Expr::Coll`]), so
/// `code in ('a' | 'b' | 'c')` does not build and de-duplicate the set on
/// every evaluation.
fn fold(e: Expr) -> Expr {
    let b = |x: Box<Expr>| Box::new(fold(*x));
    match e {
        Expr::Bin(BinOp::Union, l, r) => {
            let (l, r) = (fold(*l), fold(*r));
            let consts = |x: &Expr| match x {
                Expr::Lit(v) => Some(vec![v.clone()]),
                Expr::Coll(vs) => Some(vs.clone()),
                _ => None,
            };
            match (consts(&l), consts(&r)) {
                (Some(a), Some(c)) => Expr::Coll(super::eval::union(a, c)),
                _ => Expr::Bin(BinOp::Union, Box::new(l), Box::new(r)),
            }
        }
        Expr::Bin(op, l, r) => Expr::Bin(op, b(l), b(r)),
        Expr::Member(t, n) => Expr::Member(b(t), n),
        Expr::Call { target, func, args, type_arg } => {
            Expr::Call { target: target.map(b), func, args: args.into_iter().map(fold).collect(), type_arg }
        }
        Expr::Index(t, i) => Expr::Index(b(t), b(i)),
        Expr::Neg(t) => Expr::Neg(b(t)),
        Expr::Is(t, ts) => Expr::Is(b(t), ts),
        Expr::As(t, ts) => Expr::As(b(t), ts),
        other => other,
    }
}
