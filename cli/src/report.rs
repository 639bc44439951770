//! A check's result and the list of them, as `weft check` prints them.

use serde::Serialize;

/// Where each check is explained (in the repository and its release tarball).
const DOCS: &str = "docs/check.md";

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Outcome {
    Ok,
    Warn,
    Fail,
}

/// One check's result.
#[derive(Debug, Serialize)]
pub(crate) struct Check {
    /// What was checked (`controller ready`).
    pub(crate) name: String,
    pub(crate) outcome: Outcome,
    /// What was seen.
    pub(crate) detail: String,
    /// What to do about it (empty when fine).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) hint: String,
    /// Its entry in docs/check.md.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) docs: String,
}

/// The checks so far.
#[derive(Default)]
pub(crate) struct Report(pub(crate) Vec<Check>);

impl Report {
    pub(crate) fn push(
        &mut self,
        name: &str,
        outcome: Outcome,
        detail: String,
        hint: &str,
        anchor: &str,
    ) {
        let fine = outcome == Outcome::Ok;
        self.0.push(Check {
            name: name.to_owned(),
            outcome,
            detail,
            hint: if fine { String::new() } else { hint.to_owned() },
            docs: if fine {
                String::new()
            } else {
                format!("{DOCS}#{anchor}")
            },
        });
    }

    pub(crate) fn ok(&mut self, name: &str, detail: String) {
        self.push(name, Outcome::Ok, detail, "", "");
    }

    pub(crate) fn failed(&self) -> bool {
        self.0.iter().any(|c| c.outcome == Outcome::Fail)
    }
}
