"""The gateway process: composition root, public proxy handler, admin API and dashboard."""
