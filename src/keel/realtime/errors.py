"""Realtime's domain errors."""

from __future__ import annotations

from keel.errors import Conflict, NotFound


class ChannelNotFound(NotFound):
    code = "realtime.channel_not_found"
    title = "Channel not found"


class ChannelNameTaken(Conflict):
    code = "realtime.channel_name_taken"
    title = "Channel name taken"
