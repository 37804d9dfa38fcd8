//! What `/proc` says of a child process: CPU seconds, resident set, its peak.

use super::*;

/// A child process, killed when dropped (a wrapped one is told to end, and waited for).
pub(crate) struct Proc {
    pub(crate) child: Child,
    wrapped: bool,
}

/// The environment variable that tells a child to exit when its stdin closes.
pub(crate) const EXIT_ON_EOF: &str = "LLM_LAYERS_LOAD_EXIT_ON_EOF";

impl Proc {
    /// Starts this binary with `args` and waits for the stdout line that contains `marker`;
    /// returns the process and the word after the marker.
    pub(crate) fn spawn(
        args: &[&str],
        env: &[(&str, &str)],
        marker: &str,
    ) -> Result<(Proc, String), String> {
        Proc::spawn_wrapped(None, args, env, marker)
    }

    /// As [`Proc::spawn`], run under `wrapper` when given (a profiler: `heaptrack`,
    /// `valgrind --tool=dhat`). The child then exits when its stdin closes (as this process
    /// drops it), so the wrapper sees a normal exit and writes its profile; its PID (and so
    /// the RSS read from `/proc`) is the wrapper's.
    pub(crate) fn spawn_wrapped(
        wrapper: Option<&str>,
        args: &[&str],
        env: &[(&str, &str)],
        marker: &str,
    ) -> Result<(Proc, String), String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let wrap = wrapper
            .map(|w| w.split_whitespace().collect::<Vec<_>>())
            .filter(|w| !w.is_empty());
        let wrapped = wrap.is_some();
        let mut cmd = match wrap {
            Some(w) => {
                let mut c = Command::new(w[0]);
                c.args(&w[1..])
                    .arg(&exe)
                    .env(EXIT_ON_EOF, "1")
                    .stdin(Stdio::piped());
                c
            }
            None => {
                let mut c = Command::new(&exe);
                c.stdin(Stdio::null());
                c
            }
        };
        let mut child = cmd
            .args(args)
            .env_remove("OPENROUTER_API_KEY")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {args:?}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let proc = Proc { child, wrapped };
        let mut lines = BufReader::new(stdout).lines();
        let found = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.split(marker).nth(1) {
                        break rest
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned();
                    }
                }
                _ => return Err(format!("{args:?} ended before saying {marker:?}")),
            }
        };
        // Keep draining what it prints, so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok((proc, found))
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
    pub(crate) fn status_kib(&self, field: &str) -> u64 {
        proc_status_kib(self.pid(), field)
    }
}

/// What process `pid` has run on a CPU so far: each thread's run time from
/// `/proc/PID/task/TID/schedstat` (nanoseconds), and the process's user + system time from
/// `/proc/PID/stat` (clock ticks, 10 ms here: too coarse for a 3 s row by itself).
pub(crate) struct CpuSnapshot {
    threads: Vec<(u32, u64)>,
    ticks_s: f64,
}

impl CpuSnapshot {
    pub(crate) fn of(pid: u32) -> CpuSnapshot {
        let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let tid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
                let ns = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))
                    .ok()?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()?;
                Some((tid, ns))
            })
            .collect();
        CpuSnapshot {
            threads,
            ticks_s: proc_cpu_seconds(pid),
        }
    }

    /// CPU seconds from `self` to `later`: to the nanosecond from the threads' run times
    /// when every thread seen in `self` still runs (a thread that ended took its run time
    /// with it), from the clock ticks otherwise.
    pub(crate) fn seconds_until(&self, later: &CpuSnapshot) -> f64 {
        let before = |tid: u32| self.threads.iter().find(|t| t.0 == tid).map(|t| t.1);
        let all_alive = self
            .threads
            .iter()
            .all(|(tid, _)| later.threads.iter().any(|t| t.0 == *tid));
        if self.threads.is_empty() || !all_alive {
            return later.ticks_s - self.ticks_s;
        }
        let ns: u64 = later
            .threads
            .iter()
            .map(|&(tid, ns)| ns.saturating_sub(before(tid).unwrap_or(0)))
            .sum();
        ns as f64 / 1e9
    }
}

/// User + system CPU time of process `pid` so far, in seconds.
pub(crate) fn proc_cpu_seconds(pid: u32) -> f64 {
    let stat = read_proc(pid, "stat");
    // Fields after the command name's closing parenthesis start at field 3 (state);
    // utime and stime are fields 14 and 15, in clock ticks.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 / clock_ticks()
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> u64 {
    read_proc(pid, "status")
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Resets the peak resident set (`VmHWM`) of `pid` to the current one (Linux `clear_refs` 5).
pub(crate) fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.wrapped {
            // The child exits when its stdin closes; the profiler then writes its profile.
            drop(self.child.stdin.take());
            let _ = self.child.wait();
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/proc/PID/FILE`, or empty (and a word on stderr) when it cannot be read.
pub(crate) fn read_proc(pid: u32, file: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_else(|e| {
        eprintln!("load: cannot read /proc/{pid}/{file}: {e}");
        String::new()
    })
}

pub(crate) fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}
