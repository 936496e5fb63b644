"""Who the caller is, for every transport: token claims, keys, the verifier and the denylist.

Below the domains and framework-free: HTTP (keel.http.auth), WebSocket and SSE (keel.realtime.access) and the
accounts domain, which issues and revokes sessions, all import it downward.
"""
