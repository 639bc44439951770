//! How commands print: `-o table|json|yaml` for data, ✓/‼/× marks, colours only on a terminal
//! (and never with `NO_COLOR` set).

use std::io::IsTerminal;

use serde::Serialize;

/// Output format of a command whose output is data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON, for scripts.
    Json,
    /// YAML, for scripts and people.
    Yaml,
}

/// Prints `value` as JSON or YAML (`Table` is each command's own).
pub(crate) fn print_data<T: Serialize>(format: Format, value: &T) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(value)?),
        Format::Table => anyhow::bail!("a table is printed by the command itself"),
    }
    Ok(())
}

/// Marks and colours for terminal output.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Style {
    color: bool,
}

impl Style {
    /// Colours when stdout is a terminal and `NO_COLOR` is unset.
    pub(crate) fn detect() -> Self {
        Self {
            color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    fn paint(self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    /// A passed check or an accepted object.
    pub(crate) fn ok(self) -> String {
        self.paint("32", "✓")
    }

    /// A warning: works, but not as written.
    pub(crate) fn warn(self) -> String {
        self.paint("33", "‼")
    }

    /// A failure.
    pub(crate) fn bad(self) -> String {
        self.paint("31", "×")
    }

    /// A remark that needs no action.
    pub(crate) fn info(self) -> String {
        self.paint("36", "·")
    }

    /// Bold text (headings).
    pub(crate) fn bold(self, text: &str) -> String {
        self.paint("1", text)
    }
}

/// Prints rows as aligned columns under `header`.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count()) + 2;
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
