//! Errors in files that may hold secrets (the config file, the keys file): they name the
//! file, the line, the column and the field, and never show a value. A parser's own message
//! may quote the text it choked on (toml shows the whole line; serde says
//! `invalid type: string "sk-…"`): quoted text is cut from it.

use std::fmt::Write as _;

/// The message for a parse error in `path` (read as `flag`) at `at` in `text`, with
/// `message` the parser's own words: `FLAG: "PATH": line L, column C, field `F`: MESSAGE`.
pub(crate) fn file_error(
    flag: &str,
    path: &str,
    text: &str,
    at: Position,
    message: &str,
) -> String {
    format!("{flag}: {path:?}: {}", located(text, at, message))
}

/// `line L, column C, field `F`: MESSAGE` for an error at `at` in `text`, the message with
/// every quoted value cut.
pub(crate) fn located(text: &str, at: Position, message: &str) -> String {
    let (line, column) = match at {
        Position::Offset(o) => line_column(text, o),
        Position::LineColumn(l, c) => (l, c),
        Position::Unknown => (0, 0),
    };
    let mut out = String::new();
    if line > 0 {
        let _ = write!(out, "line {line}, column {column}");
        let line_text = text.lines().nth(line - 1).unwrap_or("");
        if let Some(field) = field_before(line_text, column) {
            let _ = write!(out, ", field `{field}`");
        }
        out.push_str(": ");
    }
    out.push_str(&redact(message));
    out
}

/// A `serde_json` error's place and message (its `Display` appends the place, which goes).
pub(crate) fn json_error(text: &str, e: &serde_json::Error) -> String {
    let shown = e.to_string();
    let message = shown
        .rfind(" at line ")
        .map_or(shown.as_str(), |i| &shown[..i]);
    located(text, Position::LineColumn(e.line(), e.column()), message)
}

/// Where in a file an error is.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Position {
    /// A byte offset.
    Offset(usize),
    /// A line and a column, 1-based.
    LineColumn(usize, usize),
    /// Nowhere known.
    Unknown,
}

/// The 1-based line and column of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

/// The name of the last field set before `column` on `line`: a bare word before `=`
/// (TOML) or a quoted name before `:` (JSON). Text inside quotes is never a field unless a
/// `:` follows it, so a value is never taken for one.
fn field_before(line: &str, column: usize) -> Option<String> {
    let end = line
        .char_indices()
        .nth(column.saturating_sub(1))
        .map_or(line.len(), |(i, _)| i);
    let prefix = &line[..end];
    let bytes = prefix.as_bytes();
    let mut field = None;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let (token, next) = if c == b'"' || c == b'\'' {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != c {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            if j >= bytes.len() {
                break;
            }
            (Some((&prefix[i + 1..j], true)), j + 1)
        } else if c.is_ascii_alphanumeric() || c == b'_' || c == b'-' {
            let mut j = i;
            while j < bytes.len()
                && (bytes[j].is_ascii_alphanumeric() || matches!(bytes[j], b'_' | b'-' | b'.'))
            {
                j += 1;
            }
            (Some((&prefix[i..j], false)), j)
        } else {
            (None, i + 1)
        };
        if let Some((word, quoted)) = token {
            let after = prefix[next..].trim_start();
            let sep = if quoted { ':' } else { '=' };
            if (after.starts_with(sep) || (quoted && after.starts_with('='))) && plain_name(word) {
                field = Some(word.to_owned());
            }
        }
        i = next;
    }
    field
}

/// Whether `s` reads as a field name, not a value: short, letters, digits, `_`, `-`, `.`.
fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// `message` with every quoted text cut: `"…"` and `'…'` always, `` `…` `` unless what it
/// quotes is a plain field name (serde's "unknown field `kee`, expected one of `key`") or
/// a bit of syntax ("expected `,` or `}`").
pub(crate) fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find(['"', '\'', '`']) {
        let q = rest.as_bytes()[i] as char;
        out.push_str(&rest[..=i]);
        let after = &rest[i + 1..];
        match after.find(q) {
            Some(j) => {
                let quoted = &after[..j];
                let punctuation =
                    quoted.len() <= 3 && !quoted.bytes().any(|b| b.is_ascii_alphanumeric());
                if q == '`' && (plain_name(quoted) || punctuation) {
                    out.push_str(quoted);
                } else {
                    out.push('…');
                }
                out.push(q);
                rest = &after[j + 1..];
            }
            None => {
                // An unclosed quote: what follows could be anything.
                out.push('…');
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "sk-or-v1-0123456789abcdef0123456789abcdef";

    #[test]
    fn a_broken_toml_line_around_a_key_names_line_and_field_never_the_key() {
        let text = format!(
            "[[upstreams]]\nname = \"openrouter\"\nbase_url = \"http://127.0.0.1:1\"\nkeys = [{{ name = \"main\", key = \"{SECRET}\" ]\n"
        );
        let e = toml::from_str::<toml::Value>(&text).unwrap_err();
        let shown = e.to_string();
        assert!(shown.contains(SECRET), "toml's own message shows the line");
        let msg = file_error(
            "--config",
            "gw.toml",
            &text,
            Position::Offset(e.span().unwrap().start),
            e.message(),
        );
        assert!(
            !msg.contains(SECRET) && !msg.contains("0123456789"),
            "{msg}"
        );
        assert!(msg.contains("line 4"), "{msg}");
    }

    #[test]
    fn fields_are_found_and_values_never_taken_for_them() {
        assert_eq!(field_before(r#"key = "sk-x"#, 8).as_deref(), Some("key"));
        assert_eq!(
            field_before(r#"keys = [{ name = "main", key = "sk-or-v1-abc" ]"#, 45).as_deref(),
            Some("key")
        );
        assert_eq!(
            field_before(r#"  {"tenant": "a", "key": "sk-gw-1111:x"}"#, 38).as_deref(),
            Some("key")
        );
        assert_eq!(
            field_before(r#"base_url = "http://x:1""#, 22).as_deref(),
            Some("base_url")
        );
        assert_eq!(
            redact(r#"invalid type: string "sk-secret", expected u32"#),
            r#"invalid type: string "…", expected u32"#
        );
        assert_eq!(
            redact("unknown field `kee`, expected one of `key`, `env`"),
            "unknown field `kee`, expected one of `key`, `env`"
        );
        assert_eq!(
            redact("unknown field `sk-or-v1-0123456789abcdef0123456789abcdef`"),
            "unknown field `…`"
        );
        assert_eq!(redact(r#"bad "open"#), r#"bad "…"#);
        assert_eq!(redact("expected `,` or `}`"), "expected `,` or `}`");
    }
}
