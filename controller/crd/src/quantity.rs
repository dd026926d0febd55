//! Kubernetes resource quantities ("128Mi", "1G", "500m", "1.5Gi", "2e3") to numbers, for the
//! guest's memory, disk capacities and CPU counts. k8s-openapi carries quantities as strings.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0:?} is not a Kubernetes quantity (for example 128Mi, 1G or 500m)")]
pub struct QuantityError(pub String);

/// The quantity's value in thousandths (so "500m" is 500 and "1" is 1000), rounded up.
pub fn parse_milli(text: &str) -> Result<u128, QuantityError> {
    let bad = || QuantityError(text.to_string());
    let t = text.trim();
    let digits_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(digits_end);
    let number = number.strip_prefix('+').unwrap_or(number);
    if number.is_empty() || number.matches('.').count() > 1 {
        return Err(bad());
    }
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() {
        return Err(bad());
    }
    // value = mantissa / 10^frac_digits, scaled by the suffix.
    let mantissa: u128 = format!("{whole}{frac}").parse().map_err(|_| bad())?;
    let frac_digits = frac.len() as u32;
    let (numerator, denominator): (u128, u128) = match suffix {
        "" => (1000, 1),
        "m" => (1, 1),
        "k" => (1000 * 1000, 1),
        "M" => (1000 * 1000u128.pow(2), 1),
        "G" => (1000 * 1000u128.pow(3), 1),
        "T" => (1000 * 1000u128.pow(4), 1),
        "P" => (1000 * 1000u128.pow(5), 1),
        "E" => (1000 * 1000u128.pow(6), 1),
        "Ki" => (1000 << 10, 1),
        "Mi" => (1000 << 20, 1),
        "Gi" => (1000 << 30, 1),
        "Ti" => (1000 << 40, 1),
        "Pi" => (1000 << 50, 1),
        "Ei" => (1000 << 60, 1),
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..].parse().map_err(|_| bad())?;
            if exp.unsigned_abs() > 18 {
                return Err(bad());
            }
            if exp >= 0 {
                (1000 * 10u128.pow(exp as u32), 1)
            } else {
                (1000, 10u128.pow(exp.unsigned_abs()))
            }
        }
        _ => return Err(bad()),
    };
    let scaled = mantissa.checked_mul(numerator).ok_or_else(bad)?;
    let divisor = 10u128
        .checked_pow(frac_digits)
        .and_then(|d| d.checked_mul(denominator))
        .ok_or_else(bad)?;
    Ok(scaled.div_ceil(divisor))
}

/// The quantity in whole units, rounded up ("1.5" is 2, "100m" is 1).
pub fn parse_units(text: &str) -> Result<u128, QuantityError> {
    Ok(parse_milli(text)?.div_ceil(1000))
}

/// The quantity in bytes, rounded up.
pub fn parse_bytes(text: &str) -> Result<u64, QuantityError> {
    u64::try_from(parse_units(text)?).map_err(|_| QuantityError(text.to_string()))
}

/// Bytes as Kubernetes writes memory ("128Mi", "1Gi"), or plain bytes when not whole MiB.
pub fn format_bytes(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if bytes.is_multiple_of(1 << 30) && bytes > 0 {
        format!("{}Gi", bytes >> 30)
    } else if bytes.is_multiple_of(MIB) {
        format!("{}Mi", bytes / MIB)
    } else {
        bytes.to_string()
    }
}

/// Thousandths of a CPU as Kubernetes writes them ("100m", "2").
pub fn format_milli(milli: u128) -> String {
    if milli.is_multiple_of(1000) {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_decimal_milli_and_exponent_forms() {
        assert_eq!(parse_bytes("128Mi"), Ok(128 << 20));
        assert_eq!(parse_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(parse_bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_bytes("1024M"), Ok(1_024_000_000));
        assert_eq!(parse_bytes("4096M"), Ok(4_096_000_000));
        assert_eq!(parse_bytes("2e3"), Ok(2000));
        assert_eq!(parse_bytes("12345"), Ok(12345));
        assert_eq!(parse_bytes("+1Ki"), Ok(1024));
        assert_eq!(parse_milli("500m"), Ok(500));
        assert_eq!(parse_milli("0.1"), Ok(100));
        assert_eq!(parse_units("100m"), Ok(1));
        assert_eq!(parse_units("2"), Ok(2));
        assert_eq!(parse_units("1.5"), Ok(2));
        assert_eq!(parse_milli("1e-3"), Ok(1));
    }

    #[test]
    fn refuses_what_is_not_a_quantity() {
        for bad in [
            "",
            "Mi",
            "12Qi",
            "1.2.3",
            "-1",
            "1e99",
            "abc",
            "1 Gi",
            "99999999999999999999Ei",
        ] {
            assert!(parse_milli(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn formats_as_kubernetes_does() {
        assert_eq!(format_bytes(128 << 20), "128Mi");
        assert_eq!(format_bytes(2 << 30), "2Gi");
        assert_eq!(format_bytes(1000), "1000");
        assert_eq!(format_milli(100), "100m");
        assert_eq!(format_milli(2000), "2");
    }
}
