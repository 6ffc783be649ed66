"""The web dashboard: static HTML, vanilla JS modules and CSS (no build step), served at /ui."""

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
