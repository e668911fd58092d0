"""Every Redis key and every Celery queue of one deployment, built here and only here.

All of them live under the deployment's `key_prefix` (default `fb:`), Celery's included:
kombu's `global_keyprefix` puts the queues, their unacked messages and the event channels
under the same prefix, and redbeat's schedule lives at `<prefix>redbeat`. So two
deployments with different prefixes share one Redis database without seeing each other.

Posts and their deliveries (`broadcaster.ledger.store`):
  post:<id>                   hash    post -> Post JSON, d:<channel> -> Delivery JSON
  sched                       zset    post id -> due time (queued, not yet dispatched)
  dispatching                 zset    post id -> lease deadline (claimed by a dispatcher)
  inflight                    zset    "<post id>|<channel>" -> the sweeper's deadline
  held:<target>               zset    post id -> due time (Bluesky delivery held for backfill)
  brand:<brand>:posts         zset    post id -> created time (listing, newest first)
  idem:<brand>:<key>          string  post key, for Idempotency-Key replays (7 days)
  events                      stream  every state change (`brand` and `post` on each)
  events:brand:<brand>        stream  the ids of one brand's entries (bodies: `events`)
  rss:<brand>, rss:<brand>:e  zset + hash: the brand's feed entries; rss:<brand>:updated
  metrics:c, metrics:h        hash    counters, histogram buckets (Prometheus)
  dispatch:kicked             string  the API's marker that it woke the dispatcher
  bsky:recent:<target>        zset    post id -> when Bluesky took it (look-back mirror)
  backfill:<target>           string  the lease of a running backfill chain
Fan-out recipients (`broadcaster.ledger.recipients`):
  rcpt:<post>:<channel>       hash    recipient -> entry, and #total, #day (SMS), #<counter>
  rcpt:<post>:<channel>:todo  set     recipients without a final state (gone once empty)
    (before 2026-12's fold also `:n`, `:init`, `:day`: folded into the hash by its next write)
  sms:<brand>:subscribers, sms:<brand>:budget:<day>  SMS audience and daily spend
  pace:<channel>:...          hash    token buckets (`broadcaster.ledger.pacing`)
Health (`broadcaster.ledger.health`, `workers.health`):
  health:<target>[:probes|:history|:acted|:probing:<n>]  the breaker, its evidence, its actions
  health:targets              set     targets ever probed
  health:authfailed:<brand>, health:relogin:<brand>, bsky:session:<brand>  probe sessions
Bluesky sessions (`channels.bluesky`, shared by every worker and the probes):
  bsky:session:<brand>        string  the brand's session string (atproto export)
  bsky:session:<brand>:refresh  string  lock: one process refreshes the session (SET NX PX)
  health:relogin:<brand>      string  marker: a password login was made (at most one per few min)
  health:authfailed:<brand>   string  the app password was refused (the message, or "1")
Webhooks (`broadcaster.ledger.hooks`):
  hooks:<brand>, hooks:<brand>:<hook>:dlv, hookdlv:<id>, hooks:cursor, hooks:fanout:lock,
  hooks:sent:<marker>
Media (`broadcaster.ledger.media`; the bytes in the blob store, `broadcaster.ledger.blobs`):
  media:<id>                  (blob store key, not Redis) the image's bytes
  media:meta:<id>             hash    brand, mime, width, height, size, created; dying once collected
  media:posts:<id>            set     the posts it was attached to
  media:gc                    zset    media id -> when to check whether it is still needed
Processes (`broadcaster.ledger.readiness`):
  heartbeat:dispatch, heartbeat:workers
Celery (kombu, redbeat): <prefix>broadcaster, <prefix>broadcaster.control, <prefix>broadcaster.probe (queues),
  <prefix>unacked*, <prefix>_kombu.binding.*, <prefix>redbeat*
"""

from __future__ import annotations

QUEUE = "broadcaster"  # deliveries
CONTROL_QUEUE = "broadcaster.control"  # dispatch, sweeps, re-drives: served beside deliveries
# Bluesky probes: a hung AppView holds a probe for its whole timeout, so probes get their own
# threads worker (`broadcaster worker --probes`) instead of waiting behind a process per probe.
PROBE_QUEUE = "broadcaster.probe"
SHARE_TASK = "broadcaster.dispatch_posts"  # a backlog's share, sent to CONTROL_QUEUE
QUEUES = (QUEUE, CONTROL_QUEUE, PROBE_QUEUE)


class Keys:
    """The keys of one deployment (one prefix). Cheap to build."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    # ---- posts and deliveries
    def post(self, post_id: str) -> str:
        return self._k("post", post_id)

    def post_prefix(self) -> str:
        """What every post key starts with (a script checks whether a post still exists)."""
        return self._k("post", "")

    @property
    def sched(self) -> str:
        return self._k("sched")

    @property
    def dispatching(self) -> str:
        return self._k("dispatching")

    @property
    def inflight(self) -> str:
        return self._k("inflight")

    def held(self, target: str) -> str:
        return self._k("held", target)

    def brand_posts(self, brand: str) -> str:
        return self._k("brand", brand, "posts")

    def idempotency(self, brand: str, key: str) -> str:
        return self._k("idem", brand, key)

    @property
    def events(self) -> str:
        return self._k("events")

    def brand_events(self, brand: str) -> str:
        return self._k("events", "brand", brand)

    def rss(self, brand: str) -> str:
        return self._k("rss", brand)

    def rss_entries(self, brand: str) -> str:
        return self._k("rss", brand, "e")

    def rss_updated(self, brand: str) -> str:
        return self._k("rss", brand, "updated")

    @property
    def counters(self) -> str:
        return self._k("metrics", "c")

    @property
    def histograms(self) -> str:
        return self._k("metrics", "h")

    @property
    def dispatch_kicked(self) -> str:
        return self._k("dispatch", "kicked")

    def bluesky_recent(self, target: str) -> str:
        return self._k("bsky", "recent", target)

    def backfill(self, target: str) -> str:
        return self._k("backfill", target)

    # ---- fan-out
    def recipients(self, post_id: str, channel: str) -> str:
        """A fan-out delivery's recipients, with its counters, snapshot size and SMS budget day."""
        return self._k("rcpt", post_id, channel)

    def recipients_todo(self, post_id: str, channel: str) -> str:
        return self._k("rcpt", post_id, channel, "todo")

    def sms_subscribers(self, brand: str) -> str:
        return self._k("sms", brand, "subscribers")

    def sms_budget(self, brand: str, day: str) -> str:
        return self._k("sms", brand, "budget", day)

    def pace(self, *parts: str) -> str:
        return self._k("pace", *parts)

    # ---- health
    def health(self, target: str, *more: str) -> str:
        return self._k("health", target, *more)

    @property
    def health_targets(self) -> str:
        return self._k("health", "targets")

    def auth_failed(self, brand: str) -> str:
        return self._k("health", "authfailed", brand)

    def relogin(self, brand: str) -> str:
        """SET NX EX marker: whoever sets it may log in with the brand's password (channel or probe)."""
        return self._k("health", "relogin", brand)

    def bluesky_session(self, brand: str) -> str:
        return self._k("bsky", "session", brand)

    def bluesky_refresh_lock(self, brand: str) -> str:
        """SET NX PX lock: the one process refreshing the brand's Bluesky session."""
        return self._k("bsky", "session", brand, "refresh")

    # ---- webhooks
    def hooks(self, brand: str) -> str:
        return self._k("hooks", brand)

    def hook_deliveries(self, brand: str, hook_id: str) -> str:
        return self._k("hooks", brand, hook_id, "dlv")

    def hook_delivery(self, delivery_id: str) -> str:
        return self._k("hookdlv", delivery_id)

    @property
    def hooks_cursor(self) -> str:
        return self._k("hooks", "cursor")

    @property
    def hooks_fanout_lock(self) -> str:
        return self._k("hooks", "fanout", "lock")

    def hook_sent(self, marker: str) -> str:
        return self._k("hooks", "sent", marker)

    # ---- media
    def media_blob(self, media_id: str) -> str:
        """The blob store's key (object key) of an image's bytes, under this deployment's prefix."""
        return self._k("media", media_id)

    def media_meta(self, media_id: str) -> str:
        return self._k("media", "meta", media_id)

    def media_posts(self, media_id: str) -> str:
        return self._k("media", "posts", media_id)

    @property
    def media_gc(self) -> str:
        return self._k("media", "gc")

    # ---- processes
    @property
    def dispatch_heartbeat(self) -> str:
        return self._k("heartbeat", "dispatch")

    @property
    def sweep_heartbeat(self) -> str:
        """The start (ledger clock) of the latest sweeper pass that finished."""
        return self._k("heartbeat", "sweep")

    @property
    def worker_heartbeats(self) -> str:
        return self._k("heartbeat", "workers")

    # ---- Celery
    def broker_queue(self, name: str) -> str:
        """The Redis list kombu keeps a queue in (under `global_keyprefix`, see `celery_config`)."""
        return self.prefix + name

    @property
    def redbeat(self) -> str:
        return self.prefix + "redbeat"
