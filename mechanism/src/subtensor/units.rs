//! TAO amounts: the chain counts rao (10⁻⁹ TAO) in `u64`; people write TAO as decimals.
//! Parsed exactly, without floating point, so `0.1` TAO is 100 000 000 rao and not one less.

/// Rao in one TAO.
pub const RAO_PER_TAO: u64 = 1_000_000_000;

/// Rao in `text`, a decimal amount of TAO (`1`, `0.5`, `1000.000000001`).
pub fn parse_tao(text: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("{text:?} is not an amount of TAO: {why}");
    let (whole, fraction) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(bad("empty"));
    }
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(fraction) {
        return Err(bad("digits and one '.' only"));
    }
    if fraction.len() > 9 {
        return Err(bad("at most 9 decimals (1 rao = 0.000000001 TAO)"));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad("too large"))?
    };
    let fraction: u64 = format!("{fraction:0<9}").parse().unwrap_or(0);
    whole
        .checked_mul(RAO_PER_TAO)
        .and_then(|rao| rao.checked_add(fraction))
        .ok_or_else(|| bad("too large"))
}

/// `rao` as TAO with nine decimals, trailing zeros dropped (`1.5`, `0.000000001`, `2`).
pub fn format_tao(rao: u64) -> String {
    let fraction = format!("{:09}", rao % RAO_PER_TAO);
    let fraction = fraction.trim_end_matches('0');
    if fraction.is_empty() {
        format!("{}", rao / RAO_PER_TAO)
    } else {
        format!("{}.{fraction}", rao / RAO_PER_TAO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tao_parses_exactly_and_prints_back() {
        assert_eq!(parse_tao("1"), Ok(RAO_PER_TAO));
        assert_eq!(parse_tao("0.1"), Ok(100_000_000));
        assert_eq!(parse_tao(".5"), Ok(500_000_000));
        assert_eq!(parse_tao("1000.000000001"), Ok(1_000_000_000_001));
        for bad in ["", ".", "1.2.3", "-1", "1e9", "0.0000000001", "18446744074"] {
            assert!(parse_tao(bad).is_err(), "{bad:?}");
        }
        for rao in [0, 1, 500_000_000, RAO_PER_TAO, 1_000_000_000_001, u64::MAX] {
            assert_eq!(parse_tao(&format_tao(rao)), Ok(rao));
        }
        assert_eq!(format_tao(1_500_000_000), "1.5");
    }
}
