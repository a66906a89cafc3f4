//! Reverse DNS (PTR) lookups for the `Reverse DNS` and `Sinkhole` columns (SPEC §4, §6; `[main] reverseDNS`).
//!
//! A slow or unreachable resolver must never stall a workbook, so every lookup is bounded:
//!
//! * one attempt per IP (no retries, no TCP fallback), cut off after `timeout` (`dns_timeout_ms`);
//! * a batch ([`ReverseResolver::lookup_many`]) runs up to [`MAX_IN_FLIGHT`] lookups at once and is itself cut
//!   off after [`BATCH_TIMEOUTS`] × `timeout`; IPs not answered by then are reported as `None` (no name) and
//!   counted in a warning.
//!
//! `dns_server = None` uses the system's resolver configuration (`/etc/resolv.conf`, the Windows registry); when
//! that cannot be read, the resolver is *disabled* — every lookup gives `None` — and [`ReverseResolver::new`]
//! returns a warning saying so, rather than failing the run. `Some(addr)` queries only that server, over UDP,
//! and ignores the hosts file.
//!
//! Names are returned without the trailing dot, in their ASCII (punycode) form; with several PTR records the
//! first one is used. NXDOMAIN, an empty answer, a timeout and any other error all mean "no name": VTTL wrote an
//! empty Reverse DNS cell in each of these cases.
//!
//! The resolver owns a small Tokio runtime, so callers need none; `lookup_many` may be called from plain
//! threads or from inside another Tokio runtime (it then runs on a helper thread instead of blocking the
//! caller's runtime).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, NameServerConfigGroup, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;

/// Lookups in flight at once within one batch.
pub const MAX_IN_FLIGHT: usize = 64;
/// A whole batch is bounded by this many single-lookup timeouts.
pub const BATCH_TIMEOUTS: u32 = 3;

/// The resolver could not be set up at all.
#[derive(Debug, thiserror::Error)]
pub enum ReverseDnsError {
    #[error("cannot start the reverse-DNS runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Reverse lookups with bounded time.
pub struct ReverseResolver {
    /// `Option` only so `Drop` can shut it down without blocking.
    runtime: Option<tokio::runtime::Runtime>,
    /// `None`: disabled (the system configuration could not be read).
    resolver: Option<Arc<TokioResolver>>,
    timeout: Duration,
}

impl std::fmt::Debug for ReverseResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReverseResolver")
            .field("enabled", &self.resolver.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ReverseResolver {
    /// A resolver using `server` (UDP only) or, when `None`, the system configuration. The second value is a
    /// warning to log when the system configuration could not be read and reverse DNS is disabled.
    pub fn new(
        server: Option<SocketAddr>,
        timeout: Duration,
    ) -> Result<(Self, Option<String>), ReverseDnsError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("reverse-dns")
            .enable_all()
            .build()
            .map_err(ReverseDnsError::Runtime)?;
        let provider = TokioConnectionProvider::default();
        let (builder, warning) = match server {
            Some(addr) => {
                let group = NameServerConfigGroup::from(vec![NameServerConfig::new(addr, Protocol::Udp)]);
                let config = ResolverConfig::from_parts(None, Vec::new(), group);
                let mut builder = TokioResolver::builder_with_config(config, provider);
                builder.options_mut().use_hosts_file = ResolveHosts::Never;
                (Some(builder), None)
            }
            None => match TokioResolver::builder(provider) {
                Ok(builder) => (Some(builder), None),
                Err(e) => (
                    None,
                    Some(format!("reverse DNS disabled: cannot read the system resolver configuration: {e}")),
                ),
            },
        };
        let resolver = builder.map(|mut builder| {
            let options = builder.options_mut();
            options.timeout = timeout;
            options.attempts = 0; // one try, no retry
            options.try_tcp_on_error = false;
            options.num_concurrent_reqs = 1;
            Arc::new(builder.build())
        });
        Ok((ReverseResolver { runtime: Some(runtime), resolver, timeout }, warning))
    }

    /// A resolver that never answers (every lookup gives `None`): for `reverseDNS=False` or tests.
    pub fn disabled() -> Result<Self, ReverseDnsError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ReverseDnsError::Runtime)?;
        Ok(ReverseResolver { runtime: Some(runtime), resolver: None, timeout: Duration::ZERO })
    }

    /// Whether lookups are actually made.
    pub fn is_enabled(&self) -> bool {
        self.resolver.is_some()
    }

    /// Time allowed for one lookup.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The PTR name of one IP, or `None`.
    pub fn lookup(&self, ip: IpAddr) -> Option<String> {
        self.lookup_many(&[ip]).remove(&ip).flatten()
    }

    /// PTR names of many IPs, looked up concurrently. Every distinct input IP is a key of the result.
    pub fn lookup_many(&self, ips: &[IpAddr]) -> HashMap<IpAddr, Option<String>> {
        let mut seen = std::collections::HashSet::new();
        let distinct: Vec<IpAddr> = ips.iter().copied().filter(|ip| seen.insert(*ip)).collect();
        let mut result: HashMap<IpAddr, Option<String>> = distinct.iter().map(|ip| (*ip, None)).collect();
        let (Some(resolver), Some(runtime)) = (self.resolver.clone(), self.runtime.as_ref()) else {
            return result;
        };
        if distinct.is_empty() {
            return result;
        }
        let batch = lookup_batch(resolver, distinct, self.timeout);
        let answers = if tokio::runtime::Handle::try_current().is_ok() {
            // Blocking inside the caller's runtime would panic: run the batch from a helper thread.
            std::thread::scope(|scope| scope.spawn(|| runtime.block_on(batch)).join().unwrap_or_default())
        } else {
            runtime.block_on(batch)
        };
        for (ip, name) in answers {
            result.insert(ip, name);
        }
        result
    }
}

impl Drop for ReverseResolver {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Never blocks, so dropping is safe inside an async context too.
            runtime.shutdown_background();
        }
    }
}

/// Looks up every IP with at most [`MAX_IN_FLIGHT`] in flight; the whole batch ends after
/// [`BATCH_TIMEOUTS`] × `timeout`; whatever is still running then is dropped (and counted in a warning).
async fn lookup_batch(
    resolver: Arc<TokioResolver>,
    ips: Vec<IpAddr>,
    timeout: Duration,
) -> Vec<(IpAddr, Option<String>)> {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    let ips_len = ips.len();
    for ip in ips {
        let resolver = Arc::clone(&resolver);
        let permits = Arc::clone(&permits);
        tasks.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return (ip, None);
            };
            let name = match tokio::time::timeout(timeout, resolver.reverse_lookup(ip)).await {
                Ok(Ok(answer)) => answer.iter().next().map(|ptr| ptr.0.to_ascii()),
                _ => None,
            };
            (ip, name.map(|n| n.trim_end_matches('.').to_string()).filter(|n| !n.is_empty()))
        });
    }
    let mut answers = Vec::new();
    // A hard bound for the whole batch, however many IPs: an unreachable resolver must not stall a workbook for
    // ⌈n / MAX_IN_FLIGHT⌉ timeouts. What does not finish stays empty (a later run can fill it) and is logged.
    let deadline = tokio::time::Instant::now() + timeout.saturating_mul(BATCH_TIMEOUTS);
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {
        if let Ok(answer) = joined {
            answers.push(answer);
        }
    }
    if !tasks.is_empty() {
        tracing::warn!(
            "reverse DNS: {} of {ips_len} lookups did not finish within {:?} and stay empty",
            tasks.len(),
            timeout.saturating_mul(BATCH_TIMEOUTS)
        );
    }
    tasks.abort_all();
    answers
}
