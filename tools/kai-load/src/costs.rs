//! Unit costs of a scenario, per request, for the capacity model
//! (docs/CAPACITY.md): the target service's CPU, PostgreSQL's CPU, and Redis
//! commands and network bytes, each the difference of two readings taken just
//! before and just after the measured run, divided by the requests it completed.
//!
//! PostgreSQL's CPU is every `postgres` process of this machine and Redis's
//! counters are the whole server's: on a machine where other work uses them too
//! (other test suites) these are upper bounds. Readings that cannot be taken
//! (a remote database, a Redis without `INFO`) are left out, never guessed.

use serde::Serialize;

/// Per-request costs of one scenario; `None` where not measurable.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct UnitCosts {
    /// utime + stime of the target service process, µs per request.
    pub service_cpu_us: Option<f64>,
    /// utime + stime of every local `postgres` process, µs per request.
    pub postgres_cpu_us: Option<f64>,
    /// Redis commands processed (server-wide), per request.
    pub redis_commands: Option<f64>,
    /// Redis network bytes in + out (server-wide), per request.
    pub redis_bytes: Option<f64>,
}

/// One reading of every counter.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    service_cpu_s: Option<f64>,
    postgres_cpu_s: Option<f64>,
    redis: Option<RedisStats>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RedisStats {
    pub commands: f64,
    pub bytes: f64,
}

impl Reading {
    pub async fn take(service_pid: Option<u32>, redis: Option<&redis::Client>) -> Self {
        let redis = match redis {
            Some(c) => redis_stats(c).await,
            None => None,
        };
        Self {
            service_cpu_s: service_pid.and_then(cpu_seconds),
            postgres_cpu_s: postgres_cpu_seconds(),
            redis,
        }
    }

    /// Costs per request between `self` (before) and `after`.
    pub fn per_request(&self, after: &Reading, requests: u64) -> UnitCosts {
        let n = requests.max(1) as f64;
        let diff = |a: Option<f64>, b: Option<f64>| Some((b? - a?).max(0.0) / n);
        UnitCosts {
            service_cpu_us: diff(self.service_cpu_s, after.service_cpu_s).map(|s| s * 1e6),
            postgres_cpu_us: diff(self.postgres_cpu_s, after.postgres_cpu_s).map(|s| s * 1e6),
            redis_commands: diff(
                self.redis.map(|r| r.commands),
                after.redis.map(|r| r.commands),
            ),
            redis_bytes: diff(self.redis.map(|r| r.bytes), after.redis.map(|r| r.bytes)),
        }
    }
}

fn ticks_per_second() -> f64 {
    // Linux's USER_HZ: 100 on every architecture that matters here.
    100.0
}

/// utime + stime of a process, in seconds (from /proc/<pid>/stat).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu(&stat)
}

fn parse_cpu(stat: &str) -> Option<f64> {
    // Fields after the parenthesised command name: state is the 1st, utime the
    // 12th and stime the 13th (fields 14 and 15 of proc(5)).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second())
}

/// utime + stime of every process named `postgres…` on this machine; `None` when
/// there is none (a remote database).
pub fn postgres_cpu_seconds() -> Option<f64> {
    let mut total = 0.0;
    let mut found = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.starts_with("postgres")
            && let Some(s) = cpu_seconds(pid)
        {
            total += s;
            found = true;
        }
    }
    found.then_some(total)
}

async fn redis_stats(client: &redis::Client) -> Option<RedisStats> {
    let mut con = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut con)
        .await
        .ok()?;
    parse_redis_stats(&info)
}

fn parse_redis_stats(info: &str) -> Option<RedisStats> {
    let field = |name: &str| -> Option<f64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
    };
    Some(RedisStats {
        commands: field("total_commands_processed")?,
        bytes: field("total_net_input_bytes")? + field("total_net_output_bytes")?,
    })
}

/// What the cache holds in one Redis logical database: keys, and the bytes
/// Redis accounts to them (`MEMORY USAGE`, summed over a `SCAN` of the database;
/// a tool's walk, never a request path).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RedisFootprint {
    pub keys: u64,
    pub bytes: u64,
    /// Keys and bytes of the entries (`…:{scope}:<generation>:<logical>`), i.e.
    /// without generation counters and revocation sets.
    pub entry_keys: u64,
    pub entry_bytes: u64,
}

pub async fn redis_footprint(client: &redis::Client) -> anyhow::Result<RedisFootprint> {
    let mut con = client.get_multiplexed_async_connection().await?;
    let mut out = RedisFootprint::default();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(500)
            .query_async(&mut con)
            .await?;
        for key in keys {
            let bytes: Option<u64> = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(&key)
                .query_async(&mut con)
                .await?;
            let bytes = bytes.unwrap_or(0);
            out.keys += 1;
            out.bytes += bytes;
            if is_entry_key(&key) {
                out.entry_keys += 1;
                out.entry_bytes += bytes;
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    Ok(out)
}

/// `prefix:{scope}:<generation digits>:<logical>`.
fn is_entry_key(key: &str) -> bool {
    key.split_once("}:")
        .and_then(|(_, rest)| rest.split_once(':'))
        .is_some_and(|(generation, _)| {
            !generation.is_empty() && generation.bytes().all(|b| b.is_ascii_digit())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_from_proc_stat() {
        let stat = "4242 (journal-service) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 6 0 100 0 0";
        assert_eq!(parse_cpu(stat), Some(3.0));
        assert_eq!(parse_cpu("garbage"), None);
    }

    #[test]
    fn reads_redis_counters() {
        let info = "# Stats\r\ntotal_connections_received:5\r\ntotal_commands_processed:1200\r\n\
                    total_net_input_bytes:1000\r\ntotal_net_output_bytes:24000\r\n";
        assert_eq!(
            parse_redis_stats(info),
            Some(RedisStats {
                commands: 1200.0,
                bytes: 25000.0
            })
        );
        assert_eq!(parse_redis_stats("# Stats\r\n"), None);
    }

    #[test]
    fn costs_are_per_request() {
        let before = Reading {
            service_cpu_s: Some(1.0),
            postgres_cpu_s: None,
            redis: Some(RedisStats {
                commands: 100.0,
                bytes: 1000.0,
            }),
        };
        let after = Reading {
            service_cpu_s: Some(1.5),
            postgres_cpu_s: Some(2.0),
            redis: Some(RedisStats {
                commands: 1100.0,
                bytes: 11000.0,
            }),
        };
        let c = before.per_request(&after, 1000);
        assert_eq!(c.service_cpu_us, Some(500.0));
        assert_eq!(c.postgres_cpu_us, None);
        assert_eq!(c.redis_commands, Some(1.0));
        assert_eq!(c.redis_bytes, Some(10.0));
    }

    #[test]
    fn entry_keys_are_told_from_counters() {
        assert!(is_entry_key("kai:{journal:u1}:1733400000000:list:p1:s20"));
        assert!(!is_entry_key("kai:{journal:u1}:gen"));
        assert!(!is_entry_key("kai:revocations"));
    }
}
