//! What every listener does when accepting fails: most accept errors (no file descriptors
//! left, no memory) persist for a while, so a loop that retries at once spins at 100% CPU and
//! writes a log line per try. [`Backoff`] sleeps, doubling up to a second, and logs once per
//! streak of failures. [`raise_fd_limit`] lifts the soft file-descriptor limit to the hard one
//! at start, so the limit is reached as late as the system allows.

use std::time::Duration;

use tracing::warn;

const FIRST: Duration = Duration::from_millis(5);
const LONGEST: Duration = Duration::from_secs(1);

/// The backoff of one accept loop.
#[derive(Debug, Default)]
pub struct Backoff {
    delay: Duration,
}

impl Backoff {
    /// After a failed accept on `listener`: logs the first failure of a streak, then waits.
    pub async fn failed(&mut self, listener: &str, error: &std::io::Error) {
        if self.delay.is_zero() {
            warn!(listener, %error, "accept failed; backing off until it succeeds again");
        }
        tokio::time::sleep(self.next()).await;
    }

    /// After a successful accept: the next failure starts a new streak.
    pub fn succeeded(&mut self) {
        self.delay = Duration::ZERO;
    }

    fn next(&mut self) -> Duration {
        self.delay = (self.delay * 2).clamp(FIRST, LONGEST);
        self.delay
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the limit now in force.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_to_a_second_and_starts_over_after_a_success() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..10).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.next(), FIRST);
    }

    #[test]
    fn the_fd_limit_is_raised_to_the_hard_limit() {
        let now = raise_fd_limit().expect("getrlimit");
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(limit.rlim_cur, limit.rlim_max);
        assert_eq!(now, limit.rlim_cur);
    }
}
