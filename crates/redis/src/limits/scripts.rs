//! The Lua scripts of the rate-limit store. Every script reads the time from Redis `TIME`
//! (microseconds), so replicas with skewed clocks agree. A bucket is its theoretical arrival
//! time (TAT, µs) in a string key that expires when the bucket would be full again.

use redis::Script;

/// GCRA, taking between `least` and `want` units (redis_rate's `allowN` / `AllowAtMost`,
/// cost = units). KEYS: bucket, hold. ARGV: interval µs, tolerance µs (burst × interval),
/// want, least. Returns `{granted, 0}` or `{0, wait µs}` (a hold: its remaining time).
const TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local held = redis.call('PTTL', KEYS[2])
if held > 0 then return {0, held * 1000} end
local interval = tonumber(ARGV[1])
local tol = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local least = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local room = math.floor((now + tol - tat) / interval + 1e-9)
local n = math.min(want, room)
if n < least then
  return {0, math.max(1, math.ceil(tat + least * interval - tol - now))}
end
tat = tat + n * interval
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
return {n, 0}
";

/// Gives back `units` (a reservation larger than the usage, an unspent lease), never past a
/// full bucket, or with negative `units` takes more (usage above the reservation; may push
/// the bucket into debt). KEYS: bucket. ARGV: interval µs, units.
const SETTLE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local units = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if units >= 0 then
  tat = math.max(tat - units * interval, math.min(now, tat))
else
  tat = math.max(tat, now) - units * interval
end
if tat <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
end
return 1
";

/// Holds a key (an upstream 429 on it) until now + ARGV[1] ms: a longer hold extends the
/// one in place, a shorter one never shortens it. The value is the absolute deadline (ms of
/// Redis time), for whoever reads it. KEYS: hold.
const HOLD: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then
  redis.call('SET', KEYS[1], now + ms, 'PX', ms)
end
return 1
";

pub(super) struct Scripts {
    pub(super) take: Script,
    pub(super) settle: Script,
    pub(super) hold: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            take: Script::new(TAKE),
            settle: Script::new(SETTLE),
            hold: Script::new(HOLD),
        }
    }
}
