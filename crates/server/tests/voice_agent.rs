//! The voice agent over gRPC: a client's cancel stops the spoken answer, and the `interrupted`
//! event says what of it was heard. Needs `./scripts/setup-models.sh`.

mod common;
#[path = "common/speak.rs"]
mod speak;

use std::path::Path;
use std::time::Duration;

use common::*;
use remotemedia_server::proto::{self, control_data::Kind as ControlKind, session_control::Action};
use speak::{silence, speak};

const RATE: u32 = 16_000;

fn kind(o: &proto::OutputFrame) -> &proto::data::Kind {
    o.data.as_ref().and_then(|d| d.kind.as_ref()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cancel_stops_the_spoken_answer_and_says_what_was_heard() {
    let agent = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/voice_agent.yaml");
    let server = serve(|c| {
        c.pipelines.insert("agent".into(), agent);
    })
    .await;
    wait_ready(&server).await;
    let question = speak("Tell me about the moon.").await;
    let mut c = client(&server).await;
    let mut s = opened(&mut c, "agent").await;

    // The question, then silence, at the pace of a microphone.
    let samples = [silence(0.5), question, silence(2.0)].concat();
    let tx = s.tx.clone();
    let mic = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        for chunk in samples.chunks(RATE as usize / 10) {
            tick.tick().await;
            if tx.send(audio(chunk.to_vec(), RATE)).await.is_err() {
                return;
            }
        }
    });

    // The answer starts playing; the client cancels it.
    let mut answer_audio = 0usize;
    while answer_audio < 3 {
        if let Some(Msg::Output(o)) = next(&mut s.rx).await.unwrap()
            && o.node == "speaker"
            && matches!(kind(&o), proto::data::Kind::Audio(_))
        {
            answer_audio += 1;
        }
    }
    mic.await.unwrap();
    s.tx.send(control(Action::Cancel)).await.unwrap();

    // The cancel comes back on the reply's output (so a client can flush its player), then the
    // playout's report; no answer audio follows the cancel.
    let (mut cancelled, mut event) = (false, None);
    while event.is_none() || !cancelled {
        let Some(Msg::Output(o)) = next(&mut s.rx).await.unwrap() else {
            continue;
        };
        match kind(&o) {
            proto::data::Kind::Control(c) if o.node == "speaker" => {
                assert_eq!(c.kind, ControlKind::Cancel as i32);
                assert_eq!(c.reason, "client cancel");
                cancelled = true;
            }
            proto::data::Kind::Audio(_) if o.node == "speaker" => {
                assert!(!cancelled, "answer audio after the cancel");
            }
            proto::data::Kind::Json(j) if o.node == "playout" => {
                event = Some(serde_json::from_str::<serde_json::Value>(j).unwrap());
            }
            _ => {}
        }
    }
    let event = event.unwrap();
    assert_eq!(event["event"], "interrupted");
    assert_eq!(event["reason"], "client cancel");
    assert!(event["heard_ms"].as_u64().unwrap() > 0, "{event}");
    assert!(event["dropped_ms"].as_u64().unwrap() > 0, "{event}");
    // Nothing more of the answer.
    s.tx.send(control(Action::Close)).await.unwrap();
    while let Some(m) = next(&mut s.rx).await.unwrap() {
        if let Msg::Output(o) = &m {
            assert!(
                !matches!(kind(o), proto::data::Kind::Audio(_)),
                "answer audio after the cancel"
            );
        }
    }
    assert_no_leaks(&server).await;
    server.shutdown().await;
}
