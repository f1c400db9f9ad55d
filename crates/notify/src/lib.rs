//! `mirrorkit-notify`: telling the outside world that a module changed state on this node.
//!
//! The node daemon makes one [`Notifier`] per module and calls [`Notifier::notify`] on every
//! state change of that module here. A notification is delivered by a worker task of its own,
//! in order, one at a time: first the module's command (if any, see `command`), then its
//! webhook (if any, see `webhook`), both with the same JSON body (the [`Notification`]).
//!
//! What this crate promises the cluster manager: **a notification never blocks and never
//! fails the caller.** `notify` only queues (at most [`QUEUE_MAX`] pending; beyond, the oldest
//! is dropped and the drop reported); every failure (a command that exits non-zero or outlives
//! its timeout, a webhook that answers non-2xx, times out or cannot be reached) is logged with
//! `tracing` and handed to the `failures` callback, with the command's path or the webhook's
//! URL in the text. A failover never waits on a notification.
//!
//! This crate decides nothing and knows nothing of the cluster: it never touches replicated
//! data, virtual IPs or the module's state.

mod command;
mod time;
mod webhook;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

pub use command::{KILL_REAP_WAIT_MS, OUTPUT_DRAIN_MS, OUTPUT_KEPT_BYTES};
pub use time::rfc3339_utc;
pub use webhook::{shown_url, RESPONSE_QUOTED_BYTES, RETRY_DELAY_MS};

/// Notifications waiting for the worker (the one being delivered not counted). Beyond, the
/// oldest waiting one is dropped: the newest states are the ones an operator needs.
pub const QUEUE_MAX: usize = 100;

/// Prefix of the environment variables that carry a notification to the command.
pub const ENV_PREFIX: &str = "MIRRORKIT_NOTIFY_";

/// How one module's notifications are delivered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NotifyConfig {
    /// The command to run, absolute (already resolved against the module folder). Executed
    /// directly, without a shell.
    pub command: Option<PathBuf>,
    /// The URL to POST to: `http://` or `https://`.
    pub webhook: Option<String>,
    /// Bound of one command run and of one webhook request (each attempt), in milliseconds.
    pub timeout_ms: u64,
    /// The command's working directory (the module folder); None: the daemon's.
    pub working_dir: Option<PathBuf>,
    /// Environment added for the command (the module's `[env]`, for one), on top of the
    /// daemon's own; the `MIRRORKIT_NOTIFY_*` variables are set after it and win.
    pub env: Vec<(String, String)>,
}

/// One state change of a module on a node: the JSON body of the webhook and of the command's
/// standard input, and the command's `MIRRORKIT_NOTIFY_*` variables.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub cluster: String,
    pub module: String,
    pub node: String,
    pub old_state: String,
    pub new_state: String,
    pub reason: String,
    /// RFC 3339, UTC, milliseconds: `2026-11-29T17:00:00.123Z` (the same instant as `time_ms`).
    pub time: String,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
}

impl Notification {
    /// A notification of a change that happens now.
    pub fn new(
        cluster: impl Into<String>,
        module: impl Into<String>,
        node: impl Into<String>,
        old_state: impl Into<String>,
        new_state: impl Into<String>,
        reason: impl Into<String>,
    ) -> Notification {
        // A clock before 1970 is a broken clock: the notification still goes out, dated 1970.
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Notification {
            cluster: cluster.into(),
            module: module.into(),
            node: node.into(),
            old_state: old_state.into(),
            new_state: new_state.into(),
            reason: reason.into(),
            time: String::new(),
            time_ms: 0,
        }
        .at(now_ms)
    }

    /// The same change dated `time_ms` (the daemon's own timestamp of it, or a test's).
    pub fn at(mut self, time_ms: u64) -> Notification {
        self.time = rfc3339_utc(time_ms);
        self.time_ms = time_ms;
        self
    }

    /// The variables the command gets: `MIRRORKIT_NOTIFY_CLUSTER`, `_MODULE`, `_NODE`,
    /// `_OLD_STATE`, `_NEW_STATE`, `_REASON`, `_TIME`, `_TIME_MS`.
    pub fn env_vars(&self) -> [(&'static str, String); 8] {
        [
            ("MIRRORKIT_NOTIFY_CLUSTER", self.cluster.clone()),
            ("MIRRORKIT_NOTIFY_MODULE", self.module.clone()),
            ("MIRRORKIT_NOTIFY_NODE", self.node.clone()),
            ("MIRRORKIT_NOTIFY_OLD_STATE", self.old_state.clone()),
            ("MIRRORKIT_NOTIFY_NEW_STATE", self.new_state.clone()),
            ("MIRRORKIT_NOTIFY_REASON", self.reason.clone()),
            ("MIRRORKIT_NOTIFY_TIME", self.time.clone()),
            ("MIRRORKIT_NOTIFY_TIME_MS", self.time_ms.to_string()),
        ]
    }
}

/// Why a delivery failed: rendered into the text given to `failures` and logged.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    #[error("notify command {} could not be started: {source}", path.display())]
    CommandSpawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("notify command {} exited with status {code}{output}", path.display())]
    CommandExited {
        path: PathBuf,
        code: i32,
        output: command::Captured,
    },
    #[error("notify command {} was killed by signal {signal}{output}", path.display())]
    CommandSignaled {
        path: PathBuf,
        signal: i32,
        output: command::Captured,
    },
    #[error("notify command {} killed after {timeout_ms} ms{output}", path.display())]
    CommandKilled {
        path: PathBuf,
        timeout_ms: u64,
        output: command::Captured,
    },
    #[error("notify command {} could not be waited for: {source}", path.display())]
    CommandWait {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("webhook {url} answered {status}{body}")]
    WebhookStatus {
        url: String,
        status: String,
        body: webhook::Quoted,
    },
    #[error("webhook {url} did not answer within {timeout_ms} ms")]
    WebhookTimeout { url: String, timeout_ms: u64 },
    #[error(
        "webhook {url} could not be reached (tried twice, {RETRY_DELAY_MS} ms apart): {source}"
    )]
    WebhookUnreachable { url: String, source: ureq::Error },
    #[error("webhook {url} failed: {source}")]
    WebhookRequest { url: String, source: ureq::Error },
    #[error("webhook {url} failed: the request thread ended abnormally: {detail}")]
    WebhookThread { url: String, detail: String },
    #[error("notification of module {module} could not be encoded as JSON: {source}")]
    Encode {
        module: String,
        source: serde_json::Error,
    },
    #[error("{count} notifications dropped: the notifier is slower than the state changes")]
    Dropped { count: u64 },
}

type FailureSink = Arc<dyn Fn(String) + Send + Sync + 'static>;

/// Delivers one module's notifications, in order, from a worker task. Dropping it lets the
/// worker deliver what is already queued, then end.
pub struct Notifier {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the worker: a notification was queued, or the notifier was dropped.
    work: Notify,
    /// Wakes `flush`: the worker finished a delivery and the queue is empty.
    idle: Notify,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Notification>,
    /// Notifications dropped since the worker last reported it.
    dropped: u64,
    /// The worker is delivering one.
    in_flight: bool,
    /// The `Notifier` was dropped: the worker ends once the queue is empty.
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; if something did, the queue itself is still sound.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pending(&self) -> usize {
        let state = self.lock();
        state.queue.len() + usize::from(state.in_flight)
    }
}

impl Notifier {
    /// Start the worker (a tokio task: call this inside a runtime). `failures` receives the
    /// text of every failed delivery and of every drop, from the worker; it must not block.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(cfg: NotifyConfig, failures: impl Fn(String) + Send + Sync + 'static) -> Notifier {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Notify::new(),
            idle: Notify::new(),
        });
        let worker = Worker {
            shared: Arc::clone(&shared),
            agent: cfg
                .webhook
                .as_ref()
                .map(|_| webhook::agent(Duration::from_millis(cfg.timeout_ms))),
            cfg,
            failures: Arc::new(failures),
        };
        tokio::spawn(worker.run());
        Notifier { shared }
    }

    /// Queue `n` for delivery. Never blocks (a short mutex, no I/O), never fails.
    pub fn notify(&self, n: Notification) {
        {
            let mut state = self.shared.lock();
            if state.queue.len() >= QUEUE_MAX {
                state.queue.pop_front();
                state.dropped += 1;
            }
            state.queue.push_back(n);
        }
        self.shared.work.notify_one();
    }

    /// Wait until every queued notification was delivered (or failed and was reported), at most
    /// `within`. True when the queue is empty and the worker idle.
    pub async fn flush(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let idle = self.shared.idle.notified();
            tokio::pin!(idle);
            // Registered before the check, so that a wake-up between the two is not lost.
            idle.as_mut().enable();
            if self.shared.pending() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.shared.pending() == 0;
            }
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_one();
    }
}

struct Worker {
    shared: Arc<Shared>,
    cfg: NotifyConfig,
    agent: Option<ureq::Agent>,
    failures: FailureSink,
}

impl Worker {
    async fn run(self) {
        loop {
            let next = {
                let mut state = self.shared.lock();
                match state.queue.pop_front() {
                    Some(n) => {
                        state.in_flight = true;
                        Some((n, std::mem::take(&mut state.dropped)))
                    }
                    None if state.closed => return,
                    None => None,
                }
            };
            let Some((n, dropped)) = next else {
                // `notify_one` keeps a permit when nobody waits: a notification queued since the
                // check above wakes this at once.
                self.shared.work.notified().await;
                continue;
            };
            if dropped > 0 {
                self.report(&n.module, &Failure::Dropped { count: dropped });
            }
            self.deliver(&n).await;
            let idle = {
                let mut state = self.shared.lock();
                state.in_flight = false;
                state.queue.is_empty()
            };
            if idle {
                self.shared.idle.notify_waiters();
            }
        }
    }

    async fn deliver(&self, n: &Notification) {
        let body = match serde_json::to_vec(n) {
            Ok(body) => body,
            Err(source) => {
                let module = n.module.clone();
                return self.report(&n.module, &Failure::Encode { module, source });
            }
        };
        let timeout_ms = self.cfg.timeout_ms;
        if let Some(path) = &self.cfg.command {
            let (env, dir) = (&self.cfg.env, self.cfg.working_dir.as_deref());
            match command::run(path, env, dir, n, &body, timeout_ms).await {
                Ok(took_ms) => tracing::debug!(
                    module = n.module,
                    command = %path.display(),
                    new_state = n.new_state,
                    "notify command succeeded in {took_ms} ms"
                ),
                Err(failure) => self.report(&n.module, &failure),
            }
        }
        if let (Some(url), Some(agent)) = (&self.cfg.webhook, &self.agent) {
            match webhook::post(agent, url, body, timeout_ms).await {
                Ok(status) => tracing::debug!(
                    module = n.module,
                    webhook = shown_url(url),
                    new_state = n.new_state,
                    "webhook answered {status}"
                ),
                Err(failure) => self.report(&n.module, &failure),
            }
        }
    }

    fn report(&self, module: &str, failure: &Failure) {
        let text = failure.to_string();
        tracing::warn!(module, "{text}");
        (self.failures)(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_dates_itself_and_names_its_variables() {
        let n = Notification::new("c", "shop", "a", "SECOND", "ALONE", "peer lost")
            .at(1_700_000_000_123);
        assert_eq!(n.time, "2023-11-14T22:13:20.123Z");
        let vars = n.env_vars();
        assert!(vars.iter().all(|(name, _)| name.starts_with(ENV_PREFIX)));
        assert!(vars.contains(&("MIRRORKIT_NOTIFY_TIME_MS", "1700000000123".to_owned())));
        assert!(vars.contains(&("MIRRORKIT_NOTIFY_OLD_STATE", "SECOND".to_owned())));

        let now = Notification::new("c", "shop", "a", "SECOND", "ALONE", "peer lost");
        assert!(now.time_ms > 1_700_000_000_000);
        assert_eq!(now.time, rfc3339_utc(now.time_ms));
    }

    #[test]
    fn failure_texts_name_what_failed() {
        let dropped = Failure::Dropped { count: 3 }.to_string();
        assert_eq!(
            dropped,
            "3 notifications dropped: the notifier is slower than the state changes"
        );
        let killed = Failure::CommandKilled {
            path: PathBuf::from("/etc/mirrorkit/modules/shop/notify.sh"),
            timeout_ms: 10_000,
            output: command::Captured::default(),
        };
        assert_eq!(
            killed.to_string(),
            "notify command /etc/mirrorkit/modules/shop/notify.sh killed after 10000 ms"
        );
    }
}
