"""The agent: runs the units assigned to its machine."""
