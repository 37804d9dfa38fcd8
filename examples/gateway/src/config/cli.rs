//! The command line, the config file and how their values are read.

use std::time::Duration;

/// Every flag that takes a value, with what its value is.
pub(super) const FLAGS: &[(&str, &str)] = &[
    ("listen", "ADDR"),
    ("mock-preset", "NAME"),
    ("mock-time-scale", "X"),
    ("max-body-bytes", "N"),
    ("body-read-timeout-ms", "MS"),
    ("header-read-timeout-ms", "MS"),
    ("shutdown-grace-ms", "MS"),
    ("default-max-tokens", "N"),
    ("first-token-timeout-ms", "MS"),
    ("idle-timeout-ms", "MS"),
    ("total-timeout-ms", "MS"),
    ("max-retries", "N"),
    ("connect-timeout-ms", "MS"),
    ("hedge-quantile", "Q"),
    ("hedge-budget", "SHARE"),
    ("slow-call-factor", "X"),
    ("worker-threads", "N"),
    ("max-concurrency", "N"),
    ("requests-per-minute", "N"),
    ("tenant-requests-per-minute", "N"),
    ("tokens-per-minute", "N"),
    ("tiers", "FILE.json"),
    ("learned-order", "on|off"),
    ("upstream-h2c", "on|off"),
    ("adaptive-idle", "on|off"),
    ("resume", "on|off"),
    ("priors", "on|off"),
    ("coalesce", "on|off"),
    ("redis-url", "URL"),
    ("replicas", "N"),
    ("redis-limits", "exact|lease"),
    ("stack", "full|leaf"),
    ("keys", "FILE.json"),
];

/// The command line: every flag of [`FLAGS`] and `--config`, each taking one value.
pub(super) fn command() -> clap::Command {
    let mut cmd = clap::Command::new("gateway")
        .args_override_self(true)
        .disable_help_flag(true)
        .arg(
            clap::Arg::new("help")
                .short('h')
                .long("help")
                .action(clap::ArgAction::Help),
        )
        .arg(
            clap::Arg::new("config")
                .long("config")
                .value_name("FILE.toml"),
        );
    for (name, value) in FLAGS {
        cmd = cmd.arg(clap::Arg::new(*name).long(*name).value_name(*value));
    }
    cmd
}

/// The config file: `[settings]` (any flag, by its name without `--`) and `[[upstreams]]`.
///
/// ```toml
/// [settings]
/// first-token-timeout-ms = 20000
/// resume = true
///
/// [[upstreams]]
/// name = "openrouter"
/// base_url = "https://openrouter.ai/api/v1"
/// keys = [{ name = "main", env = "OPENROUTER_API_KEY" }, { name = "backup", env = "OPENROUTER_API_KEY_2" }]
///
/// [[upstreams]]
/// name = "direct"
/// dialect = "openai-compatible"
/// base_url = "https://api.openai.com/v1"
/// keys = [{ name = "openai", env = "OPENAI_API_KEY" }]
/// model_map = { "openai/gpt-4o-mini" = "gpt-4o-mini" }
/// race = ["openai/gpt-4o-mini"]
/// ```
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfigFile {
    #[serde(default)]
    pub(super) settings: std::collections::BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub(super) upstreams: Vec<crate::upstreams::UpstreamConfig>,
}

/// The usage text.
pub const USAGE: &str = "\
usage: gateway [--listen ADDR] [--mock-preset NAME] [--mock-time-scale X]
               [--max-body-bytes N] [--body-read-timeout-ms MS] [--header-read-timeout-ms MS]
               [--shutdown-grace-ms MS]
               [--default-max-tokens N] [--first-token-timeout-ms MS] [--idle-timeout-ms MS]
               [--total-timeout-ms MS] [--max-retries N] [--connect-timeout-ms MS]
               [--hedge-quantile Q] [--hedge-budget SHARE] [--slow-call-factor X]
               [--max-concurrency N] [--requests-per-minute N] [--tokens-per-minute N]
               [--tenant-requests-per-minute N]
               [--tiers FILE.json] [--learned-order on|off] [--upstream-h2c on|off]
               [--adaptive-idle on|off] [--resume on|off] [--priors on|off] [--coalesce on|off]
               [--redis-url URL] [--replicas N] [--redis-limits exact|lease]
               [--stack full|leaf] [--worker-threads N]
               [--keys FILE.json] [--config FILE.toml]
headers:     authorization: Bearer <gateway key> (when keys are configured);
             x-tenant (key of --tenant-requests-per-minute; with gateway keys, the key's tenant
             wins unless the key is trusted), x-priority: low|normal|high (with keys: may only
             lower the key's priority unless trusted), x-llm-resume: on|off (continue a stream
             that breaks after its first token; --resume sets the default)
environment: OPENROUTER_API_KEY, OPENROUTER_BASE_URL, LLM_GATEWAY_KEYS, LISTEN_ADDR, MOCK_PRESET, MOCK_TIME_SCALE,
             FIRST_TOKEN_TIMEOUT_MS, IDLE_TIMEOUT_MS, TOTAL_TIMEOUT_MS, MAX_RETRIES,
             HEDGE_QUANTILE, ROUTER_TIERS, LEARNED_ORDER, UPSTREAM_H2C, ADAPTIVE_IDLE, RESUME, PRIORS, COALESCE,
             REDIS_URL, LLM_GATEWAY_REPLICAS, WORKER_THREADS, LLM_GATEWAY_CONFIG (flags win)";

pub(super) fn ms(v: &str, name: &str) -> Result<Option<Duration>, String> {
    let n: u64 = v
        .parse()
        .map_err(|_| format!("{name}: {v:?} is not a whole number of milliseconds"))?;
    Ok((n > 0).then(|| Duration::from_millis(n)))
}

pub(super) fn on_off(flag: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => Err(format!("{flag}: {v:?} is not on or off")),
    }
}

pub(super) fn ms_required(v: &str, name: &str) -> Result<Duration, String> {
    ms(v, name)?.ok_or_else(|| format!("{name} must be above zero"))
}
