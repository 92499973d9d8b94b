//! A time window `[since, until)` for recover and replay.
use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

impl Window {
    /// `until` defaults to `now`; the window must not be empty.
    pub fn new(
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Self, String> {
        let until = until.unwrap_or(now);
        if since >= until {
            return Err(format!(
                "since: must be before until ({})",
                until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ));
        }
        Ok(Self { since, until })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_defaults_to_now_and_the_window_is_never_empty() {
        let now = Utc::now();
        let hour = chrono::Duration::hours(1);
        assert_eq!(Window::new(now - hour, None, now).unwrap().until, now);
        assert!(Window::new(now, None, now).is_err());
        assert!(Window::new(now, Some(now - hour), now).is_err());
        assert!(Window::new(now - hour, Some(now + hour), now).is_ok());
    }
}
