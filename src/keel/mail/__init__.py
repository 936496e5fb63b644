"""Outgoing mail (SPEC §4): messages from package templates, a durable outbox, and the loop that sends it.

No HTTP here: accounts queue mail through `Postbox` inside their own transactions, and every instance runs one
`Sender` that delivers what is due.
"""
