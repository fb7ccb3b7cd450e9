"""scheduler-svc: a job scheduler on PostgreSQL."""
