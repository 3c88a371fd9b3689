"""The retrieve pipeline shared by C-GET and C-MOVE, one module per stage.

1. ``listing``: the identifier's plan and the QIDO-RS listing of the matching instances
   (the count);
2. ``fetchahead``: WADO-RS fetches ahead of the sub-operations, bounded in concurrency and
   bytes, on the event-loop thread;
3. ``instances``: each fetched instance (a ``WadoAnswer``) prepared as a ``SubOperation``:
   in a transfer syntax the peer accepted, or with the reason it cannot be sent;
4. ``send``: the C-STORE sub-operations through pynetdicom, and the responses;
5. ``tally``: what the sub-operations add up to (final status, failed list, ErrorComment).

Cancel (a C-CANCEL, or the association going away) cancels every in-flight request at
once and starts no new one.
"""
