"""In-memory fake tracefs backend."""

from __future__ import annotations
