//! Exact fixed-point decimals for prices and sizes.
//!
//! The venue sends every number as a decimal string. We keep them as integer counts of 1e-6 so
//! that book state is exact and comparisons are integer comparisons; floats never touch it.
//! Formatting back gives the venue's canonical shortest form ("0.5", "2226", "13354.28"), which
//! the book hash depends on.

use std::fmt;
use std::str::FromStr;

/// Fractional digits kept: one unit is 1e-6.
pub const SCALE_DIGITS: u32 = 6;
/// Units per 1.0.
pub const SCALE: u64 = 1_000_000;
/// Longest decimal string accepted; longer input is rejected before any arithmetic.
pub const DECIMAL_LEN_MAX: usize = 32;

/// Why a decimal string was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    #[error("empty decimal string")]
    Empty,
    #[error("decimal string longer than {DECIMAL_LEN_MAX} bytes")]
    TooLong,
    #[error("invalid character {0:?} in decimal (no signs, exponents or spaces)")]
    InvalidChar(char),
    #[error("decimal has no digits before or after its point")]
    MissingDigits,
    #[error("more than {SCALE_DIGITS} fractional digits")]
    TooManyFractionDigits,
    #[error("decimal out of range")]
    Overflow,
}

/// Parses `s` into units of 1e-6 without floats. Accepts `digits[.digits]` only.
fn parse_units(s: &str) -> Result<u64, DecimalError> {
    let bytes = s.as_bytes();
    if bytes.is_empty() {
        return Err(DecimalError::Empty);
    }
    if bytes.len() > DECIMAL_LEN_MAX {
        return Err(DecimalError::TooLong);
    }
    let mut int_part: u64 = 0;
    let mut int_digits = 0usize;
    let mut i = 0;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        int_part = int_part
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(bytes[i] - b'0')))
            .ok_or(DecimalError::Overflow)?;
        int_digits += 1;
        i += 1;
    }
    let mut frac: u64 = 0;
    let mut frac_digits = 0u32;
    if i < bytes.len() {
        if bytes[i] != b'.' {
            return Err(DecimalError::InvalidChar(char::from(bytes[i])));
        }
        i += 1;
        while i < bytes.len() {
            let b = bytes[i];
            if !b.is_ascii_digit() {
                return Err(DecimalError::InvalidChar(char::from(b)));
            }
            if frac_digits == SCALE_DIGITS {
                return Err(DecimalError::TooManyFractionDigits);
            }
            frac = frac * 10 + u64::from(b - b'0');
            frac_digits += 1;
            i += 1;
        }
        if frac_digits == 0 {
            return Err(DecimalError::MissingDigits);
        }
    }
    if int_digits == 0 {
        return Err(DecimalError::MissingDigits);
    }
    let frac_units = frac * 10u64.pow(SCALE_DIGITS - frac_digits);
    int_part
        .checked_mul(SCALE)
        .and_then(|v| v.checked_add(frac_units))
        .ok_or(DecimalError::Overflow)
}

/// Appends the canonical text of `units` (1e-6) to `out`, keeping at least `min_frac` fractional
/// digits. The hash writes hundreds of these per check, so it avoids any intermediate buffer.
pub fn push_decimal(out: &mut String, units: u64, min_frac: u8) {
    push_u64(out, units / SCALE);
    let frac = (units % SCALE) as usize;
    // Six fraction digits, two at a time from a table.
    let mut digits = [0u8; SCALE_DIGITS as usize];
    for (k, pair) in [frac / 10_000, (frac / 100) % 100, frac % 100].into_iter().enumerate() {
        digits[2 * k] = DIGIT_PAIRS[2 * pair];
        digits[2 * k + 1] = DIGIT_PAIRS[2 * pair + 1];
    }
    let mut n = digits.len();
    let keep = usize::from(min_frac).min(n);
    while n > keep && digits[n - 1] == b'0' {
        n -= 1;
    }
    if n > 0 {
        out.push('.');
        for &d in &digits[..n] {
            out.push(char::from(d));
        }
    }
}

/// "00" "01" .. "99": two decimal digits per lookup.
const DIGIT_PAIRS: [u8; 200] = {
    let mut t = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        t[2 * i] = b'0' + (i / 10) as u8;
        t[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
};

/// Appends `v` in decimal.
pub fn push_u64(out: &mut String, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &b in &tmp[i..] {
        out.push(char::from(b));
    }
}

/// A formatted decimal on the stack; avoids allocating when writing hashes and JSON.
pub struct DecimalText {
    buf: [u8; 28],
    len: u8,
}

impl DecimalText {
    /// Canonical shortest text of `units` (1e-6), e.g. 500000 -> "0.5", 2226000000 -> "2226".
    pub fn canonical(units: u64) -> Self {
        Self::with_min_frac_digits(units, 0)
    }

    /// Like [`DecimalText::canonical`] but keeps at least `min_frac` fractional digits
    /// (the venue writes `last_trade_price` in opening books as "0.500").
    pub fn with_min_frac_digits(units: u64, min_frac: u8) -> Self {
        let mut out = DecimalText { buf: [0; 28], len: 0 };
        let int_part = units / SCALE;
        let mut frac = units % SCALE;
        let mut frac_digits = SCALE_DIGITS;
        let min_frac = u32::from(min_frac).min(SCALE_DIGITS);
        while frac_digits > min_frac && frac % 10 == 0 {
            frac /= 10;
            frac_digits -= 1;
        }
        // Integer part, written backwards into a scratch buffer.
        let mut tmp = [0u8; 20];
        let mut n = 0;
        let mut v = int_part;
        loop {
            tmp[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for k in (0..n).rev() {
            out.push(tmp[k]);
        }
        if frac_digits > 0 {
            out.push(b'.');
            let mut div = 10u64.pow(frac_digits - 1);
            while div > 0 {
                out.push(b'0' + ((frac / div) % 10) as u8);
                div /= 10;
            }
        }
        out
    }

    fn push(&mut self, b: u8) {
        self.buf[usize::from(self.len)] = b;
        self.len += 1;
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and '.' are ever pushed.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }
}

macro_rules! fixed_point {
    ($name:ident, $raw:ty, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub $raw);

        impl $name {
            pub const ZERO: Self = Self(0);

            /// Raw count of 1e-6.
            pub const fn units(self) -> $raw {
                self.0
            }

            pub const fn from_units(units: $raw) -> Self {
                Self(units)
            }

            pub fn is_zero(self) -> bool {
                self.0 == 0
            }

            /// Canonical text on the stack.
            pub fn text(self) -> DecimalText {
                DecimalText::canonical(u64::from(self.0))
            }

            /// Exact parse of a venue decimal string.
            pub fn parse(s: &str) -> Result<Self, DecimalError> {
                let units = parse_units(s)?;
                <$raw>::try_from(units).map(Self).map_err(|_| DecimalError::Overflow)
            }
        }

        impl FromStr for $name {
            type Err = DecimalError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.text().as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.text().as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.text().as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a decimal string")
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        $name::parse(v)
                            .map_err(|e| E::custom(format_args!("bad number: {v:?}: {e}")))
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

fixed_point!(
    Price,
    u32,
    "A price in units of 1e-6 (venue prices lie in [0, 1]; u32 leaves headroom)."
);
fixed_point!(Size, u64, "A size (shares) in units of 1e-6.");

impl Price {
    /// 1.0, the payout of a winning share.
    pub const ONE: Price = Price(SCALE as u32);

    /// The mirrored price on the other outcome token: 1 - p. None if p > 1.
    pub fn complement(self) -> Option<Price> {
        Price::ONE.0.checked_sub(self.0).map(Price)
    }

    /// True if `self` is a whole multiple of `tick`.
    pub fn is_on_tick(self, tick: Price) -> bool {
        tick.0 != 0 && self.0 % tick.0 == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_exact_without_floats() {
        assert_eq!(Price::parse("0.29"), Ok(Price(290_000)));
        assert_eq!(Price::parse("0.57"), Ok(Price(570_000)));
        assert_eq!(Price::parse("0.001"), Ok(Price(1_000)));
        assert_eq!(Price::parse("1"), Ok(Price(1_000_000)));
        assert_eq!(Size::parse("13354.28"), Ok(Size(13_354_280_000)));
        assert_eq!(Size::parse("3.581817"), Ok(Size(3_581_817)));
        assert_eq!(Size::parse("0"), Ok(Size(0)));
        assert_eq!(Size::parse("007.50"), Ok(Size(7_500_000)));
    }

    #[test]
    fn format_canonical_shortest() {
        assert_eq!(Price(500_000).to_string(), "0.5");
        assert_eq!(Size(2_226_000_000).to_string(), "2226");
        assert_eq!(Size(13_354_280_000).to_string(), "13354.28");
        assert_eq!(Size(3_581_817).to_string(), "3.581817");
        assert_eq!(Size(0).to_string(), "0");
        assert_eq!(Price(1_000).to_string(), "0.001");
        assert_eq!(DecimalText::with_min_frac_digits(500_000, 3).as_str(), "0.500");
        assert_eq!(DecimalText::with_min_frac_digits(64_000, 3).as_str(), "0.064");
        assert_eq!(DecimalText::with_min_frac_digits(123_456, 3).as_str(), "0.123456");
        assert_eq!(DecimalText::with_min_frac_digits(2_000_000, 3).as_str(), "2.000");
        assert_eq!(Size(u64::MAX).to_string(), "18446744073709.551615");
        for (units, min, want) in [
            (500_000u64, 0u8, "0.5"),
            (2_226_000_000, 0, "2226"),
            (0, 0, "0"),
            (500_000, 3, "0.500"),
            (2_000_000, 3, "2.000"),
            (123_456, 3, "0.123456"),
            (u64::MAX, 0, "18446744073709.551615"),
        ] {
            let mut s = String::from("x");
            push_decimal(&mut s, units, min);
            assert_eq!(s, format!("x{want}"));
            assert_eq!(DecimalText::with_min_frac_digits(units, min).as_str(), want);
        }
        // The table-driven writer agrees with the plain one across magnitudes and fractions.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let units = match i % 4 {
                0 => x % 1_000_000,
                1 => x % 10_000_000_000,
                2 => (x % 100_000) * 10_000,
                _ => x,
            };
            for min in [0u8, 3] {
                let mut s = String::new();
                push_decimal(&mut s, units, min);
                assert_eq!(s, DecimalText::with_min_frac_digits(units, min).as_str(), "{units}");
            }
        }
    }

    #[test]
    fn parse_rejects_bad_input_with_typed_errors() {
        assert_eq!(Price::parse(""), Err(DecimalError::Empty));
        assert_eq!(Price::parse("-0.5"), Err(DecimalError::InvalidChar('-')));
        assert_eq!(Price::parse("+0.5"), Err(DecimalError::InvalidChar('+')));
        assert_eq!(Price::parse("5e-1"), Err(DecimalError::InvalidChar('e')));
        assert_eq!(Price::parse(" 0.5"), Err(DecimalError::InvalidChar(' ')));
        assert_eq!(Price::parse("0.5 "), Err(DecimalError::InvalidChar(' ')));
        assert_eq!(Price::parse(".48"), Err(DecimalError::MissingDigits));
        assert_eq!(Price::parse("1."), Err(DecimalError::MissingDigits));
        assert_eq!(Price::parse("."), Err(DecimalError::MissingDigits));
        assert_eq!(Price::parse("0.1234567"), Err(DecimalError::TooManyFractionDigits));
        assert_eq!(Price::parse("0.1.2"), Err(DecimalError::InvalidChar('.')));
        assert_eq!(Price::parse("5000"), Err(DecimalError::Overflow));
        assert_eq!(Size::parse("99999999999999999999"), Err(DecimalError::Overflow));
        assert_eq!(Size::parse(&"1".repeat(33)), Err(DecimalError::TooLong));
        assert_eq!(Size::parse("NaN"), Err(DecimalError::InvalidChar('N')));
    }

    #[test]
    fn complement_mirrors_price() {
        assert_eq!(Price(490_000).complement(), Some(Price(510_000)));
        assert_eq!(Price(2_000_000).complement(), None);
        assert!(Price(490_000).is_on_tick(Price(10_000)));
        assert!(!Price(491_000).is_on_tick(Price(10_000)));
    }
}
