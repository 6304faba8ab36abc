//! Where a config error is: [`ConfigError`] with file, line and column, a file's text to turn
//! byte spans into positions, and paths resolved against the file that names them.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One configuration error, with its place. `line` and `column` are 1-based.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[error("{}:{line}:{column}: {message}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Several errors, printed one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A file's text, to turn byte spans into line and column.
pub(super) struct Source<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl Source<'_> {
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        (line, column)
    }

    pub(super) fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, column) = self.position(span.start);
        ConfigError {
            file: self.path.to_owned(),
            line,
            column,
            message: message.into(),
        }
    }

    pub(super) fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        // toml's messages may span lines ("invalid array\nexpected `]`"): one line per error.
        let msg: Vec<&str> = e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        self.error(
            e.span().unwrap_or(0..0),
            msg.join(": ").trim_end_matches('.').to_owned(),
        )
    }
}

/// An error with no better place than the start of a file (it cannot be read at all).
pub(super) fn file_error(path: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: path.to_owned(),
        line: 1,
        column: 1,
        message: message.into(),
    }
}

pub(super) fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

pub(super) fn base_dir(file: &Path) -> PathBuf {
    file.parent().map(Path::to_owned).unwrap_or_default()
}
