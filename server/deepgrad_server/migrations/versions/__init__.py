"""Revisions, one file each (Alembic loads them by path; this file makes setuptools ship them)."""
