"""What a test asks of a labgrid coordinator: where it is, and a place by tags or by name. Parsed and checked when
the options are resolved, so nothing here imports labgrid."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from .. import _choices

__all__ = [
    "COORDINATOR_ENV",
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT_S",
    "LabgridRequest",
    "parse_coordinator",
    "parse_tags",
]

DEFAULT_PORT = _choices.LABGRID_DEFAULT_PORT  # labgrid's own default
DEFAULT_TIMEOUT_S = _choices.LABGRID_DEFAULT_TIMEOUT_S
COORDINATOR_ENV = "LG_COORDINATOR"  # labgrid's own variable, used when no option names the coordinator
_TAG_KEY = re.compile(r"[a-z][a-z0-9_]+")  # the coordinator refuses other keys
_TAG_VALUE = re.compile(r"[^\s,=]+")


def parse_coordinator(text: str) -> str:
    """``HOST[:PORT]`` (``[v6::addr]:PORT`` for IPv6) -> ``host:port`` as gRPC dials it; ValueError naming the
    problem."""
    value = text.strip()
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError("write an IPv6 address as [ADDRESS]:PORT")
        host, port_text = f"[{host}]" if host else "", rest[1:]
    elif value.count(":") > 1:
        raise ValueError("write an IPv6 address as [ADDRESS]:PORT")
    else:
        host, _, port_text = value.partition(":")
        if ":" in value and not port_text:
            raise ValueError("no port after ':'")
    if not host or any(c.isspace() for c in host):
        raise ValueError("no host name")
    if not port_text:
        return f"{host}:{DEFAULT_PORT}"
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number in 1..65535")
    return f"{host}:{int(port_text)}"


def parse_tags(text: str) -> tuple[tuple[str, str], ...]:
    """``K=V[,K=V...]`` -> sorted pairs; ValueError naming the bad part. Keys are what the coordinator accepts
    (lower case letters, digits and ``_``, starting with a letter, two characters at least)."""
    pairs: dict[str, str] = {}
    for part in text.split(","):
        key, equals, value = part.strip().partition("=")
        if not equals:
            raise ValueError(f"{part.strip()!r} is not KEY=VALUE")
        if not _TAG_KEY.fullmatch(key):
            raise ValueError(
                f"tag key {key!r} must be lower case letters, digits and '_', starting with a letter (2 characters "
                "at least), as labgrid requires"
            )
        if not _TAG_VALUE.fullmatch(value):
            raise ValueError(f"tag {key!r} needs a value without spaces, ',' or '='")
        if key in pairs and pairs[key] != value:
            raise ValueError(f"tag {key!r} is given twice ({pairs[key]!r} and {value!r})")
        pairs[key] = value
    return tuple(sorted(pairs.items()))


@dataclass(frozen=True)
class LabgridRequest:
    """A place for each test from the coordinator at ``coordinator`` (``host:port``): one with all of ``tags``,
    or the place called ``place``; waiting for it at most ``timeout`` seconds."""

    coordinator: str
    tags: tuple[tuple[str, str], ...] = ()
    place: Optional[str] = None
    timeout: float = DEFAULT_TIMEOUT_S

    @property
    def filters(self) -> dict[str, str]:
        """The reservation's filter: the coordinator matches a place's tags and its name (as the tag ``name``)."""
        return dict(self.tags) if self.tags else {"name": self.place or ""}

    @property
    def wanted(self) -> str:
        """What is asked for, as a person reads it: ``tags arch=arm64,lab=a`` or ``name rpi4``."""
        if self.tags:
            return "tags " + ",".join(f"{key}={value}" for key, value in self.tags)
        return f"name {self.place}"

    @property
    def label(self) -> str:
        return f"labgrid {self.wanted} at {self.coordinator}"
