//! Fair shares of this instance's send slots, pure. There are `concurrency`
//! slots plus a reserve (an eighth more). A webhook may hold at most
//! `concurrency / n` slots, where `n` counts the webhooks with sends in flight
//! here (plus one for a newcomer); only a webhook with nothing in flight may
//! take a slot from the reserve, and only one. So a fresh delivery to a quiet
//! webhook finds a slot however many of one endpoint's sends hang until the
//! timeout (unless more endpoints than the reserve turn slow at the same
//! moment), and a webhook alone still uses all `concurrency` slots, as many
//! as before there were shares.
use std::collections::HashMap;

/// What the claim may take per webhook (see `webhook_claim` in the migrations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rooms {
    /// Webhooks with sends in flight here, and how many more each may take
    /// (0 = at its share).
    pub busy: Vec<(String, i32)>,
    /// How many a webhook with nothing in flight here may take.
    pub newcomer: i32,
}

impl Rooms {
    /// No room at all.
    pub fn none() -> Self {
        Self {
            busy: vec![],
            newcomer: 0,
        }
    }

    pub fn any_full(&self) -> bool {
        self.busy.iter().any(|(_, room)| *room <= 0)
    }
}

/// Slots added for webhooks that have nothing in flight: an eighth of
/// `concurrency`, at least one when there are two slots or more.
pub fn reserve(concurrency: usize) -> usize {
    if concurrency < 2 {
        0
    } else {
        (concurrency / 8).max(1)
    }
}

/// All the slots of an instance: `concurrency` and the reserve.
pub fn slots(concurrency: usize) -> usize {
    concurrency + reserve(concurrency)
}

/// `free` is how many of the `slots(concurrency)` are free now.
pub fn rooms(concurrency: usize, free: usize, in_flight: &HashMap<String, usize>) -> Rooms {
    let reserve = reserve(concurrency);
    let share = |n: usize| (concurrency / n.max(1)).max(1);
    // What may be taken without touching the reserve.
    let unreserved = free.saturating_sub(reserve);
    let busy_share = share(in_flight.len());
    let mut busy: Vec<(String, i32)> = in_flight
        .iter()
        .map(|(id, &n)| {
            let room = busy_share.saturating_sub(n).min(unreserved);
            (id.clone(), room as i32)
        })
        .collect();
    busy.sort();
    Rooms {
        busy,
        newcomer: share(in_flight.len() + 1).min(unreserved.max(1)) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flying(pairs: &[(&str, usize)]) -> HashMap<String, usize> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn a_webhook_alone_gets_every_slot_but_the_reserve() {
        assert_eq!(reserve(64), 8);
        assert_eq!(slots(64), 72);
        assert_eq!(rooms(64, 72, &flying(&[])).newcomer, 64);
        assert_eq!(
            rooms(64, 22, &flying(&[("a", 50)])).busy,
            vec![("a".into(), 14)]
        );
    }

    #[test]
    fn shares_shrink_as_webhooks_get_busy() {
        let r = rooms(64, 8, &flying(&[("a", 64)]));
        assert_eq!(r.busy, vec![("a".into(), 0)]);
        assert!(r.any_full());
        // Only the reserve is free: a newcomer may take one slot of it.
        assert_eq!(r.newcomer, 1);
        let r = rooms(64, 38, &flying(&[("a", 30), ("b", 4)]));
        assert_eq!(r.busy, vec![("a".into(), 2), ("b".into(), 28)]);
        assert_eq!(r.newcomer, 21);
    }

    #[test]
    fn a_second_slow_webhook_cannot_drain_the_reserve() {
        // a hangs at its share, b took its one reserve slot and hangs too.
        let r = rooms(64, 7, &flying(&[("a", 64), ("b", 1)]));
        assert_eq!(r.busy, vec![("a".into(), 0), ("b".into(), 0)]);
        assert_eq!(r.newcomer, 1, "a third webhook still gets a slot");
    }

    #[test]
    fn every_webhook_keeps_at_least_one_slot() {
        let many: HashMap<String, usize> = (0..100).map(|i| (format!("w{i}"), 0)).collect();
        let r = rooms(64, 72, &many);
        assert!(r.busy.iter().all(|(_, room)| *room == 1));
        assert_eq!(r.newcomer, 1);
    }

    #[test]
    fn tiny_pools_have_no_reserve_below_two_slots() {
        assert_eq!(reserve(1), 0);
        assert_eq!(rooms(1, 1, &flying(&[])).newcomer, 1);
        assert_eq!(reserve(2), 1);
        assert_eq!(slots(2), 3);
        assert_eq!(rooms(2, 3, &flying(&[])).newcomer, 2);
    }
}
