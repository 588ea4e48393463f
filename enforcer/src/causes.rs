//! An error and its causes on one line, for logs and for reports written as text.
//!
//! tollgate's error types say what failed in their message and return what caused it from
//! `source()`, never both: [`Causes`] joins the chain (`error: cause: cause`) where a log line
//! or a text report needs all of it. A cause whose text already ends the line is not repeated,
//! since some errors of other crates do write their source into their message.

use std::fmt;

/// `error: cause: cause`, each cause once.
pub struct Causes<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(error) = cause {
            let more = error.to_string();
            if !text.ends_with(&more) {
                text.push_str(": ");
                text.push_str(&more);
            }
            cause = error.source();
        }
        f.write_str(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::Causes;

    #[derive(Debug, thiserror::Error)]
    #[error("syncing the policy maps")]
    struct Outer {
        source: Inner,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("upsert of endpoint 7")]
    struct Inner {
        source: std::io::Error,
    }

    #[test]
    fn each_cause_once_in_order() {
        let error = Outer {
            source: Inner {
                source: std::io::Error::other("map full"),
            },
        };
        assert_eq!(
            Causes(&error).to_string(),
            "syncing the policy maps: upsert of endpoint 7: map full"
        );
    }
}
