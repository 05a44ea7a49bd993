"""Which jobs a caller sees and acts on: its own (an admin: every one); to anyone else a job
does not exist."""

from __future__ import annotations

from renderfarm.errors import ServiceError
from renderfarm.server.keyring import Caller
from renderfarm.server.store import JobRow, Store


def own(store: Store, caller: Caller, job_id: str) -> JobRow:
    """The job, when the caller may see and act on it (its owner, or an admin).

    Raises:
        ServiceError: ``not_found`` when there is no such job or it is another client's.
    """
    try:
        row = store.job(job_id)
    except ServiceError:
        row = None
    if row is None or not caller.may_see(row.client or ""):
        raise ServiceError(f"no job {job_id!r} of yours on this farm", kind="not_found")
    return row


def visible(store: Store, caller: Caller) -> list[JobRow]:
    """The jobs ``caller`` may see (its own; an admin's: all), as ``list`` gives them."""
    return [row for row in store.jobs() if caller.may_see(row.client or "")]
