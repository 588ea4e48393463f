//! The Athena table and named queries in `schemas/athena/` agree with the flow record:
//! `flows.ddl.sql` is exactly what [`flows_ddl`] generates from [`COLUMNS`] and
//! [`PARTITION_KEYS`] (run with `TOLLGATE_BLESS=1` to rewrite it), and every query file has a
//! well-formed header with one `-- param:` line per `?` (counted outside comments, string
//! literals and quoted identifiers).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use tollgate_schemas::athena::flows_ddl;
use tollgate_schemas::record::{COLUMNS, PARTITION_KEYS};

fn athena_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("athena")
}

#[test]
fn committed_ddl_is_the_generated_one() {
    let path = athena_dir().join("flows.ddl.sql");
    let generated = flows_ddl();
    if std::env::var_os("TOLLGATE_BLESS").is_some() {
        fs::write(&path, &generated).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let committed = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        committed == generated,
        "{} is not what schemas/src/athena.rs generates from the record's columns; rewrite it \
         with: TOLLGATE_BLESS=1 cargo test --locked -p tollgate-schemas --features user --test \
         athena_ddl",
        path.display()
    );
}

#[test]
fn cluster_is_the_only_partition_key_in_the_files() {
    let in_files: Vec<&str> = PARTITION_KEYS
        .iter()
        .copied()
        .filter(|k| COLUMNS.iter().any(|c| c.name == *k))
        .collect();
    assert_eq!(in_files, ["cluster"]);
}

/// SQL text with `--` comments removed (outside quotes); also counts `?` outside comments,
/// '…' literals, "…" and `…` identifiers.
fn strip_comments(sql: &str) -> (String, usize) {
    let mut out = String::with_capacity(sql.len());
    let mut placeholders = 0;
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    // A doubled quote is an escaped quote inside the same literal.
                    if chars.peek() == Some(&q) {
                        out.push(chars.next().unwrap());
                    } else {
                        quote = None;
                    }
                }
            }
            None => match c {
                '\'' | '"' | '`' => {
                    quote = Some(c);
                    out.push(c);
                }
                '-' if chars.peek() == Some(&'-') => {
                    for c in chars.by_ref() {
                        if c == '\n' {
                            out.push('\n');
                            break;
                        }
                    }
                }
                '?' => {
                    placeholders += 1;
                    out.push(c);
                }
                _ => out.push(c),
            },
        }
    }
    assert!(quote.is_none(), "unterminated quote {quote:?}");
    (out, placeholders)
}

#[test]
fn ddl_terraform_placeholders_are_the_documented_ones() {
    let (sql, _) = strip_comments(&flows_ddl());
    let mut found = BTreeSet::new();
    let mut rest = sql.as_str();
    while let Some(at) = rest.find("${") {
        let escaped = at > 0 && rest.as_bytes()[at - 1] == b'$';
        let end = at + rest[at..].find('}').expect("a closing brace");
        if !escaped {
            found.insert(rest[at + 2..end].to_owned());
        }
        rest = &rest[end..];
    }
    let expected: BTreeSet<String> = [
        "bucket",
        "clusters",
        "database",
        "prefix",
        "projection_start",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(found, expected);
    // Each is documented in the file's header comment.
    let text = flows_ddl();
    for name in &expected {
        assert!(
            text.contains(&format!("--   ${{{name}}}")),
            "${{{name}}} is not documented in the header"
        );
    }
}

const PARAM_TYPES: &[&str] = &["int", "integer", "bigint", "string", "varchar"];

#[test]
fn every_query_has_a_header_with_one_param_per_placeholder() {
    let dir = athena_dir().join("queries");
    let mut names = BTreeSet::new();
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("sql") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let text = fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        let at = path.display();

        let name = lines
            .next()
            .and_then(|l| l.strip_prefix("-- name: "))
            .unwrap_or_else(|| panic!("{at}: first line must be '-- name: <name>'"));
        assert_eq!(name, stem, "{at}: the name is the file name");
        assert!(
            !name.is_empty()
                && name.split('-').all(|w| {
                    !w.is_empty()
                        && w.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                }),
            "{at}: '{name}' is not kebab-case"
        );
        let description = lines
            .next()
            .and_then(|l| l.strip_prefix("-- description: "))
            .unwrap_or_else(|| panic!("{at}: second line must be '-- description: …'"));
        assert!(!description.trim().is_empty(), "{at}: empty description");

        let mut params = Vec::new();
        let mut types = BTreeMap::new();
        for line in lines.take_while(|l| l.starts_with("-- param:")) {
            let fields: Vec<&str> = line["-- param:".len()..].trim().splitn(3, ' ').collect();
            let [pname, ptype, meaning] = fields[..] else {
                panic!("{at}: '{line}' is not '-- param: <name> <type> <meaning>'");
            };
            assert!(
                PARAM_TYPES.contains(&ptype),
                "{at}: parameter {pname} has unknown type {ptype}"
            );
            assert!(!meaning.trim().is_empty(), "{at}: {pname} has no meaning");
            let first = types.entry(pname.to_owned()).or_insert(ptype);
            assert_eq!(*first, ptype, "{at}: {pname} declared with two types");
            params.push(pname.to_owned());
        }

        let (sql, placeholders) = strip_comments(&text);
        assert_eq!(
            placeholders,
            params.len(),
            "{at}: {placeholders} '?' but {} '-- param:' lines",
            params.len()
        );
        // The OCSF queries read Security Lake's table, the others the flow log's.
        let table = if stem.starts_with("ocsf-") {
            "from ocsf_flows"
        } else {
            "from flows"
        };
        assert!(
            sql.to_ascii_lowercase().contains(table),
            "{at}: reads the unqualified table {}",
            &table[5..]
        );
        names.insert(stem);
    }
    let expected: BTreeSet<String> = [
        "audit-would-be-denied",
        "branch-eni-pods",
        "denied-flows",
        "denied-over-time",
        "denied-pairs",
        "denied-service-flows",
        "isolation-records",
        "ocsf-denied-flows",
        "ocsf-pod-flows",
        "loss-records",
        "pod-flows",
        "pod-timeline",
        "policy-rule-hits",
        "policy-tier-hits",
        "top-denied-destinations",
        "top-denied-sources",
        "unselected-pods",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(names, expected);
}

#[test]
fn comment_stripping_counts_only_real_placeholders() {
    let (sql, n) = strip_comments("SELECT '?', \"a?\" -- ?\nFROM t WHERE x = ? AND y = 'it''s ?'");
    assert_eq!(n, 1);
    assert!(!sql.contains("-- ?"));
}
