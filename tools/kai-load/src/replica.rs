//! A private PostgreSQL primary and a streaming read replica of it, for
//! `kai-load soak --with-replica` (the same recipe as kai-testing's
//! `ReplicatedPostgres`, which this tool cannot depend on): `initdb` with
//! `wal_level=replica` and a replication `pg_hba` line, `pg_basebackup -R`,
//! both on free loopback ports in a temp dir; stopped and deleted on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::spawn;

pub struct Replicated {
    pub primary_port: u16,
    pub replica_port: u16,
    dir: PathBuf,
    children: Vec<Child>,
}

fn bin() -> Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL server binaries in /usr/lib/postgresql")?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, b)| b.join("initdb").exists())
        .collect();
    versions.sort();
    Ok(versions
        .pop()
        .context("no initdb under /usr/lib/postgresql")?
        .1)
}

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program` from the PostgreSQL bin dir, as the `postgres` user when root.
fn command(program: &str) -> Result<Command> {
    let program = bin()?.join(program).to_string_lossy().into_owned();
    Ok(if as_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    })
}

fn run(mut c: Command) -> Result<()> {
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Replicated {
    pub fn start() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("kai-load-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        if as_root() {
            run({
                let mut c = Command::new("chown");
                c.arg("postgres:postgres").arg(&dir);
                c
            })?;
        }
        let path = |p: &str| dir.join(p).to_string_lossy().into_owned();
        let mut me = Self {
            primary_port: spawn::free_port()?,
            replica_port: spawn::free_port()?,
            dir: dir.clone(),
            children: Vec::new(),
        };
        run({
            let mut c = command("initdb")?;
            c.args(["-D", &path("primary"), "-U", "postgres", "--auth=trust"])
                .args(["--no-sync", "--no-instructions", "-E", "UTF8"]);
            c
        })?;
        let hba = dir.join("primary/pg_hba.conf");
        let mut lines = std::fs::read_to_string(&hba)?;
        lines.push_str("\nhost replication postgres 127.0.0.1/32 trust\n");
        std::fs::write(&hba, lines)?;
        me.serve(&path("primary"), me.primary_port)?;
        run({
            let mut c = command("pg_basebackup")?;
            c.args(["-h", "127.0.0.1", "-p", &me.primary_port.to_string()])
                .args([
                    "-U",
                    "postgres",
                    "-D",
                    &path("replica"),
                    "-R",
                    "-X",
                    "stream",
                ])
                .arg("--no-sync");
            c
        })?;
        me.serve(&path("replica"), me.replica_port)?;
        Ok(me)
    }

    fn serve(&mut self, data: &str, port: u16) -> Result<()> {
        let mut cmd = command("postgres")?;
        cmd.args(["-D", data, "-p", &port.to_string()]);
        for s in [
            "listen_addresses=127.0.0.1".to_owned(),
            format!("unix_socket_directories={}", self.dir.display()),
            "max_connections=200".to_owned(),
            "shared_buffers=128MB".to_owned(),
            "wal_level=replica".to_owned(),
            "max_wal_senders=5".to_owned(),
            "hot_standby=on".to_owned(),
            "max_standby_streaming_delay=0".to_owned(),
        ] {
            cmd.args(["-c", &s]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting postgres")?;
        self.children.push(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(bin()?.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("PostgreSQL did not start on port {port}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>` of the primary or replica.
    pub fn url(port: u16, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{db}?sslmode=disable")
    }
}

impl Drop for Replicated {
    fn drop(&mut self) {
        // Replica first; SIGINT = fast shutdown.
        for child in self.children.iter_mut().rev() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
