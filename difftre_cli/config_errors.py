"""Hydra's and OmegaConf's own errors about a user's config, as :class:`UserError`.

:func:`config_errors` is the one place that translates them for ``train``, its Hydra task and
``evaluate``: unresolvable interpolations and ``???`` values always (naming the key as written,
which OmegaConf does only on some code paths), and every composition error while the user's
overrides are parsed and composed.
"""
from __future__ import annotations

from contextlib import contextmanager

from hydra.errors import HydraException, OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import GrammarParseError, InterpolationResolutionError, MissingMandatoryValue, OmegaConfBaseException

from .config_files import presets
from .errors import UserError

_FIX_KEY = ("check the key or option name (difftre --help lists presets and groups; "
            "append new keys with +key=value)")


def _raw_leaves(cfg):
    """(dotted key, value as written) of every leaf of ``cfg`` that is an interpolation or ???."""

    def walk(obj, prefix):
        items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
        for k, v in items:
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, (dict, list)):
                yield from walk(v, key)
            elif isinstance(v, str) and ("${" in v or v == "???"):
                yield key, v
    yield from walk(OmegaConf.to_container(cfg, resolve=False), "")


def _locate(cfg, exc) -> str | None:
    """The key whose resolution raises ``exc`` again (OmegaConf names it only on some paths)."""
    want = str(getattr(exc, "msg", None) or exc).strip().splitlines()[0]
    for key, raw in _raw_leaves(cfg):
        try:
            OmegaConf.select(cfg, key, throw_on_resolution_failure=True, throw_on_missing=True)
        except Exception as again:  # noqa: BLE001 - probing; the caller reports the original error
            if str(getattr(again, "msg", None) or again).strip().splitlines()[0] == want:
                return f"{key}={raw}"
    return None


def _offending(exc, cfg) -> str:
    """``key=value as written`` for an OmegaConf resolution error, as far as it can be told."""
    key = getattr(exc, "full_key", None)
    try:
        if not key:   # OmegaConf names the key on some code paths only: find it by resolving again
            return (_locate(cfg, exc) if cfg is not None else None) or "a config value"
        node = getattr(exc, "child_node", None)
        if node is None and getattr(exc, "parent_node", None) is not None and exc.key is not None:
            node = exc.parent_node
            for part in str(exc.key).split("."):
                node = node._get_node(part)
        raw = node._value() if node is not None else None
        return f"{key}={raw}" if isinstance(raw, str) else key
    except Exception:  # noqa: BLE001 - only decorates the message
        return key or "a config value"


@contextmanager
def config_errors(composing: bool = False, cfg=None):
    """Turn Hydra's and OmegaConf's own errors about the user's config into :class:`UserError`
    (exit 2, ``fix:`` line, no traceback). The one place for train, its Hydra task and evaluate.

    Always translated: interpolations that cannot be resolved (unknown key or resolver, missing
    environment variable, recursion, syntax) and mandatory values left at ``???``. With
    ``composing=True`` (parsing and composing the user's overrides, nothing of ours runs yet)
    every Hydra and OmegaConf error is the user's. Anything else propagates with its traceback.
    """
    try:
        yield
    except (InterpolationResolutionError, GrammarParseError, MissingMandatoryValue) as exc:
        what = str(getattr(exc, "msg", None) or exc).strip().splitlines()[0]
        shown = _offending(exc, cfg)
        if isinstance(exc, MissingMandatoryValue) and not isinstance(exc, InterpolationResolutionError):
            key = shown.split("=", 1)[0]
            raise UserError(f"{key} has no value (???)", f"set it, e.g. {key}=VALUE") from None
        raise UserError(f"{shown}: cannot resolve the interpolation ({what})",
                        "refer to an existing key with ${group.key}, or give a plain value") from None
    except OverrideParseException as exc:
        if not composing:
            raise
        raise UserError(f"cannot parse overrides: {str(exc).strip().splitlines()[0]}",
                        "write each override as key=value (quote values with spaces or $ for the shell)") from None
    except (HydraException, OmegaConfBaseException) as exc:
        if not composing:
            raise
        msg = str(exc).strip().splitlines()[0]
        if "config" in msg and "Could not find" in msg:
            msg += f" (presets: {', '.join(presets())})"
        raise UserError(msg, _FIX_KEY) from None
