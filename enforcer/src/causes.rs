//! An error and its causes, for logs and for reports written as text.
//!
//! tollgate's error types say what failed in their message and return what caused it from
//! `source()`, never both: [`chain`] lists the texts of the chain, outermost first, and
//! [`Causes`] joins them on one line (`error: cause: cause`) where a log line or a text report
//! needs all of it. A cause whose text an outer one already holds is left out, since some
//! errors of other crates do write their source into their message (the AWS SDK's, `io`
//! errors wrapped by their callers).

use std::error::Error;
use std::fmt;

/// `error: cause: cause`, each cause once ([`chain`]).
pub struct Causes<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&chain(self.0).join(": "))
    }
}

/// The texts of `error` and of each of its causes, outermost first, without a cause whose text
/// an outer one already holds.
pub fn chain(error: &(dyn Error + 'static)) -> Vec<String> {
    let mut said: Vec<String> = Vec::new();
    let mut cause = Some(error);
    while let Some(error) = cause {
        let text = error.to_string();
        if !said.iter().any(|outer| outer.contains(&text)) {
            said.push(text);
        }
        cause = error.source();
    }
    said
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
