//! The queue's own guarantees, driven through the store directly.
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::count;

use smartdrop_webhooks::queue::fairness::Rooms;
use smartdrop_webhooks::queue::{AttemptRecord, Claimed, Finished, NextState, completion, store};

async fn seed(pool: &PgPool, n: usize) {
    sqlx::query("INSERT INTO webhooks (url, events, secret) VALUES ('http://127.0.0.1:9/x', '{*}', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')")
        .execute(pool)
        .await
        .unwrap();
    for i in 0..n {
        sqlx::query("SELECT webhook_publish('pool.created', $1)")
            .bind(json!({"i": i}))
            .execute(pool)
            .await
            .unwrap();
    }
    let mut conn = pool.acquire().await.unwrap();
    smartdrop_webhooks::fanout::store::dispatch(
        &mut conn,
        1000,
        100_000,
        0,
        60_000,
        &Rooms::none(),
    )
    .await
    .unwrap();
}

/// Registers `n` webhooks on everything; their ids in order.
async fn webhooks(pool: &PgPool, n: i32) -> Vec<String> {
    sqlx::query(
        "INSERT INTO webhooks (url, events, secret)
         SELECT 'http://127.0.0.1:9/x' || g, '{*}', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'
         FROM generate_series(1, $1) g",
    )
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query_scalar("SELECT id FROM webhooks ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

fn attempt() -> AttemptRecord {
    AttemptRecord {
        started_at: chrono::Utc::now(),
        duration_ms: 3,
        response_status: Some(200),
        error_kind: None,
        error: None,
        response_excerpt: Some("ok".into()),
    }
}

/// Records one attempt as the completer would; false when the lease was lost.
async fn finish(pool: &PgPool, claimed: &Claimed, next: NextState) -> bool {
    let breaker = crate::helpers::test_config(pool).breaker();
    let one = Finished {
        id: claimed.id.clone(),
        webhook_id: claimed.webhook_id.clone(),
        lease_token: claimed.lease_token,
        probe: claimed.probe,
        attempt: attempt(),
        next,
    };
    let mut conn = pool.acquire().await.unwrap();
    let done = completion::complete(&mut conn, &[one], &breaker)
        .await
        .unwrap();
    done.recorded.contains(&claimed.id)
}

#[sqlx::test]
async fn concurrent_claimers_get_disjoint_rows(pool: PgPool) {
    seed(&pool, 40).await;
    let (a, b) = tokio::join!(
        store::claim_due(&pool, 25, 60_000),
        store::claim_due(&pool, 25, 60_000)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.len() + b.len(), 40);
    assert!(a.iter().all(|x| b.iter().all(|y| x.id != y.id)));
    assert!(
        store::claim_due(&pool, 25, 60_000)
            .await
            .unwrap()
            .is_empty(),
        "leased rows are not due"
    );
}

#[sqlx::test]
async fn an_expired_lease_is_reclaimed_and_the_stale_owner_is_fenced_out(pool: PgPool) {
    seed(&pool, 1).await;
    let first = store::claim_due(&pool, 10, 1).await.unwrap().remove(0);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let second = store::claim_due(&pool, 10, 60_000).await.unwrap().remove(0);
    assert_eq!(first.id, second.id);
    assert_ne!(first.lease_token, second.lease_token);
    assert!(!finish(&pool, &first, NextState::Success).await, "fenced");
    assert!(finish(&pool, &second, NextState::Success).await);
    let (status, attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM webhook_deliveries")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), attempts), ("success", 1));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_delivery_attempts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

#[sqlx::test]
async fn each_event_fans_out_once_however_many_sweepers(pool: PgPool) {
    sqlx::query("INSERT INTO webhooks (url, events, secret) SELECT 'http://127.0.0.1:9/' || g, '{*}', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw' FROM generate_series(1, 3) g")
        .execute(&pool)
        .await
        .unwrap();
    for _ in 0..300 {
        sqlx::query("SELECT webhook_publish('pool.created', '{}')")
            .execute(&pool)
            .await
            .unwrap();
    }
    let sweep = || async {
        let mut total = 0;
        let mut conn = pool.acquire().await.unwrap();
        loop {
            // 3 webhooks: at most 3 events and 10 deliveries per call, so
            // events are cut across transactions and sweepers; each sweeper
            // leases up to 5 of what it writes, 2 per webhook.
            let rooms = Rooms {
                busy: vec![],
                newcomer: 2,
            };
            let done =
                smartdrop_webhooks::fanout::store::dispatch(&mut conn, 7, 10, 5, 60_000, &rooms)
                    .await
                    .unwrap();
            assert!(done.leased.len() <= 5);
            if done.events == 0 && done.deliveries == 0 {
                return total;
            }
            let deliveries = done.deliveries;
            total += deliveries;
        }
    };
    let (a, b, c) = tokio::join!(sweep(), sweep(), sweep());
    assert_eq!(a + b + c, 900);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 900);
}

#[sqlx::test]
async fn retention_drops_whole_days_of_history_and_never_what_can_still_be_sent(pool: PgPool) {
    seed(&pool, 5).await;
    // Each finished delivery gets an attempt, as the completer records them;
    // the fifth stays pending.
    let claimed = store::claim_due(&pool, 4, 60_000).await.unwrap();
    assert_eq!(claimed.len(), 4);
    for (i, c) in claimed.iter().enumerate() {
        let next = if i == 2 {
            NextState::Failed
        } else {
            NextState::Success
        };
        assert!(finish(&pool, c, next).await);
    }
    // Age them: history 40, 31, 40 and 1 days old (their attempts the same),
    // and the pending one 40 days old. Rows move to their day's partition.
    sqlx::query("SELECT webhook_history_prepare((now() AT TIME ZONE 'UTC')::date - 45, (now() AT TIME ZONE 'UTC')::date)")
        .execute(&pool)
        .await
        .unwrap();
    for (i, age) in [40, 31, 40, 1].iter().enumerate() {
        sqlx::query("UPDATE webhook_deliveries SET done_at = now() - make_interval(days => $2), created_at = now() - make_interval(days => $2) WHERE id = $1")
            .bind(&claimed[i].id)
            .bind(age)
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("UPDATE webhook_delivery_attempts SET started_at = now() - make_interval(days => $2) WHERE delivery_id = $1")
            .bind(&claimed[i].id)
            .bind(age)
            .execute(&pool)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE webhook_deliveries SET created_at = now() - interval '40 days' WHERE status = 'pending'")
        .execute(&pool)
        .await
        .unwrap();
    let days =
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'webhook_deliveries_history'::regclass";
    let before = count(&pool, days).await;

    let bounds = smartdrop_webhooks::db::Bounds::new(
        std::time::Duration::from_secs(5),
        tokio_util::sync::CancellationToken::new(),
    );
    smartdrop_webhooks::storage::maintain(&pool, 30, &bounds).await;

    // Days 45..31 ago went (15 days of each table), whole; nothing was deleted
    // row by row from the days kept.
    assert_eq!(count(&pool, days).await, before - 15);
    let left: Vec<(String,)> =
        sqlx::query_as("SELECT status FROM webhook_deliveries ORDER BY status")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(left, [("pending".to_owned(),), ("success".to_owned(),)]);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM webhook_delivery_attempts").await,
        1
    );
    // The 40-day-old pending delivery is still claimable.
    let again = store::claim_due(&pool, 10, 60_000).await.unwrap();
    assert_eq!(again.len(), 1);
    // The days ahead exist (a week), so results have somewhere to go.
    let ahead = "SELECT count(*) FROM pg_class WHERE relname = 'webhook_deliveries_' || to_char((now() AT TIME ZONE 'UTC')::date + 7, 'YYYYMMDD')";
    assert_eq!(count(&pool, ahead).await, 1);
    // A second round finds nothing more to drop.
    smartdrop_webhooks::storage::maintain(&pool, 30, &bounds).await;
    assert_eq!(count(&pool, days).await, before - 15);

    // Deleting the webhook takes its deliveries and their attempts.
    sqlx::query("DELETE FROM webhooks")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM webhook_delivery_attempts").await,
        0
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM webhook_deliveries").await,
        0
    );
}

#[sqlx::test]
async fn a_claim_starts_at_the_webhook_s_floor_and_a_row_left_below_it_waits_at_most_ten_seconds(
    pool: PgPool,
) {
    seed(&pool, 2).await;
    // A first claim walks the whole range, takes both rows and puts the
    // webhook to sleep, which sets the floor (a second ago at most).
    let first = store::claim_due(&pool, 10, 60_000).await.unwrap();
    assert_eq!(first.len(), 2);
    let floor =
        "SELECT count(*) FROM webhook_endpoint_state WHERE due_floor <= now() - interval '1 second'
                 AND due_floor_from > now() - interval '10 seconds'";
    assert_eq!(count(&pool, floor).await, 1);
    // A row inserted below the floor (by a transaction that began long ago)
    // lowers it: it is claimed at once.
    sqlx::query(
        "INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, body, next_retry_at)
         SELECT id, 'late', 'pool.created', '{}', now() - interval '1 hour' FROM webhooks",
    )
    .execute(&pool)
    .await
    .unwrap();
    let late = store::claim_due(&pool, 10, 60_000).await.unwrap();
    assert_eq!(late.len(), 1);
    // A row updated below the floor (a retry written by such a transaction)
    // is not seen by the claims that start at the floor...
    sqlx::query(
        "UPDATE webhook_deliveries SET next_retry_at = now() - interval '2 hours',
                lease_token = NULL, lease_expires_at = NULL
         WHERE status = 'pending' AND event_id = 'late'",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("UPDATE webhook_endpoint_state SET ready_at = now()")
        .execute(&pool)
        .await
        .unwrap();
    let hidden = store::claim_due(&pool, 10, 60_000).await.unwrap();
    assert_eq!(hidden.len(), 0);
    // ...but the webhook wakes when the floor ends, and that claim looks below it.
    let wakes = "SELECT count(*) FROM webhook_endpoint_state
                 WHERE ready_at IS NOT NULL AND ready_at <= due_floor_from + interval '10 seconds'";
    assert_eq!(count(&pool, wakes).await, 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let taken = loop {
        let got = store::claim_due(&pool, 10, 60_000).await.unwrap();
        if !got.is_empty() || std::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(
        taken.len(),
        1,
        "the row below the floor was not claimed within 15 s"
    );
    assert_eq!(taken[0].id, late[0].id);
}

#[test]
fn debug_output_never_contains_a_secret() {
    let claimed = smartdrop_webhooks::queue::Claimed {
        id: "dlv_x".into(),
        lease_token: uuid::Uuid::nil(),
        attempts: 0,
        webhook_id: "wh_x".into(),
        url: "https://example.com".into(),
        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
        previous_secret: Some("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".into()),
        headers: serde_json::json!({"X-Api-Key": "gateway-token-1234"}),
        event_type: "pool.created".into(),
        body: "{}".into(),
        probe: false,
    };
    let shown = format!("{claimed:?}");
    assert!(!shown.contains("MfKQ9r8G"), "{shown}");
    assert!(!shown.contains("gateway-token"), "{shown}");
    assert!(!shown.contains("C2FVsBQI"), "{shown}");
    let config = crate::helpers::test_config_without_pool();
    assert!(!format!("{config:?}").contains(crate::helpers::KEY));
}

/// A claim split among many webhooks still fills up when the ones it visits
/// first turn out to have nothing due (a wake-up at the end of a lease or a
/// floor): the small shares it collects for them come back empty, and the
/// webhooks it had not reached yet get their turn in the same claim.
#[sqlx::test]
async fn a_claim_reaches_past_webhooks_that_woke_with_nothing_due(pool: PgPool) {
    // 10 webhooks with one due row each (already sending elsewhere: busy,
    // with room), woken after the 25 others, which have nothing due.
    let with_work: Vec<String> = webhooks(&pool, 35).await[..10].to_vec();
    sqlx::query(
        "INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, body)
         SELECT w, 'e-' || w, 'pool.created', '{}' FROM unnest($1::text[]) w",
    )
    .bind(&with_work)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE webhook_endpoint_state
         SET ready_at = CASE WHEN webhook_id = ANY($1) THEN now() - interval '1 minute'
                             ELSE now() - interval '1 hour' END",
    )
    .bind(&with_work)
    .execute(&pool)
    .await
    .unwrap();
    let rooms = Rooms {
        busy: with_work.iter().map(|w| (w.clone(), 5)).collect(),
        newcomer: 5,
    };
    let mut conn = pool.acquire().await.unwrap();
    let claimed = store::claim(&mut conn, 25, 60_000, &rooms).await.unwrap();
    assert_eq!(claimed.len(), 10);
}

/// Webhooks that fill their share of a claim and have more due take turns
/// (each goes to the back of the line, awake), and one whose share took its
/// last due row goes to sleep until that row's lease ends.
#[sqlx::test]
async fn webhooks_with_more_due_take_turns_and_one_emptied_goes_to_sleep(pool: PgPool) {
    let hooks = webhooks(&pool, 5).await;
    // Four webhooks with three due rows each, the fifth with one; woken in
    // id order.
    sqlx::query(
        "INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, body, next_retry_at)
         SELECT w, 'e-' || w || '-' || n, 'pool.created', '{}', now() - interval '1 minute'
         FROM unnest($1::text[]) WITH ORDINALITY AS h(w, k), generate_series(1, 3) n
         WHERE k <= 4 OR n = 1",
    )
    .bind(&hooks)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE webhook_endpoint_state s SET ready_at = now() - interval '1 hour' + h.k * interval '1 second'
         FROM unnest($1::text[]) WITH ORDINALITY AS h(w, k) WHERE s.webhook_id = h.w",
    )
    .bind(&hooks)
    .execute(&pool)
    .await
    .unwrap();
    // A share of one each (nothing in flight, a newcomer's room of one), two
    // per claim: 13 rows in 7 claims, then nothing.
    let rooms = Rooms {
        busy: vec![],
        newcomer: 1,
    };
    let mut conn = pool.acquire().await.unwrap();
    let mut served: std::collections::HashMap<String, usize> = Default::default();
    for round in 0..6 {
        let claimed = store::claim(&mut conn, 2, 60_000, &rooms).await.unwrap();
        let mut ids: Vec<String> = claimed.into_iter().map(|c| c.webhook_id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 2, "claim {round}: two webhooks, one row each");
        for id in ids {
            *served.entry(id).or_default() += 1;
        }
        if round == 1 {
            // The first four were served once each: the two that went first
            // were at the back of the line, not taken again.
            assert_eq!(served.len(), 4, "{served:?}");
        }
    }
    // Round robin: the four with three rows served two or three times each
    // (12 rows over 6 claims less the fifth's one), the fifth once.
    assert_eq!(served[&hooks[4]], 1, "{served:?}");
    let four: Vec<usize> = hooks[..4].iter().map(|h| served[h]).collect();
    assert_eq!(four.iter().sum::<usize>(), 11, "{served:?}");
    assert!(four.iter().all(|&n| n == 2 || n == 3), "{served:?}");
    // The webhook with a row left is awake; the others took their last due
    // row and sleep: the fifth until that row's lease ends, those whose floor
    // their turns raised until the floor lapses (10 s), to look below it.
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT webhook_id FROM webhook_deliveries WHERE status = 'pending' AND lease_token IS NULL",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(left.len(), 1);
    let awake: Vec<String> = sqlx::query_scalar(
        "SELECT webhook_id FROM webhook_endpoint_state WHERE ready_at <= now() ORDER BY webhook_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(awake, left);
    let asleep: Vec<String> = sqlx::query_scalar(
        "SELECT webhook_id FROM webhook_endpoint_state
         WHERE ready_at > now() + interval '50 seconds'
            OR ready_at BETWEEN now() AND due_floor_from + interval '10 seconds'
         ORDER BY webhook_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(asleep.len(), 4, "{asleep:?}");
    assert!(!asleep.contains(&left[0]));
    let fifth: bool = sqlx::query_scalar(
        "SELECT ready_at > now() + interval '50 seconds' FROM webhook_endpoint_state
         WHERE webhook_id = $1",
    )
    .bind(&hooks[4])
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(fifth, "the fifth sleeps until its row's lease ends");
    let last = store::claim(&mut conn, 2, 60_000, &rooms).await.unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].webhook_id, left[0]);
}
