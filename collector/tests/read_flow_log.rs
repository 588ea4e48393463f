//! Reading a flow directory back when some of it is not as the collector wrote it: unreadable
//! files are named and the rest is read; Snappy files (DuckDB's, pyarrow's and Athena CTAS's
//! default) are read; a time filter prunes partitions and row groups; every column comes back
//! under its own name.

#[path = "../../tests/support/flowlog.rs"]
mod flowlog;

use std::collections::BTreeSet;
use std::path::Path;

use flowlog::{Layout, flow, loss, partition, pod, write};
use parquet::{
    basic::Compression, file::reader::FileReader as _,
    file::serialized_reader::SerializedFileReader,
};
use serde_json::json;
use tollgate_collector::readback::{Filter, read_file, read_flow_log, read_flow_log_columns};
use tollgate_schemas::{Verdict, record::COLUMNS};
use tollgate_test_support::temp_dir;

/// 2026-11-25T10:00:00Z.
const HOUR: u64 = 1_795_600_800;

#[test]
fn snappy_files_are_read() {
    let dir = temp_dir("read-snappy");
    let (web, api) = (pod("default", "web"), pod("default", "api"));
    let path = write(
        dir.path(),
        &format!("{}/snappy.parquet", partition(HOUR)),
        &[flow(HOUR + 10, &web, &api, Verdict::Deny)],
        Layout {
            compression: Compression::SNAPPY,
            ..Layout::default()
        },
    );
    let records = read_file(&path).expect("a Snappy file is readable");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].src_pod.as_deref(), Some("default/web"));
}

#[test]
fn unreadable_files_are_named_and_the_rest_is_read() {
    let dir = temp_dir("read-skips");
    let (web, api) = (pod("default", "web"), pod("default", "api"));
    let part = partition(HOUR);
    write(
        dir.path(),
        &format!("{part}/good.parquet"),
        &[flow(HOUR + 10, &web, &api, Verdict::Deny)],
        Layout::default(),
    );
    let truncated = write(
        dir.path(),
        &format!("{part}/truncated.parquet"),
        &[flow(HOUR + 20, &web, &api, Verdict::Deny)],
        Layout::default(),
    );
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let other_schema = write(
        dir.path(),
        &format!("{part}/other-schema.parquet"),
        &[flow(HOUR + 30, &web, &api, Verdict::Deny)],
        Layout {
            columns: Some(3),
            ..Layout::default()
        },
    );
    write(
        dir.path(),
        &format!("{part}/snappy.parquet"),
        &[flow(HOUR + 40, &web, &api, Verdict::Allow)],
        Layout {
            compression: Compression::SNAPPY,
            ..Layout::default()
        },
    );

    let log = read_flow_log(dir.path(), &Filter::default()).expect("the directory is readable");
    let starts: Vec<i64> = log.records.iter().map(|r| r.start).collect();
    assert_eq!(starts, [HOUR as i64 + 10, HOUR as i64 + 40]);
    let skipped: Vec<(&Path, String)> = log
        .skipped
        .iter()
        .map(|error| (error.path(), error.reason()))
        .collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert_eq!(skipped[0].0, other_schema);
    assert!(skipped[0].1.contains("column start"), "{skipped:?}");
    assert_eq!(skipped[1].0, truncated);
    assert!(!skipped[1].1.is_empty(), "{skipped:?}");
}

#[test]
fn a_missing_directory_is_the_error() {
    let dir = temp_dir("read-missing");
    let error = read_flow_log(&dir.path().join("absent"), &Filter::default()).unwrap_err();
    assert_eq!(error.path(), dir.path().join("absent"));
    assert_eq!(error.reason(), "No such file or directory (os error 2)");
}

/// Overwrites the bytes of row group `group`'s first column chunk, footer left intact.
fn corrupt_row_group(path: &Path, group: usize) {
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let (start, len) = reader.metadata().row_group(group).column(0).byte_range();
    let mut bytes = std::fs::read(path).unwrap();
    for byte in &mut bytes[start as usize..(start + len) as usize] {
        *byte = 0xff;
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn since_prunes_old_partitions_and_row_groups_but_keeps_loss_spans_reaching_it() {
    let dir = temp_dir("read-since");
    let (web, api) = (pod("default", "web"), pod("default", "api"));
    let since = HOUR + 5 * 3600;
    // Eight days before: beyond the loss lookback, never opened (its file is garbage).
    let old = dir
        .path()
        .join(partition(since - 8 * 86_400))
        .join("old.parquet");
    std::fs::create_dir_all(old.parent().unwrap()).unwrap();
    std::fs::write(&old, b"not parquet").unwrap();
    // Three hours before: two old flows in the first row group (corrupt: decoding it fails),
    // and a loss span that began then and ends after `since` in the second.
    let lookback = write(
        dir.path(),
        &format!("{}/lookback.parquet", partition(since - 3 * 3600)),
        &[
            flow(since - 3 * 3600, &web, &api, Verdict::Deny),
            flow(since - 3 * 3600 + 60, &web, &api, Verdict::Deny),
            loss(since - 3 * 3600 + 120, since + 30),
        ],
        Layout {
            rows_per_group: 2,
            ..Layout::default()
        },
    );
    corrupt_row_group(&lookback, 0);
    write(
        dir.path(),
        &format!("{}/recent.parquet", partition(since)),
        &[
            flow(since - 3, &web, &api, Verdict::Deny), // ends 2 s after `since`
            flow(since + 10, &web, &api, Verdict::Deny),
        ],
        Layout::default(),
    );

    let filter = Filter {
        denied: false,
        since_s: Some(since),
    };
    let log = read_flow_log(dir.path(), &filter).expect("the directory is readable");
    assert!(log.skipped.is_empty(), "{:?}", log.skipped);
    let records: Vec<(i64, &str)> = log
        .records
        .iter()
        .map(|r| (r.start, r.log_status.as_str()))
        .collect();
    assert_eq!(
        records,
        [
            (since as i64 - 3 * 3600 + 120, "SKIPDATA"),
            (since as i64 - 3, "OK"),
            (since as i64 + 10, "OK"),
        ]
    );

    // Without the filter both bad files are read, and named.
    let all = read_flow_log(dir.path(), &Filter::default()).unwrap();
    let mut skipped: Vec<&Path> = all.skipped.iter().map(|e| e.path()).collect();
    skipped.sort();
    let mut expected = vec![old.as_path(), lookback.as_path()];
    expected.sort();
    assert_eq!(skipped, expected);
}

#[test]
fn columns_come_back_under_their_own_names_all_of_them() {
    let dir = temp_dir("read-columns");
    let (web, api) = (pod("default", "web"), pod("shop", "api"));
    let part = partition(HOUR);
    write(
        dir.path(),
        &format!("{part}/a.parquet"),
        &[flow(HOUR + 10, &web, &api, Verdict::Allow)],
        Layout::default(),
    );
    // Written before the isolation and Service columns were appended.
    write(
        dir.path(),
        &format!("{part}/b.parquet"),
        &[flow(HOUR + 20, &web, &api, Verdict::Deny)],
        Layout {
            columns: Some(COLUMNS.len() - 8),
            ..Layout::default()
        },
    );

    let log = read_flow_log_columns(dir.path(), &Filter::default()).unwrap();
    assert!(log.skipped.is_empty(), "{:?}", log.skipped);
    let rows: Vec<serde_json::Value> = log
        .records
        .iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    let names: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
    for row in &rows {
        let keys: BTreeSet<&str> = row
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            names.iter().copied().collect(),
            "every column, by its own name"
        );
    }
    // In file order when serialized.
    let text = serde_json::to_string(&log.records[0]).unwrap();
    let positions: Vec<usize> = names
        .iter()
        .map(|name| text.find(&format!("\"{name}\":")).unwrap())
        .collect();
    assert!(positions.is_sorted(), "{text}");

    let allowed = &rows[0];
    assert_eq!(allowed["src_namespace"], "default");
    assert_eq!(allowed["src_pod"], "web");
    assert_eq!(allowed["dst_namespace"], "shop");
    assert_eq!(allowed["dst_pod"], "api");
    assert_eq!(allowed["src_labels"], json!({"app": "web"}));
    assert_eq!(allowed["policy_namespace"], "default");
    assert_eq!(allowed["policy_name"], "allow-web");
    assert_eq!(allowed["policy_rule"], 0);
    assert_eq!(allowed["tcp_flags"], 2);
    assert_eq!(allowed["icmp_type"], serde_json::Value::Null);
    assert_eq!(allowed["version"], 2);
    assert_eq!(allowed["policy_tier"], "NetworkPolicy");
    assert_eq!(allowed["policy_kind"], "NetworkPolicy");
    assert_eq!(allowed["policy_action"], "Allow");
    assert_eq!(allowed["policy_version"], "812");
    assert_eq!(allowed["isolating_policies"], serde_json::Value::Null);
    assert_eq!(allowed["start"], HOUR + 10);
    let older = &rows[1];
    assert_eq!(older["verdict"], "deny");
    assert_eq!(older["svc_name"], serde_json::Value::Null);
    assert_eq!(older["isolation_action"], serde_json::Value::Null);
}
