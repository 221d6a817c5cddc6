//! Unit tests of the expression language.

use super::ast::{At, CmpOp, LitValue, Literal, MetaField, Node, Predicate, Test};
use super::eval::cmp_int_float;
use super::lex::Keyword;
use super::*;
use crate::record::Value;
use std::cmp::Ordering;

fn record(pairs: &[(&str, Value)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn sample() -> Fields {
    record(&[
        ("site", Value::String("berlin".into())),
        ("temp", Value::Float(21.5)),
        ("count", Value::Int(3)),
        ("big", Value::Int(9_007_199_254_740_993)), // 2^53 + 1
        ("ok", Value::Bool(true)),
        ("nothing", Value::Null),
        (
            "seen",
            Value::Timestamp(Timestamp::parse_rfc3339("2024-05-01T12:00:00Z").unwrap()),
        ),
        (
            "tags",
            Value::Json(serde_json::json!(["red", 7, 2.5, true, null])),
        ),
        ("doc", Value::Json(serde_json::json!({"a": 1}))),
        ("jstr", Value::Json(serde_json::json!("hello world"))),
        ("jnum", Value::Json(serde_json::json!(4))),
        ("jnull", Value::Json(serde_json::Value::Null)),
        ("nan", Value::Float(f64::NAN)),
    ])
}

#[track_caller]
fn eval(source: &str) -> bool {
    match parse(source) {
        Ok(expr) => expr.eval(&sample()),
        Err(e) => panic!("`{source}` did not parse: {e}"),
    }
}

#[test]
fn evaluates_every_operator_precedence_and_null_rule() {
    let cases: &[(&str, bool)] = &[
        // == and != on each type
        ("site == 'berlin'", true),
        ("site == \"berlin\"", true),
        ("site != 'berlin'", false),
        ("site != 'paris'", true),
        ("count == 3", true),
        ("count != 3", false),
        ("ok == true", true),
        ("ok != false", true),
        ("ok == false", false),
        // ordering
        ("count < 4", true),
        ("count <= 3", true),
        ("count > 3", false),
        ("count >= 3", true),
        ("site < 'c'", true),
        ("site > 'Berlin'", true), // byte order: 'b' > 'B'
        ("site >= 'berlin'", true),
        ("site > 'Zurich'", true), // byte order: 'b' > 'Z'
        // int/float mixing, exact
        ("count == 3.0", true),
        ("count < 3.5", true),
        ("count > 2.999", true),
        ("temp > 21", true),
        ("temp == 21.5", true),
        ("temp < 2.15e1", false),
        ("temp <= 2.15E+1", true),
        ("temp > -1e3", true),
        ("big > 9007199254740992.0", true),
        ("big == 9007199254740992.0", false),
        ("big != 9007199254740992.0", true),
        ("count < 1e300", true),
        ("count > -1e300", true),
        // in / not in
        ("site in ['paris', 'berlin']", true),
        ("site in ['paris']", false),
        ("site in []", false),
        ("site not in ['paris']", true),
        ("site not in ['berlin', 'paris']", false),
        ("site not in []", true),
        ("count in [1, 2.0, 3]", true),
        ("count not in [1, 2]", true),
        // contains
        ("site contains 'erl'", true),
        ("site contains 'x'", false),
        ("site contains ''", true),
        ("tags contains 'red'", true),
        ("tags contains 'blue'", false),
        ("tags contains 7", true),
        ("tags contains 7.0", true),
        ("tags contains 2.5", true),
        ("tags contains true", true),
        ("tags contains 're'", false),
        ("jstr contains 'lo wo'", true),
        ("count contains 3", false),
        ("doc contains 'a'", false),
        // json scalars
        ("jstr == 'hello world'", true),
        ("jnum == 4", true),
        ("jnum == 4.0", true),
        ("jnum in [1, 4]", true),
        ("jnum > 1", false), // json has no ordering
        ("doc == 1", false),
        ("tags == 'red'", false),
        // booleans have no ordering
        ("ok > false", false),
        // is null / == null / != null
        ("nothing is null", true),
        ("missing is null", true),
        ("jnull is null", true),
        ("site is null", false),
        ("site is not null", true),
        ("missing is not null", false),
        ("missing == null", true),
        ("missing != null", false),
        ("site != null", true),
        // null in anything else is false; two-valued not
        ("missing == 1", false),
        ("missing != 1", false),
        ("missing > 1", false),
        ("missing < 1", false),
        ("missing in [1]", false),
        ("missing not in [1]", false),
        ("missing not in []", false),
        ("missing contains 'a'", false),
        ("not (missing > 3)", true),
        ("not missing > 3", true),
        ("jnull == 1", false),
        // mismatched types are false, also for !=
        ("count == '3'", false),
        ("count != '3'", false),
        ("site == 1", false),
        ("site not in [1]", false),
        ("ok == 1", false),
        ("seen == 1", false),
        // NaN equals and orders against nothing
        ("nan == 1.0", false),
        ("nan != 1.0", false),
        ("nan < 1.0", false),
        // timestamps
        ("seen == '2024-05-01T12:00:00Z'", true),
        ("seen == '2024-05-01T14:00:00+02:00'", true),
        ("seen < '2024-05-01T12:00:00.000001Z'", true),
        ("seen > '2024-05-01T11:59:59Z'", true),
        ("seen >= '2025-01-01T00:00:00Z'", false),
        (
            "seen in ['2020-01-01T00:00:00Z', '2024-05-01T12:00:00Z']",
            true,
        ),
        ("seen == 'yesterday'", false),
        ("seen != 'yesterday'", false),
        // boolean operators and precedence
        ("site == 'berlin' and count == 3", true),
        ("site == 'berlin' and count == 4", false),
        ("site == 'paris' or count == 3", true),
        ("site == 'paris' or count == 4", false),
        ("site == 'paris' or count == 3 and ok == false", false), // and binds tighter
        ("(site == 'paris' or count == 3) and ok == true", true),
        ("site == 'berlin' or count == 4 and ok == false", true),
        ("not site == 'paris' and count == 3", true), // not binds tighter than and
        ("not (site == 'berlin' and count == 4)", true),
        ("not not site == 'berlin'", true),
        ("!(site == 'paris') && count == 3", true),
        ("site == 'paris' || !ok == false", true),
        ("SITE == 'berlin'", false), // field names are case-sensitive
        ("site == 'berlin' AND count IS NOT NULL", true),
        ("site NOT IN ['x'] Or ok == False", true),
        ("((((count == 3))))", true),
    ];
    for (source, expected) in cases {
        assert_eq!(eval(source), *expected, "`{source}`");
    }
}

#[test]
fn eval_of_an_empty_record_is_all_null() {
    let empty = Fields::new();
    assert!(parse("a is null and b == null").unwrap().eval(&empty));
    assert!(!parse("a == 1 or a != 1").unwrap().eval(&empty));
}

#[test]
fn int_float_comparison_is_exact_at_the_edges() {
    use Ordering::*;
    assert_eq!(
        cmp_int_float(i64::MAX, 9_223_372_036_854_775_808.0),
        Some(Less)
    );
    assert_eq!(
        cmp_int_float(i64::MIN, -9_223_372_036_854_775_808.0),
        Some(Equal)
    );
    assert_eq!(cmp_int_float(i64::MIN, -1e19), Some(Greater));
    assert_eq!(cmp_int_float(-3, -2.5), Some(Less));
    assert_eq!(cmp_int_float(-2, -2.5), Some(Greater));
    assert_eq!(cmp_int_float(0, -0.0), Some(Equal));
    assert_eq!(cmp_int_float(1, f64::NAN), None);
    assert_eq!(cmp_int_float(1, f64::INFINITY), Some(Less));
}

#[test]
fn strings_unescape_and_display_canonically() {
    let expr = parse(r#"s == 'it\'s' or s == "a \"q\" \\ \n\t\r" or s == 'é"'"#).unwrap();
    let fields = record(&[("s", Value::String("a \"q\" \\ \n\t\r".into()))]);
    assert!(expr.eval(&fields));
    assert_eq!(
        expr.to_string(),
        r#"s == 'it\'s' or s == 'a "q" \\ \n\t\r' or s == 'é"'"#
    );
    assert_eq!(parse(&expr.to_string()).unwrap(), expr);
}

#[test]
fn display_is_canonical_and_keeps_grouping() {
    let cases = [
        ("a==1&&b!=2||!c<3", "a == 1 and b != 2 or not c < 3"),
        (
            "a == 1 or (b == 2 or c == 3)",
            "a == 1 or (b == 2 or c == 3)",
        ),
        (
            "(a == 1 or b == 2) or c == 3",
            "(a == 1 or b == 2) or c == 3",
        ),
        (
            "a == 1 and (b == 2 and c == 3)",
            "a == 1 and (b == 2 and c == 3)",
        ),
        (
            "(a == 1 or b == 2) and c == 3",
            "(a == 1 or b == 2) and c == 3",
        ),
        ("NOT (a == 1 AND b == 2)", "not (a == 1 and b == 2)"),
        ("not(not(a is null))", "not not a is null"),
        ("a IN [1,2.0,'x',TRUE]", "a in [1, 2.0, 'x', true]"),
        ("a not in []", "a not in []"),
        ("a contains \"x\"", "a contains 'x'"),
        ("a is not null", "a is not null"),
        ("a == NULL", "a == null"),
        ("a >= -1e-7", "a >= -1e-7"),
        ("a < 1E3", "a < 1000.0"),
        ("a == -0.0", "a == -0.0"),
    ];
    for (source, canonical) in cases {
        let expr = parse(source).unwrap();
        assert_eq!(expr.to_string(), canonical, "`{source}`");
        assert_eq!(expr.source(), source);
        let again = parse(canonical).unwrap();
        assert_eq!(again, expr, "`{source}`");
    }
    // Equality ignores layout but not meaning.
    assert_eq!(parse("a==1").unwrap(), parse("  a  ==  1 ").unwrap());
    assert_ne!(parse("a == 1").unwrap(), parse("a == 1.0").unwrap());
    assert_ne!(
        parse("a == 1 or b == 2").unwrap(),
        parse("b == 2 or a == 1").unwrap()
    );
}

#[test]
fn fields_lists_every_name_once() {
    let expr = parse("a == 1 or not (b in [1] and c contains 'x') or a is null").unwrap();
    assert_eq!(expr.fields(), BTreeSet::from(["a", "b", "c"]));
}

#[test]
fn errors_say_where_what_was_found_and_what_was_expected() {
    let cases: &[(&str, usize, &str)] = &[
        ("", 1, "expression is empty"),
        ("   ", 4, "expression is empty"),
        (
            "site ==",
            8,
            "expected a value after `==`, found end of input",
        ),
        ("site = 'x'", 6, "unknown operator `=`; did you mean `==`?"),
        (
            "site === 'x'",
            6,
            "unknown operator `===`; did you mean `==`?",
        ),
        (
            "site !== 'x'",
            6,
            "unknown operator `!==`; did you mean `!=`?",
        ),
        (
            "site <> 'x'",
            6,
            "unknown operator `<>`; did you mean `!=`?",
        ),
        ("site =< 1", 6, "unknown operator `=<`; did you mean `<=`?"),
        ("site => 1", 6, "unknown operator `=>`; did you mean `>=`?"),
        (
            "a == 1 & b == 2",
            8,
            "unknown operator `&`; did you mean `&&` or `and`?",
        ),
        (
            "a == 1 | b == 2",
            8,
            "unknown operator `|`; did you mean `||` or `or`?",
        ),
        (
            "site == 'berl",
            9,
            "unterminated string starting at column 9",
        ),
        ("a == 1 or é == 2", 11, "unexpected character `é`"),
        ("s == 'x\\", 6, "unterminated string starting at column 6"),
        (
            "s == 'a\\qb'",
            8,
            "unknown escape `\\q` in string; use \\\\, \\', \\\", \\n, \\t or \\r",
        ),
        (
            "a == 1 and",
            11,
            "expected a field name, `not` or `(` after `and`, found end of input",
        ),
        (
            "a == 1 OR ) ",
            11,
            "expected a field name, `not` or `(` after `OR`, found `)`",
        ),
        (
            "not",
            4,
            "expected a field name, `not` or `(` after `not`, found end of input",
        ),
        (
            "(a == 1",
            8,
            "expected `)` to close the `(` at column 1, found end of input",
        ),
        ("()", 2, "expected an expression inside `()`"),
        ("a == 1)", 7, "found `)` with no matching `(`"),
        (
            "a == 1 b == 2",
            8,
            "expected `and`, `or` or end of input, found field `b`",
        ),
        (
            "a == 1 'x'",
            8,
            "expected `and`, `or` or end of input, found string 'x'",
        ),
        (
            "active",
            7,
            "expected an operator after field `active` (==, !=, <, <=, >, >=, in, not in, \
             contains, is null), found end of input",
        ),
        (
            "'berlin' == site",
            1,
            "expected a field name, `not` or `(`, found string 'berlin'",
        ),
        (
            "and == 1",
            1,
            "expected a field name, `not` or `(`, found `and`",
        ),
        (
            "site == berlin",
            9,
            "expected a value after `==`, found field `berlin`; fields can only be \
             compared with values (to compare with the text, quote it: 'berlin')",
        ),
        ("a == )", 6, "expected a value after `==`, found `)`"),
        ("a in 1", 6, "expected `[` after `in`, found number 1"),
        ("a not 1", 7, "expected `in` after `a not`, found number 1"),
        (
            "a in [1, 2",
            11,
            "expected `,` or `]` in the list opened at column 6, found end of input",
        ),
        ("a in [1,]", 9, "expected a value after `,`, found `]`"),
        (
            "a in [1, null]",
            10,
            "a list cannot hold `null`; use `is null` to test for null",
        ),
        ("a is 1", 6, "expected `null` after `is`, found number 1"),
        (
            "a is not true",
            10,
            "expected `null` after `is not`, found `true`",
        ),
        (
            "a < null",
            5,
            "`<` cannot compare with `null`; use `is null` or `is not null`",
        ),
        (
            "a contains null",
            12,
            "`contains` needs a value, not `null`; use `is null` to test for null",
        ),
        ("a == 1e999", 6, "number `1e999` is out of range"),
        (
            "a == 9223372036854775808",
            6,
            "integer `9223372036854775808` is out of range (from -9223372036854775808 to \
             9223372036854775807)",
        ),
        (
            "a == 1.",
            6,
            "expected a digit after the `.` in number `1.`",
        ),
        (
            "a == 1e+",
            6,
            "expected digits in the exponent of number `1e+`",
        ),
        (
            "a == 12abc",
            6,
            "invalid number `12abc`; a duration is a number with a unit: ms, s, m, h, d or w \
             (e.g. 7d, 1h30m)",
        ),
        ("a == - 3", 6, "expected a digit after `-`"),
        (
            "a == .5",
            6,
            "a number needs a digit before the `.`, like 0.5",
        ),
        ("a @ 1", 3, "unexpected character `@`"),
    ];
    for (source, column, message) in cases {
        let error = parse(source).expect_err(source);
        assert_eq!(
            (error.column, error.message.as_str()),
            (*column, *message),
            "`{source}`"
        );
        let prefix: String = source.chars().take(column - 1).collect();
        assert_eq!(error.offset, prefix.len(), "`{source}`");
    }
    assert_eq!(
        parse("site ==").unwrap_err().to_string(),
        "at column 8: expected a value after `==`, found end of input"
    );
}

#[test]
fn now_is_read_at_evaluation_and_offsets_by_durations() {
    let seen = Timestamp::parse_rfc3339("2024-05-01T12:00:00Z").unwrap();
    let hours = |h: i64| Timestamp::from_micros(seen.as_micros() + h * 3_600_000_000);
    let record = sample();
    let cases: &[(&str, Timestamp, bool)] = &[
        ("seen > now() - 1h", hours(0), true),
        ("seen > now() - 1h", hours(1), false),
        ("seen >= now() - 1h", hours(1), true),
        ("seen > now()-1h", hours(2), false),
        ("seen < now() - 7d", hours(7 * 24 + 1), true),
        ("seen < now() - 1w", hours(7 * 24 - 1), false),
        ("seen < now() + 30m", hours(0), true),
        ("seen <= now() - 1h30m", hours(2), true),
        ("seen <= now() - 1h - 30m", hours(1), false),
        ("seen > NOW() - 90s", hours(0), true),
        ("not (seen > now() - 1h)", hours(5), true),
        // Only timestamp fields compare with a time; null is false.
        ("site > now() - 1h", hours(0), false),
        ("nothing > now() - 1h", hours(0), false),
        ("missing < now()", hours(0), false),
    ];
    for (source, now, expected) in cases {
        let expr = parse(source).unwrap_or_else(|e| panic!("`{source}`: {e}"));
        assert!(expr.is_relative(), "`{source}`");
        assert_eq!(
            expr.eval_at(&record, None, *now),
            *expected,
            "`{source}` at {now}"
        );
    }
    // eval reads the clock: a time in 2024 is more than a day ago.
    assert!(parse("seen < now() - 1d").unwrap().eval(&record));
    assert!(!parse("seen == '2024-05-01T12:00:00Z'")
        .unwrap()
        .is_relative());
    // Saturates instead of overflowing at the ends of time.
    assert!(parse("seen > now() - 10000000w")
        .unwrap()
        .eval_at(&record, None, Timestamp::MIN));
}

#[test]
fn meta_fields_read_the_instance_bookkeeping() {
    let t = |s: &str| Timestamp::parse_rfc3339(s).unwrap();
    let meta = RowMeta {
        version: 7,
        first_seen: t("2024-01-01T00:00:00Z"),
        last_seen: t("2024-05-01T12:00:00Z"),
        event_time: t("2024-05-01T11:59:00Z"),
    };
    let now = t("2024-05-01T14:00:00Z");
    let record = sample();
    let cases: &[(&str, bool)] = &[
        ("_meta.lastSeen < now() - 1h", true),
        ("_meta.lastSeen > now() - 1h", false),
        ("_meta.firstSeen < '2024-02-01T00:00:00Z'", true),
        ("_meta.eventTime >= '2024-05-01T11:59:00Z'", true),
        ("_meta.version >= 7 and _meta.version in [7, 8]", true),
        ("_meta.version > 7", false),
        ("_meta.lastSeen is null", false),
    ];
    for (source, expected) in cases {
        let expr = parse(source).unwrap_or_else(|e| panic!("`{source}`: {e}"));
        assert_eq!(
            expr.eval_at(&record, Some(&meta), now),
            *expected,
            "`{source}`"
        );
        assert_eq!(expr.to_string(), *source, "displays as written");
    }
    // Without an instance at hand, _meta is null.
    let silent = parse("_meta.lastSeen < now() - 1h").unwrap();
    assert!(!silent.eval_at(&record, None, now));
    assert!(parse("_meta.lastSeen is null").unwrap().eval(&record));
    assert!(silent.eval_row(&record, &meta), "2024 is long ago");
    assert_eq!(
        problems("_meta.lastSeen > 5 or _meta.version < now() or _meta.nope == 1"),
        vec![
            (
                18,
                "cannot compare timestamp field `_meta.lastSeen` with an integer; write the \
                 time as an RFC 3339 string like '2024-05-01T12:00:00Z'"
                    .to_string()
            ),
            (
                39,
                "cannot compare int field `_meta.version` with a time (now()): only \
                 timestamp fields compare with now()"
                    .to_string()
            ),
            (
                48,
                "unknown field `_meta.nope`; the _meta fields are _meta.lastSeen, \
                 _meta.firstSeen, _meta.eventTime, _meta.version"
                    .to_string()
            ),
        ]
    );
}

#[test]
fn times_display_canonically_and_parse_back() {
    let cases = [
        ("seen>now()", "seen > now()"),
        ("seen > now()-7d", "seen > now() - 7d"),
        ("seen > Now() + 90m", "seen > now() + 1h30m"),
        ("seen > now() - 1w", "seen > now() - 7d"),
        ("seen > now() - 1h - 1h + 30s", "seen > now() - 1h59m30s"),
        ("seen > now() - 1500ms", "seen > now() - 1s500ms"),
        ("seen > now() - 1h + 1h", "seen > now()"),
    ];
    for (source, canonical) in cases {
        let expr = parse(source).unwrap();
        assert_eq!(expr.to_string(), canonical, "`{source}`");
        assert_eq!(parse(canonical).unwrap(), expr, "`{canonical}`");
    }
    assert_ne!(
        parse("seen > now() - 1h").unwrap(),
        parse("seen > now() - 2h").unwrap()
    );
    // A field may still be called `now`.
    assert!(parse("now == 1").is_ok());
}

#[test]
fn misused_times_are_refused_with_their_column() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "seen == now()",
            9,
            "`==` with a time relative to now() holds for at most one microsecond; use \
             `<`, `<=`, `>` or `>=`",
        ),
        (
            "seen > 7d",
            8,
            "a duration needs a time to count from: write `now() - 7d`",
        ),
        (
            "seen > now() - 7",
            16,
            "expected a duration after `now() -`, like 7d, 1h, 30m or 10s; found number 7",
        ),
        (
            "seen > now()-7",
            13,
            "expected a duration after `now() -`, like 7d, 1h, 30m or 10s; found number -7",
        ),
        (
            "seen > now() - 7x",
            16,
            "invalid number `7x`; a duration is a number with a unit: ms, s, m, h, d or w \
             (e.g. 7d, 1h30m)",
        ),
        (
            "seen > now(1)",
            12,
            "expected `)` after `now(`: now() takes no arguments, found number 1",
        ),
        (
            "now() > seen",
            1,
            "now() goes on the right of a comparison, after a timestamp field: write \
             `reported_at > now() - 7d`",
        ),
        (
            "seen in [now()]",
            10,
            "a time relative to now() cannot be used in a list; compare with `<`, `<=`, \
             `>` or `>=`",
        ),
        (
            "tags contains now()",
            15,
            "a time relative to now() cannot be used in contains; compare with `<`, `<=`, \
             `>` or `>=`",
        ),
        (
            "seen > now() - 99999999999999d",
            16,
            "invalid number `99999999999999d`; the duration is out of range",
        ),
        ("seen > now() * 2", 14, "unexpected character `*`"),
    ];
    for (source, column, message) in cases {
        let error = parse(source).expect_err(source);
        assert_eq!(
            (error.column, error.message.as_str()),
            (*column, *message),
            "`{source}`"
        );
    }
}

#[test]
fn check_allows_now_only_against_timestamp_fields() {
    assert_eq!(problems("seen > now() - 7d and seen <= now()"), vec![]);
    assert_eq!(
        problems("count > now() - 1h or site < now() or tags > now()"),
        vec![
            (
                9,
                "cannot compare int field `count` with a time (now() - 1h): only timestamp \
                 fields compare with now()"
                    .to_string()
            ),
            (
                30,
                "cannot compare string field `site` with a time (now()): only timestamp \
                 fields compare with now()"
                    .to_string()
            ),
            (
                39,
                "cannot order json field `tags` with `>`; use `==`, `!=` or `in`".to_string()
            ),
        ]
    );
}

#[test]
fn limits_refuse_hostile_input() {
    let long = format!("a == '{}'", "x".repeat(MAX_SOURCE_BYTES));
    let error = parse(&long).unwrap_err();
    assert_eq!(
        error.message,
        format!("expression is {} bytes long; the limit is 4096", long.len())
    );

    let nested = |n: usize| format!("{}a == 1{}", "(".repeat(n), ")".repeat(n));
    assert!(parse(&nested(MAX_DEPTH)).is_ok());
    let error = parse(&nested(MAX_DEPTH + 1)).unwrap_err();
    assert_eq!(
        (error.column, error.message.as_str()),
        (
            65,
            "expression nests deeper than 64 levels of `(` and `not`"
        )
    );
    assert!(parse(&format!("{}a == 1", "not ".repeat(MAX_DEPTH))).is_ok());
    assert!(parse(&format!("{}a == 1", "!".repeat(MAX_DEPTH + 1))).is_err());
    assert!(parse(&"(".repeat(10_000)).is_err());
    assert!(parse(&"(".repeat(4_000))
        .unwrap_err()
        .message
        .contains("nests deeper"));

    let list = |n: usize| format!("a in [{}]", vec!["1"; n].join(","));
    assert!(parse(&list(MAX_LIST_LEN)).is_ok());
    let error = parse(&list(MAX_LIST_LEN + 1)).unwrap_err();
    assert_eq!(error.message, "list has more than 1024 values");
    assert_eq!(error.offset, 6 + 2 * MAX_LIST_LEN);
}

fn declared(name: &str) -> Option<OperandType> {
    match name {
        "site" => Some(OperandType::String),
        "count" => Some(OperandType::Int),
        "temperature_c" => Some(OperandType::Float),
        "ok" => Some(OperandType::Bool),
        "seen" => Some(OperandType::Timestamp),
        "tags" => Some(OperandType::Json),
        _ => None,
    }
}

#[track_caller]
fn problems(source: &str) -> Vec<(usize, String)> {
    parse(source)
        .unwrap()
        .check(&declared)
        .into_iter()
        .map(|e| (e.column, e.message))
        .collect()
}

#[test]
fn check_accepts_well_typed_expressions() {
    let fine = [
        "site == 'berlin' and site in ['a', 'b'] and site contains 'x'",
        "count == 3 and count < 2.5 and temperature_c >= -4 and temperature_c in [1, 2.5]",
        "ok == true and ok != false and ok in [true]",
        "seen >= '2024-05-01T00:00:00Z' and seen in ['2024-05-01T00:00:00+02:00']",
        "tags contains 'red' and tags contains 3 and tags == 'x' and tags != 1",
        "site is null or count == null or ok != null or tags is not null",
    ];
    for source in fine {
        assert_eq!(problems(source), vec![], "`{source}`");
    }
}

#[test]
fn check_reports_every_problem_with_its_column() {
    assert_eq!(
        problems("sitee == 'berlin' or temperature_c == 'hot'"),
        vec![
            (1, "unknown field `sitee`".to_string()),
            (
                39,
                "cannot compare float field `temperature_c` with a string".to_string()
            ),
        ]
    );
    assert_eq!(
        problems("seen > 'yesterday'"),
        vec![(
            8,
            "cannot compare timestamp field `seen` with 'yesterday': not an RFC 3339 \
             timestamp like '2024-05-01T12:00:00Z'"
                .to_string()
        )]
    );
    assert_eq!(
        problems("seen > 1714560000"),
        vec![(
            8,
            "cannot compare timestamp field `seen` with an integer; write the time as an \
             RFC 3339 string like '2024-05-01T12:00:00Z'"
                .to_string()
        )]
    );
    assert_eq!(
        problems("ok < true"),
        vec![(
            1,
            "cannot order bool field `ok` with `<`; use `==`, `!=` or `in`".to_string()
        )]
    );
    assert_eq!(
        problems("tags >= 3"),
        vec![(
            1,
            "cannot order json field `tags` with `>=`; use `==`, `!=` or `in`".to_string()
        )]
    );
    assert_eq!(
        problems("count in [1, 'two', 3.0, false]"),
        vec![
            (
                14,
                "cannot compare int field `count` with a string".to_string()
            ),
            (
                26,
                "cannot compare int field `count` with a bool".to_string()
            ),
        ]
    );
    assert_eq!(
        problems("site == 3 or ok == 'yes' or site contains 1 or count contains 'x'"),
        vec![
            (
                9,
                "cannot compare string field `site` with an integer".to_string()
            ),
            (
                20,
                "cannot compare bool field `ok` with a string".to_string()
            ),
            (
                43,
                "`contains` on string field `site` needs a string, found an integer".to_string()
            ),
            (
                48,
                "`contains` needs a string or json field; `count` is a int field".to_string()
            ),
        ]
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    const TOKENS: &[&str] = &[
        "now",
        "now()",
        "+",
        "-",
        "7d",
        "1h30m",
        "-2s",
        "3x",
        "(",
        ")",
        "[",
        "]",
        ",",
        "==",
        "!=",
        "<",
        "<=",
        ">",
        ">=",
        "=",
        "!",
        "&&",
        "||",
        "&",
        "|",
        "===",
        "=<",
        "<>",
        "and",
        "OR",
        "not",
        "in",
        "contains",
        "is",
        "null",
        "true",
        "False",
        "a",
        "site",
        "_x1",
        "'x'",
        "\"y\"",
        "'",
        "\"",
        "'\\",
        "'\\q'",
        "1",
        "-2.5e3",
        "1e999",
        "99999999999999999999",
        "-",
        ".",
        "0.",
        "1e",
        "@",
        "é",
        " ",
        "\n",
        "\u{0}",
    ];

    fn token_soup() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop::sample::select(TOKENS), 0..40),
            any::<bool>(),
        )
            .prop_map(|(tokens, spaced)| tokens.join(if spaced { " " } else { "" }))
    }

    /// Whatever parses must also display, re-parse, evaluate and check
    /// without surprises.
    fn exercise(source: &str) {
        if let Ok(expr) = parse(source) {
            let canonical = expr.to_string();
            assert_eq!(
                parse(&canonical).as_ref(),
                Ok(&expr),
                "`{source}` → `{canonical}`"
            );
            let _ = expr.eval(&sample());
            let _ = expr.check(&declared);
        }
    }

    fn field_name() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(&["site", "count", "temp", "tags", "seen", "_"][..])
                .prop_map(str::to_string),
            "[A-Za-z_][A-Za-z0-9_]{0,8}",
        ]
        .prop_filter("keywords are not field names", |name| {
            Keyword::from_word(name).is_none()
        })
    }

    fn literal(allow_null: bool) -> impl Strategy<Value = Literal> {
        let value = prop_oneof![
            any::<bool>().prop_map(LitValue::Bool),
            any::<i64>().prop_map(LitValue::Int),
            any::<f64>()
                .prop_filter("finite", |x| x.is_finite())
                .prop_map(LitValue::Float),
            any::<String>().prop_map(LitValue::string),
            Just("2024-05-01T12:00:00.5+02:00".to_string()).prop_map(LitValue::string),
        ];
        // Null and now() are for comparisons only (not lists or contains).
        let value = if allow_null {
            prop_oneof![
                8 => value,
                1 => Just(LitValue::Null),
                1 => (-1_000_000_000_i64..1_000_000_000)
                    .prop_map(|ms| LitValue::Now { offset: ms * 1_000 }),
            ]
            .boxed()
        } else {
            value.boxed()
        };
        value.prop_map(|value| Literal { value, at: At(0) })
    }

    fn predicate() -> impl Strategy<Value = Node> {
        let op = prop::sample::select(
            &[
                CmpOp::Eq,
                CmpOp::Ne,
                CmpOp::Lt,
                CmpOp::Le,
                CmpOp::Gt,
                CmpOp::Ge,
            ][..],
        );
        let test = prop_oneof![
            (op, literal(true)).prop_map(|(op, literal)| {
                let op = match literal.value {
                    LitValue::Null if op.is_ordering() => CmpOp::Eq,
                    LitValue::Now { .. } if !op.is_ordering() => CmpOp::Gt,
                    _ => op,
                };
                Test::Compare { op, literal }
            }),
            (any::<bool>(), prop::collection::vec(literal(false), 0..4))
                .prop_map(|(negated, list)| Test::In { negated, list }),
            literal(false).prop_map(Test::Contains),
            any::<bool>().prop_map(|negated| Test::IsNull { negated }),
        ];
        (field_name(), test).prop_map(|(field, test)| {
            Node::Predicate(Predicate {
                meta: MetaField::of(&field),
                field,
                at: At(0),
                test,
            })
        })
    }

    fn node() -> impl Strategy<Value = Node> {
        predicate().prop_recursive(5, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 2..4).prop_map(Node::Or),
                prop::collection::vec(inner.clone(), 2..4).prop_map(Node::And),
                inner.prop_map(|n| Node::Not(Box::new(n))),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn any_text_parses_or_fails_cleanly(source in any::<String>()) {
            exercise(&source);
        }

        #[test]
        fn any_bytes_parse_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            exercise(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn token_soup_parses_or_fails_cleanly(source in token_soup()) {
            exercise(&source);
        }

        #[test]
        fn display_parses_back_to_an_equal_expr(root in node()) {
            let expr = Expr { source: String::new(), root, relative: true };
            let canonical = expr.to_string();
            let reparsed = parse(&canonical);
            prop_assert_eq!(reparsed.as_ref(), Ok(&expr), "canonical text: {}", canonical);
        }

        #[test]
        fn deep_nesting_is_an_error_not_a_stack_overflow(
            openers in prop::collection::vec(prop::sample::select(&["(", "not ", "!"][..]), 65..2000),
        ) {
            let source = format!("{}a == 1", openers.concat());
            let error = parse(&source).unwrap_err();
            prop_assert!(
                error.message.contains("nests deeper") || error.message.contains("bytes long"),
                "{}", error
            );
        }
    }
}
