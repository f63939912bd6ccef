//! How a Redis client is made from the configuration, and which start-up failures
//! are configuration errors.
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

/// A client for one Redis node.
pub fn client(url: &str, ca: Option<&CaBundle>) -> Result<redis::Client, String> {
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
    /// The routing client, and a plain client per seed node (for PUBLISH to
    /// whichever node answers: a cluster broadcasts it to all).
    Cluster(Box<(redis::cluster::ClusterClient, Vec<redis::Client>)>),
}

impl Target {
    /// From the configuration: `REDIS_CLUSTER_NODES` if set, else `REDIS_URL`.
    pub fn from_settings(settings: &crate::config::Settings) -> Result<Option<Self>, String> {
        use secrecy::ExposeSecret;
        let ca = settings.redis_ca.as_ref();
        if !settings.redis_cluster_nodes.is_empty() {
            let nodes: Vec<&str> = settings
                .redis_cluster_nodes
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
                .map(|c| Some(Self::Cluster(Box::new((c, seeds)))))
                .map_err(|e| format!("REDIS_CLUSTER_NODES: {e}"));
        }
        match &settings.redis_url {
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

    pub async fn connect(&self) -> redis::RedisResult<Link> {
        Ok(match self {
            Self::Node(c) => Link::Node(c.get_multiplexed_async_connection().await?),
            Self::Cluster(c) => Link::Cluster(c.0.get_async_connection().await?),
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
        for node in &c.1 {
            let sent = tokio::time::timeout(patience, async {
                let mut conn = node.get_multiplexed_async_connection().await?;
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
        }
        false
    }
}

/// Plain clients for each seed node, for the pub/sub subscriber: classic PUBLISH
/// is broadcast to every node of a cluster, so a subscription on any one node
/// hears every invalidation; when that node dies the subscriber moves to the next.
pub fn subscriber_nodes(settings: &crate::config::Settings) -> Result<Vec<redis::Client>, String> {
    use secrecy::ExposeSecret;
    let ca = settings.redis_ca.as_ref();
    if settings.redis_cluster_nodes.is_empty() {
        return settings
            .redis_url
            .iter()
            .map(|u| client(u.expose_secret(), ca).map_err(|e| format!("REDIS_URL: {e}")))
            .collect();
    }
    settings
        .redis_cluster_nodes
        .iter()
        .map(|u| client(u.expose_secret(), ca).map_err(|e| format!("REDIS_CLUSTER_NODES: {e}")))
        .collect()
}

/// A multiplexed connection to one node or to a cluster; the cache's commands
/// run on either unchanged.
#[derive(Clone)]
pub enum Link {
    Node(redis::aio::MultiplexedConnection),
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

impl redis::aio::ConnectionLike for Link {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Node(c) => c.req_packed_command(cmd),
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
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}
