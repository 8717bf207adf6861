//! The table-driven reading of the worker's settings. Each one comes from
//! its `MISIVA_*` variable, else the file, else its default, and is checked
//! in one place: a whole number against its row of the table below, a text
//! setting by its parser. So every setting behaves alike: an empty variable
//! counts as unset, and a bad value, from either source, is a
//! [`ConfigError`] naming the variable.

use super::{BROKER_DELIVERY_LIMIT, ConfigError, MAX_SHARDS, invalid, parse_duration};
use std::collections::HashMap;
use std::time::Duration;

/// A whole-number setting: its variable, default and range.
#[derive(Debug)]
pub(super) struct Whole {
    pub(super) var: &'static str,
    pub(super) default: u64,
    pub(super) min: u64,
    pub(super) max: u64,
    /// Said after the range in an error: the unit, or why the range is so.
    pub(super) why: &'static str,
}

const fn whole(var: &'static str, default: u64, min: u64, max: u64) -> Whole {
    Whole {
        var,
        default,
        min,
        max,
        why: "",
    }
}

pub(super) const CONSUMERS: Whole = whole("MISIVA_CONSUMERS", 2, 1, 256);
pub(super) const SHARDS: Whole = whole("MISIVA_SHARDS", 1, 1, MAX_SHARDS as u64);
pub(super) const PREFETCH: Whole = whole("MISIVA_PREFETCH", 500, 1, u16::MAX as u64);
pub(super) const URGENT_CONSUMERS: Whole = whole("MISIVA_URGENT_CONSUMERS", 1, 1, 64);
/// Urgent jobs are mostly single-token and few: 100 unacked per consumer
/// carries thousands a second at APNs' usual round trip.
pub(super) const URGENT_PREFETCH: Whole = whole("MISIVA_URGENT_PREFETCH", 100, 1, u16::MAX as u64);
pub(super) const MAX_ATTEMPTS: Whole = whole("MISIVA_MAX_ATTEMPTS", 8, 1, 1000);
pub(super) const SHUTDOWN_GRACE: Whole = Whole {
    why: " seconds",
    ..whole("MISIVA_SHUTDOWN_GRACE", 20, 0, 3600)
};
/// Below the work queue's own limit, so that the worker parks a poison
/// message before the broker drops or dead-letters it.
pub(super) const MAX_DELIVERIES: Whole = Whole {
    why: ": the work queue's own delivery limit is one more, and the worker must park a poison message before the broker does",
    ..whole(
        "MISIVA_MAX_DELIVERIES",
        10,
        1,
        BROKER_DELIVERY_LIMIT as u64 - 1,
    )
};
/// The default app's connections; a file's apps say theirs in their section.
pub(super) const APNS_CONNECTIONS: Whole = whole("MISIVA_APNS_CONNECTIONS", 1, 1, 64);

/// Where settings come from: the environment (`MISIVA_*`), over the file.
pub(super) struct Sources<'a> {
    env: &'a HashMap<String, String>,
}

impl<'a> Sources<'a> {
    pub(super) fn new(env: &'a HashMap<String, String>) -> Self {
        Sources { env }
    }

    /// The variable's value, when it is set and not empty.
    pub(super) fn var(&self, name: &str) -> Option<String> {
        self.env.get(name).filter(|v| !v.is_empty()).cloned()
    }

    /// A text setting: the variable, else the file's value.
    pub(super) fn text(&self, name: &str, file: Option<String>) -> Option<String> {
        self.var(name).or(file)
    }

    /// A whole number: the variable, else the file's value, else the row's
    /// default; in the row's range, and converted without loss (every
    /// row's range fits the type it is read into).
    pub(super) fn whole<T: TryFrom<u64>>(
        &self,
        row: &Whole,
        file: Option<u64>,
    ) -> Result<T, ConfigError> {
        let value = self.whole_if_set(row, file)?.unwrap_or(row.default);
        T::try_from(value).map_err(|_| out_of_range(row, value))
    }

    /// A whole number only when the variable or the file sets it.
    pub(super) fn whole_if_set(
        &self,
        row: &Whole,
        file: Option<u64>,
    ) -> Result<Option<u64>, ConfigError> {
        let value = match self.var(row.var) {
            Some(raw) => Some(raw.trim().parse::<u64>().map_err(|_| {
                invalid(
                    row.var,
                    crate::bounded::cut(&raw, 32),
                    "expected a whole number",
                )
            })?),
            None => file,
        };
        match value {
            Some(v) if !(row.min..=row.max).contains(&v) => Err(out_of_range(row, v)),
            other => Ok(other),
        }
    }

    /// A setting written as text: the variable, else the file, parsed by
    /// `parse` (`None` for a bad value, which the error shows cut short),
    /// else `default`.
    pub(super) fn parsed<T>(
        &self,
        name: &str,
        file: Option<String>,
        default: T,
        parse: impl FnOnce(&str) -> Option<T>,
        expected: &str,
    ) -> Result<T, ConfigError> {
        match self.text(name, file) {
            None => Ok(default),
            Some(raw) => {
                parse(&raw).ok_or_else(|| invalid(name, crate::bounded::cut(&raw, 64), expected))
            }
        }
    }
}

fn out_of_range(row: &Whole, value: u64) -> ConfigError {
    invalid(
        row.var,
        value.to_string(),
        format!("expected {} to {}{}", row.min, row.max, row.why),
    )
}

/// "10%" or "10" → 10, for 0 to 50: more than half kept idle for the urgent
/// lane would starve the ordinary one for nothing.
pub(super) fn parse_percent(text: &str) -> Option<u8> {
    let number = text.trim().strip_suffix('%').unwrap_or(text.trim()).trim();
    let value: u8 = number.parse().ok()?;
    (value <= 50).then_some(value)
}

/// A hold from 1 s to 25 min: below RabbitMQ's `consumer_timeout` (30 min
/// by default), past which the broker closes the channel.
pub(super) fn parse_hold(text: &str) -> Option<Duration> {
    parse_duration(text)
        .filter(|d| *d >= Duration::from_secs(1) && *d <= Duration::from_secs(25 * 60))
}

/// "10/60s" → 10 restarts within 60 s.
pub(super) fn parse_intensity(text: &str) -> Option<(u32, Duration)> {
    let (n, period) = text.split_once('/')?;
    let n: u32 = n.trim().parse().ok()?;
    let period = parse_duration(period)?;
    (n > 0 && !period.is_zero()).then_some((n, period))
}

/// Increasing, non-zero delays, 1 to 20 of them.
pub(super) fn parse_delays<'s>(
    name: &str,
    items: impl Iterator<Item = &'s str>,
) -> Result<Vec<Duration>, ConfigError> {
    let mut delays = Vec::new();
    for item in items {
        match parse_duration(item) {
            Some(d) if !d.is_zero() && delays.last().is_none_or(|last| *last < d) => delays.push(d),
            _ => {
                return Err(invalid(
                    name,
                    item,
                    "expected increasing delays like 1s,5s,30s,2m,10m (units ms, s, m, h)",
                ));
            }
        }
    }
    if delays.is_empty() || delays.len() > 20 {
        return Err(invalid(name, "", "expected 1 to 20 delays"));
    }
    Ok(delays)
}

/// A name that goes into an AMQP short string: 1 to `limit` bytes, not in
/// the broker's reserved `amq.` space.
pub(super) fn check_name(name: &str, value: &str, limit: usize) -> Result<(), ConfigError> {
    if value.is_empty() || value.len() > limit || value.starts_with("amq.") {
        return Err(invalid(
            name,
            crate::bounded::cut(value, 64),
            format!("expected 1 to {limit} bytes, not starting with amq."),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row's default is in its range, and every row's range fits the
    /// type `from_parts` reads it into (u16 for the prefetches, u32 for
    /// the counts of deliveries and attempts, usize for the rest).
    #[test]
    fn every_row_is_consistent() {
        for row in [
            CONSUMERS,
            SHARDS,
            PREFETCH,
            URGENT_CONSUMERS,
            URGENT_PREFETCH,
            MAX_ATTEMPTS,
            SHUTDOWN_GRACE,
            MAX_DELIVERIES,
            APNS_CONNECTIONS,
        ] {
            assert!(row.min <= row.default && row.default <= row.max, "{row:?}");
            assert!(row.max <= u64::from(u16::MAX) || row.var == "MISIVA_SHUTDOWN_GRACE");
        }
        assert!(MAX_DELIVERIES.max < u64::from(BROKER_DELIVERY_LIMIT));
    }

    #[test]
    fn an_empty_variable_is_unset_and_a_bad_one_is_named() {
        let env: HashMap<String, String> = [
            ("MISIVA_CONSUMERS", ""),
            ("MISIVA_SHARDS", "two"),
            ("MISIVA_PREFETCH", "70000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let sources = Sources::new(&env);
        assert_eq!(sources.whole::<usize>(&CONSUMERS, Some(7)).unwrap(), 7);
        assert_eq!(sources.whole::<usize>(&CONSUMERS, None).unwrap(), 2);
        let shards = sources
            .whole::<usize>(&SHARDS, None)
            .unwrap_err()
            .to_string();
        assert!(
            shards.contains("MISIVA_SHARDS") && shards.contains("whole number"),
            "{shards}"
        );
        let prefetch = sources
            .whole::<u16>(&PREFETCH, None)
            .unwrap_err()
            .to_string();
        assert!(prefetch.contains("expected 1 to 65535"), "{prefetch}");
        // A file value out of range is refused the same way.
        let file = sources
            .whole::<u32>(&MAX_ATTEMPTS, Some(0))
            .unwrap_err()
            .to_string();
        assert!(
            file.contains("MISIVA_MAX_ATTEMPTS") && file.contains("1 to 1000"),
            "{file}"
        );
    }

    #[test]
    fn text_settings_parse() {
        assert_eq!(parse_hold("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_hold("26m"), None);
        assert_eq!(parse_hold("500ms"), None);
        assert_eq!(
            parse_intensity("10/60s"),
            Some((10, Duration::from_secs(60)))
        );
        for bad in ["0/60s", "10/0s", "10", "x/60s", "10/soon"] {
            assert_eq!(parse_intensity(bad), None, "{bad}");
        }
        assert!(check_name("MISIVA_QUEUE", "amq.jobs", 230).is_err());
        assert!(check_name("MISIVA_QUEUE", &"q".repeat(231), 230).is_err());
        assert!(check_name("MISIVA_QUEUE", "jobs", 230).is_ok());
    }
}
