//! A kvserve client in Rust (reqwest): a single lookup with 404 handling, a batch, a
//! conditional request, and retrying on 429/503 after `Retry-After`.
//!
//! `cargo run --example client -- http://127.0.0.1:8000 [TOKEN]`

use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn send(request: impl Fn() -> RequestBuilder) -> reqwest::Result<Response> {
    let mut resp = request().send()?;
    for _ in 0..10 {
        if resp.status() != StatusCode::TOO_MANY_REQUESTS
            && resp.status() != StatusCode::SERVICE_UNAVAILABLE
        {
            break;
        }
        let wait = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        std::thread::sleep(Duration::from_secs(wait));
        resp = request().send()?;
    }
    Ok(resp)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8000".to_owned());
    let token = args.next();
    let client = Client::new();
    let auth = |req: RequestBuilder| match &token {
        Some(token) => req.bearer_auth(token),
        None => req,
    };
    let key = "72cf48f7-d604-4423-b012-4e2329f5117b";

    let resp = send(|| auth(client.get(format!("{base}/v1/keys/{key}"))))?;
    match resp.status() {
        StatusCode::OK => {
            let etag = resp.headers().get("etag").cloned();
            let body: Value = resp.json()?;
            println!("{key} = {}", body["value"]);
            if let Some(etag) = etag {
                let again = send(|| {
                    auth(client.get(format!("{base}/v1/keys/{key}")))
                        .header("If-None-Match", etag.clone())
                })?;
                println!("conditional request: {}", again.status());
            }
        }
        StatusCode::NOT_FOUND => println!("{key} has no value"),
        status => println!("{status}: {}", resp.text()?),
    }
    let batch: Value =
        send(|| auth(client.post(format!("{base}/v1/keys/batch"))).json(&json!({"keys": [key]})))?
            .json()?;
    println!("batch: {batch}");
    Ok(())
}
