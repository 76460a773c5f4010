//! The cloud on PostgreSQL (`database = "postgres://..."`): the real AS
//! and NMS of two instances, each with its own pool, on one database of a
//! private cluster. What one instance writes the other reads, and the
//! races between them (one enrollment password spent at both, Logins at
//! both) end as they do in one process.

mod common;

use common::{free_tcp, free_udp, refusal, CloudDir, Running, SignalingNode, WAIT};
use cyphonic_cloud::as_server::code;
use cyphonic_cloud::pg_cluster::PgCluster;
use cyphonic_cloud::run::{run, Roles};
use cyphonic_cloud::Database;
use cyphonic_node::as_client;
use tokio::sync::oneshot;

const PASSWORD: &str = "correct horse battery";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_postgres_database() {
    let pg = PgCluster::start().unwrap_or_else(|e| panic!("{e}"));
    let mut dir = CloudDir::new().await;
    dir.cfg.database = Some(Database::Postgres(pg.create_database("cloud").unwrap()));
    dir.cfg.validate().unwrap();
    dir.add("n1", Some(PASSWORD)).await;
    dir.add("n2", Some(PASSWORD)).await;

    // Instance A: AS, NMS and TRS; instance B: a second AS, on ports of
    // its own, on the same database.
    let mut a = Running::start(&dir, Roles::All).await;
    let mut cfg_b = dir.cfg.clone();
    cfg_b.as_listen = vec![free_tcp("127.0.0.1")];
    cfg_b.nms_listen = vec![free_udp()];
    cfg_b.trs_listen = vec![free_udp()];
    let as_b = cfg_b.as_listen[0];
    let (stop_b, stopped_b) = oneshot::channel::<()>();
    let b = tokio::spawn(run(cfg_b, Roles::As, async move {
        let _ = stopped_b.await;
    }));
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(as_b).await.is_err() {
        assert!(!b.is_finished(), "instance B stopped: {:?}", b.await);
        assert!(tokio::time::Instant::now() < deadline, "B did not start");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // One password, four enrollments at once, two at each instance: one
    // certificate, three refusals.
    let (r1, r2, r3, r4) = tokio::join!(
        dir.enroll(dir.as_v4(), "n1", PASSWORD),
        dir.enroll(as_b, "n1", PASSWORD),
        dir.enroll(dir.as_v6(), "n1", PASSWORD),
        dir.enroll(as_b, "n1", PASSWORD),
    );
    let mut enrolled = None;
    for result in [r1, r2, r3, r4] {
        match result {
            Ok(e) if enrolled.is_none() => enrolled = Some(e),
            other => assert_eq!(refusal(other).0, code::CREDENTIAL_USED),
        }
    }
    let n1 = enrolled.expect("one enrollment succeeds");
    let n2 = dir.enroll(as_b, "n2", PASSWORD).await.unwrap();

    // A Login at B, a Registration under it at A's NMS, which finds the
    // session B opened.
    let login_b = as_client::login(
        as_b,
        "127.0.0.1",
        &dir.root_der,
        &n1.0.cert_chain_pem,
        &n1.1.to_pem(),
    )
    .await
    .unwrap();
    let mut node = SignalingNode::new(&login_b, dir.nms()).await;
    node.register().await;
    a.wait_for("n1's registration", |c| c.registrations >= 1)
        .await;
    // A later Login at A numbers after B's; registering under it ends
    // B's session in the store, which both instances read.
    let login_a = dir.login(&n1).await;
    let mut node = SignalingNode::new(&login_a, dir.nms()).await;
    node.register().await;
    let store = dir.other_store().await;
    let session_a = store.session(login_a.session_id).await.unwrap().unwrap();
    assert!(store.session(login_b.session_id).await.unwrap().is_none());
    let n2_login = dir.login(&n2).await;
    let session_n2 = store.session(n2_login.session_id).await.unwrap().unwrap();
    assert!(session_n2.login_seq > session_a.login_seq);
    assert!(
        session_a.replay_floor > 0,
        "the Registration's floor is stored"
    );
    assert_eq!(store.certificates_of("n1").await.unwrap().len(), 1);
    store.close().await;

    let _ = stop_b.send(());
    b.await.unwrap().unwrap();
    a.stop().await;
}
