//! Parsing the durations and sizes people type: `5s`, `250ms`, `100us`, `2M`, `1GiB`.

use std::time::Duration;

/// Parses `1.5s`, `250ms`, `100us`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("'{text}' is not a duration; try 5s, 250ms or 100us"))?;
    let seconds_per_unit = match unit.trim() {
        "" | "s" | "sec" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!("unknown time unit '{other}' in '{text}'; use h, m, s, ms, us or ns"));
        }
    };
    Duration::try_from_secs_f64(value * seconds_per_unit).map_err(|_| format!("'{text}' is out of range"))
}

/// Parses a byte size: `2M`, `2MiB`, `512K`, `1G`, or plain bytes. K, M and G
/// are binary (1024-based), as memory sizes usually are.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number.parse().map_err(|_| format!("'{text}' is not a size; try 2M, 64MiB or 1G"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => {
            return Err(format!("unknown size unit '{other}' in '{text}'; use K, M or G"));
        }
    };
    value.checked_mul(1 << shift).ok_or_else(|| format!("'{text}' is too large"))
}

/// Parses a guest address: `0x10000` (hex), `65536`, or a size such as `64K`.
pub fn parse_address(text: &str) -> Result<u64, String> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).map_err(|_| format!("'{text}' is not a hex address; try 0x10000")),
        None => parse_size(text).map_err(|_| format!("'{text}' is not an address; try 0x10000 or 64K")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_hex_decimal_or_sizes() {
        assert_eq!(parse_address("0x10000"), Ok(0x10000));
        assert_eq!(parse_address("0"), Ok(0));
        assert_eq!(parse_address("64K"), Ok(0x10000));
        assert!(parse_address("0xZZ").unwrap_err().contains("try 0x10000"));
        assert!(parse_address("low").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5 fortnights").unwrap_err().contains("unknown time unit"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("2X").is_err());
        assert!(parse_size("99999999999999999G").unwrap_err().contains("too large"));
    }
}
