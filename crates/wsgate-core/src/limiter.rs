//! The per-client-IP handshake rate limit (`limits.handshakes_per_ip_per_s`): a GCRA token
//! bucket per address, written by hand.
//!
//! # Why not `governor`
//!
//! This limiter used to wrap governor's keyed GCRA. Governor reads its clock *before* the
//! compare-and-swap loop that updates the key's theoretical arrival time (TAT), and judges
//! the cell at that reading even when the CAS has to be retried. A thread preempted (or
//! just slow) between its clock read and its CAS is therefore judged at a stale time: if
//! other threads meanwhile pushed the TAT forward, the stale reading can lie further
//! than the burst tolerance τ = (burst − 1) × (1 s / rate) before the TAT, and the
//! handshake is refused although the real offered rate is far below the limit.
//!
//! With `handshakes_per_ip_per_s = 1000000` and the default burst of 100, τ is 99 µs. An
//! address making 500 handshakes per second keeps its TAT about 1 µs after its last
//! admitted handshake, so a handshake is refused whenever the thread that read the clock
//! for it loses the CPU for more than ~100 µs before its CAS while another handshake from
//! the same address is admitted — a routine event on a loaded 2-core machine running many
//! tokio workers and client threads. That is the 1–3 spurious 429s per 4,000–15,000
//! handshakes of the bug report. The stress test below (16 threads on 2 cores, a limit of
//! 100,000,000/s, so τ = 990 ns, 0.7–1.6 M checks/s offered in a debug build) saw 224 to
//! 10,069 refusals in each of ten 1-second runs with governor, and sees none here.
//!
//! # How this one avoids it
//!
//! The TAT of each key lives in one of [`SHARDS`] mutex-protected maps, and the clock is
//! read *inside* the shard's lock. Every decision on a key is thus made at a time no
//! earlier than that of the decision before it: a thread that loses the CPU before taking
//! the lock has not read the clock yet, and one that loses it while holding the lock makes
//! everyone else wait rather than overtake it. The price is a lock per check (not
//! contended across addresses: each shard holds a fraction of them), which is nothing next
//! to a TCP and WebSocket handshake.
//!
//! Time is counted in ticks of 1/rate nanoseconds, so that the emission interval of one
//! handshake (1/rate s) is exactly [`TICKS_PER_CELL`] ticks whatever the rate: the
//! arithmetic is integer and exact, neither rounding the interval down (allowing more than
//! the setting) nor up (refusing below it).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Instant;

use parking_lot::Mutex;

use crate::rejection::Rejection;

/// How many independently locked maps the keys are spread over: enough that handshakes
/// from different addresses rarely wait for each other on a few cores.
const SHARDS: usize = 32;

/// The emission interval, 1/rate s, in ticks of 1/rate ns.
const TICKS_PER_CELL: u128 = 1_000_000_000;

/// Per-client-IP handshake rate limit (`limits.handshakes_per_ip_per_s`), a GCRA token
/// bucket per address.
///
/// IPv6 clients are keyed by their /64: one host usually owns a whole /64 and could
/// otherwise rotate addresses to dodge the limit.
pub struct HandshakeLimiter {
    /// `None` when the limit is disabled (`per_second == 0`).
    gcra: Option<Gcra>,
}

/// The enabled limiter's settings and state.
struct Gcra {
    /// Handshakes per second per key, at least 1.
    rate: u128,
    /// How far (in ticks) a key's TAT may run ahead of now and still admit a handshake:
    /// `burst − 1` emission intervals.
    tolerance: u128,
    /// Tick 0.
    epoch: Instant,
    /// Picks a key's shard (randomly seeded: a client cannot aim at one shard).
    shard_hasher: std::hash::RandomState,
    /// Key → theoretical arrival time in ticks since `epoch`. A key whose TAT is not
    /// after now has a full bucket and may be forgotten.
    shards: Box<[Mutex<HashMap<IpAddr, u128>>]>,
}

impl std::fmt::Debug for HandshakeLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandshakeLimiter")
            .field("enabled", &self.gcra.is_some())
            .field("keys", &self.len())
            .finish()
    }
}

impl HandshakeLimiter {
    /// `per_second` handshakes per address on average, bursts of up to `burst` (a burst
    /// of 0 means `per_second`). `per_second == 0` disables the limit.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let gcra = (per_second > 0).then(|| {
            let burst = if burst == 0 { per_second } else { burst };
            Gcra {
                rate: u128::from(per_second),
                tolerance: u128::from(burst - 1) * TICKS_PER_CELL,
                epoch: Instant::now(),
                shard_hasher: std::hash::RandomState::new(),
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            }
        });
        Self { gcra }
    }

    /// Whether the limit is enforced at all.
    pub fn is_enabled(&self) -> bool {
        self.gcra.is_some()
    }

    /// Takes one handshake token for `ip`: 429 `rate_limited` with `Retry-After` (whole
    /// seconds, at least 1) when the address is over its rate.
    pub fn check(&self, ip: IpAddr) -> Result<(), Rejection> {
        // Not `Instant::now()` here: the clock must be read under the key's lock.
        self.check_with_clock(ip, Instant::now)
    }

    /// [`HandshakeLimiter::check`] at a given time (tests drive the GCRA with it).
    #[cfg(test)]
    fn check_at(&self, ip: IpAddr, now: Instant) -> Result<(), Rejection> {
        self.check_with_clock(ip, || now)
    }

    /// The GCRA decision for `ip`, with `clock` read while the key's shard is locked.
    fn check_with_clock(
        &self,
        ip: IpAddr,
        clock: impl FnOnce() -> Instant,
    ) -> Result<(), Rejection> {
        let Some(gcra) = &self.gcra else {
            return Ok(());
        };
        let key = limit_key(ip);
        let wait = {
            let mut tats = gcra.shard(&key).lock();
            // Read under the lock: see the module docs.
            let now = gcra.ticks(clock());
            // A new key has a full bucket (TAT = now), so it is always admitted and the
            // entry is never left behind by a refusal.
            let tat = tats.entry(key).or_insert(now);
            let earliest = tat.saturating_sub(gcra.tolerance);
            if now >= earliest {
                *tat = (*tat).max(now) + TICKS_PER_CELL;
                return Ok(());
            }
            earliest - now
        };
        Err(Rejection::rate_limited(retry_after_seconds(
            wait, gcra.rate,
        )))
    }

    /// Forgets addresses whose bucket is full again, bounding memory. Call it
    /// periodically (every few seconds).
    pub fn retain_recent(&self) {
        self.retain_recent_with_clock(Instant::now);
    }

    /// [`HandshakeLimiter::retain_recent`] at a given time.
    #[cfg(test)]
    fn retain_recent_at(&self, now: Instant) {
        self.retain_recent_with_clock(|| now);
    }

    fn retain_recent_with_clock(&self, clock: impl Fn() -> Instant) {
        let Some(gcra) = &self.gcra else {
            return;
        };
        for shard in &gcra.shards {
            let mut tats = shard.lock();
            // Under the lock, like `check`: no TAT in this shard was set after this reading.
            let now = gcra.ticks(clock());
            tats.retain(|_, tat| *tat > now);
            tats.shrink_to_fit();
        }
    }

    /// How many addresses the limiter currently tracks.
    pub fn len(&self) -> usize {
        self.gcra.as_ref().map_or(0, |gcra| {
            gcra.shards.iter().map(|shard| shard.lock().len()).sum()
        })
    }

    /// Whether the limiter tracks no address.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Gcra {
    fn shard(&self, key: &IpAddr) -> &Mutex<HashMap<IpAddr, u128>> {
        // The remainder is below SHARDS, so the cast back cannot truncate.
        let index = self.shard_hasher.hash_one(key) % SHARDS as u64;
        &self.shards[index as usize]
    }

    /// `now` in ticks since the epoch (an instant before it counts as the epoch).
    fn ticks(&self, now: Instant) -> u128 {
        now.saturating_duration_since(self.epoch)
            .as_nanos()
            .saturating_mul(self.rate)
    }
}

/// The key `ip` is limited under: itself for IPv4, its /64 for IPv6.
fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// `Retry-After` for a wait of `wait` ticks at `rate` per second: whole seconds, rounded
/// up, at least 1 (a client told "0" would retry at once).
fn retry_after_seconds(wait: u128, rate: u128) -> u64 {
    let ticks_per_second = rate * 1_000_000_000;
    u64::try_from(wait.div_ceil(ticks_per_second))
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    use http::{StatusCode, header};

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The `Retry-After` of a refusal, in seconds.
    fn retry_after(r: &Rejection) -> u64 {
        r.header(&header::RETRY_AFTER)
            .expect("a 429 carries Retry-After")
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// A stale clock reading is what refused handshakes under load with the old,
    /// governor-based limiter (see the module docs): more threads than cores hammer one
    /// address, so threads lose the CPU at every point of `check`, at an offered rate far
    /// below the limit. Every check must pass.
    ///
    /// Why the numbers: at 100,000,000/s a handshake's interval is 10 ns and the tolerance
    /// of a burst of 100 is 990 ns. One check (a lock, a clock read, two hashes) costs well
    /// over 10 ns, so checks serialised by the key's lock can never outrun the limit — a
    /// correct limiter has nothing to refuse — while a thread judged at a reading a
    /// preemption old (milliseconds) is refused by a limiter that reads the clock outside
    /// its update, which governor did 224 to 10,069 times in each of ten runs. A higher
    /// rate buys nothing and risks a false failure: at 1,000,000,000/s (1 ns per handshake,
    /// τ = 99 ns) a correct limiter must refuse once more than 100 checks see one clock
    /// reading, which a coarse clock (microsecond steps on some VMs) allows.
    #[test]
    fn concurrent_checks_far_below_the_rate_are_never_refused() {
        const THREADS: usize = 16;
        const CHECKS_PER_THREAD: u64 = 1_000_000;
        const TIME_LIMIT: Duration = Duration::from_secs(1);
        const RATE: u32 = 100_000_000;
        let limiter = Arc::new(HandshakeLimiter::new(RATE, 100));
        let address = ip("192.0.2.7");
        let barrier = Arc::new(Barrier::new(THREADS));
        let start = Instant::now();
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let (limiter, barrier) = (limiter.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let (mut checks, mut refused) = (0u64, 0u64);
                    let mut first_refusal = None;
                    while checks < CHECKS_PER_THREAD {
                        if checks % 1024 == 0 && start.elapsed() >= TIME_LIMIT {
                            break;
                        }
                        checks += 1;
                        if let Err(r) = limiter.check(address) {
                            refused += 1;
                            first_refusal.get_or_insert(r);
                        }
                    }
                    (checks, refused, first_refusal)
                })
            })
            .collect();
        let (mut checks, mut refused, mut first_refusal) = (0, 0, None);
        for worker in workers {
            let (c, r, first) = worker.join().unwrap();
            checks += c;
            refused += r;
            first_refusal = first_refusal.or(first);
        }
        let offered = checks as f64 / start.elapsed().as_secs_f64();
        assert_eq!(
            refused, 0,
            "{refused} of {checks} checks refused at {offered:.0}/s offered against a limit \
             of {RATE}/s; first: {first_refusal:?}"
        );
        assert_eq!(limiter.len(), 1);
    }

    #[test]
    fn a_burst_is_admitted_then_one_handshake_per_interval() {
        // 10/s: one handshake every 100 ms, bursts of 3.
        let limiter = HandshakeLimiter::new(10, 3);
        let a = ip("192.0.2.1");
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(limiter.check_at(a, t0).is_ok(), "burst handshake {i}");
        }
        let r = limiter.check_at(a, t0).unwrap_err();
        assert_eq!(
            (r.status, r.code, r.message.as_str()),
            (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many handshakes from this address; retry later"
            )
        );
        assert_eq!(retry_after(&r), 1);
        // A refusal takes no token: the next one is due 100 ms after t0, not later.
        let ms = |n| t0 + Duration::from_millis(n);
        assert!(
            limiter
                .check_at(a, ms(100) - Duration::from_nanos(1))
                .is_err()
        );
        assert!(limiter.check_at(a, ms(100)).is_ok());
        assert!(limiter.check_at(a, ms(100)).is_err());
        assert!(limiter.check_at(a, ms(199)).is_err());
        assert!(limiter.check_at(a, ms(200)).is_ok());
        // After a quiet 300 ms the whole burst is back, and no more.
        for i in 0..3 {
            assert!(limiter.check_at(a, ms(500)).is_ok(), "refilled burst {i}");
        }
        assert!(limiter.check_at(a, ms(500)).is_err());
        // Other addresses have their own buckets.
        assert!(limiter.check_at(ip("192.0.2.2"), ms(500)).is_ok());
    }

    #[test]
    fn a_steady_stream_at_exactly_the_rate_passes_and_one_nanosecond_early_does_not() {
        // 3/s: 333,333,333⅓ ns apart, which no whole number of nanoseconds is. Once the
        // burst of 2 is spent at t0, the n-th handshake is due n × 10⁹/3 ns after t0: the
        // first whole nanosecond not before that passes, the one before it is refused,
        // for thousands of intervals. An interval rounded down to 333,333,333 ns would
        // admit the early ones; one rounded up would soon refuse the due ones. (The burst
        // tolerance keeps the TAT on its grid although most checks come a fraction of a
        // nanosecond late.)
        let limiter = HandshakeLimiter::new(3, 2);
        let a = ip("192.0.2.3");
        let t0 = Instant::now();
        let at = |ns: u64| t0 + Duration::from_nanos(ns);
        assert!(limiter.check_at(a, t0).is_ok());
        assert!(limiter.check_at(a, t0).is_ok());
        for n in 1..=3_000u64 {
            let due = (n * 1_000_000_000).div_ceil(3);
            assert!(
                limiter.check_at(a, at(due - 1)).is_err(),
                "handshake {n} one nanosecond early was admitted"
            );
            assert!(
                limiter.check_at(a, at(due)).is_ok(),
                "handshake {n} on time was refused"
            );
        }
    }

    #[test]
    fn a_burst_of_zero_means_the_rate() {
        let limiter = HandshakeLimiter::new(5, 0);
        let a = ip("192.0.2.4");
        let t0 = Instant::now();
        for i in 0..5 {
            assert!(limiter.check_at(a, t0).is_ok(), "handshake {i}");
        }
        assert!(limiter.check_at(a, t0).is_err());
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        let second = |rate: u128| rate * 1_000_000_000;
        for rate in [1, 7, 1_000_000, u128::from(u32::MAX)] {
            assert_eq!(retry_after_seconds(0, rate), 1);
            assert_eq!(retry_after_seconds(1, rate), 1);
            assert_eq!(retry_after_seconds(second(rate), rate), 1);
            assert_eq!(retry_after_seconds(second(rate) + 1, rate), 2);
            assert_eq!(retry_after_seconds(5 * second(rate), rate), 5);
        }
        // Through the limiter: the wait is at most one interval, so at 1/s, 1 s, then
        // less, always announced as 1.
        let limiter = HandshakeLimiter::new(1, 1);
        let a = ip("192.0.2.5");
        let t0 = Instant::now();
        assert!(limiter.check_at(a, t0).is_ok());
        for wait_ms in [0, 1, 500, 999] {
            let r = limiter
                .check_at(a, t0 + Duration::from_millis(wait_ms))
                .unwrap_err();
            assert_eq!(retry_after(&r), 1, "after {wait_ms} ms");
        }
    }

    #[test]
    fn ipv6_is_keyed_by_its_64() {
        let limiter = HandshakeLimiter::new(1, 1);
        let t0 = Instant::now();
        assert!(limiter.check_at(ip("2001:db8::1"), t0).is_ok());
        assert!(limiter.check_at(ip("2001:db8::2"), t0).is_err());
        assert!(limiter.check_at(ip("2001:db8::ffff:1:2:3"), t0).is_err());
        assert!(limiter.check_at(ip("2001:db8:0:1::1"), t0).is_ok());
        // IPv4 addresses are each their own key, even in one /24.
        assert!(limiter.check_at(ip("192.0.2.1"), t0).is_ok());
        assert!(limiter.check_at(ip("192.0.2.2"), t0).is_ok());
        assert_eq!(limiter.len(), 4);
    }

    #[test]
    fn retain_recent_forgets_only_full_buckets() {
        // 10/s, bursts of 2: `a` takes one token, `b` two.
        let limiter = HandshakeLimiter::new(10, 2);
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        assert!(limiter.check_at(a, t0).is_ok());
        assert!(limiter.check_at(b, t0).is_ok());
        assert!(limiter.check_at(b, t0).is_ok());
        limiter.retain_recent_at(ms(99));
        assert_eq!(limiter.len(), 2, "neither bucket is full yet");
        limiter.retain_recent_at(ms(100));
        assert_eq!(limiter.len(), 1, "a's bucket is full again at 100 ms");
        // b is still remembered: at 150 ms it has one handshake, not a full burst of two.
        assert!(limiter.check_at(b, ms(150)).is_ok());
        assert!(limiter.check_at(b, ms(150)).is_err());
        limiter.retain_recent_at(ms(300));
        assert!(limiter.is_empty());
        // A forgotten address starts with a full bucket, as a new one does.
        assert!(limiter.check_at(b, ms(300)).is_ok());
        assert!(limiter.check_at(b, ms(300)).is_ok());
        assert!(limiter.check_at(b, ms(300)).is_err());
    }

    #[test]
    fn a_rate_of_zero_disables_the_limit() {
        let off = HandshakeLimiter::new(0, 0);
        assert!(!off.is_enabled());
        let a = ip("192.0.2.1");
        for _ in 0..100 {
            assert!(off.check(a).is_ok());
        }
        off.retain_recent();
        assert!(off.is_empty());
        assert_eq!(
            format!("{off:?}"),
            "HandshakeLimiter { enabled: false, keys: 0 }"
        );
        let on = HandshakeLimiter::new(1, 0);
        assert!(on.is_enabled());
        assert!(on.check(a).is_ok());
        assert_eq!(
            format!("{on:?}"),
            "HandshakeLimiter { enabled: true, keys: 1 }"
        );
    }

    /// Moved from `preflight`'s tests: the limiter on the real clock.
    #[test]
    fn handshake_limiter() {
        let limiter = HandshakeLimiter::new(1, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(limiter.check(a).is_ok());
        assert!(limiter.check(a).is_ok());
        let r = limiter.check(a).unwrap_err();
        assert_eq!(
            (r.status, r.code),
            (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
        );
        let retry: u64 = r
            .header(&header::RETRY_AFTER)
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=2).contains(&retry));
        assert!(limiter.check(b).is_ok(), "keys are independent");
        assert_eq!(limiter.len(), 2);
        limiter.retain_recent();
        assert!(limiter.len() <= 2);

        // One IPv6 /64 is one key.
        let limiter = HandshakeLimiter::new(1, 1);
        assert!(limiter.check("2001:db8::1".parse().unwrap()).is_ok());
        assert!(limiter.check("2001:db8::2".parse().unwrap()).is_err());
        assert!(limiter.check("2001:db8:0:1::1".parse().unwrap()).is_ok());

        let off = HandshakeLimiter::new(0, 0);
        assert!(!off.is_enabled());
        for _ in 0..100 {
            assert!(off.check(a).is_ok());
        }
        assert!(off.is_empty());
    }
}
