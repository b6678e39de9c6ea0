"""Authentication and authorisation: API keys, scopes, tenants, rate limits, audit."""
