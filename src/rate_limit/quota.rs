//! Quotas: how many requests per how long, and which of the two meanings applies.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Default cap on the state kept per key for a [`Quota::window`]: windows of up to this many
/// requests are exact; larger ones are tracked in this many time buckets (see
/// [`Quota::max_slots`]).
pub const DEFAULT_WINDOW_SLOTS: u32 = 1024;

/// Largest accepted count (requests per window, or GCRA burst).
pub const MAX_COUNT: u64 = 1_000_000_000;

/// Longest accepted window: 366 days.
pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 3600);

/// Shortest accepted window: one millisecond.
pub const MIN_WINDOW: Duration = Duration::from_millis(1);

/// Every time and product handled by the limiter stays below this, so the Redis script (Lua
/// numbers are doubles, exact up to 2^53) computes exactly what Rust computes.
const MAX_SPAN_MICROS: u64 = 1 << 48;

/// How many requests a key may make, and over how long.
///
/// A quota has one of two meanings, each one pure integer function of (state, now, quota,
/// cost) shared by every backend:
///
/// * **window** ([`Quota::window`], and every quota string such as `"10/minute"`): at most
///   `limit` requests admitted in *any* rolling window of length `window`. A client that used
///   its 10 at 0 s is refused until 60 s after its first admitted request, whatever its pace.
///   The state per key is the list of recent admission times, at most
///   `min(limit, max_slots)` entries.
/// * **GCRA** ([`Quota::rate`]): a smooth rate of `limit` per `window` (one request every
///   `window / limit`) with an explicit burst ([`Quota::burst`], default 1). O(1) state: one
///   timestamp per key.
///
/// Quotas are validated when the layer is built ([`Quota::validate`]).
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::rate_limit::Quota;
///
/// let per_ip: Quota = "10/minute".parse().unwrap();
/// assert_eq!(per_ip, Quota::window(10, Duration::from_secs(60)));
/// assert_eq!(per_ip.to_string(), "10 per 1 minute");
///
/// let smooth = Quota::rate(10, Duration::from_secs(60)).burst(5);
/// assert_eq!(smooth.burst_size(), 5);
/// assert_eq!(smooth.emission_interval(), Duration::from_secs(6));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    pub(crate) kind: Kind,
    pub(crate) limit: u64,
    pub(crate) window_us: u64,
    /// GCRA: the burst. Window: the slot cap.
    pub(crate) extra: u64,
    /// Derived from the above (kept to spare a division per decision): GCRA, the emission
    /// interval; window, the granularity.
    pub(crate) step_us: u64,
}

/// Which of the two meanings a [`Quota`] has.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::rate_limit::{Meaning, Quota};
///
/// assert_eq!(Quota::parse("10/minute").unwrap().meaning(), Meaning::Window);
/// assert_eq!(Quota::rate(10, Duration::from_secs(60)).burst(5).meaning(), Meaning::Gcra);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Meaning {
    /// At most `limit` admitted in any rolling window (an exact sliding log).
    Window,
    /// Generic cell rate algorithm: a smooth rate with an explicit burst.
    Gcra,
}

pub(crate) type Kind = Meaning;

fn duration_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Quota {
    /// At most `limit` requests admitted in any rolling `window` (the meaning of quota strings).
    pub fn window(limit: u32, window: Duration) -> Self {
        Self::raw(
            Meaning::Window,
            u64::from(limit),
            duration_micros(window),
            u64::from(DEFAULT_WINDOW_SLOTS),
        )
    }

    /// A quota from its raw numbers, with the derived step computed.
    pub(crate) fn raw(kind: Meaning, limit: u64, window_us: u64, extra: u64) -> Self {
        let mut q = Self {
            kind,
            limit,
            window_us,
            extra,
            step_us: 1,
        };
        q.step_us = match kind {
            Meaning::Gcra => q.compute_interval(),
            Meaning::Window => q.compute_granularity(),
        };
        q
    }

    /// Shorthand for `Quota::window(limit, 1 second)`.
    pub fn per_second(limit: u32) -> Self {
        Self::window(limit, Duration::from_secs(1))
    }

    /// Shorthand for `Quota::window(limit, 1 minute)`.
    pub fn per_minute(limit: u32) -> Self {
        Self::window(limit, Duration::from_secs(60))
    }

    /// Shorthand for `Quota::window(limit, 1 hour)`.
    pub fn per_hour(limit: u32) -> Self {
        Self::window(limit, Duration::from_secs(3600))
    }

    /// A smooth rate (GCRA): one request every `window / limit` on average, with a burst of 1
    /// unless [`Quota::burst`] says otherwise.
    ///
    /// The emission interval is `window / limit` rounded **up** to a whole microsecond, so the
    /// long-run rate never exceeds `limit` per `window`.
    pub fn rate(limit: u32, window: Duration) -> Self {
        Self::raw(Meaning::Gcra, u64::from(limit), duration_micros(window), 1)
    }

    /// Sets the burst of a GCRA quota: how many requests may arrive at once after a quiet
    /// period. On a window quota this has no effect (the window's limit is its burst).
    #[must_use]
    pub fn burst(mut self, burst: u32) -> Self {
        if self.kind == Meaning::Gcra {
            self = Self::raw(self.kind, self.limit, self.window_us, u64::from(burst));
        }
        self
    }

    /// Caps the state kept per key of a window quota at `slots` entries (default
    /// [`DEFAULT_WINDOW_SLOTS`]). Ignored for GCRA quotas.
    ///
    /// A window whose limit is at most `slots` is **exact**: one entry per distinct admission
    /// time, at most `limit` entries. A larger window records admission times rounded *up* to a
    /// granularity of `ceil(window / slots)`, so it keeps at most `slots + 1` entries. The
    /// approximation only errs on the strict side: it never admits more than `limit` in any
    /// rolling window, and a unit comes back at most one granularity (`window / slots`) later
    /// than with the exact log.
    #[must_use]
    pub fn max_slots(mut self, slots: u32) -> Self {
        if self.kind == Meaning::Window {
            self = Self::raw(self.kind, self.limit, self.window_us, u64::from(slots));
        }
        self
    }

    /// Parses a quota string: `"10/minute"`, `"10 per minute"`, `"100/hour"`, `"5/second"`,
    /// `"10 per 2 minutes"`, `"20/30s"`. Units: `us`/`usec`/`microsecond`,
    /// `ms`/`msec`/`millisecond`, `s`/`sec`/`second`, `m`/`min`/`minute`, `h`/`hr`/`hour`,
    /// `d`/`day` (plurals and any case accepted). The result has the **window** meaning, and is
    /// validated. What [`Display`](fmt::Display) writes for a window quota parses back to it.
    ///
    /// ```
    /// use tower_rampart::rate_limit::Quota;
    /// assert_eq!(Quota::parse("10 per minute").unwrap(), Quota::per_minute(10));
    /// assert!(Quota::parse("0/minute").is_err());
    /// assert!(Quota::parse("ten a minute").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Self, QuotaError> {
        let q = parse_quota(s)?;
        q.validate()?;
        Ok(q)
    }

    /// Which meaning this quota has.
    pub fn meaning(&self) -> Meaning {
        self.kind
    }

    /// Requests per window.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The window length.
    pub fn window_length(&self) -> Duration {
        Duration::from_micros(self.window_us)
    }

    /// The most requests admitted at once: the limit of a window quota, the burst of a GCRA
    /// quota. A request whose cost exceeds this can never be admitted.
    pub fn burst_size(&self) -> u64 {
        match self.kind {
            Meaning::Window => self.limit,
            Meaning::Gcra => self.extra,
        }
    }

    /// GCRA: the time between two requests at the steady rate (`window / limit`, rounded up to a
    /// microsecond). For a window quota, the same figure, for information.
    pub fn emission_interval(&self) -> Duration {
        Duration::from_micros(self.emission_interval_us())
    }

    pub(crate) fn emission_interval_us(&self) -> u64 {
        match self.kind {
            Meaning::Gcra => self.step_us,
            Meaning::Window => self.compute_interval(),
        }
    }

    fn compute_interval(&self) -> u64 {
        if self.limit == 0 {
            return self.window_us;
        }
        self.window_us.div_ceil(self.limit)
    }

    /// Window quotas: the granularity, in microseconds, admission times are rounded up to
    /// (1 = exact).
    pub(crate) fn granularity_us(&self) -> u64 {
        match self.kind {
            Meaning::Window => self.step_us,
            Meaning::Gcra => 1,
        }
    }

    fn compute_granularity(&self) -> u64 {
        if self.limit <= self.extra || self.extra == 0 {
            1
        } else {
            self.window_us.div_ceil(self.extra).max(1)
        }
    }

    /// Checks the numbers: counts of at least 1, a window between 1 ms and 366 days, a burst
    /// whose span (`burst × interval`) stays below about 8.9 years.
    pub fn validate(&self) -> Result<(), QuotaError> {
        let err = |msg: String| Err(QuotaError { msg });
        if self.limit == 0 {
            return err(format!("quota {self}: the count must be at least 1"));
        }
        if self.limit > MAX_COUNT {
            return err(format!(
                "quota {self}: the count must be at most {MAX_COUNT}"
            ));
        }
        if self.window_us < duration_micros(MIN_WINDOW) {
            return err(format!("quota {self}: the window must be at least 1 ms"));
        }
        if self.window_us > duration_micros(MAX_WINDOW) {
            return err(format!("quota {self}: the window must be at most 366 days"));
        }
        match self.kind {
            Meaning::Gcra => {
                if self.extra == 0 {
                    return err(format!("quota {self}: the burst must be at least 1"));
                }
                if self.extra > MAX_COUNT
                    || self.extra.saturating_mul(self.emission_interval_us()) > MAX_SPAN_MICROS
                {
                    return err(format!(
                        "quota {self}: burst {} × interval {:?} is too long",
                        self.extra,
                        self.emission_interval()
                    ));
                }
            }
            Meaning::Window => {
                if self.extra == 0 {
                    return err(format!("quota {self}: max_slots must be at least 1"));
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Quota {
    /// `"10 per 1 minute"`, `"5 per 30 seconds"` (the burst of a GCRA quota is not shown).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 6] = [
            (86_400_000_000, "day"),
            (3_600_000_000, "hour"),
            (60_000_000, "minute"),
            (1_000_000, "second"),
            (1_000, "millisecond"),
            (1, "microsecond"),
        ];
        let w = self.window_us;
        let (n, unit) = UNITS
            .iter()
            .find(|(u, _)| w >= *u && w.is_multiple_of(*u))
            .map(|(u, name)| (w / u, *name))
            .unwrap_or((w, "microsecond"));
        let plural = if n == 1 { "" } else { "s" };
        write!(f, "{} per {n} {unit}{plural}", self.limit)
    }
}

impl fmt::Debug for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Quota");
        d.field("meaning", &self.kind)
            .field("limit", &self.limit)
            .field("window", &self.window_length());
        match self.kind {
            Meaning::Gcra => d.field("burst", &self.extra),
            Meaning::Window => d.field("max_slots", &self.extra),
        };
        d.finish()
    }
}

impl FromStr for Quota {
    type Err = QuotaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quota::parse(s)
    }
}

/// A quota string that does not parse, or numbers that make no sense.
///
/// ```
/// use tower_rampart::rate_limit::Quota;
///
/// let err = Quota::parse("0/minute").unwrap_err();
/// println!("RATE_LIMIT_QUERY_IP: {err}");
/// assert!(Quota::parse("ten per minute").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaError {
    msg: String,
}

impl fmt::Display for QuotaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for QuotaError {}

fn parse_quota(input: &str) -> Result<Quota, QuotaError> {
    let bad = || QuotaError {
        msg: format!(
            "invalid quota {input:?}: expected \"<count>/<unit>\" or \"<count> per [<n>] <unit>\", \
             e.g. \"10/minute\" or \"100 per hour\""
        ),
    };
    let s = input.trim();
    let (count, rest) = if let Some((c, r)) = s.split_once('/') {
        (c.trim(), r.trim())
    } else {
        let lower = s.to_ascii_lowercase();
        let idx = lower.find(" per ").ok_or_else(bad)?;
        (s[..idx].trim(), s[idx + 5..].trim())
    };
    if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let count: u64 = count.parse().map_err(|_| QuotaError {
        msg: format!("invalid quota {input:?}: the count is too large"),
    })?;
    let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
    let multiple: u64 = if digits == 0 {
        1
    } else {
        rest[..digits].parse().map_err(|_| bad())?
    };
    let unit = rest[digits..].trim().to_ascii_lowercase();
    let unit_us: u64 = match unit.as_str() {
        // What `Display` writes for a window that is not a whole number of milliseconds.
        "us" | "usec" | "usecs" | "microsecond" | "microseconds" => 1,
        "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => 1_000,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000_000,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000_000,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000_000,
        "d" | "day" | "days" => 86_400_000_000,
        _ => return Err(bad()),
    };
    let window_us = multiple.checked_mul(unit_us).ok_or_else(|| QuotaError {
        msg: format!("invalid quota {input:?}: the window is too long"),
    })?;
    Ok(Quota::raw(
        Meaning::Window,
        count,
        window_us,
        u64::from(DEFAULT_WINDOW_SLOTS),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_configuration_forms() {
        let minute = Quota::per_minute(10);
        for s in [
            "10/minute",
            "10 per minute",
            "10 PER Minute",
            " 10 / min ",
            "10/m",
            "10 per 1 minute",
            "10/60s",
            "10/60 seconds",
        ] {
            assert_eq!(Quota::parse(s).unwrap(), minute, "{s}");
        }
        assert_eq!(Quota::parse("100/hour").unwrap(), Quota::per_hour(100));
        assert_eq!(Quota::parse("5/second").unwrap(), Quota::per_second(5));
        assert_eq!(
            Quota::parse("3 per 2 days").unwrap(),
            Quota::window(3, Duration::from_secs(2 * 86_400))
        );
        assert_eq!(
            Quota::parse("7/250ms").unwrap(),
            Quota::window(7, Duration::from_millis(250))
        );
    }

    #[test]
    fn rejects_nonsense_with_a_clear_message() {
        for s in [
            "",
            "10",
            "/minute",
            "ten/minute",
            "10/fortnight",
            "10 a minute",
            "-1/minute",
            "10/",
            "1.5/second",
        ] {
            let e = Quota::parse(s).unwrap_err().to_string();
            assert!(e.contains("invalid quota"), "{s}: {e}");
        }
        let e = Quota::parse("0/minute").unwrap_err().to_string();
        assert!(e.contains("at least 1"), "{e}");
        let e = Quota::parse("10/0s").unwrap_err().to_string();
        assert!(e.contains("at least 1 ms"), "{e}");
        let e = Quota::parse("10/400 days").unwrap_err().to_string();
        assert!(e.contains("366 days"), "{e}");
        assert!(Quota::parse("99999999999999999999999/minute").is_err());
        assert!(Quota::parse("10/99999999999999999 days").is_err());
    }

    #[test]
    fn displays_like_the_reference_server() {
        assert_eq!(Quota::per_minute(10).to_string(), "10 per 1 minute");
        assert_eq!(Quota::per_hour(100).to_string(), "100 per 1 hour");
        assert_eq!(
            Quota::window(5, Duration::from_secs(30)).to_string(),
            "5 per 30 seconds"
        );
        assert_eq!(
            Quota::window(5, Duration::from_millis(1500)).to_string(),
            "5 per 1500 milliseconds"
        );
        assert_eq!(
            Quota::rate(2, Duration::from_secs(86_400)).to_string(),
            "2 per 1 day"
        );
        // Display round-trips through parse.
        let q = Quota::window(5, Duration::from_secs(30));
        assert_eq!(Quota::parse(&q.to_string()).unwrap(), q);
        // Also for a window that is not a whole number of milliseconds (found by
        // tests/properties.rs: "1 per 1001 microseconds" did not parse).
        let q = Quota::window(1, Duration::from_micros(1001));
        assert_eq!(q.to_string(), "1 per 1001 microseconds");
        assert_eq!(Quota::parse(&q.to_string()).unwrap(), q);
        assert_eq!(
            Quota::parse("3/1500us").unwrap(),
            Quota::window(3, Duration::from_micros(1500))
        );
        // Still at least 1 ms.
        assert!(Quota::parse("1/999 microseconds").is_err());
    }

    #[test]
    fn gcra_interval_rounds_up_and_burst_is_validated() {
        let q = Quota::rate(3, Duration::from_secs(1));
        assert_eq!(q.emission_interval_us(), 333_334);
        assert_eq!(q.burst_size(), 1);
        assert!(q.validate().is_ok());
        assert!(q.burst(0).validate().is_err());
        let long = Quota::rate(1, MAX_WINDOW).burst(1_000);
        assert!(
            long.validate()
                .unwrap_err()
                .to_string()
                .contains("too long")
        );
        // burst() and max_slots() only apply to their own meaning.
        assert_eq!(Quota::per_minute(10).burst(3).burst_size(), 10);
        assert_eq!(q.max_slots(7), q);
    }

    #[test]
    fn window_granularity_is_exact_up_to_the_slot_cap() {
        assert_eq!(Quota::per_minute(10).granularity_us(), 1);
        assert_eq!(Quota::per_minute(1024).granularity_us(), 1);
        let big = Quota::per_minute(100_000);
        assert_eq!(big.granularity_us(), 60_000_000u64.div_ceil(1024));
        assert_eq!(
            Quota::per_minute(100).max_slots(10).granularity_us(),
            6_000_000
        );
        assert!(Quota::per_minute(100).max_slots(0).validate().is_err());
    }
}
