//! Starting the service binaries (`--spawn`): migrations first, then each
//! service on a free port, timing process start → `/health/ready`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::load::{Conn, Req, Target};

/// A running service process that kai-load started: [`Spawned::stop`] ends it
/// the way an orchestrator does (SIGTERM, then SIGKILL); dropped, it is killed.
pub struct Spawned {
    pub name: String,
    pub pid: u32,
    pub target: Target,
    pub start_to_ready: Duration,
    child: tokio::process::Child,
}

impl Spawned {
    /// SIGTERM, then up to `grace` for the service's graceful shutdown (it drains
    /// requests and, in a PGO-instrumented build, writes its profile at exit:
    /// scripts/pgo), then SIGKILL. Returns whether it was gone without SIGKILL
    /// (a process that had already exited is).
    pub async fn stop(mut self, grace: Duration) -> bool {
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        // `kill` rather than a signal crate: the workspace forbids unsafe code.
        let termed = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await
            .is_ok_and(|s| s.success());
        if termed && let Ok(Ok(_)) = tokio::time::timeout(grace, self.child.wait()).await {
            return true;
        }
        let _ = self.child.kill().await;
        false
    }
}

/// Stops every service kai-load started, all at once ([`Spawned::stop`], 30 s of
/// grace each), saying which needed SIGKILL.
pub async fn stop_all(spawned: Vec<Spawned>) {
    const GRACE: Duration = Duration::from_secs(30);
    let stops = spawned.into_iter().map(|s| async move {
        let name = s.name.clone();
        if !s.stop(GRACE).await {
            eprintln!("{name} did not stop within {GRACE:?} of SIGTERM: killed");
        }
    });
    futures_util::future::join_all(stops).await;
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn binary(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release -p {name})",
            path.display()
        );
    }
    Ok(path)
}

/// `<binary> migrate` with the given environment.
pub async fn migrate(bin: &Path, env: &[(String, String)]) -> Result<()> {
    let out = tokio::process::Command::new(bin)
        .arg("migrate")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .await
        .with_context(|| format!("running {} migrate", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} migrate failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Starts `bin serve` on a free port and waits for `/health/ready`.
pub async fn start(
    name: &str,
    bin: &Path,
    env: &[(String, String)],
    log_dir: &Path,
) -> Result<Spawned> {
    let port = free_port()?;
    std::fs::create_dir_all(log_dir)?;
    let log_path = log_dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path)?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(bin)
        .arg("serve")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().context("child has no pid")?;
    let target = Target::parse(&format!("http://127.0.0.1:{port}"))?;
    let deadline = started + Duration::from_secs(30);
    loop {
        if let Ok(mut conn) = Conn::open(&target).await
            && let Ok((200, _, _)) = conn.send(&Req::get("/health/ready")).await
        {
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "{name} exited with {status} before it was ready; see {}",
                log_path.display()
            );
        }
        if Instant::now() > deadline {
            bail!("{name} not ready after 30 s; see {}", log_path.display());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(Spawned {
        name: name.to_owned(),
        pid,
        target,
        start_to_ready: started.elapsed(),
        child,
    })
}

/// Resident set size of a process in MiB, from /proc/<pid>/status.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_vm_rss() {
        let status =
            "Name:\tjournal-service\nVmPeak:\t  100000 kB\nVmRSS:\t   12288 kB\nThreads:\t5\n";
        assert_eq!(super::parse_vm_rss(status), Some(12.0));
        assert_eq!(super::parse_vm_rss("Name: x\n"), None);
    }
}
