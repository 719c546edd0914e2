"""Tool-using environments for agent training (TRL environment_factory): the code sandbox and SQL."""
