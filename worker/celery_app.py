"""Celery entry point: ``celery -A worker.celery_app worker``. Scale out by starting more of these."""

from app.core.config import get_settings
from app.core.queue import make_celery

celery_app = make_celery(get_settings())
celery_app.conf.include = ["worker.tasks"]
