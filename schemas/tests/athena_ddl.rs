//! The Athena table and named queries in `schemas/athena/` agree with the flow record
//! ([`COLUMNS`], [`PARTITION_KEYS`]): the DDL declares every column but `cluster` in file order
//! with its type, partitions by exactly the partition keys, projects all of them, and every
//! query file has a well-formed header with one `-- param:` line per `?`.
//!
//! The parsing is deliberately small: comments are dropped, the parenthesised lists after
//! `CREATE EXTERNAL TABLE`, `PARTITIONED BY` and `TBLPROPERTIES` are split at top-level
//! commas (`map<string,string>` keeps its comma), and `?` are counted outside comments,
//! string literals and quoted identifiers.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use tollgate_schemas::record::{COLUMNS, PARTITION_KEYS};

fn athena_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("athena")
}

fn ddl() -> String {
    let path = athena_dir().join("flows.ddl.sql");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
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

/// The text inside the parentheses that open right after `keyword` (case-insensitive).
fn parenthesised_after<'a>(sql: &'a str, keyword: &str) -> &'a str {
    let at = sql
        .to_ascii_uppercase()
        .find(keyword)
        .unwrap_or_else(|| panic!("no {keyword} in the DDL"));
    let open = at + sql[at..].find('(').expect("an opening parenthesis");
    let mut depth = 0;
    let mut quote = None;
    for (i, c) in sql[open..].char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '`') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => {
                depth -= 1;
                if depth == 0 {
                    return &sql[open + 1..open + i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses after {keyword}");
}

/// Splits at commas outside `<…>` and quotes.
fn split_top_level(list: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut angle = 0;
    let mut quote = None;
    for c in list.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '`') => quote = Some(c),
            (None, '<') => angle += 1,
            (None, '>') => angle -= 1,
            (None, ',') if angle == 0 => {
                items.push(current.trim().to_owned());
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    if !current.trim().is_empty() {
        items.push(current.trim().to_owned());
    }
    items
}

/// `(name, type)` of a column list: `` `name` type `` (or `name type`), types lowercased
/// and without spaces.
fn columns_of(list: &str) -> Vec<(String, String)> {
    split_top_level(list)
        .into_iter()
        .map(|item| {
            let (name, kind) = item
                .split_once(char::is_whitespace)
                .unwrap_or_else(|| panic!("column without a type: {item}"));
            let name = name.trim_matches('`').to_owned();
            let kind: String = kind.chars().filter(|c| !c.is_whitespace()).collect();
            (name, kind.to_ascii_lowercase())
        })
        .collect()
}

fn unquote(s: &str) -> &str {
    s.trim()
        .strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .unwrap_or_else(|| panic!("not a quoted string: {s}"))
}

fn table_properties(sql: &str) -> BTreeMap<String, String> {
    split_top_level(parenthesised_after(sql, "TBLPROPERTIES"))
        .into_iter()
        .map(|item| {
            let (k, v) = item
                .split_once('=')
                .unwrap_or_else(|| panic!("property without '=': {item}"));
            (unquote(k).to_owned(), unquote(v).to_owned())
        })
        .collect()
}

#[test]
fn ddl_columns_are_the_record_columns_without_the_partition_keys() {
    let (sql, _) = strip_comments(&ddl());
    let declared = columns_of(parenthesised_after(&sql, "CREATE EXTERNAL TABLE"));
    let expected: Vec<(String, String)> = COLUMNS
        .iter()
        .filter(|c| !PARTITION_KEYS.contains(&c.name))
        .map(|c| (c.name.to_owned(), c.kind.athena().to_owned()))
        .collect();
    assert_eq!(declared, expected);
    // `cluster` is the only partition key that is also a column of the files.
    let in_files: Vec<&str> = PARTITION_KEYS
        .iter()
        .copied()
        .filter(|k| COLUMNS.iter().any(|c| c.name == *k))
        .collect();
    assert_eq!(in_files, ["cluster"]);
}

#[test]
fn ddl_partition_keys_are_the_record_partition_keys_as_strings() {
    let (sql, _) = strip_comments(&ddl());
    let keys = columns_of(parenthesised_after(&sql, "PARTITIONED BY"));
    let expected: Vec<(String, String)> = PARTITION_KEYS
        .iter()
        .map(|k| ((*k).to_owned(), "string".to_owned()))
        .collect();
    assert_eq!(keys, expected);
    assert!(sql.contains("STORED AS PARQUET"));
    assert!(sql.contains("LOCATION 's3://${bucket}/${prefix}'"));
    assert!(sql.contains("CREATE EXTERNAL TABLE IF NOT EXISTS `${database}`.`flows`"));
}

#[test]
fn ddl_projects_every_partition_key() {
    let (sql, _) = strip_comments(&ddl());
    let props = table_properties(&sql);
    let get = |k: &str| {
        props
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no table property {k}"))
    };
    assert_eq!(get("projection.enabled"), "true");
    for key in PARTITION_KEYS {
        let kind = get(&format!("projection.{key}.type"));
        assert!(
            ["enum", "integer", "date", "injected"].contains(&kind),
            "{key}: projection type {kind}"
        );
    }
    assert_eq!(get("projection.cluster.type"), "enum");
    assert_eq!(get("projection.cluster.values"), "${clusters}");
    assert_eq!(get("projection.dt.type"), "date");
    assert_eq!(get("projection.dt.format"), "yyyy-MM-dd");
    assert_eq!(get("projection.dt.range"), "${projection_start},NOW");
    assert_eq!(get("projection.dt.interval"), "1");
    assert_eq!(get("projection.dt.interval.unit"), "DAYS");
    assert_eq!(get("projection.hour.type"), "integer");
    assert_eq!(get("projection.hour.range"), "0,23");
    assert_eq!(get("projection.hour.digits"), "2");
    // The template names every key in path order, as `key=${key}` (escaped for Terraform).
    let path: Vec<String> = PARTITION_KEYS
        .iter()
        .map(|k| format!("{k}=$${{{k}}}"))
        .collect();
    assert_eq!(
        get("storage.location.template"),
        format!("s3://${{bucket}}/${{prefix}}{}/", path.join("/"))
    );
}

#[test]
fn ddl_terraform_placeholders_are_the_documented_ones() {
    let (sql, _) = strip_comments(&ddl());
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
    let text = ddl();
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
