//! The command line, the config file and how their values are read.

use std::time::Duration;

use super::file_error::{Position, file_error, json_error};

use super::Config;

mod flags;
pub(super) use flags::FLAGS;
use flags::KEYS;

/// The command line: every flag of [`FLAGS`] and `--config`, each taking one value, with
/// its description, default and environment variable in `--help`, by heading.
pub(super) fn command() -> clap::Command {
    let mut cmd = clap::Command::new("llm-gateway")
        .about("An OpenAI-compatible gateway in front of OpenRouter (or any OpenAI-compatible upstream), built on llm-layers. With no OPENROUTER_API_KEY it serves from a built-in mock upstream.")
        .version(env!("CARGO_PKG_VERSION"))
        .args_override_self(true)
        .max_term_width(100)
        .after_help(AFTER_HELP)
        .arg(
            clap::Arg::new("check-config")
                .long("check-config")
                .action(clap::ArgAction::SetTrue)
                .help("Read and check everything, print the configuration in force (no secret), and exit: 0 when valid, 1 when not"),
        );
    for f in FLAGS {
        cmd = cmd.arg(
            clap::Arg::new(f.name)
                .long(f.name)
                .value_name(f.value)
                .help(format!(
                    "{} [default: {}] [env: {}]",
                    f.help, f.default, f.env
                ))
                .help_heading(f.heading),
        );
    }
    cmd.arg(
        clap::Arg::new("config")
            .long("config")
            .value_name("FILE.toml")
            .help("A config file: [settings] (any flag by its name) and [[upstreams]] [default: none] [env: LLM_GATEWAY_CONFIG]")
            .help_heading(KEYS),
    )
}

/// Why the command line gave no configuration to run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliExit {
    /// `--help` or `--version`: print this, and exit with success.
    Print(String),
    /// A bad flag, value or file: this says which (never a secret it held).
    Error(String),
}

impl From<String> for CliExit {
    fn from(e: String) -> Self {
        CliExit::Error(e)
    }
}

impl std::fmt::Display for CliExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliExit::Print(s) | CliExit::Error(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for CliExit {}

/// What `--help` says after the flags: the environment that is no flag, and the headers.
const AFTER_HELP: &str = "\
Environment: OPENROUTER_API_KEY (none: the built-in mock), OPENROUTER_BASE_URL (default
https://openrouter.ai/api/v1), LLM_GATEWAY_KEYS (tenant=key,...). Flags win over the
environment, which wins over the config file.
Request headers: authorization: Bearer <gateway key>; x-tenant and x-priority: low|normal|high
(with keys: only a trusted key's are honoured as sent); x-llm-resume: on|off;
x-llm-coalesce: on|off.";

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
///
/// [prices]
/// "openai/gpt-4o-mini" = { prompt = "0.00000015", completion = "0.0000006" }
/// ```
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfigFile {
    #[serde(default)]
    pub(super) settings: std::collections::BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub(super) upstreams: Vec<crate::upstreams::UpstreamConfig>,
    /// Prices by model id: `"model" = { prompt = "0.000001", completion = "0.000002" }`.
    #[serde(default)]
    pub(super) prices: std::collections::BTreeMap<String, toml::Value>,
}

/// clap's message with the value of every quoted `'--flag=value'` cut: a secret passed to
/// a misspelt flag is not printed back.
fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for (i, part) in message.split('\'').enumerate() {
        if i > 0 {
            out.push('\'');
        }
        match part.split_once('=') {
            Some((flag, _)) if i % 2 == 1 && flag.starts_with('-') => {
                out.push_str(flag);
                out.push_str("=…");
            }
            _ => out.push_str(part),
        }
    }
    out
}

pub(super) fn ms(v: &str, name: &str) -> Result<Option<Duration>, String> {
    let n: u64 = v
        .parse()
        .map_err(|_| format!("{name}: {v:?} is not a whole number of milliseconds"))?;
    Ok((n > 0).then(|| Duration::from_millis(n)))
}

/// `v` as a number, or the error that names `flag`.
fn number<T: std::str::FromStr>(v: &str, flag: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: {v:?} is not a number"))
}

/// `v` as a number that `ok` accepts, or the error that names `flag` and says the number
/// wanted (`what`).
fn number_where<T: std::str::FromStr>(
    v: &str,
    flag: &str,
    ok: impl Fn(&T) -> bool,
    what: &str,
) -> Result<T, String> {
    v.parse()
        .ok()
        .filter(ok)
        .ok_or_else(|| format!("{flag}: {v:?} is not {what}"))
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

impl Config {
    /// Reads the environment (through `env`) and then the flags (which win).
    pub fn from_args_env(
        args: impl IntoIterator<Item = String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, CliExit> {
        let mut c = Config::default();
        let non_empty = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        c.api_key = non_empty("OPENROUTER_API_KEY");
        if let Some(pairs) = non_empty("LLM_GATEWAY_KEYS") {
            c.keys = crate::keys::Keys::from_pairs(&pairs)?;
        }
        if let Some(u) = non_empty("OPENROUTER_BASE_URL") {
            c.base_url = u;
        }
        let mut pairs: Vec<(String, String)> = Vec::new();
        let envs = FLAGS
            .iter()
            .map(|f| (f.env, f.name))
            .chain([("LLM_GATEWAY_CONFIG", "config")]);
        for (k, flag) in envs {
            if let Some(v) = non_empty(k) {
                pairs.push((format!("--{flag}"), v));
            }
        }
        // One parser for all three sources, lowest first: the config file's `[settings]`,
        // the environment, the flags (the last occurrence of a flag wins).
        let mut argv: Vec<String> = vec!["llm-gateway".into()];
        for (flag, v) in pairs {
            argv.push(format!("{flag}={v}"));
        }
        argv.extend(args);
        let matches = command()
            .try_get_matches_from(argv)
            .map_err(|e| match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    CliExit::Print(e.to_string())
                }
                _ => CliExit::Error(without_values(e.to_string().trim_end())),
            })?;
        c.check_only = matches.get_flag("check-config");
        c.apply(&matches).map_err(CliExit::Error)?;
        Ok(c)
    }

    /// The config file, then the environment and flags (as parsed in `matches`), onto `self`.
    fn apply(&mut self, matches: &clap::ArgMatches) -> Result<(), String> {
        let c = self;
        let mut pairs: Vec<(String, String)> = Vec::new();
        if let Some(path) = matches.get_one::<String>("config") {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--config: cannot read {path:?}: {e}"))?;
            let file: ConfigFile = toml::from_str(&text).map_err(|e| {
                let at = e
                    .span()
                    .map_or(Position::Unknown, |s| Position::Offset(s.start));
                file_error("--config", path, &text, at, e.message())
            })?;
            for (name, v) in file.settings {
                let v = match v {
                    toml::Value::String(s) => s,
                    toml::Value::Boolean(b) => if b { "on" } else { "off" }.to_owned(),
                    toml::Value::Integer(n) => n.to_string(),
                    toml::Value::Float(x) => x.to_string(),
                    _ => {
                        return Err(format!(
                            "--config: setting `{name}` must be a string, number or boolean"
                        ));
                    }
                };
                pairs.push((format!("--{}", name.replace('_', "-")), v));
            }
            let mut names = std::collections::HashSet::new();
            for u in &file.upstreams {
                if !names.insert(u.name.clone()) {
                    return Err(format!("--config: upstream `{}` is named twice", u.name));
                }
                if u.keys.is_empty() {
                    return Err(format!("--config: upstream `{}` has no keys", u.name));
                }
            }
            c.upstreams = file.upstreams;
            for (model, v) in file.prices {
                let price = serde_json::to_value(&v)
                    .map_err(|e| e.to_string())
                    .and_then(|v| {
                        llm_layers_core::price::Price::from_pricing(&v).map_err(|e| e.to_string())
                    })
                    .map_err(|e| format!("--config: prices.\"{model}\": {e}"))?;
                c.prices.insert(model, price);
            }
        }
        for f in FLAGS {
            if let Some(v) = matches.get_one::<String>(f.name) {
                pairs.push((format!("--{}", f.name), v.clone()));
            }
        }
        for (flag, v) in pairs {
            match flag.as_str() {
                "--listen" => {
                    c.listen = v.parse().map_err(|_| {
                        format!("--listen: {v:?} is not an address like 127.0.0.1:8080")
                    })?
                }
                "--mock-preset" => {
                    if llm_layers_mock::Scenario::preset(&v).is_none() {
                        return Err(format!(
                            "--mock-preset: unknown preset {v:?}; known: {:?}",
                            llm_layers_mock::Scenario::PRESETS
                        ));
                    }
                    c.mock_preset = v;
                }
                "--mock-time-scale" => {
                    c.mock_time_scale = number_where(
                        &v,
                        &flag,
                        |x: &f64| *x >= 0.0 && x.is_finite(),
                        "a number >= 0",
                    )?
                }
                "--max-body-bytes" => {
                    c.max_body_bytes = number_where(&v, &flag, |n| *n > 0, "a size above zero")?
                }
                "--body-read-timeout-ms" => c.body_read_timeout = ms_required(&v, &flag)?,
                "--header-read-timeout-ms" => c.header_read_timeout = ms_required(&v, &flag)?,
                "--shutdown-grace-ms" => c.shutdown_grace = ms(&v, &flag)?.unwrap_or_default(),
                "--default-max-tokens" => {
                    let n: u32 = number(&v, &flag)?;
                    c.default_max_tokens = (n > 0).then_some(n);
                }
                "--first-token-timeout-ms" => c.first_token_timeout = ms(&v, &flag)?,
                "--idle-timeout-ms" => c.idle_timeout = ms(&v, &flag)?,
                "--total-timeout-ms" => c.total_timeout = ms(&v, &flag)?,
                "--max-retries" => c.max_retries = number(&v, &flag)?,
                "--connect-timeout-ms" => c.connect_timeout = ms_required(&v, &flag)?,
                "--hedge-quantile" => {
                    c.hedge_quantile = number_where(
                        &v,
                        &flag,
                        |q: &f64| (0.0..1.0).contains(q),
                        "in 0..1 (0 = off)",
                    )?
                }
                "--worker-threads" => {
                    c.worker_threads = number_where(
                        &v,
                        &flag,
                        |n| *n <= 1024,
                        "a thread count (0 = one per core, 1 = single-threaded)",
                    )?
                }
                "--tls-cert" => c.tls_cert = Some(v.into()),
                "--tls-key" => c.tls_key = Some(v.into()),
                "--log-format" => {
                    c.log_format = match v.as_str() {
                        "json" => crate::LogFormat::Json,
                        "off" => crate::LogFormat::Off,
                        _ => return Err(format!("--log-format: {v:?} is not json or off")),
                    }
                }
                "--access-log" => c.access_log = Some(v.into()),
                "--max-connections" => {
                    c.max_connections = number_where(&v, &flag, |n| *n > 0, "a number above zero")?
                }
                "--max-streams-per-connection" => {
                    c.max_streams_per_connection =
                        number_where(&v, &flag, |n| *n > 0, "a number above zero")?
                }
                "--max-concurrency" => {
                    c.max_concurrency = number_where(&v, &flag, |n| *n > 0, "a number above zero")?
                }
                "--requests-per-minute" => c.requests_per_minute = number(&v, &flag)?,
                "--tenant-requests-per-minute" => c.tenant_requests_per_minute = number(&v, &flag)?,
                "--tokens-per-minute" => c.tokens_per_minute = number(&v, &flag)?,
                "--slow-call-factor" => {
                    c.slow_call_factor = number_where(
                        &v,
                        &flag,
                        |x: &f64| *x >= 1.0 && x.is_finite(),
                        "a number >= 1",
                    )?
                }
                "--hedge-budget" => {
                    c.hedge_budget = number_where(
                        &v,
                        &flag,
                        |q: &f64| (0.0..=1.0).contains(q),
                        "a share in 0..=1",
                    )?
                }
                "--tiers" => {
                    let text = std::fs::read_to_string(&v)
                        .map_err(|e| format!("{flag}: cannot read {v:?}: {e}"))?;
                    let learned = c.router.learned_order.enabled;
                    c.router = serde_json::from_str(&text).map_err(|e| {
                        format!(
                            "{flag}: {v:?} is not a router configuration: {}",
                            json_error(&text, &e)
                        )
                    })?;
                    // A `--learned-order off` given before the file still holds.
                    c.router.learned_order.enabled &= learned;
                }
                "--learned-order" => c.router.learned_order.enabled = on_off(&flag, &v)?,
                "--keys" => {
                    let text = std::fs::read_to_string(&v)
                        .map_err(|e| format!("{flag}: cannot read {v:?}: {e}"))?;
                    c.keys = crate::keys::Keys::from_json(&text)
                        .map_err(|e| format!("{flag}: {v:?}: {e}"))?;
                }
                "--upstream-h2c" => c.upstream_h2c = on_off(&flag, &v)?,
                "--adaptive-idle" => c.adaptive_idle = on_off(&flag, &v)?,
                "--adaptive-first-token" => c.adaptive_first_token = on_off(&flag, &v)?,
                "--resume" => c.resume = on_off(&flag, &v)?,
                "--priors" => c.priors = on_off(&flag, &v)?,
                "--coalesce" => c.coalesce = on_off(&flag, &v)?,
                "--redis-url" => {
                    if !(v.starts_with("redis://") || v.starts_with("valkey://")) {
                        return Err(
                            "--redis-url: expected redis://[:password@]host:port[/db] (rediss:// is not built in)"
                                .to_owned(),
                        );
                    }
                    c.redis_url = Some(v.replacen("valkey://", "redis://", 1));
                }
                "--replicas" => {
                    c.replicas =
                        number_where(&v, &flag, |n| *n >= 1, "a whole number of at least 1")?;
                }
                "--redis-limits" => {
                    c.redis_limits = match v.as_str() {
                        "exact" => llm_layers_redis::LimitMode::Exact,
                        "lease" => llm_layers_redis::LimitMode::Lease,
                        _ => return Err(format!("--redis-limits: {v:?} is not exact or lease")),
                    }
                }
                "--stack" => {
                    c.leaf_only = match v.as_str() {
                        "full" => false,
                        "leaf" => true,
                        _ => return Err(format!("--stack: {v:?} is not full or leaf")),
                    }
                }
                other => return Err(format!("unknown flag {other:?}")),
            }
        }
        Ok(())
    }
}
