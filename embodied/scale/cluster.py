"""Joining a Ray cluster and checking, before any work, that a job fits it.

``ray.address`` (a config section of the commands that scale out):

* ``local`` — start a Ray cluster inside this process (this machine's cores and GPUs, or
  ``ray.num_cpus``); it ends with the command. For trying the Ray path on one machine.
* ``auto`` — join the cluster started on this machine with ``ray start --head`` (or named by
  ``RAY_ADDRESS``).
* ``host:port`` — join the cluster whose head listens there (``ray start --head --port=6379``
  prints it); ``ray://host:10001`` — the same through Ray Client.

Ray's own ``ray.init`` waits for minutes on an address where nothing listens; here a head that
does not answer within a few seconds is a one-line error naming the address.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from dataclasses import dataclass
from typing import Any, Mapping

log = logging.getLogger("embodied")

CONNECT_TIMEOUT_S = 3.0


@dataclass
class Demand:
    """The resources a job asks the cluster for (all of them at once)."""

    what: str  # e.g. "labeling with ray.actors=4 x ray.num_gpus=1"
    cpus: float = 0.0
    gpus: float = 0.0


def ray_section(section: Mapping[str, Any] | None, schema: type) -> dict[str, Any] | None:
    """A ``ray:`` section as a plain dict, every key of ``schema`` filled with its default; None
    when it asks for no cluster (no section, or ``address: null``)."""
    if section is None:
        return None
    given = dict(section)
    if not given.get("address"):
        return None
    return {**{f.name: f.default for f in dataclasses.fields(schema)}, **given}


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError("ray.address is set but Ray is not installed: pip install 'embodied-rl[ray]' "
                          "(or drop ray.address to run on this machine without Ray)") from None
    return ray


def _head(address: str) -> tuple[str, int] | None:
    """(host, port) of an explicit address; None for ``auto``."""
    if address == "auto":
        return None
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"ray.address={address!r} is not local, auto, host:port or ray://host:port")
    return host, int(port)


def connect(address: str, num_cpus: int | None = None) -> Any:
    """Connect this process to the cluster ``address`` names (see the module docstring); a
    process already connected keeps its connection. Returns the ``ray`` module."""
    ray = _import_ray()
    if not isinstance(address, str) or not address:
        raise ValueError(f"ray.address must be local, auto, host:port or ray://host:port, got {address!r}")
    if ray.is_initialized():
        return ray
    if address == "local":
        ray.init(num_cpus=num_cpus, include_dashboard=False, configure_logging=False, log_to_driver=False)
        return ray
    head = _head(address)
    if head is not None:
        try:
            socket.create_connection(head, timeout=CONNECT_TIMEOUT_S).close()
        except OSError as err:
            raise ConnectionError(f"ray.address={address}: no Ray head answers at {head[0]}:{head[1]} ({err}); start "
                                  "one with `ray start --head --port=<port>` or use ray.address=local") from None
    try:
        ray.init(address=address, configure_logging=False, log_to_driver=False)
    except ConnectionError as err:
        raise ConnectionError(f"ray.address={address}: {str(err).splitlines()[0]} (start a cluster with "
                              "`ray start --head`, or use ray.address=local)") from None
    return ray


def require(ray, demand: Demand) -> dict[str, float]:
    """The cluster's total resources; a one-line error when ``demand`` cannot fit in them."""
    have = ray.cluster_resources()
    cpus, gpus = float(have.get("CPU", 0.0)), float(have.get("GPU", 0.0))
    if demand.gpus > gpus:
        raise ValueError(f"{demand.what} asks for {demand.gpus:g} GPU(s) but the Ray cluster has {gpus:g}: lower "
                         "ray.num_gpus or ray.actors, or add GPU nodes")
    if demand.cpus > cpus:
        raise ValueError(f"{demand.what} asks for {demand.cpus:g} CPU(s) but the Ray cluster has {cpus:g}: lower "
                         "ray.num_cpus or ray.actors, or add nodes")
    return {"CPU": cpus, "GPU": gpus}


def check_shippable(obj: Any, what: str) -> None:
    """A one-line error naming ``what`` when Ray cannot serialise ``obj`` (cloudpickle) to ship it
    to workers (an open socket, a lock, a CUDA stream...)."""
    ray = _import_ray()
    try:
        ray.cloudpickle.dumps(obj)
    except Exception as err:  # noqa: BLE001 - pickling raises many types; say what to fix
        first = str(err).splitlines()[0] if str(err) else ""
        raise ValueError(f"{what} cannot be shipped to Ray workers ({type(err).__name__}: {first}); build it from a "
                         "config (embodied-label reward=...) or pass a function that builds it") from None
