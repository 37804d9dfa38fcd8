//! The access log (`--log-format json`): one JSON line per call, written off the call's path,
//! and the timing headers every answer carries (`server-timing`, `x-llm-provider`,
//! `x-llm-attempts`).
//!
//! A line holds bounded values only — when, tenant, model asked for, provider, status, how it
//! ended, time to first token, duration, attempts, tokens — never a prompt, an answer or a key.
//! Lines go through a bounded queue to a thread of their own, so a slow disk or a full pipe
//! never holds a call: past 8,192 waiting lines, new ones are dropped and counted
//! (`llm_gateway_access_log_dropped_total`).

use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};
use llm_layers_core::{ResponseMeta, Usage};
use tokio::time::Instant;

use crate::names;

/// Lines waiting for the writer at most.
const QUEUE: usize = 8192;

/// Where the access log goes, and how.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogFormat {
    /// No access log (the default).
    #[default]
    Off,
    /// One JSON object per line.
    Json,
}

/// The writer of access-log lines: a bounded queue to a thread that writes them.
#[derive(Debug)]
pub(crate) struct AccessLog {
    tx: SyncSender<Vec<u8>>,
}

impl AccessLog {
    /// A log written to `path` (appended) or, without one, to standard output.
    pub(crate) fn open(path: Option<&std::path::Path>) -> std::io::Result<Arc<AccessLog>> {
        let out: Box<dyn Write + Send> = match path {
            Some(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            None => Box::new(std::io::stdout()),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, out))?;
        Ok(Arc::new(AccessLog { tx }))
    }

    fn send(&self, line: Vec<u8>) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(line) {
            metrics::counter!("llm_gateway_access_log_dropped_total").increment(1);
        }
    }
}

/// Writes lines as they come, flushing whenever none is waiting; ends with the last sender.
fn write_lines(rx: Receiver<Vec<u8>>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::new(out);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(&line);
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(&line);
        }
        let _ = out.flush();
    }
}

/// One call as the access log and the timing headers see it. Written when dropped: a stream
/// the caller left is logged as `client_closed`.
pub(crate) struct CallRecord {
    log: Option<Arc<AccessLog>>,
    wall: SystemTime,
    /// When the handler began (the body already read).
    start: Instant,
    /// When the call was handed to the stack, once it was.
    sent: Option<Instant>,
    /// When the stack answered (its first token, or its error).
    answered: Option<Instant>,
    /// When a whole answer had been read to its end.
    collected: Option<Instant>,
    tenant: Option<Arc<str>>,
    model: String,
    stream: bool,
    status: u16,
    outcome: Option<String>,
    provider: Option<String>,
    ttft: Option<Duration>,
    attempts: u32,
    /// Prompt and completion tokens, from the answer's usage.
    usage: Option<(u64, u64)>,
    /// What the call cost.
    cost: Option<llm_layers_core::price::Cost>,
}

impl CallRecord {
    pub(crate) fn start(log: Option<Arc<AccessLog>>) -> CallRecord {
        CallRecord {
            log,
            wall: SystemTime::now(),
            start: Instant::now(),
            sent: None,
            answered: None,
            collected: None,
            tenant: None,
            model: String::new(),
            stream: false,
            status: 0,
            outcome: None,
            provider: None,
            ttft: None,
            attempts: 0,
            usage: None,
            cost: None,
        }
    }

    /// The request as parsed (bounded: the model id passed the gateway's bounds).
    pub(crate) fn request(&mut self, model: &str, stream: bool, tenant: Option<Arc<str>>) {
        self.stream = stream;
        if self.log.is_some() {
            model.clone_into(&mut self.model);
            self.tenant = tenant;
        }
    }

    /// The call goes to the stack now.
    pub(crate) fn sent(&mut self) {
        self.sent = Some(Instant::now());
    }

    /// The stack answered with a stream: who served it and when its first token came.
    pub(crate) fn answered(&mut self, meta: &ResponseMeta) {
        self.answered = Some(Instant::now());
        self.status = 200;
        self.provider.clone_from(&meta.provider);
        self.ttft = meta.timings.ttft();
        self.attempts = meta.attempts.max(1);
    }

    /// The call failed with `status` and the error's `code`.
    pub(crate) fn failed(&mut self, status: u16, code: &str) {
        if self.answered.is_none() {
            self.answered = Some(Instant::now());
        }
        self.status = status;
        self.outcome = Some(code.to_owned());
    }

    /// A stream whose head was sent (`200`) ended with the error `code`.
    pub(crate) fn broke(&mut self, code: &str) {
        self.outcome = Some(code.to_owned());
    }

    /// A whole answer was read to its end (the upstream's time, not the gateway's).
    pub(crate) fn collected(&mut self) {
        self.collected = Some(Instant::now());
    }

    /// The answer ended cleanly.
    pub(crate) fn done(&mut self) {
        self.outcome.get_or_insert_with(|| "ok".to_owned());
    }

    /// A usage chunk of the answer (the last one wins: it is the summed one).
    pub(crate) fn usage(&mut self, u: &Usage) {
        self.usage = Some((u.prompt_tokens, u.completion_tokens));
    }

    /// What the call cost, when known.
    pub(crate) fn cost(&mut self, c: Option<llm_layers_core::price::Cost>) {
        self.cost = c;
    }

    /// `server-timing` (the gateway's own time; the wait before the serving attempt was
    /// sent — retries, holds, hedges that lost, queues; and the serving attempt's time to
    /// its first token, to its end for a whole answer), `x-llm-provider` and
    /// `x-llm-attempts`, on `headers`.
    pub(crate) fn write_headers(&self, headers: &mut HeaderMap) {
        let now = Instant::now();
        let sent = self.sent.unwrap_or(now);
        let answered = self.answered.unwrap_or(now).max(sent);
        let end = self.collected.unwrap_or(answered).max(answered);
        let since = |later: Instant, earlier: Instant| later.saturating_duration_since(earlier);
        let stack = since(answered, sent);
        let first = self.ttft.unwrap_or_default().min(stack);
        // A whole answer: the rest of its generation is the upstream's time too.
        let upstream = first + since(end, answered);
        let gateway = since(sent, self.start) + since(now, end);
        let mut value = String::with_capacity(64);
        for (name, d) in [
            ("gateway;dur=", gateway),
            (", wait;dur=", stack - first),
            (", upstream;dur=", upstream),
        ] {
            value.push_str(name);
            push_ms(&mut value, d);
        }
        // Its bytes taken as they are (`from_str` would copy them).
        if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
            headers.insert(names::SERVER_TIMING, v);
        }
        if let Some(p) = self.provider.as_deref().filter(|p| header_safe(p)) {
            if let Ok(v) = HeaderValue::from_str(p) {
                headers.insert(names::PROVIDER, v);
            }
        }
        if self.attempts > 0 {
            headers.insert(names::ATTEMPTS, count_value(self.attempts));
        }
    }

    fn line(&self) -> Vec<u8> {
        let ms = |d: Duration| (d.as_secs_f64() * 1_000_000.0).round() / 1000.0;
        let mut v = serde_json::json!({
            "time": rfc3339(self.wall),
            "tenant": self.tenant.as_deref(),
            "model": self.model,
            "stream": self.stream,
            "status": self.status,
            "outcome": self.outcome.as_deref().unwrap_or("client_closed"),
            "provider": self.provider.as_deref().filter(|p| header_safe(p)),
            "ttft_ms": self.ttft.map(ms),
            "duration_ms": ms(Instant::now().saturating_duration_since(self.start)),
            "attempts": self.attempts,
        });
        if let Some((prompt, completion)) = self.usage {
            v["prompt_tokens"] = prompt.into();
            v["completion_tokens"] = completion.into();
        }
        if let Some(c) = self.cost {
            v["cost_usd"] = c.usd().into();
            v["cost_source"] = c.source().into();
        }
        let mut out = serde_json::to_vec(&v).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        if let Some(log) = &self.log {
            log.send(self.line());
        }
    }
}

/// `d` in milliseconds with three decimals (`12.345`), by integers: formatting an `f64` to a
/// precision costs a thousand instructions a number.
/// `n` as a header value: a static one for a single digit (the usual count of attempts),
/// where `HeaderValue::from(u32)` allocates.
fn count_value(n: u32) -> HeaderValue {
    const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match DIGITS.get(n as usize) {
        Some(d) => HeaderValue::from_static(d),
        None => HeaderValue::from(n),
    }
}

fn push_ms(out: &mut String, d: Duration) {
    let us = d.as_micros();
    out.push_str(itoa::Buffer::new().format(us / 1000));
    out.push('.');
    let frac = (us % 1000) as u16;
    for digit in [frac / 100, frac / 10 % 10, frac % 10] {
        out.push(char::from(b'0' + digit as u8));
    }
}

/// A provider name fit for a header and a log line: short, visible ASCII (it comes from the
/// upstream's stream, which we do not control).
fn header_safe(p: &str) -> bool {
    !p.is_empty() && p.len() <= 64 && p.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}

/// `t` as RFC 3339 in UTC with milliseconds (`2026-12-06T10:30:00.123Z`).
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339_in_utc() {
        let at = |s: u64, ms: u64| {
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(s * 1000 + ms))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_796_553_045, 123), "2026-12-06T10:30:45.123Z");
        assert_eq!(at(4_107_542_399, 999), "2100-02-28T23:59:59.999Z");
    }

    #[test]
    fn milliseconds_have_three_decimals() {
        let ms = |d: Duration| {
            let mut s = String::new();
            push_ms(&mut s, d);
            s
        };
        assert_eq!(ms(Duration::ZERO), "0.000");
        assert_eq!(ms(Duration::from_micros(7)), "0.007");
        assert_eq!(ms(Duration::from_micros(12_345)), "12.345");
        assert_eq!(ms(Duration::from_nanos(1_999_999)), "1.999");
        assert_eq!(ms(Duration::from_secs(90)), "90000.000");
        assert_eq!(ms(Duration::from_micros(1_070)), "1.070");
        assert_eq!(ms(Duration::from_micros(100)), "0.100");
    }

    #[test]
    fn counts_are_written_as_integers() {
        for n in [1, 9, 10, 12, 4_000_000_000] {
            assert_eq!(count_value(n), n.to_string().as_str());
        }
    }

    #[test]
    fn a_provider_name_we_cannot_trust_stays_out_of_headers() {
        assert!(header_safe("Together"));
        assert!(header_safe("Google AI Studio"));
        assert!(!header_safe(""));
        assert!(!header_safe("a\r\nset-cookie: x"));
        assert!(!header_safe(&"x".repeat(65)));
    }
}
