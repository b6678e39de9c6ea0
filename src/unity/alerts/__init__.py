"""Alerts: threshold rules, their evaluation state and history."""
