//! For tests (feature `testing`): a real `redis-server` on an ephemeral loopback port, no
//! persistence, killed on drop. Missing, it is installed with `apt-get` when that can be
//! done; when it cannot, [`RedisServer::start`] says so loudly and returns `None` (the test
//! skips), unless `LLM_LAYERS_REQUIRE_REDIS` is set (CI sets it: there a missing Redis
//! fails the run).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` process of this test's own.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    /// Its loopback port.
    pub port: u16,
}

fn have_redis() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn install() -> bool {
    eprintln!("redis-server is missing: trying apt-get install redis-server");
    let ok = |c: &mut Command| {
        c.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let _ = ok(Command::new("apt-get").arg("update"));
    ok(Command::new("apt-get").args(["install", "-y", "redis-server"])) && have_redis()
}

impl RedisServer {
    /// A fresh server, or `None` (after a loud message) when none can be had here.
    pub fn start() -> Option<RedisServer> {
        static CHECK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if !*CHECK.get_or_init(|| have_redis() || install()) {
            if std::env::var_os("LLM_LAYERS_REQUIRE_REDIS").is_some() {
                panic!(
                    "redis-server is required (LLM_LAYERS_REQUIRE_REDIS) and cannot be installed"
                );
            }
            eprintln!(
                "\n!!! SKIPPED: redis-server is not installed and cannot be installed here !!!\n"
            );
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no ephemeral port: {e}"));
        let mut s = RedisServer { child: None, port };
        s.spawn();
        Some(s)
    }

    fn spawn(&mut self) {
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--enable-debug-command",
                "local",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server does not start: {e}"));
        // Ready when its log says so (no polling, no sleep); the rest of its log is drained
        // on a thread of its own so the pipe never fills.
        let mut log = child.stdout.take().map(std::io::BufReader::new);
        self.child = Some(child);
        let ready = log.as_mut().is_some_and(|log| {
            std::io::BufRead::lines(log)
                .map_while(Result::ok)
                .any(|line| line.contains("Ready to accept connections"))
        });
        if let Some(mut rest) = log {
            std::thread::spawn(move || std::io::copy(&mut rest, &mut std::io::sink()));
        }
        assert!(ready, "redis-server did not start on port {}", self.port);
    }

    /// Its `redis://` URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connection to it as replica `name`, with a budget (2 s) that a loaded test
    /// machine never exceeds: these tests are about sharing, not about the fallback.
    pub fn connect(&self, name: &str) -> crate::Redis {
        crate::Redis::builder(self.url())
            .replica(name)
            .budget(std::time::Duration::from_secs(2))
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs one command on a connection of its own, returning the raw reply.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        cli_at(self.port, args)
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    /// `SIGSTOP`: the server hangs with its connections open.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// `SIGCONT`.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills the server.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

/// A store nobody answers at (a port that was free a moment ago), with a 50 ms budget: for
/// tests of the fall-back to local state.
pub fn unreachable() -> crate::Redis {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or(1, |a| a.port());
    crate::Redis::builder(format!("redis://127.0.0.1:{port}"))
        .budget(Duration::from_millis(50))
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs one command on a connection of its own to the server on `port`, returning the raw
/// reply.
pub fn cli_at(port: u16, args: &[&str]) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(cmd.as_bytes()).ok()?;
    let mut buf = [0u8; 65536];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A TCP proxy in front of a Redis (or anything) that holds every byte, both ways, while it
/// is stalled: a store that answers late, on cue. Runs until the runtime ends.
#[derive(Debug, Clone)]
pub struct StallingProxy {
    url: String,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StallingProxy {
    /// A proxy to `server` on an ephemeral loopback port (inside a Tokio runtime).
    pub async fn start(server: &RedisServer) -> std::io::Result<StallingProxy> {
        use std::sync::atomic::AtomicBool;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stalled = std::sync::Arc::new(AtomicBool::new(false));
        let upstream = format!("127.0.0.1:{}", server.port);
        let flag = stalled.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, flag.clone()));
                tokio::spawn(pipe(sr, cw, flag.clone()));
            }
        });
        Ok(StallingProxy {
            url: format!("redis://{addr}"),
            stalled,
        })
    }

    /// Its URL, for `Redis::builder`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Holds (`true`) or lets through (`false`) every byte from now on.
    pub fn stall(&self, stalled: bool) {
        self.stalled
            .store(stalled, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while stalled.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
