//! Running the `tollgate` binary in the command-line tests, with what it printed shown in the
//! test's output.

use std::process::Output;

/// `output` of `tollgate args`, after printing the command line and what it wrote (shown
/// when the test fails).
pub fn logged(args: &[&str], output: Output) -> Output {
    eprintln!(
        "$ tollgate {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
