//! Calendar periods in UTC for quotas, without a date library: a quota period is a day or
//! a month, named like `2026-11-26` or `2026-11`, and ends at the next one's first second.

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Day,
    Month,
}

/// (year, month, day) from days since 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days since 1970-01-01 of a civil date (days_from_civil).
fn days(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Period {
    /// The period's name and the Unix time it ends, for a Unix time `t`.
    pub fn at(self, t: u64) -> (String, u64) {
        let day = (t / 86_400) as i64;
        let (y, m, d) = civil(day);
        match self {
            Period::Day => (format!("{y:04}-{m:02}-{d:02}"), ((day + 1) * 86_400) as u64),
            Period::Month => {
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (format!("{y:04}-{m:02}"), (days(ny, nm, 1) * 86_400) as u64)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods() {
        // 2026-11-26T09:36:40Z
        let t = 1_795_685_800;
        assert_eq!(Period::Day.at(t).0, "2026-11-26");
        assert_eq!(Period::Month.at(t), ("2026-11".to_string(), 1_796_083_200));
        // 2024-02-29 exists; December rolls the year.
        assert_eq!(Period::Day.at(1_709_164_800).0, "2024-02-29");
        assert_eq!(Period::Month.at(1_733_011_200 + 86_400 * 30).1, 1_735_689_600);
    }
}
