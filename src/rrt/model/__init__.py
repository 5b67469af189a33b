"""The recursive model: its config, looped layers with per-position views, the table of family
differences, and parameter counts (paper sec. 2-3)."""
