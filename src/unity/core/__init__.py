"""Infrastructure shared by every domain: database, types, clock, cache, logging. Imports no domain."""
