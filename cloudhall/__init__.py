"""Cloud Hall (云上大厅): remote video assistance for public-service halls."""

__version__ = "0.1.0"
