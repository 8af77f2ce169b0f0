"""The exporter session: `ExporterService` + `RouterService` over one driver tree (PROTOCOL.md §4–5)."""

from jumpstarter.session.server import Session, serve_unix

__all__ = ["Session", "serve_unix"]
