//! The TLS server: certificate reload without a restart, a broken update keeps the old
//! certificate, and a shutdown lets a request in flight finish while refusing new connections.

use axum::Router;
use axum::routing::get;
use dso_webhook::server::{Shutdown, serve_tls};
use dso_webhook::tls::{CertReloader, install_crypto_provider};
use rustls::pki_types::{CertificateDer, ServerName};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

struct Pair {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn pair() -> Pair {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("rcgen");
    Pair {
        cert_pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
        der: ck.cert.der().clone(),
    }
}

fn write(dir: &Path, p: &Pair) {
    std::fs::write(dir.join("tls.crt"), &p.cert_pem).expect("write cert");
    std::fs::write(dir.join("tls.key"), &p.key_pem).expect("write key");
}

/// A certificate pair written to a fresh directory, and a reloader serving it.
fn serving() -> (tempfile::TempDir, Pair, Arc<CertReloader>) {
    install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pair();
    write(dir.path(), &p);
    let reloader =
        CertReloader::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).expect("load");
    (dir, p, reloader)
}

/// Reads one HTTP/1.1 response whose body ends with `body`.
async fn response_ending(
    conn: &mut tokio_rustls::client::TlsStream<TcpStream>,
    body: &str,
) -> String {
    let mut buf = [0u8; 1024];
    let mut answer = String::new();
    while !answer.ends_with(body) {
        let n = conn.read(&mut buf).await.expect("read");
        assert!(n > 0, "connection closed early: {answer}");
        answer.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    answer
}

type Handshake = (
    CertificateDer<'static>,
    tokio_rustls::client::TlsStream<TcpStream>,
);

/// Opens a TLS connection trusting every certificate in `trusted`; returns the served one.
async fn handshake(addr: std::net::SocketAddr, trusted: &[&Pair]) -> std::io::Result<Handshake> {
    handshake_alpn(addr, trusted, &[]).await
}

/// [`handshake`] offering the ALPN protocols `alpn`.
async fn handshake_alpn(
    addr: std::net::SocketAddr,
    trusted: &[&Pair],
    alpn: &[&[u8]],
) -> std::io::Result<Handshake> {
    let mut roots = rustls::RootCertStore::empty();
    for p in trusted {
        roots.add(p.der.clone()).expect("root");
    }
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(addr).await?;
    let tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await?;
    let served = tls.get_ref().1.peer_certificates().expect("peer certs")[0].clone();
    Ok((served, tls))
}

async fn start(
    reloader: &Arc<CertReloader>,
    app: Router,
) -> (
    std::net::SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    start_draining(reloader, app, Duration::ZERO).await
}

async fn start_draining(
    reloader: &Arc<CertReloader>,
    app: Router,
    drain: Duration,
) -> (
    std::net::SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_tls(
        listener,
        reloader.server_config(),
        app,
        async move {
            let _ = stopped.await;
        },
        Shutdown {
            drain,
            grace: Duration::from_secs(5),
        },
        dso_webhook::limits::Limits::default(),
    ));
    (addr, stop, server)
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_ignored() {
    let (dir, a, reloader) = serving();
    let (b, c) = (pair(), pair());
    let (addr, _stop, _server) = start(&reloader, Router::new()).await;
    let timer = tokio::spawn(reloader.clone().run(Duration::from_millis(50)));

    let (served, _) = handshake(addr, &[&a, &b, &c]).await.expect("handshake");
    assert_eq!(served, a.der);

    // A Secret update swaps both files: the new pair is picked up by the timer.
    write(dir.path(), &b);
    let start = std::time::Instant::now();
    loop {
        let (served, _) = handshake(addr, &[&a, &b, &c]).await.expect("handshake");
        if served == b.der {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // From here the test drives reloads itself.
    timer.abort();
    let _ = timer.await;

    // A half-written update (new certificate, old key) and a garbage key keep B serving.
    std::fs::write(dir.path().join("tls.crt"), &c.cert_pem).expect("write");
    assert!(
        reloader.reload().is_err(),
        "a certificate that does not match the key is refused"
    );
    std::fs::write(dir.path().join("tls.key"), "not a key").expect("write");
    assert!(
        reloader.reload().is_err(),
        "a key that does not parse is refused"
    );
    let (served, _) = handshake(addr, &[&a, &b, &c]).await.expect("handshake");
    assert_eq!(served, b.der, "the previous certificate keeps serving");

    // Once the key arrives too, C is served.
    std::fs::write(dir.path().join("tls.key"), &c.key_pem).expect("write");
    assert!(reloader.reload().expect("valid pair"));
    let (served, _) = handshake(addr, &[&a, &b, &c]).await.expect("handshake");
    assert_eq!(served, c.der);
}

#[tokio::test]
async fn shutdown_finishes_the_request_in_flight_closes_idle_connections_and_refuses_new_ones() {
    let (_dir, a, reloader) = serving();
    let (entered_tx, entered_rx) = oneshot::channel::<()>();
    let entered = Arc::new(std::sync::Mutex::new(Some(entered_tx)));
    let app = Router::new()
        .route("/fast", get(|| async { "fast" }))
        .route(
            "/slow",
            get(move || {
                let entered = entered.clone();
                async move {
                    if let Some(tx) = entered.lock().expect("lock").take() {
                        let _ = tx.send(());
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "done"
                }
            }),
        );
    let (addr, stop, server) = start(&reloader, app).await;

    // An idle keep-alive connection: one request answered, then nothing.
    let (_, mut idle) = handshake(addr, &[&a]).await.expect("handshake");
    idle.write_all(b"GET /fast HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .expect("send");
    response_ending(&mut idle, "fast").await;

    let (_, mut tls) = handshake(addr, &[&a]).await.expect("handshake");
    tls.write_all(b"GET /slow HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .expect("send");
    entered_rx.await.expect("the request reached the handler");
    stop.send(()).expect("stop");

    // The idle connection is closed right away, while /slow is still running.
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_millis(250), idle.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the idle connection was not closed: {closed:?}"
    );

    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("done"), "{response}");

    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stopped")
        .expect("join");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
}

/// The API server keeps webhook connections pooled and does not retry a POST it wrote into a
/// connection the server had just closed. While draining, the server still answers on a
/// pooled connection, saying `Connection: close`, and only then closes it.
#[tokio::test]
async fn while_draining_a_pooled_connection_is_answered_and_told_to_close() {
    let (_dir, a, reloader) = serving();
    let app = Router::new().route("/fast", get(|| async { "fast" }));
    // A drain far longer than the close may take: the connection must end because the server
    // answered `Connection: close`, not because the drain ended.
    let drain = Duration::from_secs(5);
    let (addr, stop, server) = start_draining(&reloader, app, drain).await;

    let (_, mut pooled) = handshake(addr, &[&a]).await.expect("handshake");
    let request = b"GET /fast HTTP/1.1\r\nhost: localhost\r\n\r\n";
    pooled.write_all(request).await.expect("send");
    let first = response_ending(&mut pooled, "fast").await;
    assert!(
        !first.to_ascii_lowercase().contains("connection: close"),
        "{first}"
    );

    stop.send(()).expect("stop");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Draining: the pooled connection is still served, and told to close.
    pooled
        .write_all(request)
        .await
        .expect("send while draining");
    let second = response_ending(&mut pooled, "fast").await;
    let answered = std::time::Instant::now();
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(
        second.to_ascii_lowercase().contains("connection: close"),
        "no Connection: close while draining: {second}"
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(1), pooled.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "the connection was not closed (with nothing more sent) within 1 s of the answer: {closed:?} after {:?}",
        answered.elapsed()
    );

    tokio::time::timeout(drain + Duration::from_secs(5), server)
        .await
        .expect("server stopped")
        .expect("join");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
}

/// What the apiserver does: offer h2 and http/1.1 and keep the connection for further reviews.
#[tokio::test]
async fn the_server_speaks_http2_and_http1_as_negotiated_and_keeps_connections_alive() {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let (_dir, a, reloader) = serving();
    let app = Router::new().route(
        "/version",
        get(|v: axum::http::Version| async move { format!("{v:?}") }),
    );
    let (addr, _stop, _server) = start(&reloader, app).await;
    let request = || {
        hyper::Request::get("https://localhost/version")
            .body(Empty::<Bytes>::new())
            .expect("request")
    };
    let text = |resp: hyper::Response<hyper::body::Incoming>| async move {
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8_lossy(&body).to_string()
    };

    // Offered both, as the apiserver does: h2 wins, and two requests share the connection.
    let (_, tls) = handshake_alpn(addr, &[&a], &[b"h2", b"http/1.1"])
        .await
        .expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("HTTP/2 connection");
    tokio::spawn(conn);
    for _ in 0..2 {
        let resp = h2.send_request(request()).await.expect("HTTP/2 response");
        assert_eq!(text(resp).await, "HTTP/2.0");
    }

    // Offered only http/1.1: served over HTTP/1.1, kept alive across requests.
    let (_, tls) = handshake_alpn(addr, &[&a], &[b"http/1.1"])
        .await
        .expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 connection");
    tokio::spawn(conn);
    for _ in 0..2 {
        h1.ready().await.expect("the connection stays open");
        let resp = h1.send_request(request()).await.expect("HTTP/1.1 response");
        assert_eq!(text(resp).await, "HTTP/1.1");
    }
}

#[test]
fn debug_output_names_the_files_and_the_fingerprint_never_the_key() {
    let (_dir, p, reloader) = serving();
    let text = format!("{reloader:?}");
    assert!(
        text.contains("tls.crt") && text.contains("tls.key"),
        "{text}"
    );
    assert_eq!(reloader.fingerprint().len(), 32 * 3 - 1, "{text}");
    assert!(text.contains(&reloader.fingerprint()), "{text}");
    let key_body: String = p
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    for chunk in key_body.as_bytes().chunks(16) {
        let chunk = std::str::from_utf8(chunk).expect("base64 is ASCII");
        assert!(!text.contains(chunk), "a piece of the key leaked: {text}");
    }
    // Raw PEM bytes would show as numbers, as Vec<u8>'s Debug prints them: "-----" is 45s.
    assert!(!text.contains("45, 45, 45, 45, 45"), "{text}");
}
