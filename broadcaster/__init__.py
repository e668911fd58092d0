"""Failover Broadcaster: queue a brand's posts for Bluesky; keep its audience reachable when Bluesky fails."""

__version__ = "0.1.0"
