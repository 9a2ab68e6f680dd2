//! Decimal numbers read from text the crate is handed (environment variables, `/proc`
//! files, the upgrade record, `cpu.max`), through one parser kept out of line.
//!
//! `str::parse` is generic: each integer type it reads is one more copy of std's
//! parser, inlined where it is called, about 250 bytes a site in the release demo.
//! Every site reads through [`u64()`] here instead and converts with `try_from`, which
//! accepts and refuses exactly what `parse` for the narrower type does: an optional
//! `+` (or, through [`i64()`], `-`), then ASCII digits, in range.

/// `s.parse::<u64>()`: an optional `+`, then decimal digits; `None` for anything else
/// or a value above `u64::MAX`.
#[inline(never)]
pub(crate) fn u64(s: &str) -> Option<u64> {
    s.parse().ok()
}

/// `s.parse::<i64>()`: an optional sign, then decimal digits, through [`u64()`].
pub(crate) fn i64(s: &str) -> Option<i64> {
    match s.strip_prefix('-') {
        // "-+5" is not a number for `parse` either.
        Some(digits) if !digits.starts_with('+') => 0i64.checked_sub_unsigned(u64(digits)?),
        Some(_) => None,
        None => i64::try_from(u64(s)?).ok(),
    }
}

/// `s.parse::<T>()` for any integer type `T`: through [`u64()`] for an unsigned type,
/// which refuses a minus sign even on zero (`-0`) as `parse` does, through [`i64()`] for
/// a signed one.
pub(crate) fn parse<T: TryFrom<i64> + TryFrom<u64>>(s: &str) -> Option<T> {
    if T::try_from(-1i64).is_err() {
        T::try_from(u64(s)?).ok()
    } else {
        T::try_from(i64(s)?).ok()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_what_parse_reads() {
        let cases = [
            "0",
            "7",
            "+7",
            "-7",
            "-0",
            "",
            "+",
            "-",
            "-+7",
            "+-7",
            " 7",
            "7 ",
            "07",
            "65535",
            "65536",
            "2147483647",
            "2147483648",
            "-2147483648",
            "-2147483649",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "18446744073709551615",
            "18446744073709551616",
            "1a",
        ];
        for s in cases {
            assert_eq!(super::u64(s), s.parse::<u64>().ok(), "{s:?}");
            assert_eq!(super::i64(s), s.parse::<i64>().ok(), "{s:?}");
            assert_eq!(super::parse::<i32>(s), s.parse::<i32>().ok(), "{s:?}");
            assert_eq!(super::parse::<u32>(s), s.parse::<u32>().ok(), "{s:?}");
            assert_eq!(super::parse::<u16>(s), s.parse::<u16>().ok(), "{s:?}");
            assert_eq!(super::parse::<usize>(s), s.parse::<usize>().ok(), "{s:?}");
        }
    }
}
