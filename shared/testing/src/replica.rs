//! A private PostgreSQL primary with a streaming read replica (SPEC §7 "Read
//! replicas"): the shared server's `pg_hba` allows no replication, so both are
//! the test's own — `initdb` with `wal_level=replica` and a replication line,
//! then `pg_basebackup -R` into a second data directory — on free loopback
//! ports, in temp dirs, stopped on drop. The replica can be paused, stopped and
//! started again.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::postgres::postgres_bin;
use super::{TempDir, free_low_port, run, signal};

/// One server process on a data directory (stoppable, restartable).
struct Server {
    port: u16,
    data: String,
    socket_dir: String,
    as_root: bool,
    child: Option<Child>,
}

impl Server {
    fn start(&mut self) {
        let mut cmd = command(self.as_root, "postgres");
        cmd.args(["-D", &self.data, "-p", &self.port.to_string()]);
        for s in [
            "listen_addresses=127.0.0.1".to_owned(),
            format!("unix_socket_directories={}", self.socket_dir),
            "fsync=off".to_owned(),
            "max_connections=60".to_owned(),
            "shared_buffers=16MB".to_owned(),
            "wal_level=replica".to_owned(),
            "max_wal_senders=5".to_owned(),
            "hot_standby=on".to_owned(),
            // Replay never waits for the replica's readers (a test pauses
            // replay itself when it wants a replica behind).
            "max_standby_streaming_delay=0".to_owned(),
            "wal_receiver_status_interval=1s".to_owned(),
        ] {
            cmd.args(["-c", &s]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(postgres_bin().join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "private PostgreSQL did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGINT = fast shutdown.
        signal(child.id(), "INT");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn command(as_root: bool, program: &str) -> Command {
    let program = postgres_bin().join(program).to_string_lossy().into_owned();
    if as_root {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ]);
        c.arg(&program);
        c
    } else {
        Command::new(program)
    }
}

/// A private primary and its streaming replica. Both trust `postgres` on loopback.
pub struct ReplicatedPostgres {
    primary: Server,
    replica: Server,
    // Dropped after the servers (fields drop in order).
    _dir: TempDir,
}

impl ReplicatedPostgres {
    pub fn start() -> Self {
        let dir = TempDir::new("pg-replicated");
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        if as_root {
            run(Command::new("chown").args(["postgres:postgres", &dir.file("")]));
        }
        let primary_data = dir.file("primary");
        run(command(as_root, "initdb")
            .args([
                "-D",
                &primary_data,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ])
            .args(["--no-instructions", "-E", "UTF8"]));
        let hba = format!("{primary_data}/pg_hba.conf");
        let mut lines = std::fs::read_to_string(&hba).expect("pg_hba.conf");
        lines.push_str("\nhost replication postgres 127.0.0.1/32 trust\n");
        std::fs::write(&hba, lines).expect("pg_hba.conf");
        let mut primary = Server {
            port: free_low_port(),
            data: primary_data,
            socket_dir: dir.file(""),
            as_root,
            child: None,
        };
        primary.start();
        let replica_data = dir.file("replica");
        run(command(as_root, "pg_basebackup")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-D", &replica_data, "-R", "-X", "stream", "--no-sync"]));
        let mut replica = Server {
            port: free_low_port(),
            data: replica_data,
            socket_dir: dir.file(""),
            as_root,
            child: None,
        };
        replica.start();
        Self {
            primary,
            replica,
            _dir: dir,
        }
    }

    /// The primary's URL (`postgres` database, plaintext).
    pub fn primary_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.primary.port
        )
    }

    /// The replica's URL.
    pub fn replica_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.replica.port
        )
    }

    pub fn replica_port(&self) -> u16 {
        self.replica.port
    }

    async fn connect(url: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect to the private PostgreSQL");
        tokio::spawn(conn);
        client
    }

    /// A direct connection to the primary (outside any pool under test).
    pub async fn primary(&self) -> tokio_postgres::Client {
        Self::connect(&self.primary_url()).await
    }

    /// A direct connection to the replica.
    pub async fn replica(&self) -> tokio_postgres::Client {
        Self::connect(&self.replica_url()).await
    }

    /// `pg_wal_replay_pause()` on the replica; returns once replay is paused.
    pub async fn pause_replay(&self) {
        let c = self.replica().await;
        c.batch_execute("SELECT pg_wal_replay_pause()")
            .await
            .expect("pause replay");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state: String = c
                .query_one("SELECT pg_get_wal_replay_pause_state()", &[])
                .await
                .expect("pause state")
                .get(0);
            if state == "paused" {
                return;
            }
            assert!(Instant::now() < deadline, "replay did not pause");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `pg_wal_replay_resume()` on the replica.
    pub async fn resume_replay(&self) {
        self.replica()
            .await
            .batch_execute("SELECT pg_wal_replay_resume()")
            .await
            .expect("resume replay");
    }

    /// Waits until the replica has replayed everything the primary wrote so far.
    pub async fn wait_caught_up(&self) {
        let primary = self.primary().await;
        let replica = self.replica().await;
        let target: tokio_postgres::types::PgLsn = primary
            .query_one("SELECT pg_current_wal_insert_lsn()", &[])
            .await
            .expect("primary position")
            .get(0);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let replayed: Option<tokio_postgres::types::PgLsn> = replica
                .query_one("SELECT pg_last_wal_replay_lsn()", &[])
                .await
                .expect("replay position")
                .get(0);
            if replayed.is_some_and(|r| r >= target) {
                return;
            }
            assert!(Instant::now() < deadline, "the replica did not catch up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the replica (fast shutdown); reads must go to the primary.
    pub fn stop_replica(&mut self) {
        self.replica.stop();
    }

    /// Starts the stopped replica again (same port and data): it resumes
    /// streaming from where it stopped.
    pub fn start_replica(&mut self) {
        self.replica.start();
    }
}

impl Drop for ReplicatedPostgres {
    fn drop(&mut self) {
        self.replica.stop();
        self.primary.stop();
    }
}
