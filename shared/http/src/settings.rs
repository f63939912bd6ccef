//! The HTTP layer's settings group (nested in the platform's `Settings`).

use kai_shared::settings::{comma_list, fraction, millis, positive_millis};

/// The HTTP settings: who is believed about the client's address, when a
/// request is slow or logged, how long a body may take, which origins may call.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpSettings {
    /// Peers whose `X-Forwarded-For` is believed.
    #[arg(long = "trusted-proxies", env = "TRUSTED_PROXIES", default_value = "", value_parser = cidr_list,
        help = "CIDR list; `X-Forwarded-For` is believed only from these peers (then the \
                rightmost untrusted hop is the client)")]
    pub trusted_proxies: ::std::vec::Vec<ipnet::IpNet>,
    #[arg(long = "slow-request-threshold-ms", env = "SLOW_REQUEST_THRESHOLD_MS",
        default_value = "1000", value_parser = millis,
        help = "slower requests are logged as warnings")]
    pub slow_request_threshold: std::time::Duration,
    #[arg(long = "access-log-sample", env = "ACCESS_LOG_SAMPLE", default_value = "0.01",
        value_parser = fraction,
        help = "share of requests written as a `request` log line (route pattern, status, duration): \
                0 = none, 1 = every request; server errors and slow requests are always logged")]
    pub access_log_sample: f64,
    #[arg(long = "request-body-timeout-ms", env = "REQUEST_BODY_TIMEOUT_MS",
        default_value = "10000", value_parser = positive_millis,
        help = "a request body must arrive within this time of being asked for, else 408 \
                (slow clients: a 4 MiB batch import needs about 420 KB/s)")]
    pub request_body_timeout: std::time::Duration,
    #[arg(long = "cors-allowed-origins", env = "CORS_ALLOWED_ORIGINS", default_value = "", value_parser = comma_list,
        help = "comma-separated origins; scripts may read `Retry-After`, `ETag`, `Location`, \
                `X-Request-Id`, `X-Cache`; a preflight offers only the route's methods and the \
                headers `Authorization`, `Content-Type`, `If-None-Match`, `X-Request-Id`")]
    pub cors_allowed_origins: ::std::vec::Vec<String>,
}

fn cidr_list(raw: &str) -> Result<Vec<ipnet::IpNet>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("not a CIDR: {c:?}"))
        })
        .collect()
}
