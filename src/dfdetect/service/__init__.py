"""The web service (FastAPI): ``create_app(detector, max_upload_bytes=...)``; run it with ``dfdetect serve``."""

from dfdetect.service.app import ACCEPTED, create_app, sniff_media

__all__ = ["ACCEPTED", "create_app", "sniff_media"]
