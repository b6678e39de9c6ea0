"""Built-in plugins shipped with Unity."""
