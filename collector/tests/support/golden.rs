//! Golden files: a Parquet file's schema as text, against the one kept in `tests/golden/`.

use std::fmt::Write as _;
use std::fs::File;
use std::path::Path;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::schema::printer::print_schema;

/// The Parquet schema of `path` as `print_schema` prints it, then the Arrow fields a reader
/// of the file gets, one a line.
pub fn describe_schema(path: &Path) -> String {
    let reader = SerializedFileReader::new(File::open(path).expect("opening the file"))
        .expect("a Parquet file");
    let mut printed = Vec::new();
    print_schema(&mut printed, reader.metadata().file_metadata().schema());
    let mut text = String::from_utf8(printed).expect("UTF-8");
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push('\n');
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(File::open(path).expect("opening the file"))
            .expect("a Parquet file");
    for field in builder.schema().fields() {
        let _ = writeln!(
            text,
            "{}: {} nullable={}",
            field.name(),
            field.data_type(),
            field.is_nullable()
        );
    }
    text
}

/// Asserts that the schema of the Parquet file `path` is the golden file `name` (in
/// `tests/golden/`); with `UPDATE_GOLDEN=1` in the environment, rewrites that file instead.
/// `changed` tells the reader of a failure what a change means.
pub fn assert_schema(path: &Path, name: &str, changed: &str) {
    let actual = describe_schema(path);
    let golden = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(golden.parent().expect("a parent")).expect("creating golden/");
        std::fs::write(&golden, &actual).expect("writing the golden file");
        eprintln!("UPDATE_GOLDEN=1: rewrote {}", golden.display());
        return;
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            golden.display()
        )
    });
    assert!(
        actual == expected,
        "{changed}; if on purpose, rerun with UPDATE_GOLDEN=1.\n--- expected ({})\n\
         {expected}\n--- actual\n{actual}",
        golden.display()
    );
}
