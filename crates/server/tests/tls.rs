//! TLS on both ports, with a test CA made here: grpcio streams the recording through the
//! speech pipeline over TLS; with client certificates required, a client without one, with
//! one from another CA, or speaking plain text is refused in the handshake (and counted),
//! tokens are still required, and HTTPS works the same way. Needs the models and the Python
//! environment, as python_client.rs does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use remotemedia_server::RunningServer;
use tokio::io::AsyncWriteExt;

mod common;
use common::{TOKEN, root, run_python};

/// A CA, a server certificate for localhost and 127.0.0.1, and a client certificate, all from
/// it; and a second CA with a client certificate of its own. PEM files in a fresh folder.
fn make_certificates(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tls-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let write = |file: &str, text: String| std::fs::write(dir.join(file), text).unwrap();
    let ca = |cn: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
    };
    let leaf = |issuer: &CertifiedIssuer<KeyPair>, names: &[&str], usage, file: &str| {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, file);
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, issuer).unwrap();
        write(&format!("{file}.pem"), cert.pem());
        write(&format!("{file}.key"), key.serialize_pem());
    };
    let (good, rogue) = (ca("RemoteMedia test CA"), ca("Someone else's CA"));
    write("ca.pem", good.pem());
    write("rogue-ca.pem", rogue.pem());
    let server = ExtendedKeyUsagePurpose::ServerAuth;
    let client = ExtendedKeyUsagePurpose::ClientAuth;
    leaf(&good, &["localhost", "127.0.0.1"], server, "server");
    leaf(&good, &["client"], client.clone(), "client");
    leaf(&rogue, &["client"], client, "rogue-client");
    dir
}

fn tls_files(c: &mut remotemedia_server::ServerConfig, dir: &Path) {
    c.tls.cert = Some(dir.join("server.pem"));
    c.tls.key = Some(dir.join("server.key"));
}

fn counter(server: &RunningServer, name: &str) -> f64 {
    let text = server.metrics_text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("remotemedia_{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_streams_a_recording_over_tls() {
    let dir = make_certificates("stream");
    let server = common::serve(|c| {
        tls_files(c, &dir);
        c.auth.tokens = vec![TOKEN.into()];
        c.pipelines
            .insert("transcribe".into(), root().join("examples/transcribe.yaml"));
    })
    .await;
    // A client that connects and never starts its handshake holds up no one.
    let mut silent = tokio::net::TcpStream::connect(server.grpc_addr())
        .await
        .unwrap();
    common::wait_ready(&server).await;

    let client = root().join("examples/grpc_client/client.py");
    let wav = remotemedia_runtime::models_dir().join("samples/beckett.wav");
    let addr = server.grpc_addr().to_string();
    let ca = dir.join("ca.pem");
    let (ok, stdout, stderr) = run_python(
        &[
            client.to_str().unwrap(),
            "--addr",
            &addr,
            "--tls-ca",
            ca.to_str().unwrap(),
            "--pipeline",
            "transcribe",
            "--speed",
            "4",
            wav.to_str().unwrap(),
        ],
        TOKEN,
    )
    .await;
    assert!(ok, "client failed:\n{stdout}\n{stderr}");
    let text = stdout.to_lowercase();
    for words in ["ever tried", "ever failed", "try again", "fail again"] {
        assert!(text.contains(words), "`{words}` missing from:\n{stdout}");
    }
    assert!(stderr.contains("closed"), "{stderr}");

    // The same client without TLS gets nowhere on this port.
    let (ok, _, stderr) = run_python(
        &[
            client.to_str().unwrap(),
            "--addr",
            &addr,
            "--pipeline",
            "transcribe",
            wav.to_str().unwrap(),
        ],
        TOKEN,
    )
    .await;
    assert!(!ok && stderr.contains("UNAVAILABLE"), "{stderr}");
    let _ = silent.shutdown().await;
    common::assert_no_leaks(&server).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_when_configured() {
    let dir = make_certificates("mutual");
    let server = common::serve(|c| {
        tls_files(c, &dir);
        c.tls.client_ca = Some(dir.join("ca.pem"));
        c.auth.tokens = vec![TOKEN.into()];
    })
    .await;
    common::wait_ready(&server).await;
    let script = root().join("crates/server/tests/py/tls_client.py");
    let (ok, stdout, stderr) = run_python(
        &[
            script.to_str().unwrap(),
            "--addr",
            &server.grpc_addr().to_string(),
            "--http",
            &server.http_addr().unwrap().to_string(),
            "--certs",
            dir.to_str().unwrap(),
            "--token",
            TOKEN,
        ],
        TOKEN,
    )
    .await;
    assert!(ok, "{stdout}\n{stderr}");
    let got: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    let code = |k: &str| got[k][0].to_string().trim_matches('"').to_string();
    assert_eq!(code("health"), "OK", "{got}");
    assert!(got["health"][1].as_str().unwrap().contains("SERVING"));
    assert_eq!(code("list_with_token"), "OK", "{got}");
    // A certificate is not a token: both are asked for.
    assert_eq!(code("list_without_token"), "UNAUTHENTICATED", "{got}");
    for refused in [
        "no_client_cert",
        "rogue_client_cert",
        "server_not_trusted",
        "plaintext",
    ] {
        assert_eq!(code(refused), "UNAVAILABLE", "{refused}: {got}");
    }
    assert_eq!(code("https_healthz"), "200", "{got}");
    assert_eq!(code("https_without_client_cert"), "ERROR", "{got}");
    // Every refused handshake is counted (grpcio may retry one: at least once each).
    assert!(counter(&server, "handshake_failures_total") >= 5.0);
    // Plain HTTP on the HTTPS port gets no answer.
    let mut tcp = tokio::net::TcpStream::connect(server.http_addr().unwrap())
        .await
        .unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut reply);
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    assert!(!String::from_utf8_lossy(&reply).contains("200 OK"));
    server.shutdown().await;
}

#[tokio::test]
async fn bad_tls_files_are_named() {
    let dir = make_certificates("bad");
    let start = |tweak: &dyn Fn(&mut remotemedia_server::ServerConfig)| {
        let mut c = remotemedia_server::ServerConfig::default();
        c.grpc.listen = ([127, 0, 0, 1], 0).into();
        c.http.enabled = false;
        tls_files(&mut c, &dir);
        tweak(&mut c);
        async move {
            let runtime = std::sync::Arc::new(common::runtime());
            match remotemedia_server::start(c, runtime).await {
                Ok(_) => panic!("started"),
                Err(e) => e.to_string(),
            }
        }
    };
    let e = start(&|c| c.tls.key = Some(dir.join("client.key"))).await;
    assert!(e.contains("tls.key does not go with"), "{e}");
    let e = start(&|c| c.tls.cert = Some(dir.join("missing.pem"))).await;
    assert!(e.contains("tls.cert") && e.contains("missing.pem"), "{e}");
    let e = start(&|c| c.tls.client_ca = Some(dir.join("client.key"))).await;
    assert!(
        e.contains("tls.client_ca") && e.contains("no PEM certificate"),
        "{e}"
    );
}

/// A remote node over TLS: the remote's certificate is checked against the manifest's
/// `ca_file`, and one from another CA is refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_node_runs_over_tls_checked_against_its_ca() {
    let dir = make_certificates("remote");
    let server = common::serve(|c| {
        tls_files(c, &dir);
        c.auth.tokens = vec![TOKEN.into()];
        c.client_manifests.allow = true;
    })
    .await;
    // SAFETY: set before any thread of this test reads the environment.
    unsafe { std::env::set_var("TLS_REMOTE_TOKEN", TOKEN) };
    let manifest = |ca: &str| {
        format!(
            "version: v1\nnodes:\n  - id: shout\n    type: TextTransform\n    params: {{op: uppercase}}\n    remote: {{endpoint: \"https://{}\", token_env: TLS_REMOTE_TOKEN, ca_file: \"{}\"}}\n",
            server.grpc_addr(),
            dir.join(ca).display()
        )
    };
    let runtime = common::runtime();
    let pipeline = runtime.load(&manifest("ca.pem"), "<test>").unwrap();
    let out = runtime
        .execute(
            &pipeline,
            vec![remotemedia_core::RuntimeData::text("over tls")],
        )
        .await
        .unwrap();
    assert_eq!(&*out[0].data.as_text().unwrap().text, "OVER TLS");

    let e = runtime
        .load(&manifest("rogue-ca.pem"), "<test>")
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .contains(&format!("cannot reach https://{}", server.grpc_addr()))
            && e.to_string().contains("certificate"),
        "{e}"
    );
    common::assert_no_leaks(&server).await;
    server.shutdown().await;
}
