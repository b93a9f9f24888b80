"""Typed broadcast payloads and the `POST /v1/broadcast` request body.

Invariant: the three events our users send on `stream-progress:{id}` are
validated against these models on the HTTP path (422 with field errors);
every other event takes any JSON object. The JSON Schema of each model is
served at `/v1/broadcast/schema` so pages and services can share it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Payload(BaseModel):
    model_config = ConfigDict(extra="allow")


class ProgressUpdate(_Payload):
    """`progress-update`: where a stream stands."""

    stream_id: str
    completed: int = Field(ge=0)
    total: int = Field(ge=0)
    percentage: float = Field(ge=0, le=100)
    quality_score: float | None = None
    items_by_stage: dict[str, int] | None = None
    last_updated: datetime


class AgentActivity(_Payload):
    """`agent-activity`: one step of an agent's work."""

    id: str
    stream_id: str
    agent_id: str
    agent_name: str
    agent_type: str
    activity_type: Literal["started", "progress", "completed", "failed"]
    message: str
    data: dict[str, Any] | None = None
    timestamp: datetime


class Milestone(_Payload):
    """`milestone`: 25/50/75/100 %, target reached, and the like."""

    stream_id: str
    type: str
    title: str
    description: str
    data: dict[str, Any] | None = None
    timestamp: datetime


TYPED_EVENTS: dict[str, type[BaseModel]] = {
    "progress-update": ProgressUpdate,
    "agent-activity": AgentActivity,
    "milestone": Milestone,
}


class BroadcastRequest(BaseModel):
    """The body of `POST /v1/broadcast`."""

    model_config = ConfigDict(extra="forbid")

    topic: str = Field(min_length=1, max_length=255)
    event: str = Field(min_length=1, max_length=255)
    payload: dict[str, Any]
    org_id: str | None = None
    user_id: str | None = None


def schemas() -> dict[str, Any]:
    """JSON Schema of the request body and of each typed event's payload."""
    return {
        "request": BroadcastRequest.model_json_schema(),
        "events": {name: model.model_json_schema() for name, model in TYPED_EVENTS.items()},
    }
