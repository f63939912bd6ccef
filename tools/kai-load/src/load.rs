//! The load loop: N keep-alive HTTP/1.1 connections (hyper, no pooling layer in
//! between), each sending its next request as soon as the previous answer has
//! been read in full, for a fixed time. Latency is recorded per request in an HDR
//! histogram per connection, merged at the end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::report::histogram;

/// A service's address as the load loop needs it.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: HeaderValue,
}

impl Target {
    /// From `http://host:port` (plain HTTP only; hostnames are resolved once).
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("{url}: only http:// URLs are supported"))?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let addr = std::net::ToSocketAddrs::to_socket_addrs(authority)
            .with_context(|| format!("resolving {authority}"))?
            .next()
            .with_context(|| format!("{authority} resolves to nothing"))?;
        Ok(Self {
            addr,
            host: HeaderValue::from_str(authority)?,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.host.to_str().unwrap_or_default())
    }
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: Method,
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl Req {
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            method: Method::GET,
            path: path.into(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn json(mut self, method: Method, body: Bytes) -> Self {
        self.method = method;
        self.body = body;
        self.headers.push((
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ));
        self
    }
}

/// Makes connection `conn`'s `n`-th request.
pub type RequestFn = Arc<dyn Fn(usize, u64) -> Req + Send + Sync>;

/// A reusable HTTP/1.1 connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: HeaderValue,
}

impl Conn {
    pub async fn open(target: &Target) -> Result<Self> {
        let stream = TcpStream::connect(target.addr)
            .await
            .with_context(|| format!("connecting to {}", target.addr))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            sender,
            host: target.host.clone(),
        })
    }

    /// Sends one request and reads the whole answer: (status, headers, body).
    pub async fn send(&mut self, req: &Req) -> Result<(u16, hyper::HeaderMap, Bytes)> {
        self.sender.ready().await?;
        let mut builder = Request::builder()
            .method(req.method.clone())
            .uri(req.path.as_str())
            .header(hyper::header::HOST, self.host.clone());
        for (k, v) in &req.headers {
            builder = builder.header(k, v);
        }
        let request = builder.body(Full::new(req.body.clone()))?;
        let response = self.sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok((parts.status.as_u16(), parts.headers, body))
    }
}

/// Live counters, read by the progress line.
#[derive(Default)]
pub struct Progress {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
}

/// What a fixed-duration run measured.
pub struct RunOutcome {
    pub histogram: Histogram<u64>,
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// First few distinct error descriptions.
    pub error_samples: Vec<String>,
}

/// Runs `make` on `connections` connections for `duration`, printing a progress
/// line on stderr every second, and calling `sample` (e.g. RSS) every 100 ms.
pub async fn run(
    label: &str,
    target: &Target,
    connections: usize,
    duration: Duration,
    make: RequestFn,
    mut sample: impl FnMut() + Send,
) -> Result<RunOutcome> {
    // Open every connection first, so the clock measures requests, not handshakes.
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(Conn::open(target).await?);
    }
    let progress = Arc::new(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(connections);
    for (i, mut conn) in conns.into_iter().enumerate() {
        let make = make.clone();
        let progress = progress.clone();
        let stop = stop.clone();
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut errors = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let req = make(i, n);
                n += 1;
                let t0 = Instant::now();
                let result = conn.send(&req).await;
                let us = t0.elapsed().as_micros() as u64;
                let _ = hist.record(us.max(1));
                progress.requests.fetch_add(1, Ordering::Relaxed);
                let failure = match result {
                    Ok((status, _, _)) if status < 400 => None,
                    Ok((status, _, body)) => Some(format!(
                        "{} {} → {status} {}",
                        req.method,
                        req.path,
                        String::from_utf8_lossy(&body[..body.len().min(160)])
                    )),
                    Err(e) => {
                        // The connection is gone: open a new one and go on.
                        let msg = format!("{} {} → {e:#}", req.method, req.path);
                        match Conn::open(&target).await {
                            Ok(c) => conn = c,
                            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                        Some(msg)
                    }
                };
                if let Some(msg) = failure {
                    progress.errors.fetch_add(1, Ordering::Relaxed);
                    if errors.len() < 3 {
                        errors.push(msg);
                    }
                }
            }
            (hist, errors)
        }));
    }

    let mut last_print = Instant::now();
    let mut last_requests = 0u64;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep((deadline - now).min(Duration::from_millis(100))).await;
        sample();
        if last_print.elapsed() >= Duration::from_secs(1) {
            let requests = progress.requests.load(Ordering::Relaxed);
            let rate = (requests - last_requests) as f64 / last_print.elapsed().as_secs_f64();
            eprint!(
                "\r  {label}: {:>5.1}s/{:.0}s  {requests:>9} requests  {rate:>8.0} req/s  {} errors   ",
                started.elapsed().as_secs_f64(),
                duration.as_secs_f64(),
                progress.errors.load(Ordering::Relaxed),
            );
            last_print = Instant::now();
            last_requests = requests;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut merged = histogram();
    let mut error_samples = Vec::new();
    for t in tasks {
        let (h, errs) = t.await?;
        merged.add(&h)?;
        for e in errs {
            if error_samples.len() < 5 && !error_samples.contains(&e) {
                error_samples.push(e);
            }
        }
    }
    let elapsed = started.elapsed();
    eprint!("\r{}\r", " ".repeat(100));
    Ok(RunOutcome {
        requests: merged.len(),
        errors: progress.errors.load(Ordering::Relaxed),
        histogram: merged,
        elapsed,
        error_samples,
    })
}

/// Opens `n` connections, then sends one request on each at the same moment
/// (behind a barrier); returns each request's (status, X-Cache, latency in µs).
pub async fn burst(target: &Target, n: usize, req: Req) -> Result<Vec<(u16, String, u64)>> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(Conn::open(target).await?);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::with_capacity(n);
    for mut conn in conns {
        let barrier = barrier.clone();
        let req = req.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let t0 = Instant::now();
            let (status, headers, _) = conn.send(&req).await?;
            let us = t0.elapsed().as_micros() as u64;
            let cache = headers
                .get("x-cache")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            anyhow::Ok((status, cache, us))
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await??);
    }
    if out.is_empty() {
        bail!("empty burst");
    }
    Ok(out)
}

/// GETs a path on a fresh connection and returns the body as text (e.g. /metrics).
pub async fn get_text(target: &Target, path: &str) -> Result<String> {
    let mut conn = Conn::open(target).await?;
    let (status, _, body) = conn.send(&Req::get(path)).await?;
    if status != 200 {
        bail!("GET {path} → {status}");
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}
