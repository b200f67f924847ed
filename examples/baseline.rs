//! The ceiling for kvserve's HTTP figures: a bare hyper 1.x server answering every
//! request with a fixed ~100-byte JSON body, on the same Tokio runtime settings as
//! kvserve (multi-threaded, one worker per core). `benches/load/run.sh` drives it with
//! the same wrk script and connection count as kvserve and reports the ratio.
//!
//! Run: `cargo run --release --example baseline -- 127.0.0.1:8100`

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The size and shape of a kvserve answer for a typical value.
const BODY: &[u8] = br#"{"key":"72cf48f7-d604-4423-b012-4e2329f5117b","value":"zsda pl focnygogk x cjuu cmwrolqrmu wgdwxr"}"#;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8100".to_owned())
        .parse()
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
    let listener = TcpListener::bind(addr).await?;
    eprintln!("baseline listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                let resp = Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(BODY)));
                Ok::<_, Infallible>(resp.unwrap_or_default())
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
