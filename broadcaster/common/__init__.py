"""Shared plumbing for the API and the workers: the Celery producer and its configuration, logging."""
