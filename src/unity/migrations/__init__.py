"""Alembic migrations, shipped inside the package so an installed Unity can upgrade itself."""
