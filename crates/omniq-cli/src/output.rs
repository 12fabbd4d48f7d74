//! How the command shows things to people: lines on standard output that
//! end quietly when the reader goes away, aligned tables, relative times, and
//! colour only when writing to a terminal.

use std::io::{IsTerminal, Write};

use omniq::TaskStatus;
use time::OffsetDateTime;

/// Prints a line on standard output, like `println!`, through [`write_line`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}
pub(crate) use out;

/// Writes one line to standard output. When the reader has gone away
/// (`omniq list | head -1`), the command ends at once and quietly, with
/// success: nobody is left to read the rest. Any other write error ends it
/// with a message on standard error.
pub fn write_line(line: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_fmt(line).and_then(|_| stdout.write_all(b"\n"));
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: cannot write to standard output: {e}");
            std::process::exit(1);
        }
    }
}

/// Whether standard output is a terminal that wants colour (`NO_COLOR` unset).
pub fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// A status word, coloured by outcome on a terminal.
pub fn status(status: TaskStatus, colour: bool) -> String {
    if !colour {
        return status.to_string();
    }
    let code = match status {
        TaskStatus::Pending => "33",
        TaskStatus::Running => "36",
        TaskStatus::Completed => "32",
        TaskStatus::Failed => "31",
        TaskStatus::Cancelled => "90",
    };
    format!("\x1b[{code}m{status}\x1b[0m")
}

/// A time as `2026-11-28 03:31:00.102 UTC`.
pub fn timestamp(time: OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:3] UTC"
    );
    time.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_else(|_| time.to_string())
}

/// `in 5m`, `3s ago`, `now`: a time relative to `now`, rounded to one unit.
pub fn relative(time: OffsetDateTime, now: OffsetDateTime) -> String {
    let seconds = (time - now).whole_seconds();
    let amount = seconds.unsigned_abs();
    if amount == 0 {
        return "now".into();
    }
    let text = match amount {
        0..=59 => format!("{amount}s"),
        60..=3_599 => format!("{}m", amount / 60),
        3_600..=86_399 => format!("{}h", amount / 3_600),
        _ => format!("{}d", amount / 86_400),
    };
    if seconds > 0 {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// Prints rows as columns padded to their widest cell. Cells may hold colour
/// codes, which take no room on screen.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let visible = |cell: &str| {
        let mut width = 0;
        let mut escape = false;
        for c in cell.chars() {
            match (escape, c) {
                (false, '\x1b') => escape = true,
                (true, 'm') => escape = false,
                (true, _) => {}
                (false, _) => width += 1,
            }
        }
        width
    };
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(visible(cell));
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            out.push_str(cell);
            if i + 1 < cells.len() {
                out.push_str(&" ".repeat(width - visible(cell) + 2));
            }
        }
        out!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_naturally() {
        let now = OffsetDateTime::now_utc();
        assert_eq!(relative(now, now), "now");
        assert_eq!(relative(now + time::Duration::seconds(5), now), "in 5s");
        assert_eq!(relative(now - time::Duration::minutes(3), now), "3m ago");
        assert_eq!(relative(now - time::Duration::hours(30), now), "1d ago");
    }
}

/// Text from a store (handler names, keys, errors, messages: written by any
/// program) made safe to print on a terminal: control characters (escape
/// sequences that retitle the terminal or clear it, C1 controls, newlines)
/// and the bidirectional overrides that reorder what is shown are written
/// as `\u{…}` escapes. JSON output needs none of this: its strings are
/// escaped by JSON itself.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut safe = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match unsafe_char(c) {
            true => safe.push_str(&format!("\\u{{{:x}}}", c as u32)),
            false => safe.push(c),
        }
    }
    std::borrow::Cow::Owned(safe)
}

#[cfg(test)]
mod printable_tests {
    use super::printable;

    #[test]
    fn control_sequences_are_escaped_and_plain_text_is_kept() {
        assert_eq!(printable("email.send ✓"), "email.send ✓");
        assert_eq!(printable("a\x1b]0;pwned\x07b"), "a\\u{1b}]0;pwned\\u{7}b");
        assert_eq!(printable("\x1b[2J"), "\\u{1b}[2J");
        assert_eq!(printable("line\nnext"), "line\\u{a}next");
        assert_eq!(printable("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(printable("abc\u{202e}fed"), "abc\\u{202e}fed");
    }
}
