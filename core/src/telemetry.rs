//! Logging setup shared by the binaries.

use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "plain" => Ok(Self::Plain),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?}: use plain or json")),
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides `default_filter`. Lines are written in
/// batches (see [`Batched`]); keep the returned guard until the process ends, so that the last
/// lines are written.
#[must_use = "dropping the guard writes the last lines: hold it until main returns"]
pub fn init(format: LogFormat, default_filter: &str) -> LogGuard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let batched = Batched::start(Box::new(std::io::stderr()), BATCH_WINDOW);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(batched);
    let _ = match format {
        LogFormat::Plain => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A panic's message goes straight to stderr: the lines before it go first.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        batched.flush();
        previous(info);
    }));
    LogGuard(batched)
}

/// Writes what is left of the log when dropped.
pub struct LogGuard(&'static Batched);

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.0.flush();
    }
}

/// How long an info line may wait to be written with the ones after it.
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(50);
/// Past this many bytes waiting, the line that crossed it writes them all at once.
const BATCH_BYTES: usize = 32 * 1024;

/// Log lines to stderr in batches: a proxy writes an access line per request or connection,
/// and one `write` each was the largest part of logging's cost (a twentieth of a waypoint's CPU
/// at 1,000 requests/s). Lines wait at most [`BATCH_WINDOW`] or until [`BATCH_BYTES`] are
/// waiting; warnings and errors are written at once with everything before them. A thread
/// writes the batches; it sleeps while nothing waits.
pub struct Batched {
    waiting: std::sync::Mutex<Waiting>,
    /// Told when the first line of a batch arrives.
    first_line: std::sync::Condvar,
    window: std::time::Duration,
    /// No writing thread could be started: every line is written as it comes.
    unbatched: std::sync::atomic::AtomicBool,
}

struct Waiting {
    lines: Vec<u8>,
    sink: Box<dyn std::io::Write + Send>,
}

impl Batched {
    /// A batcher writing to `sink` at most `window` after a line arrives, with its writing
    /// thread. It lives as long as the process (`init` makes one).
    fn start(sink: Box<dyn std::io::Write + Send>, window: std::time::Duration) -> &'static Self {
        let batched: &'static Self = Box::leak(Box::new(Self {
            waiting: std::sync::Mutex::new(Waiting {
                lines: Vec::new(),
                sink,
            }),
            first_line: std::sync::Condvar::new(),
            window,
            unbatched: std::sync::atomic::AtomicBool::new(false),
        }));
        let spawned = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || batched.write_batches());
        if spawned.is_err() {
            batched
                .unbatched
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        batched
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_batches(&self) {
        loop {
            let mut waiting = self.lock();
            while waiting.lines.is_empty() {
                waiting = self
                    .first_line
                    .wait(waiting)
                    .unwrap_or_else(|e| e.into_inner());
            }
            drop(waiting);
            std::thread::sleep(self.window);
            self.flush();
        }
    }

    /// Writes every waiting line now.
    pub fn flush(&self) {
        let mut waiting = self.lock();
        let Waiting { lines, sink } = &mut *waiting;
        if !lines.is_empty() {
            // Written under the lock, so that batches keep their order.
            let _ = sink.write_all(lines);
            let _ = sink.flush();
            lines.clear();
            if lines.capacity() > 4 * BATCH_BYTES {
                lines.shrink_to(BATCH_BYTES);
            }
        }
    }

    fn append(&self, line: &[u8], urgent: bool) {
        let mut waiting = self.lock();
        let was_empty = waiting.lines.is_empty();
        waiting.lines.extend_from_slice(line);
        if urgent
            || waiting.lines.len() >= BATCH_BYTES
            || self.unbatched.load(std::sync::atomic::Ordering::Relaxed)
        {
            drop(waiting);
            self.flush();
        } else if was_empty {
            self.first_line.notify_one();
        }
    }
}

/// One event's line, handed to [`Batched`] when the formatter writes it.
pub struct BatchedLine {
    batched: &'static Batched,
    urgent: bool,
}

impl std::io::Write for BatchedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.batched.append(buf, self.urgent);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for &'static Batched {
    type Writer = BatchedLine;

    fn make_writer(&'a self) -> Self::Writer {
        BatchedLine {
            batched: self,
            urgent: true,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        BatchedLine {
            batched: self,
            urgent: *meta.level() <= tracing::Level::WARN,
        }
    }
}

/// `t` as an RFC 3339 UTC timestamp with milliseconds (`2026-11-26T21:17:33.123Z`), for access
/// log lines.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (proleptic Gregorian), in 400-year eras.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        (rest / 60) % 60,
        rest % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant, UNIX_EPOCH};

    use super::{BATCH_BYTES, Batched};

    /// A sink the test can read.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("sink").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("sink").clone()).expect("utf-8")
        }
    }

    /// Runs `f` with a plain-text subscriber writing through `batched`.
    fn logging(batched: &'static Batched, f: impl FnOnce()) {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(batched)
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
    }

    #[test]
    fn info_lines_wait_for_a_warning_which_writes_them_first_in_order() {
        let sink = Shared::default();
        // A window no test outlives: only a warning, the size bound or a flush writes.
        let batched = Batched::start(Box::new(sink.clone()), Duration::from_secs(3600));
        logging(batched, || {
            tracing::info!("one");
            tracing::info!("two");
        });
        assert_eq!(sink.text(), "", "info lines were written one by one");
        logging(batched, || tracing::warn!("careful"));
        assert_eq!(sink.text(), " INFO one\n INFO two\n WARN careful\n");
        // Past the size bound, the batch goes at once.
        let long = "x".repeat(BATCH_BYTES);
        logging(batched, || tracing::info!("{long}"));
        assert!(sink.text().ends_with("x\n"), "a full batch waited");
        logging(batched, || tracing::info!("last"));
        batched.flush();
        assert!(
            sink.text().ends_with("x\n INFO last\n"),
            "a flush writes what waits"
        );
    }

    #[test]
    fn an_info_line_is_written_by_the_thread_within_the_window() {
        let sink = Shared::default();
        let batched = Batched::start(Box::new(sink.clone()), Duration::from_millis(20));
        logging(batched, || tracing::info!("alone"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.text().is_empty() {
            assert!(Instant::now() < deadline, "the line was never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sink.text(), " INFO alone\n");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |secs: u64, ms: u64| {
            super::rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day in a century leap year), 2026-11-26 21:17:33.
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_795_727_853, 123), "2026-11-26T21:17:33.123Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
    }
}
