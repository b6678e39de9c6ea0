"""Imports every domain's tables so ``Base.metadata`` is complete (Alembic, tests).

This is the one place that knows all models; it is imported by migrations and
``create_app``, never by a domain.
"""

from __future__ import annotations

from unity.alerts import models as alerts
from unity.auth import models as auth
from unity.collection import models as collection
from unity.core.db import Base
from unity.metrics import models as metrics
from unity.plugins import models as plugins
from unity.runs import models as runs
from unity.webhooks import models as webhooks

metadata = Base.metadata

__all__ = ["alerts", "auth", "collection", "metadata", "metrics", "plugins", "runs", "webhooks"]
