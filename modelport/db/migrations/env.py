"""Alembic environment: the engine is handed in by modelport.db.migrate (no alembic.ini URL)."""

from alembic import context

from modelport.db import tables  # noqa: F401  (registers the tables on Base.metadata)
from modelport.db.base import Base

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
