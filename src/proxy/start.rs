//! `keel grpc-proxy start`: flags (etcd 3.4's), TLS on both sides, one executor per core
//! serving the proxy's router on `--listen-addr` (SO_REUSEPORT: every core accepts), the
//! cores linked by channels for watch coalescing and scrapes, `--metrics-addr`, and the
//! registration under `--resolver-prefix`.
//!
//! Runs on: the main thread (parse, files, boot), then one pinned executor per core.

use super::args::{self, Spec};
use super::forward::{self, Ctx};
use super::watch::{self, Msg};
use super::{cache, lease, namespace, register, upstream};
use crate::grpc::http1::{HttpHandler, HttpRequest, HttpResponse};
use crate::grpc::server::{self as gserver, Router};
use crate::runtime::{executor_builder, log};
use crate::tls::stream::{Acceptor, Mode};
use glommio::channels::shared_channel;
use glommio::net::TcpListener;
use glommio::Placement;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

/// etcd 3.4's `grpc-proxy start` flags.
pub const SPECS: &[Spec] = &[
    Spec::value("listen-addr", "127.0.0.1:23790", "listen address"),
    Spec::value("discovery-srv", "", "domain name to query for SRV records describing cluster endpoints (not supported)"),
    Spec::value("discovery-srv-name", "", "service name to query when using DNS discovery (not supported)"),
    Spec::value("metrics-addr", "", "listen for endpoint /metrics requests on an additional interface"),
    Spec::switch("insecure-discovery", "accept insecure SRV records"),
    Spec::value("endpoints", "127.0.0.1:2379", "comma separated etcd cluster endpoints"),
    Spec::value("advertise-client-url", "127.0.0.1:23790", "advertise address to register (must be reachable by client)"),
    Spec::value("resolver-prefix", "", "prefix to use for registering proxy (must be shared with other grpc-proxy members)"),
    Spec::value("resolver-ttl", "0", "specify TTL, in seconds, when registering proxy endpoints"),
    Spec::value("namespace", "", "string to prefix to all keys for namespacing requests"),
    Spec::switch("enable-pprof", "Enable runtime profiling data via HTTP server (Keel: accepted, no profiler; use perf)"),
    Spec::value("data-dir", "default.proxy", "Data directory for persistent data"),
    Spec::value("max-send-bytes", "1572864", "message send limits in bytes"),
    Spec::value("max-recv-bytes", "2147483647", "message receive limits in bytes"),
    Spec::value("cert", "", "identify secure connections with etcd servers using this TLS certificate file"),
    Spec::value("key", "", "identify secure connections with etcd servers using this TLS key file"),
    Spec::value("cacert", "", "verify certificates of TLS-enabled secure etcd servers using this CA bundle"),
    Spec::switch("insecure-skip-tls-verify", "skip authentication of etcd server TLS certificates (CAUTION: this option should be enabled only for testing purposes)"),
    Spec::value("cert-file", "", "identify secure connections to the proxy using this TLS certificate file"),
    Spec::value("key-file", "", "identify secure connections to the proxy using this TLS key file"),
    Spec::value("trusted-ca-file", "", "verify certificates of TLS-enabled secure proxy using this CA bundle"),
    Spec::value("listen-cipher-suites", "", "Comma-separated list of supported TLS cipher suites between client/proxy (empty will be auto-populated)"),
    Spec::switch("auto-tls", "proxy TLS using generated certificates"),
    Spec::value("client-crl-file", "", "proxy client certificate revocation list file."),
    Spec::switch("experimental-serializable-ordering", "Ensure serializable reads have monotonically increasing store revisions across endpoints (not supported)"),
    Spec::value("experimental-leasing-prefix", "", "leasing metadata prefix for disconnected linearized reads (not supported)"),
    Spec::switch("debug", "Enable debug-level logging for grpc-proxy."),
    Spec::value("max-concurrent-streams", "4294967295", "Maximum concurrent streams that each client can open at a time."),
    Spec::value("cores", "", "Keel: executors (one per CPU by default)"),
];

fn usage() -> String {
    format!(
        "start the grpc proxy\n\nUsage:\n  keel grpc-proxy start [flags]\n\nFlags:\n{}",
        args::flags_help(SPECS)
    )
}

/// The largest request a proxy client may send (grpc-go's server default).
const PROXY_REQUEST_BYTES_MAX: usize = 4 << 20;

/// What the cores need, built on the main thread.
#[derive(Clone)]
struct Plan {
    listen: SocketAddr,
    metrics: Option<(SocketAddr, bool)>,
    endpoints: Vec<upstream::Endpoint>,
    dial_tls: Option<Arc<rustls::ClientConfig>>,
    serve_tls: Option<crate::tls::Material>,
    namespace: String,
    resolver_prefix: String,
    resolver_ttl: i64,
    advertise: String,
    max_streams: u32,
}

/// Runs `keel grpc-proxy …` (`argv` after `grpc-proxy`).
pub fn main(argv: &[String]) -> Result<(), String> {
    let a = args::parse(argv, SPECS)?;
    if a.help {
        println!("{}", usage());
        return Ok(());
    }
    if a.positional.is_empty() {
        println!("{}", usage());
        return Ok(());
    }
    super::verb(&a.positional, &usage())?;
    let get = |n: &str| a.get(SPECS, n).to_string();
    let ttl: i64 = get("resolver-ttl").parse().map_err(|_| {
        format!(
            "invalid argument {:?} for \"--resolver-ttl\" flag",
            get("resolver-ttl")
        )
    })?;
    let prefix = get("resolver-prefix");
    if !prefix.is_empty() && ttl < 1 {
        return Err(format!("invalid resolver-ttl {ttl}"));
    }
    if prefix.is_empty() && ttl > 0 {
        return Err(format!("invalid resolver-prefix {prefix:?}"));
    }
    if !prefix.is_empty() && get("advertise-client-url").is_empty() {
        return Err(format!(
            "invalid advertise-client-url {:?}",
            get("advertise-client-url")
        ));
    }
    if !get("discovery-srv").is_empty() {
        return Err(
            "--discovery-srv: DNS SRV discovery is not supported by Keel; list --endpoints".into(),
        );
    }
    for (f, what) in [
        (
            "experimental-serializable-ordering",
            "serializable ordering",
        ),
        ("experimental-leasing-prefix", "the leasing KV"),
    ] {
        if a.given(f) && get(f) != "false" && !get(f).is_empty() {
            log::warning(
                "grpcproxy",
                &format!("--{f}: {what} is not supported by Keel; ignored"),
            );
        }
    }
    if a.flag(SPECS, "enable-pprof") {
        log::info(
            "grpcproxy",
            "--enable-pprof: Keel has no Go profiler; profile with perf (nothing is served at /debug/pprof/)",
        );
    }
    let endpoints = upstream::endpoints(&a.list(SPECS, "endpoints"))?;

    // Upstream TLS (`--cert`, `--key`, `--cacert`): the certificate must carry no Common
    // Name, or the cluster would take every forwarded call as that user (etcd's rule).
    let (cert, key, ca) = (get("cert"), get("key"), get("cacert"));
    let skip_verify = a.flag(SPECS, "insecure-skip-tls-verify");
    let dial_tls = if cert.is_empty() && key.is_empty() && ca.is_empty() && !skip_verify {
        None
    } else {
        if !cert.is_empty() {
            let pem = std::fs::read(&cert).map_err(|e| format!("open {cert}: {e}"))?;
            if let Some(cn) = first_cert_cn(&pem) {
                if !cn.is_empty() {
                    return Err(format!("cert has non empty Common Name ({cn})"));
                }
            }
        }
        if skip_verify {
            log::warning(
                "grpcproxy",
                "--insecure-skip-tls-verify was given, this grpc proxy process skips authentication of etcd server TLS certificates. This option should be enabled only for testing purposes.",
            );
        }
        Some(crate::tls::dial_config(
            std::path::Path::new(&ca),
            std::path::Path::new(&cert),
            std::path::Path::new(&key),
            skip_verify,
        )?)
    };

    // Downstream TLS (`--cert-file`, `--key-file`, `--trusted-ca-file`, `--auto-tls`).
    let mut info = crate::tls::TlsInfo {
        cert_file: get("cert-file").into(),
        key_file: get("key-file").into(),
        trusted_ca_file: get("trusted-ca-file").into(),
        crl_file: get("client-crl-file").into(),
        ..Default::default()
    };
    for suite in a.list(SPECS, "listen-cipher-suites") {
        crate::tls::cipher_suite(&suite)?;
        info.versions.cipher_suites.push(suite);
    }
    let listen: SocketAddr = get("listen-addr")
        .parse()
        .map_err(|e| format!("--listen-addr {:?}: {e}", get("listen-addr")))?;
    let serve_tls = if !info.is_empty() || !info.trusted_ca_file.as_os_str().is_empty() {
        Some(info.load()?)
    } else if a.flag(SPECS, "auto-tls") {
        let side = crate::tls::Side {
            info,
            auto: Some(crate::tls::Auto {
                dir: PathBuf::from(get("data-dir"))
                    .join("fixtures")
                    .join("proxy"),
                hosts: vec![listen.ip().to_string()],
                validity_years: 1,
                client_auth: false,
            }),
        };
        Some(side.prepare()?)
    } else {
        None
    };
    let metrics = match get("metrics-addr").as_str() {
        "" => None,
        m => {
            let (tls, hostport) = match m.split_once("://") {
                Some(("https", rest)) => (true, rest),
                Some(("http", rest)) => (false, rest),
                Some((scheme, _)) => {
                    return Err(format!("--metrics-addr {m:?}: unknown scheme {scheme:?}"))
                }
                None => (false, m),
            };
            if tls && serve_tls.is_none() {
                return Err("--metrics-addr https needs --cert-file and --key-file".into());
            }
            let addr: SocketAddr = hostport
                .trim_end_matches('/')
                .parse()
                .map_err(|e| format!("--metrics-addr {m:?}: {e}"))?;
            Some((addr, tls))
        }
    };
    for addr in std::iter::once(listen).chain(metrics.map(|m| m.0)) {
        std::net::TcpListener::bind(addr).map_err(|e| format!("listen tcp {addr}: bind: {e}"))?;
    }
    for f in ["max-send-bytes", "max-recv-bytes"] {
        get(f)
            .parse::<u64>()
            .map_err(|_| format!("invalid argument {:?} for \"--{f}\" flag", get(f)))?;
    }
    let plan = Plan {
        listen,
        metrics,
        endpoints,
        dial_tls,
        serve_tls,
        namespace: get("namespace"),
        resolver_prefix: prefix,
        resolver_ttl: ttl,
        advertise: get("advertise-client-url"),
        max_streams: get("max-concurrent-streams").parse().unwrap_or(u32::MAX),
    };
    let cores: usize = match get("cores").as_str() {
        "" => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n
            .parse()
            .map_err(|_| format!("--cores {n:?}: not a number"))?,
    }
    .max(1);
    if let Some(m) = &plan.serve_tls {
        log::info(
            "grpcproxy",
            &format!(
                "gRPC proxy server TLS cert = {}",
                m.info.cert_file.display()
            ),
        );
    }
    log::info(
        "grpcproxy",
        &format!("listening for gRPC proxy client requests address = {listen}"),
    );

    crate::runtime::tune_malloc();
    // The cores' channels: every ordered pair.
    let mut outs: Vec<Vec<(usize, shared_channel::SharedSender<Msg>)>> =
        (0..cores).map(|_| Vec::new()).collect();
    let mut ins: Vec<Vec<shared_channel::SharedReceiver<Msg>>> =
        (0..cores).map(|_| Vec::new()).collect();
    for a in 0..cores {
        for b in 0..cores {
            if a != b {
                let (tx, rx) = shared_channel::new_bounded(4096);
                outs[a].push((b, tx));
                ins[b].push(rx);
            }
        }
    }
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut handles = Vec::new();
    for (core, (outs, ins)) in outs.into_iter().zip(ins).enumerate() {
        let plan = plan.clone();
        let ready = ready_tx.clone();
        let h = executor_builder(
            &format!("keel-proxy-{core}"),
            Placement::Fixed(core % cores),
        )
        .spawn(move || async move {
            if let Err(e) = core_main(core, cores, plan, outs, ins, ready.clone()).await {
                let _ = ready.send(Err(e));
            }
        })
        .map_err(|e| format!("cannot start proxy core {core}: {e}"))?;
        handles.push(h);
    }
    drop(ready_tx);
    // A core sends once it listens (Ok) or failed (Err).
    for _ in 0..cores {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a proxy core stopped during boot".into()),
        }
    }
    log::info(
        "grpcproxy",
        &format!("started gRPC proxy address = {listen}"),
    );
    if let Some((m, _)) = plan.metrics {
        log::info(
            "grpcproxy",
            &format!("gRPC proxy server metrics URL serving address = {m}"),
        );
    }
    for h in handles {
        let _ = h.join();
    }
    Err("the proxy's cores stopped".into())
}

fn first_cert_cn(pem: &[u8]) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .next()?
        .ok()?;
    Some(crate::tls::x509::common_name(&der).unwrap_or_default())
}

async fn core_main(
    me: usize,
    cores: usize,
    plan: Plan,
    outs: Vec<(usize, shared_channel::SharedSender<Msg>)>,
    ins: Vec<shared_channel::SharedReceiver<Msg>>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) -> Result<(), String> {
    let up = upstream::Upstream::new(plan.endpoints.clone(), plan.dial_tls.clone());
    let ns = namespace::Namespace::new(&plan.namespace).map(Rc::new);
    let cache = Rc::new(cache::Cache::default());
    let wcore = watch::Core::new(me, cores, up.clone(), ns.clone(), cache.clone());
    watch::install(&wcore);
    let leases = lease::Leases::new(up.clone());
    *wcore.leases.borrow_mut() = Some(leases.clone());
    wcore.link(outs, ins);
    let ctx = Rc::new(Ctx {
        up: up.clone(),
        namespace: ns,
        watch: wcore.clone(),
        leases,
        cache,
        resolver_prefix: plan.resolver_prefix.clone(),
        advertise_client_url: plan.advertise.clone(),
    });
    let mut router = forward::router(ctx.clone());
    router.set_http1(http_handler(ctx.clone()));
    let router = Rc::new(router);
    let mode = match &plan.serve_tls {
        Some(m) => Mode::Tls(Acceptor::new(m.clone())),
        None => Mode::Plain,
    };
    let config = gserver::Config {
        // grpc-go's server default, as etcd's proxy has (--max-recv-bytes bounds what the
        // proxy takes from the cluster).
        message_bytes_max: PROXY_REQUEST_BYTES_MAX,
        concurrent_streams_max: plan.max_streams,
        ..Default::default()
    };
    let listener = TcpListener::bind(plan.listen)
        .map_err(|e| format!("listen tcp {}: bind: {e}", plan.listen))?;
    if let Some((addr, tls)) = plan.metrics {
        let l = TcpListener::bind(addr).map_err(|e| format!("listen tcp {addr}: bind: {e}"))?;
        let mut r = Router::new();
        r.set_http1(http_handler(ctx.clone()));
        let mode = match (&plan.serve_tls, tls) {
            (Some(m), true) => Mode::Tls(Acceptor::new(m.clone())),
            _ => Mode::Plain,
        };
        let config = config.clone();
        glommio::spawn_local(async move {
            let _ = gserver::serve(l, mode, Rc::new(r), config).await;
        })
        .detach();
    }
    if me == 0 && !plan.resolver_prefix.is_empty() {
        glommio::spawn_local(register::register(
            up.clone(),
            plan.resolver_prefix.clone(),
            plan.advertise.clone(),
            plan.resolver_ttl,
        ))
        .detach();
    }
    // This core listens: tell boot, then serve until the process ends.
    let _ = ready.send(Ok(()));
    gserver::serve(listener, mode, router, config)
        .await
        .map_err(|e| format!("serving {}: {e}", plan.listen))
}

/// `/metrics` (the proxy's own: gRPC server counts, coalescing, cache, process),
/// `/proxy/metrics` (the same), `/health` (a read through the proxy's upstream, as etcd's
/// proxy checks), 404 otherwise.
fn http_handler(ctx: Rc<Ctx>) -> HttpHandler {
    Rc::new(move |req: HttpRequest| {
        let ctx = ctx.clone();
        Box::pin(async move {
            match req.path.as_str() {
                "/metrics" | "/proxy/metrics" => {
                    let counts = ctx.watch.collect().await;
                    let mut r = HttpResponse::text(200, render(&counts));
                    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
                    r
                }
                "/health" => {
                    let get = crate::pb::etcdserverpb::RangeRequest {
                        key: bytes::Bytes::from_static(b"a"),
                        ..Default::default()
                    };
                    let ok = match futures_lite::future::or(
                        async {
                            Some(
                                ctx.up
                                    .unary(
                                        "/etcdserverpb.KV/Range",
                                        &[],
                                        prost::Message::encode_to_vec(&get).into(),
                                        true,
                                    )
                                    .await,
                            )
                        },
                        async {
                            glommio::timer::sleep(std::time::Duration::from_secs(1)).await;
                            None
                        },
                    )
                    .await
                    {
                        Some(Ok(_)) => true,
                        Some(Err(crate::grpc::client::CallError::Status(7, _))) => true,
                        _ => false,
                    };
                    if ok {
                        HttpResponse::text(200, "{\"health\":\"true\"}")
                    } else {
                        HttpResponse::text(503, "{\"health\":\"false\"}")
                    }
                }
                _ => HttpResponse::text(404, "404 page not found\n"),
            }
        })
    })
}

fn render(c: &watch::Counts) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut family = |name: &str, help: &str, ty: &str, v: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {ty}\n{name} {v}");
    };
    family(
        "etcd_grpc_proxy_watchers_coalescing_total",
        "Total number of current watchers coalescing",
        "gauge",
        c.watchers_coalesced,
    );
    family(
        "etcd_grpc_proxy_events_coalescing_total",
        "Total number of events coalescing",
        "counter",
        c.events_sent,
    );
    family(
        "etcd_grpc_proxy_cache_keys_total",
        "Total number of keys/ranges cached",
        "gauge",
        c.cache_keys,
    );
    family(
        "etcd_grpc_proxy_cache_hits_total",
        "Total number of cache hits",
        "gauge",
        c.cache_hits,
    );
    family(
        "etcd_grpc_proxy_cache_misses_total",
        "Total number of cache misses",
        "gauge",
        c.cache_misses,
    );
    family(
        "keel_grpc_proxy_upstream_watches",
        "Watches the proxy holds open on the cluster (one per distinct watched range)",
        "gauge",
        c.upstream_watches,
    );
    family(
        "keel_grpc_proxy_watchers",
        "Watchers of the proxy's clients",
        "gauge",
        c.watchers,
    );
    family(
        "keel_grpc_proxy_catching_up",
        "Watchers reading from a private upstream watch (history, or a client that fell behind) before they rejoin the shared one",
        "gauge",
        c.catching_up,
    );
    family(
        "keel_grpc_proxy_keepalives_coalesced_total",
        "Lease keep-alives answered without a request of their own to the cluster",
        "counter",
        c.keepalives_coalesced,
    );
    let mut grpc = c.grpc.grpc.clone();
    grpc.sort_by(|a, b| a.0.cmp(&b.0));
    let _ = writeln!(out, "# HELP grpc_server_started_total Total number of RPCs started on the server.\n# TYPE grpc_server_started_total counter");
    for (path, g) in &grpc {
        let (service, method) = split(path);
        let _ = writeln!(
            out,
            "grpc_server_started_total{{grpc_method=\"{method}\",grpc_service=\"{service}\",grpc_type=\"{}\"}} {}",
            crate::metrics::method_type(path),
            g.started
        );
    }
    let _ = writeln!(out, "# HELP grpc_server_handled_total Total number of RPCs completed on the server, regardless of success or failure.\n# TYPE grpc_server_handled_total counter");
    for (path, g) in &grpc {
        let (service, method) = split(path);
        for (code, n) in g.handled.iter().enumerate() {
            let _ = writeln!(
                out,
                "grpc_server_handled_total{{grpc_code=\"{}\",grpc_method=\"{method}\",grpc_service=\"{service}\",grpc_type=\"{}\"}} {n}",
                crate::grpc::status::Code::from_u32(code as u32).go_name(),
                crate::metrics::method_type(path),
            );
        }
    }
    let mut text = String::new();
    let _ =
        prometheus::TextEncoder::new().encode_utf8(&crate::metrics::process::families(), &mut text);
    out.push_str(&text);
    out
}

fn split(path: &str) -> (&str, &str) {
    let p = path.trim_start_matches('/');
    p.split_once('/').unwrap_or((p, ""))
}
