"""Where the search's trials run: the registry of search backends. Torch-free and Ray-free (the
backend's own module is imported only when a search starts), so `autoft run --help` and the plan
stay light.

    backend = get_backend(plan.parallel.backend)   # callers ask the backend, never compare its name
    backend.preflight(plan.parallel)                # missing package, unreachable cluster: one-line error
    result = backend.run(plan.parallel, spec, bundle, space, settings, out, progress, ...)

- `local`: the trials one after another in this process (`search.run_search`); nothing to install.
- `ray`: every trial a Ray Tune trial, promotions by Ray's asynchronous successive halving
  (`search_ray.run_search_ray`); several trials at once, across the GPUs and machines of a Ray
  cluster. Needs `pip install 'autoft[ray]'`.

Both write the same files with the same meaning (trials.jsonl, search.json, the winner's
checkpoint in checkpoints/) and return the same `SearchResult`.
"""
from __future__ import annotations

import importlib.util
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from autoft.errors import AutoftError

if TYPE_CHECKING:
    from autoft.autotrain.search import SearchResult

# Seconds to wait for a Ray cluster's address to answer before saying it does not (ray.init
# itself waits about 45 s on an address nobody listens on).
ADDRESS_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Parallel:
    """How the search's trials share the machines (`RunPlan.parallel`)."""

    backend: str = "local"
    address: str | None = None  # ray: "auto" or host:port of a running cluster; None: start one here
    trials_at_once: int | None = None  # None: one (local), as many as the resources allow (ray)
    gpus_per_trial: float | None = None  # None: a whole GPU where the cluster has GPUs, else none
    cpus_per_trial: float | None = None  # None: one core

    def resources(self, cluster_gpus: float) -> dict[str, float]:
        """What one trial asks of the cluster: CPU cores and (a share of) GPUs."""
        gpus = self.gpus_per_trial if self.gpus_per_trial is not None else (1.0 if cluster_gpus > 0 else 0.0)
        return {"cpu": float(self.cpus_per_trial or 1.0), "gpu": float(gpus)}


@dataclass(frozen=True)
class Backend:
    name: str
    help: str
    parallel: bool  # can run several trials at once (and take --ray-address, --trials-in-parallel, ...)
    run: Callable[..., "SearchResult"]
    requires: str | None = None  # a module it imports
    install: str | None = None  # how to install it
    check_address: Callable[[str], None] | None = None

    def installed(self) -> bool:
        if self.requires is None:
            return True
        try:
            return importlib.util.find_spec(self.requires) is not None
        except (ImportError, ValueError):  # a module set to None in sys.modules, a broken install
            return False

    def preflight(self, parallel: Parallel) -> None:
        """Fail now, in one line, rather than after the data is loaded: the package is missing, or
        the cluster address is malformed or does not answer."""
        if not self.installed():
            raise AutoftError(f"--search-backend {self.name} needs {self.requires}, which is not installed",
                              self.install or f"pip install {self.requires}")
        if parallel.address and self.check_address is not None:
            self.check_address(parallel.address)


def _run_local(parallel: Parallel, spec, bundle, search_space: dict, settings, out, progress,
               trial_factory: Any = None, base_config: dict | None = None, on_rung_end=None) -> "SearchResult":
    from autoft.autotrain.search import run_search

    return run_search(spec, bundle, search_space, settings, out, progress, trial_factory=trial_factory,
                      base_config=base_config, on_rung_end=on_rung_end)


def _run_ray(parallel: Parallel, spec, bundle, search_space: dict, settings, out, progress,
             trial_factory: Any = None, base_config: dict | None = None, on_rung_end=None) -> "SearchResult":
    # Ray's ASHA promotes trials as they finish, so there is no rung boundary to re-plan at: a time
    # budget holds the Ray search by its cap alone (settings.time_budget_s, Ray's Stopper).
    from autoft.autotrain.search_ray import run_search_ray

    return run_search_ray(spec, bundle, search_space, settings, out, progress, parallel=parallel,
                          trial_factory=trial_factory, base_config=base_config)


def split_address(address: str) -> tuple[str, int]:
    """"host:port" (or ray://host:port) -> (host, port); a one-line error for anything else."""
    rest = address.split("://", 1)[-1]
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AutoftError(f"--ray-address must be auto or HOST:PORT, got {address!r}",
                          "pass e.g. --ray-address 10.0.0.5:6379 (what `ray start --head` printed)")
    return host.strip("[]"), int(port)


def check_ray_address(address: str, timeout_s: float = ADDRESS_TIMEOUT_S) -> None:
    """A TCP connection to a Ray cluster's head within `timeout_s`, or a one-line error. `auto`
    is left to Ray (it fails at once when no cluster was started on this machine)."""
    if address == "auto":
        return
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as err:
        why = "no answer within {:g} s".format(timeout_s) if isinstance(err, TimeoutError) else (
            err.strerror or str(err))
        raise AutoftError(f"no Ray cluster answers at {address} ({why})",
                          "start one there with `ray start --head --port PORT`, check --ray-address, "
                          "or leave it out to start Ray on this machine") from None


BACKENDS: dict[str, Backend] = {
    "local": Backend("local", "one trial after another in this process (nothing to install)", parallel=False,
                     run=_run_local),
    "ray": Backend("ray", "Ray Tune: several trials at once, across the GPUs and machines of a Ray cluster, "
                   "promoted by asynchronous successive halving (ASHA)", parallel=True, run=_run_ray,
                   requires="ray", install="pip install 'autoft[ray]'", check_address=check_ray_address),
}


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise AutoftError(f"unknown search backend {name!r}", f"pass one of: {', '.join(BACKENDS)}") from None
