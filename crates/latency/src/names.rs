//! Metric names (OTel GenAI client metrics, in Prometheus form) and their buckets.

use metrics::{Unit, describe_counter, describe_histogram};

/// `gen_ai.client.operation.duration`: from the call to the end of the stream, seconds.
pub const OPERATION_DURATION: &str = "gen_ai_client_operation_duration_seconds";
/// `gen_ai.client.operation.time_to_first_chunk`: to the first content token, seconds.
pub const TIME_TO_FIRST_CHUNK: &str = "gen_ai_client_operation_time_to_first_chunk_seconds";
/// `gen_ai.client.operation.time_per_output_chunk`: between chunks after the first, seconds.
pub const TIME_PER_OUTPUT_CHUNK: &str = "gen_ai_client_operation_time_per_output_chunk_seconds";
/// `gen_ai.client.token.usage`: input and output tokens (label `gen_ai.token.type`).
pub const TOKEN_USAGE: &str = "gen_ai_client_token_usage";
/// Output tokens per second after the first token (not in the semantic conventions).
pub const OUTPUT_TOKENS_PER_SECOND: &str = "llm_client_output_tokens_per_second";
/// Calls by outcome (not in the semantic conventions).
pub const CALLS: &str = "llm_client_calls_total";
/// Attempts given up before their first token (a hedge lost, a timeout above, the caller
/// left), recorded in the store as censored samples.
pub const ABANDONED: &str = "llm_client_abandoned_total";

/// Buckets of the duration metrics: the explicit bucket advice of the OpenTelemetry GenAI
/// semantic conventions for `gen_ai.client.operation.duration` (seconds, doubling from
/// 10 ms).
pub const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// Buckets of `gen_ai.client.token.usage` (§3.1).
pub const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
/// Buckets of output tokens per second.
pub const TPS_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1280.0,
];

/// Every histogram with its buckets, for an exporter:
/// `PrometheusBuilder::set_buckets_for_metric(Matcher::Full(name.into()), buckets)`.
pub const HISTOGRAM_BUCKETS: &[(&str, &[f64])] = &[
    (OPERATION_DURATION, DURATION_BUCKETS),
    (TIME_TO_FIRST_CHUNK, DURATION_BUCKETS),
    (TIME_PER_OUTPUT_CHUNK, DURATION_BUCKETS),
    (TOKEN_USAGE, TOKEN_BUCKETS),
    (OUTPUT_TOKENS_PER_SECOND, TPS_BUCKETS),
];

/// Describes every metric to the installed recorder (names, units, help).
pub fn describe() {
    describe_histogram!(
        OPERATION_DURATION,
        Unit::Seconds,
        "GenAI operation duration, to the end of the stream"
    );
    describe_histogram!(
        TIME_TO_FIRST_CHUNK,
        Unit::Seconds,
        "Time to the first content token"
    );
    describe_histogram!(
        TIME_PER_OUTPUT_CHUNK,
        Unit::Seconds,
        "Time between output chunks after the first"
    );
    describe_histogram!(TOKEN_USAGE, Unit::Count, "Input and output tokens per call");
    describe_histogram!(
        OUTPUT_TOKENS_PER_SECOND,
        Unit::Count,
        "Output tokens per second after the first token"
    );
    describe_counter!(CALLS, Unit::Count, "Calls by outcome");
}
