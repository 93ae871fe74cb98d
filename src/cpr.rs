//! The CPR guard: finds a Danish CPR number (personnummer) in a string, so that a body carrying
//! one is refused as `cpr-detected` before anything else looks at it.
//!
//! A CPR number is `DDMMYY-XXXX` (the separator may also be a space, a slash, a dot or a
//! Unicode dash), or ten digits, whose first six digits are a valid day and month; either form
//! must be bounded by non-digits. The caller decides which strings to scan:
//! identifiers (UUIDs, hex ids) are not scanned. Pure: no I/O.

/// The number of days a month can have (February counts 29: some century makes any YY a leap
/// year, and a guard must not miss a real number).
fn days_in_month(month: u32) -> Option<u32> {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => Some(31),
        4 | 6 | 9 | 11 => Some(30),
        2 => Some(29),
        _ => None,
    }
}

/// Whether six ASCII digits read as DDMMYY form a valid day and month.
fn is_date(digits: &[u8]) -> bool {
    let number = |pair: &[u8]| -> Option<u32> {
        match pair {
            [a, b] => Some(u32::from(a - b'0') * 10 + u32::from(b - b'0')),
            _ => None,
        }
    };
    let (Some(day), Some(month)) = (
        digits.get(0..2).and_then(number),
        digits.get(2..4).and_then(number),
    ) else {
        return false;
    };
    days_in_month(month).is_some_and(|days| (1..=days).contains(&day))
}

/// What may stand between the date and the serial: hyphen, space, slash, dot, and the Unicode
/// dashes a word processor substitutes (non-breaking hyphen, en dash, em dash, minus sign).
const SEPARATORS: [char; 8] = [
    '-', ' ', '/', '.', '\u{2011}', '\u{2013}', '\u{2014}', '\u{2212}',
];

/// `true` if `text` contains a CPR-shaped number.
pub fn contains_cpr(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_run = bytes.get(i).is_some_and(u8::is_ascii_digit)
            && (i == 0 || !bytes.get(i - 1).is_some_and(u8::is_ascii_digit));
        if !starts_run {
            i += 1;
            continue;
        }
        let run = bytes
            .get(i..)
            .unwrap_or_default()
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let digits = bytes.get(i..i + run).unwrap_or_default();
        if run == 10 && is_date(digits) {
            return true;
        }
        if run == 6
            && let Some(separator) = text.get(i + 6..).and_then(|rest| rest.chars().next())
            && SEPARATORS.contains(&separator)
        {
            let after = i + 6 + separator.len_utf8();
            let tail = bytes
                .get(after..)
                .unwrap_or_default()
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if tail == 4 && is_date(digits) {
                return true;
            }
        }
        i += run;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    // Obviously fake numbers: the first of January 2000 with serial 0000 or 1111.
    #[test]
    fn finds_both_forms_anywhere_bounded_by_non_digits() {
        for text in [
            "010100-0000",
            "0101001111",
            "barnet har cpr 010100-1111.",
            "x0101000000y",
            "290200-0000",
            "310100-0000",
            "010100 0000",
            "010100/0000",
            "010100.0000",
            "010100\u{2013}0000",
            "010100\u{2011}0000",
        ] {
            assert!(contains_cpr(text), "{text}");
        }
    }

    #[test]
    fn refuses_to_see_a_cpr_where_there_is_none() {
        for text in [
            "",
            "010100-000",
            "010100-00000",
            "00101000000",
            "3210100000",
            "320100-0000",
            "311100-0000",
            "011300-0000",
            "000100-0000",
            "sessions attended 6 of 8",
            "2026-10",
            "0192f0a4-7b1c-7def-8a00-1234567890ab",
            "d41d8cd98f00b204e9800998ecf8427e",
        ] {
            assert!(!contains_cpr(text), "{text}");
        }
    }

    #[test]
    fn february_the_29th_counts_and_the_30th_does_not() {
        assert!(contains_cpr("290201-0000"));
        assert!(!contains_cpr("300201-0000"));
    }
}
