//! Label selectors: a `LabelSelector` is checked once into a [`Selector`] (a list of
//! requirements, ANDed), which then answers "does this label set match" for pods and
//! namespaces.
//!
//! `matchLabels` entries become `In` requirements with one value. An empty selector (`{}`)
//! matches everything.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::Problems;

/// A checked label selector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Requirement {
    key: String,
    operator: Operator,
    values: BTreeSet<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Selector {
    /// Checks `selector` (at `path` in its object); every problem goes to `problems`.
    pub(crate) fn parse(
        selector: &LabelSelector,
        path: &str,
        problems: &mut Problems,
    ) -> Option<Selector> {
        let mut requirements: Vec<Requirement> = selector
            .match_labels
            .iter()
            .flatten()
            .map(|(key, value)| Requirement {
                key: key.clone(),
                operator: Operator::In,
                values: BTreeSet::from([value.clone()]),
            })
            .collect();
        let mut valid = true;
        for (index, expression) in selector.match_expressions.iter().flatten().enumerate() {
            let at = format!("{path}.matchExpressions[{index}]");
            let values: BTreeSet<String> = expression.values.iter().flatten().cloned().collect();
            let operator = match expression.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    problems.push(
                        format!("{at}.operator"),
                        format!("unknown operator {other:?} (In, NotIn, Exists or DoesNotExist)"),
                    );
                    valid = false;
                    continue;
                }
            };
            if expression.key.is_empty() {
                problems.push(format!("{at}.key"), "must not be empty");
                valid = false;
            }
            match operator {
                Operator::In | Operator::NotIn if values.is_empty() => {
                    problems.push(
                        format!("{at}.values"),
                        format!("must not be empty for operator {}", expression.operator),
                    );
                    valid = false;
                }
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                    problems.push(
                        format!("{at}.values"),
                        format!("must be empty for operator {}", expression.operator),
                    );
                    valid = false;
                }
                _ => {}
            }
            requirements.push(Requirement {
                key: expression.key.clone(),
                operator,
                values,
            });
        }
        valid.then_some(Selector { requirements })
    }

    /// Whether `labels` satisfy every requirement.
    pub(crate) fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|requirement| {
            let value = labels.get(&requirement.key);
            match requirement.operator {
                Operator::In => value.is_some_and(|v| requirement.values.contains(v)),
                Operator::NotIn => value.is_none_or(|v| !requirement.values.contains(v)),
                Operator::Exists => value.is_some(),
                Operator::DoesNotExist => value.is_none(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(yaml: &str) -> Result<Selector, Vec<String>> {
        let parsed: LabelSelector = serde_yaml_ng::from_str(yaml).unwrap();
        let mut problems = Problems::default();
        Selector::parse(&parsed, "spec.podSelector", &mut problems).ok_or_else(|| {
            problems
                .into_fields()
                .into_iter()
                .map(|(field, _)| field)
                .collect()
        })
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Selector, pod labels, whether it matches.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);

    #[test]
    fn operators_and_and() {
        let cases: &[Case<'_>] = &[
            ("{}", &[], true),
            ("{}", &[("a", "1")], true),
            ("matchLabels: {app: web}", &[("app", "web")], true),
            ("matchLabels: {app: web}", &[("app", "db")], false),
            ("matchLabels: {app: web}", &[], false),
            (
                "matchLabels: {app: web, tier: fe}",
                &[("app", "web"), ("tier", "be")],
                false,
            ),
            (
                "matchExpressions: [{key: app, operator: In, values: [web, db]}]",
                &[("app", "db")],
                true,
            ),
            (
                "matchExpressions: [{key: app, operator: In, values: [web]}]",
                &[],
                false,
            ),
            (
                "matchExpressions: [{key: app, operator: NotIn, values: [web]}]",
                &[],
                true,
            ),
            (
                "matchExpressions: [{key: app, operator: NotIn, values: [web]}]",
                &[("app", "web")],
                false,
            ),
            (
                "matchExpressions: [{key: app, operator: Exists}]",
                &[("app", "")],
                true,
            ),
            (
                "matchExpressions: [{key: app, operator: Exists}]",
                &[],
                false,
            ),
            (
                "matchExpressions: [{key: app, operator: DoesNotExist}]",
                &[("app", "x")],
                false,
            ),
            (
                "matchExpressions: [{key: app, operator: DoesNotExist}]",
                &[("other", "x")],
                true,
            ),
            (
                "{matchLabels: {tier: fe}, matchExpressions: [{key: app, operator: Exists}]}",
                &[("tier", "fe")],
                false,
            ),
            (
                "{matchLabels: {tier: fe}, matchExpressions: [{key: app, operator: Exists}]}",
                &[("tier", "fe"), ("app", "x")],
                true,
            ),
        ];
        for (yaml, pod, want) in cases {
            let got = selector(yaml).unwrap().matches(&labels(pod));
            assert_eq!(got, *want, "{yaml} on {pod:?}");
        }
    }

    #[test]
    fn invalid_expressions_name_the_field() {
        let cases = [
            (
                "matchExpressions: [{key: a, operator: Equals, values: [x]}]",
                "spec.podSelector.matchExpressions[0].operator",
            ),
            (
                "matchExpressions: [{key: a, operator: In}]",
                "spec.podSelector.matchExpressions[0].values",
            ),
            (
                "matchExpressions: [{key: a, operator: NotIn, values: []}]",
                "spec.podSelector.matchExpressions[0].values",
            ),
            (
                "matchExpressions: [{key: a, operator: Exists}, {key: b, operator: DoesNotExist, values: [x]}]",
                "spec.podSelector.matchExpressions[1].values",
            ),
            (
                "matchExpressions: [{key: '', operator: Exists}]",
                "spec.podSelector.matchExpressions[0].key",
            ),
        ];
        for (yaml, field) in cases {
            assert_eq!(
                selector(yaml).unwrap_err(),
                vec![field.to_string()],
                "{yaml}"
            );
        }
    }
}
