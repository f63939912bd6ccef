//! How a Redis client is made from the configuration, the connections made from
//! it ([`Link`]), and which start-up failures are configuration errors.
//!
//! `rediss://` is TLS (rustls, ring), verified against `REDIS_CA_FILE` or the
//! system roots; `redis://user:password@host` is ACL auth, which the redis crate
//! sends as `AUTH user password` on every new connection.
//!
//! A wrong password or a certificate that does not verify never heals by itself,
//! so it stops the process at start with one line naming the variable (never the
//! URL, which holds the password). A Redis that is merely unreachable at start is
//! an outage, not a mistake: the service starts degraded, as it always has.

use crate::tls::CaBundle;

/// A client for one Redis node. It sends no `CLIENT SETINFO` on connecting:
/// the services' Redis ACL users (`docker/redis/users.acl`) are not granted it
/// (it does not exist before Redis 7.2, where the file must load too), so each
/// connection would leave a denial in `ACL LOG`.
pub fn client(url: &str, ca: Option<&CaBundle>) -> Result<redis::Client, String> {
    let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| e.to_string())?;
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    let url = info.set_redis_settings(settings);
    match ca {
        None => redis::Client::open(url).map_err(|e| e.to_string()),
        Some(ca) => {
            let pem = ca
                .pem()
                .map_err(|e| format!("REDIS_CA_FILE {}: {e}", ca.path.display()))?;
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(|e| e.to_string())
        }
    }
}

/// True when `e` says the configuration is wrong (credentials, TLS trust), as
/// opposed to Redis being unreachable.
pub fn is_configuration_error(e: &redis::RedisError) -> bool {
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        return true;
    }
    if matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM")) {
        return true;
    }
    // rustls failures arrive as I/O errors: the handshake's words say which.
    let text = e.to_string();
    [
        "invalid peer certificate",
        "UnknownIssuer",
        "not valid for name",
        "InvalidContentType",
        "CorruptMessage",
    ]
    .iter()
    .any(|w| text.contains(w))
}

/// Where the cache's commands go: one node, or a Redis Cluster (routed by key
/// slot; every multi-key script keeps its keys in one slot through hash tags).
#[derive(Clone)]
pub enum Target {
    Node(Box<redis::Client>),
    /// The routing client, a plain client per seed node (for PUBLISH to
    /// whichever node answers: a cluster broadcasts it to all), and the
    /// connections to those seeds, kept for the next PUBLISH.
    Cluster(Box<(redis::cluster::ClusterClient, Vec<redis::Client>, Relays)>),
}

/// One lazily opened multiplexed connection per seed node, shared by clones: a
/// failover announces "forget this scope" on every failed write, and a fresh
/// connection (TCP, TLS, AUTH) per announcement would load the surviving nodes
/// with handshakes exactly while they take over.
pub type Relays = std::sync::Arc<std::sync::Mutex<Vec<Option<redis::aio::MultiplexedConnection>>>>;

impl Target {
    /// From the configuration: `REDIS_CLUSTER_NODES` if set, else `REDIS_URL`.
    pub fn from_settings(
        settings: &crate::settings::RedisSettings,
    ) -> Result<Option<Self>, String> {
        use secrecy::ExposeSecret;
        let ca = settings.ca.as_ref();
        if !settings.cluster_nodes.is_empty() {
            let nodes: Vec<&str> = settings
                .cluster_nodes
                .iter()
                .map(|n| n.expose_secret())
                .collect();
            let mut builder = redis::cluster::ClusterClientBuilder::new(nodes)
                // The circuit breaker and the per-command timeout decide; the
                // client retries a moved slot, never for long.
                .retries(2)
                .min_retry_wait(10)
                .max_retry_wait(100);
            if let Some(ca) = ca {
                let pem = ca
                    .pem()
                    .map_err(|e| format!("REDIS_CA_FILE {}: {e}", ca.path.display()))?;
                builder = builder.certs(redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                });
            }
            let seeds = subscriber_nodes(settings)?;
            return builder
                .build()
                .map(|c| {
                    let relays =
                        std::sync::Arc::new(std::sync::Mutex::new(vec![None; seeds.len()]));
                    Some(Self::Cluster(Box::new((c, seeds, relays))))
                })
                .map_err(|e| format!("REDIS_CLUSTER_NODES: {e}"));
        }
        match &settings.url {
            None => Ok(None),
            Some(url) => client(url.expose_secret(), ca)
                .map(|c| Some(Self::Node(Box::new(c))))
                .map_err(|e| format!("REDIS_URL: {e}")),
        }
    }

    /// The variable that configured this target (for start-up errors).
    pub fn variable(&self) -> &'static str {
        match self {
            Self::Node(_) => "REDIS_URL",
            Self::Cluster(_) => "REDIS_CLUSTER_NODES",
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// A connection that reconnects by itself (a connection manager on one node;
    /// a cluster connection does anyway): for long-lived users such as events.
    pub async fn connect_managed(&self) -> redis::RedisResult<Link> {
        Ok(match self {
            Self::Node(c) => {
                Link::Managed(redis::aio::ConnectionManager::new((**c).clone()).await?)
            }
            Self::Cluster(c) => Link::Cluster(c.0.get_async_connection().await?),
        })
    }

    pub async fn connect(&self) -> redis::RedisResult<Link> {
        Ok(match self {
            Self::Node(c) => Link::Node(c.get_multiplexed_async_connection().await?),
            Self::Cluster(c) => Link::Cluster(c.0.get_async_connection().await?),
        })
    }

    /// A connection for commands the server holds on purpose (`XREADGROUP …
    /// BLOCK`): the client's own response timeout (500 ms by default) is raised
    /// to `patience`, else every quiet blocking read fails and the connection is
    /// replaced. The caller bounds each command itself.
    pub async fn connect_blocking(
        &self,
        patience: std::time::Duration,
    ) -> redis::RedisResult<Link> {
        Ok(match self {
            Self::Node(c) => {
                let config =
                    redis::AsyncConnectionConfig::new().set_response_timeout(Some(patience));
                Link::Node(
                    c.get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
            Self::Cluster(c) => {
                let config = redis::cluster::ClusterConfig::new().set_response_timeout(patience);
                Link::Cluster(c.0.get_async_connection_with_config(config).await?)
            }
        })
    }

    /// Cluster only: PUBLISH through the first seed node that answers within
    /// `patience` (a node that lost its slots still relays pub/sub). True if sent.
    pub async fn publish_anywhere(
        &self,
        channel: &str,
        message: &str,
        patience: std::time::Duration,
    ) -> bool {
        let Self::Cluster(c) = self else {
            return false;
        };
        let (seeds, relays) = (&c.1, &c.2);
        for (i, node) in seeds.iter().enumerate() {
            let cached = relays.lock().expect("relays lock")[i].clone();
            let sent = tokio::time::timeout(patience, async {
                let mut conn = match cached {
                    Some(conn) => conn,
                    None => {
                        let conn = node.get_multiplexed_async_connection().await?;
                        relays.lock().expect("relays lock")[i] = Some(conn.clone());
                        conn
                    }
                };
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(message)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await;
            if matches!(sent, Ok(Ok(_))) {
                return true;
            }
            // Failed or silent: the next announcement reconnects.
            relays.lock().expect("relays lock")[i] = None;
        }
        false
    }
}

/// Plain clients for each seed node, for the pub/sub subscriber: classic PUBLISH
/// is broadcast to every node of a cluster, so a subscription on any one node
/// hears every invalidation; when that node dies the subscriber moves to the next.
pub fn subscriber_nodes(
    settings: &crate::settings::RedisSettings,
) -> Result<Vec<redis::Client>, String> {
    use secrecy::ExposeSecret;
    let ca = settings.ca.as_ref();
    if settings.cluster_nodes.is_empty() {
        return settings
            .url
            .iter()
            .map(|u| client(u.expose_secret(), ca).map_err(|e| format!("REDIS_URL: {e}")))
            .collect();
    }
    settings
        .cluster_nodes
        .iter()
        .map(|u| client(u.expose_secret(), ca).map_err(|e| format!("REDIS_CLUSTER_NODES: {e}")))
        .collect()
}

/// A multiplexed connection to one node or to a cluster; the cache's commands
/// run on either unchanged.
#[derive(Clone)]
pub enum Link {
    Node(redis::aio::MultiplexedConnection),
    /// One node, reconnecting by itself.
    Managed(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Link {
    /// Runs `cmd` on the primary of `key`'s slot: on a cluster, keyless commands
    /// (`SCAN`) would otherwise go to a random node.
    pub async fn query_on_slot_of<T: redis::FromRedisValue>(
        &mut self,
        key: &str,
        cmd: redis::Cmd,
    ) -> redis::RedisResult<T> {
        use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
        match self {
            Self::Node(c) => cmd.query_async(c).await,
            Self::Managed(c) => cmd.query_async(c).await,
            Self::Cluster(c) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let value = c
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                Ok(redis::from_redis_value(value)?)
            }
        }
    }
}

impl Link {
    /// Deletes every key matching `pattern` (`SCAN MATCH` + `UNLINK`), on one node
    /// or on every primary of a cluster (a `SCAN` cursor belongs to one node, and
    /// the cluster client would send a keyless command to a random one). Recovery
    /// paths only, never a request. Each command is bounded by `patience`.
    /// Returns how many keys were removed.
    pub async fn unlink_matching(
        &mut self,
        pattern: &str,
        patience: std::time::Duration,
    ) -> redis::RedisResult<u64> {
        use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
        let nodes: Vec<Option<(String, u16)>> = match self {
            Self::Node(_) | Self::Managed(_) => vec![None],
            Self::Cluster(_) => self
                .primaries(patience)
                .await?
                .into_iter()
                .map(Some)
                .collect(),
        };
        let mut removed = 0;
        for node in nodes {
            let mut cursor: u64 = 0;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000);
                let (next, found): (u64, Vec<String>) = bounded(patience, async {
                    match (&mut *self, &node) {
                        (Self::Cluster(c), Some((host, port))) => {
                            let routing =
                                RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                                    host: host.clone(),
                                    port: *port,
                                });
                            redis::from_redis_value(c.route_command(scan, routing).await?)
                                .map_err(redis::RedisError::from)
                        }
                        (link, _) => scan.query_async(link).await,
                    }
                })
                .await?;
                if !found.is_empty() {
                    // On a cluster the client splits a multi-key UNLINK by slot.
                    removed += bounded(
                        patience,
                        redis::cmd("UNLINK")
                            .arg(&found)
                            .query_async::<u64>(&mut *self),
                    )
                    .await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(removed)
    }

    /// The addresses of the cluster's primaries that are not failed (`CLUSTER NODES`).
    async fn primaries(
        &mut self,
        patience: std::time::Duration,
    ) -> redis::RedisResult<Vec<(String, u16)>> {
        let nodes: String = bounded(
            patience,
            redis::cmd("CLUSTER").arg("NODES").query_async(self),
        )
        .await?;
        Ok(parse_primaries(&nodes))
    }
}

/// `(host, port)` of every primary in a `CLUSTER NODES` answer that serves slots
/// and is not marked failed.
fn parse_primaries(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if !flags.contains("master") || flags.contains("fail") || fields.len() < 9 {
                return None;
            }
            // ip:port@cport[,hostname]
            let address = fields[1].split('@').next()?;
            let (host, port) = address.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

async fn bounded<T>(
    patience: std::time::Duration,
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout(patience, f).await.unwrap_or_else(|_| {
        Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "redis command timed out",
        )))
    })
}

impl redis::aio::ConnectionLike for Link {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Node(c) => c.req_packed_command(cmd),
            Self::Managed(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(c) => c.get_db(),
            Self::Managed(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn primaries_are_the_live_masters_that_serve_slots() {
        let nodes = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7002@17002 master - 0 1 2 connected 5461-10922
c3 127.0.0.1:7003@17003 master,fail - 0 1 3 connected 10923-16383
d4 127.0.0.1:7004@17004 slave b2 0 1 2 connected
e5 10.0.0.5:7005@17005,redis-5.internal master - 0 1 5 connected 10923-16383
f6 127.0.0.1:7006@17006 master - 0 1 6 connected
";
        assert_eq!(
            super::parse_primaries(nodes),
            vec![
                ("127.0.0.1".to_owned(), 7001),
                ("127.0.0.1".to_owned(), 7002),
                ("10.0.0.5".to_owned(), 7005),
            ]
        );
    }
}
