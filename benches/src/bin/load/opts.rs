//! The command line.

use super::*;

pub(crate) struct Opts {
    pub(crate) duration: Duration,
    pub(crate) rates: Vec<u64>,
    pub(crate) streams: usize,
    pub(crate) connections: usize,
    pub(crate) mock_url: Option<String>,
    pub(crate) others: Vec<Target>,
    pub(crate) load: bool,
    pub(crate) memory: bool,
    pub(crate) repeats: usize,
    /// With a Redis URL: two more rows, the gateway with a request limit on its memory
    /// store and the same on Redis (`--redis-url`).
    pub(crate) redis_url: Option<String>,
    /// `--wrap-gateway CMD`: the memory rows' gateway runs under a profiler.
    pub(crate) wrap_gateway: Option<String>,
}

pub(crate) fn opts(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        duration: Duration::from_secs(10),
        rates: vec![1000, 2000, 5000],
        streams: 10_000,
        connections: 256,
        mock_url: None,
        others: Vec::new(),
        load: true,
        memory: true,
        repeats: 3,
        redis_url: None,
        wrap_gateway: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut v = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--duration-s" => {
                o.duration =
                    Duration::from_secs_f64(v()?.parse().map_err(|e| format!("--duration-s: {e}"))?)
            }
            "--rates" => {
                o.rates = v()?
                    .split(',')
                    .map(|r| r.trim().parse().map_err(|e| format!("--rates: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--streams" => o.streams = v()?.parse().map_err(|e| format!("--streams: {e}"))?,
            "--connections" => {
                o.connections = v()?.parse().map_err(|e| format!("--connections: {e}"))?;
                if o.connections == 0 {
                    return Err("--connections must be at least 1".into());
                }
            }
            "--mock-url" => {
                let url = v()?;
                http_url("--mock-url", url)?;
                o.mock_url = Some(url.trim_end_matches('/').to_owned());
            }
            "--compare" => o.others.push(compare_target(v()?)?),
            "--compare-header" => {
                let h = compare_header(v()?)?;
                o.others
                    .last_mut()
                    .ok_or("--compare-header goes after the --compare it is for")?
                    .headers
                    .push(h);
            }
            "--repeats" => {
                o.repeats = v()?.parse().map_err(|e| format!("--repeats: {e}"))?;
                if o.repeats == 0 {
                    return Err("--repeats must be at least 1".into());
                }
            }
            "--only" => match v()?.as_str() {
                "load" => o.memory = false,
                "memory" => o.load = false,
                x => return Err(format!("--only: {x:?} is not load or memory")),
            },
            "--redis-url" => {
                let url = v()?;
                if !url.starts_with("redis://") {
                    return Err(format!("--redis-url: {url:?} is not redis://HOST:PORT"));
                }
                o.redis_url = Some(url.clone());
            }
            "--wrap-gateway" => {
                let cmd = v()?;
                if cmd.trim().is_empty() {
                    return Err("--wrap-gateway needs a command, e.g. heaptrack".into());
                }
                o.wrap_gateway = Some(cmd.clone());
            }
            // `cargo bench` passes this to every bench target.
            "--bench" => {}
            x => return Err(format!("unknown argument {x:?}")),
        }
    }
    Ok(o)
}

/// An `http://` URL (the load client speaks plain HTTP), or a word on what is wrong with it.
pub(crate) fn http_url(flag: &str, url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{flag}: {url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(format!("{flag}: {url:?} is not an http://HOST... URL"));
    }
    Ok(uri)
}

/// `NAME=URL` or `NAME=URL@PID`: another OpenAI-compatible gateway in front of the same mock,
/// its chat completions URL, and its process id for CPU and RSS.
pub(crate) fn compare_target(spec: &str) -> Result<Target, String> {
    let (name, rest) = spec
        .split_once('=')
        .ok_or_else(|| format!("--compare: {spec:?} is not NAME=URL[@PID]"))?;
    let (url, pid) = match rest.rsplit_once('@') {
        Some((u, p)) => (
            u,
            Some(
                p.parse()
                    .map_err(|e| format!("--compare: pid {p:?}: {e}"))?,
            ),
        ),
        None => (rest, None),
    };
    Ok(Target {
        name: name.to_owned(),
        url: http_url("--compare", url)?,
        auth: Some(HeaderValue::from_static("Bearer sk-or-v1-load")),
        pid,
        headers: Vec::new(),
    })
}

/// `NAME: VALUE`: a header every request to the last `--compare` target carries (Portkey's
/// `x-portkey-provider`, say).
pub(crate) fn compare_header(spec: &str) -> Result<(http::HeaderName, HeaderValue), String> {
    let (k, v) = spec
        .split_once(':')
        .ok_or_else(|| format!("--compare-header: {spec:?} is not NAME: VALUE"))?;
    let name = http::HeaderName::from_bytes(k.trim().as_bytes())
        .map_err(|e| format!("--compare-header: {k:?}: {e}"))?;
    let value =
        HeaderValue::from_str(v.trim()).map_err(|e| format!("--compare-header: {v:?}: {e}"))?;
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(crate) fn the_first_token_is_a_content_delta_with_text() {
        assert!(!has_token(
            br#"data: {"choices":[{"delta":{"role":"assistant","content":""}}]}"#
        ));
        assert!(has_token(
            br#"data: {"choices":[{"delta":{"content":""}}]}\n\ndata: {"choices":[{"delta":{"content":"hi"}}]}"#
        ));
        assert!(!has_token(b": OPENROUTER PROCESSING\n\n"));
    }

    #[test]
    pub(crate) fn compare_targets_parse_with_and_without_a_pid() {
        let t = compare_target("litellm=http://127.0.0.1:4000/v1/chat/completions@42").unwrap();
        assert_eq!(t.name, "litellm");
        assert_eq!(t.url, "http://127.0.0.1:4000/v1/chat/completions");
        assert!(
            compare_target("x=https://h/v1/chat/completions").is_err(),
            "plain HTTP only"
        );
        assert!(compare_target("x=not a url").is_err());
        assert_eq!(t.pid, Some(42));
        let t = compare_target("x=http://h/v1/chat/completions").unwrap();
        assert_eq!(t.pid, None);
        assert!(compare_target("no-equals-sign").is_err());
        assert!(compare_target("x=http://h@notapid").is_err());
        let (k, v) = compare_header("x-portkey-provider: openai").unwrap();
        assert_eq!(
            (k.as_str(), v.to_str().unwrap()),
            ("x-portkey-provider", "openai")
        );
        assert!(compare_header("no colon").is_err());
        assert!(compare_header("bad name: x").is_err());
    }

    #[test]
    pub(crate) fn flags_are_read_and_bad_ones_refused() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let o = opts(&args(&[
            "--rates",
            "100, 200",
            "--duration-s",
            "2.5",
            "--only",
            "load",
        ]))
        .unwrap();
        assert_eq!(o.rates, vec![100, 200]);
        assert_eq!(o.duration, Duration::from_millis(2500));
        assert!(o.load && !o.memory);
        assert_eq!(o.connections, 256);
        assert!(opts(&args(&["--connections", "0"])).is_err());
        assert!(opts(&args(&["--only", "everything"])).is_err());
        assert!(opts(&args(&["--rates"])).is_err());
        assert!(opts(&args(&["--what"])).is_err());
        assert!(opts(&args(&["--mock-url", "127.0.0.1:8090"])).is_err());
        let o = opts(&args(&["--mock-url", "http://127.0.0.1:8090/api/v1/"])).unwrap();
        assert_eq!(o.mock_url.as_deref(), Some("http://127.0.0.1:8090/api/v1"));
    }
}
