//! How numbers and names are written on the page and in charts. Everything goes through fixed
//! formats so that the same rows always give the same bytes.

/// `x` with `digits` significant digits, never in exponent form: 2.41 → "2.410", 0.000421 →
/// "0.0004210", 1234.6 → "1235" (at 4 digits).
pub fn significant(x: f64, digits: i32) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let magnitude = x.abs().log10().floor() as i32;
    let decimals = (digits - 1 - magnitude).max(0) as usize;
    format!("{x:.decimals$}")
}

/// A cut or other percentage: "97.12%".
pub fn percent(x: f64) -> String {
    format!("{x:.2}%")
}

/// A ratio: "1.046×".
pub fn ratio(x: f64) -> String {
    format!("{x:.3}×")
}

/// Text safe inside a markdown table cell.
pub fn table_cell(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
}

/// Text safe inside SVG/XML character data and attribute values.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Arguments joined into one line a POSIX shell reads back as the same arguments.
pub fn shell_line<S: AsRef<str>>(args: &[S]) -> String {
    args.iter()
        .map(|a| shell_word(a.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// An axis tick value with SI suffixes, for wide ranges such as microseconds: 0.5, 20, 1k, 1M.
pub fn si_tick_label(v: f64) -> String {
    let (scaled, suffix) = if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    format!("{}{suffix}", plain_tick_label(scaled))
}

/// An axis tick value as a plain decimal: 0.01, 0.5, 1, 20, 1000.
pub fn plain_tick_label(v: f64) -> String {
    // Tick values are m·10^e with small m: 6 decimals then trimming is exact enough.
    let text = format!("{v:.6}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn significant_digits() {
        assert_eq!(significant(2.41, 4), "2.410");
        assert_eq!(significant(0.000421, 4), "0.0004210");
        assert_eq!(significant(1234.6, 4), "1235");
        assert_eq!(significant(123.45, 4), "123.5");
        assert_eq!(significant(-0.012, 3), "-0.0120");
        assert_eq!(significant(0.0, 4), "0");
    }

    #[test]
    fn percents_and_ratios() {
        assert_eq!(percent(97.1234), "97.12%");
        assert_eq!(percent(-12.0), "-12.00%");
        assert_eq!(ratio(1.1), "1.100×");
    }

    #[test]
    fn escaping() {
        assert_eq!(table_cell("a|b\nc"), "a\\|b c");
        assert_eq!(
            xml_escape("<a & 'b'>\u{1}"),
            "&lt;a &amp; &apos;b&apos;&gt; "
        );
    }

    #[test]
    fn shell_lines_quote_only_what_needs_it() {
        assert_eq!(
            shell_line(&["thaw-bench", "--json", "out dir/r.json", "it's"]),
            r"thaw-bench --json 'out dir/r.json' 'it'\''s'"
        );
        assert_eq!(shell_line(&["--out", ""]), "--out ''");
    }

    #[test]
    fn tick_labels() {
        assert_eq!(plain_tick_label(0.01), "0.01");
        assert_eq!(plain_tick_label(1.0), "1");
        assert_eq!(plain_tick_label(1000.0), "1000");
        assert_eq!(si_tick_label(20.0), "20");
        assert_eq!(si_tick_label(1000.0), "1k");
        assert_eq!(si_tick_label(50_000.0), "50k");
        assert_eq!(si_tick_label(1e6), "1M");
    }
}
