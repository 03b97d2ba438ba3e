"""Gunicorn settings for the web processes: `gunicorn -c deploy/gunicorn.conf.py webhook:app`.

Web only: run them with WORKER_ENABLED=false and the replies in `python worker.py`. This file is read by gunicorn,
not by the app, so it takes its few values straight from the environment (PORT, WEB_CONCURRENCY,
PROMETHEUS_MULTIPROC_DIR); everything else is the app's own settings (config.py).
"""

import os

bind = f"0.0.0.0:{os.environ.get('PORT', '5000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))

# SIGTERM: a worker finishes the requests it is serving for up to this long, then it is killed. systemd's
# TimeoutStopSec and compose's stop_grace_period are a little longer.
graceful_timeout = 30

# Never preload: the app opens Redis connections and threads that must be made in each worker after the fork.
preload_app = False

# No access log: Mega's and some Evolution webhook URLs carry the token in the query string (?token=...).
accesslog = None


def child_exit(server, worker):
    """A web worker died: drop its live gauges from the metric files the /metrics endpoint sums."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
