//! A bounded queue between pipeline stages. Producers choose what happens when it is full:
//! [`BoundedQueue::push_drop_oldest`] never blocks and evicts the oldest item (live capture,
//! CoT jobs), [`BoundedQueue::push_wait`] blocks until there is room (files, where nothing
//! should be lost). Consumers pop with a timeout so they can notice shutdown.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

pub struct BoundedQueue<T> {
    state: Mutex<State<T>>,
    not_empty: Condvar,
    not_full: Condvar,
    cap: usize,
}

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

/// What a pop returned.
#[derive(Debug)]
pub enum Pop<T> {
    Item(T),
    /// Nothing arrived within the timeout.
    Timeout,
    /// Closed by the producer and drained.
    Closed,
}

impl<T> BoundedQueue<T> {
    /// A queue holding at most `cap` items (`cap` ≥ 1).
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        BoundedQueue {
            state: Mutex::new(State {
                items: VecDeque::with_capacity(cap),
                closed: false,
            }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            cap,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding this lock cannot leave the deque inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Push without blocking; when full, evict and return the oldest item. After `close`, the
    /// item is handed back unqueued.
    pub fn push_drop_oldest(&self, item: T) -> Option<T> {
        let mut s = self.lock();
        if s.closed {
            return Some(item);
        }
        let evicted = if s.items.len() >= self.cap {
            s.items.pop_front()
        } else {
            None
        };
        s.items.push_back(item);
        drop(s);
        self.not_empty.notify_one();
        evicted
    }

    /// Push, waiting while the queue is full. Returns the item back if the queue was closed.
    pub fn push_wait(&self, item: T) -> Result<(), T> {
        let mut s = self.lock();
        while s.items.len() >= self.cap && !s.closed {
            s = self.not_full.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if s.closed {
            return Err(item);
        }
        s.items.push_back(item);
        drop(s);
        self.not_empty.notify_one();
        Ok(())
    }

    /// Pop the oldest item, waiting up to `timeout`.
    pub fn pop_timeout(&self, timeout: Duration) -> Pop<T> {
        let mut s = self.lock();
        if s.items.is_empty() && !s.closed {
            s = self
                .not_empty
                .wait_timeout_while(s, timeout, |s| s.items.is_empty() && !s.closed)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        match s.items.pop_front() {
            Some(it) => {
                drop(s);
                self.not_full.notify_one();
                Pop::Item(it)
            }
            None if s.closed => Pop::Closed,
            None => Pop::Timeout,
        }
    }

    /// No more pushes; consumers drain what is queued, then see `Closed`. Wakes every waiter.
    pub fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_all();
        self.not_full.notify_all();
    }

    /// Drop everything queued (shutdown by signal: queued work is abandoned).
    pub fn clear(&self) {
        self.lock().items.clear();
        self.not_full.notify_all();
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn pop(q: &BoundedQueue<u32>) -> Option<u32> {
        match q.pop_timeout(Duration::from_millis(1)) {
            Pop::Item(x) => Some(x),
            _ => None,
        }
    }

    #[test]
    fn drop_oldest_keeps_the_newest_items_in_order() {
        let q = BoundedQueue::new(3);
        let evicted: Vec<u32> = (0..10).filter_map(|i| q.push_drop_oldest(i)).collect();
        assert_eq!(evicted, vec![0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(q.len(), 3);
        assert_eq!(
            (pop(&q), pop(&q), pop(&q), pop(&q)),
            (Some(7), Some(8), Some(9), None)
        );
    }

    #[test]
    fn close_drains_then_reports_closed_and_refuses_pushes() {
        let q = BoundedQueue::new(2);
        q.push_drop_oldest(1);
        q.close();
        assert_eq!(q.push_drop_oldest(2), Some(2));
        assert_eq!(q.push_wait(3), Err(3));
        assert!(matches!(q.pop_timeout(Duration::ZERO), Pop::Item(1)));
        assert!(matches!(q.pop_timeout(Duration::from_secs(5)), Pop::Closed));
    }

    #[test]
    fn pop_times_out_when_empty() {
        let q: BoundedQueue<u32> = BoundedQueue::new(1);
        assert!(matches!(
            q.pop_timeout(Duration::from_millis(5)),
            Pop::Timeout
        ));
    }

    #[test]
    fn push_wait_blocks_until_a_consumer_makes_room_and_loses_nothing() {
        let q = Arc::new(BoundedQueue::new(2));
        let prod = {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..100u32 {
                    q.push_wait(i).unwrap();
                }
                q.close();
            })
        };
        let mut got = Vec::new();
        loop {
            match q.pop_timeout(Duration::from_secs(10)) {
                Pop::Item(x) => got.push(x),
                Pop::Closed => break,
                Pop::Timeout => panic!("producer stalled"),
            }
            assert!(q.len() <= 2);
        }
        prod.join().unwrap();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn close_wakes_a_blocked_producer() {
        let q = Arc::new(BoundedQueue::new(1));
        q.push_wait(0u32).unwrap();
        let prod = {
            let q = q.clone();
            std::thread::spawn(move || q.push_wait(1))
        };
        std::thread::sleep(Duration::from_millis(20));
        q.close();
        assert_eq!(prod.join().unwrap(), Err(1));
    }
}
