"""Tasks, runs and the plan → approval → apply engine."""
