"""Consul discovery: blocking watches of the catalog, health and KV, published as immutable CatalogSnapshots."""

from consulgw.discovery.consul_api import ConsulClient, Result
from consulgw.discovery.health import instance_from_entry
from consulgw.discovery.watcher import CatalogWatcher, WatcherStatus

__all__ = ["CatalogWatcher", "ConsulClient", "Result", "WatcherStatus", "instance_from_entry"]
