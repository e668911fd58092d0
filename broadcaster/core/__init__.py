"""The pure core: rules, records, the health machine, routing and shaping. No Redis, HTTP or Celery."""
