"""Fail fast when a Hugging Face hub name (``init_from=gpt2``) cannot be fetched: without a
network, ``from_pretrained`` retries for about 25 s over a dozen log lines before its error.

A name that is a local path, or whose files are in the Hugging Face cache, is left alone (when
the hub cannot be reached the cached files are used at once, ``HF_HUB_OFFLINE=1``); otherwise
one short connection to the hub decides, and without it the run stops with one line.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from llm_scratch.errors import UserError

PROBE_TIMEOUT_S = 3.0


def _endpoint() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)


def _cached(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # noqa: BLE001 - not a valid repo id: the loader's own error says so
        return False


def reachable() -> bool:
    try:
        with socket.create_connection(_endpoint(), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def looks_like_a_path(name: str) -> bool:
    """A hub repo id is ``name`` or ``org/name``; anything absolute, relative to ``.`` or ``~``,
    or deeper is a path (a missing one gets the loader's "cannot load" error, and no probe)."""
    return (
        name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name
    )


def check_hub_name(name: str, key: str = "init_from") -> None:
    """Refuse, with one line and at once, a hub name that cannot be fetched."""
    if Path(name).expanduser().exists() or looks_like_a_path(name):
        return
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return
    if reachable():
        return
    if _cached(name):
        os.environ["HF_HUB_OFFLINE"] = "1"  # use the cached files without retrying the network
        return
    host, _ = _endpoint()
    raise UserError(
        f"{key}={name}: cannot reach {host} to download it (no network?) and it is not in the "
        "Hugging Face cache; connect to the internet (or set HF_HOME to a cache holding it), or "
        f"give a directory written by save_pretrained: {key}=<dir>."
    )
