"""The read-only web dashboard (issue 12 §2): boards, holders, queues, history, health, live.

- `server.py`: a small HTTPS server on the controller's event loop (asyncio streams): bounded
  connections, requests and live subscribers; routes the page, the login and the data.
- `sessions.py`: logging in with a client or viewer token once; afterwards an HttpOnly cookie.
- `snapshot.py`: what the page shows, built from the store at most once a second and shared by
  every viewer (so many open pages cost the controller no more than one).
- `routers.py`: whether each configured router answers a TLS handshake.
- `static/`: the page itself: one HTML file, one stylesheet, one script, no build step.
"""
