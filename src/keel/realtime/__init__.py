"""Channels and messages: REST now; WebSocket and SSE delivery come next (issue 5)."""
