//! Sessions and the control plane through real sockets and a real gRPC client.

use std::time::Duration;

use wsgate_tests::*;

#[tokio::test]
async fn welcome_then_send_to_user_reaches_each_session_once() {
    let gw = Gateway::start(base_settings()).await;
    let (mut a1, w1) = gw.connect_user("alice").await;
    let (mut a2, w2) = gw.connect_user("alice").await;
    let (mut b, _) = gw.connect_user("bob").await;
    assert_eq!(w1["user_id"], "alice");
    assert_eq!(w1["heartbeat_s"], 25);
    assert_ne!(w1["session_id"], w2["session_id"]);

    let mut grpc = gw.grpc().await;
    let r = grpc.send_to_user("alice", text("hello")).await.unwrap();
    assert_eq!(r.targets, 2);
    for ws in [&mut a1, &mut a2] {
        let m = next_json(ws).await;
        assert_eq!(m, serde_json::json!({"op":"message","data":"hello"}));
        assert_silent(ws, Duration::from_millis(200)).await;
    }
    assert_silent(&mut b, Duration::from_millis(200)).await;
    gw.stop().await.unwrap();
}
