//! The web page's HTTP API, on a server started on an ephemeral port: good requests get the
//! right PNG or JSON, bad ones a 400 with a one-line JSON error, concurrent requests are all
//! answered, and a client that disconnects harms nothing.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::OnceLock;

use burn::tensor::Device;
use flowmatch::checkpoint;
use flowmatch::model::{Network, UNetConfig};
use flowmatch::serve::{ServeOptions, Server};

/// One server for every test of this file: the fixture (unconditional) and a conditional
/// tiny model with 10 classes.
fn server() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let dir = common::temp_dir("serve");
        let conditional = dir.join("digits.safetensors");
        let config = UNetConfig {
            num_classes: Some(10),
            ..UNetConfig::with_widths([8, 16, 32])
        };
        let model = Network::init(&config.into(), 0, &Device::flex()).unwrap();
        checkpoint::save(&model, None, None, Default::default(), &conditional).unwrap();
        let options = ServeOptions {
            checkpoints: vec![common::fixture("weights.safetensors"), conditional],
            shipped: vec![],
            host: "127.0.0.1".into(),
            port: 0,
            run: None,
            workers: 4,
        };
        let server = Server::bind(&options, &Device::flex()).unwrap();
        assert_eq!(server.model_names(), vec!["weights", "digits"]);
        let url = server.url().trim_end_matches('/').to_string();
        std::thread::spawn(move || server.run());
        url
    })
}

fn get(path: &str) -> (u16, String, Vec<u8>) {
    let response = ureq::get(format!("{}{path}", server()))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .map_or(String::new(), |v| v.to_str().unwrap().to_string());
    let mut body = Vec::new();
    response
        .into_body()
        .into_reader()
        .read_to_end(&mut body)
        .unwrap();
    (status, kind, body)
}

#[test]
fn good_requests_get_pngs_and_json() {
    let (status, kind, body) = get("/api/models");
    assert_eq!((status, kind.as_str()), (200, "application/json"));
    let models: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(models[1]["classes"], 10);
    assert!(models[0]["classes"].is_null());

    let (status, kind, body) = get("/api/sample?model=weights&n=9&steps=2&seed=4");
    assert_eq!((status, kind.as_str()), (200, "image/png"));
    let png = image::load_from_memory(&body).unwrap();
    assert_eq!((png.width(), png.height()), (2 + 3 * 30, 2 + 3 * 30));

    let (status, _, body) = get("/api/sample?model=digits&digit=7&guidance=2&n=4&steps=1");
    assert_eq!(status, 200);
    assert_eq!(image::load_from_memory(&body).unwrap().width(), 2 + 2 * 30);

    let (status, _, body) = get("/api/trajectory?model=weights&n=2&steps=5&solver=heun");
    assert_eq!(status, 200);
    let reply: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let times = reply["times"].as_array().unwrap();
    assert_eq!(times.len(), 6);
    assert_eq!(
        (times[0].as_f64(), times[5].as_f64()),
        (Some(1.0), Some(0.0))
    );
    assert_eq!(reply["frames"].as_array().unwrap().len(), 6);
    assert_eq!(reply["nfe"], 10, "Heun: 2 evaluations per step");

    let (status, kind, body) = get("/");
    assert_eq!((status, kind.as_str()), (200, "text/html; charset=utf-8"));
    assert!(String::from_utf8(body).unwrap().contains("id=\"generate\""));
}

#[test]
fn bad_requests_get_400_with_a_one_line_json_error() {
    for query in [
        "model=weights&n=0",
        "model=weights&n=65",
        "model=weights&n=many",
        "model=weights&steps=0",
        "model=weights&steps=500",
        "model=weights&solver=leapfrog",
        "model=weights&digit=3",
        "model=digits&digit=10",
        "model=digits&digit=two",
        "model=digits&digit=1&guidance=nan",
        "model=digits&digit=1&guidance=50",
        "model=digits&guidance=2",
        "model=nobody",
        "n=4",
        "model=weights&colour=red",
        "model=weights&solver=dopri5&tol=0",
    ] {
        for endpoint in ["/api/sample", "/api/trajectory"] {
            let (status, kind, body) = get(&format!("{endpoint}?{query}"));
            assert_eq!(status, 400, "{endpoint}?{query}");
            assert_eq!(kind, "application/json");
            let text = String::from_utf8(body).unwrap();
            assert_eq!(text.lines().count(), 1, "{text}");
            let error: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(
                !error["error"].as_str().unwrap().is_empty(),
                "{query}: {text}"
            );
        }
    }
    assert_eq!(get("/nowhere").0, 404);
    assert_eq!(get("/api/run").0, 404, "no run is served");
}

#[test]
fn concurrent_requests_are_all_answered_and_disconnects_harm_nothing() {
    let url = server();
    // A client that sends a request and goes away at once.
    let address = url.trim_start_matches("http://");
    for _ in 0..3 {
        let mut stream = TcpStream::connect(address).unwrap();
        stream
            .write_all(b"GET /api/sample?model=weights&n=64&steps=20 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        drop(stream);
    }
    let handles: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let model = if i % 2 == 0 { "weights" } else { "digits" };
                get(&format!("/api/sample?model={model}&n=4&steps=3&seed={i}")).0
            })
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().unwrap(), 200);
    }
}
