"""Helpers for ``bench/run.py``: process supervision, the component stack, wrk, Consul calls and the report."""
