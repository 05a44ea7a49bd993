"""Worker tags and job requirements (``--require vram>=16,tag=lighting``). Pure.

A worker carries what its Ray node says of itself: its labels (``ray start --labels
'{"vram": "24", "tags": "lighting,fx"}'``) as properties (``tags`` as a list of tags), its
custom resources (``--resources '{"tag:lighting": 1, "vram_gb": 24}'``: ``tag:NAME`` is a
tag, any other is a property with its amount), its GPU model (Ray's ``accelerator_type:A10``
is ``gpu=A10``) and its CPUs (``cpus``). A requirement is a comma-separated list of terms,
all needed: ``tag=NAME`` (the worker has that tag), ``tag!=NAME``, or ``KEY OP VALUE`` with
``OP`` one of ``>= <= > < = !=`` (numbers compare as numbers; ``vram`` also reads
``vram_gb``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from renderfarm.errors import InputError, ResourceError

_TERM = re.compile(r"^\s*([A-Za-z_][\w.\-/]*)\s*(>=|<=|!=|=|>|<)\s*([^,<>=!\s][^,<>=!]*?)\s*$")


@dataclass(frozen=True)
class Requirement:
    """One term of a requirement: ``key op value``."""

    key: str
    op: str
    value: str

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value}"


@dataclass(frozen=True)
class WorkerTags:
    """What a worker offers: its tags and its properties."""

    tags: frozenset[str] = frozenset()
    props: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """``lighting, fx; gpu=A10, vram=24`` (for messages)."""
        props = ", ".join(f"{k}={v}" for k, v in sorted(self.props.items()))
        return "; ".join(p for p in (", ".join(sorted(self.tags)), props) if p) or "no tags"


def parse_requirements(text: str | None) -> tuple[Requirement, ...]:
    """``"vram>=16,tag=lighting"`` to its terms.

    Raises:
        InputError: a term is not ``KEY OP VALUE``.
    """
    if not text:
        return ()
    if not isinstance(text, str) or len(text) > 1000:
        raise InputError("require must be text like 'vram>=16,tag=lighting'")
    terms = []
    for part in text.split(","):
        match = _TERM.match(part)
        if not match:
            raise InputError(f"cannot read the requirement {part.strip()!r}: write KEY OP "
                             "VALUE terms separated by commas, e.g. 'vram>=16,tag=lighting' "
                             "(OP: >= <= > < = !=)")
        terms.append(Requirement(*match.groups()))
    return tuple(terms)


def node_tags(node: Mapping[str, Any]) -> WorkerTags:
    """The tags and properties of a Ray node (an entry of ``ray.nodes()``)."""
    tags: set[str] = set()
    props: dict[str, str] = {}
    for key, value in (node.get("Labels") or {}).items():
        if key.startswith("ray.io/"):
            continue
        if key == "tags":
            tags |= {t.strip() for t in str(value).split(",") if t.strip()}
        else:
            props[key] = str(value)
    for key, amount in (node.get("Resources") or {}).items():
        if key.startswith("tag:"):
            tags.add(key[4:])
        elif key.startswith("accelerator_type:"):
            props["gpu"] = key.split(":", 1)[1]
        elif key == "CPU":
            props["cpus"] = f"{float(amount):g}"
        elif key == "GPU":
            props["gpus"] = f"{float(amount):g}"
        elif not key.startswith("node:") and key not in ("memory", "object_store_memory"):
            props[key] = f"{float(amount):g}"
    if "vram" not in props and "vram_gb" in props:
        props["vram"] = props["vram_gb"]
    return WorkerTags(frozenset(tags), props)


def check_offers(require: str | None, offers: Sequence[tuple[str, WorkerTags]],
                 path: str | None = None) -> tuple[Requirement, ...]:
    """A job's requirement, refused when none of ``offers`` (``(worker, tags)``) meets it
    (``path``: the job's file, named in the error).

    Returns:
        The requirement's terms (empty: any worker).

    Raises:
        ResourceError: no worker meets it (the message names what each offers).
        InputError: the requirement cannot be read.
    """
    wanted = parse_requirements(require)
    if wanted and not any(satisfies(tags, wanted) for _name, tags in offers):
        described = "; ".join(f"{name}: {tags.describe()}" for name, tags in offers)
        raise ResourceError(
            f"no worker of this farm meets --require {require} (workers: "
            f"{described or 'none started'}); ask for less, or add a node with those labels "
            "or resources", path=path)
    return wanted


def _compare(have: str, op: str, want: str) -> bool:
    try:
        a, b = float(have), float(want)
    except ValueError:
        a, b = have.lower(), want.lower()  # type: ignore[assignment]
    return {"=": a == b, "!=": a != b, ">=": a >= b, "<=": a <= b, ">": a > b,
            "<": a < b}[op]


def with_blenders(worker: WorkerTags, versions: Sequence[str],
                  executables: Sequence[str] = ()) -> WorkerTags:
    """``worker`` with the Blenders its machine has as its ``blender`` property
    (``4.2.23,5.0.1``), which ``--require blender>=4.5`` or ``blender=4.2`` reads, and the
    paths of its Blender executables (a job that renders with one goes only to workers that
    have it: :data:`EXECUTABLE`)."""
    props = dict(worker.props)
    if versions:
        props["blender"] = ",".join(versions)
    if executables:
        props[EXECUTABLE] = "\n".join(executables)
    return WorkerTags(worker.tags, props) if props != dict(worker.props) else worker


#: the requirement a job that renders with a Blender executable has: ``EXECUTABLE=path``
EXECUTABLE = "blender_executable"


def demand_of(requirements: Sequence[Requirement]) -> tuple[dict[str, float], dict[str, str]]:
    """What a worker meeting ``requirements`` asks Ray's autoscaler for beyond its CPUs and
    GPU, so that it starts a node of that kind: a sliver of the resource a node type declares
    for a tag (``tag=lighting``: ``tag:lighting``) or that Ray gives a GPU model
    (``gpu=A10G``: ``accelerator_type:A10G``), and the node labels other ``key=value`` terms
    name. Comparisons (``vram>=16``) and the Blender terms ask for nothing. Pure."""
    resources: dict[str, float] = {}
    labels: dict[str, str] = {}
    for term in requirements:
        if term.op != "=":
            continue
        if term.key == "tag":
            resources[f"tag:{term.value}"] = 0.001
        elif term.key == "gpu":
            resources[f"accelerator_type:{term.value}"] = 0.001
        elif term.key not in ("blender", EXECUTABLE, "cpus", "gpus"):
            labels[term.key] = term.value
    return resources, labels


def executable_requirement(blender: str) -> tuple[Requirement, ...]:
    """What a worker must offer to render with ``blender`` (a job's Blender: a version, or
    an executable's path, which only workers whose machine has it offer)."""
    return (Requirement(EXECUTABLE, "=", blender),) if blender.startswith("/") else ()


def _version(text: str) -> tuple[int, ...] | None:
    parts = text.strip().split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) and parts else None


def _has_blender(have: str, op: str, want: str) -> bool:
    """Whether one of the worker's Blenders (``have``: ``4.2.23,5.0.1``) compares to
    ``want`` as ``op`` says; ``4.2`` stands for every 4.2 release."""
    wanted = _version(want)
    if wanted is None:
        return False
    for version in filter(None, (_version(v) for v in have.split(","))):
        mine = version[:len(wanted)]
        if {"=": mine == wanted, "!=": mine != wanted, ">=": mine >= wanted,
                "<=": mine <= wanted, ">": mine > wanted, "<": mine < wanted}[op]:
            return True
    return False


def satisfies(worker: WorkerTags, requirements: tuple[Requirement, ...]) -> bool:
    """Whether a worker meets every term."""
    for term in requirements:
        if term.key == "blender":
            if not _has_blender(worker.props.get("blender", ""), term.op, term.value):
                return False
            continue
        if term.key == EXECUTABLE:
            if term.value not in worker.props.get(EXECUTABLE, "").split("\n"):
                return False
            continue
        if term.key == "tag":
            has = term.value in worker.tags
            if (term.op == "=" and not has) or (term.op == "!=" and has) \
                    or term.op not in ("=", "!="):
                return False
            continue
        have = worker.props.get(term.key)
        if have is None or not _compare(have, term.op, term.value):
            return False
    return True
